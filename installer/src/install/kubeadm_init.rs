//! The kubeadm-init step: the image's kubeadm configuration rendered with the install's facts
//! and merged with the user's `--config` ([`crate::kubeadm`]), written to [`CONFIG`]; `kubeadm
//! init` run with it; `admin.conf` copied for root; and the exact join commands for workers and
//! control planes, read from kubeadm's output and kept for the user.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::kubernetes::KUBELET_UNIT_NAME;
use super::{InstallConfig, kubernetes_bin};
use crate::cri;
use crate::error::{Error, Result};
use crate::host::{Host, Watch, copy_file, write_file};
use crate::kubeadm::{self, JoinCommands, JoinParams, Values};
use crate::progress::Reporter;
use crate::registry;

/// The configuration `kubeadm init` runs with.
pub const CONFIG: &str = "/etc/kubernetes/kubeadm-kubeferry.yaml";
/// The cluster's administrator kubeconfig, as kubeadm writes it.
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
/// root's kubeconfig.
pub const ROOT_KUBECONFIG: &str = "/root/.kube/config";
/// The file, in the state directory, that keeps the join commands (they hold a bootstrap token
/// and the certificate key: mode 0600).
pub const JOIN_FILE: &str = "join-commands.json";

/// The image's configuration files, the first found.
const IMAGE_CONFIGS: [&str; 2] = ["etc/kubeadm.yml.tmpl", "etc/kubeadm.yml"];

/// kubeadm's own preflight is skipped: kubeferry's has checked the host (with the user's
/// `--ignore-preflight`, which kubeadm's would not know), and kubeadm 1.20's fails hard on its
/// image pull without crictl, which Debian does not have.
const SKIP_ALWAYS: &str = "preflight";

/// What the install needs to know of the bundle for this step.
#[derive(Debug, Clone)]
pub struct Bundled<'a> {
    /// The state directory's name (the bundle's name).
    pub name: &'a str,
    /// The Kubernetes version the manifest records.
    pub kubernetes_version: Option<&'a str>,
}

/// Undoes what an unfinished `kubeadm init` or `join` (`what`) left. Its containers may run
/// (the kubelet starts its static pods at boot): they hold the control plane's ports and etcd's
/// data directory, and kubeadm reset removes them only through crictl. After a power cut the
/// images unpacked for them may hold empty files, and a pull cut short leaves content that
/// containerd lists but lost. So the kubelet is stopped and containerd's Kubernetes namespace
/// emptied ([`cri::reset_kubernetes_namespace`]) before `kubeadm reset -f`.
pub(super) fn reset_unfinished(host: &dyn Host, kubeadm: &Path, what: &str) -> Result<()> {
    host.log(&format!(
        "kubeadm {what} started before and did not finish: its containers, images and leases removed, kubeadm reset -f"
    ));
    host.stop_service(KUBELET_UNIT_NAME)?;
    cri::reset_kubernetes_namespace(host, std::time::Duration::from_secs(60))?;
    host.run(Command::new(kubeadm).args(["reset", "-f"]))?;
    // Stopping disabled it; kubeadm starts it.
    host.enable_service(KUBELET_UNIT_NAME)
}

/// Carries the step out. `retry`: an earlier run started `kubeadm init` and did not finish,
/// so `kubeadm reset -f` runs first.
pub fn run(
    host: &dyn Host,
    rootfs: &Path,
    config: &InstallConfig,
    bundled: &Bundled<'_>,
    retry: bool,
    reporter: &dyn Reporter,
) -> Result<Option<JoinCommands>> {
    let kubeadm = host.path(&kubernetes_bin("kubeadm"));
    let rendered = configuration(rootfs, config, bundled.kubernetes_version)?;
    write_file(host, Path::new(CONFIG), rendered.as_bytes(), 0o600)?;

    if retry {
        reset_unfinished(host, &kubeadm, "init")?;
    }
    kubelet_credentials_after_reset(host, rootfs, config)?;
    let skip = skipped_phases(rootfs);
    let output = run_reporting(
        host,
        Command::new(&kubeadm)
            .arg("init")
            .arg("--config")
            .arg(host.path(Path::new(CONFIG)))
            .arg(format!("--skip-phases={skip}"))
            .arg("--upload-certs"),
        "kubeadm init",
        "waiting for the control plane",
        config.progress_every,
        reporter,
    )?;

    let admin = host.path(Path::new(ADMIN_CONF));
    if !admin.is_file() {
        return Err(Error::Io {
            action: "find the kubeconfig kubeadm init writes,",
            path: admin,
            source: std::io::Error::other("kubeadm init ended without writing it"),
        });
    }
    copy_file(host, &admin, Path::new(ROOT_KUBECONFIG), 0o600)?;

    let join = match join_params(&output, &config.bundle_file) {
        Some(params) => Some(params),
        None => {
            // Not in kubeadm's output (another version's wording): ask for a new token.
            let printed =
                host.run(Command::new(&kubeadm).args(["token", "create", "--print-join-command"]))?;
            join_params(&printed, &config.bundle_file)
        }
    };
    let Some(params) = join else {
        host.log("no join command in kubeadm's output: see 'kubeadm token create --print-join-command'");
        return Ok(None);
    };
    let commands = kubeadm::join_commands(&params).map_err(|e| Error::Io {
        action: "read the join commands of",
        path: kubeadm.clone(),
        source: std::io::Error::other(e),
    })?;
    let saved = serde_json::json!({
        "worker": commands.worker,
        "control_plane": commands.control_plane,
        "kubeferry_worker": commands.kubeferry_worker,
        "kubeferry_control_plane": commands.kubeferry_control_plane,
    });
    let bytes = serde_json::to_vec_pretty(&saved).map_err(|e| Error::io("write", JOIN_FILE)(e.into()))?;
    write_file(host, &super::state_dir(bundled.name).join(JOIN_FILE), &bytes, 0o600)?;
    Ok(Some(commands))
}

/// Runs a long kubeadm command through the host, telling `reporter` each line of its output as
/// it comes, prefixed with `what`, and every `every` how long it has run and what it waits for
/// (`kubeadm init: 90 s, waiting for the control plane`), which the install log gets too.
pub fn run_reporting(
    host: &dyn Host,
    command: &mut Command,
    what: &str,
    waiting: &str,
    every: std::time::Duration,
    reporter: &dyn Reporter,
) -> Result<String> {
    host.run_watched(command, every, &mut |event| match event {
        Watch::Line(line) => reporter.note(&format!("{what}: {line}")),
        Watch::Running(elapsed) => {
            let line = format!("{what}: {} s, {waiting}", elapsed.as_secs());
            host.log(&line);
            reporter.note(&line);
        }
    })
}

/// The join commands an earlier run kept, if any.
pub fn saved_join_commands(host: &dyn Host, name: &str) -> Option<JoinCommands> {
    let bytes = fs::read(host.path(&super::state_dir(name).join(JOIN_FILE))).ok()?;
    let saved: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let field = |key: &str| saved.get(key).and_then(|v| v.as_str()).map(str::to_string);
    Some(JoinCommands {
        worker: field("worker")?,
        control_plane: field("control_plane")?,
        kubeferry_worker: field("kubeferry_worker")?,
        kubeferry_control_plane: field("kubeferry_control_plane")?,
    })
}

/// The configuration for `kubeadm init`: the image's file (or kubeferry's default) rendered
/// with the install's facts, the user's `--config` merged over it, `JoinConfiguration` left out.
pub fn configuration(
    rootfs: &Path,
    config: &InstallConfig,
    kubernetes_version: Option<&str>,
) -> Result<String> {
    let (rendered, _, source) = rendered_configuration(rootfs, config, kubernetes_version)?;
    kubeadm::init_config(&rendered).map_err(kubeadm_error("render", &source))
}

/// The image's configuration (or kubeferry's default) rendered with the install's facts and
/// the user's `--config` merged over it, every kind kept; with the values it was rendered with
/// and the file it came from.
pub fn rendered_configuration(
    rootfs: &Path,
    config: &InstallConfig,
    kubernetes_version: Option<&str>,
) -> Result<(String, Values, PathBuf)> {
    let (template, source) = image_configuration(rootfs)?;
    let mut values = configuration_values(config, kubernetes_version, &source)?;
    values.cri_socket = crate::cri::Runtime::of(rootfs).cri_socket().into();
    let mut rendered = kubeadm::render(&template, &values).map_err(kubeadm_error("render", &source))?;
    if let Some(user) = &config.kubeadm_config {
        let text = fs::read_to_string(user).map_err(Error::io("read", user))?;
        rendered = kubeadm::merge(&rendered, &text)
            .map_err(kubeadm_error("merge the kubeadm configuration", user))?;
    }
    Ok((rendered, values, source))
}

/// With docker, the registry's credentials for the kubelet's dockershim, written again:
/// `kubeadm reset` (of a resumed init or join, or the user's) empties the kubelet's directory.
pub fn kubelet_credentials_after_reset(host: &dyn Host, rootfs: &Path, config: &InstallConfig) -> Result<()> {
    match &config.registry_credentials {
        Some(credentials) if crate::cri::Runtime::of(rootfs) == crate::cri::Runtime::Docker => {
            let registry = format!("{}:{}", config.registry_domain, config.registry_port);
            crate::docker::write_kubelet_credentials(host, &registry, credentials)
        }
        _ => Ok(()),
    }
}

/// Wraps a kubeadm configuration error with what was done and to which file.
pub fn kubeadm_error(action: &'static str, path: &Path) -> impl FnOnce(kubeadm::KubeadmError) -> Error {
    let path = path.to_path_buf();
    move |e| Error::Io { action, path, source: std::io::Error::other(e) }
}

/// The image's kubeadm configuration template (or kubeferry's default) and where it came from.
pub fn image_configuration(rootfs: &Path) -> Result<(String, PathBuf)> {
    Ok(match IMAGE_CONFIGS.iter().map(|p| rootfs.join(p)).find(|p| p.is_file()) {
        Some(path) => (fs::read_to_string(&path).map_err(Error::io("read", &path))?, path),
        None => (
            kubeadm::default_config().to_string(),
            PathBuf::from("kubeferry's default kubeadm configuration"),
        ),
    })
}

/// The values the configuration is rendered with: the registry, this host's address, the
/// Kubernetes version and the cgroup driver.
pub fn configuration_values(
    config: &InstallConfig,
    kubernetes_version: Option<&str>,
    source: &Path,
) -> Result<Values> {
    let advertise = match &config.advertise_address {
        Some(address) => address.clone(),
        None => default_address().map(|a| a.to_string()).unwrap_or_default(),
    };
    let env = BTreeMap::from([
        ("registryDomain".to_string(), config.registry_domain.clone()),
        ("registryPort".to_string(), config.registry_port.to_string()),
    ]);
    let mut values = Values::new(env, advertise).map_err(|e| Error::Io {
        action: "render",
        path: source.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    values.kubernetes_version = kubernetes_version.map(str::to_string);
    values.cgroup_driver = if config.systemd_cgroup { "systemd" } else { "cgroupfs" }.into();
    Ok(values)
}

/// The phases of `kubeadm init` skipped: its preflight always, and the CoreDNS addon when the
/// bundled registry holds no CoreDNS image to run it from.
pub fn skipped_phases(rootfs: &Path) -> String {
    let has_coredns = registry::list_images(&rootfs.join("registry"))
        .map(|images| images.iter().any(|i| i.repository.rsplit('/').next() == Some("coredns")))
        .unwrap_or(false);
    if has_coredns { SKIP_ALWAYS.to_string() } else { format!("{SKIP_ALWAYS},addon/coredns") }
}

/// The address of the interface the default route leaves by: the API server's address when
/// `--advertise-address` is not given. Nothing is sent: connecting a UDP socket only picks the
/// route.
pub fn default_address() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let address = socket.local_addr().ok()?.ip();
    (!address.is_unspecified()).then_some(address)
}

/// The join parameters in kubeadm's output (`kubeadm init` or `kubeadm token create
/// --print-join-command`): the lines from `kubeadm join`, with their `\` continuations.
pub fn join_params(output: &str, bundle: &str) -> Option<JoinParams> {
    let joined = output.replace("\\\n", " ");
    let mut params: Option<JoinParams> = None;
    for line in joined.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words.windows(2).position(|w| w == ["kubeadm", "join"]) else {
            continue;
        };
        let words = &words[at + 2..];
        let value = |flag: &str| words.windows(2).find(|w| w[0] == flag).map(|w| w[1].to_string());
        let (Some(server), Some(token), Some(hash)) =
            (words.first(), value("--token"), value("--discovery-token-ca-cert-hash"))
        else {
            continue;
        };
        let key = value("--certificate-key");
        match &mut params {
            Some(found) => {
                if found.certificate_key.is_none() {
                    found.certificate_key = key;
                }
            }
            None => {
                params = Some(JoinParams {
                    server: server.to_string(),
                    token,
                    ca_cert_hash: hash,
                    certificate_key: key,
                    bundle: bundle.to_string(),
                })
            }
        }
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT_OUTPUT: &str = "Your Kubernetes control-plane has initialized successfully!

You can now join any number of the control-plane node running the following command on each as root:

  kubeadm join 10.0.0.10:6443 --token abcdef.0123456789abcdef \\
    --discovery-token-ca-cert-hash sha256:2f1b5aa0c4a14a2e4a1f4b5c6d7e8f90112233445566778899aabbccddeeff00 \\
    --control-plane --certificate-key 0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff1

Then you can join any number of worker nodes by running the following on each as root:

kubeadm join 10.0.0.10:6443 --token abcdef.0123456789abcdef \\
    --discovery-token-ca-cert-hash sha256:2f1b5aa0c4a14a2e4a1f4b5c6d7e8f90112233445566778899aabbccddeeff00 
";

    #[test]
    fn the_cri_socket_is_the_runtime_s() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path();
        std::fs::create_dir_all(rootfs.join("cri")).unwrap();
        let config = InstallConfig::new("edge", "edge.run");
        let socket = || {
            let (rendered, _, _) = rendered_configuration(rootfs, &config, Some("v1.20.2")).unwrap();
            kubeadm::summarize(&rendered).unwrap().cri_socket.unwrap()
        };
        std::fs::write(rootfs.join(crate::docker::TARBALL), "").unwrap();
        assert_eq!(socket(), crate::docker::DOCKERSHIM_SOCKET);
        std::fs::write(rootfs.join(crate::cri::TARBALL), "").unwrap();
        assert_eq!(socket(), kubeadm::CONTAINERD_SOCKET, "containerd wins when the image ships both");
    }

    #[test]
    fn with_docker_the_kubelet_credentials_are_written_again_after_a_reset() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (rootfs, root) = (dir.path().join("rootfs"), dir.path().join("root"));
        std::fs::create_dir_all(rootfs.join("cri")).unwrap();
        std::fs::write(rootfs.join(crate::docker::TARBALL), "").unwrap();
        let host = crate::host::PathsOnly(root.clone());
        let file = root.join("var/lib/kubelet/config.json");
        let mut config = InstallConfig::new("edge", "edge.run");
        kubelet_credentials_after_reset(&host, &rootfs, &config).unwrap();
        assert!(!file.exists(), "no credentials, no file");
        config.registry_credentials = Some(crate::registry::Credentials::new("kubeferry", "s3cret").unwrap());
        kubelet_credentials_after_reset(&host, &rootfs, &config).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        // base64("kubeferry:s3cret")
        assert!(text.contains("\"sea.hub:5000\"") && text.contains("a3ViZWZlcnJ5OnMzY3JldA=="), "{text}");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        // containerd reads its credentials from its own configuration.
        std::fs::remove_file(&file).unwrap();
        std::fs::write(rootfs.join(crate::cri::TARBALL), "").unwrap();
        kubelet_credentials_after_reset(&host, &rootfs, &config).unwrap();
        assert!(!file.exists());
    }

    #[test]
    fn the_join_commands_of_kubeadm_init() {
        let params = join_params(INIT_OUTPUT, "edge.run").unwrap();
        assert_eq!(params.server, "10.0.0.10:6443");
        assert_eq!(params.token, "abcdef.0123456789abcdef");
        assert_eq!(
            params.ca_cert_hash,
            "sha256:2f1b5aa0c4a14a2e4a1f4b5c6d7e8f90112233445566778899aabbccddeeff00"
        );
        assert_eq!(
            params.certificate_key.as_deref(),
            Some("0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff1")
        );
        let commands = kubeadm::join_commands(&params).unwrap();
        assert_eq!(
            commands.kubeferry_worker,
            "./edge.run join --server 10.0.0.10:6443 --token abcdef.0123456789abcdef --ca-cert-hash \
             sha256:2f1b5aa0c4a14a2e4a1f4b5c6d7e8f90112233445566778899aabbccddeeff00"
        );
    }

    #[test]
    fn the_join_command_of_token_create() {
        let printed = "kubeadm join 10.0.0.10:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:00 \n";
        let params = join_params(printed, "edge.run").unwrap();
        assert_eq!((params.token.as_str(), params.certificate_key), ("abcdef.0123456789abcdef", None));
        assert!(join_params("nothing to see", "edge.run").is_none());
    }
}
