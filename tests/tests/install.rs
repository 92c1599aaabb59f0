//! `install` on this host, with the real stub: preflight refusals with their exact messages.
//! (The runtime, registry and kubeadm steps are not implemented yet.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::Command;

use kubeferry_tests::*;

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    public: PathBuf,
    bundle: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let rootfs = fixture_rootfs(&dir);
    let (key, public) = keygen(&dir, "release");
    let out = ok(kubeferry()
        .args(["build", "--name", "edge", "--version", "v1", "-o"])
        .arg(dir.join("dist"))
        .arg("--key")
        .arg(&key)
        .arg(format!("--stub=amd64={}", stub_bin().display()))
        .arg(&rootfs));
    Fixture { _dir: tmp, dir, public, bundle: PathBuf::from(out.trim()) }
}

fn install(f: &Fixture, extra: &[&str]) -> (i32, String) {
    let (code, _, stderr) = run(Command::new(&f.bundle)
        .arg("install")
        .arg("--trusted-key")
        .arg(&f.public)
        .arg("--rootfs-dir")
        .arg(f.dir.join("node/rootfs"))
        .args(extra));
    (code, stderr)
}

#[test]
fn preflight_lists_every_finding_and_changes_nothing() {
    let f = fixture();
    let port = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 6443)).ok();
    let (code, stderr) =
        install(&f, &["--ignore-preflight", "systemd,cgroups,tools,address,memory,cpu,swap"]);
    if port.is_some() {
        assert_eq!(code, 4, "{stderr}");
        assert!(stderr.contains("caused by: this host is not ready for the install:\n    [port-6443] port 6443 is in use\n      fix: stop what listens on it (see 'ss -ltnp sport = :6443')"), "{stderr}");
        assert!(
            stderr.contains("hint: fix what is listed, or pass --ignore-preflight port-6443 to go on anyway"),
            "{stderr}"
        );
        assert!(!f.dir.join("node").exists(), "nothing was written");
    }
    drop(port);

    // This machine runs no systemd: that alone refuses the install, with its remedy.
    let (code, stderr) = install(&f, &["--ignore-preflight", "tools,address,memory,cpu,swap,port-6443"]);
    if std::fs::read_to_string("/proc/1/comm").unwrap_or_default().trim() != "systemd" {
        assert_eq!(code, 4, "{stderr}");
        assert!(stderr.contains("[systemd] systemd is not the init system"), "{stderr}");
        assert!(!f.dir.join("node").exists());
    }
}

#[test]
fn with_every_check_ignored_the_rootfs_is_unpacked_and_the_missing_steps_are_named() {
    let f = fixture();
    let (code, stderr) = install(&f, &["--ignore-preflight", "all"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "caused by: the rootfs was verified and unpacked into '{}', but this version of kubeferry does not install the container runtime, the registry or Kubernetes yet",
            f.dir.join("node/rootfs").display()
        )),
        "{stderr}"
    );
    assert!(f.dir.join("node/rootfs/cri/containerd.tar.gz").is_file());
}
