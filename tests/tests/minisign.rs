//! Interoperability of `kubeferry_installer::keys` with the real `minisign`
//! tool: keys and signatures made by either side are accepted by the other.
//!
//! These tests need the `minisign` binary (Debian: `apt-get install
//! minisign`) and fail without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use kubeferry_installer::keys::{FileDigest, KeyError, PublicKey, SecretKey};

/// Runs `minisign` with `args`, stdin from /dev/null so that it can never wait
/// for a password. Panics if the tool is missing.
fn minisign(args: &[&str], dir: &Path) -> Output {
    let output = Command::new("minisign").args(args).current_dir(dir).stdin(Stdio::null()).output();
    match output {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "the minisign binary is missing; these interoperability tests need it: apt-get install minisign"
        ),
        Err(error) => panic!("cannot run minisign: {error}"),
    }
}

fn describe(args: &[&str], output: &Output) -> String {
    format!(
        "minisign {}\nexit status: {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `minisign` and asserts that it succeeds.
fn minisign_ok(args: &[&str], dir: &Path) -> Output {
    let output = minisign(args, dir);
    assert!(output.status.success(), "minisign failed:\n{}", describe(args, &output));
    output
}

/// Runs `minisign` and asserts that it fails (exit status 1).
fn minisign_fails(args: &[&str], dir: &Path) -> Output {
    let output = minisign(args, dir);
    assert_eq!(output.status.code(), Some(1), "minisign should have failed:\n{}", describe(args, &output));
    output
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Writes a test file larger than kubeferry's 1 MiB hashing buffer.
fn write_data(path: &Path) {
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 4321u32).map(|i| (i % 253) as u8).collect();
    fs::write(path, data).unwrap();
}

fn flip_byte(path: &Path, offset: usize) {
    let mut data = fs::read(path).unwrap();
    data[offset] ^= 0x01;
    fs::write(path, data).unwrap();
}

/// Our signature of `file`, written to `file.minisig`.
fn sign_with_us(secret: &SecretKey, file: &Path, trusted_comment: &str) {
    let digest = FileDigest::of_file(file).unwrap();
    let minisig = secret.sign_minisig(&digest, trusted_comment);
    let mut sig_path = file.as_os_str().to_owned();
    sig_path.push(".minisig");
    fs::write(sig_path, minisig).unwrap();
}

/// Verifies `file.minisig` with us.
fn verify_with_us(public: &PublicKey, file: &Path) -> Result<String, KeyError> {
    let mut sig_path = file.as_os_str().to_owned();
    sig_path.push(".minisig");
    let minisig = fs::read_to_string(sig_path).unwrap();
    public.verify_minisig(&FileDigest::of_file(file).unwrap(), &minisig)
}

/// A key pair made by `minisign -G -W` in `dir`: (public key path, secret key
/// path).
fn minisign_keygen(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let public = dir.join("minisign.pub");
    let secret = dir.join("minisign.key");
    minisign_ok(&["-G", "-W", "-p", path_str(&public), "-s", path_str(&secret)], dir);
    (public, secret)
}

#[test]
fn minisign_verifies_our_signature() {
    let dir = tempfile::tempdir().unwrap();
    let secret = SecretKey::generate().unwrap();
    let pub_path = dir.path().join("ours.pub");
    fs::write(&pub_path, secret.public_key().to_file_string()).unwrap();
    let file = dir.path().join("bundle.run");
    write_data(&file);
    let comment = "timestamp:1700000000\tfile:bundle.run\tkubeferry test";
    sign_with_us(&secret, &file, comment);

    let args = ["-Vm", path_str(&file), "-p", path_str(&pub_path)];
    let output = minisign_ok(&args, dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("Trusted comment: {comment}\n")), "{}", describe(&args, &output));

    // The bare key, as `-P` takes it.
    let key_line = secret.public_key().to_base64();
    minisign_ok(&["-Vm", path_str(&file), "-P", &key_line], dir.path());

    // One flipped byte of the file.
    flip_byte(&file, 2 * 1024 * 1024 + 7);
    let output = minisign_fails(&args, dir.path());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Signature verification failed"),
        "{}",
        describe(&args, &output)
    );
}

#[test]
fn minisign_rejects_our_signature_with_edited_trusted_comment() {
    let dir = tempfile::tempdir().unwrap();
    let secret = SecretKey::generate().unwrap();
    let pub_path = dir.path().join("ours.pub");
    fs::write(&pub_path, secret.public_key().to_file_string()).unwrap();
    let file = dir.path().join("bundle.run");
    fs::write(&file, b"small bundle\n").unwrap();
    sign_with_us(&secret, &file, "version 1.0");
    let sig_path = dir.path().join("bundle.run.minisig");
    let edited = fs::read_to_string(&sig_path)
        .unwrap()
        .replace("trusted comment: version 1.0", "trusted comment: version 9.0");
    fs::write(&sig_path, edited).unwrap();

    let args = ["-Vm", path_str(&file), "-p", path_str(&pub_path)];
    let output = minisign_fails(&args, dir.path());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Comment signature verification failed"),
        "{}",
        describe(&args, &output)
    );
}

#[test]
fn we_sign_with_a_minisign_generated_key() {
    let dir = tempfile::tempdir().unwrap();
    let (pub_path, key_path) = minisign_keygen(dir.path());
    // minisign creates the secret key with mode 0600; make sure of it.
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();

    let secret = SecretKey::read(&key_path).unwrap();
    let public = PublicKey::read(&pub_path).unwrap();
    assert_eq!(public, secret.public_key());
    // Our .pub file is byte for byte the one minisign wrote.
    assert_eq!(fs::read_to_string(&pub_path).unwrap(), public.to_file_string());

    let file = dir.path().join("bundle.run");
    write_data(&file);
    sign_with_us(&secret, &file, "signed by kubeferry with a minisign key");
    let args = ["-Vm", path_str(&file), "-p", path_str(&pub_path)];
    let output = minisign_ok(&args, dir.path());
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("Trusted comment: signed by kubeferry with a minisign key"),
        "{}",
        describe(&args, &output)
    );
}

#[test]
fn minisign_signs_with_our_secret_key() {
    let dir = tempfile::tempdir().unwrap();
    let secret = SecretKey::generate().unwrap();
    let key_path = dir.path().join("ours.key");
    secret.write_new(&key_path).unwrap();

    // minisign recreates our public key file from our secret key.
    let recreated = dir.path().join("recreated.pub");
    minisign_ok(&["-R", "-s", path_str(&key_path), "-p", path_str(&recreated)], dir.path());
    assert_eq!(fs::read_to_string(&recreated).unwrap(), secret.public_key().to_file_string());

    // minisign signs with our secret key, and we verify.
    let file = dir.path().join("bundle.run");
    write_data(&file);
    minisign_ok(&["-S", "-s", path_str(&key_path), "-m", path_str(&file), "-t", "from minisign"], dir.path());
    assert_eq!(verify_with_us(&secret.public_key(), &file).unwrap(), "from minisign");
}

#[test]
fn we_verify_minisign_signature() {
    let dir = tempfile::tempdir().unwrap();
    let (pub_path, key_path) = minisign_keygen(dir.path());
    let public = PublicKey::read(&pub_path).unwrap();
    let file = dir.path().join("bundle.run");
    write_data(&file);

    // With minisign's default trusted comment (timestamp, file name).
    minisign_ok(&["-S", "-s", path_str(&key_path), "-m", path_str(&file)], dir.path());
    let comment = verify_with_us(&public, &file).unwrap();
    assert!(comment.starts_with("timestamp:"), "{comment}");
    assert!(comment.contains("file:bundle.run"), "{comment}");

    // With our own trusted comment, spaces and all.
    let trusted = "kubeferry 1.2.3  for\tproduction ";
    minisign_ok(&["-S", "-s", path_str(&key_path), "-m", path_str(&file), "-t", trusted], dir.path());
    assert_eq!(verify_with_us(&public, &file).unwrap(), trusted);

    // One flipped byte of the file.
    flip_byte(&file, 0);
    assert!(matches!(verify_with_us(&public, &file), Err(KeyError::BadSignature)));

    // Another key.
    let other = SecretKey::generate().unwrap().public_key();
    flip_byte(&file, 0);
    assert!(matches!(verify_with_us(&other, &file), Err(KeyError::WrongKey { .. })));
}

#[test]
fn we_refuse_minisign_legacy_signature() {
    let dir = tempfile::tempdir().unwrap();
    let (pub_path, key_path) = minisign_keygen(dir.path());
    let file = dir.path().join("bundle.run");
    fs::write(&file, b"small bundle\n").unwrap();
    minisign_ok(&["-S", "-l", "-s", path_str(&key_path), "-m", path_str(&file)], dir.path());
    let public = PublicKey::read(&pub_path).unwrap();
    assert!(matches!(verify_with_us(&public, &file), Err(KeyError::LegacySignature)));
}
