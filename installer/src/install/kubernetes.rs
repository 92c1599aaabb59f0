//! The kubernetes step: the rootfs's `bin/` executables (kubeadm, kubelet, kubectl, and
//! whatever else the image ships: crictl, conntrack, socat...) into [`super::KUBERNETES_BIN_DIR`];
//! the kubelet's unit and kubeadm's drop-in for it; the kernel modules and parameters
//! Kubernetes networking needs, in files that load them at boot and loaded now; CNI plugins and
//! configuration when the image ships them; and the kubelet enabled, for `kubeadm init` to
//! start.

use std::fs;
use std::path::{Path, PathBuf};

use super::kubernetes_bin;
use crate::error::{Error, Result};
use crate::host::{Host, copy_file, write_file};
use crate::progress::Reporter;

/// The executables without which there is no Kubernetes to install.
pub const REQUIRED: [&str; 3] = ["kubeadm", "kubelet", "kubectl"];
/// The kubelet's unit.
pub const KUBELET_UNIT_NAME: &str = "kubelet.service";
/// The kubelet's unit file.
pub const KUBELET_UNIT: &str = "/etc/systemd/system/kubelet.service";
/// kubeadm's drop-in for the kubelet's unit.
pub const KUBEADM_DROP_IN: &str = "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf";
/// The kernel parameters Kubernetes networking needs.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/99-kubeferry-kubernetes.conf";
/// The kernel modules loaded at boot.
pub const MODULES_FILE: &str = "/etc/modules-load.d/kubeferry-kubernetes.conf";
/// The kernel modules: overlay for containerd's snapshotter, br_netfilter for bridged traffic
/// through iptables.
pub const MODULES: [&str; 2] = ["overlay", "br_netfilter"];
/// Where CNI plugins go (the kubelet's and containerd's default).
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// Where CNI configuration goes.
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";

/// Files of the rootfs used when present.
const IMAGE_UNIT: &str = "etc/kubelet.service";
const IMAGE_DROP_IN: &str = "etc/10-kubeadm.conf";
/// The rootfs's CNI plugins and configuration, laid out as on the host.
const IMAGE_CNI_BIN: &str = "opt/cni/bin";
const IMAGE_CNI_CONF: &str = "etc/cni/net.d";
/// The CloudRootfs places: plugins in a top-level `cni/`, network lists as `etc/*.conflist`.
const IMAGE_CNI_BIN_CLOUDROOTFS: &str = "cni";
const IMAGE_ETC: &str = "etc";
const CNI_CONFLIST_SUFFIX: &str = ".conflist";
/// The CloudRootfs's static files (the API server's audit policy), which its kubeadm
/// configuration names under /etc/kubernetes.
const IMAGE_STATICS: &str = "statics";
/// Where the static files go.
pub const STATICS_DIR: &str = "/etc/kubernetes";

const SYSCTLS: &str = "# Kubernetes networking, written by kubeferry.\n\
net.bridge.bridge-nf-call-iptables = 1\n\
net.bridge.bridge-nf-call-ip6tables = 1\n\
net.ipv4.ip_forward = 1\n";

/// The kubelet's unit when the image ships none: the one of Kubernetes' own packages.
const DEFAULT_UNIT: &str = "# The kubelet, written by kubeferry.
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/home/
Wants=network-online.target
After=network-online.target containerd.service docker.service

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
";

/// kubeadm's drop-in when the image ships none: the one of Kubernetes' own packages.
const DEFAULT_DROP_IN: &str = "# kubeadm's settings for the kubelet, written by kubeferry.
[Service]
Environment=\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"
Environment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"
# kubeadm init writes KUBELET_KUBEADM_ARGS here.
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# The user's own KUBELET_EXTRA_ARGS.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
";

/// Carries the step out. Kernel changes that fail are reported, not fatal: preflight checked
/// the modules and parameters before the install, or the user told it not to.
pub fn install(host: &dyn Host, rootfs: &Path, reporter: &dyn Reporter) -> Result<()> {
    let bin = rootfs.join("bin");
    let executables = executables(&bin)?;
    for name in REQUIRED {
        if !executables.iter().any(|(n, _)| n == name) {
            return Err(Error::Io {
                action: "install Kubernetes from",
                path: bin.clone(),
                source: std::io::Error::other(format!(
                    "it has no {name}: a cluster image carries kubeadm, kubelet and kubectl in bin/"
                )),
            });
        }
    }
    for (name, source) in &executables {
        let target = kubernetes_bin(name);
        if same_content(source, &host.path(&target)) {
            host.log(&format!("{} is the bundle's already", target.display()));
            continue;
        }
        copy_file(host, source, &target, 0o755)?;
    }

    let unit = image_file_or(rootfs, IMAGE_UNIT, DEFAULT_UNIT)?;
    write_file(host, Path::new(KUBELET_UNIT), render_kubelet_exec(&unit, host).as_bytes(), 0o644)?;
    let drop_in = image_file_or(rootfs, IMAGE_DROP_IN, DEFAULT_DROP_IN)?;
    write_file(host, Path::new(KUBEADM_DROP_IN), render_kubelet_exec(&drop_in, host).as_bytes(), 0o644)?;

    write_file(host, Path::new(MODULES_FILE), modules_file().as_bytes(), 0o644)?;
    for module in MODULES {
        if let Err(e) = host.load_module(module)
            && !Path::new("/sys/module").join(module).exists()
        {
            reporter.warn(&format!(
                "could not load the kernel module {module} ({e}); Kubernetes networking may not work"
            ));
        }
    }
    write_file(host, Path::new(SYSCTL_FILE), SYSCTLS.as_bytes(), 0o644)?;
    if let Err(e) = host.apply_sysctls(&host.path(Path::new(SYSCTL_FILE))) {
        reporter.warn(&format!("could not apply {SYSCTL_FILE} ({e}); it applies at the next boot"));
    }

    for (name, source, to, mode) in image_files(rootfs)? {
        copy_file(host, &source, &Path::new(to).join(name), mode)?;
    }

    host.enable_service(KUBELET_UNIT_NAME)
}

/// The rootfs's CNI plugins and configuration and its static files, each with the directory it
/// goes to and its mode: plugins from `opt/cni/bin/` and the CloudRootfs's `cni/` into
/// [`CNI_BIN_DIR`]; configuration from `etc/cni/net.d/` and the CloudRootfs's `etc/*.conflist`
/// into [`CNI_CONF_DIR`]; `statics/` into [`STATICS_DIR`].
fn image_files(rootfs: &Path) -> Result<Vec<(String, PathBuf, &'static str, u32)>> {
    let mut files = Vec::new();
    for (from, to, mode) in [
        (IMAGE_CNI_BIN, CNI_BIN_DIR, 0o755),
        (IMAGE_CNI_BIN_CLOUDROOTFS, CNI_BIN_DIR, 0o755),
        (IMAGE_CNI_CONF, CNI_CONF_DIR, 0o644),
        (IMAGE_ETC, CNI_CONF_DIR, 0o644),
        (IMAGE_STATICS, STATICS_DIR, 0o644),
    ] {
        let dir = rootfs.join(from);
        if !dir.is_dir() {
            continue;
        }
        for (name, source) in regular_files(&dir)? {
            if from == IMAGE_ETC && !name.ends_with(CNI_CONFLIST_SUFFIX) {
                continue;
            }
            files.push((name, source, to, mode));
        }
    }
    Ok(files)
}

/// The files directly in `dir`, by name, sorted; links are followed (a `bin/` may link one
/// executable under two names).
fn regular_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io("read", dir))? {
        let entry = entry.map_err(Error::io("read", dir))?;
        let path = entry.path();
        if path.is_file() {
            files.push((entry.file_name().to_string_lossy().into_owned(), path));
        }
    }
    files.sort();
    Ok(files)
}

/// The executables of the rootfs's `bin/`, by name.
fn executables(bin: &Path) -> Result<Vec<(String, PathBuf)>> {
    if !bin.is_dir() {
        return Err(Error::Io {
            action: "install Kubernetes from",
            path: bin.to_path_buf(),
            source: std::io::Error::other("the rootfs has no bin/ directory"),
        });
    }
    regular_files(bin)
}

/// Whether two files hold the same bytes (the second may be missing).
fn same_content(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(ma), Ok(mb)) if ma.len() == mb.len() => {
            matches!((fs::read(a), fs::read(b)), (Ok(x), Ok(y)) if x == y)
        }
        _ => false,
    }
}

fn image_file_or(rootfs: &Path, relative: &str, default: &str) -> Result<String> {
    let path = rootfs.join(relative);
    if path.is_file() {
        fs::read_to_string(&path).map_err(Error::io("read", &path))
    } else {
        Ok(default.into())
    }
}

/// The unit (or drop-in) with every `ExecStart=` that names a kubelet naming the one the
/// install put in place.
pub fn render_kubelet_exec(unit: &str, host: &dyn Host) -> String {
    let kubelet = host.path(&kubernetes_bin("kubelet"));
    let lines: Vec<String> = unit
        .lines()
        .map(|line| {
            let Some(command) = line.trim_start().strip_prefix("ExecStart=") else {
                return line.to_string();
            };
            let mut words = command.splitn(2, ' ');
            match (words.next(), words.next()) {
                (Some(program), rest) if program.ends_with("/kubelet") || program == "kubelet" => {
                    let rest = rest.map(|r| format!(" {r}")).unwrap_or_default();
                    format!("ExecStart={}{rest}", kubelet.display())
                }
                _ => line.to_string(),
            }
        })
        .collect();
    lines.join("\n") + "\n"
}

fn modules_file() -> String {
    let mut text = String::from("# Kernel modules for Kubernetes, written by kubeferry.\n");
    for module in MODULES {
        text.push_str(module);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::host::PathsOnly as At;

    #[test]
    fn cni_and_statics_come_from_both_layouts() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for (path, body) in [
            ("cni/bridge", "plugin"),
            ("opt/cni/bin/loopback", "plugin"),
            ("etc/10-containerd-net.conflist", "{}"),
            ("etc/config.toml", "containerd"),
            ("etc/kubeadm.yml", "kubeadm"),
            ("etc/cni/net.d/99-loopback.conf", "{}"),
            ("statics/audit-policy.yml", "policy"),
        ] {
            fs::create_dir_all(r.join(path).parent().unwrap()).unwrap();
            fs::write(r.join(path), body).unwrap();
        }
        let got: Vec<(String, &str, u32)> =
            image_files(r).unwrap().into_iter().map(|(name, _, to, mode)| (name, to, mode)).collect();
        assert_eq!(
            got,
            [
                ("loopback".to_string(), CNI_BIN_DIR, 0o755),
                ("bridge".to_string(), CNI_BIN_DIR, 0o755),
                ("99-loopback.conf".to_string(), CNI_CONF_DIR, 0o644),
                ("10-containerd-net.conflist".to_string(), CNI_CONF_DIR, 0o644),
                ("audit-policy.yml".to_string(), STATICS_DIR, 0o644),
            ]
        );
    }

    #[test]
    fn the_drop_in_names_the_installed_kubelet_and_keeps_the_reset() {
        let out = render_kubelet_exec(DEFAULT_DROP_IN, &At("/".into()));
        assert_eq!(out, DEFAULT_DROP_IN, "on a real host nothing changes");
        let out = render_kubelet_exec(DEFAULT_DROP_IN, &At("/root-dir".into()));
        assert!(
            out.contains("\nExecStart=\nExecStart=/root-dir/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS "),
            "{out}"
        );
        let sealer = "[Service]\nExecStart=/usr/local/bin/kubelet --v=2\nExecStartPre=/bin/true\n";
        assert_eq!(
            render_kubelet_exec(sealer, &At("/".into())),
            "[Service]\nExecStart=/usr/bin/kubelet --v=2\nExecStartPre=/bin/true\n"
        );
    }
}
