//! The install: a plan computed before anything changes, then executed step by step under a
//! lock, each finished step recorded in a state file so that a run after a failure, a reboot
//! or Ctrl-C resumes at the step that did not finish, and a run on a finished node changes
//! nothing.
//!
//! One file per concern: [`state`] (the receipt, the lock, the recording host), and one module
//! per step that is more than a call into another module: [`registry`], [`kubernetes`],
//! [`kubeadm_init`], [`applications`].

pub mod applications;
pub mod hooks;
pub mod kubeadm_init;
pub mod kubeadm_join;
pub mod kubernetes;
pub mod registry;
pub mod registry_image;
pub mod state;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cri::{self, RuntimeSettings};
use crate::error::{Error, Result};
use crate::extract::{self, ExtractOptions};
use crate::host::Host;
use crate::manifest::Digest;
use crate::preflight::{CONTROL_PLANE_PORTS, MIN_CPUS, MIN_MEMORY_MIB, Requirements};
use crate::progress::Reporter;
use crate::reader::{Bundle, Verified};

pub use state::{STATE_ROOT, State, load_state, state_dir};

/// The installed copy of the stub that runs the registry service.
pub const REGISTRY_BINARY: &str = "/usr/local/lib/kubeferry/kubeferry-stub";
/// The registry service's unit.
pub const REGISTRY_UNIT_NAME: &str = "kubeferry-registry.service";
/// The registry service's unit file.
pub const REGISTRY_UNIT: &str = "/etc/systemd/system/kubeferry-registry.service";
/// Where the Kubernetes executables of the rootfs's `bin/` go: kubeadm's kubelet drop-in, the
/// upstream kubelet unit and sealer's scripts all name `/usr/bin/kubelet`.
pub const KUBERNETES_BIN_DIR: &str = "/usr/bin";

/// The host path of a Kubernetes executable the install puts in place.
pub fn kubernetes_bin(name: &str) -> PathBuf {
    Path::new(KUBERNETES_BIN_DIR).join(name)
}

/// How often `kubeadm init` and `kubeadm join` are said to be still running.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The kubelet's port, the only one a worker node needs free.
pub const KUBELET_PORT: u16 = 10250;

/// The marker of the line kubeferry adds to /etc/hosts.
pub const HOSTS_MARKER: &str = "# added by kubeferry";

/// One step of the install, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepId {
    /// Unpack the verified rootfs.
    Extract,
    /// Install, configure and start containerd.
    Runtime,
    /// Serve the rootfs's registry/ on the registry domain.
    Registry,
    /// Put kubeadm, kubelet and kubectl in place, with the kubelet's unit.
    Kubernetes,
    /// `kubeadm init` with the rendered configuration.
    KubeadmInit,
    /// Apply manifests/ and run the image's CMD.
    Applications,
    /// `kubeadm join` to an existing cluster (the `join` command instead of `install`).
    KubeadmJoin,
}

impl StepId {
    /// Every step, in order.
    pub const ALL: [StepId; 6] = [
        StepId::Extract,
        StepId::Runtime,
        StepId::Registry,
        StepId::Kubernetes,
        StepId::KubeadmInit,
        StepId::Applications,
    ];

    /// The step's name, as the plan and the state file write it.
    pub fn name(self) -> &'static str {
        match self {
            StepId::Extract => "extract",
            StepId::Runtime => "runtime",
            StepId::Registry => "registry",
            StepId::Kubernetes => "kubernetes",
            StepId::KubeadmInit => "kubeadm-init",
            StepId::Applications => "applications",
            StepId::KubeadmJoin => "kubeadm-join",
        }
    }

    /// The steps of `join`: the node gets the runtime and Kubernetes, and pulls from the first
    /// control plane's registry instead of serving one.
    pub const JOIN: [StepId; 5] =
        [StepId::Extract, StepId::Runtime, StepId::Registry, StepId::Kubernetes, StepId::KubeadmJoin];

    /// Every step `install` and `join` know, to read a name back.
    pub fn from_name(name: &str) -> Option<StepId> {
        StepId::ALL.into_iter().chain([StepId::KubeadmJoin]).find(|s| s.name() == name)
    }

    /// Whether this version of kubeferry carries the step out (every step, since this version).
    pub fn implemented(self) -> bool {
        true
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the install is told.
#[derive(Debug, Clone)]
pub struct InstallConfig {
    /// Where the rootfs is unpacked (a host path).
    pub rootfs_dir: PathBuf,
    /// The registry domain (default `sea.hub`).
    pub registry_domain: String,
    /// The registry port (default 5000).
    pub registry_port: u16,
    /// The address the registry domain resolves to on this node.
    pub registry_address: String,
    /// The registry's user and password (sealos: `registryUsername`, `registryPassword`): the
    /// registry serves only them, and the runtime pulls with them. None: no authentication.
    pub registry_credentials: Option<crate::registry::Credentials>,
    /// Where the registry keeps its data (sealos: `registryData`); None: the rootfs's
    /// `registry/` itself.
    pub registry_data: Option<PathBuf>,
    /// Whether runc and the kubelet use the systemd cgroup driver.
    pub systemd_cgroup: bool,
    /// How often a long command with no end in sight (`kubeadm init`) is said to be still
    /// running ([`PROGRESS_EVERY`]).
    pub progress_every: std::time::Duration,
    /// Stop with an error right after this step has been recorded (for tests of resuming).
    pub fail_after: Option<StepId>,
    /// The API server's address (`--advertise-address`); else the address of the interface of
    /// the default route.
    pub advertise_address: Option<String>,
    /// The user's kubeadm configuration (`--config`), merged over the image's.
    pub kubeadm_config: Option<PathBuf>,
    /// The command run after the manifests are applied (`--cmd`), instead of the image's.
    pub cmd: Option<String>,
    /// The bundle as the user runs it (`edge-v1.20.2-linux-amd64.run`), for the join commands.
    pub bundle_file: String,
    /// Join an existing cluster (`join`) instead of creating one.
    pub join: Option<JoinRequest>,
}

/// What `join` is told.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The API server, token, CA hash and (for a control plane) certificate key.
    pub params: crate::kubeadm::JoinParams,
    /// Join as a control-plane node.
    pub control_plane: bool,
}

impl InstallConfig {
    /// The steps this run carries out: `install`'s or `join`'s.
    pub fn steps(&self) -> &'static [StepId] {
        if self.join.is_some() { &StepId::JOIN } else { &StepId::ALL }
    }
}

impl InstallConfig {
    /// The defaults of the command line for a bundle named `name` in the file `bundle_file`.
    pub fn new(name: &str, bundle_file: &str) -> InstallConfig {
        InstallConfig {
            rootfs_dir: state_dir(name).join("rootfs"),
            registry_domain: crate::kubeadm::DEFAULT_REGISTRY_DOMAIN.into(),
            registry_port: crate::kubeadm::DEFAULT_REGISTRY_PORT,
            registry_address: "127.0.0.1".into(),
            registry_credentials: None,
            registry_data: None,
            progress_every: PROGRESS_EVERY,
            systemd_cgroup: true,
            fail_after: None,
            advertise_address: None,
            kubeadm_config: None,
            cmd: None,
            bundle_file: bundle_file.into(),
            join: None,
        }
    }
}

/// The plan: every step, what it does, and whether an earlier run finished it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The steps, in order.
    pub steps: Vec<PlannedStep>,
}

/// A step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    /// Which step.
    pub id: StepId,
    /// What it will do, with the paths and addresses it will use.
    pub summary: String,
    /// Whether an earlier run finished it.
    pub done: bool,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            let mark = match (step.done, step.id.implemented()) {
                (true, _) => "done",
                (false, true) => "todo",
                (false, false) => "not in this version",
            };
            writeln!(f, "{:>2}. {:<13} [{mark}] {}", i + 1, step.id.name(), step.summary)?;
        }
        Ok(())
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step was already done: nothing changed.
    AlreadyDone,
    /// The implemented steps are done; the named ones are not in this version.
    StoppedBefore(Vec<StepId>),
    /// Every step is done, some by this run; with the join commands `kubeadm init` gave.
    Installed(Option<crate::kubeadm::JoinCommands>),
}

/// Computes the plan for a verified bundle, reading the state of an earlier run. Which way the
/// registry runs is said once the rootfs is extracted; [`plan_of_bundle`] says it before.
pub fn plan(host: &dyn Host, verified: &Verified, config: &InstallConfig) -> Result<Plan> {
    let rootfs = host.path(&config.rootfs_dir);
    let registry_way = rootfs.is_dir().then(|| {
        match hooks::find(hooks::Hook::InitRegistry, &rootfs, &verified.manifest.image) {
            Some(hook) => format!("the image's init-registry hook ({})", hook.origin),
            None => registry::Way::of_rootfs(&rootfs).describe(),
        }
    });
    plan_with(host, verified, config, registry_way)
}

/// [`plan`], with the way the registry runs read from the bundle's index.
pub fn plan_of_bundle(
    host: &dyn Host,
    bundle: &Bundle,
    verified: &Verified,
    config: &InstallConfig,
) -> Result<Plan> {
    let mut files = std::collections::HashSet::new();
    for entry in bundle.entries(&verified.manifest) {
        files.insert(entry?.path().to_string());
    }
    let hook = hooks::Hook::InitRegistry;
    let registry_way =
        if verified.manifest.image.labels.get(hook.label()).is_some_and(|v| !v.trim().is_empty()) {
            format!("the image's init-registry hook (sealos LABEL {})", hook.label())
        } else if files.contains(hooks::INIT_REGISTRY_SCRIPT) {
            format!("the image's init-registry hook (sealer {})", hooks::INIT_REGISTRY_SCRIPT)
        } else {
            registry::Way::of(|p| files.contains(p)).describe()
        };
    plan_with(host, verified, config, Some(registry_way))
}

/// The plan, saying what runs the registry when `registry_way` tells it.
fn plan_with(
    host: &dyn Host,
    verified: &Verified,
    config: &InstallConfig,
    registry_way: Option<String>,
) -> Result<Plan> {
    let state = load_state(host, &verified.manifest.name)?.unwrap_or_default();
    let registry = format!("{}:{}", config.registry_domain, config.registry_port);
    let rootfs = config.rootfs_dir.display();
    let runtime = cri::Runtime::of_manifest(verified.manifest.cri.as_deref());
    if runtime == cri::Runtime::Docker {
        crate::docker::check_kubernetes_version(verified.manifest.kubernetes_version.as_deref())?;
    }
    let steps = config
        .steps()
        .iter()
        .map(|&id| PlannedStep {
            id,
            done: state.done.contains(&id),
            summary: match id {
                StepId::Extract => format!("unpack the verified rootfs into '{rootfs}'"),
                StepId::Runtime => format!(
                    "install {} from {}/{} into {}, pulling from {registry}, and start it",
                    runtime.name(),
                    rootfs,
                    match runtime {
                        cri::Runtime::Containerd => cri::TARBALL,
                        cri::Runtime::Docker => crate::docker::TARBALL,
                    },
                    cri::BIN_DIR
                ),
                StepId::Registry if config.join.is_some() => format!(
                    "pull from the first control plane's registry: {} -> {} in /etc/hosts",
                    config.registry_domain, config.registry_address
                ),
                StepId::Registry => format!(
                    "serve {} on {registry} ({} -> {}) as {REGISTRY_UNIT_NAME}{}{}",
                    match &config.registry_data {
                        Some(data) => format!("{} (filled from {rootfs}/registry)", data.display()),
                        None => format!("{rootfs}/registry"),
                    },
                    config.registry_domain,
                    config.registry_address,
                    match &registry_way {
                        Some(way) => format!(", run by {way}"),
                        None => String::new(),
                    },
                    match &config.registry_credentials {
                        Some(c) => format!(", to the user '{}' only", c.username),
                        None => String::new(),
                    }
                ),
                StepId::KubeadmJoin => format!(
                    "render etc/kubeadm.yml's JoinConfiguration{} into {}, run kubeadm join{}",
                    match &config.kubeadm_config {
                        Some(path) => format!(" with '{}' merged over it", path.display()),
                        None => String::new(),
                    },
                    kubeadm_join::CONFIG,
                    match &config.join {
                        Some(join) if join.control_plane => format!(
                            " as a control plane of {}, copy admin.conf to {}",
                            join.params.server,
                            kubeadm_init::ROOT_KUBECONFIG
                        ),
                        Some(join) => format!(" as a worker of {}", join.params.server),
                        None => String::new(),
                    }
                ),
                StepId::Kubernetes => format!(
                    "put {rootfs}/bin/* (kubeadm, kubelet, kubectl, ...) into {KUBERNETES_BIN_DIR}, \
                     with the kubelet unit, kernel modules and sysctls, and enable the kubelet"
                ),
                StepId::KubeadmInit => format!(
                    "render etc/kubeadm.yml{} into {}, run kubeadm init --upload-certs (without kubeadm's \
                     preflight, and without CoreDNS unless registry/ holds it), copy admin.conf to {}",
                    match &config.kubeadm_config {
                        Some(path) => format!(" with '{}' merged over it", path.display()),
                        None => String::new(),
                    },
                    kubeadm_init::CONFIG,
                    kubeadm_init::ROOT_KUBECONFIG
                ),
                StepId::Applications => format!(
                    "apply {rootfs}/{}/**/*.yaml in order with kubectl, then run {}",
                    applications::MANIFESTS,
                    match &config.cmd {
                        Some(cmd) => format!("the image's ENTRYPOINT and '{cmd}' (--cmd)"),
                        None => format!(
                            "the image's ENTRYPOINT and CMD (from {rootfs}/{})",
                            applications::KUBEFILE
                        ),
                    }
                ),
            },
        })
        .collect();
    Ok(Plan { steps })
}

/// Keeps the image's clean hooks in the state, so that uninstall runs them without the bundle.
fn remember_clean_hooks(
    host: &state::Recorder<'_>,
    rootfs: &Path,
    image: &crate::manifest::ImageConfig,
) -> Result<()> {
    let found: Vec<hooks::HookCommand> = [hooks::Hook::Clean, hooks::Hook::CleanRegistry]
        .into_iter()
        .filter_map(|hook| hooks::find(hook, rootfs, image))
        .collect();
    let env = image.env.clone();
    host.update(|state| {
        state.clean_hooks = found;
        state.hook_env = env;
    })
}

/// The directory the registry serves (a path of this process): the rootfs's `registry/`, or
/// the registry data directory (`registryData`), filled from it and recorded the first time.
fn registry_storage(host: &state::Recorder<'_>, rootfs: &Path, config: &InstallConfig) -> Result<PathBuf> {
    let bundled = rootfs.join("registry");
    let Some(data) = &config.registry_data else {
        return Ok(bundled);
    };
    let target = host.path(data);
    if host.state().files.iter().any(|f| f == data) {
        // An earlier run made and filled it; fill it again, it may have stopped half-way.
    } else if fs::read_dir(&target).map(|mut d| d.next().is_some()).unwrap_or(false) {
        return Err(Error::RegistrySettings(format!(
            "the registry data directory '{}' is not empty: give a new or empty directory",
            data.display()
        )));
    } else {
        host.record(data)?;
    }
    copy_tree(&bundled, &target)?;
    host.log(&format!("filled the registry data directory {} from {}", data.display(), bundled.display()));
    Ok(target)
}

/// Copies the tree `from` into `to` (created), hard-linking files where the file system allows.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).map_err(Error::io("create", to))?;
    let entries = match fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read", from)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io("read", from))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(Error::io("read", &source))?;
        if kind.is_dir() {
            copy_tree(&source, &target)?;
        } else if kind.is_file()
            && fs::symlink_metadata(&target).is_err()
            && fs::hard_link(&source, &target).is_err()
        {
            fs::copy(&source, &target).map_err(Error::io("copy", &source))?;
        }
    }
    Ok(())
}

/// Tools the install and the images' scripts call, unless the bundle's bin/ carries them.
pub const HOST_TOOLS: [&str; 5] = ["iptables", "conntrack", "socat", "mount", "modprobe"];
/// Room beyond the unpacked payload for logs, state and the runtime's first writes.
pub const DISK_MARGIN: u64 = 512 << 20;

/// Which of [`HOST_TOOLS`] the bundle's bin/ carries, read from its index.
pub fn bundled_tools(bundle: &Bundle, verified: &Verified) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in bundle.entries(&verified.manifest) {
        let entry = entry?;
        if let Some(name) = entry.path().strip_prefix("bin/")
            && HOST_TOOLS.contains(&name)
        {
            found.push(name.to_string());
        }
    }
    Ok(found)
}

/// What preflight checks for this plan. What an earlier run did is not checked again: its
/// registry holds the registry port, its control plane (once `kubeadm init` is done) the
/// control plane's ports, its rootfs already has its space.
pub fn requirements(
    verified: &Verified,
    bundled_bin: &[String],
    config: &InstallConfig,
    plan: &Plan,
    advertise_given: bool,
) -> Requirements {
    let m = &verified.manifest;
    let done = |id: StepId| plan.steps.iter().any(|s| s.id == id && s.done);
    Requirements {
        arch: m.arch,
        cgroup_driver: if config.systemd_cgroup { "systemd" } else { "cgroupfs" }.into(),
        ports: match &config.join {
            // A worker runs only the kubelet; no node but the first serves the registry. A
            // finished init or join holds its own ports.
            _ if done(StepId::KubeadmInit) || done(StepId::KubeadmJoin) => (!done(StepId::Registry)
                && config.join.is_none())
            .then_some(config.registry_port)
            .into_iter()
            .collect(),
            Some(join) if !join.control_plane => vec![KUBELET_PORT],
            Some(_) => CONTROL_PLANE_PORTS.to_vec(),
            None => CONTROL_PLANE_PORTS
                .iter()
                .copied()
                .chain((!done(StepId::Registry)).then_some(config.registry_port))
                .collect(),
        },
        disk: if done(StepId::Extract) {
            Vec::new()
        } else {
            vec![(config.rootfs_dir.clone(), m.payload.unpacked_size + DISK_MARGIN)]
        },
        tools: HOST_TOOLS
            .iter()
            .filter(|t| !bundled_bin.iter().any(|b| b == *t))
            .map(|t| t.to_string())
            .collect(),
        advertise_address_given: advertise_given,
        min_memory_mib: MIN_MEMORY_MIB,
        min_cpus: MIN_CPUS,
        apparmor_profile: cri::Runtime::of_manifest(m.cri.as_deref()) == cri::Runtime::Docker,
    }
}

/// Runs the plan: each step not done yet, recorded as it finishes.
pub fn run(
    host: &dyn Host,
    bundle: &Bundle,
    verified: &Verified,
    config: &InstallConfig,
    reporter: &dyn Reporter,
) -> Result<Outcome> {
    let manifest = &verified.manifest;
    let _lock = state::lock(host, &manifest.name)?;

    let digest = Digest::of(bundle.manifest_bytes()).to_string();
    let state = match load_state(host, &manifest.name)? {
        Some(state) if state.bundle != digest => {
            return Err(Error::Io {
                action: "install over",
                path: host.path(&state_dir(&manifest.name)),
                source: std::io::Error::other(format!(
                    "another bundle of '{}' ({}) is installed here; uninstall it first",
                    manifest.name, state.name
                )),
            });
        }
        Some(state) => state,
        None => State {
            bundle: digest,
            name: format!("{} {}", manifest.name, manifest.version),
            ..State::default()
        },
    };
    let recorder = state::Recorder::new(host, &manifest.name, state);
    let host = &recorder;
    host.update(|state| {
        state.rootfs_dir = Some(config.rootfs_dir.clone());
        state.registry = Some(format!("{}:{}", config.registry_domain, config.registry_port));
        state.joined = config.join.as_ref().map(|j| j.params.server.clone());
    })?;

    let rootfs = host.path(&config.rootfs_dir);
    let mut ran = false;
    for &step in config.steps() {
        if host.state().done.contains(&step) {
            host.log(&format!("step {step}: done by an earlier run"));
            continue;
        }
        if !step.implemented() {
            let done = host.state().done;
            let rest = config.steps().iter().copied().filter(|s| !done.contains(s)).collect();
            return Ok(Outcome::StoppedBefore(rest));
        }
        host.log(&format!("step {step}: start"));
        let retry = host.state().running == Some(step);
        host.update(|state| state.running = Some(step))?;
        ran = true;
        match step {
            StepId::Extract => {
                host.record(&config.rootfs_dir)?;
                let options = ExtractOptions { replace: true, ..ExtractOptions::default() };
                extract::extract(bundle, verified, &rootfs, &options, reporter)?;
            }
            StepId::Runtime => {
                let env = hooks::environment(&manifest.image, config, &rootfs);
                if let Some(check) = hooks::find(hooks::Hook::Check, &rootfs, &manifest.image) {
                    hooks::run(host, &check, &env)?;
                }
                remember_clean_hooks(host, &rootfs, &manifest.image)?;
                match hooks::find(hooks::Hook::Init, &rootfs, &manifest.image) {
                    Some(init) => {
                        hooks::run(host, &init, &env)?;
                    }
                    None => {
                        let settings = RuntimeSettings {
                            registry: format!("{}:{}", config.registry_domain, config.registry_port),
                            systemd_cgroup: config.systemd_cgroup,
                            sandbox_image: None,
                            credentials: config.registry_credentials.clone(),
                        };
                        match cri::Runtime::of(&rootfs) {
                            cri::Runtime::Containerd => cri::install_containerd(host, &rootfs, &settings)?,
                            cri::Runtime::Docker => crate::docker::install(host, &rootfs, &settings)?,
                        };
                    }
                }
            }
            StepId::Registry if config.join.is_some() => registry::use_remote(host, config)?,
            StepId::Registry => match hooks::find(hooks::Hook::InitRegistry, &rootfs, &manifest.image) {
                Some(init) => {
                    registry::use_remote(host, config)?;
                    hooks::run(host, &init, &hooks::environment(&manifest.image, config, &rootfs))?;
                }
                None => {
                    let storage = registry_storage(host, &rootfs, config)?;
                    registry::start(host, bundle, &rootfs, &storage, config)?
                }
            },
            StepId::Kubernetes if hooks::find(hooks::Hook::Init, &rootfs, &manifest.image).is_some() => {
                host.log("step kubernetes: the image's init hook set the node up");
            }
            StepId::Kubernetes => kubernetes::install(host, &rootfs, reporter)?,
            StepId::KubeadmInit => {
                let bundled = kubeadm_init::Bundled {
                    name: &manifest.name,
                    kubernetes_version: manifest.kubernetes_version.as_deref(),
                };
                kubeadm_init::run(host, &rootfs, config, &bundled, retry, reporter)?;
            }
            StepId::Applications => applications::run(host, &rootfs, &manifest.image, config)?,
            StepId::KubeadmJoin => {
                let kubernetes_version = manifest.kubernetes_version.as_deref();
                kubeadm_join::run(host, &rootfs, config, kubernetes_version, retry, reporter)?;
            }
        }
        host.update(|state| {
            state.running = None;
            state.done.push(step);
            state.finished.insert(step, state::now());
        })?;
        host.log(&format!("step {step}: done"));
        if config.fail_after == Some(step) {
            return Err(Error::Io {
                action: "go on after step",
                path: PathBuf::from(step.name()),
                source: std::io::Error::other("failure injected for a test (KUBEFERRY_FAIL_AFTER)"),
            });
        }
    }
    if ran {
        Ok(Outcome::Installed(kubeadm_init::saved_join_commands(host, &manifest.name)))
    } else {
        Ok(Outcome::AlreadyDone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use crate::manifest::{Blob, Index, MANIFEST_FORMAT, Manifest, Owner, Payload};
    use crate::reader::Authenticity;

    fn verified() -> Verified {
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: "edge".into(),
            version: "v1".into(),
            arch: Arch::Amd64,
            kubernetes_version: None,
            cri: None,
            image: Default::default(),
            images: Vec::new(),
            builder: "test".into(),
            mtime: 0,
            owner: Owner { uid: 0, gid: 0 },
            signer: None,
            stub: Blob { size: 0, digest: Digest::of(b"") },
            payload: Payload { size: 0, unpacked_size: 1 << 30, chunks: vec![] },
            index: Index { entries: 0, size: 0, unpacked_size: 0, blocks: vec![] },
        };
        Verified { manifest, authenticity: Authenticity::Unchecked }
    }

    pub(super) fn config() -> InstallConfig {
        InstallConfig {
            rootfs_dir: "/var/lib/kubeferry/edge/rootfs".into(),
            registry_domain: "sea.hub".into(),
            registry_port: 5000,
            registry_address: "127.0.0.1".into(),
            registry_credentials: None,
            registry_data: None,
            progress_every: PROGRESS_EVERY,
            systemd_cgroup: true,
            fail_after: None,
            advertise_address: None,
            kubeadm_config: None,
            cmd: None,
            bundle_file: "edge.run".into(),
            join: None,
        }
    }

    fn joining(control_plane: bool) -> InstallConfig {
        let params = crate::kubeadm::JoinParams {
            server: "10.0.0.10:6443".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hash: format!("sha256:{}", "ab".repeat(32)),
            certificate_key: None,
            bundle: "edge.run".into(),
        };
        InstallConfig {
            registry_address: "10.0.0.10".into(),
            join: Some(JoinRequest { params, control_plane }),
            ..config()
        }
    }

    #[test]
    fn a_join_plans_its_own_steps_and_checks_only_the_ports_its_role_needs() {
        let config = joining(false);
        assert_eq!(config.steps(), StepId::JOIN);
        let plan = Plan {
            steps: config
                .steps()
                .iter()
                .map(|&id| PlannedStep { id, summary: String::new(), done: false })
                .collect(),
        };
        let worker = requirements(&verified(), &[], &config, &plan, false);
        assert_eq!(worker.ports, [KUBELET_PORT]);
        let control = requirements(&verified(), &[], &joining(true), &plan, false);
        assert_eq!(control.ports, CONTROL_PLANE_PORTS, "no registry port: the first node serves it");
        assert_eq!(StepId::from_name("kubeadm-join"), Some(StepId::KubeadmJoin));
    }

    fn plan_with(done: &[StepId]) -> Plan {
        Plan {
            steps: StepId::ALL
                .iter()
                .map(|&id| PlannedStep { id, summary: String::new(), done: done.contains(&id) })
                .collect(),
        }
    }

    #[test]
    fn a_first_run_checks_everything_and_a_resumed_one_not_what_it_did() {
        let bundled = ["conntrack".to_string()];
        let first = requirements(&verified(), &bundled, &config(), &plan_with(&[]), false);
        assert_eq!(first.ports, [6443, 10250, 10257, 10259, 2379, 2380, 5000]);
        assert_eq!(first.disk, [(PathBuf::from("/var/lib/kubeferry/edge/rootfs"), (1 << 30) + DISK_MARGIN)]);
        assert_eq!(
            first.tools,
            ["iptables", "socat", "mount", "modprobe"],
            "conntrack is in the bundle's bin/"
        );
        assert_eq!(first.cgroup_driver, "systemd");

        let resumed = requirements(
            &verified(),
            &bundled,
            &config(),
            &plan_with(&[StepId::Extract, StepId::Runtime, StepId::Registry]),
            true,
        );
        assert_eq!(resumed.ports, [6443, 10250, 10257, 10259, 2379, 2380], "our own registry holds 5000");
        assert!(resumed.disk.is_empty(), "the rootfs is there already");
        assert!(resumed.advertise_address_given);

        let finished = requirements(&verified(), &bundled, &config(), &plan_with(&StepId::ALL), true);
        assert!(
            finished.ports.is_empty(),
            "our own control plane and registry hold them: {:?}",
            finished.ports
        );
    }

    #[test]
    fn the_registry_step_names_its_data_directory_and_its_user() {
        let dir = tempfile::tempdir().unwrap();
        let host = crate::host::PathsOnly(dir.path().to_path_buf());
        let config = InstallConfig {
            registry_data: Some("/srv/registry".into()),
            registry_credentials: Some(crate::registry::Credentials::new("admin", "x").unwrap()),
            ..config()
        };
        let plan = plan(&host, &verified(), &config).unwrap();
        assert_eq!(
            plan.steps[2].summary,
            "serve /srv/registry (filled from /var/lib/kubeferry/edge/rootfs/registry) on sea.hub:5000 \
             (sea.hub -> 127.0.0.1) as kubeferry-registry.service, to the user 'admin' only"
        );
    }

    #[test]
    fn the_plan_prints_every_step_and_what_is_done() {
        let text = plan_with(&[StepId::Extract]).to_string();
        assert!(text.starts_with(" 1. extract       [done] \n 2. runtime       [todo] \n"), "{text}");
        assert!(text.contains(" 6. applications  [todo] \n"), "{text}");
    }
}
