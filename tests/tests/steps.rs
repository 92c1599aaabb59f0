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
        rootfs_dir: "/var/lib/kubeferry/example/rootfs".into(),
        registry_domain: "sea.hub".into(),
        registry_port: kubeferry_tests::images::free_addr().port(),
        registry_address: "127.0.0.1".into(),
        systemd_cgroup: true,
        fail_after: None,
    }
}

fn implemented() -> Vec<StepId> {
    StepId::ALL.into_iter().filter(|s| s.implemented()).collect()
}

fn finished() -> Outcome {
    let rest: Vec<StepId> = StepId::ALL.into_iter().filter(|s| !s.implemented()).collect();
    if rest.is_empty() { Outcome::AlreadyDone } else { Outcome::StoppedBefore(rest) }
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
        assert_eq!(outcome, finished());
        let log = host.log_text();
        for step in implemented() {
            assert_eq!(log.matches(&format!("step {step}: start")).count(), 1, "{step} ran once:\n{log}");
            if step <= failing {
                assert!(log.contains(&format!("step {step}: done by an earlier run")), "{step}:\n{log}");
            }
        }

        // A finished run: nothing starts again.
        let starts = host.log_text().matches(": start").count();
        assert_eq!(install::run(&host, &bundle, &verified, &config, &Silent).unwrap(), finished());
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
    let _ = install::run(&host, &bundle, &verified, &config, &Silent);
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
