//! Undoing an install from its receipt (`state.json`): `kubeadm reset`, the services stopped
//! and disabled, every file the install wrote removed and every file it replaced put back, its
//! lines taken out of `/etc/hosts`, and, with `--purge`, the cluster's data too.
//!
//! # Order
//!
//! 1. [`Phase::Reset`]: `kubeadm reset -f` when `kubeadm init` started, while the runtime still
//!    runs (the cluster's containers are removed through it first). Without `--purge` the cluster's
//!    identity and data are kept: `/etc/kubernetes/pki` and `/var/lib/etcd`, which kubeadm
//!    reset deletes, are moved aside for the reset and back after it.
//! 2. [`Phase::Services`]: every unit the install enabled or started is stopped and disabled,
//!    the last started first; the registry image's container is removed once its unit stopped.
//! 3. [`Phase::Files`]: every file and directory recorded is removed (the rootfs too: it is
//!    kubeferry's), the last written first; every file the install replaced comes back from
//!    the state directory's `backup/`; directories left empty are removed up to the system's
//!    own ([`SYSTEM_DIRS`]).
//! 4. [`Phase::Hosts`]: the lines marked `# added by kubeferry` leave `/etc/hosts`.
//! 5. [`Phase::Data`]: the runtime's state in `/run` goes; with `--purge`, [`CLUSTER_DATA`] too,
//!    and the [`MOUNT_DIRS`] the kubelet made when they are empty.
//! 6. [`Phase::State`]: the state directory, its log and its lock, last: an uninstall that
//!    stops before this point can be run again and finishes the job.
//!
//! Every phase does what is left to do and skips what is done, so an uninstall interrupted at
//! any point is run again to the end.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::host::Host;
use crate::install::kubernetes::KUBELET_UNIT_NAME;
use crate::install::state::{self, State};
use crate::install::{REGISTRY_UNIT_NAME, StepId, registry};
use crate::{cri, mounts};

/// What `kubeadm init`, the kubelet and the runtime make that is the cluster's data rather than
/// kubeferry's files: kept unless `--purge`. Besides the data, containerd makes its `opt` plugin's
/// directory and the kubelet the control plane's host mounts (the FlexVolume plugins, the API
/// server's audit log) when they start.
pub const CLUSTER_DATA: [&str; 15] = [
    "/etc/kubernetes",
    "/var/lib/etcd",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/docker",
    "/var/lib/dockershim",
    "/etc/docker/key.json",
    "/var/lib/cni",
    "/etc/cni/net.d",
    "/root/.kube/cache",
    "/var/log/pods",
    "/var/log/containers",
    "/opt/containerd",
    "/usr/libexec/kubernetes",
    "/var/log/kubernetes",
];

/// Directories the kubelet makes for the control plane's host mounts (kubeadm's
/// `DirectoryOrCreate` volumes) that a host often has already, with its own files: with
/// `--purge` they are removed only when empty.
pub const MOUNT_DIRS: [&str; 1] = ["/etc/ssl/certs"];

/// What kubeadm reset deletes that is kept without `--purge`: the cluster's certificates and
/// etcd's data, enough to bring the same cluster back.
pub const KEPT_FROM_RESET: [&str; 2] = ["/etc/kubernetes/pki", "/var/lib/etcd"];

/// Runtime state, gone with the services (a tmpfs on a real host): containerd's, and docker's
/// with the socket and pid file a dockerd that was killed leaves.
pub const RUNTIME_STATE: [&str; 5] =
    ["/run/containerd", "/run/docker", "/run/docker.pid", "/var/run/docker.sock", "/var/run/dockershim.sock"];

/// Directories of the system that uninstall never removes, even when it leaves them empty.
pub const SYSTEM_DIRS: [&str; 23] = [
    "/",
    "/etc",
    "/etc/systemd",
    "/etc/systemd/system",
    "/etc/sysctl.d",
    "/etc/modules-load.d",
    "/usr",
    "/usr/bin",
    "/usr/sbin",
    "/usr/lib",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/local/lib",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/run",
    "/run",
    "/opt",
    "/root",
    "/home",
    "/tmp",
];

/// A phase of the uninstall, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `kubeadm reset`.
    Reset,
    /// Stop and disable the services.
    Services,
    /// Remove the files, put back the replaced ones.
    Files,
    /// kubeferry's lines out of /etc/hosts.
    Hosts,
    /// Runtime state, and the cluster's data with `--purge`.
    Data,
    /// The state directory.
    State,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 6] =
        [Phase::Reset, Phase::Services, Phase::Files, Phase::Hosts, Phase::Data, Phase::State];

    /// Its name, for logs and for `KUBEFERRY_FAIL_AFTER`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Reset => "reset",
            Phase::Services => "services",
            Phase::Files => "files",
            Phase::Hosts => "hosts",
            Phase::Data => "data",
            Phase::State => "state",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What uninstall is told.
#[derive(Debug, Clone, Default)]
pub struct UninstallOptions {
    /// Remove the cluster's data too ([`CLUSTER_DATA`]).
    pub purge: bool,
    /// Stop with an error right after this phase (for tests of running it again).
    pub fail_after: Option<Phase>,
}

/// What an uninstall did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Whether there was an install to undo.
    pub installed: bool,
    /// Files and directories removed.
    pub removed: usize,
    /// Files put back as they were before the install.
    pub restored: usize,
    /// The cluster data kept (host paths that exist), without `--purge`.
    pub kept: Vec<PathBuf>,
}

/// Undoes the install of the bundle `name`, as the [module documentation](self) says.
pub fn run(host: &dyn Host, name: &str, options: &UninstallOptions) -> Result<Report> {
    let mut report = Report::default();
    let dir = state::state_dir(name);
    if !host.path(&dir).exists() {
        return Ok(report);
    }
    let lock = state::lock(host, name)?;
    let Some(state) = state::load_state(host, name)? else {
        // Nothing recorded: only the lock and log of an install that wrote nothing, or of this
        // command.
        drop(lock);
        drop_state(host, name)?;
        return Ok(report);
    };
    report.installed = true;
    host.log(&format!("uninstall of {} (purge: {})", state.name, options.purge));

    for phase in Phase::ALL {
        host.log(&format!("uninstall {phase}: start"));
        match phase {
            Phase::Reset => {
                reset(host, &state, options.purge)?;
                // The image's clean hooks undo what its init hooks did, while the files they
                // need are still there. A failing one is logged: uninstall goes on.
                for hook in &state.clean_hooks {
                    if hook.dir.is_dir()
                        && let Err(e) = crate::install::hooks::run(host, hook, &state.hook_env)
                    {
                        host.log(&format!("the image's hook ({}) failed; going on: {e}", hook.origin));
                    }
                }
            }
            Phase::Services => {
                for unit in units(&state).iter().rev() {
                    host.stop_service(unit)?;
                    if unit == REGISTRY_UNIT_NAME {
                        // The container outlives the client its unit ran, and its runtime
                        // (started earlier, stopped later) still answers.
                        crate::install::registry_image::remove_container(host)?;
                    }
                }
            }
            Phase::Files => {
                let (removed, restored) = remove_files(host, &state)?;
                report.removed += removed;
                report.restored += restored;
                host.reload_units()?;
            }
            Phase::Hosts => {
                registry::remove_hosts_lines(host)?;
            }
            Phase::Data => {
                let data: &[&str] = if options.purge { &CLUSTER_DATA } else { &[] };
                remove_pod_netns(host)?;
                for dir in RUNTIME_STATE.iter().chain(data) {
                    let target = Path::new(dir);
                    if fs::symlink_metadata(host.path(target)).is_ok() {
                        unmount_below(host, target)?;
                        let path = host.path(target);
                        if mounts::is_mount_point(&path)? {
                            // A disk of the host's, mounted there: emptied, kept.
                            for entry in fs::read_dir(&path).map_err(Error::io("read", &path))? {
                                remove_path(host, &entry.map_err(Error::io("read", &path))?.path())?;
                            }
                            host.log(&format!("emptied {}, a mount point: kept", path.display()));
                            continue;
                        }
                        remove_path(host, &path)?;
                        report.removed += 1;
                        prune(host, target)?;
                    }
                }
                for dir in MOUNT_DIRS.iter().filter(|_| options.purge) {
                    let target = Path::new(dir);
                    let path = host.path(target);
                    if fs::read_dir(&path).is_ok_and(|mut entries| entries.next().is_none()) {
                        fs::remove_dir(&path).map_err(Error::io("remove", &path))?;
                        report.removed += 1;
                        prune(host, target)?;
                    }
                }
                if !options.purge {
                    report.kept =
                        CLUSTER_DATA.iter().map(PathBuf::from).filter(|p| host.path(p).exists()).collect();
                }
            }
            Phase::State => {
                drop_state(host, name)?;
            }
        }
        host.log(&format!("uninstall {phase}: done"));
        if options.fail_after == Some(phase) {
            return Err(Error::Io {
                action: "go on after uninstall phase",
                path: PathBuf::from(phase.name()),
                source: std::io::Error::other("failure injected for a test (KUBEFERRY_FAIL_AFTER)"),
            });
        }
    }
    drop(lock);
    Ok(report)
}

/// The units to stop: those recorded as enabled or started, and those whose unit file the
/// install wrote (a state file of an earlier kubeferry records only the files).
fn units(state: &State) -> Vec<String> {
    let mut units = state.services.clone();
    for file in &state.files {
        if file.parent() == Some(Path::new(UNIT_DIR))
            && let Some(name) = file.file_name().map(|n| n.to_string_lossy().into_owned())
            && name.ends_with(".service")
            && !units.contains(&name)
        {
            units.insert(0, name);
        }
    }
    units
}

/// Where the install writes unit files.
const UNIT_DIR: &str = "/etc/systemd/system";

/// `kubeadm reset -f` when `kubeadm init` started and kubeadm is still there; without `purge`
/// the certificates and etcd's data are moved aside for it and back after it.
fn reset(host: &dyn Host, state: &State, purge: bool) -> Result<()> {
    let kubeadm = host.path(&crate::install::kubernetes_bin("kubeadm"));
    // Put back what an earlier, interrupted uninstall moved aside.
    for kept in KEPT_FROM_RESET {
        restore_kept(host, Path::new(kept))?;
    }
    let init_started = [StepId::KubeadmInit, StepId::KubeadmJoin]
        .iter()
        .any(|s| state.done.contains(s) || state.running == Some(*s));
    if !init_started || !kubeadm.is_file() {
        return Ok(());
    }
    if !purge {
        for kept in KEPT_FROM_RESET {
            let path = host.path(Path::new(kept));
            if path.exists() {
                let aside = kept_path(&path);
                fs::rename(&path, &aside).map_err(Error::io("move aside", &path))?;
                host.log(&format!("kept {kept} out of kubeadm reset's way"));
            }
        }
    }
    // The kubelet stopped and the cluster's containers removed first: kubeadm reset removes
    // them only through crictl, which the image may lack, and a container left running holds
    // its mounts under /run/containerd.
    host.stop_service(KUBELET_UNIT_NAME)?;
    cri::remove_kubernetes_containers(host, cri::READY_TIMEOUT)?;
    crate::docker::remove_kubernetes_containers(host)?;
    // The pods' volumes too, which kubeadm reset would otherwise try to delete while mounted.
    unmount_below(host, Path::new(KUBELET_DIR))?;
    let result = host.run(Command::new(&kubeadm).args(["reset", "-f"]));
    for kept in KEPT_FROM_RESET {
        restore_kept(host, Path::new(kept))?;
    }
    result.map(|_| ())
}

fn kept_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.kubeferry-kept"))
}

fn restore_kept(host: &dyn Host, target: &Path) -> Result<()> {
    let path = host.path(target);
    let aside = kept_path(&path);
    if !aside.exists() {
        return Ok(());
    }
    if path.exists() {
        // kubeadm reset leaves the directory empty rather than gone on some versions.
        remove_path(host, &path)?;
    }
    fs::rename(&aside, &path).map_err(Error::io("put back", &path))?;
    host.log(&format!("put {} back", target.display()));
    Ok(())
}

/// Removes every recorded file, last written first, and puts back every file the install
/// replaced. (removed, restored)
fn remove_files(host: &dyn Host, state: &State) -> Result<(usize, usize)> {
    let mut removed = 0;
    for target in state.files.iter().rev() {
        let path = host.path(target);
        // A replaced file whose original is back already (an earlier uninstall that stopped
        // after this phase) is the host's again.
        let put_back = state.backups.iter().any(|b| &b.path == target && !host.path(&b.saved).exists());
        if put_back {
            continue;
        }
        // An extraction that was killed leaves its staging directory beside the rootfs.
        let leftovers = ["kubeferry-staging", "kubeferry-old"].map(|suffix| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            path.with_file_name(format!(".{name}.{suffix}"))
        });
        for candidate in leftovers.iter().chain(std::iter::once(&path)) {
            if fs::symlink_metadata(candidate).is_ok() {
                remove_path(host, candidate)?;
                removed += 1;
            }
        }
        // Also a file whose rename into place never happened.
        let partial = path.with_file_name(format!(
            ".{}.kubeferry-partial",
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ));
        if partial.exists() {
            remove_path(host, &partial)?;
        }
        prune(host, target)?;
    }
    let mut restored = 0;
    for backup in &state.backups {
        let saved = host.path(&backup.saved);
        if !saved.exists() {
            continue;
        }
        let path = host.path(&backup.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
        }
        state::move_file(&saved, &path)?;
        host.log(&format!("put {} back as it was before the install", backup.path.display()));
        restored += 1;
    }
    Ok((removed, restored))
}

/// Unmounts what the pods left mounted at or below `target` (a sandbox's `/dev/shm`, a volume),
/// so that it can be removed.
fn unmount_below(host: &dyn Host, target: &Path) -> Result<()> {
    for point in mounts::unmount_below(&host.path(target))? {
        host.log(&format!("unmounted {}", point.display()));
    }
    Ok(())
}

/// The kubelet's directory, where it mounts the pods' volumes.
const KUBELET_DIR: &str = "/var/lib/kubelet";

/// Where the runtime's CNI support mounts each pod's network namespace, as `cni-<id>`.
const NETNS_DIR: &str = "/run/netns";

/// Unmounts and removes the pods' network namespaces (`/run/netns/cni-*`), which containerd
/// removes only when the kubelet stops a pod; the directory's other entries are not ours.
fn remove_pod_netns(host: &dyn Host) -> Result<()> {
    let dir = host.path(Path::new(NETNS_DIR));
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry.map_err(Error::io("read", &dir))?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("cni-")) {
            if mounts::is_mount_point(&path)? {
                mounts::unmount(&path)?;
            }
            remove_path(host, &path)?;
        }
    }
    // Made by the runtime's CNI support when missing; `ip netns` makes it again.
    if fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_none()) {
        fs::remove_dir(&dir).map_err(Error::io("remove", &dir))?;
    }
    Ok(())
}

/// Removes a file, a link or a whole directory (a host path as [`Host::path`] gives it).
fn remove_path(host: &dyn Host, path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read", path)(e)),
    };
    if meta.is_dir() {
        fs::remove_dir_all(path).map_err(Error::io("remove", path))?;
    } else {
        fs::remove_file(path).map_err(Error::io("remove", path))?;
    }
    host.log(&format!("removed {}", path.display()));
    Ok(())
}

/// Removes the empty directories above `target` (a host path), up to the system's own.
fn prune(host: &dyn Host, target: &Path) -> Result<()> {
    let mut dir = target.parent();
    while let Some(current) = dir {
        if SYSTEM_DIRS.iter().any(|d| Path::new(d) == current) {
            break;
        }
        let path = host.path(current);
        let empty = fs::read_dir(&path).is_ok_and(|mut entries| entries.next().is_none());
        if !empty {
            break;
        }
        fs::remove_dir(&path).map_err(Error::io("remove", &path))?;
        dir = current.parent();
    }
    Ok(())
}

/// Removes the state directory (state, log, lock, the emptied backup/), and STATE_ROOT when it
/// is left empty.
fn drop_state(host: &dyn Host, name: &str) -> Result<()> {
    let dir = state::state_dir(name);
    remove_path(host, &host.path(&dir))?;
    prune(host, &dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_of_a_state_that_records_only_files() {
        let state = State {
            files: vec!["/usr/local/bin/containerd".into(), "/etc/systemd/system/containerd.service".into()],
            services: vec!["kubelet.service".into()],
            ..State::default()
        };
        assert_eq!(units(&state), ["containerd.service", "kubelet.service"]);
    }
}
