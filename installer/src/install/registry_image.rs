//! The registry shipped as a container image: the rootfs's `images/registry.tar` (sealer's
//! convention, a `docker save` archive, the one format both containerd and docker 20.10 load)
//! is loaded into the container runtime the runtime step installed and run as the registry
//! service, in the foreground, with host networking and the storage bind-mounted at the
//! image's `/var/lib/registry`.
//!
//! The container lives in a containerd namespace of its own ([`NAMESPACE`]), not in `k8s.io`:
//! what empties the Kubernetes namespace (a resumed `kubeadm init`, `kubeadm reset`) and the
//! kubelet's image garbage collection must not take the registry or its image away.
//!
//! Every path goes through [`Host::path`], also inside the unit's text, so the same code runs
//! on a real host and below a test root.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cri;
use crate::docker::docker;
use crate::error::{Error, Result};
use crate::host::Host;

/// The registry's image in the rootfs, a `docker save` archive.
pub const ARCHIVE: &str = "images/registry.tar";
/// The container's name, in either runtime.
pub const CONTAINER: &str = "kubeferry-registry";
/// The containerd namespace of the registry's container and image.
pub const NAMESPACE: &str = "kubeferry";
/// Where the registry image keeps its data (distribution's default).
pub const CONTAINER_STORAGE: &str = "/var/lib/registry";
/// Where the registry image reads its configuration (distribution's default).
pub const CONTAINER_CONFIG: &str = "/etc/docker/registry/config.yml";
/// Where the htpasswd file is mounted in the container (distribution's documentation's path).
pub const CONTAINER_HTPASSWD: &str = "/auth/htpasswd";
/// How long a killed container may take to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub use crate::cri::Runtime;

/// What the container gets from the install.
#[derive(Debug, Clone)]
pub struct Container<'a> {
    /// The image's name, as the runtime knows it after the load ([`load`]).
    pub image: &'a str,
    /// The storage directory (a path of this process), holding `docker/registry/v2`.
    pub storage: &'a Path,
    /// The port the registry listens on, on every address of the host.
    pub port: u16,
    /// The image's `etc/registry_config.yml` (a path of this process), mounted read-only over
    /// the image's own configuration.
    pub config: Option<&'a Path>,
    /// The htpasswd file (a path of this process): the registry then serves its user only.
    pub htpasswd: Option<&'a Path>,
}

/// The name of the image `archive` holds: the first of its `manifest.json`'s `RepoTags`.
pub fn archive_image(archive: &Path) -> Result<String> {
    let refuse = |why: String| Error::RegistryImage(format!("'{}' {why}", archive.display()));
    let file = std::fs::File::open(archive).map_err(Error::io("open", archive))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    for entry in tar.entries().map_err(Error::io("read", archive))? {
        let mut entry = entry.map_err(Error::io("read", archive))?;
        let path = entry.path().map_err(Error::io("read", archive))?.into_owned();
        if path.components().ne(Path::new("manifest.json").components()) {
            continue;
        }
        let mut text = String::new();
        entry.read_to_string(&mut text).map_err(Error::io("read", archive))?;
        let manifest: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| refuse(format!("has a manifest.json that is not JSON: {e}")))?;
        return manifest
            .get(0)
            .and_then(|m| m.get("RepoTags"))
            .and_then(|tags| tags.get(0))
            .and_then(|tag| tag.as_str())
            .map(str::to_string)
            .ok_or_else(|| {
                refuse(
                    "names no image (its manifest.json has no RepoTags): save it by name, e.g. \
                     'docker save -o registry.tar registry:2.7.1'"
                        .into(),
                )
            });
    }
    Err(refuse("is not a 'docker save' archive: it has no manifest.json".into()))
}

/// A reference as containerd names it after an import: `registry:2.7.1` is
/// `docker.io/library/registry:2.7.1`, `me/registry` is `docker.io/me/registry:latest`.
pub fn normalised(reference: &str) -> String {
    let (first, _) = reference.split_once('/').unwrap_or(("", reference));
    let domain = first.contains('.') || first.contains(':') || first == "localhost";
    let full = if !reference.contains('/') {
        format!("docker.io/library/{reference}")
    } else if domain {
        reference.to_string()
    } else {
        format!("docker.io/{reference}")
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    if last.contains(':') || last.contains('@') { full } else { format!("{full}:latest") }
}

/// `ctr` on kubeferry's containerd socket, in the registry's namespace.
fn ctr(host: &dyn Host) -> Command {
    let mut command = Command::new(host.path(&Path::new(cri::BIN_DIR).join("ctr")));
    command.arg("--address").arg(host.path(Path::new(cri::SOCKET))).args(["--namespace", NAMESPACE]);
    command
}

/// The command line of `command`, for a unit file (no quoting: no argument has a space).
fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Loads the archive into `runtime` and gives the image's name as the runtime knows it.
pub fn load(host: &dyn Host, runtime: Runtime, archive: &Path) -> Result<String> {
    let tagged = archive_image(archive)?;
    match runtime {
        Runtime::Containerd => {
            host.run(ctr(host).args(["images", "import"]).arg(archive))?;
            // containerd names it in full; find it as listed rather than trust the rule.
            let listed = host.run(ctr(host).args(["images", "list", "--quiet"]))?;
            let wanted = normalised(&tagged);
            listed
                .lines()
                .map(str::trim)
                .find(|name| *name == wanted || *name == tagged)
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::RegistryImage(format!(
                        "containerd imported '{}' but lists no '{wanted}' after it",
                        archive.display()
                    ))
                })
        }
        Runtime::Docker => {
            host.run(docker(host).arg("load").arg("--input").arg(archive))?;
            Ok(tagged)
        }
    }
}

/// The unit that runs the container in the foreground, after removing one left by an earlier
/// run, and removes it when it stops.
pub fn unit(host: &dyn Host, runtime: Runtime, container: &Container<'_>) -> String {
    let mut env = vec![
        format!("REGISTRY_HTTP_ADDR=0.0.0.0:{}", container.port),
        format!("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY={CONTAINER_STORAGE}"),
    ];
    // (source, destination, read-only)
    let mut mounts = vec![(container.storage, CONTAINER_STORAGE, false)];
    if let Some(config) = container.config {
        mounts.push((config, CONTAINER_CONFIG, true));
    }
    if let Some(htpasswd) = container.htpasswd {
        mounts.push((htpasswd, CONTAINER_HTPASSWD, true));
        env.push("REGISTRY_AUTH=htpasswd".into());
        env.push(format!("REGISTRY_AUTH_HTPASSWD_REALM={}", crate::registry::REALM));
        env.push(format!("REGISTRY_AUTH_HTPASSWD_PATH={CONTAINER_HTPASSWD}"));
    }
    let (run, clean, stop) = match runtime {
        Runtime::Containerd => {
            let mut run = ctr(host);
            run.args(["run", "--rm", "--net-host"]);
            for (source, destination, read_only) in &mounts {
                let options = if *read_only { "rbind:ro" } else { "rbind:rw" };
                run.arg("--mount")
                    .arg(format!("type=bind,src={},dst={destination},options={options}", source.display()));
            }
            for assignment in &env {
                run.arg("--env").arg(assignment);
            }
            run.args([container.image, CONTAINER]);
            let clean = [
                command_line(ctr(host).args(["tasks", "delete", "--force", CONTAINER])),
                command_line(ctr(host).args(["containers", "delete", CONTAINER])),
            ];
            let stop = command_line(ctr(host).args(["tasks", "kill", "--signal", "SIGTERM", CONTAINER]));
            (run, clean.to_vec(), stop)
        }
        Runtime::Docker => {
            let mut run = docker(host);
            run.args(["run", "--rm", "--name", CONTAINER, "--network", "host"]);
            for (source, destination, read_only) in &mounts {
                let suffix = if *read_only { ":ro" } else { "" };
                run.arg("--volume").arg(format!("{}:{destination}{suffix}", source.display()));
            }
            for assignment in &env {
                run.arg("--env").arg(assignment);
            }
            run.arg(container.image);
            let clean = vec![command_line(docker(host).args(["rm", "--force", CONTAINER]))];
            let stop = command_line(docker(host).args(["stop", CONTAINER]));
            (run, clean, stop)
        }
    };
    let pre: String = clean.iter().map(|c| format!("ExecStartPre=-{c}\n")).collect();
    let post: String = clean.iter().map(|c| format!("ExecStopPost=-{c}\n")).collect();
    format!(
        "# The bundled registry: the image's {ARCHIVE}, run by kubeferry in {runtime}.\n[Unit]\n\
         Description=kubeferry registry (the image's {ARCHIVE} in {runtime})\n\
         After=network.target {runtime}.service\nRequires={runtime}.service\n\n[Service]\n\
         {pre}ExecStart={}\nExecStop=-{stop}\n{post}Restart=always\nRestartSec=2\n\n[Install]\n\
         WantedBy=multi-user.target\n",
        command_line(&run),
        runtime = runtime.name(),
    )
}

/// Kills and removes the registry's container in whichever runtime answers (after its service
/// stopped: a container outlives the client that ran it). Nothing to do when there is none.
pub fn remove_container(host: &dyn Host) -> Result<()> {
    let answers = |socket: &str| UnixStream::connect(host.path(Path::new(socket))).is_ok();
    let ctr_bin = host.path(&Path::new(cri::BIN_DIR).join("ctr"));
    if answers(cri::SOCKET) && ctr_bin.is_file() {
        let listed = host.run(ctr(host).args(["containers", "list", "--quiet"]))?;
        if listed.lines().any(|l| l.trim() == CONTAINER) {
            // A task that ended meanwhile is not an error.
            let _ = host.run(ctr(host).args(["tasks", "kill", "--signal", "SIGKILL", CONTAINER]));
            wait_stopped(host)?;
            let _ = host.run(ctr(host).args(["tasks", "delete", CONTAINER]));
            host.run(ctr(host).args(["containers", "delete", CONTAINER]))?;
            host.log(&format!("removed the registry's container {CONTAINER} from containerd"));
        }
    }
    let docker_bin = host.path(&Path::new(cri::BIN_DIR).join("docker"));
    if answers(crate::docker::SOCKET) && docker_bin.is_file() {
        let listed = host.run(
            docker(host).args(["ps", "--all", "--quiet", "--filter"]).arg(format!("name=^{CONTAINER}$")),
        )?;
        if !listed.trim().is_empty() {
            host.run(docker(host).args(["rm", "--force", CONTAINER]))?;
            host.log(&format!("removed the registry's container {CONTAINER} from docker"));
        }
    }
    Ok(())
}

/// Waits until containerd lists the registry's task as stopped, or not at all.
fn wait_stopped(host: &dyn Host) -> Result<()> {
    let start = Instant::now();
    loop {
        // `ctr tasks list`: a header, then "TASK PID STATUS" per task.
        let tasks = host.run(ctr(host).args(["tasks", "list"]))?;
        let running = tasks.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.first() == Some(&CONTAINER) && fields.get(2) != Some(&"STOPPED")
        });
        if !running {
            return Ok(());
        }
        if start.elapsed() > STOP_TIMEOUT {
            return Err(Error::RegistryImage(format!(
                "the container {CONTAINER} still runs {} s after SIGKILL; stop it ('ctr -n {NAMESPACE} tasks kill \
                 {CONTAINER}') and run uninstall again",
                STOP_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The archive of the extracted rootfs at `rootfs`, if it ships one.
pub fn shipped(rootfs: &Path) -> Option<PathBuf> {
    Some(rootfs.join(ARCHIVE)).filter(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_named_as_containerd_names_them() {
        assert_eq!(normalised("registry:2.7.1"), "docker.io/library/registry:2.7.1");
        assert_eq!(normalised("registry"), "docker.io/library/registry:latest");
        assert_eq!(normalised("me/registry:2"), "docker.io/me/registry:2");
        assert_eq!(normalised("sea.hub:5000/library/registry:2"), "sea.hub:5000/library/registry:2");
        assert_eq!(normalised("localhost/registry"), "localhost/registry:latest");
        assert_eq!(normalised("docker.io/library/registry:2"), "docker.io/library/registry:2");
    }

    #[test]
    fn containerd_wins_over_docker() {
        assert_eq!(Runtime::shipped(|_| true), Some(Runtime::Containerd));
        assert_eq!(Runtime::shipped(|p| p == crate::docker::TARBALL), Some(Runtime::Docker));
        assert_eq!(Runtime::shipped(|_| false), None);
    }

    #[test]
    fn the_unit_runs_the_container_in_the_foreground_with_what_the_install_owns() {
        let host = crate::host::PathsOnly("/".into());
        let container = Container {
            image: "docker.io/library/registry:2.7.1",
            storage: Path::new("/var/lib/kubeferry/edge/rootfs/registry"),
            port: 5000,
            config: Some(Path::new("/var/lib/kubeferry/edge/rootfs/etc/registry_config.yml")),
            htpasswd: Some(Path::new("/etc/kubeferry/registry/htpasswd")),
        };
        let ctr = "/usr/local/bin/ctr --address /run/containerd/containerd.sock --namespace kubeferry";
        assert_eq!(
            unit(&host, Runtime::Containerd, &container),
            format!(
                "# The bundled registry: the image's images/registry.tar, run by kubeferry in containerd.\n\
                 [Unit]\nDescription=kubeferry registry (the image's images/registry.tar in containerd)\n\
                 After=network.target containerd.service\nRequires=containerd.service\n\n[Service]\n\
                 ExecStartPre=-{ctr} tasks delete --force kubeferry-registry\n\
                 ExecStartPre=-{ctr} containers delete kubeferry-registry\n\
                 ExecStart={ctr} run --rm --net-host \
                 --mount type=bind,src=/var/lib/kubeferry/edge/rootfs/registry,dst=/var/lib/registry,options=rbind:rw \
                 --mount type=bind,src=/var/lib/kubeferry/edge/rootfs/etc/registry_config.yml,dst=/etc/docker/registry/config.yml,options=rbind:ro \
                 --mount type=bind,src=/etc/kubeferry/registry/htpasswd,dst=/auth/htpasswd,options=rbind:ro \
                 --env REGISTRY_HTTP_ADDR=0.0.0.0:5000 --env REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/registry \
                 --env REGISTRY_AUTH=htpasswd --env REGISTRY_AUTH_HTPASSWD_REALM=kubeferry-registry \
                 --env REGISTRY_AUTH_HTPASSWD_PATH=/auth/htpasswd docker.io/library/registry:2.7.1 kubeferry-registry\n\
                 ExecStop=-{ctr} tasks kill --signal SIGTERM kubeferry-registry\n\
                 ExecStopPost=-{ctr} tasks delete --force kubeferry-registry\n\
                 ExecStopPost=-{ctr} containers delete kubeferry-registry\n\
                 Restart=always\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n"
            )
        );
        let plain = Container { config: None, htpasswd: None, image: "registry:2.7.1", ..container };
        let docker = "/usr/local/bin/docker --host unix:///var/run/docker.sock";
        let text = unit(&host, Runtime::Docker, &plain);
        assert!(
            text.contains(&format!(
                "\nExecStart={docker} run --rm --name kubeferry-registry --network host \
                 --volume /var/lib/kubeferry/edge/rootfs/registry:/var/lib/registry \
                 --env REGISTRY_HTTP_ADDR=0.0.0.0:5000 --env REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/registry \
                 registry:2.7.1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("\nExecStartPre=-{docker} rm --force kubeferry-registry\n")),
            "{text}"
        );
        assert!(text.contains(&format!("\nExecStop=-{docker} stop kubeferry-registry\n")), "{text}");
    }
}
