//! The container runtime step with the real containerd and runc of the example rootfs
//! (Debian's packages), unpacked from a real signed bundle into a test root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use kubeferry_installer::cri::{self, RuntimeSettings};
use kubeferry_tests::*;

/// Builds a bundle of the example rootfs, extracts it with the stub, and returns the
/// extracted rootfs (the amd64 overlay laid over the common tree).
fn extracted_example(dir: &std::path::Path) -> PathBuf {
    let (key, public) = keygen(dir, "release");
    let out = ok(kubeferry()
        .args([
            "build",
            "--quiet",
            "--no-pull",
            "--allow-missing-images",
            "--name",
            "example",
            "--version",
            "v1.20.2",
            "-o",
        ])
        .arg(dir.join("dist"))
        .arg("--key")
        .arg(&key)
        .arg(format!("--stub=amd64={}", stub_bin().display()))
        .arg(example_rootfs()));
    let rootfs = dir.join("rootfs");
    ok(Command::new(out.trim())
        .args(["extract", "--quiet", "--to"])
        .arg(&rootfs)
        .arg("--trusted-key")
        .arg(&public));
    rootfs
}

#[test]
fn containerd_from_the_bundle_starts_with_the_rendered_configuration_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = extracted_example(tmp.path());
    let host = RootedHost::new(&tmp.path().join("host"));
    let settings = RuntimeSettings {
        registry: "sea.hub:5000".into(),
        systemd_cgroup: true,
        sandbox_image: Some("sea.hub:5000/pause:3.2".into()),
        credentials: None,
    };
    let installed = cri::install_containerd(&host, &rootfs, &settings).unwrap_or_else(|e| {
        panic!("{e:?}\nlog:\n{}\ncontainerd:\n{}", host.log_text(), host.service_log("containerd.service"))
    });

    // The real containerd answers on the socket the rendered configuration names.
    let root = &host.root;
    let socket = root.join("run/containerd/containerd.sock");
    let version =
        ok(Command::new(root.join("usr/local/bin/ctr")).arg("--address").arg(&socket).arg("version"));
    assert!(version.contains("Server:") && version.contains("1.6.20"), "{version}");
    assert!(root.join("var/lib/containerd").is_dir(), "containerd keeps its data below the root");

    let config = fs::read_to_string(root.join("etc/containerd/config.toml")).unwrap();
    assert!(
        config.starts_with("# containerd 1.6.20 configuration for the cluster"),
        "the image's file, kept: {config}"
    );
    assert!(
        config.contains(&format!("config_path = \"{}\"", root.join("etc/containerd/certs.d").display())),
        "{config}"
    );
    assert!(config.contains("SystemdCgroup = true"), "{config}");
    let hosts = fs::read_to_string(root.join("etc/containerd/certs.d/sea.hub:5000/hosts.toml")).unwrap();
    assert!(hosts.contains("server = \"http://sea.hub:5000\""), "{hosts}");
    let unit = fs::read_to_string(root.join("etc/systemd/system/containerd.service")).unwrap();
    assert!(unit.contains(&format!(
        "ExecStart={} --config {}",
        root.join("usr/local/bin/containerd").display(),
        root.join("etc/containerd/config.toml").display()
    )));
    for binary in ["containerd", "containerd-shim-runc-v2", "ctr", "runc"] {
        let path = root.join("usr/local/bin").join(binary);
        assert!(installed.files.contains(&PathBuf::from("/usr/local/bin").join(binary)), "{binary} recorded");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions()) & 0o777,
            0o755
        );
    }
    let log = host.log_text();
    assert!(log.contains("containerd answers on"), "{log}");
}

#[test]
fn a_rootfs_without_a_runtime_tarball_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let host = RootedHost::new(&tmp.path().join("host"));
    let settings = RuntimeSettings {
        registry: "sea.hub:5000".into(),
        systemd_cgroup: true,
        sandbox_image: None,
        credentials: None,
    };
    let err = cri::install_containerd(&host, tmp.path(), &settings).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the container runtime cannot be installed: the rootfs has no 'cri/containerd.tar.gz'"
    );
    assert!(!host.root.join("usr").exists(), "nothing written");
}

/// containerd, configured by the install, pulls and unpacks an image through the bundled
/// registry (kubeferry's own server over a storage directory written by docker-registry), with
/// no other registry reachable.
#[test]
fn containerd_pulls_an_image_through_the_bundled_registry() {
    use kubeferry_installer::registry::{Registry, RegistryConfig};
    use kubeferry_tests::images::pushed;

    let p = pushed();
    let served = Registry::start(RegistryConfig {
        root: p.storage.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 4,
        users: None,
    })
    .unwrap();
    let registry = served.local_addr().to_string();

    let tmp = tempfile::tempdir().unwrap();
    let rootfs = extracted_example(tmp.path());
    let host = RootedHost::new(&tmp.path().join("host"));
    let settings = RuntimeSettings {
        registry: registry.clone(),
        systemd_cgroup: false,
        sandbox_image: None,
        credentials: None,
    };
    cri::install_containerd(&host, &rootfs, &settings)
        .unwrap_or_else(|e| panic!("{e:?}\ncontainerd:\n{}", host.service_log("containerd.service")));

    let root = &host.root;
    let hosts =
        fs::read_to_string(root.join(format!("etc/containerd/certs.d/{registry}/hosts.toml"))).unwrap();
    assert!(hosts.contains(&format!("server = \"http://{registry}\"")), "{hosts}");
    let ctr = || {
        let mut cmd = Command::new(root.join("usr/local/bin/ctr"));
        cmd.arg("--address").arg(root.join("run/containerd/containerd.sock"));
        cmd
    };
    let reference = format!("{registry}/library/app:v1");
    ok(ctr()
        .args(["images", "pull", "--hosts-dir"])
        .arg(root.join("etc/containerd/certs.d"))
        .arg(&reference));
    let images = ok(ctr().args(["images", "ls"]));
    assert!(images.contains(&reference) && images.contains(&p.made.app.manifest.digest), "{images}");
}
