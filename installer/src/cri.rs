//! The container runtime: containerd from the rootfs's `cri/containerd.tar.gz`, configured to
//! pull from the bundled registry, started as a service, and waited for until it answers.
//!
//! Every path goes through [`Host::path`], also the paths written into containerd's own
//! configuration and unit, so the same code installs on a real host and below a test root.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use toml_edit::{DocumentMut, Item, Table, value};

use crate::error::{Error, Result};
use crate::host::{Host, write_file};

/// Where the runtime's binaries go.
pub const BIN_DIR: &str = "/usr/local/bin";
/// containerd's configuration.
pub const CONFIG: &str = "/etc/containerd/config.toml";
/// One directory per registry host, each with a `hosts.toml`.
pub const CERTS_DIR: &str = "/etc/containerd/certs.d";
/// The systemd unit's name.
pub const UNIT_NAME: &str = "containerd.service";
/// The systemd unit file.
pub const UNIT: &str = "/etc/systemd/system/containerd.service";
/// containerd's socket.
pub const SOCKET: &str = "/run/containerd/containerd.sock";
/// containerd's persistent data.
pub const ROOT_DIR: &str = "/var/lib/containerd";
/// containerd's runtime state.
pub const STATE_DIR: &str = "/run/containerd";
/// The tarball in the rootfs.
pub const TARBALL: &str = "cri/containerd.tar.gz";
/// How long containerd may take to answer once started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Files of the rootfs that kubeferry uses when present, the first found of each list.
const IMAGE_CONFIGS: [&str; 3] = ["etc/config.toml", "etc/containerd-config.toml", "etc/containerd.toml"];
const IMAGE_UNIT: &str = "etc/containerd.service";

/// The configuration used when the image ships none.
const DEFAULT_CONFIG: &str = r#"# containerd configuration written by kubeferry.
version = 2

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"#;

/// The unit used when the image ships none.
const DEFAULT_UNIT: &str = "# containerd service written by kubeferry.
[Unit]
Description=containerd container runtime
After=network.target local-fs.target

[Service]
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/containerd
Type=notify
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

/// How the runtime is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// The bundled registry, `host:port` (e.g. `sea.hub:5000`), served over plain HTTP.
    pub registry: String,
    /// Whether runc uses the systemd cgroup driver (as the kubelet must then).
    pub systemd_cgroup: bool,
    /// The pause image, when the install sets it.
    pub sandbox_image: Option<String>,
    /// The bundled registry's user and password, which the CRI plugin pulls with.
    pub credentials: Option<crate::registry::Credentials>,
}

/// What the runtime step wrote, for uninstall.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// Every file written, as host paths.
    pub files: Vec<PathBuf>,
}

/// Installs containerd from the rootfs, configures it, starts it and waits until it answers.
pub fn install_containerd(host: &dyn Host, rootfs: &Path, settings: &RuntimeSettings) -> Result<Installed> {
    let mut installed = Installed::default();
    let tarball = rootfs.join(TARBALL);
    if !tarball.is_file() {
        return Err(Error::Runtime(format!("the rootfs has no '{TARBALL}'")));
    }
    installed.files.extend(unpack_binaries(host, &tarball, "containerd")?);

    let image_config = IMAGE_CONFIGS.iter().map(|p| rootfs.join(p)).find(|p| p.is_file());
    let template = match &image_config {
        Some(path) => std::fs::read_to_string(path).map_err(Error::io("read", path))?,
        None => DEFAULT_CONFIG.to_string(),
    };
    // With the registry's password in it, only root reads it.
    let mode = if settings.credentials.is_some() { 0o600 } else { 0o644 };
    write_file(host, Path::new(CONFIG), render_config(&template, host, settings)?.as_bytes(), mode)?;
    installed.files.push(CONFIG.into());

    // Always kubeferry's: it must name the registry as this install configures it, which an
    // image's own hosts.toml (written for its default domain) cannot know.
    let hosts_path = Path::new(CERTS_DIR).join(&settings.registry).join("hosts.toml");
    write_file(host, &hosts_path, default_hosts(&settings.registry).as_bytes(), 0o644)?;
    installed.files.push(hosts_path);

    let image_unit = rootfs.join(IMAGE_UNIT);
    let unit = if image_unit.is_file() {
        std::fs::read_to_string(&image_unit).map_err(Error::io("read", &image_unit))?
    } else {
        DEFAULT_UNIT.to_string()
    };
    write_file(host, Path::new(UNIT), render_unit(&unit, host)?.as_bytes(), 0o644)?;
    installed.files.push(UNIT.into());

    host.start_service(UNIT_NAME)?;
    wait_ready(host, READY_TIMEOUT)?;
    Ok(installed)
}

/// Unpacks the runtime's executables into [`BIN_DIR`], `required` among them. The tarball may
/// hold them flat, under `bin/`, `usr/local/bin/` or `docker/` (docker's static bundle);
/// anything else in it is refused by name.
pub fn unpack_binaries(host: &dyn Host, tarball: &Path, required: &str) -> Result<Vec<PathBuf>> {
    let file = std::fs::File::open(tarball).map_err(Error::io("open", tarball))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut written = Vec::new();
    for entry in archive.entries().map_err(Error::io("read", tarball))? {
        let mut entry = entry.map_err(Error::io("read", tarball))?;
        let path = entry.path().map_err(Error::io("read", tarball))?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        let name = binary_name(&path).filter(|_| kind.is_file()).ok_or_else(|| {
            Error::Runtime(format!(
                "'{}' in '{}' is not an executable under bin/: the tarball holds only the runtime's binaries",
                path.display(),
                tarball.display()
            ))
        })?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(Error::io("read", tarball))?;
        let target = Path::new(BIN_DIR).join(name);
        write_file(host, &target, &bytes, 0o755)?;
        written.push(target);
    }
    if !written.iter().any(|p| p.ends_with(required)) {
        return Err(Error::Runtime(format!("'{}' holds no {required} executable", tarball.display())));
    }
    Ok(written)
}

/// The file name of a runtime binary at `path` in the tarball: `NAME`, `bin/NAME` or
/// `usr/local/bin/NAME`, optionally behind `./`.
fn binary_name(path: &Path) -> Option<String> {
    let parts: Vec<String> = path
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(n) => n.to_str().map(str::to_owned),
            _ => None,
        })
        .collect::<Option<_>>()?;
    match parts.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [name] | ["bin" | "docker", name] | ["usr", "local", "bin", name] => Some(name.to_string()),
        _ => None,
    }
}

/// Takes the image's containerd configuration (or the default) and sets what the install owns:
/// where containerd keeps its data and socket, where it finds the registry hosts, the cgroup
/// driver, and the pause image. Comments and everything else stay as the image wrote them.
pub fn render_config(template: &str, host: &dyn Host, settings: &RuntimeSettings) -> Result<String> {
    let mut doc: DocumentMut = template.parse().map_err(|e| {
        Error::Runtime(format!("the image's containerd configuration is not valid TOML: {e}"))
    })?;
    let shown = |p: &str| host.path(Path::new(p)).to_string_lossy().into_owned();
    doc["version"] = value(2);
    doc["root"] = value(shown(ROOT_DIR));
    doc["state"] = value(shown(STATE_DIR));
    table(&mut doc, &["grpc"])["address"] = value(shown(SOCKET));
    let cri = ["plugins", "io.containerd.grpc.v1.cri"];
    table(&mut doc, &[&cri[..], &["registry"]].concat())["config_path"] = value(shown(CERTS_DIR));
    let runc = [&cri[..], &["containerd", "runtimes", "runc"]].concat();
    if table(&mut doc, &runc).get("runtime_type").is_none() {
        table(&mut doc, &runc)["runtime_type"] = value("io.containerd.runc.v2");
    }
    table(&mut doc, &[&runc[..], &["options"]].concat())["SystemdCgroup"] = value(settings.systemd_cgroup);
    if let Some(image) = &settings.sandbox_image {
        table(&mut doc, &cri)["sandbox_image"] = value(image.as_str());
    }
    if let Some(credentials) = &settings.credentials {
        // containerd 1.6 reads the credentials of a registry from the CRI plugin's
        // `registry.configs`, also when `config_path` names the hosts directory.
        let auth =
            table(&mut doc, &[&cri[..], &["registry", "configs", &settings.registry, "auth"]].concat());
        auth["username"] = value(credentials.username.as_str());
        auth["password"] = value(credentials.password.as_str());
    }
    Ok(doc.to_string())
}

/// The table at `keys`, created (implicit, so only its leaves are written) when missing.
fn table<'a>(doc: &'a mut DocumentMut, keys: &[&str]) -> &'a mut Table {
    let mut current = doc.as_table_mut();
    for key in keys {
        let item = current.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        if !item.is_table() {
            let mut t = Table::new();
            t.set_implicit(true);
            *item = Item::Table(t);
        }
        current = match item.as_table_mut() {
            Some(t) => t,
            // Just made a table of it.
            None => unreachable!("the item was made a table"),
        };
    }
    current
}

/// `hosts.toml` for a plain-HTTP registry that serves pulls.
pub fn default_hosts(registry: &str) -> String {
    format!(
        "# The bundled registry, written by kubeferry.\nserver = \"http://{registry}\"\n\n\
         [host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// The image's unit with kubeferry's `ExecStart`, naming the binary and configuration it
/// installed.
pub fn render_unit(unit: &str, host: &dyn Host) -> Result<String> {
    let exec = format!(
        "ExecStart={} --config {}",
        host.path(&Path::new(BIN_DIR).join("containerd")).display(),
        host.path(Path::new(CONFIG)).display()
    );
    replace_exec_start(unit, &exec, "containerd.service")
}

/// `unit` (named `name` in errors) with its `ExecStart` lines replaced by `exec`.
pub fn replace_exec_start(unit: &str, exec: &str, name: &str) -> Result<String> {
    let mut found = false;
    let lines: Vec<&str> = unit
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("ExecStart=") {
                found = true;
                exec
            } else {
                line
            }
        })
        .collect();
    if !found {
        return Err(Error::Runtime(format!("the image's {name} has no ExecStart line")));
    }
    Ok(lines.join("\n") + "\n")
}

/// The container runtime an image ships in `cri/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `cri/containerd.tar.gz`.
    Containerd,
    /// `cri/docker.tar.gz`, driven by the kubelet's dockershim.
    Docker,
}

impl Runtime {
    /// The runtime of a rootfs that holds the relative paths for which `has` is true:
    /// containerd when it ships both, none when it ships neither.
    pub fn shipped(has: impl Fn(&str) -> bool) -> Option<Runtime> {
        if has(TARBALL) {
            Some(Runtime::Containerd)
        } else if has(crate::docker::TARBALL) {
            Some(Runtime::Docker)
        } else {
            None
        }
    }

    /// The runtime of the extracted rootfs at `rootfs`; containerd too when it ships none,
    /// whose absence the runtime step reports.
    pub fn of(rootfs: &Path) -> Runtime {
        Runtime::shipped(|p| rootfs.join(p).is_file()).unwrap_or(Runtime::Containerd)
    }

    /// The runtime of a bundle whose manifest names `cri` (the builder's facts): docker when
    /// it says so, else containerd.
    pub fn of_manifest(cri: Option<&str>) -> Runtime {
        match cri {
            Some("docker") => Runtime::Docker,
            _ => Runtime::Containerd,
        }
    }

    /// The runtime's name, as `status` and the plan show it.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::Docker => "docker",
        }
    }

    /// The socket kubeadm's `criSocket` names for this runtime.
    pub fn cri_socket(self) -> &'static str {
        match self {
            Runtime::Containerd => crate::kubeadm::CONTAINERD_SOCKET,
            Runtime::Docker => crate::docker::DOCKERSHIM_SOCKET,
        }
    }
}

/// Empties containerd's Kubernetes namespace (`k8s.io`): its containers removed
/// ([`remove_kubernetes_containers`]), every image and lease too, then containerd restarted so
/// that its CRI plugin forgets them. After a power cut, the images containerd had unpacked may
/// hold empty files (unpacked snapshots are not synced), and the content of a pull that was
/// under way is recorded in containerd's database while its files may be lost: the pull's
/// lease outlives the cut (for 24 hours) and keeps that record from the garbage collector, so
/// every later pull of the image fails with "blob not found". With the images and leases gone,
/// the collector removes it all and the images are pulled again from the bundled registry.
/// Nothing to do when containerd does not answer.
pub fn reset_kubernetes_namespace(host: &dyn Host, timeout: Duration) -> Result<()> {
    let Some(containers) = remove_kubernetes_containers(host, timeout)? else {
        return Ok(());
    };
    let images = quiet_list(host, "images")?;
    let leases = quiet_list(host, "leases")?;
    // The last removal waits for the garbage collection it starts (`--sync`).
    if !images.is_empty() {
        let sync = leases.is_empty().then_some("--sync");
        host.run(k8s_ctr(host).args(["images", "remove"]).args(sync).args(&images))?;
    }
    if !leases.is_empty() {
        host.run(k8s_ctr(host).args(["leases", "delete", "--sync"]).args(&leases))?;
    }
    host.log(&format!(
        "containerd's k8s.io namespace emptied: {containers} containers, {} images, {} leases",
        images.len(),
        leases.len()
    ));
    host.stop_service(UNIT_NAME)?;
    host.start_service(UNIT_NAME)?;
    wait_ready(host, timeout)
}

/// `ctr` on kubeferry's containerd socket, in the `k8s.io` namespace.
fn k8s_ctr(host: &dyn Host) -> Command {
    let mut command = Command::new(host.path(&Path::new(BIN_DIR).join("ctr")));
    command.arg("--address").arg(host.path(Path::new(SOCKET))).args(["--namespace", "k8s.io"]);
    command
}

/// `ctr WHAT list --quiet`: one name per line.
fn quiet_list(host: &dyn Host, what: &str) -> Result<Vec<String>> {
    Ok(host
        .run(k8s_ctr(host).args([what, "list", "--quiet"]))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Kills every task of containerd's `k8s.io` namespace and removes its containers: what
/// `kubeadm reset` would do through crictl, which these images may lack. Without it the
/// containers outlive containerd (their shims keep running) and hold their mounts, ports and
/// etcd's data. The kubelet must be stopped first, or it starts them again. Gives the number of
/// containers removed, or `None` when containerd does not answer.
pub fn remove_kubernetes_containers(host: &dyn Host, timeout: Duration) -> Result<Option<usize>> {
    if UnixStream::connect(host.path(Path::new(SOCKET))).is_err() {
        return Ok(None);
    }
    let ctr = || k8s_ctr(host);
    // `ctr tasks list`: a header, then "TASK PID STATUS" per task.
    let tasks = |running_only: bool| -> Result<Vec<String>> {
        Ok(host
            .run(ctr().args(["tasks", "list"]))?
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.len() >= 3 && !(running_only && fields[2] == "STOPPED"))
                    .then(|| fields[0].to_string())
            })
            .collect())
    };
    for task in tasks(true)? {
        // A task that ended meanwhile is not an error.
        let _ = host.run(ctr().args(["tasks", "kill", "--all", "--signal", "SIGKILL", &task]));
    }
    let start = Instant::now();
    loop {
        let left = tasks(true)?;
        if left.is_empty() {
            break;
        }
        if start.elapsed() > timeout {
            return Err(Error::Runtime(format!(
                "containerd's tasks {} still run {} s after SIGKILL; stop them ('ctr -n k8s.io tasks kill') and run the install again",
                left.join(", "),
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for task in tasks(false)? {
        let _ = host.run(ctr().args(["tasks", "delete", &task]));
    }
    let containers = quiet_list(host, "containers")?;
    for container in &containers {
        host.run(ctr().args(["containers", "delete", container]))?;
    }
    host.log(&format!("containerd's k8s.io containers removed: {}", containers.len()));
    Ok(Some(containers.len()))
}

/// Waits until containerd accepts connections on its socket and answers `ctr version`.
pub fn wait_ready(host: &dyn Host, timeout: Duration) -> Result<()> {
    let socket = host.path(Path::new(SOCKET));
    let ctr = host.path(&Path::new(BIN_DIR).join("ctr"));
    wait_answering(host, "containerd", &socket, timeout, || {
        Ok(host.run(Command::new(&ctr).arg("--address").arg(&socket).arg("version"))?.contains("Server:"))
    })
}

/// Waits until the runtime `name` accepts connections on `socket` and `answers` says it
/// answers; an error of `answers` after `timeout` is the error.
pub fn wait_answering(
    host: &dyn Host,
    name: &str,
    socket: &Path,
    timeout: Duration,
    mut answers: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if UnixStream::connect(socket).is_ok() {
            match answers() {
                Ok(true) => {
                    host.log(&format!("{name} answers on {}", socket.display()));
                    return Ok(());
                }
                Err(e) if start.elapsed() > timeout => return Err(e),
                _ => {}
            }
        }
        if start.elapsed() > timeout {
            return Err(Error::Runtime(format!(
                "{name} did not answer on '{}' within {} s; see its service's log",
                socket.display(),
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Paths below a root; no commands or services (these tests only render).
    struct Rooted(PathBuf, Mutex<Vec<String>>);

    impl Host for Rooted {
        fn path(&self, target: &Path) -> PathBuf {
            self.0.join(target.strip_prefix("/").unwrap_or(target))
        }
        fn run(&self, _: &mut Command) -> Result<String> {
            unreachable!("rendering runs nothing")
        }
        fn start_service(&self, _: &str) -> Result<()> {
            unreachable!("rendering starts nothing")
        }
        fn stop_service(&self, _: &str) -> Result<()> {
            unreachable!("rendering stops nothing")
        }
        fn enable_service(&self, _: &str) -> Result<()> {
            unreachable!("rendering enables nothing")
        }
        fn service_active(&self, _: &str) -> bool {
            unreachable!("rendering asks nothing")
        }
        fn reload_units(&self) -> Result<()> {
            unreachable!("rendering reloads nothing")
        }
        fn load_module(&self, _: &str) -> Result<()> {
            unreachable!("rendering loads nothing")
        }
        fn apply_sysctls(&self, _: &Path) -> Result<()> {
            unreachable!("rendering applies nothing")
        }
        fn log(&self, line: &str) {
            self.1.lock().unwrap().push(line.to_string());
        }
    }

    fn settings() -> RuntimeSettings {
        RuntimeSettings {
            registry: "sea.hub:5000".into(),
            systemd_cgroup: true,
            sandbox_image: None,
            credentials: None,
        }
    }

    #[test]
    fn the_image_configuration_keeps_its_comments_and_gains_what_the_install_owns() {
        let image = "# the image's own comment\nversion = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"sea.hub:5000/pause:3.2\"\n    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n      SystemdCgroup = false\n";
        let host = Rooted(PathBuf::from("/tmp/root"), Mutex::default());
        let out = render_config(image, &host, &settings()).unwrap();
        assert!(out.starts_with("# the image's own comment\nversion = 2\n"), "{out}");
        let doc: DocumentMut = out.parse().unwrap();
        assert_eq!(doc["root"].as_str(), Some("/tmp/root/var/lib/containerd"));
        assert_eq!(doc["grpc"]["address"].as_str(), Some("/tmp/root/run/containerd/containerd.sock"));
        let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["registry"]["config_path"].as_str(), Some("/tmp/root/etc/containerd/certs.d"));
        assert_eq!(cri["sandbox_image"].as_str(), Some("sea.hub:5000/pause:3.2"));
        let runc = &cri["containerd"]["runtimes"]["runc"];
        assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(true));
        assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
    }

    #[test]
    fn the_default_configuration_on_a_real_host() {
        let s = RuntimeSettings { sandbox_image: Some("sea.hub:5000/pause:3.2".into()), ..settings() };
        let out = render_config(DEFAULT_CONFIG, &crate::host::PathsOnly("/".into()), &s).unwrap();
        assert_eq!(
            out,
            "# containerd configuration written by kubeferry.\nversion = 2\nroot = \"/var/lib/containerd\"\n\
             state = \"/run/containerd\"\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n\
             sandbox_image = \"sea.hub:5000/pause:3.2\"\n\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\nSystemdCgroup = true\n\n\
             [plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/etc/containerd/certs.d\"\n\n\
             [grpc]\naddress = \"/run/containerd/containerd.sock\"\n"
        );
        assert_eq!(
            render_unit(DEFAULT_UNIT, &crate::host::PathsOnly("/".into()))
                .unwrap()
                .lines()
                .find(|l| l.starts_with("ExecStart=")),
            Some("ExecStart=/usr/local/bin/containerd --config /etc/containerd/config.toml")
        );
    }

    #[test]
    fn tarball_paths_are_binaries_or_refused() {
        assert_eq!(binary_name(Path::new("bin/containerd")).as_deref(), Some("containerd"));
        assert_eq!(binary_name(Path::new("./usr/local/bin/ctr")).as_deref(), Some("ctr"));
        assert_eq!(binary_name(Path::new("runc")).as_deref(), Some("runc"));
        assert_eq!(binary_name(Path::new("../bin/runc")), None);
        assert_eq!(binary_name(Path::new("/usr/local/bin/runc")), None);
        assert_eq!(binary_name(Path::new("etc/containerd/config.toml")), None);
        assert!(
            render_unit("[Service]\nType=notify\n", &Rooted(PathBuf::from("/r"), Mutex::default())).is_err()
        );
    }
}
