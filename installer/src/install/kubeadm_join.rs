//! The kubeadm-join step of `join`: the image's kubeadm configuration rendered with this
//! host's facts and the user's `--config`, its `JoinConfiguration` given the discovery of the
//! cluster to join ([`crate::kubeadm::join_config`]), written to [`CONFIG`], and `kubeadm join`
//! run with it. A control-plane node also gets `admin.conf` for root.

use std::path::Path;
use std::process::Command;

use super::kubeadm_init::{
    ADMIN_CONF, ROOT_KUBECONFIG, kubeadm_error, rendered_configuration, run_reporting,
};
use super::{InstallConfig, kubernetes_bin};
use crate::error::{Error, Result};
use crate::host::{Host, copy_file, write_file};
use crate::kubeadm;
use crate::progress::Reporter;

/// The configuration `kubeadm join` runs with.
pub const CONFIG: &str = "/etc/kubernetes/kubeadm-kubeferry-join.yaml";

/// Carries the step out. `retry`: an earlier run started `kubeadm join` and did not finish,
/// so `kubeadm reset -f` runs first.
pub fn run(
    host: &dyn Host,
    rootfs: &Path,
    config: &InstallConfig,
    kubernetes_version: Option<&str>,
    retry: bool,
    reporter: &dyn Reporter,
) -> Result<()> {
    let Some(join) = &config.join else {
        return Err(Error::io("join", "kubeadm")(std::io::Error::other("no cluster to join was given")));
    };
    let (rendered, values, source) = rendered_configuration(rootfs, config, kubernetes_version)?;
    let joining = kubeadm::join_config(&rendered, &values, &join.params, join.control_plane)
        .map_err(kubeadm_error("render the join configuration from", &source))?;
    write_file(host, Path::new(CONFIG), joining.as_bytes(), 0o600)?;

    let kubeadm = host.path(&kubernetes_bin("kubeadm"));
    if retry {
        super::kubeadm_init::reset_unfinished(host, &kubeadm, "join")?;
        super::kubeadm_init::kubelet_credentials_after_reset(host, rootfs, config)?;
    }
    // kubeadm's preflight is skipped for the reason kubeadm-init gives: kubeferry's has run.
    run_reporting(
        host,
        Command::new(&kubeadm)
            .arg("join")
            .arg("--config")
            .arg(host.path(Path::new(CONFIG)))
            .arg("--skip-phases=preflight"),
        "kubeadm join",
        "waiting for the cluster",
        config.progress_every,
        reporter,
    )?;
    if join.control_plane {
        let admin = host.path(Path::new(ADMIN_CONF));
        if admin.is_file() {
            copy_file(host, &admin, Path::new(ROOT_KUBECONFIG), 0o600)?;
        }
    }
    Ok(())
}
