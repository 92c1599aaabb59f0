//! `install` and `status` on this host, with the real stub: preflight refusals with their exact
//! messages, the plan, the status of a bundle not installed. (The steps themselves run under a
//! test root: `steps.rs`, `uninstall.rs`.)
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
        .args(["build", "--no-pull", "--allow-missing-images", "--name", "edge", "--version", "v1", "-o"])
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
fn dry_run_prints_the_plan_and_changes_nothing() {
    let f = fixture();
    let (code, stdout, stderr) = run(Command::new(&f.bundle)
        .args(["install", "--dry-run", "--trusted-key"])
        .arg(&f.public)
        .arg("--rootfs-dir")
        .arg(f.dir.join("node/rootfs")));
    assert_eq!(code, 0, "{stderr}");
    let rootfs = f.dir.join("node/rootfs");
    assert_eq!(
        stdout,
        format!(
            " 1. extract       [todo] unpack the verified rootfs into '{r}'\n \
             2. runtime       [todo] install containerd from {r}/cri/containerd.tar.gz into /usr/local/bin, pulling from sea.hub:5000, and start it\n \
             3. registry      [todo] serve {r}/registry on sea.hub:5000 (sea.hub -> 127.0.0.1) as kubeferry-registry.service, run by kubeferry's own read-only registry\n \
             4. kubernetes    [todo] put {r}/bin/* (kubeadm, kubelet, kubectl, ...) into /usr/bin, with the kubelet unit, kernel modules and sysctls, and enable the kubelet\n \
             5. kubeadm-init  [todo] render etc/kubeadm.yml into /etc/kubernetes/kubeadm-kubeferry.yaml, run kubeadm init --upload-certs (without kubeadm's preflight, and without CoreDNS unless registry/ holds it), copy admin.conf to /root/.kube/config\n \
             6. applications  [todo] apply {r}/manifests/**/*.yaml in order with kubectl, then run the image's ENTRYPOINT and CMD (from {r}/Kubefile)\n",
            r = rootfs.display()
        )
    );
    assert!(!f.dir.join("node").exists(), "nothing was written");
}

#[test]
fn status_of_a_bundle_that_is_not_installed() {
    let f = fixture();
    let (code, stdout, stderr) = run(Command::new(&f.bundle).args(["status", "--json"]));
    assert_eq!(code, 1, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json, serde_json::json!({"installed": false, "name": "edge"}));
    let (code, stdout, _) = run(Command::new(&f.bundle).arg("status"));
    assert_eq!((code, stdout.as_str()), (1, "'edge' is not installed on this host\n"));
}

#[test]
fn uninstall_of_a_bundle_that_is_not_installed_changes_nothing() {
    let state = std::path::Path::new("/var/lib/kubeferry/edge");
    if state.exists() {
        return; // Not this test's to touch.
    }
    let had_root = std::path::Path::new("/var/lib/kubeferry").exists();
    let f = fixture();
    let (code, stdout, stderr) = run(Command::new(&f.bundle).arg("uninstall"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr, "'edge' is not installed on this host: nothing to do\n");
    assert!(!state.exists(), "the log it opened went with it");
    assert_eq!(std::path::Path::new("/var/lib/kubeferry").exists(), had_root);
}
