//! `status` and `uninstall` after a real install (real containerd and kubeferry's registry from the example
//! bundle; STAND-IN kubeadm, kubelet and kubectl) under a test root: the root is compared, entry by entry, with what it held before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::process::Command;

use kubeferry_installer::host::Host;
use kubeferry_installer::install::{self, InstallConfig, StepId};
use kubeferry_installer::progress::Silent;
use kubeferry_installer::status;
use kubeferry_installer::uninstall::{self, Phase, UninstallOptions};
use kubeferry_tests::*;

fn config() -> InstallConfig {
    InstallConfig {
        registry_port: kubeferry_tests::images::free_addr().port(),
        advertise_address: Some("10.0.0.10".into()),
        ..InstallConfig::new("example", "example-v1.20.2-linux-amd64.run")
    }
}

/// Unmounts whatever is still mounted below a test root when the test ends, failed or not.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = kubeferry_installer::mounts::unmount_below(&self.0);
    }
}

#[test]
fn uninstall_purge_leaves_the_host_as_it_was_and_finishes_when_run_again() {
    let tmp = tempfile::tempdir().unwrap();
    // Every step, with the STAND-IN kubeadm, kubelet and kubectl (see STANDIN_KUBEADM).
    let (bundle, verified) = open_bundle(tmp.path(), &kubernetes_rootfs(tmp.path()));
    let host = RootedHost::new(&tmp.path().join("host"));
    host_skeleton(&host.root);
    // The host has a runc of its own where the install puts the bundle's: it comes back.
    write(&host.root.join("usr/local/bin/runc"), "the host's own runc\n");
    let before = snapshot(&host.root);

    let config = config();
    install::run(&host, &bundle, &verified, &config, &Silent)
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
    assert!(host.service_active("containerd.service") && host.service_active("kubeferry-registry.service"));
    let state = install::load_state(&host, "example").unwrap().unwrap();
    assert_eq!(state.services, ["containerd.service", "kubeferry-registry.service", "kubelet.service"]);
    assert!(host.root.join("etc/kubernetes/pki/ca.crt").is_file() && host.root.join("var/lib/etcd").is_dir());
    assert_eq!(state.backups.len(), 1, "{:?}", state.backups);
    assert_eq!(state.backups[0].path, std::path::Path::new("/usr/local/bin/runc"));
    assert!(state.files.iter().any(|f| f == std::path::Path::new("/etc/containerd/config.toml")));
    assert!(!state.files.iter().any(|f| f == std::path::Path::new("/etc/hosts")), "edited, not owned");

    // What the pods leave mounted: a sandbox's /dev/shm under the runtime's state, a volume
    // under the kubelet's, a network namespace (a bind-mounted file) under /run/netns.
    let mounted = [
        "run/containerd/io.containerd.grpc.v1.cri/sandboxes/5e1f/shm",
        "var/lib/kubelet/pods/0c2e/volumes/kubernetes.io~projected/kube-api-access",
    ];
    let _unmount = Unmount(host.root.clone());
    for dir in mounted {
        fs::create_dir_all(host.root.join(dir)).unwrap();
        ok(Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(host.root.join(dir)));
        write(&host.root.join(dir).join("token"), "pod data\n");
    }
    let netns = host.root.join("run/netns/cni-5a1e");
    write(&netns, "");
    ok(Command::new("mount").arg("--bind").arg("/proc/self/ns/net").arg(&netns));

    // Interrupted after the files went: run again, it finishes.
    let options = UninstallOptions { purge: true, fail_after: Some(Phase::Files) };
    let err = uninstall::run(&host, "example", &options).unwrap_err();
    assert_eq!(err.to_string(), "could not go on after uninstall phase 'files'");
    assert!(!host.service_active("containerd.service") && !host.service_active("kubeferry-registry.service"));
    assert!(host.root.join("var/lib/kubeferry/example/state.json").is_file(), "kept until the end");
    assert!(!host.root.join("usr/local/bin/containerd").exists());
    let report = uninstall::run(&host, "example", &UninstallOptions { purge: true, fail_after: None })
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
    assert!(report.installed && report.kept.is_empty(), "{report:?}");
    let calls = fs::read_to_string(tmp.path().join("host.logs/standin-calls")).unwrap();
    assert_eq!(
        calls.matches("kubeadm reset -f").count(),
        1,
        "kubeadm went with the first run's files: {calls}"
    );

    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(host.root.to_str().unwrap()), "unmounted: {mountinfo}");
    let log = host.log_text();
    for dir in mounted {
        assert!(log.contains(&format!("unmounted {}", host.root.join(dir).display())), "{log}");
    }

    let after = snapshot(&host.root);
    let diff = snapshot_diff(&before, &after);
    assert!(diff.is_empty(), "the root differs from before the install:\n{diff}");

    // Nothing left to do.
    let report = uninstall::run(&host, "example", &UninstallOptions::default()).unwrap();
    assert!(!report.installed);
}

#[test]
fn status_then_uninstall_without_purge_which_keeps_the_runtimes_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (bundle, verified) = open_bundle(tmp.path(), example_rootfs());
    let host = RootedHost::new(&tmp.path().join("host"));
    host_skeleton(&host.root);
    assert_eq!(status::gather(&host, "example").unwrap(), None, "nothing installed yet");
    let config = InstallConfig { fail_after: Some(StepId::Registry), ..config() };
    let _ = install::run(&host, &bundle, &verified, &config, &Silent);

    let status = status::gather(&host, "example").unwrap().unwrap();
    let text = status.to_string();
    assert!(text.starts_with("example v1.20.2: 3 of 6 steps done, NOT healthy\n"), "{text}");
    assert!(text.contains("\n  runtime       done     20"), "{text}");
    assert!(text.contains("\n  kubernetes    todo     \n"), "{text}");
    assert!(text.contains("containerd 1.6.20"), "the real containerd says its version: {text}");
    assert!(text.contains("\n  containerd.service           active\n"), "{text}");
    assert!(text.contains(&format!("registry: sea.hub:{} answers on /v2/", config.registry_port)), "{text}");
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["steps"][0]["step"], "extract");
    assert_eq!(json["steps"][0]["state"], "done");
    assert_eq!(
        json["services"][1],
        serde_json::json!({"unit": "kubeferry-registry.service", "active": true})
    );
    assert_eq!(json["healthy"], false);

    // A registry that stopped shows.
    host.stop_service("kubeferry-registry.service").unwrap();
    let status = status::gather(&host, "example").unwrap().unwrap();
    assert!(!status.services[1].active);
    assert!(!status.registry.unwrap().answers);
    let report = uninstall::run(&host, "example", &UninstallOptions::default()).unwrap();
    assert_eq!(report.kept, [std::path::PathBuf::from("/var/lib/containerd")]);
    assert!(host.root.join("var/lib/containerd").is_dir());
    assert!(!host.root.join("var/lib/kubeferry").exists(), "the rootfs and state are kubeferry's own");
    assert!(!host.root.join("run/containerd").exists());
    assert_eq!(
        fs::read_to_string(host.root.join("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
    );
}

/// The same with docker as the image's runtime (`cri/docker.tar.gz` instead of containerd,
/// Debian's real dockerd): installed, answering, kubeadm given the dockershim's socket, then
/// `uninstall --purge` leaves the root as it was and no dockerd or containerd of it running.
#[test]
fn with_docker_uninstall_purge_leaves_the_host_as_it_was() {
    use kubeferry_installer::docker;

    let tmp = tempfile::tempdir().unwrap();
    let rootfs = kubernetes_rootfs(tmp.path());
    fs::remove_file(rootfs.join("amd64/cri/containerd.tar.gz")).unwrap();
    fs::create_dir_all(rootfs.join("cri")).unwrap();
    fs::copy(docker_tarball(), rootfs.join("cri/docker.tar.gz")).unwrap();
    // The image names no socket: the install gives the runtime's.
    let kubeadm = fs::read_to_string(rootfs.join("etc/kubeadm.yml")).unwrap();
    let kubeadm: String =
        kubeadm.lines().filter(|l| !l.contains("criSocket")).map(|l| format!("{l}\n")).collect();
    write(&rootfs.join("etc/kubeadm.yml"), kubeadm);
    let (bundle, verified) = open_bundle(tmp.path(), &rootfs);
    assert_eq!(verified.manifest.cri.as_deref(), Some("docker"));
    // Dropped after the host, which stops dockerd.
    let _dockerd_files = DockerdFiles::new();
    let host = RootedHost::new(&tmp.path().join("host"));
    host_skeleton(&host.root);
    let before = snapshot(&host.root);

    install::run(&host, &bundle, &verified, &config(), &Silent).unwrap_or_else(|e| {
        panic!("{e}\n{}\ndocker:\n{}", host.log_text(), host.service_log("docker.service"))
    });
    let state = install::load_state(&host, "example").unwrap().unwrap();
    assert_eq!(state.services, ["docker.service", "kubeferry-registry.service", "kubelet.service"]);
    let info = ok(docker::docker(&host).args(["info", "--format", "{{.DockerRootDir}}"]));
    assert_eq!(info.trim(), host.root.join("var/lib/docker").display().to_string());
    let rendered = fs::read_to_string(host.root.join("etc/kubernetes/kubeadm-kubeferry.yaml")).unwrap();
    assert!(rendered.contains("criSocket: /var/run/dockershim.sock"), "{rendered}");
    assert!(!rendered.contains("containerd.sock"), "{rendered}");
    let shown = status::gather(&host, "example").unwrap().unwrap();
    assert!(
        shown.versions.iter().any(|v| v.program == "docker" && v.version.starts_with("20.10")),
        "{shown:?}"
    );

    let report = uninstall::run(&host, "example", &UninstallOptions { purge: true, fail_after: None })
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
    assert!(report.installed && report.kept.is_empty(), "{report:?}");
    let processes = ok(Command::new("ps").args(["-eo", "args"]));
    assert!(
        !processes.contains(host.root.to_str().unwrap()),
        "a process of the root still runs:\n{processes}"
    );
    let after = snapshot(&host.root);
    let diff = snapshot_diff(&before, &after);
    assert!(diff.is_empty(), "the root differs from before the install:\n{diff}");
}
