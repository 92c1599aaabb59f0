//! The registry shipped as a container image (`images/registry.tar`), with the real tools: the
//! runtime step installs containerd from the rootfs, then the registry step loads a registry
//! image made from Debian's docker-registry into it and runs it as the registry service over
//! a storage directory written by docker-registry with skopeo-pushed images; containerd pulls
//! through it.
//!
//! The registry domain is `localhost`: the machine's own /etc/hosts is not the test's to
//! change. The container runs with the host's network on a free port. containerd itself
//! writes its shims' sockets under the machine's /run/containerd (hard-coded in containerd
//! 1.6), and the container's cgroups under /sys/fs/cgroup/*/kubeferry: the guard removes
//! the container, and the cgroups it left, on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use kubeferry_installer::cri::{self, RuntimeSettings};
use kubeferry_installer::host::Host;
use kubeferry_installer::install::registry_image::{self, CONTAINER, NAMESPACE};
use kubeferry_installer::install::{self, InstallConfig};
use kubeferry_installer::registry::Credentials;
use kubeferry_tests::images::{self, free_addr, pushed, registry_image_archive, skopeo};
use kubeferry_tests::*;

/// The container's cgroup path is the same for every containerd of this machine: one test at
/// a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Kills and removes the registry's container of the containerd below `root`, then the
/// cgroups it left; dropped before the host, which stops containerd.
struct Guard {
    root: PathBuf,
}

impl Guard {
    fn ctr(&self) -> Command {
        let mut cmd = Command::new(self.root.join("usr/local/bin/ctr"));
        cmd.arg("--address").arg(self.root.join("run/containerd/containerd.sock")).args(["-n", NAMESPACE]);
        cmd
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.root.join("usr/local/bin/ctr").is_file() {
            let _ = self.ctr().args(["tasks", "kill", "-s", "SIGKILL", CONTAINER]).output();
            std::thread::sleep(Duration::from_millis(300));
            let _ = self.ctr().args(["tasks", "delete", "--force", CONTAINER]).output();
            let _ = self.ctr().args(["containers", "delete", CONTAINER]).output();
        }
        // When containerd is gone already: the container's processes (by its cgroup) and its
        // shim (by the socket below the root it names) are killed by hand.
        let cgroups: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|controller| controller.path().join(NAMESPACE))
            .collect();
        let mut pids: Vec<String> = cgroups
            .iter()
            .filter_map(|dir| fs::read_to_string(dir.join(CONTAINER).join("cgroup.procs")).ok())
            .flat_map(|procs| procs.lines().map(str::to_string).collect::<Vec<_>>())
            .collect();
        pids.extend(processes_naming(&self.root.display().to_string()).into_iter().filter_map(
            |(pid, cmdline)| (cmdline.contains("shim") && cmdline.contains(NAMESPACE)).then_some(pid),
        ));
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&pids).output();
            std::thread::sleep(Duration::from_millis(500));
            // A killed shim leaves its socket, named (containerd 1.6) by the SHA-256 of
            // "ADDRESS/NAMESPACE/ID".
            let address = self.root.join("run/containerd/containerd.sock");
            let named = format!("{}/{NAMESPACE}/{CONTAINER}", address.display());
            let hash = kubeferry_tests::images::sha256(named.as_bytes());
            let _ = fs::remove_file(Path::new("/run/containerd/s").join(&hash[7..]));
        }
        // containerd's runc shim keeps each namespace's state here whatever its `state` says.
        let _ = fs::remove_dir_all(Path::new("/run/containerd/runc").join(NAMESPACE));
        for dir in cgroups {
            let _ = fs::remove_dir(dir.join(CONTAINER));
            let _ = fs::remove_dir(&dir);
        }
    }
}

/// The processes whose command line names `needle` (a shim names its container and socket):
/// (pid, command line).
fn processes_naming(needle: &str) -> Vec<(String, String)> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()) && *pid != std::process::id().to_string())
        .filter_map(|pid| {
            let cmdline = fs::read(Path::new("/proc").join(&pid).join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .filter(|(_, c)| c.contains(needle))
        .collect()
}

/// One raw HTTP/1.1 GET of `/v2/` with the registry's name: (status, head).
fn v2(addr: SocketAddr, host: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, text.split("\r\n\r\n").next().unwrap().to_string())
}

/// A rootfs with containerd (the example rootfs's), the registry image, and the registry/
/// written by docker-registry; with `etc/registry_config.yml` when `config` is given.
fn rootfs(dir: &Path, storage: &Path, config: Option<&str>) -> PathBuf {
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("cri")).unwrap();
    fs::create_dir_all(rootfs.join("images")).unwrap();
    fs::copy(example_rootfs().join("amd64/cri/containerd.tar.gz"), rootfs.join("cri/containerd.tar.gz"))
        .unwrap();
    registry_image_archive(&rootfs.join(registry_image::ARCHIVE), "registry:2.8.2");
    ok(Command::new("cp").arg("-a").arg(storage).arg(rootfs.join("registry")));
    if let Some(config) = config {
        write(&rootfs.join("etc/registry_config.yml"), config);
    }
    rootfs
}

/// Installs the runtime, then the registry step over `rootfs`; returns the registry's address.
fn runtime_then_registry(host: &RootedHost, rootfs: &Path, config: &InstallConfig) {
    let settings = RuntimeSettings {
        registry: format!("{}:{}", config.registry_domain, config.registry_port),
        systemd_cgroup: false,
        sandbox_image: None,
        credentials: config.registry_credentials.clone(),
    };
    cri::install_containerd(host, rootfs, &settings)
        .unwrap_or_else(|e| panic!("{e:?}\ncontainerd:\n{}", host.service_log(cri::UNIT_NAME)));
    fs::create_dir_all(rootfs.with_file_name("bundle")).unwrap();
    let (bundle, _) = open_bundle(&rootfs.with_file_name("bundle"), &rootfs.with_file_name("tiny"));
    install::registry::start(host, &bundle, rootfs, &rootfs.join("registry"), config).unwrap_or_else(|e| {
        panic!(
            "{e:?}\nlog:\n{}\nregistry:\n{}\ncontainerd:\n{}",
            host.log_text(),
            host.service_log(install::REGISTRY_UNIT_NAME),
            host.service_log(cri::UNIT_NAME)
        )
    });
}

fn config(port: u16, credentials: Option<Credentials>) -> InstallConfig {
    InstallConfig {
        registry_domain: "localhost".into(),
        registry_port: port,
        registry_credentials: credentials,
        ..InstallConfig::new("example", "example.run")
    }
}

/// The unit's command lines, as the harness would run them.
fn unit_lines(host: &RootedHost, key: &str) -> Vec<String> {
    let unit = fs::read_to_string(host.path(Path::new(install::REGISTRY_UNIT))).unwrap();
    unit.lines().filter_map(|l| l.strip_prefix(key)).map(|l| l.trim_start_matches('-').to_string()).collect()
}

fn run_line(line: &str) -> (i32, String, String) {
    let argv: Vec<&str> = line.split_whitespace().collect();
    run(Command::new(argv[0]).args(&argv[1..]))
}

#[test]
fn the_registry_image_runs_in_containerd_serves_the_storage_and_goes_with_uninstall() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let p = pushed();
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("tiny/etc/x"), "x\n");
    let rootfs = rootfs(tmp.path(), &p.storage, None);
    let host = RootedHost::new(&tmp.path().join("host"));
    host_skeleton(&host.root);
    let guard = Guard { root: host.root.clone() };
    let port = free_addr().port();
    let config = config(port, None);
    runtime_then_registry(&host, &rootfs, &config);
    let root = host.root.display().to_string();

    // The unit: the image, run in the foreground by the installed ctr on the installed socket,
    // with the storage bind-mounted; every host path below the test root.
    let exec = unit_lines(&host, "ExecStart=");
    let ctr = format!(
        "{root}/usr/local/bin/ctr --address {root}/run/containerd/containerd.sock --namespace kubeferry"
    );
    assert_eq!(
        exec,
        [format!(
            "{ctr} run --rm --net-host --mount type=bind,src={},dst=/var/lib/registry,options=rbind:rw \
             --env REGISTRY_HTTP_ADDR=0.0.0.0:{port} --env REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/registry \
             docker.io/library/registry:2.8.2 kubeferry-registry",
            rootfs.join("registry").display()
        )]
    );
    // Every host path of the unit is below the test root or the rootfs it was given (the
    // storage); the others are the container's.
    let unit = fs::read_to_string(host.path(Path::new(install::REGISTRY_UNIT))).unwrap();
    let container_paths = ["/var/lib/registry", "/etc/docker/registry/config.yml", "/auth/htpasswd"];
    for word in unit.split([' ', '\n', '=', ',']).filter(|w| w.starts_with('/')) {
        let given = word.starts_with(&root) || Path::new(word).starts_with(&rootfs);
        assert!(given || container_paths.contains(&word), "{word} in\n{unit}");
    }
    let log = host.log_text();
    assert!(log.contains("the registry runs as the image's images/registry.tar in containerd"), "{log}");
    assert!(
        log.contains("loaded the registry image docker.io/library/registry:2.8.2 into containerd"),
        "{log}"
    );

    // /v2/ answers on the port, under the registry's name; containerd pulls through it.
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(v2(addr, &format!("localhost:{port}")).0, 200);
    let reference = format!("localhost:{port}/library/app:v1");
    let k8s = || {
        let mut cmd = Command::new(host.root.join("usr/local/bin/ctr"));
        cmd.arg("--address").arg(host.root.join("run/containerd/containerd.sock")).args(["-n", "k8s.io"]);
        cmd
    };
    ok(k8s()
        .args(["images", "pull", "--hosts-dir"])
        .arg(host.root.join("etc/containerd/certs.d"))
        .arg(&reference));
    let listed = ok(k8s().args(["images", "ls"]));
    assert!(listed.contains(&reference) && listed.contains(&p.made.app.manifest.digest), "{listed}");
    assert!(ok(guard.ctr().args(["tasks", "ls"])).contains(CONTAINER), "the container runs in its namespace");

    // The service's client is killed (a crash; stopping the service, SIGTERM, ends the container
    // too): the container outlives it, and the unit's ExecStartPre lines clear it so that the
    // service starts again.
    let clients: Vec<String> = processes_naming(&root)
        .into_iter()
        .filter(|(_, c)| c.contains("/usr/local/bin/ctr ") && c.contains(" run ") && c.contains(CONTAINER))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(clients.len(), 1, "{clients:?}");
    ok(Command::new("kill").arg("-KILL").args(&clients));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(v2(addr, &format!("localhost:{port}")).0, 200, "the container outlives its client");
    for line in unit_lines(&host, "ExecStartPre=") {
        let (code, _, stderr) = run_line(&line);
        assert_eq!(code, 0, "{line}: {stderr}");
    }
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "cleared");
    host.start_service(install::REGISTRY_UNIT_NAME).unwrap();
    kubeferry_installer::registry::wait_ready(
        addr,
        "localhost",
        Some(("library/app", "v1")),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", host.service_log(install::REGISTRY_UNIT_NAME)));

    // What uninstall does: the unit stopped, then the container removed; no shim outlives it.
    host.stop_service(install::REGISTRY_UNIT_NAME).unwrap();
    registry_image::remove_container(&host).unwrap();
    assert_eq!(ok(guard.ctr().args(["containers", "ls", "--quiet"])).trim(), "");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "the registry is gone");
    let shims: Vec<(String, String)> = processes_naming(&root)
        .into_iter()
        .filter(|(_, c)| c.contains("shim") && c.contains(NAMESPACE))
        .collect();
    assert!(shims.is_empty(), "{shims:?}");
    registry_image::remove_container(&host).unwrap();
    drop(guard);
}

#[test]
fn the_registry_image_asks_for_the_credentials_and_reads_the_images_configuration() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let p = pushed();
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("tiny/etc/x"), "x\n");
    // The image's configuration: distribution's, with a response header to recognise it by.
    let image_config = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /somewhere/else\nhttp:\n  addr: :5000\n  \
                        headers:\n    X-Registry-Config: [from-the-rootfs]\n";
    let rootfs = rootfs(tmp.path(), &p.storage, Some(image_config));
    let host = RootedHost::new(&tmp.path().join("host"));
    host_skeleton(&host.root);
    let _guard = Guard { root: host.root.clone() };
    let port = free_addr().port();
    let config = config(port, Some(Credentials::new("admin", "passw0rd").unwrap()));
    runtime_then_registry(&host, &rootfs, &config);

    let root = host.root.display().to_string();
    let exec = unit_lines(&host, "ExecStart=").join("\n");
    for part in [
        format!("--mount type=bind,src={},dst=/etc/docker/registry/config.yml,options=rbind:ro", rootfs.join("etc/registry_config.yml").display()),
        format!("--mount type=bind,src={root}/etc/kubeferry/registry/htpasswd,dst=/auth/htpasswd,options=rbind:ro"),
        "--env REGISTRY_AUTH=htpasswd --env REGISTRY_AUTH_HTPASSWD_REALM=kubeferry-registry --env REGISTRY_AUTH_HTPASSWD_PATH=/auth/htpasswd".into(),
    ] {
        assert!(exec.contains(&part), "{part}\nnot in\n{exec}");
    }

    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, head) = v2(addr, &format!("localhost:{port}"));
    assert_eq!(status, 401, "{head}");
    assert!(head.contains("Basic realm=\"kubeferry-registry\""), "{head}");
    assert!(head.contains("X-Registry-Config: from-the-rootfs"), "the image's configuration is read: {head}");

    let reference = format!("localhost:{port}/library/app:v1");
    let dir = tmp.path();
    let inspect = |creds: Option<&str>| {
        let mut cmd = skopeo(dir);
        cmd.args(["inspect", "--tls-verify=false"]);
        if let Some(creds) = creds {
            cmd.arg("--creds").arg(creds);
        }
        images::run(cmd.arg(format!("docker://{reference}")))
    };
    let refused = inspect(None);
    assert!(!refused.status.success());
    let out = inspect(Some("admin:passw0rd"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["Digest"], p.made.app.manifest.digest.as_str());
    let ctr = || {
        let mut cmd = Command::new(host.root.join("usr/local/bin/ctr"));
        cmd.arg("--address").arg(host.root.join("run/containerd/containerd.sock")).args(["-n", "k8s.io"]);
        cmd.args(["images", "pull", "--hosts-dir"]).arg(host.root.join("etc/containerd/certs.d"));
        cmd
    };
    let (code, _, stderr) = run(ctr().arg(&reference));
    assert_ne!(code, 0, "a pull without the credentials is refused");
    assert!(stderr.contains("401") || stderr.to_lowercase().contains("unauthorized"), "{stderr}");
    ok(ctr().args(["--user", "admin:passw0rd"]).arg(&reference));
}

/// The whole way through a real bundle: `build` keeps images/registry.tar as a file, the plan
/// says the registry runs from it (before and after the extract), the install's runtime and
/// registry steps run it, `status` sees it answer, and `uninstall --purge` leaves the root as
/// it was with no process of the container left.
#[test]
fn a_bundle_with_the_registry_image_installs_it_and_uninstall_leaves_nothing() {
    use kubeferry_installer::install::StepId;
    use kubeferry_installer::progress::Silent;
    use kubeferry_installer::uninstall::{self, UninstallOptions};

    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let p = pushed();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = rootfs(tmp.path(), &p.storage, None);
    let (bundle, verified) = open_bundle(tmp.path(), &rootfs);
    let host = RootedHost::new(&tmp.path().join("host"));
    host_skeleton(&host.root);
    let guard = Guard { root: host.root.clone() };
    let before = snapshot(&host.root);
    let port = free_addr().port();
    let config = InstallConfig {
        registry_port: port,
        fail_after: Some(StepId::Registry),
        ..InstallConfig::new("example", "example.run")
    };
    let way = "run by the image's images/registry.tar in containerd";
    let planned = install::plan_of_bundle(&host, &bundle, &verified, &config).unwrap();
    assert!(planned.steps[2].summary.ends_with(way), "{}", planned.steps[2].summary);

    let err = install::run(&host, &bundle, &verified, &config, &Silent).unwrap_err();
    assert_eq!(err.to_string(), "could not go on after step 'registry'", "{}", host.log_text());
    let planned = install::plan(&host, &verified, &config).unwrap();
    assert!(planned.steps[2].summary.ends_with(way) && planned.steps[2].done, "{}", planned.steps[2].summary);
    let status = kubeferry_installer::status::gather(&host, "example").unwrap().unwrap();
    assert!(status.registry.as_ref().is_some_and(|r| r.answers), "{status}");
    assert!(ok(guard.ctr().args(["tasks", "ls"])).contains(CONTAINER));

    let report = uninstall::run(&host, "example", &UninstallOptions { purge: true, ..Default::default() })
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
    assert!(report.installed);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "the registry is gone");
    let left = processes_naming(&host.root.display().to_string());
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(snapshot(&host.root), before, "{}", host.log_text());
    drop(guard);
}

/// The same registry image in docker (Debian's dockerd, from the rootfs's `cri/docker.tar.gz`):
/// loaded, run as the registry service with the credentials, serving the storage; docker pulls
/// through it with them, not without; uninstall's removal leaves no container.
#[test]
fn the_registry_image_runs_in_docker_and_asks_for_the_credentials() {
    use kubeferry_installer::docker;

    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let p = pushed();
    let tmp = tempfile::tempdir().unwrap();
    write(&tmp.path().join("tiny/etc/x"), "x\n");
    let rootfs = rootfs(tmp.path(), &p.storage, None);
    fs::remove_file(rootfs.join("cri/containerd.tar.gz")).unwrap();
    fs::copy(docker_tarball(), rootfs.join("cri/docker.tar.gz")).unwrap();
    // Dropped after the host, which stops dockerd.
    let _dockerd_files = DockerdFiles::new();
    let host = RootedHost::new(&tmp.path().join("host"));
    host_skeleton(&host.root);
    let port = free_addr().port();
    let credentials = Credentials::new("admin", "passw0rd").unwrap();
    let config = config(port, Some(credentials.clone()));
    let settings = RuntimeSettings {
        registry: format!("localhost:{port}"),
        systemd_cgroup: false,
        sandbox_image: None,
        credentials: Some(credentials),
    };
    docker::install(&host, &rootfs, &settings)
        .unwrap_or_else(|e| panic!("{e:?}\ndocker:\n{}", host.service_log(docker::UNIT_NAME)));
    fs::create_dir_all(rootfs.with_file_name("bundle")).unwrap();
    let (bundle, _) = open_bundle(&rootfs.with_file_name("bundle"), &rootfs.with_file_name("tiny"));
    install::registry::start(&host, &bundle, &rootfs, &rootfs.join("registry"), &config).unwrap_or_else(
        |e| {
            panic!(
                "{e:?}\nlog:\n{}\nregistry:\n{}\ndocker:\n{}",
                host.log_text(),
                host.service_log(install::REGISTRY_UNIT_NAME),
                host.service_log(docker::UNIT_NAME)
            )
        },
    );
    let log = host.log_text();
    assert!(log.contains("the registry runs as the image's images/registry.tar in docker"), "{log}");
    let root = host.root.display().to_string();
    let exec = unit_lines(&host, "ExecStart=").join("\n");
    assert!(
        exec.starts_with(&format!(
            "{root}/usr/local/bin/docker --host unix://{root}/var/run/docker.sock run --rm --name kubeferry-registry --network host"
        )),
        "{exec}"
    );

    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, head) = v2(addr, &format!("localhost:{port}"));
    assert_eq!(status, 401, "{head}");
    let reference = format!("localhost:{port}/library/app:v1");
    let images = docker_pull_with_kubelet_credentials(&host, &tmp.path().join("client"), &reference);
    assert!(images.contains(&format!("{reference} {}", p.made.app.manifest.digest)), "{images}");

    // What uninstall does: the unit stopped, then the container removed.
    host.stop_service(install::REGISTRY_UNIT_NAME).unwrap();
    registry_image::remove_container(&host).unwrap();
    let left =
        ok(docker::docker(&host).args(["ps", "--all", "--quiet", "--filter", "name=kubeferry-registry"]));
    assert_eq!(left.trim(), "", "no container left");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "the registry is gone");
}
