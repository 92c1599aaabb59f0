//! Bad conditions on the target: a full disk, an interrupted run, a multi-GiB input. Each
//! must end in a clear error or success, with nothing half-written left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubeferry_builder::pack::{Content, PackEntry, PackKind, Spec, pack};
use kubeferry_installer::arch::Arch;
use kubeferry_installer::extract::{ExtractOptions, extract};
use kubeferry_installer::keys::SecretKey;
use kubeferry_installer::progress::Silent;
use kubeferry_installer::reader::Bundle;
use kubeferry_installer::trust::Trust;
use kubeferry_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A signed bundle holding one file of `size` pseudo-random bytes, and its public key.
fn bundle_with_noise(dir: &Path, size: usize) -> (PathBuf, PathBuf) {
    let data = dir.join("big.bin");
    let mut file = fs::File::create(&data).unwrap();
    let mut written = 0;
    let mut seed = 1;
    while written < size {
        let n = (size - written).min(4 << 20);
        file.write_all(&noise(n, seed)).unwrap();
        written += n;
        seed += 1;
    }
    drop(file);
    let key = SecretKey::generate().unwrap();
    let public = dir.join("test.pub");
    fs::write(&public, key.public_key().to_file_string()).unwrap();
    let entries = vec![
        PackEntry { path: "bin".into(), kind: PackKind::Dir { mode: 0o755 } },
        PackEntry {
            path: "bin/big.bin".into(),
            kind: PackKind::File {
                mode: 0o644,
                linked: false,
                content: Content::Path { path: data.clone(), size: size as u64 },
            },
        },
    ];
    let spec = Spec { level: 1, ..Spec::new("noise", "1", Arch::Amd64) };
    let stub = fs::read(stub_bin()).unwrap();
    let entries = entries.into_iter().map(Ok);
    let packed = pack(&stub, entries, size as u64, &spec, Some(&key), &dir.join("dist"), &Silent).unwrap();
    fs::remove_file(data).unwrap();
    (packed.path, public)
}

/// A tmpfs of `size` mounted at `dir` for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID,
            Some(format!("size={size}").as_str()),
        )
        .expect("mounting a tmpfs needs root: run the tests as root (CI does)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount(&self.0);
    }
}

#[test]
fn a_full_disk_is_refused_before_writing_and_cleaned_up_when_hit() {
    let tmp = tempfile::tempdir().unwrap();
    let (bundle, public) = bundle_with_noise(tmp.path(), 2 << 20);
    let small = Tmpfs::mount(&tmp.path().join("small"), "1m");

    // The free-space check refuses before anything is written.
    let target = small.0.join("rootfs");
    let mut cmd = Command::new(&bundle);
    cmd.arg("extract").arg("--to").arg(&target).arg("--trusted-key").arg(&public);
    let (code, _, stderr) = run(&mut cmd);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "caused by: not enough free space in '{}': the bundle unpacks to 2.0 MiB and 1.0 MiB are free",
            small.0.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("hint: free some space or extract to another file system"), "{stderr}");
    assert!(listing(&small.0).is_empty(), "left: {:?}", listing(&small.0));

    // When the disk fills up anyway (here: the check skipped), the error names the file and
    // the staging directory is removed.
    let opened = Bundle::open(&bundle).unwrap();
    let trust = Trust::from_sources(&[public], &[], false, false).unwrap();
    let verified = opened.authenticate(&trust).unwrap();
    let options = ExtractOptions { skip_space_check: true, ..ExtractOptions::default() };
    let err = extract(&opened, &verified, &target, &options, &Silent).unwrap_err();
    assert_eq!(err.to_string(), format!("could not write '{}'", target.join("bin/big.bin").display()));
    let source = std::error::Error::source(&err).unwrap().downcast_ref::<std::io::Error>().unwrap();
    assert_eq!(source.kind(), std::io::ErrorKind::StorageFull);
    assert!(listing(&small.0).is_empty(), "left: {:?}", listing(&small.0));
}

/// Starts an extraction and stops it (SIGSTOP) while its staging directory exists.
fn start_and_freeze(bundle: &Path, public: &Path, target: &Path) -> std::process::Child {
    let staging = target.parent().unwrap().join(".rootfs.kubeferry-staging");
    let child = Command::new(bundle)
        .arg("extract")
        .arg("--to")
        .arg(target)
        .arg("--trusted-key")
        .arg(public)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !staging.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "the extraction never started");
        std::thread::sleep(Duration::from_micros(200));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGSTOP).unwrap();
    assert!(
        staging.exists(),
        "the extraction finished before it could be interrupted: make the input larger"
    );
    child
}

#[test]
fn an_interrupted_extraction_leaves_nothing_and_a_killed_one_is_cleaned_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (bundle, public) = bundle_with_noise(tmp.path(), 192 << 20);
    let parent = tmp.path().join("work");
    let target = parent.join("rootfs");

    // Ctrl-C: the run stops at its next chunk and removes its staging directory.
    let child = start_and_freeze(&bundle, &public, &target);
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    kill(pid, Signal::SIGCONT).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("caused by: interrupted; nothing half-written was left behind"), "{stderr}");
    assert!(listing(&parent).is_empty(), "left: {:?}", listing(&parent));

    // SIGKILL: nothing can clean up, but the target is untouched and the next run removes the
    // stale staging directory and finishes.
    let mut child = start_and_freeze(&bundle, &public, &target);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(listing(&parent), [".rootfs.kubeferry-staging"]);
    ok(Command::new(&bundle).arg("extract").arg("--to").arg(&target).arg("--trusted-key").arg(&public));
    assert_eq!(listing(&parent), ["rootfs"]);
    assert_eq!(fs::metadata(target.join("bin/big.bin")).unwrap().len(), 192 << 20);
}

/// Peak resident memory in MiB of a command, measured by GNU time.
fn peak_rss_mib(cmd: &mut Command) -> f64 {
    let report = tempfile::NamedTempFile::new().unwrap();
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("-f").arg("%M").arg("-o").arg(report.path()).arg(program).args(args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    ok(&mut timed);
    let kib: f64 = fs::read_to_string(report.path()).unwrap().trim().parse().unwrap();
    kib / 1024.0
}

#[test]
fn several_gib_go_through_build_and_extract_in_bounded_memory() {
    assert!(Path::new("/usr/bin/time").exists(), "GNU time is needed: apt-get install time");
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    // 3 GiB: a sparse 2.5 GiB file, and 512 MiB of noise so that real compression happens.
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    let sparse = fs::File::create(rootfs.join("bin/sparse.img")).unwrap();
    sparse.set_len(5 << 29).unwrap();
    let mut noisy = fs::File::create(rootfs.join("bin/noise")).unwrap();
    for seed in 0..128 {
        noisy.write_all(&noise(4 << 20, seed + 1)).unwrap();
    }
    drop(noisy);
    let (key, public) = keygen(tmp.path(), "large");

    let build_rss = peak_rss_mib(
        kubeferry()
            .args(["build", "--quiet", "--name", "large", "--version", "1", "--level", "1", "-o"])
            .arg(tmp.path().join("dist"))
            .arg("--key")
            .arg(&key)
            .arg(format!("--stub=amd64={}", stub_bin().display()))
            .arg(&rootfs),
    );
    fs::remove_dir_all(&rootfs).unwrap();
    let bundle = tmp.path().join("dist/large-1-linux-amd64.run");
    let extract_rss = peak_rss_mib(
        Command::new(&bundle)
            .args(["extract", "--quiet", "--to"])
            .arg(tmp.path().join("out"))
            .arg("--trusted-key")
            .arg(&public),
    );
    eprintln!("peak RSS for 3 GiB: build {build_rss:.1} MiB, extract {extract_rss:.1} MiB");
    assert_eq!(fs::metadata(tmp.path().join("out/bin/sparse.img")).unwrap().len(), 5 << 29);
    assert_eq!(fs::metadata(tmp.path().join("out/bin/noise")).unwrap().len(), 512 << 20);
    assert!(build_rss < 64.0, "build peak RSS {build_rss:.1} MiB");
    assert!(extract_rss < 64.0, "extract peak RSS {extract_rss:.1} MiB");
}
