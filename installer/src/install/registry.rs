//! The registry step: kubeferry's own read-only registry over the rootfs's `registry/`, run
//! by an installed copy of the stub as a systemd service, and the registry domain in
//! `/etc/hosts`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{HOSTS_MARKER, InstallConfig, REGISTRY_BINARY, REGISTRY_UNIT, REGISTRY_UNIT_NAME};
use crate::error::{Error, Result};
use crate::host::{Host, write_file};
use crate::reader::Bundle;
use crate::registry;

/// The hosts file.
pub const HOSTS: &str = "/etc/hosts";

/// Installs a copy of the stub, maps the registry domain in /etc/hosts, and starts the
/// registry service over the rootfs's registry/; waits until `/v2/` and an image answer.
pub fn start(host: &dyn Host, bundle: &Bundle, rootfs: &Path, config: &InstallConfig) -> Result<()> {
    let stub_len = usize::try_from(bundle.trailer().stub_len).map_err(|_| Error::NotABundle)?;
    let mut stub = vec![0u8; stub_len];
    std::os::unix::fs::FileExt::read_exact_at(bundle.file(), &mut stub, 0)
        .map_err(Error::io("read", bundle.path()))?;
    write_file(host, Path::new(REGISTRY_BINARY), &stub, 0o755)?;

    add_hosts_line(host, &format!("{} {} {HOSTS_MARKER}", config.registry_address, config.registry_domain))?;

    let storage = rootfs.join("registry");
    fs::create_dir_all(&storage).map_err(Error::io("create", &storage))?;
    let unit = format!(
        "# The bundled registry, written by kubeferry.\n[Unit]\nDescription=kubeferry registry (read-only)\n\
         After=network.target\n\n[Service]\nExecStart={} serve-registry --root {} --listen 0.0.0.0:{}\n\
         Restart=always\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n",
        host.path(Path::new(REGISTRY_BINARY)).display(),
        storage.display(),
        config.registry_port
    );
    write_file(host, Path::new(REGISTRY_UNIT), unit.as_bytes(), 0o644)?;
    host.start_service(REGISTRY_UNIT_NAME)?;

    let probe = registry::list_images(&storage).ok().and_then(|images| images.into_iter().next());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], config.registry_port));
    let host_header = format!("{}:{}", config.registry_domain, config.registry_port);
    registry::wait_ready(
        addr,
        &host_header,
        probe.as_ref().map(|i| (i.repository.as_str(), i.tag.as_str())),
        Duration::from_secs(30),
    )
    .map_err(|e| Error::Io {
        action: "reach the registry on",
        path: PathBuf::from(addr.to_string()),
        source: std::io::Error::other(e.to_string()),
    })?;
    host.log(&format!("the registry answers on {addr}"));
    Ok(())
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
