//! The registry step: the rootfs's `registry/` served on the registry domain as a systemd
//! service, in the first [`Way`] the image allows: the registry image it ships in
//! `images/registry.tar`, run in its container runtime ([`super::registry_image`]); the
//! registry program it ships in `bin/` (distribution's `registry` or Debian's
//! `docker-registry`); or else kubeferry's own read-only registry (an installed copy of the
//! stub). The image's `etc/registry_config.yml` configures the first two; Basic
//! authentication when credentials are set; and the registry domain in `/etc/hosts`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::registry_image::{self, Container, Runtime};
use super::{HOSTS_MARKER, InstallConfig, REGISTRY_BINARY, REGISTRY_UNIT, REGISTRY_UNIT_NAME};
use crate::error::{Error, Result};
use crate::host::{Host, copy_file, write_file};
use crate::reader::Bundle;
use crate::registry::{self, Credentials};

/// The hosts file.
pub const HOSTS: &str = "/etc/hosts";

/// The registry programs an image may ship, the first found is run.
pub const SHIPPED_REGISTRIES: [&str; 2] = ["bin/registry", "bin/docker-registry"];
/// The image's configuration for its registry program.
pub const IMAGE_REGISTRY_CONFIG: &str = "etc/registry_config.yml";
/// The configuration kubeferry writes for a shipped registry program when the image has none.
pub const REGISTRY_CONFIG: &str = "/etc/kubeferry/registry/config.yml";
/// The htpasswd file of the registry's user (bcrypt), read by either registry.
pub const HTPASSWD: &str = "/etc/kubeferry/registry/htpasswd";
/// How long the registry may take to answer once started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The registry settings given on the command line; each unset one is taken from the image's
/// `ENV` under the sealos name, else from the default.
#[derive(Debug, Clone, Default)]
pub struct RegistryFlags {
    /// `--registry-domain` (`registryDomain`, default `sea.hub`).
    pub domain: Option<String>,
    /// `--registry-port` (`registryPort`, default 5000).
    pub port: Option<u16>,
    /// `--registry-username` (`registryUsername`).
    pub username: Option<String>,
    /// `--registry-password` (`registryPassword`).
    pub password: Option<String>,
    /// `--registry-data` (`registryData`).
    pub data: Option<PathBuf>,
}

/// Sets the registry settings of `config` from the flags, else the image's `ENV`, else the
/// defaults. A port that is not a number, a user without a password (or a password without a
/// user), unusable credentials and a relative data directory are refused by name.
pub fn apply_settings(
    config: &mut InstallConfig,
    flags: &RegistryFlags,
    env: &BTreeMap<String, String>,
) -> Result<()> {
    let from_env = |name: &str| env.get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    if let Some(domain) = flags.domain.clone().or_else(|| from_env("registryDomain")) {
        config.registry_domain = domain;
    }
    match (flags.port, from_env("registryPort")) {
        (Some(port), _) => config.registry_port = port,
        (None, Some(text)) => {
            config.registry_port = text.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                Error::RegistrySettings(format!(
                    "the image's ENV registryPort is '{text}', not a port number"
                ))
            })?
        }
        (None, None) => {}
    }
    let username = flags.username.clone().or_else(|| from_env("registryUsername"));
    let password = flags.password.clone().or_else(|| from_env("registryPassword"));
    config.registry_credentials = match (username, password) {
        (Some(user), Some(password)) => Some(Credentials::new(&user, &password).map_err(|e| match e {
            registry::RegistryError::BadCredentials { reason } => Error::RegistrySettings(reason),
            other => Error::Registry(other),
        })?),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::RegistrySettings(
                "a registry user name is set but no password: give --registry-password \
                 (or the image's ENV registryPassword) too"
                    .into(),
            ));
        }
        (None, Some(_)) => {
            return Err(Error::RegistrySettings(
                "a registry password is set but no user name: give --registry-username \
                 (or the image's ENV registryUsername) too"
                    .into(),
            ));
        }
    };
    if let Some(data) = flags.data.clone().or_else(|| from_env("registryData").map(PathBuf::from)) {
        if !data.is_absolute() {
            return Err(Error::RegistrySettings(format!(
                "the registry data directory '{}' is not an absolute path",
                data.display()
            )));
        }
        config.registry_data = Some(data);
    }
    Ok(())
}

/// The registry program the image ships in `bin/`, if any.
pub fn shipped_registry(rootfs: &Path) -> Option<PathBuf> {
    SHIPPED_REGISTRIES.iter().map(|p| rootfs.join(p)).find(|p| p.is_file())
}

/// How the registry step serves `registry/`, chosen from what the rootfs holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// The image's registry image ([`registry_image::ARCHIVE`]) in the runtime the rootfs
    /// ships; without a runtime tarball the image cannot be run, and the next way is taken.
    Image(Runtime),
    /// The image's registry program, one of [`SHIPPED_REGISTRIES`].
    Program(&'static str),
    /// kubeferry's own read-only registry.
    Own,
}

impl Way {
    /// The way for a rootfs that holds the relative paths for which `has` is true.
    pub fn of(has: impl Fn(&str) -> bool) -> Way {
        match Runtime::shipped(&has) {
            Some(runtime) if has(registry_image::ARCHIVE) => Way::Image(runtime),
            _ => SHIPPED_REGISTRIES.iter().find(|p| has(p)).map_or(Way::Own, |p| Way::Program(p)),
        }
    }

    /// The way for the extracted rootfs at `rootfs`.
    pub fn of_rootfs(rootfs: &Path) -> Way {
        Way::of(|p| rootfs.join(p).is_file())
    }

    /// What runs the registry, for the plan: "the image's images/registry.tar in containerd".
    pub fn describe(self) -> String {
        match self {
            Way::Image(runtime) => format!("the image's {} in {}", registry_image::ARCHIVE, runtime.name()),
            Way::Program(program) => format!("the image's {program}"),
            Way::Own => "kubeferry's own read-only registry".into(),
        }
    }
}

/// Maps the registry domain in /etc/hosts, writes the htpasswd file when credentials are set,
/// and starts the registry service over `storage` (a path of this process, holding
/// `docker/registry/v2`): the image's registry program when it ships one, else a copy of the
/// stub. Waits until `/v2/` and the first image of the storage answer.
pub fn start(
    host: &dyn Host,
    bundle: &Bundle,
    rootfs: &Path,
    storage: &Path,
    config: &InstallConfig,
) -> Result<()> {
    add_hosts_line(host, &format!("{} {} {HOSTS_MARKER}", config.registry_address, config.registry_domain))?;
    fs::create_dir_all(storage).map_err(Error::io("create", storage))?;

    let htpasswd = match &config.registry_credentials {
        Some(credentials) => {
            let line = credentials.htpasswd_line().map_err(Error::Registry)?;
            write_file(host, Path::new(HTPASSWD), line.as_bytes(), 0o600)?;
            Some(host.path(Path::new(HTPASSWD)))
        }
        None => None,
    };
    let way = Way::of_rootfs(rootfs);
    host.log(&format!("the registry runs as {}", way.describe()));
    let unit = match way {
        Way::Image(runtime) => image_unit(host, runtime, rootfs, storage, config, htpasswd.as_deref())?,
        Way::Program(program) => {
            shipped_unit(host, rootfs, &rootfs.join(program), storage, config, htpasswd.as_deref())?
        }
        Way::Own => own_unit(host, bundle, storage, config, htpasswd.as_deref())?,
    };
    write_file(host, Path::new(REGISTRY_UNIT), unit.as_bytes(), 0o644)?;
    host.start_service(REGISTRY_UNIT_NAME)?;

    let probe = registry::list_images(storage).ok().and_then(|images| images.into_iter().next());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], config.registry_port));
    let host_header = format!("{}:{}", config.registry_domain, config.registry_port);
    registry::wait_ready_as(
        addr,
        &host_header,
        probe.as_ref().map(|i| (i.repository.as_str(), i.tag.as_str())),
        config.registry_credentials.as_ref(),
        READY_TIMEOUT,
    )
    .map_err(Error::Registry)?;
    host.log(&format!("the registry answers on {addr}"));
    Ok(())
}

/// kubeferry's own registry: a copy of the stub (the first bytes of the bundle) running
/// `serve-registry`.
fn own_unit(
    host: &dyn Host,
    bundle: &Bundle,
    storage: &Path,
    config: &InstallConfig,
    htpasswd: Option<&Path>,
) -> Result<String> {
    let stub_len = usize::try_from(bundle.trailer().stub_len).map_err(|_| Error::NotABundle)?;
    let mut stub = vec![0u8; stub_len];
    std::os::unix::fs::FileExt::read_exact_at(bundle.file(), &mut stub, 0)
        .map_err(Error::io("read", bundle.path()))?;
    write_file(host, Path::new(REGISTRY_BINARY), &stub, 0o755)?;
    let users = htpasswd.map(|p| format!(" --htpasswd {}", p.display())).unwrap_or_default();
    Ok(format!(
        "# The bundled registry, written by kubeferry.\n[Unit]\nDescription=kubeferry registry (read-only)\n\
         After=network.target\n\n[Service]\nExecStart={} serve-registry --root {} --listen 0.0.0.0:{}{users}\n\
         Restart=always\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n",
        host.path(Path::new(REGISTRY_BINARY)).display(),
        storage.display(),
        config.registry_port
    ))
}

/// The image's registry image, loaded into `runtime` and run there with the storage, the
/// image's configuration and the htpasswd file bind-mounted, and the port and authentication
/// set in the container's environment, which a distribution registry reads over its
/// configuration file.
fn image_unit(
    host: &dyn Host,
    runtime: Runtime,
    rootfs: &Path,
    storage: &Path,
    config: &InstallConfig,
    htpasswd: Option<&Path>,
) -> Result<String> {
    let image = registry_image::load(host, runtime, &rootfs.join(registry_image::ARCHIVE))?;
    host.log(&format!("loaded the registry image {image} into {}", runtime.name()));
    let image_config = Some(rootfs.join(IMAGE_REGISTRY_CONFIG)).filter(|p| p.is_file());
    let container = Container {
        image: &image,
        storage,
        port: config.registry_port,
        config: image_config.as_deref(),
        htpasswd,
    };
    Ok(registry_image::unit(host, runtime, &container))
}

/// The image's registry program, installed beside the Kubernetes executables, run with the
/// image's configuration (or kubeferry's); what the install owns is set in the unit's
/// environment, which a distribution registry reads over its configuration file: the storage
/// directory, the address, and the htpasswd authentication.
fn shipped_unit(
    host: &dyn Host,
    rootfs: &Path,
    program: &Path,
    storage: &Path,
    config: &InstallConfig,
    htpasswd: Option<&Path>,
) -> Result<String> {
    let name = program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let installed = super::kubernetes_bin(&name);
    copy_file(host, program, &installed, 0o755)?;
    let listen = format!("0.0.0.0:{}", config.registry_port);
    let image_config = rootfs.join(IMAGE_REGISTRY_CONFIG);
    let config_file = if image_config.is_file() {
        image_config
    } else {
        let text = format!(
            "# The bundled registry's configuration, written by kubeferry.\nversion: 0.1\n\
             storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {listen}\n",
            storage.display()
        );
        write_file(host, Path::new(REGISTRY_CONFIG), text.as_bytes(), 0o644)?;
        host.path(Path::new(REGISTRY_CONFIG))
    };
    let mut environment = vec![
        format!("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY={}", storage.display()),
        format!("REGISTRY_HTTP_ADDR={listen}"),
    ];
    if let Some(file) = htpasswd {
        environment.push("REGISTRY_AUTH=htpasswd".into());
        environment.push(format!("REGISTRY_AUTH_HTPASSWD_REALM={}", registry::REALM));
        environment.push(format!("REGISTRY_AUTH_HTPASSWD_PATH={}", file.display()));
    }
    let environment: String = environment.iter().map(|e| format!("Environment={e}\n")).collect();
    Ok(format!(
        "# The bundled registry: the image's {name}, run by kubeferry.\n[Unit]\n\
         Description=kubeferry registry (the image's {name})\nAfter=network.target\n\n[Service]\n\
         {environment}ExecStart={} serve {}\nRestart=always\nRestartSec=2\n\n[Install]\n\
         WantedBy=multi-user.target\n",
        host.path(&installed).display(),
        config_file.display()
    ))
}

/// On a joining node: maps the registry domain to the first control plane's registry in
/// /etc/hosts (`config.registry_address`), so that the runtime pulls from it; serves nothing.
pub fn use_remote(host: &dyn Host, config: &InstallConfig) -> Result<()> {
    add_hosts_line(host, &format!("{} {} {HOSTS_MARKER}", config.registry_address, config.registry_domain))
}

/// Appends `line` to /etc/hosts unless it is there.
fn add_hosts_line(host: &dyn Host, line: &str) -> Result<()> {
    let path = host.path(Path::new(HOSTS));
    let current = fs::read_to_string(&path).unwrap_or_default();
    if current.lines().any(|l| l == line) {
        return Ok(());
    }
    let mut text = current;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    write_file(host, Path::new(HOSTS), text.as_bytes(), 0o644)
}

/// Takes every line kubeferry added (those ending with [`HOSTS_MARKER`]) out of /etc/hosts;
/// removes the file when nothing else was in it. Whether anything changed.
pub fn remove_hosts_lines(host: &dyn Host) -> Result<bool> {
    let path = host.path(Path::new(HOSTS));
    let current = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("read", &path)(e)),
    };
    let kept: Vec<&str> = current.lines().filter(|l| !l.trim_end().ends_with(HOSTS_MARKER)).collect();
    if kept.len() == current.lines().count() {
        return Ok(false);
    }
    if kept.is_empty() {
        fs::remove_file(&path).map_err(Error::io("remove", &path))?;
        host.log(&format!("removed {HOSTS}: it held only kubeferry's lines"));
    } else {
        let text = kept.join("\n") + "\n";
        write_file(host, Path::new(HOSTS), text.as_bytes(), 0o644)?;
        host.log(&format!("took kubeferry's lines out of {HOSTS}"));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn applied(flags: &RegistryFlags, image: &[(&str, &str)]) -> Result<InstallConfig> {
        let mut config = InstallConfig::new("edge", "edge.run");
        apply_settings(&mut config, flags, &env(image)).map(|()| config)
    }

    #[test]
    fn flags_win_over_the_images_env_which_wins_over_the_defaults() {
        let config = applied(&RegistryFlags::default(), &[]).unwrap();
        assert_eq!((config.registry_domain.as_str(), config.registry_port), ("sea.hub", 5000));
        assert!(config.registry_credentials.is_none() && config.registry_data.is_none());

        let image = [
            ("registryDomain", "hub.edge"),
            ("registryPort", "5443"),
            ("registryUsername", "admin"),
            ("registryPassword", "passw0rd"),
            ("registryData", "/var/lib/registry"),
        ];
        let config = applied(&RegistryFlags::default(), &image).unwrap();
        assert_eq!((config.registry_domain.as_str(), config.registry_port), ("hub.edge", 5443));
        assert_eq!(config.registry_credentials, Some(Credentials::new("admin", "passw0rd").unwrap()));
        assert_eq!(config.registry_data, Some(PathBuf::from("/var/lib/registry")));

        let flags = RegistryFlags {
            domain: Some("sea.hub".into()),
            port: Some(5000),
            username: Some("ops".into()),
            password: Some("other".into()),
            data: Some("/srv/registry".into()),
        };
        let config = applied(&flags, &image).unwrap();
        assert_eq!((config.registry_domain.as_str(), config.registry_port), ("sea.hub", 5000));
        assert_eq!(config.registry_credentials, Some(Credentials::new("ops", "other").unwrap()));
        assert_eq!(config.registry_data, Some(PathBuf::from("/srv/registry")));
    }

    #[test]
    fn the_registry_image_wins_when_the_rootfs_ships_a_runtime_to_run_it() {
        let way = |paths: &[&str]| Way::of(|p| paths.contains(&p));
        let image = registry_image::ARCHIVE;
        assert_eq!(way(&[image, "cri/containerd.tar.gz", "bin/registry"]), Way::Image(Runtime::Containerd));
        assert_eq!(way(&[image, "cri/docker.tar.gz"]), Way::Image(Runtime::Docker));
        assert_eq!(way(&[image, "bin/docker-registry"]), Way::Program("bin/docker-registry"));
        assert_eq!(way(&["cri/containerd.tar.gz"]), Way::Own);
        assert_eq!(
            way(&[image, "cri/containerd.tar.gz"]).describe(),
            "the image's images/registry.tar in containerd"
        );
        assert_eq!(way(&["bin/registry"]).describe(), "the image's bin/registry");
    }

    #[test]
    fn unusable_settings_are_refused_by_name() {
        let refused =
            |flags: RegistryFlags, image: &[(&str, &str)]| applied(&flags, image).unwrap_err().to_string();
        assert_eq!(
            refused(RegistryFlags::default(), &[("registryPort", "fivethousand")]),
            "the registry settings are not usable: the image's ENV registryPort is 'fivethousand', not a port number"
        );
        assert_eq!(
            refused(RegistryFlags { username: Some("admin".into()), ..Default::default() }, &[]),
            "the registry settings are not usable: a registry user name is set but no password: give \
             --registry-password (or the image's ENV registryPassword) too"
        );
        assert_eq!(
            refused(RegistryFlags::default(), &[("registryPassword", "x")]),
            "the registry settings are not usable: a registry password is set but no user name: give \
             --registry-username (or the image's ENV registryUsername) too"
        );
        assert_eq!(
            refused(RegistryFlags::default(), &[("registryUsername", "a:b"), ("registryPassword", "x")]),
            "the registry settings are not usable: the user name contains ':'"
        );
        assert_eq!(
            refused(RegistryFlags { data: Some("registry".into()), ..Default::default() }, &[]),
            "the registry settings are not usable: the registry data directory 'registry' is not an absolute path"
        );
    }
}
