//! The container runtime step with the real containerd and runc of the example rootfs
//! (Debian's packages), unpacked from a real signed bundle into a test root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
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
/// The test images served by kubeferry's registry, and the example rootfs's containerd
/// installed in a test root with that registry as its mirror.
struct WithRegistry {
    pushed: kubeferry_tests::images::Pushed,
    served: kubeferry_installer::registry::Registry,
    _tmp: tempfile::TempDir,
    host: RootedHost,
}

fn containerd_with_registry() -> WithRegistry {
    use kubeferry_installer::registry::{Registry, RegistryConfig};

    let pushed = kubeferry_tests::images::pushed();
    let served = Registry::start(RegistryConfig {
        root: pushed.storage.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 4,
        users: None,
    })
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = extracted_example(tmp.path());
    let host = RootedHost::new(&tmp.path().join("host"));
    let settings = RuntimeSettings {
        registry: served.local_addr().to_string(),
        systemd_cgroup: false,
        sandbox_image: None,
        credentials: None,
    };
    cri::install_containerd(&host, &rootfs, &settings)
        .unwrap_or_else(|e| panic!("{e:?}\ncontainerd:\n{}", host.service_log("containerd.service")));
    WithRegistry { pushed, served, _tmp: tmp, host }
}

#[test]
fn containerd_pulls_an_image_through_the_bundled_registry() {
    let w = containerd_with_registry();
    let (p, host) = (&w.pushed, &w.host);
    let registry = w.served.local_addr().to_string();
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

/// A rootfs whose `cri/docker.tar.gz` is docker's static bundle layout made of Debian's
/// docker.io, containerd, runc and tini (packaging/example-rootfs/docker-tarball.sh), with
/// `daemon_json` as its `etc/daemon.json`.
fn docker_rootfs(dir: &std::path::Path, daemon_json: Option<&str>) -> PathBuf {
    static TARBALL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let tarball = TARBALL.get_or_init(|| {
        let file = kubeferry_tests::root().join("target/test-docker/docker.tar.gz");
        ok(Command::new(kubeferry_tests::root().join("packaging/example-rootfs/docker-tarball.sh"))
            .arg(&file));
        file
    });
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("cri")).unwrap();
    fs::copy(tarball, rootfs.join("cri/docker.tar.gz")).unwrap();
    if let Some(text) = daemon_json {
        write(&rootfs.join("etc/daemon.json"), text);
    }
    rootfs
}

/// docker from the bundle's `cri/docker.tar.gz` starts with the image's daemon.json merged with
/// what the install owns, answers on its socket below the root, and pulls an image through the
/// bundled registry with the registry's credentials; the kubelet gets them too.
#[test]
fn docker_from_the_bundle_starts_and_pulls_through_the_bundled_registry() {
    use kubeferry_installer::docker;
    use kubeferry_installer::registry::{Credentials, Registry, RegistryConfig, Users};
    use kubeferry_tests::images::pushed;

    let p = pushed();
    let credentials = Credentials::new("kubeferry", "docker-pull-secret").unwrap();
    let users =
        Users::parse(&credentials.htpasswd_line().unwrap(), std::path::Path::new("htpasswd")).unwrap();
    let served = Registry::start(RegistryConfig {
        root: p.storage.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 4,
        users: Some(users),
    })
    .unwrap();
    let registry = served.local_addr().to_string();

    let tmp = tempfile::tempdir().unwrap();
    // sealer's daemon.json, with its mirror and a cgroup driver the install replaces.
    let rootfs = docker_rootfs(
        tmp.path(),
        Some(
            r#"{"max-concurrent-downloads": 10, "exec-opts": ["native.cgroupdriver=systemd"], "registry-mirrors": ["https://sea.hub:5000"]}"#,
        ),
    );
    // Dropped after the host, which stops dockerd.
    let _dockerd_files = DockerdFiles::new();
    let host = RootedHost::new(&tmp.path().join("host"));
    let settings = RuntimeSettings {
        registry: registry.clone(),
        systemd_cgroup: false,
        sandbox_image: None,
        credentials: Some(credentials.clone()),
    };
    let installed = docker::install(&host, &rootfs, &settings).unwrap_or_else(|e| {
        panic!("{e:?}\nlog:\n{}\ndocker:\n{}", host.log_text(), host.service_log("docker.service"))
    });

    let root = &host.root;
    for file in
        ["usr/local/bin/dockerd", "usr/local/bin/docker-init", "usr/local/bin/runc", "etc/docker/daemon.json"]
    {
        assert!(root.join(file).is_file(), "{file}");
        assert!(installed.files.contains(&PathBuf::from("/").join(file)), "{file} recorded");
    }
    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(root.join("etc/docker/daemon.json")).unwrap()).unwrap();
    assert_eq!(config["max-concurrent-downloads"], 10, "the image's settings kept");
    assert_eq!(config["exec-opts"], serde_json::json!(["native.cgroupdriver=cgroupfs"]));
    assert_eq!(config["data-root"], root.join("var/lib/docker").display().to_string());

    // The real dockerd answers below the root, with the install's settings.
    let info = ok(docker::docker(&host).args([
        "info",
        "--format",
        "{{.DockerRootDir}} {{.CgroupDriver}} {{json .RegistryConfig.IndexConfigs}}",
    ]));
    assert!(info.starts_with(&format!("{} cgroupfs ", root.join("var/lib/docker").display())), "{info}");
    assert!(info.contains(&format!("\"{registry}\"")) && info.contains("\"Secure\":false"), "{info}");

    // A pull without the credentials is refused; the kubelet's credentials file has them, and
    // docker pulls with them.
    let reference = format!("{registry}/library/app:v1");
    let kubelet = root.join("var/lib/kubelet/config.json");
    assert_eq!(fs::metadata(&kubelet).unwrap().permissions().mode() & 0o777, 0o600);
    let images = docker_pull_with_kubelet_credentials(&host, &tmp.path().join("client"), &reference);
    assert!(
        images.contains(&format!("{registry}/library/app:v1 {}", p.made.app.manifest.digest)),
        "{images}"
    );
}

/// Forwards connections to `upstream`. On a connection whose requests name `stall`, the
/// responses stop after `keep` more bytes and the connection stays open: a transfer cut short
/// but never closed, as when the host loses power in the middle of a pull.
fn stalling_proxy(upstream: std::net::SocketAddr, stall: String, keep: usize) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let mut server = TcpStream::connect(upstream).unwrap();
            let (mut client_out, mut server_in) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let seen = Arc::new(AtomicBool::new(false));
            let stall = stall.clone();
            let flag = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                while let Ok(n) = client.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if String::from_utf8_lossy(&buf[..n]).contains(&stall) {
                        flag.store(true, Ordering::SeqCst);
                    }
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                let mut left = keep;
                while let Ok(n) = server_in.read(&mut buf) {
                    let n = if seen.load(Ordering::SeqCst) { n.min(left) } else { n };
                    if seen.load(Ordering::SeqCst) {
                        left -= n;
                    }
                    if n == 0 || client_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                // Hold the connection open, sending nothing more.
                std::thread::sleep(std::time::Duration::from_secs(3600));
                drop((client_out, server_in));
            });
        }
    });
    addr
}

#[test]
fn a_pull_cut_by_a_power_loss_is_forgotten_by_the_reset_and_pulled_again() {
    let w = containerd_with_registry();
    let (p, host, served) = (&w.pushed, &w.host, &w.served);
    let proxy = stalling_proxy(served.local_addr(), p.made.app.layer.digest.clone(), 100);
    let root = host.root.clone();
    let ctr = || {
        let mut cmd = Command::new(root.join("usr/local/bin/ctr"));
        cmd.arg("--address").arg(root.join("run/containerd/containerd.sock")).args(["--namespace", "k8s.io"]);
        cmd
    };
    let pull = |registry: String| {
        let mut cmd = ctr();
        cmd.args(["images", "pull", "--plain-http"]).arg(format!("{registry}/library/app:v1"));
        cmd
    };

    // A pull whose layer never arrives: the manifest and the config are stored under the
    // pull's lease. Then the power goes: the pull ends without its lease being released, and
    // the stored files are lost while containerd's database still lists them.
    let mut cut = pull(proxy.to_string()).stdout(std::process::Stdio::null()).spawn().unwrap();
    let blobs = root.join("var/lib/containerd/io.containerd.content.v1.content/blobs/sha256");
    let config = blobs.join(p.made.app.config.digest.strip_prefix("sha256:").unwrap());
    let start = std::time::Instant::now();
    while !config.exists() {
        assert!(start.elapsed().as_secs() < 60, "the config was never stored");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    cut.kill().unwrap();
    cut.wait().unwrap();
    assert!(!ok(ctr().args(["leases", "list", "--quiet"])).trim().is_empty(), "the pull's lease is left");
    for blob in fs::read_dir(&blobs).unwrap() {
        fs::remove_file(blob.unwrap().path()).unwrap();
    }
    let (code, _, stderr) = run(&mut pull(served.local_addr().to_string()));
    assert!(code != 0 && stderr.contains("not found"), "a pull trusts the lost content: {stderr}");

    cri::reset_kubernetes_namespace(host, std::time::Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:?}\ncontainerd:\n{}", host.service_log("containerd.service")));
    ok(&mut pull(served.local_addr().to_string()));
    assert_eq!(ok(ctr().args(["leases", "list", "--quiet"])).trim(), "", "the cut pull's lease is gone");
    let images = ok(ctr().args(["images", "ls", "--quiet"]));
    assert!(images.contains("library/app:v1"), "{images}");
}
