//! The bundle end to end, with the real `kubeferry` binary and the real static stub: round
//! trip, determinism, signing later, the tamper corpus, malicious payloads, and trust.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kubeferry_builder::pack::{Content, PackEntry, PackKind, Spec, pack};
use kubeferry_installer::arch::Arch;
use kubeferry_installer::keys::SecretKey;
use kubeferry_installer::manifest::Codec;
use kubeferry_installer::progress::Silent;
use kubeferry_installer::reader::Bundle;
use kubeferry_tests::*;

const EXIT_UNTRUSTED: i32 = 3;

struct Built {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    rootfs: PathBuf,
    key: PathBuf,
    public: PathBuf,
    bundle: PathBuf,
}

/// A signed amd64 bundle of the fixture rootfs.
fn built() -> Built {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let rootfs = fixture_rootfs(&dir);
    let (key, public) = keygen(&dir, "release");
    let out = ok(kubeferry()
        .args([
            "build",
            "--no-pull",
            "--allow-missing-images",
            "--name",
            "edge",
            "--version",
            "v1.20.2",
            "--arch",
            "amd64",
            "-o",
        ])
        .arg(dir.join("dist"))
        .arg("--key")
        .arg(&key)
        .arg(format!("--stub=amd64={}", stub_bin().display()))
        .arg(&rootfs));
    let bundle = PathBuf::from(out.trim());
    assert_eq!(bundle, dir.join("dist/edge-v1.20.2-linux-amd64.run"));
    Built { _dir: tmp, dir, rootfs, key, public, bundle }
}

fn stub_on(bundle: &Path) -> Command {
    let mut cmd = Command::new(bundle);
    cmd.env("KUBEFERRY_TRUSTED_KEYS_DIR", "/nonexistent/kubeferry-test-keys");
    cmd
}

/// The real stub reading another file: how a tampered file is checked by an intact stub.
fn good_stub_on(bundle: &Path) -> Command {
    let mut cmd = Command::new(stub_bin());
    cmd.arg("--bundle").arg(bundle).env("KUBEFERRY_TRUSTED_KEYS_DIR", "/nonexistent/kubeferry-test-keys");
    cmd
}

#[test]
fn round_trip_restores_every_file_mode_and_link() {
    let b = built();
    let target = b.dir.join("out/rootfs");
    let stderr =
        run(stub_on(&b.bundle).arg("extract").arg("--to").arg(&target).arg("--trusted-key").arg(&b.public)).2;
    assert!(stderr.contains("extracted 37 entries"), "{stderr}");

    // What the bundle must hold: the common tree with the amd64 overlay laid over it, the
    // other architecture's folder left out, modes normalised.
    let expected = b.dir.join("expected");
    ok(Command::new("cp").arg("-a").arg(&b.rootfs).arg(&expected));
    fs::remove_dir_all(expected.join("arm64")).unwrap();
    ok(Command::new("cp").arg("-a").arg(expected.join("amd64/.")).arg(&expected));
    fs::remove_dir_all(expected.join("amd64")).unwrap();
    fs::set_permissions(expected.join("scripts/init.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    for f in [
        "etc/registry_config.yml",
        "manifests/imageList",
        "statics/empty",
        "bin/arch-tool",
        "etc/kubeadm.yml",
    ] {
        fs::set_permissions(expected.join(f), fs::Permissions::from_mode(0o644)).unwrap();
    }
    assert_eq!(snapshot(&target), snapshot(&expected));
    assert_eq!(fs::read_to_string(target.join("bin/arch-tool")).unwrap(), "amd64 tool");

    let meta = fs::metadata(target.join("bin/env")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mtime(&meta), 1_700_000_000);
    // Nothing but the target in its parent: the staging directory is gone.
    assert_eq!(listing(&b.dir.join("out")), ["rootfs"]);
    // The extracted executable is the real one and runs.
    ok(&mut Command::new(target.join("bin/true")));
}

#[test]
fn a_second_extract_refuses_a_full_target_and_force_replaces_it() {
    let b = built();
    let target = b.dir.join("rootfs-out");
    write(&target.join("keep-me"), "data");
    let (code, _, stderr) =
        run(stub_on(&b.bundle).arg("extract").arg("--to").arg(&target).arg("--trusted-key").arg(&b.public));
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("caused by: '{}' already exists and is not empty", target.display())),
        "{stderr}"
    );
    assert!(stderr.contains("hint: choose an empty directory, or pass --force to replace it"), "{stderr}");
    assert_eq!(listing(&target), ["keep-me"]);

    ok(stub_on(&b.bundle)
        .arg("extract")
        .arg("--force")
        .arg("--to")
        .arg(&target)
        .arg("--trusted-key")
        .arg(&b.public));
    assert!(!target.join("keep-me").exists());
    assert!(target.join("bin/env").is_file());
    let left: Vec<String> = listing(&b.dir).into_iter().filter(|n| n.contains("kubeferry")).collect();
    assert!(left.is_empty(), "staging or moved-aside trees left: {left:?}");
}

#[test]
fn builds_are_byte_identical_whatever_the_threads_and_file_times() {
    let b = built();
    // Touch every file: new mtimes must not change the output.
    ok(Command::new("find").arg(&b.rootfs).args(["-exec", "touch", "-d", "2001-02-03", "{}", "+"]));
    let again = b.dir.join("again");
    ok(kubeferry()
        .args([
            "build",
            "--no-pull",
            "--allow-missing-images",
            "--name",
            "edge",
            "--version",
            "v1.20.2",
            "--jobs",
            "1",
            "-o",
        ])
        .arg(&again)
        .arg("--key")
        .arg(&b.key)
        .arg(format!("--stub=amd64={}", stub_bin().display()))
        .arg(&b.rootfs));
    for suffix in ["", ".sha256", ".minisig"] {
        let name = format!("edge-v1.20.2-linux-amd64.run{suffix}");
        assert!(
            fs::read(b.dir.join("dist").join(&name)).unwrap() == fs::read(again.join(&name)).unwrap(),
            "{name} differs"
        );
    }
}

#[test]
fn signing_later_gives_the_same_file_as_signing_at_build() {
    let b = built();
    let out = b.dir.join("unsigned");
    ok(kubeferry()
        .args([
            "build",
            "--no-pull",
            "--allow-missing-images",
            "--name",
            "edge",
            "--version",
            "v1.20.2",
            "--unsigned",
            "-o",
        ])
        .arg(&out)
        .arg(format!("--stub=amd64={}", stub_bin().display()))
        .arg(&b.rootfs));
    let file = out.join("edge-v1.20.2-linux-amd64.run");
    assert!(!out.join("edge-v1.20.2-linux-amd64.run.minisig").exists());

    let (code, _, stderr) = run(stub_on(&file).arg("verify").arg("--trusted-key").arg(&b.public));
    assert_eq!(code, EXIT_UNTRUSTED);
    assert!(stderr.contains("caused by: the bundle is not signed"), "{stderr}");

    ok(kubeferry().arg("sign").arg("--key").arg(&b.key).arg(&file));
    assert!(
        fs::read(&file).unwrap() == fs::read(&b.bundle).unwrap(),
        "signed later differs from signed at build"
    );
    assert_eq!(
        fs::read(out.join("edge-v1.20.2-linux-amd64.run.minisig")).unwrap(),
        fs::read(b.dir.join("dist/edge-v1.20.2-linux-amd64.run.minisig")).unwrap()
    );
    assert_eq!(listing(&out).len(), 3, "no partial file left: {:?}", listing(&out));

    let (code, _, stderr) = run(kubeferry().arg("sign").arg("--key").arg(&b.key).arg(&file));
    assert_eq!(code, 1);
    assert!(stderr.contains("' is already signed by SHA256:"), "{stderr}");
}

#[test]
fn the_standard_tools_check_the_file_without_running_it() {
    let b = built();
    let out = ok(Command::new("minisign").arg("-Vm").arg(&b.bundle).arg("-p").arg(&b.public));
    assert!(out.contains("Trusted comment: kubeferry bundle edge-v1.20.2-linux-amd64.run"), "{out}");
    ok(Command::new("sha256sum")
        .arg("-c")
        .arg("edge-v1.20.2-linux-amd64.run.sha256")
        .current_dir(b.dir.join("dist")));

    let json: serde_json::Value = serde_json::from_str(&ok(kubeferry()
        .args(["verify", "--json", "--key"])
        .arg(&b.public)
        .arg(&b.bundle)))
    .unwrap();
    assert_eq!(json["verified"], true);
    assert_eq!(json["minisig"], "verified");
    assert_eq!(json["arch"], "amd64");

    // An appended byte: minisign, sha256sum and kubeferry all refuse it.
    let mut bytes = fs::read(&b.bundle).unwrap();
    bytes.push(b'\n');
    fs::write(&b.bundle, &bytes).unwrap();
    assert_ne!(run(Command::new("minisign").arg("-Vm").arg(&b.bundle).arg("-p").arg(&b.public)).0, 0);
}

#[test]
fn inspect_reads_the_manifest_without_the_payload() {
    let b = built();
    let text = ok(kubeferry().arg("inspect").arg(&b.bundle));
    for want in [
        "name:       edge",
        "arch:       amd64",
        "kubernetes: v1.20.2",
        "cri:        containerd",
        "signed by:  SHA256:",
        "checked:    no: this is what the file claims",
        "symlink     -          -  scripts/env -> ../bin/env",
        "hardlink    -          -  bin/true-again => bin/true",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(kubeferry().args(["inspect", "--json"]).arg(&b.bundle))).unwrap();
    assert_eq!(json["manifest"]["name"], "edge");
    assert_eq!(json["signed"], true);
    let chunks = json["manifest"]["payload"]["chunks"].as_array().unwrap();
    assert!(chunks.iter().any(|c| c["codec"] == "stored"), "the gzip'd tarball and layer are stored as is");
    assert!(chunks.iter().any(|c| c["codec"] == "zstd"));
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len() as u64, json["manifest"]["index"]["entries"].as_u64().unwrap());
    assert!(
        entries
            .contains(&serde_json::json!({"type": "symlink", "path": "scripts/env", "target": "../bin/env"}))
    );

    // A reader that stops reading (`| head`) ends the output quietly, with success.
    let mut inspect = kubeferry();
    inspect.args(["inspect", "--json"]).arg(&b.bundle);
    let mut list = stub_on(&b.bundle);
    list.arg("list");
    for mut command in [inspect, list] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = command.stdout(writer).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !stderr.contains("panicked"), "{:?}: {stderr}", out.status);
    }

    // Reading the manifest does not read the payload: wiping the payload leaves inspect working.
    let t = *Bundle::open(&b.bundle).unwrap().trailer();
    let mut bytes = fs::read(&b.bundle).unwrap();
    for byte in &mut bytes[t.payload_offset as usize..(t.payload_offset + t.payload_len) as usize] {
        *byte = 0;
    }
    fs::write(&b.bundle, bytes).unwrap();
    assert!(ok(kubeferry().arg("inspect").arg(&b.bundle)).contains("name:       edge"));
}

#[test]
fn the_stub_without_arguments_shows_a_summary_and_help() {
    let b = built();
    let out = ok(&mut stub_on(&b.bundle));
    assert!(out.contains("file:       edge-v1.20.2-linux-amd64.run"), "{out}");
    assert!(out.contains("Usage: ./edge-v1.20.2-linux-amd64.run COMMAND"), "{out}");
    let listing = ok(stub_on(&b.bundle).arg("list").arg("--trusted-key").arg(&b.public));
    assert!(listing.contains("file     0755"), "{listing}");
    assert!(listing.contains("cri/containerd.tar.gz"), "{listing}");
}

/// Flips one byte at `offset` of a copy of the bundle.
fn flipped(b: &Built, offset: u64) -> PathBuf {
    let mut bytes = fs::read(&b.bundle).unwrap();
    bytes[offset as usize] ^= 0x5a;
    let path = b.dir.join("tampered.run");
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Checks a tampered file both ways (kubeferry verify, and the intact stub's extract) and
/// that the extraction target and its directory were left untouched.
fn assert_rejected(b: &Built, file: &Path, cause: &str) {
    let (code, _, stderr) = run(kubeferry().arg("verify").arg("--key").arg(&b.public).arg(file));
    assert_eq!(code, EXIT_UNTRUSTED, "{stderr}");
    assert!(stderr.contains(&format!("caused by: {cause}")), "expected cause {cause:?}, got:\n{stderr}");

    let parent = b.dir.join("targets");
    fs::create_dir_all(&parent).unwrap();
    let target = parent.join("rootfs");
    let (code, _, stderr) =
        run(good_stub_on(file).arg("extract").arg("--to").arg(&target).arg("--trusted-key").arg(&b.public));
    assert_eq!(code, EXIT_UNTRUSTED, "{stderr}");
    assert!(stderr.contains(&format!("caused by: {cause}")), "expected cause {cause:?}, got:\n{stderr}");
    assert!(listing(&parent).is_empty(), "left behind: {:?}", listing(&parent));
}

#[test]
fn tamper_corpus_each_damage_has_its_own_error() {
    let b = built();
    let t = *Bundle::open(&b.bundle).unwrap().trailer();
    let manifest = Bundle::open(&b.bundle).unwrap().manifest_unverified().unwrap();
    let fp = manifest.signer.as_ref().unwrap().fingerprint.clone();
    let trailer_at = t.file_len - 128;

    let stub = flipped(&b, 5000);
    assert_rejected(
        &b,
        &stub,
        &format!("the stub is corrupt: expected {}, found sha256:", manifest.stub.digest),
    );

    let payload = flipped(&b, t.payload_offset + 100);
    assert_rejected(
        &b,
        &payload,
        &format!("payload chunk 0 is corrupt: expected {}, found sha256:", manifest.payload.chunks[0].digest),
    );
    // The tampered file's own (intact) stub refuses it too.
    let target = b.dir.join("direct");
    let (code, _, stderr) =
        run(stub_on(&payload).arg("extract").arg("--to").arg(&target).arg("--trusted-key").arg(&b.public));
    assert_eq!(code, EXIT_UNTRUSTED, "{stderr}");
    assert!(stderr.contains("payload chunk 0 is corrupt"), "{stderr}");
    assert!(!target.exists());

    assert_rejected(
        &b,
        &flipped(&b, t.index_offset + 10),
        &format!("index block 0 is corrupt: expected {}, found sha256:", manifest.index.blocks[0].digest),
    );

    let bad_signature = format!(
        "the signature by key {fp} does not match: the manifest or trailer was changed after signing"
    );
    assert_rejected(&b, &flipped(&b, t.manifest_offset + 30), &bad_signature);
    assert_rejected(&b, &flipped(&b, t.signature_offset + 32 + 10), &bad_signature);
    assert_rejected(&b, &flipped(&b, trailer_at + 120), "the file does not end with a kubeferry trailer");
    // A byte flipped in a region length: the offsets no longer add up.
    assert_rejected(
        &b,
        &flipped(&b, trailer_at + 24),
        "the trailer is inconsistent: the regions are not contiguous",
    );
    assert_rejected(
        &b,
        &flipped(&b, trailer_at + 100),
        "the trailer is inconsistent: reserved bytes are not zero",
    );

    let mut v2 = fs::read(&b.bundle).unwrap();
    v2[trailer_at as usize] = 2;
    fs::write(b.dir.join("v2.run"), v2).unwrap();
    assert_rejected(
        &b,
        &b.dir.join("v2.run"),
        "format version 2 is not supported (this kubeferry reads version 1)",
    );

    // Another key in the signature section: not trusted.
    let other = b.dir.join("other.run");
    let mut bytes = fs::read(&b.bundle).unwrap();
    bytes[t.signature_offset as usize] ^= 1;
    fs::write(&other, bytes).unwrap();
    let (code, _, stderr) = run(kubeferry().arg("verify").arg("--key").arg(&b.public).arg(&other));
    assert_eq!(code, EXIT_UNTRUSTED);
    assert!(stderr.contains("which is not trusted on this host"), "{stderr}");
}

#[test]
fn truncated_padded_and_shifted_files_are_refused() {
    let b = built();
    let bytes = fs::read(&b.bundle).unwrap();
    let case = |name: &str, data: Vec<u8>, cause: &str| {
        let path = b.dir.join(name);
        fs::write(&path, data).unwrap();
        assert_rejected(&b, &path, cause);
    };
    case(
        "truncated.run",
        bytes[..bytes.len() - 1000].to_vec(),
        "the file does not end with a kubeferry trailer: it is truncated, or not a kubeferry bundle",
    );
    case(
        "padded.run",
        [bytes.clone(), b"extra".to_vec()].concat(),
        "5 bytes follow the end of the bundle; nothing outside the signed file is accepted",
    );
    let n = bytes.len();
    case(
        "prepended.run",
        [b"#!/bin/sh\n".to_vec(), bytes.clone()].concat(),
        &format!("the file is {} bytes but its trailer records {n}: bytes were removed or inserted", n + 10),
    );
    let mut cut = bytes.clone();
    let t = *Bundle::open(&b.bundle).unwrap().trailer();
    cut.drain(t.payload_offset as usize + 10..t.payload_offset as usize + 20);
    case(
        "cut.run",
        cut,
        &format!("the file is {} bytes but its trailer records {n}: bytes were removed or inserted", n - 10),
    );
    case("tiny.run", b"short".to_vec(), "the file is 5 bytes, too short to be a kubeferry bundle");
}

#[test]
fn a_stub_swapped_for_another_architectures_is_named() {
    let b = built();
    // The same static stub with its ELF machine set to AArch64.
    let mut bytes = fs::read(&b.bundle).unwrap();
    bytes[18..20].copy_from_slice(&183u16.to_le_bytes());
    let path = b.dir.join("swapped.run");
    fs::write(&path, bytes).unwrap();
    assert_rejected(&b, &path, "the stub is not an executable for amd64");
    let stderr = run(kubeferry().arg("verify").arg("--key").arg(&b.public).arg(&path)).2;
    assert!(stderr.contains("caused by: it is an executable for arm64"), "{stderr}");
}

fn arm64_stub(dir: &Path) -> PathBuf {
    let mut stub = fs::read(stub_bin()).unwrap();
    stub[18..20].copy_from_slice(&183u16.to_le_bytes());
    let path = dir.join("kubeferry-stub-arm64");
    fs::write(&path, stub).unwrap();
    path
}

#[test]
fn the_builder_refuses_stubs_for_the_wrong_architecture_or_dynamically_linked() {
    let b = built();
    let arm = arm64_stub(&b.dir);
    let (code, _, stderr) = run(kubeferry()
        .args([
            "build",
            "--no-pull",
            "--allow-missing-images",
            "--name",
            "x",
            "--version",
            "1",
            "--unsigned",
            "-o",
        ])
        .arg(b.dir.join("o"))
        .arg(format!("--stub=amd64={}", arm.display()))
        .arg(&b.rootfs));
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "the stub '{}' cannot be used for amd64: it is an executable for arm64",
            arm.display()
        )),
        "{stderr}"
    );
    let (_, _, stderr) = run(kubeferry()
        .args([
            "build",
            "--no-pull",
            "--allow-missing-images",
            "--name",
            "x",
            "--version",
            "1",
            "--unsigned",
            "-o",
        ])
        .arg(b.dir.join("o"))
        .arg("--stub=amd64=/usr/bin/env")
        .arg(&b.rootfs));
    assert!(
        stderr.contains("it is linked dynamically, and a target host may lack its libraries"),
        "{stderr}"
    );
    // A kubeferry with no stubs beside it (other tests put some beside target/debug/kubeferry).
    let lonely = b.dir.join("bin/kubeferry");
    fs::create_dir_all(lonely.parent().unwrap()).unwrap();
    fs::copy(kubeferry_bin(), &lonely).unwrap();
    let (_, _, stderr) = run(Command::new(&lonely)
        .env_remove("KUBEFERRY_STUB_DIR")
        .args([
            "build",
            "--no-pull",
            "--allow-missing-images",
            "--name",
            "x",
            "--version",
            "1",
            "--unsigned",
            "--arch",
            "arm64",
            "-o",
        ])
        .arg(b.dir.join("o"))
        .arg(&b.rootfs));
    assert!(
        stderr.contains(&format!(
            "caused by: no installer stub for arm64 was found (looked in: '{}', '{}')",
            b.dir.join("bin/kubeferry-stub-arm64").display(),
            b.dir.join("bin/../lib/kubeferry/kubeferry-stub-arm64").display()
        )),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("hint: build the stub with 'packaging/build-stub.sh arm64', or pass --stub arm64=PATH"),
        "{stderr}"
    );
    assert!(!b.dir.join("o").join("x-1-linux-amd64.run").exists());
}

#[test]
fn one_build_writes_one_file_per_architecture_and_a_host_refuses_the_wrong_one() {
    let b = built();
    let arm = arm64_stub(&b.dir);
    let out = b.dir.join("multi");
    let printed = ok(kubeferry()
        .args([
            "build",
            "--no-pull",
            "--allow-missing-images",
            "--name",
            "edge",
            "--version",
            "v1",
            "--arch",
            "amd64,arm64",
            "-o",
        ])
        .arg(&out)
        .arg("--key")
        .arg(&b.key)
        .arg(format!("--stub=amd64={}", stub_bin().display()))
        .arg(format!("--stub=arm64={}", arm.display()))
        .arg(&b.rootfs));
    assert_eq!(printed.lines().count(), 2);
    let arm_bundle = out.join("edge-v1-linux-arm64.run");
    let listing = ok(kubeferry().arg("inspect").arg(&arm_bundle));
    assert!(listing.contains("arch:       arm64"));
    assert!(listing.contains("bin/arch-tool"));
    assert!(!listing.contains("amd64"), "the amd64 overlay is not in the arm64 bundle:\n{listing}");
    ok(kubeferry().arg("verify").arg("--key").arg(&b.public).arg(&arm_bundle));

    // This amd64 host asked to install the arm64 bundle: refused, naming the right file.
    let (code, _, stderr) = run(good_stub_on(&arm_bundle).arg("install").arg("--trusted-key").arg(&b.public));
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("caused by: this bundle is for arm64, but amd64 is needed here"), "{stderr}");
    assert!(stderr.contains("hint: use 'edge-v1-linux-amd64.run' on this host"), "{stderr}");
}

#[test]
fn trust_comes_from_the_operator_never_from_the_file() {
    let b = built();
    let (code, _, stderr) = run(stub_on(&b.bundle).arg("verify"));
    assert_eq!(code, EXIT_UNTRUSTED);
    let fp = Bundle::open(&b.bundle).unwrap().signature().unwrap().fingerprint().to_string();
    assert!(
        stderr.contains(&format!(
            "caused by: signature was made by key {fp} which is not trusted on this host"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("pass --key-fingerprint {fp}")), "{stderr}");

    // A fingerprint checked out of band.
    ok(stub_on(&b.bundle).arg("verify").arg("--key-fingerprint").arg(&fp));
    // The host's directory of trusted keys.
    let keys = b.dir.join("trusted-keys");
    fs::create_dir_all(&keys).unwrap();
    fs::copy(&b.public, keys.join("release.pub")).unwrap();
    ok(Command::new(&b.bundle).arg("verify").env("KUBEFERRY_TRUSTED_KEYS_DIR", &keys));
    // Another key is not enough.
    let (_, other_pub) = keygen(&b.dir, "other");
    let (code, _, _) = run(stub_on(&b.bundle).arg("verify").arg("--trusted-key").arg(&other_pub));
    assert_eq!(code, EXIT_UNTRUSTED);
    // The escape hatch works but says what it skipped.
    let (code, _, stderr) = run(stub_on(&b.bundle).arg("verify").arg("--insecure-skip-verify"));
    assert_eq!(code, 0);
    assert!(stderr.contains("warning: --insecure-skip-verify: the signature was NOT checked"), "{stderr}");
    // JSON for CI.
    let json: serde_json::Value =
        serde_json::from_str(&ok(stub_on(&b.bundle).args(["verify", "--json", "--key-fingerprint", &fp])))
            .unwrap();
    assert_eq!(json["verified"], true);
    assert_eq!(json["signer"], fp.as_str());
}

#[test]
fn keys_are_private_and_a_readable_key_is_refused() {
    let b = built();
    assert_eq!(fs::metadata(&b.key).unwrap().permissions().mode() & 0o777, 0o600);
    let (code, _, stderr) = run(kubeferry().arg("keygen").arg("--out").arg(b.dir.join("release")));
    assert_eq!(code, 1, "{stderr}");
    fs::set_permissions(&b.key, fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, stderr) = run(kubeferry()
        .args(["build", "--no-pull", "--allow-missing-images", "--name", "x", "--version", "1", "-o"])
        .arg(b.dir.join("o"))
        .arg("--key")
        .arg(&b.key)
        .arg(&b.rootfs));
    assert_eq!(code, 1);
    assert!(stderr.contains("hint: run: chmod 600"), "{stderr}");
    assert!(!b.dir.join("o").exists());
}

/// Packs entries the builder's collector would never produce, signed with a test key.
fn malicious(dir: &Path, entries: Vec<PackEntry>) -> (PathBuf, PathBuf) {
    let key = SecretKey::generate().unwrap();
    let public = dir.join("test.pub");
    fs::write(&public, key.public_key().to_file_string()).unwrap();
    let spec = Spec::new("evil", "1", Arch::Amd64);
    let stub = fs::read(stub_bin()).unwrap();
    let packed =
        pack(&stub, entries.into_iter().map(Ok), 0, &spec, Some(&key), &dir.join("dist"), &Silent).unwrap();
    (packed.path, public)
}

fn dir_entry(path: &str) -> PackEntry {
    PackEntry { path: path.into(), kind: PackKind::Dir { mode: 0o755 } }
}

fn file_entry(path: &str, content: &str) -> PackEntry {
    PackEntry {
        path: path.into(),
        kind: PackKind::File { mode: 0o644, linked: false, content: Content::Bytes(content.into()) },
    }
}

fn link_entry(path: &str, target: &str) -> PackEntry {
    PackEntry { path: path.into(), kind: PackKind::Symlink { target: target.into() } }
}

#[test]
fn malicious_payloads_never_write_outside_the_target() {
    let cases: Vec<(&str, Vec<PackEntry>, &str)> = vec![
        (
            "dotdot",
            vec![file_entry("../escaped", "x")],
            "unsafe entry '../escaped': the path has a '..' component",
        ),
        (
            "absolute",
            vec![file_entry("/tmp/kubeferry-escaped", "x")],
            "unsafe entry '/tmp/kubeferry-escaped': the path is absolute",
        ),
        (
            "symlink-then-file",
            vec![link_entry("link", "../outside"), file_entry("link/escaped", "x")],
            "unsafe entry 'link': the link target '../outside' points outside the bundle",
        ),
        (
            "absolute-symlink-then-file",
            vec![link_entry("link", "/tmp"), file_entry("link/escaped", "x")],
            "unsafe entry 'link': the link target '/tmp' is absolute",
        ),
        (
            "file-through-a-symlink-inside",
            vec![dir_entry("d"), link_entry("l", "d"), file_entry("l/x", "x")],
            "unsafe entry 'l/x': its parent is not a directory",
        ),
        (
            "hardlink-escape",
            vec![PackEntry {
                path: "h".into(),
                kind: PackKind::Hardlink { target: "../outside/secret".into() },
            }],
            "unsafe entry 'h': a hard link must name a regular file listed before it",
        ),
        (
            "hardlink-absolute",
            vec![PackEntry { path: "h".into(), kind: PackKind::Hardlink { target: "/etc/shadow".into() } }],
            "unsafe entry 'h': a hard link must name a regular file listed before it",
        ),
        (
            "duplicate",
            vec![file_entry("a", "1"), file_entry("a", "2")],
            "unsafe entry 'a': entries are not in tree order, or the path is listed twice",
        ),
        (
            "hardlink-to-a-file-not-marked-linked",
            vec![
                file_entry("a", "1"),
                PackEntry { path: "h".into(), kind: PackKind::Hardlink { target: "a".into() } },
            ],
            "unsafe entry 'h': a hard link must name a regular file listed before it",
        ),
        (
            // Refused only after earlier entries were written into the staging directory.
            "refused-after-writing",
            vec![dir_entry("a"), file_entry("a/ok", "fine"), link_entry("b", "../outside")],
            "unsafe entry 'b': the link target '../outside' points outside the bundle",
        ),
    ];
    for (name, entries, cause) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        write(&outside.join("secret"), "do not touch");
        let (bundle, public) = malicious(tmp.path(), entries);
        let parent = tmp.path().join("work");
        fs::create_dir_all(&parent).unwrap();
        let (code, _, stderr) = run(stub_on(&bundle)
            .arg("extract")
            .arg("--to")
            .arg(parent.join("rootfs"))
            .arg("--trusted-key")
            .arg(&public));
        assert_eq!(code, EXIT_UNTRUSTED, "{name}: {stderr}");
        assert!(stderr.contains("caused by: the manifest is not acceptable"), "{name}: {stderr}");
        assert!(stderr.contains(&format!("caused by: {cause}")), "{name}: expected {cause:?} in\n{stderr}");
        assert!(listing(&parent).is_empty(), "{name}: left {:?}", listing(&parent));
        assert_eq!(listing(&outside), ["secret"], "{name}");
        assert_eq!(fs::read_to_string(outside.join("secret")).unwrap(), "do not touch");
        assert!(!Path::new("/tmp/kubeferry-escaped").exists());
    }
}

/// Flips bytes one at a time, in place, and checks that the reader refuses every flip without
/// panicking: every byte of the manifest, the signature section and the trailer, and a sample
/// of the stub and the payload. (A coverage-guided fuzzer needs a nightly toolchain, which is
/// not available here; this exercises the same parsers on every position that matters.)
#[test]
fn every_flipped_byte_of_the_tail_and_a_sample_of_the_rest_is_refused() {
    use kubeferry_installer::StreamOptions;
    use kubeferry_installer::extract::verify;
    use kubeferry_installer::trust::Trust;
    use std::os::unix::fs::FileExt;

    let b = built();
    let trust = Trust::from_sources(std::slice::from_ref(&b.public), &[], false, false).unwrap();
    let t = *Bundle::open(&b.bundle).unwrap().trailer();
    let file = fs::OpenOptions::new().read(true).write(true).open(&b.bundle).unwrap();
    let accepts = || -> bool {
        let Ok(bundle) = Bundle::open(&b.bundle) else { return false };
        let Ok(verified) = bundle.authenticate(&trust) else { return false };
        verify(&bundle, &verified, &StreamOptions::default(), &Silent).is_ok()
    };
    assert!(accepts(), "the intact bundle verifies");

    let mut offsets: Vec<u64> = (t.manifest_offset..t.file_len).collect();
    let mut x = 0x9e3779b97f4a7c15u64;
    for _ in 0..64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        offsets.push(x % t.manifest_offset);
    }
    let mut accepted = Vec::new();
    for offset in offsets {
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, offset).unwrap();
        for flip in [0x01u8, 0x80] {
            file.write_all_at(&[byte[0] ^ flip], offset).unwrap();
            if accepts() {
                accepted.push((offset, flip));
            }
            file.write_all_at(&byte, offset).unwrap();
        }
    }
    assert!(accepted.is_empty(), "flips that were accepted (offset, bit): {accepted:?}");
    assert!(accepts(), "restored bundle verifies");
}

/// A real arm64 bundle: the stub cross-built for aarch64, run under qemu-user.
#[test]
fn a_real_arm64_bundle_verifies_lists_and_extracts_under_emulation() {
    let qemu = Path::new("/usr/bin/qemu-aarch64-static");
    assert!(qemu.exists(), "qemu-aarch64-static is needed: run packaging/cross-setup.sh");
    let stub = arm64_stub_bin();
    let header = fs::read(stub).unwrap();
    assert_eq!(Arch::of_elf(&header), Ok(Arch::Arm64));
    assert_eq!(kubeferry_installer::arch::elf_is_dynamic(&header), Ok(false));

    let b = built();
    let out = b.dir.join("arm");
    ok(kubeferry()
        .args([
            "build",
            "--no-pull",
            "--allow-missing-images",
            "--name",
            "edge",
            "--version",
            "v1",
            "--arch",
            "arm64",
            "-o",
        ])
        .arg(&out)
        .arg("--key")
        .arg(&b.key)
        .arg(format!("--stub=arm64={}", stub.display()))
        .arg(&b.rootfs));
    let bundle = out.join("edge-v1-linux-arm64.run");
    let emulated = || {
        let mut cmd = Command::new(qemu);
        cmd.arg(&bundle).env("KUBEFERRY_TRUSTED_KEYS_DIR", "/nonexistent");
        cmd
    };
    let listed = ok(emulated().arg("list").arg("--trusted-key").arg(&b.public));
    assert!(listed.contains("bin/arch-tool"), "{listed}");
    ok(emulated().arg("verify").arg("--trusted-key").arg(&b.public));
    let target = b.dir.join("arm-out");
    ok(emulated().arg("extract").arg("--to").arg(&target).arg("--trusted-key").arg(&b.public));
    assert_eq!(fs::read_to_string(target.join("bin/arch-tool")).unwrap(), "arm64 tool");
    assert!(
        !target.join("amd64").exists() && !target.join("arm64").exists(),
        "overlay folders are laid over, not copied"
    );
    assert_eq!(fs::read(target.join("bin/env")).unwrap(), fs::read(b.rootfs.join("bin/env")).unwrap());

    // The emulated stub refuses a tampered arm64 bundle like the native one does.
    let mut bytes = fs::read(&bundle).unwrap();
    let t = *Bundle::open(&bundle).unwrap().trailer();
    bytes[t.payload_offset as usize + 7] ^= 1;
    fs::write(&bundle, bytes).unwrap();
    let (code, _, stderr) = run(emulated().arg("verify").arg("--trusted-key").arg(&b.public));
    assert_eq!(code, EXIT_UNTRUSTED, "{stderr}");
    assert!(stderr.contains("payload chunk 0 is corrupt"), "{stderr}");
}

/// The executables of a rootfs's `bin/` and of its `cri/containerd.tar.gz`, each with the
/// architecture its ELF header names.
fn executables(rootfs: &Path) -> Vec<(String, Result<Arch, String>)> {
    let arch_of = |bytes: &[u8]| Arch::of_elf(bytes).map_err(|e| e.to_string());
    let mut found: Vec<(String, Result<Arch, String>)> = fs::read_dir(rootfs.join("bin"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (format!("bin/{}", p.file_name().unwrap().to_string_lossy()), arch_of(&fs::read(&p).unwrap()))
        })
        .collect();
    let tarball = fs::File::open(rootfs.join("cri/containerd.tar.gz")).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let name = format!("cri/containerd.tar.gz:{}", entry.path().unwrap().display());
            let mut head = vec![0u8; 64];
            std::io::Read::read_exact(&mut entry, &mut head).unwrap();
            found.push((name, arch_of(&head)));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The example rootfs (Debian's containerd, runc, conntrack, socat, ethtool for both
/// architectures) as an arm64 bundle: its stub and every binary it carries are aarch64 ELF
/// files, and the stub verifies, lists and extracts it under qemu-user.
#[test]
fn the_example_rootfs_as_an_arm64_bundle_carries_arm64_binaries() {
    let qemu = Path::new("/usr/bin/qemu-aarch64-static");
    assert!(qemu.exists(), "qemu-aarch64-static is needed: run packaging/cross-setup.sh");
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = keygen(tmp.path(), "release");
    let out = tmp.path().join("dist");
    ok(kubeferry()
        .args(["build", "--no-pull", "--allow-missing-images", "--name", "example", "--version", "v1"])
        .args(["--arch", "arm64", "--key"])
        .arg(&key)
        .arg(format!("--stub=arm64={}", arm64_stub_bin().display()))
        .arg("-o")
        .arg(&out)
        .arg(example_rootfs()));
    let bundle = out.join("example-v1-linux-arm64.run");
    assert_eq!(Arch::of_elf(&fs::read(&bundle).unwrap()), Ok(Arch::Arm64), "the stub at its head");
    let emulated = |args: &[&str]| {
        let mut cmd = Command::new(qemu);
        cmd.arg(&bundle).args(args).arg("--trusted-key").arg(&public);
        cmd.env("KUBEFERRY_TRUSTED_KEYS_DIR", "/nonexistent");
        cmd
    };
    ok(&mut emulated(&["verify"]));
    let listed = ok(&mut emulated(&["list"]));
    assert!(listed.contains("cri/containerd.tar.gz") && listed.contains("bin/conntrack"), "{listed}");
    let target = tmp.path().join("x");
    ok(&mut emulated(&["extract", "--to", target.to_str().unwrap()]));
    let found = executables(&target);
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in [
        "bin/conntrack",
        "bin/socat",
        "cri/containerd.tar.gz:bin/containerd",
        "cri/containerd.tar.gz:bin/runc",
    ] {
        assert!(names.contains(&wanted), "{wanted} in {names:?}");
    }
    let wrong: Vec<_> = found.iter().filter(|(_, arch)| arch != &Ok(Arch::Arm64)).collect();
    assert!(wrong.is_empty(), "not arm64 ELF files: {wrong:?}");
    // The amd64 bundle of the same rootfs carries the other architecture's binaries.
    let amd64 = executables(&example_rootfs().join("amd64"));
    assert!(amd64.iter().all(|(_, arch)| arch == &Ok(Arch::Amd64)), "{amd64:?}");
}

/// The bundle's chunks, each as (codec, its bytes in the file, its unpacked bytes).
fn chunks_of(bundle: &Path) -> Vec<(Codec, Vec<u8>, Vec<u8>)> {
    let manifest = Bundle::open(bundle).unwrap().manifest_unverified().unwrap();
    let bytes = fs::read(bundle).unwrap();
    let mut at = manifest.stub.size as usize;
    let mut chunks = Vec::new();
    for chunk in &manifest.payload.chunks {
        let packed = bytes[at..at + chunk.size as usize].to_vec();
        at += chunk.size as usize;
        let unpacked = match chunk.codec {
            Codec::Zstd => zstd::decode_all(&packed[..]).unwrap(),
            Codec::Stored => packed.clone(),
        };
        assert_eq!(unpacked.len() as u64, chunk.unpacked_size);
        chunks.push((chunk.codec, packed, unpacked));
    }
    chunks
}

#[test]
fn machine_code_text_and_compressed_files_are_packed_apart_each_their_own_way() {
    let tmp = tempfile::tempdir().unwrap();
    let elf = fs::read("/usr/bin/bash").unwrap();
    assert!(elf.starts_with(b"\x7fELF") && elf.len() > 64 << 10 && elf.len() < 2 << 20);
    let mut gz = vec![0x1f, 0x8b];
    gz.extend(noise(100_000, 3));
    let text: String =
        (0..6000).map(|i| format!("  - name: item-{i}\n    image: sea.hub:5000/app:{}\n", i % 7)).collect();
    let small_elf = [b"\x7fELF".as_slice(), &noise(1000, 4)].concat();
    let file = |path: &str, content: &[u8]| PackEntry {
        path: path.into(),
        kind: PackKind::File { mode: 0o755, linked: false, content: Content::Bytes(content.to_vec()) },
    };
    let entries = || {
        vec![
            file("bin/bash", &elf),
            file("cri/x.tar.gz", &gz),
            file("etc/a-tool", &small_elf),
            file("etc/list.yaml", text.as_bytes()),
        ]
    };
    let stub = fs::read(stub_bin()).unwrap();
    let at_level = |data: &[u8], level| zstd::bulk::compress(data, level).unwrap();
    // What docs/format.md gives for ELF files at the default level.
    let code = |data: &[u8]| {
        use zstd::zstd_safe::{CParameter, Strategy};
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        for p in [
            CParameter::Strategy(Strategy::ZSTD_fast),
            CParameter::WindowLog(21),
            CParameter::HashLog(17),
            CParameter::MinMatch(5),
        ] {
            c.set_parameter(p).unwrap();
        }
        c.compress(data).unwrap()
    };

    let spec = Spec::new("kinds", "1", Arch::Amd64);
    let packed =
        pack(&stub, entries().into_iter().map(Ok), 0, &spec, None, &tmp.path().join("a"), &Silent).unwrap();
    let chunks = chunks_of(&packed.path);
    let unpacked: Vec<&[u8]> = chunks.iter().map(|c| &c.2[..]).collect();
    // A chunk holds one kind: the large ELF file alone; the small one goes with the text.
    let lengths: Vec<usize> = unpacked.iter().map(|u| u.len()).collect();
    let rest = [&small_elf[..], text.as_bytes()].concat();
    assert!(unpacked == [&elf[..], &gz[..], &rest[..]], "chunks of {lengths:?} bytes");
    assert_eq!(chunks[0].0, Codec::Zstd);
    assert!(chunks[0].1 == code(&elf), "the ELF file is compressed with the machine code settings");
    assert!(chunks[0].1 != at_level(&elf, 3), "and they are not level 3's");
    assert!(chunks[1].0 == Codec::Stored && chunks[1].1 == gz, "the gzip stream is stored as it is");
    assert!(chunks[2].0 == Codec::Zstd && chunks[2].1 == at_level(&rest, 3), "the rest is level 3");

    // Another level applies to every compressed chunk alike.
    let mut spec = Spec::new("kinds", "1", Arch::Amd64);
    spec.level = 5;
    let packed =
        pack(&stub, entries().into_iter().map(Ok), 0, &spec, None, &tmp.path().join("b"), &Silent).unwrap();
    let chunks = chunks_of(&packed.path);
    assert!(chunks[0].1 == at_level(&elf, 5) && chunks[2].1 == at_level(&rest, 5));
}
