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

fn diff(
    before: &std::collections::BTreeMap<String, String>,
    after: &std::collections::BTreeMap<String, String>,
) -> String {
    before
        .iter()
        .filter(|(path, desc)| after.get(*path) != Some(desc))
        .map(|(path, desc)| format!("- {path}: {desc}"))
        .chain(
            after.iter().filter(|(path, _)| !before.contains_key(*path)).map(|(p, d)| format!("+ {p}: {d}")),
        )
        .collect::<Vec<_>>()
        .join("\n")
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
        let left = diff(&before, &snapshot(&host.root));
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
    assert!(
        host.log_text().contains("kubeadm init started before and did not finish: kubeadm reset -f first")
    );

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
    let left = diff(&before, &snapshot(&host.root));
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

    let outcome = install::run(&host, &bundle, &verified, &config, &Silent)
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
    assert_eq!(outcome, Outcome::Installed(None));
    let hosts = fs::read_to_string(host.root.join("etc/hosts")).unwrap();
    assert!(hosts.contains("10.0.0.10 sea.hub # added by kubeferry"), "{hosts}");
    assert!(!host.root.join("etc/systemd/system/kubeferry-registry.service").exists(), "no registry here");
    let calls = fs::read_to_string(tmp.path().join("host.logs/standin-calls")).unwrap();
    let join_call = format!(
        "kubeadm join --config {} --skip-phases=preflight",
        host.root.join("etc/kubernetes/kubeadm-kubeferry-join.yaml").display()
    );
    assert!(calls.lines().any(|l| l == join_call), "{calls}");
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
    assert!(before == after, "left behind:\n{}", diff(&before, &after));
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
    assert!(before == after, "left behind:\n{}", diff(&before, &after));
}
