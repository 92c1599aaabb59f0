//! Every step of the install against a test root, with the real containerd and kubeferry's
//! registry from a real signed bundle, and STAND-INs for kubeadm, kubelet and kubectl: the real
//! ones cannot run here (see `kubeferry_tests::STANDIN_KUBEADM`); the proof with the real ones is
//! the air-gapped VM test's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::PathBuf;

use kubeferry_installer::host::Host;
use kubeferry_installer::install::{self, InstallConfig, Outcome, StepId};
use kubeferry_installer::progress::Silent;
use kubeferry_installer::uninstall::{self, UninstallOptions};
use kubeferry_tests::*;

fn config() -> InstallConfig {
    InstallConfig {
        registry_port: kubeferry_tests::images::free_addr().port(),
        advertise_address: Some("10.0.0.10".into()),
        ..InstallConfig::new("example", "example-v1.20.2-linux-amd64.run")
    }
}

fn implemented() -> Vec<StepId> {
    StepId::ALL.into_iter().filter(|s| s.implemented()).collect()
}

/// How a run ends that finishes the install (`ran`: some step ran).
fn finished(ran: bool) -> Outcome {
    let rest: Vec<StepId> = StepId::ALL.into_iter().filter(|s| !s.implemented()).collect();
    match (rest.is_empty(), ran) {
        (false, _) => Outcome::StoppedBefore(rest),
        (true, false) => Outcome::AlreadyDone,
        (true, true) => Outcome::Installed(Some(standin_join())),
    }
}

/// The join commands of the stand-in kubeadm's output.
fn standin_join() -> kubeferry_installer::kubeadm::JoinCommands {
    const HASH: &str = "sha256:2f1b5aa0c4a14a2e4a1f4b5c6d7e8f90112233445566778899aabbccddeeff00";
    const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff1";
    let worker = format!(
        "kubeadm join 10.0.0.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash {HASH}"
    );
    let kubeferry = format!(
        "./example-v1.20.2-linux-amd64.run join --server 10.0.0.10:6443 --token abcdef.0123456789abcdef --ca-cert-hash {HASH}"
    );
    kubeferry_installer::kubeadm::JoinCommands {
        control_plane: format!("{worker} --control-plane --certificate-key {KEY}"),
        kubeferry_control_plane: format!("{kubeferry} --control-plane --certificate-key {KEY}"),
        worker,
        kubeferry_worker: kubeferry,
    }
}

/// A failure injected after each step, then a run that resumes at the next step, then a run
/// that changes nothing, then `uninstall --purge`, after which the root is as it was.
#[test]
fn install_resumes_after_a_failure_at_each_step_and_uninstall_undoes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = kubernetes_rootfs(tmp.path());
    let (bundle, verified) = open_bundle(tmp.path(), &rootfs);

    for (i, failing) in implemented().into_iter().enumerate() {
        let host = RootedHost::new(&tmp.path().join(format!("host-{i}")));
        host_skeleton(&host.root);
        let before = snapshot(&host.root);
        let config = InstallConfig { fail_after: Some(failing), ..config() };
        let err = install::run(&host, &bundle, &verified, &config, &Silent).unwrap_err();
        assert_eq!(err.to_string(), format!("could not go on after step '{failing}'"), "{}", host.log_text());
        let plan = install::plan(&host, &verified, &config).unwrap();
        let done: Vec<StepId> = plan.steps.iter().filter(|s| s.done).map(|s| s.id).collect();
        assert_eq!(done, StepId::ALL[..=i].to_vec());

        let config = InstallConfig { fail_after: None, ..config };
        let outcome = install::run(&host, &bundle, &verified, &config, &Silent)
            .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
        // Nothing is left to run when the failure came after the last step.
        assert_eq!(outcome, finished(failing != StepId::Applications));
        let log = host.log_text();
        for step in implemented() {
            assert_eq!(log.matches(&format!("step {step}: start")).count(), 1, "{step} ran once:\n{log}");
            if step <= failing {
                assert!(log.contains(&format!("step {step}: done by an earlier run")), "{step}:\n{log}");
            }
        }

        // A finished run: nothing starts again.
        let starts = host.log_text().matches(": start").count();
        assert_eq!(install::run(&host, &bundle, &verified, &config, &Silent).unwrap(), finished(false));
        assert_eq!(host.log_text().matches(": start").count(), starts);

        let report = uninstall::run(&host, "example", &UninstallOptions { purge: true, fail_after: None })
            .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
        assert!(report.installed);
        let left = snapshot_diff(&before, &snapshot(&host.root));
        assert!(left.is_empty(), "after uninstall --purge the root differs from before:\n{left}");
    }
}

/// What the kubernetes step puts in place.
#[test]
fn the_kubernetes_step_puts_the_executables_the_kubelet_unit_and_kernel_settings_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = kubernetes_rootfs(tmp.path());
    let (bundle, verified) = open_bundle(tmp.path(), &rootfs);
    let host = RootedHost::new(&tmp.path().join("host"));
    host_skeleton(&host.root);
    let config = InstallConfig { fail_after: Some(StepId::Kubernetes), ..config() };
    let err = install::run(&host, &bundle, &verified, &config, &Silent).unwrap_err().to_string();
    assert!(err.contains("go on after step 'kubernetes'"), "{err}\n{}", host.log_text());
    let root = &host.root;
    for name in ["kubeadm", "kubelet", "kubectl", "conntrack", "socat", "ethtool"] {
        let meta = fs::metadata(root.join("usr/bin").join(name)).unwrap_or_else(|_| panic!("{name}"));
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o755, "{name}");
    }
    let unit = fs::read_to_string(root.join("etc/systemd/system/kubelet.service")).unwrap();
    assert!(unit.contains(&format!("\nExecStart={}\n", root.join("usr/bin/kubelet").display())), "{unit}");
    let drop_in =
        fs::read_to_string(root.join("etc/systemd/system/kubelet.service.d/10-kubeadm.conf")).unwrap();
    assert!(
        drop_in.contains(&format!(
            "\nExecStart=\nExecStart={} $KUBELET_KUBECONFIG_ARGS",
            root.join("usr/bin/kubelet").display()
        )),
        "{drop_in}"
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/modules-load.d/kubeferry-kubernetes.conf")).unwrap(),
        "# Kernel modules for Kubernetes, written by kubeferry.\noverlay\nbr_netfilter\n"
    );
    let sysctl = fs::read_to_string(root.join("etc/sysctl.d/99-kubeferry-kubernetes.conf")).unwrap();
    assert!(
        sysctl.contains("net.bridge.bridge-nf-call-iptables = 1\n")
            && sysctl.contains("net.ipv4.ip_forward = 1\n")
    );
    assert_eq!(
        *host.kernel.lock().unwrap(),
        [
            "modprobe overlay".to_string(),
            "modprobe br_netfilter".into(),
            format!("sysctl -p {}", root.join("etc/sysctl.d/99-kubeferry-kubernetes.conf").display())
        ]
    );
    assert_eq!(*host.enabled.lock().unwrap(), ["kubelet.service"]);
    let state = install::load_state(&host, "example").unwrap().unwrap();
    for file in [
        "/usr/bin/kubeadm",
        "/etc/systemd/system/kubelet.service",
        "/etc/sysctl.d/99-kubeferry-kubernetes.conf",
    ] {
        assert!(state.files.contains(&PathBuf::from(file)), "{file} recorded");
    }
    assert!(state.services.contains(&"kubelet.service".to_string()));
    assert!(!host.service_active("kubelet.service"), "enabled, not started: kubeadm init starts it");
}

/// A rootfs without kubeadm: the step says what is missing, and where.
#[test]
fn a_rootfs_without_kubeadm_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let host = RootedHost::new(&tmp.path().join("host"));
    let rootfs = tmp.path().join("rootfs");
    write(&rootfs.join("bin/kubelet"), "#!/bin/sh\n");
    let err = install::kubernetes::install(&host, &rootfs, &Silent).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("could not install Kubernetes from '{}'", rootfs.join("bin").display())
    );
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "it has no kubeadm: a cluster image carries kubeadm, kubelet and kubectl in bin/"
    );
    assert!(!host.root.join("usr").exists(), "nothing written");
}

/// kubeadm init with the image's configuration and the user's `--config` merged over it; a
/// failed init is reset and run again; the manifests applied in order and the image's CMD run
/// (a failing `--cmd` first); uninstall resets the cluster and keeps its data.
#[test]
fn kubeadm_init_with_config_then_the_applications_with_the_images_cmd() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = kubernetes_rootfs(tmp.path());
    let (bundle, verified) = open_bundle(tmp.path(), &rootfs);
    let host = RootedHost::new(&tmp.path().join("host"));
    host_skeleton(&host.root);
    let before = snapshot(&host.root);
    let calls = || fs::read_to_string(tmp.path().join("host.logs/standin-calls")).unwrap_or_default();

    // A user configuration the stand-in kubeadm fails with.
    let user = tmp.path().join("cluster.yaml");
    write(
        &user,
        "apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nclusterName: standin-fail\n",
    );
    let config = InstallConfig { kubeadm_config: Some(user.clone()), ..config() };
    let err = install::run(&host, &bundle, &verified, &config, &Silent).unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("/usr/bin/kubeadm\" \"init\" \"--config\""), "{shown}");
    assert!(shown.contains("failed (exit status: 1); the install log is"), "{shown}");
    assert!(
        shown.ends_with("error execution phase wait-control-plane: couldn't initialize a Kubernetes cluster"),
        "{shown}"
    );
    let state = install::load_state(&host, "example").unwrap().unwrap();
    assert_eq!(state.running, Some(StepId::KubeadmInit));

    // Fixed: the run resets what the failed init left, then inits.
    write(
        &user,
        "apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nclusterName: edge\nnetworking:\n  podSubnet: 10.244.0.0/16\n",
    );
    // ... and a --cmd that fails: kubeadm init is done, the applications step is not.
    let failing = InstallConfig { cmd: Some("echo failing on purpose >&2; exit 3".into()), ..config.clone() };
    let err = install::run(&host, &bundle, &verified, &failing, &Silent).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.starts_with("\"sh\" \"-c\" \"echo failing on purpose >&2; exit 3\" failed (exit status: 3)"),
        "{shown}"
    );
    assert!(shown.ends_with(":\nfailing on purpose"), "{shown}");
    let state = install::load_state(&host, "example").unwrap().unwrap();
    assert!(state.done.contains(&StepId::KubeadmInit) && state.running == Some(StepId::Applications));

    // The image's own CMD, from its Kubefile.
    let outcome = install::run(&host, &bundle, &verified, &config, &Silent)
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
    assert_eq!(outcome, Outcome::Installed(Some(standin_join())));
    let rootfs_dir = host.root.join("var/lib/kubeferry/example/rootfs");
    let admin = host.root.join("etc/kubernetes/admin.conf");
    let kubectl_calls: Vec<String> =
        calls().lines().filter(|l| l.starts_with("kubectl ")).map(str::to_string).collect();
    let apply = |file: &str| {
        format!("kubectl --kubeconfig {} apply -f {}", admin.display(), rootfs_dir.join(file).display())
    };
    let cmd = |command: &str| {
        format!("kubectl {command} (KUBECONFIG={}, in {})", admin.display(), rootfs_dir.display())
    };
    // Twice: the failed run applied them before its --cmd failed.
    assert_eq!(kubectl_calls.len(), 6, "{kubectl_calls:#?}");
    for (i, file) in ["manifests/10-namespace.yaml", "manifests/app/20-config.yaml"].iter().enumerate() {
        assert!(kubectl_calls[i].starts_with(&apply(file)), "{kubectl_calls:#?}");
        assert!(kubectl_calls[i + 2].starts_with(&apply(file)), "{kubectl_calls:#?}");
    }
    assert_eq!(kubectl_calls[4], cmd("get nodes"));
    assert_eq!(kubectl_calls[5], cmd("apply -f manifests/10-namespace.yaml"));
    let calls_after_init = calls();
    let kubeadm_calls: Vec<&str> = calls_after_init.lines().filter(|l| l.starts_with("kubeadm ")).collect();
    let init = format!(
        "kubeadm init --config {} --skip-phases=preflight,addon/coredns --upload-certs",
        host.root.join("etc/kubernetes/kubeadm-kubeferry.yaml").display()
    );
    assert_eq!(kubeadm_calls, [init.as_str(), "kubeadm reset -f", init.as_str()]);
    let log = host.log_text();
    let retried = log
        .find("kubeadm init started before and did not finish: its containers, images and leases removed, kubeadm reset -f")
        .expect("the retry is logged");
    // The kubelet is stopped (it would start the unfinished init's static pods again), then
    // enabled again for kubeadm init to start.
    assert!(log[retried..].contains("enabled kubelet.service"), "{log}");

    let used = fs::read_to_string(tmp.path().join("host.logs/kubeadm-init.yaml")).unwrap();
    assert!(used.contains("kind: InitConfiguration\n"), "{used}");
    assert!(used.contains("  advertiseAddress: '10.0.0.10'\n"), "the host's address: {used}");
    assert!(
        used.contains("clusterName: edge\n") && used.contains("  podSubnet: 10.244.0.0/16\n"),
        "--config merged: {used}"
    );
    assert!(used.contains("imageRepository: sea.hub:5000\n"), "the image's: {used}");
    assert!(!used.contains("kind: JoinConfiguration"), "{used}");
    assert_eq!(
        fs::read_to_string(host.root.join("root/.kube/config")).unwrap(),
        fs::read_to_string(host.root.join("etc/kubernetes/admin.conf")).unwrap()
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &fs::metadata(host.root.join("root/.kube/config")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let saved = kubeferry_installer::install::kubeadm_init::saved_join_commands(&host, "example").unwrap();
    assert_eq!(saved, standin_join());

    // uninstall: kubeadm reset, with the certificates and etcd's data kept.
    let report = uninstall::run(&host, "example", &UninstallOptions::default())
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
    assert!(calls().ends_with("kubeadm reset -f\n"), "{}", calls());
    assert_eq!(fs::read_to_string(host.root.join("etc/kubernetes/pki/ca.crt")).unwrap(), "stand-in CA\n");
    assert_eq!(
        fs::read_to_string(host.root.join("var/lib/etcd/member/snap")).unwrap(),
        "stand-in etcd data\n"
    );
    assert!(!host.root.join("etc/kubernetes/admin.conf").exists(), "reset removed it");
    assert!(!host.root.join("etc/kubernetes/kubeadm-kubeferry.yaml").exists(), "kubeferry's file, removed");
    assert!(!host.root.join("root/.kube").exists());
    assert!(!host.root.join("usr/bin/kubeadm").exists());
    for kept in ["/etc/kubernetes", "/var/lib/etcd", "/var/lib/kubelet", "/var/lib/containerd"] {
        assert!(report.kept.contains(&PathBuf::from(kept)), "{kept}: {:?}", report.kept);
    }
    // What is left is the cluster's data alone.
    let left = snapshot_diff(&before, &snapshot(&host.root));
    for line in left.lines() {
        assert!(
            ["+ etc/kubernetes", "+ var/lib/etcd", "+ var/lib/kubelet", "+ var/lib/containerd"]
                .iter()
                .any(|p| line.starts_with(p)),
            "{line}\n{left}"
        );
    }
}

/// `join` as a worker: the runtime and Kubernetes from the bundle, the registry domain pointed
/// at the first control plane, `kubeadm join` (the STAND-IN) with the rendered
/// JoinConfiguration; then `uninstall --purge` leaves the root as it was.
#[test]
fn a_worker_joins_with_the_rendered_join_configuration_and_pulls_from_the_first_node() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = kubernetes_rootfs(tmp.path());
    let (bundle, verified) = open_bundle(tmp.path(), &rootfs);
    let host = RootedHost::new(&tmp.path().join("host"));
    host_skeleton(&host.root);
    let before = snapshot(&host.root);

    let params = kubeferry_installer::kubeadm::JoinParams {
        server: "10.0.0.10:6443".into(),
        token: "abcdef.0123456789abcdef".into(),
        ca_cert_hash: "sha256:2f1b5aa0c4a14a2e4a1f4b5c6d7e8f90112233445566778899aabbccddeeff00".into(),
        certificate_key: None,
        bundle: "example-v1.20.2-linux-amd64.run".into(),
    };
    let config = InstallConfig {
        registry_address: "10.0.0.10".into(),
        advertise_address: Some("10.0.0.11".into()),
        join: Some(install::JoinRequest { params, control_plane: false }),
        ..config()
    };
    let plan = install::plan(&host, &verified, &config).unwrap();
    let names: Vec<&str> = plan.steps.iter().map(|s| s.id.name()).collect();
    assert_eq!(names, ["extract", "runtime", "registry", "kubernetes", "kubeadm-join"]);

    // The first join fails (the stand-in's); the next run resets what it left, then joins.
    fs::create_dir_all(tmp.path().join("host.logs")).unwrap();
    fs::write(tmp.path().join("host.logs/standin-fail-join-once"), "").unwrap();
    let err = install::run(&host, &bundle, &verified, &config, &Silent).unwrap_err();
    assert!(
        err.to_string().ends_with("error execution phase kubelet-start: timed out waiting for the condition"),
        "{err}"
    );
    assert_eq!(install::load_state(&host, "example").unwrap().unwrap().running, Some(StepId::KubeadmJoin));
    let outcome = install::run(&host, &bundle, &verified, &config, &Silent)
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
    assert_eq!(outcome, Outcome::Installed(None));
    let log = host.log_text();
    let retried = log
        .find("kubeadm join started before and did not finish: its containers, images and leases removed, kubeadm reset -f")
        .expect("the retry is logged");
    assert!(log[retried..].contains("enabled kubelet.service"), "{log}");
    let hosts = fs::read_to_string(host.root.join("etc/hosts")).unwrap();
    assert!(hosts.contains("10.0.0.10 sea.hub # added by kubeferry"), "{hosts}");
    assert!(!host.root.join("etc/systemd/system/kubeferry-registry.service").exists(), "no registry here");
    let calls = fs::read_to_string(tmp.path().join("host.logs/standin-calls")).unwrap();
    let join_call = format!(
        "kubeadm join --config {} --skip-phases=preflight",
        host.root.join("etc/kubernetes/kubeadm-kubeferry-join.yaml").display()
    );
    let kubeadm_calls: Vec<&str> = calls.lines().filter(|l| l.starts_with("kubeadm ")).collect();
    assert_eq!(kubeadm_calls, [join_call.as_str(), "kubeadm reset -f", join_call.as_str()]);
    let joined = fs::read_to_string(tmp.path().join("host.logs/kubeadm-join.yaml")).unwrap();
    for want in [
        "kind: JoinConfiguration",
        "apiServerEndpoint: '10.0.0.10:6443'",
        "token: abcdef.0123456789abcdef",
        "sha256:2f1b5aa0c4a14a2e4a1f4b5c6d7e8f90112233445566778899aabbccddeeff00",
    ] {
        assert!(joined.contains(want), "{want} missing from:\n{joined}");
    }
    assert!(!joined.contains("controlPlane"), "a worker join has no controlPlane:\n{joined}");
    assert_eq!(install::run(&host, &bundle, &verified, &config, &Silent).unwrap(), Outcome::AlreadyDone);

    let report = uninstall::run(&host, "example", &UninstallOptions { purge: true, fail_after: None })
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
    let _ = report;
    let calls = fs::read_to_string(tmp.path().join("host.logs/standin-calls")).unwrap();
    assert!(calls.lines().any(|l| l == "kubeadm reset -f"), "{calls}");
    let after = snapshot(&host.root);
    assert!(before == after, "left behind:\n{}", snapshot_diff(&before, &after));
}

/// A sealer image's lifecycle scripts run instead of the built-in steps they replace: its
/// `scripts/init.sh` sets the node up (here: puts the STAND-IN kubeadm, kubelet and kubectl in
/// place) instead of the runtime and kubernetes steps, `scripts/init-registry.sh` instead of
/// serving the registry, and `scripts/clean.sh` first thing on uninstall, after which the root
/// is as it was.
#[test]
fn sealer_lifecycle_scripts_replace_the_built_in_steps_and_clean_up_on_uninstall() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = kubernetes_rootfs(tmp.path());
    let host = RootedHost::new(&tmp.path().join("host"));
    host_skeleton(&host.root);
    let log = tmp.path().join("hooks.log");
    let bin = host.root.join("usr/bin");
    write(
        &rootfs.join("scripts/init.sh"),
        format!(
            "set -e\necho \"init $registryDomain:$registryPort in $PWD\" >> {log}\nmkdir -p {bin}\ncp bin/kubeadm bin/kubelet bin/kubectl {bin}/\n",
            log = log.display(),
            bin = bin.display()
        ),
    );
    write(
        &rootfs.join("scripts/init-registry.sh"),
        format!("echo \"init-registry $registryData\" >> {}\n", log.display()),
    );
    write(
        &rootfs.join("scripts/clean.sh"),
        format!(
            "echo clean >> {log}\nrm -f {bin}/kubeadm {bin}/kubelet {bin}/kubectl\n",
            log = log.display(),
            bin = bin.display()
        ),
    );
    let (bundle, verified) = open_bundle(tmp.path(), &rootfs);
    let before = snapshot(&host.root);

    let config = config();
    let outcome = install::run(&host, &bundle, &verified, &config, &Silent)
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
    assert_eq!(outcome, Outcome::Installed(Some(standin_join())));
    let installed = host.root.join("var/lib/kubeferry/example/rootfs");
    let port = config.registry_port;
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        format!(
            "init sea.hub:{port} in {}\ninit-registry {}\n",
            installed.display(),
            installed.join("registry").display()
        )
    );
    assert!(
        !host.root.join("usr/local/bin/containerd").exists(),
        "the image's init replaced the runtime step"
    );
    assert!(!host.root.join("etc/systemd/system/kubeferry-registry.service").exists());
    assert!(host.log_text().contains("the image's hook (sealer scripts/init.sh): bash scripts/init.sh"));

    uninstall::run(&host, "example", &UninstallOptions { purge: true, fail_after: None })
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
    assert!(fs::read_to_string(&log).unwrap().ends_with("clean\n"));
    let after = snapshot(&host.root);
    assert!(before == after, "left behind:\n{}", snapshot_diff(&before, &after));
}

/// The registry step with credentials, against the real tools: `shipped` puts Debian's
/// docker-registry in the image's `bin/` (with a sealer-style `etc/registry_config.yml` whose
/// storage and address do not fit this host), else kubeferry's own registry serves. Either way
/// a request without credentials is refused with 401, skopeo reads with them, the real
/// containerd pulls with them, and `uninstall --purge` leaves the root as it was. kubeferry's
/// own registry serves a registry data directory filled from the bundle.
fn registry_with_credentials(shipped: bool) {
    use kubeferry_installer::registry::Credentials;
    use kubeferry_tests::images::{pushed, skopeo};

    let p = pushed();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = kubernetes_rootfs(tmp.path());
    fs::remove_dir_all(rootfs.join("registry")).unwrap();
    ok(std::process::Command::new("cp").arg("-a").arg(&p.storage).arg(rootfs.join("registry")));
    if shipped {
        let program = rootfs.join("bin/docker-registry");
        fs::copy(kubeferry_tests::images::DOCKER_REGISTRY, &program).unwrap();
        write(
            &rootfs.join("etc/registry_config.yml"),
            "version: 0.1\nlog:\n  fields:\n    service: registry\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  \
             filesystem:\n    rootdirectory: /var/lib/registry\nhttp:\n  addr: :5000\n  headers:\n    \
             X-Content-Type-Options: [nosniff]\n",
        );
    }
    let (bundle, verified) = open_bundle(tmp.path(), &rootfs);
    let host = RootedHost::new(&tmp.path().join("host"));
    host_skeleton(&host.root);
    let before = snapshot(&host.root);
    let credentials = Credentials::new("admin", "s3cret-pass").unwrap();
    // kubeferry's own registry serves a registry data directory (registryData) of its own.
    let data = (!shipped).then(|| PathBuf::from("/var/lib/kubeferry-registry"));
    let config = InstallConfig {
        // The name skopeo and containerd reach without /etc/hosts.
        registry_domain: "127.0.0.1".into(),
        registry_credentials: Some(credentials.clone()),
        registry_data: data.clone(),
        fail_after: Some(StepId::Registry),
        ..config()
    };
    let err = install::run(&host, &bundle, &verified, &config, &Silent).unwrap_err();
    assert_eq!(
        err.to_string(),
        "could not go on after step 'registry'",
        "{}\nregistry:\n{}",
        host.log_text(),
        host.service_log("kubeferry-registry.service")
    );
    let root = &host.root;
    let rootfs_dir = root.join("var/lib/kubeferry/example/rootfs");
    let unit = fs::read_to_string(root.join("etc/systemd/system/kubeferry-registry.service")).unwrap();
    let htpasswd = root.join("etc/kubeferry/registry/htpasswd");
    if shipped {
        assert!(
            unit.contains(&format!(
                "\nExecStart={} serve {}\n",
                root.join("usr/bin/docker-registry").display(),
                rootfs_dir.join("etc/registry_config.yml").display()
            )),
            "{unit}"
        );
        for line in [
            format!(
                "Environment=REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY={}",
                rootfs_dir.join("registry").display()
            ),
            format!("Environment=REGISTRY_HTTP_ADDR=0.0.0.0:{}", config.registry_port),
            "Environment=REGISTRY_AUTH=htpasswd".into(),
            format!("Environment=REGISTRY_AUTH_HTPASSWD_PATH={}", htpasswd.display()),
        ] {
            assert!(unit.contains(&format!("\n{line}\n")), "{line}:\n{unit}");
        }
    } else {
        let data = root.join("var/lib/kubeferry-registry");
        assert!(unit.contains(&format!(" --root {} ", data.display())), "{unit}");
        assert!(unit.contains(&format!(" --htpasswd {}\n", htpasswd.display())), "{unit}");
        let manifest = p.made.app.manifest.digest.strip_prefix("sha256:").unwrap();
        let blob = format!("docker/registry/v2/blobs/sha256/{}/{manifest}/data", &manifest[..2]);
        assert_eq!(fs::read(data.join(&blob)).unwrap(), fs::read(p.storage.join(&blob)).unwrap());
        let state = install::load_state(&host, "example").unwrap().unwrap();
        assert!(state.files.contains(&PathBuf::from("/var/lib/kubeferry-registry")), "recorded");
    }
    let htpasswd_text = fs::read_to_string(&htpasswd).unwrap();
    assert!(htpasswd_text.starts_with("admin:$2y$05$"), "{htpasswd_text}");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&htpasswd).unwrap().permissions()) & 0o777,
        0o600
    );

    // No credentials: 401 with the challenge; the wrong ones: refused too.
    let registry = format!("127.0.0.1:{}", config.registry_port);
    let (code, head) = raw_get(&registry, "/v2/library/app/manifests/v1", None);
    assert_eq!(code, 401, "{head}");
    assert!(head.contains("Basic realm=\"kubeferry-registry\""), "{head}");
    let wrong = Credentials::new("admin", "wrong").unwrap();
    assert_eq!(raw_get(&registry, "/v2/", Some(&wrong.authorization())).0, 401);
    assert_eq!(raw_get(&registry, "/v2/", Some(&credentials.authorization())).0, 200);

    let inspect = |creds: Option<&str>| {
        let mut cmd = skopeo(tmp.path());
        cmd.args(["inspect", "--tls-verify=false"]);
        if let Some(creds) = creds {
            cmd.arg("--creds").arg(creds);
        }
        run(cmd.arg(format!("docker://{registry}/library/app:v1")))
    };
    let (code, _, stderr) = inspect(None);
    assert_ne!(code, 0, "skopeo read without credentials");
    assert!(stderr.contains("unauthorized") || stderr.contains("401"), "{stderr}");
    let (code, stdout, stderr) = inspect(Some("admin:s3cret-pass"));
    assert_eq!(code, 0, "{stderr}");
    let inspected: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(inspected["Digest"], p.made.app.manifest.digest.as_str());

    // containerd's configuration holds the credentials for the CRI plugin (0600), and the real
    // containerd pulls with them through the hosts directory the install wrote.
    let containerd_config = root.join("etc/containerd/config.toml");
    let text = fs::read_to_string(&containerd_config).unwrap();
    assert!(
        text.contains(&format!(
            "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"{registry}\".auth]\nusername = \"admin\"\npassword = \"s3cret-pass\"\n"
        )),
        "{text}"
    );
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&containerd_config).unwrap().permissions())
            & 0o777,
        0o600
    );
    let pull = |user: Option<&str>| {
        let mut cmd = std::process::Command::new(root.join("usr/local/bin/ctr"));
        cmd.arg("--address").arg(root.join("run/containerd/containerd.sock"));
        cmd.args(["images", "pull", "--hosts-dir"]).arg(root.join("etc/containerd/certs.d"));
        if let Some(user) = user {
            cmd.arg("--user").arg(user);
        }
        run(cmd.arg(format!("{registry}/library/app:v1")))
    };
    let (code, _, stderr) = pull(None);
    assert_ne!(code, 0, "containerd pulled without credentials");
    assert!(stderr.contains("401") || stderr.contains("unauthorized"), "{stderr}");
    let (code, _, stderr) = pull(Some("admin:s3cret-pass"));
    assert_eq!(code, 0, "{stderr}");

    let report = uninstall::run(&host, "example", &UninstallOptions { purge: true, fail_after: None })
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
    assert!(report.installed);
    let left = snapshot_diff(&before, &snapshot(&host.root));
    assert!(left.is_empty(), "after uninstall --purge the root differs from before:\n{left}");
}

/// One GET with an optional `Authorization` header: (status, response head).
fn raw_get(addr: &str, target: &str, authorization: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET {target} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head)
}

#[test]
fn the_images_docker_registry_serves_the_bundle_to_its_user_only() {
    registry_with_credentials(true);
}

#[test]
fn kubeferrys_registry_serves_the_bundle_to_its_user_only() {
    registry_with_credentials(false);
}

/// A reporter that keeps every note with the time it came.
#[derive(Debug, Default)]
struct Notes(std::sync::Mutex<Vec<(std::time::Instant, String)>>);

impl kubeferry_installer::progress::Reporter for Notes {
    fn note(&self, line: &str) {
        self.0.lock().unwrap().push((std::time::Instant::now(), line.to_string()));
    }
}

/// kubeadm init's output reaches the user line by line as kubeadm prints it, and while it runs
/// a line says how long it has been running; both go to the install log too.
#[test]
fn kubeadm_init_streams_its_output_and_says_it_is_still_running() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = kubernetes_rootfs(tmp.path());
    let (bundle, verified) = open_bundle(tmp.path(), &rootfs);
    let host = RootedHost::new(&tmp.path().join("host"));
    host_skeleton(&host.root);
    let user = tmp.path().join("cluster.yaml");
    write(
        &user,
        "apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nclusterName: standin-slow\n",
    );
    let config = InstallConfig {
        kubeadm_config: Some(user),
        progress_every: std::time::Duration::from_secs(1),
        fail_after: Some(StepId::KubeadmInit),
        ..config()
    };
    let notes = Notes::default();
    let err = install::run(&host, &bundle, &verified, &config, &notes).unwrap_err();
    assert_eq!(err.to_string(), "could not go on after step 'kubeadm-init'", "{}", host.log_text());

    let notes = notes.0.into_inner().unwrap();
    let at = |text: &str| {
        notes.iter().find(|(_, line)| line == text).map(|(at, _)| *at).unwrap_or_else(|| {
            panic!(
                "no note '{text}' in:\n{}",
                notes.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
            )
        })
    };
    let waiting = at(
        "kubeadm init: [wait-control-plane] Waiting for the kubelet to boot up the control plane (stand-in: 2.5 s)",
    );
    let first_beat = at("kubeadm init: 1 s, waiting for the control plane");
    let second_beat = at("kubeadm init: 2 s, waiting for the control plane");
    let done = at("kubeadm init: Your Kubernetes control-plane has initialized successfully!");
    assert!(waiting < first_beat && first_beat < second_beat && second_beat < done, "in the order they came");
    assert!(
        done - waiting >= std::time::Duration::from_secs(2),
        "the first line came as printed, not at the end"
    );
    let log = host.log_text();
    for line in [
        "  [wait-control-plane] Waiting for the kubelet to boot up the control plane (stand-in: 2.5 s)",
        "kubeadm init: 2 s, waiting for the control plane",
        "  Your Kubernetes control-plane has initialized successfully!",
    ] {
        assert!(log.contains(&format!("{line}\n")), "{line}:\n{log}");
    }
}
