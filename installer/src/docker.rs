//! The docker runtime: the static docker bundle of the rootfs's `cri/docker.tar.gz` (dockerd,
//! docker, containerd, ctr, runc, docker-init, docker-proxy), configured by
//! `/etc/docker/daemon.json` to pull from the bundled registry, started as a service and waited
//! for until it answers. The kubelet drives it through its dockershim, which Kubernetes removed
//! in v1.24: [`check_kubernetes_version`] refuses the pair before anything is written.
//!
//! As in [`crate::cri`], every path goes through [`Host::path`], also the paths written into
//! docker's configuration and unit.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::cri::{self, Installed, RuntimeSettings};
use crate::error::{Error, Result};
use crate::host::{Host, write_file};

/// The tarball in the rootfs.
pub const TARBALL: &str = "cri/docker.tar.gz";
/// docker's configuration.
pub const CONFIG: &str = "/etc/docker/daemon.json";
/// The systemd unit's name.
pub const UNIT_NAME: &str = "docker.service";
/// The systemd unit file.
pub const UNIT: &str = "/etc/systemd/system/docker.service";
/// docker's API socket.
pub const SOCKET: &str = "/var/run/docker.sock";
/// docker's persistent data.
pub const ROOT_DIR: &str = "/var/lib/docker";
/// docker's runtime state (its containerd's socket and state too).
pub const STATE_DIR: &str = "/run/docker";
/// dockerd's pid file.
pub const PIDFILE: &str = "/run/docker.pid";
/// The kubelet's dockershim socket: kubeadm's `criSocket` when docker is the runtime.
pub const DOCKERSHIM_SOCKET: &str = "/var/run/dockershim.sock";
/// Where the kubelet's dockershim reads registry credentials from (its `--root-dir`).
pub const KUBELET_CREDENTIALS: &str = "/var/lib/kubelet/config.json";
/// How long dockerd may take to answer once started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The last Kubernetes minor version whose kubelet has the dockershim.
pub const LAST_DOCKERSHIM_MINOR: u32 = 23;

/// The image's files kubeferry uses when present.
const IMAGE_CONFIG: &str = "etc/daemon.json";
const IMAGE_UNIT: &str = "etc/docker.service";

/// The configuration used when the image ships none; [`render_config`] adds what the install
/// owns.
const DEFAULT_CONFIG: &str = r#"{
  "log-driver": "json-file",
  "log-opts": { "max-size": "100m" }
}"#;

/// The unit used when the image ships none. Not socket-activated (`-H fd://`): dockerd listens
/// on the socket its configuration names.
const DEFAULT_UNIT: &str = "# docker service written by kubeferry.
[Unit]
Description=Docker Application Container Engine
After=network-online.target local-fs.target

[Service]
Type=notify
ExecStart=/usr/local/bin/dockerd
ExecReload=/bin/kill -s HUP $MAINPID
TimeoutStartSec=0
Delegate=yes
KillMode=process
Restart=always
RestartSec=5
LimitNPROC=infinity
LimitCORE=infinity
LimitNOFILE=infinity
TasksMax=infinity
OOMScoreAdjust=-999

[Install]
WantedBy=multi-user.target
";

/// Refuses docker with a Kubernetes whose kubelet has no dockershim (v1.24 and later): such a
/// node would never become ready.
pub fn check_kubernetes_version(version: Option<&str>) -> Result<()> {
    let minor =
        version.and_then(|v| v.trim_start_matches('v').split('.').nth(1)).and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(minor) if minor > LAST_DOCKERSHIM_MINOR => Err(Error::Runtime(format!(
            "the image's runtime is docker ('{TARBALL}'), but its Kubernetes {} has no dockershim \
             (removed in v1.24): ship cri/containerd.tar.gz instead",
            version.unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

/// Installs docker from the rootfs, configures it, starts it and waits until it answers.
pub fn install(host: &dyn Host, rootfs: &Path, settings: &RuntimeSettings) -> Result<Installed> {
    let mut installed = Installed::default();
    let tarball = rootfs.join(TARBALL);
    if !tarball.is_file() {
        return Err(Error::Runtime(format!("the rootfs has no '{TARBALL}'")));
    }
    installed.files.extend(cri::unpack_binaries(host, &tarball, "dockerd")?);

    let image_config = rootfs.join(IMAGE_CONFIG);
    let template = if image_config.is_file() {
        std::fs::read_to_string(&image_config).map_err(Error::io("read", &image_config))?
    } else {
        DEFAULT_CONFIG.to_string()
    };
    write_file(host, Path::new(CONFIG), render_config(&template, host, settings)?.as_bytes(), 0o644)?;
    installed.files.push(CONFIG.into());

    if let Some(credentials) = &settings.credentials {
        write_kubelet_credentials(host, &settings.registry, credentials)?;
        installed.files.push(KUBELET_CREDENTIALS.into());
    }

    let image_unit = rootfs.join(IMAGE_UNIT);
    let unit = if image_unit.is_file() {
        std::fs::read_to_string(&image_unit).map_err(Error::io("read", &image_unit))?
    } else {
        DEFAULT_UNIT.to_string()
    };
    write_file(host, Path::new(UNIT), render_unit(&unit, host)?.as_bytes(), 0o644)?;
    installed.files.push(UNIT.into());

    // The directories of its socket and pid file: a host's own (`/run`), only a test root may
    // lack them.
    for file in [SOCKET, PIDFILE] {
        if let Some(dir) = host.path(Path::new(file)).parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        }
    }
    host.start_service(UNIT_NAME)?;
    wait_ready(host, READY_TIMEOUT)?;
    Ok(installed)
}

/// Writes the registry's credentials where the kubelet's dockershim reads them, its root
/// directory; only root reads them. `kubeadm reset` empties that directory: the kubeadm steps
/// write them again after it.
pub fn write_kubelet_credentials(
    host: &dyn Host,
    registry: &str,
    credentials: &crate::registry::Credentials,
) -> Result<()> {
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", credentials.username, credentials.password));
    let text = json!({ "auths": { registry: { "auth": auth } } });
    write_file(host, Path::new(KUBELET_CREDENTIALS), format!("{text:#}\n").as_bytes(), 0o600)
}

/// Takes the image's `daemon.json` (or the default) and sets what the install owns: where
/// docker keeps its data, state, pid file and socket, the cgroup driver (the kubelet's), and the
/// bundled registry among the insecure (plain HTTP) ones. Everything else stays as the image
/// wrote it.
pub fn render_config(template: &str, host: &dyn Host, settings: &RuntimeSettings) -> Result<String> {
    let mut config: Map<String, Value> = match serde_json::from_str(template) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(Error::Runtime("the image's daemon.json is not a JSON object".into())),
        Err(e) => return Err(Error::Runtime(format!("the image's daemon.json is not valid JSON: {e}"))),
    };
    let shown = |p: &str| host.path(Path::new(p)).to_string_lossy().into_owned();
    config.insert("data-root".into(), json!(shown(ROOT_DIR)));
    config.insert("exec-root".into(), json!(shown(STATE_DIR)));
    config.insert("pidfile".into(), json!(shown(PIDFILE)));
    config.insert("hosts".into(), json!([format!("unix://{}", shown(SOCKET))]));

    let driver = if settings.systemd_cgroup { "systemd" } else { "cgroupfs" };
    let mut exec_opts = strings(&config, "exec-opts")?;
    exec_opts.retain(|o| !o.replace(' ', "").starts_with("native.cgroupdriver="));
    exec_opts.push(format!("native.cgroupdriver={driver}"));
    config.insert("exec-opts".into(), json!(exec_opts));

    let mut insecure = strings(&config, "insecure-registries")?;
    if !insecure.contains(&settings.registry) {
        insecure.push(settings.registry.clone());
    }
    config.insert("insecure-registries".into(), json!(insecure));
    let mut text = serde_json::to_string_pretty(&Value::Object(config))
        .map_err(|e| Error::Runtime(format!("could not write daemon.json: {e}")))?;
    text.push('\n');
    Ok(text)
}

/// The strings of the list `key` of the configuration (none when absent).
fn strings(config: &Map<String, Value>, key: &str) -> Result<Vec<String>> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_string).ok_or_else(|| {
                    Error::Runtime(format!("the image's daemon.json '{key}' holds a non-string: {item}"))
                })
            })
            .collect(),
        Some(other) => {
            Err(Error::Runtime(format!("the image's daemon.json '{key}' is not a list of strings: {other}")))
        }
    }
}

/// The image's unit with kubeferry's `ExecStart` (dockerd with the configuration it wrote, and
/// no `-H`: the configuration names the socket, and a flag repeating it is refused), and a
/// `PATH` that finds the bundle's containerd, runc, docker-init and docker-proxy first.
pub fn render_unit(unit: &str, host: &dyn Host) -> Result<String> {
    let bin = host.path(Path::new(cri::BIN_DIR));
    let exec = format!(
        "ExecStart={} --config-file {}\nEnvironment=PATH={}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        bin.join("dockerd").display(),
        host.path(Path::new(CONFIG)).display(),
        bin.display()
    );
    let unit: String = unit
        .lines()
        .filter(|line| !line.trim_start().starts_with("Environment=PATH="))
        .map(|line| format!("{line}\n"))
        .collect();
    cri::replace_exec_start(&unit, &exec, "docker.service")
}

/// `docker` of the bundle on kubeferry's docker socket.
pub fn docker(host: &dyn Host) -> Command {
    let mut command = Command::new(host.path(&Path::new(cri::BIN_DIR).join("docker")));
    command.arg("--host").arg(format!("unix://{}", host.path(Path::new(SOCKET)).display()));
    command
}

/// Waits until dockerd answers `docker version` on its socket.
pub fn wait_ready(host: &dyn Host, timeout: Duration) -> Result<()> {
    let socket = host.path(Path::new(SOCKET));
    cri::wait_answering(host, "docker", &socket, timeout, || {
        Ok(!host.run(docker(host).args(["version", "--format", "{{.Server.Version}}"]))?.trim().is_empty())
    })
}

/// Removes the containers the kubelet's dockershim made (named `k8s_...`), as `kubeadm reset`
/// does through the CRI: without it they outlive the kubelet, holding their mounts and ports.
/// Gives the number removed, or `None` when docker does not answer.
pub fn remove_kubernetes_containers(host: &dyn Host) -> Result<Option<usize>> {
    if std::os::unix::net::UnixStream::connect(host.path(Path::new(SOCKET))).is_err() {
        return Ok(None);
    }
    let ids: BTreeSet<String> = host
        .run(docker(host).args(["ps", "--all", "--quiet", "--filter", "name=k8s_"]))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        host.run(docker(host).args(["rm", "--force", "--volumes"]).args(&ids))?;
    }
    host.log(&format!("docker's Kubernetes containers removed: {}", ids.len()));
    Ok(Some(ids.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::host::PathsOnly;

    fn root() -> PathsOnly {
        PathsOnly(PathBuf::from("/t"))
    }

    fn settings(systemd: bool) -> RuntimeSettings {
        RuntimeSettings {
            registry: "sea.hub:5000".into(),
            systemd_cgroup: systemd,
            sandbox_image: None,
            credentials: None,
        }
    }

    #[test]
    fn the_image_configuration_keeps_its_settings_and_gets_the_install_s() {
        // sealer's daemon.json, as its cluster images ship it.
        let image = r#"{
          "max-concurrent-downloads": 20,
          "log-driver": "json-file",
          "log-level": "warn",
          "log-opts": { "max-size": "30m", "max-file": "3" },
          "exec-opts": ["native.cgroupdriver=cgroupfs", "other=1"],
          "insecure-registries": ["sea.hub:5000"],
          "registry-mirrors": ["https://sea.hub:5000"],
          "data-root": "/var/lib/docker",
          "hosts": ["fd://"]
        }"#;
        let out: Value =
            serde_json::from_str(&render_config(image, &root(), &settings(true)).unwrap()).unwrap();
        assert_eq!(out["max-concurrent-downloads"], 20);
        assert_eq!(out["log-opts"]["max-file"], "3");
        assert_eq!(out["registry-mirrors"], json!(["https://sea.hub:5000"]));
        assert_eq!(out["exec-opts"], json!(["other=1", "native.cgroupdriver=systemd"]));
        assert_eq!(out["insecure-registries"], json!(["sea.hub:5000"]), "not twice");
        assert_eq!(out["data-root"], "/t/var/lib/docker");
        assert_eq!(out["exec-root"], "/t/run/docker");
        assert_eq!(out["pidfile"], "/t/run/docker.pid");
        assert_eq!(out["hosts"], json!(["unix:///t/var/run/docker.sock"]));

        let out: Value =
            serde_json::from_str(&render_config(DEFAULT_CONFIG, &root(), &settings(false)).unwrap()).unwrap();
        assert_eq!(out["exec-opts"], json!(["native.cgroupdriver=cgroupfs"]));
        assert_eq!(out["insecure-registries"], json!(["sea.hub:5000"]));
    }

    #[test]
    fn a_bad_image_configuration_is_named() {
        for (text, want) in [
            ("[1]", "the image's daemon.json is not a JSON object"),
            (
                "{",
                "the image's daemon.json is not valid JSON: EOF while parsing an object at line 1 column 1",
            ),
            (r#"{"exec-opts": "x"}"#, "the image's daemon.json 'exec-opts' is not a list of strings: \"x\""),
            (
                r#"{"insecure-registries": [1]}"#,
                "the image's daemon.json 'insecure-registries' holds a non-string: 1",
            ),
        ] {
            assert_eq!(
                render_config(text, &root(), &settings(true)).unwrap_err().to_string(),
                format!("the container runtime cannot be installed: {want}"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_unit_runs_the_installed_dockerd_with_the_written_configuration() {
        let unit =
            "[Service]\nEnvironment=PATH=/usr/bin\nExecStart=/usr/bin/dockerd -H fd://\nRestart=always\n";
        assert_eq!(
            render_unit(unit, &root()).unwrap(),
            "[Service]\nExecStart=/t/usr/local/bin/dockerd --config-file /t/etc/docker/daemon.json\n\
             Environment=PATH=/t/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
             Restart=always\n"
        );
        assert_eq!(
            render_unit("[Service]\n", &root()).unwrap_err().to_string(),
            "the container runtime cannot be installed: the image's docker.service has no ExecStart line"
        );
    }

    #[test]
    fn docker_is_refused_with_a_kubelet_without_dockershim() {
        for ok in [None, Some("v1.20.2"), Some("v1.23.17"), Some("weird")] {
            check_kubernetes_version(ok).unwrap();
        }
        assert_eq!(
            check_kubernetes_version(Some("v1.24.0")).unwrap_err().to_string(),
            "the container runtime cannot be installed: the image's runtime is docker ('cri/docker.tar.gz'), but its Kubernetes \
             v1.24.0 has no dockershim (removed in v1.24): ship cri/containerd.tar.gz instead"
        );
    }
}
