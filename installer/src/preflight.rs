//! Preflight: what the host must offer before the install changes anything.
//!
//! [`Facts::gather`] reads the host (`/proc`, `/sys`, `uname`, `statvfs`, and a trial bind of
//! each port); [`check`] compares the facts with the [`Requirements`] and returns every finding
//! at once, each with its remedy, so that one run tells the operator all there is to fix. Names
//! follow kubeadm's style so that `--ignore-preflight swap,port-6443` reads the same.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use crate::arch::Arch;
use crate::error::human_bytes;

/// Kernel modules Kubernetes networking and the container runtime need.
pub const MODULES: [&str; 2] = ["overlay", "br_netfilter"];
/// Sysctls the install sets; their files must exist (the modules above provide them).
pub const SYSCTLS: [&str; 2] = ["net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"];
/// Ports a control-plane node listens on.
pub const CONTROL_PLANE_PORTS: [u16; 6] = [6443, 10250, 10257, 10259, 2379, 2380];
/// The oldest kernel kubeferry installs on (overlayfs with redirect_dir, cgroup v2 support).
pub const MIN_KERNEL: (u32, u32) = (4, 15);
/// kubeadm's own minimums for a control-plane node.
pub const MIN_MEMORY_MIB: u64 = 1700;
/// kubeadm's own minimum number of CPUs for a control-plane node.
pub const MIN_CPUS: usize = 2;

/// The cgroup hierarchy the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v1 (or the hybrid layout).
    V1,
    /// The unified cgroup v2 hierarchy.
    V2,
    /// No cgroup file system mounted.
    None,
}

impl fmt::Display for Cgroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cgroups::V1 => "cgroup v1",
            Cgroups::V2 => "cgroup v2",
            Cgroups::None => "no cgroups",
        })
    }
}

/// What the host offers, as read by [`Facts::gather`] (or made up by a test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `uname -m`, when kubeferry knows it.
    pub arch: Option<Arch>,
    /// `uname -m` as the kernel says it.
    pub machine: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// The cgroup hierarchy.
    pub cgroups: Cgroups,
    /// Whether systemd is the init system (PID 1).
    pub systemd: bool,
    /// Modules that are loaded or built in.
    pub modules_present: BTreeSet<String>,
    /// Modules that `modprobe` could load.
    pub modules_loadable: BTreeSet<String>,
    /// Sysctls whose files exist, with their values.
    pub sysctls: BTreeMap<String, String>,
    /// Active swap in KiB.
    pub swap_kib: u64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Online CPUs.
    pub cpus: usize,
    /// The host name.
    pub hostname: String,
    /// Ports of the requirements that could not be bound.
    pub ports_in_use: BTreeSet<u16>,
    /// Free bytes in the file system of each directory of the requirements.
    pub free_bytes: BTreeMap<PathBuf, u64>,
    /// Tools of the requirements that are not on the PATH.
    pub tools_missing: BTreeSet<String>,
    /// Whether the host has a default route (else an address to advertise must be given).
    pub default_route: bool,
    /// Whether the kernel enforces AppArmor (`/sys/module/apparmor/parameters/enabled`).
    pub apparmor: bool,
    /// Whether `apparmor_parser`, which loads AppArmor profiles, is on the PATH or in `/sbin`.
    pub apparmor_parser: bool,
}

/// What the install needs of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// The bundle's architecture.
    pub arch: Arch,
    /// The cgroup driver the kubelet configuration asks for (`systemd` or `cgroupfs`).
    pub cgroup_driver: String,
    /// Ports that must be free.
    pub ports: Vec<u16>,
    /// Directories and the bytes each needs free (the unpacked payload plus a margin).
    pub disk: Vec<(PathBuf, u64)>,
    /// Tools the image's scripts and the install call.
    pub tools: Vec<String>,
    /// Whether an address to advertise was given (so no default route is needed).
    pub advertise_address_given: bool,
    /// Minimum memory in MiB.
    pub min_memory_mib: u64,
    /// Minimum CPUs.
    pub min_cpus: usize,
    /// Whether the runtime loads an AppArmor profile for its containers when the kernel
    /// enforces AppArmor, with the host's `apparmor_parser` (docker's `docker-default`).
    pub apparmor_profile: bool,
}

/// One thing the host lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The name `--ignore-preflight` takes: `arch`, `kernel`, `swap`, `port-6443`...
    pub name: String,
    /// What is wrong, expected and found side by side.
    pub problem: String,
    /// What to do about it.
    pub remedy: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}\n      fix: {}", self.name, self.problem, self.remedy)
    }
}

/// Every finding of `facts` against `requirements`, in a fixed order.
pub fn check(facts: &Facts, req: &Requirements) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |name: &str, problem: String, remedy: String| {
        out.push(Finding { name: name.to_string(), problem, remedy });
    };
    if facts.arch != Some(req.arch) {
        add(
            "arch",
            format!("this bundle is for {} but the host is {}", req.arch, facts.machine),
            format!("use the bundle built for {}", facts.arch.map_or(facts.machine.as_str(), |a| a.name())),
        );
    }
    match kernel_version(&facts.kernel_release) {
        Some(v) if v >= MIN_KERNEL => {}
        found => add(
            "kernel",
            format!(
                "kernel {} is older than {}.{}, the oldest supported",
                found.map_or_else(|| facts.kernel_release.clone(), |(a, b)| format!("{a}.{b}")),
                MIN_KERNEL.0,
                MIN_KERNEL.1
            ),
            "upgrade the kernel".into(),
        ),
    }
    if facts.cgroups == Cgroups::None {
        add(
            "cgroups",
            "no cgroup file system is mounted".into(),
            "mount /sys/fs/cgroup (boot with systemd)".into(),
        );
    }
    if req.cgroup_driver == "systemd" && !facts.systemd {
        add(
            "cgroups",
            "the kubelet configuration asks for the systemd cgroup driver but systemd is not running".into(),
            "boot the host with systemd, or set cgroupDriver: cgroupfs in the KubeletConfiguration".into(),
        );
    }
    if !facts.systemd {
        add(
            "systemd",
            "systemd is not the init system: the runtime, registry and kubelet run as systemd services"
                .into(),
            "install on a host that boots with systemd".into(),
        );
    }
    for module in MODULES {
        if !facts.modules_present.contains(module) && !facts.modules_loadable.contains(module) {
            add(
                "modules",
                format!("kernel module '{module}' is neither loaded, built in nor loadable"),
                format!("install the kernel's modules package so that 'modprobe {module}' works"),
            );
        }
    }
    for sysctl in SYSCTLS {
        let module_will_load =
            sysctl.starts_with("net.bridge.") && facts.modules_loadable.contains("br_netfilter");
        if !facts.sysctls.contains_key(sysctl) && !module_will_load {
            add(
                "sysctl",
                format!("sysctl '{sysctl}' does not exist on this kernel"),
                "load br_netfilter ('modprobe br_netfilter'); kubeferry sets the value itself".into(),
            );
        }
    }
    if facts.swap_kib > 0 {
        add(
            "swap",
            format!(
                "swap is on ({}); the kubelet refuses to run with swap",
                human_bytes(facts.swap_kib * 1024)
            ),
            "run 'swapoff -a' and remove the swap entries from /etc/fstab".into(),
        );
    }
    for port in &req.ports {
        if facts.ports_in_use.contains(port) {
            add(
                &format!("port-{port}"),
                format!("port {port} is in use"),
                format!("stop what listens on it (see 'ss -ltnp sport = :{port}')"),
            );
        }
    }
    for (dir, needed) in &req.disk {
        let free = facts.free_bytes.get(dir).copied().unwrap_or(0);
        if free < *needed {
            add(
                "disk",
                format!(
                    "'{}' has {} free, {} are needed",
                    dir.display(),
                    human_bytes(free),
                    human_bytes(*needed)
                ),
                "free some space, or choose another directory with --rootfs-dir".into(),
            );
        }
    }
    if facts.memory_mib < req.min_memory_mib {
        add(
            "memory",
            format!("{} MiB of memory, {} MiB are needed", facts.memory_mib, req.min_memory_mib),
            "give the host more memory".into(),
        );
    }
    if facts.cpus < req.min_cpus {
        add(
            "cpu",
            format!("{} CPU, {} are needed", facts.cpus, req.min_cpus),
            "give the host more CPUs".into(),
        );
    }
    if let Err(reason) = check_hostname(&facts.hostname) {
        add(
            "hostname",
            format!("host name '{}' {reason}", facts.hostname),
            "set a lower-case DNS name with 'hostnamectl set-hostname NAME'".into(),
        );
    }
    if !facts.tools_missing.is_empty() {
        let missing: Vec<&str> = facts.tools_missing.iter().map(String::as_str).collect();
        let mut packages: Vec<&str> = missing.iter().map(|t| debian_package(t)).collect();
        packages.dedup();
        add(
            "tools",
            format!("{} not found on the PATH", missing.join(", ")),
            format!("install them (Debian and Ubuntu: apt-get install {})", packages.join(" ")),
        );
    }
    if req.apparmor_profile && facts.apparmor && !facts.apparmor_parser {
        add(
            "apparmor",
            "the kernel enforces AppArmor and docker loads its containers' profile with \
             apparmor_parser, which is not installed: no container would start"
                .into(),
            "install it (Debian and Ubuntu: apt-get install apparmor), or boot with apparmor=0".into(),
        );
    }
    if !facts.default_route && !req.advertise_address_given {
        add(
            "address",
            "the host has no default route, so there is no address for the API server to advertise".into(),
            "pass --advertise-address ADDR, or give the host an address and a default route \
             (e.g. 'ip link add kubeferry0 type dummy; ip addr add 10.0.0.10/24 dev kubeferry0; \
             ip link set kubeferry0 up; ip route add default dev kubeferry0')"
                .into(),
        );
    }
    out
}

/// The Debian package that provides a tool, where its name differs from the tool's.
fn debian_package(tool: &str) -> &str {
    match tool {
        "modprobe" | "lsmod" => "kmod",
        "ip" => "iproute2",
        "ebtables" => "ebtables",
        other => other,
    }
}

/// Drops the findings the operator chose to ignore: names as [`Finding::name`], case-insensitive,
/// or `all`.
pub fn without_ignored(findings: Vec<Finding>, ignore: &[String]) -> Vec<Finding> {
    let ignore: Vec<String> = ignore.iter().map(|n| n.trim().to_ascii_lowercase()).collect();
    if ignore.iter().any(|n| n == "all") {
        return Vec::new();
    }
    findings.into_iter().filter(|f| !ignore.contains(&f.name)).collect()
}

/// `major.minor` of a kernel release such as `6.1.0-18-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// A host name Kubernetes accepts as a node name: RFC 1123 labels, lower case.
fn check_hostname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 253 {
        return Err("is empty or longer than 253 characters");
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("is not a lower-case DNS name (letters, digits and '-', dot-separated)");
        }
    }
    Ok(())
}

impl Facts {
    /// Reads the facts of this host for `req`. Reads only; the ports are tried with a bind that
    /// is released at once.
    pub fn gather(req: &Requirements) -> Facts {
        let uts = nix::sys::utsname::uname().ok();
        let machine = uts.as_ref().map(|u| u.machine().to_string_lossy().into_owned()).unwrap_or_default();
        let kernel_release =
            uts.as_ref().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        let hostname = uts.as_ref().map(|u| u.nodename().to_string_lossy().into_owned()).unwrap_or_default();
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();

        let mut modules_present: BTreeSet<String> = read("/proc/modules")
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        let modules_dir = Path::new("/lib/modules").join(&kernel_release);
        let module_names = |file: &str| -> BTreeSet<String> {
            std::fs::read_to_string(modules_dir.join(file))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split(':').next())
                .filter_map(|p| {
                    Path::new(p).file_name()?.to_str()?.split('.').next().map(|n| n.replace('-', "_"))
                })
                .collect()
        };
        modules_present.extend(module_names("modules.builtin"));
        // Built-in modules show themselves by what they provide.
        if read("/proc/filesystems").lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
            modules_present.insert("overlay".into());
        }
        if Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            modules_present.insert("br_netfilter".into());
        }
        let modules_loadable = module_names("modules.dep");

        let sysctls = SYSCTLS
            .iter()
            .filter_map(|name| {
                let path = format!("/proc/sys/{}", name.replace('.', "/"));
                std::fs::read_to_string(path).ok().map(|v| (name.to_string(), v.trim().to_string()))
            })
            .collect();
        let meminfo = read("/proc/meminfo");
        let meminfo_kib = |key: &str| -> u64 {
            meminfo
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        // Active swap: the Size column (KiB) of every device /proc/swaps lists.
        let swap_kib = read("/proc/swaps")
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
            .sum();
        let cgroups = match nix::sys::statfs::statfs("/sys/fs/cgroup") {
            Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => Cgroups::V2,
            Ok(_)
                if Path::new("/sys/fs/cgroup/memory").exists()
                    || Path::new("/sys/fs/cgroup/cpu").exists() =>
            {
                Cgroups::V1
            }
            _ => Cgroups::None,
        };
        let systemd = read("/proc/1/comm").trim() == "systemd";
        let ports_in_use = req
            .ports
            .iter()
            .copied()
            .filter(|&port| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_err())
            .collect();
        let free_bytes = req.disk.iter().map(|(dir, _)| (dir.clone(), free_bytes(dir))).collect();
        let tools_missing = req.tools.iter().filter(|t| !on_path(t)).cloned().collect();
        let default_route =
            read("/proc/net/route").lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some("00000000"))
                || read("/proc/net/ipv6_route")
                    .lines()
                    .any(|l| l.starts_with("00000000000000000000000000000000 00"));
        let apparmor = read("/sys/module/apparmor/parameters/enabled").starts_with('Y');
        let apparmor_parser = on_path("apparmor_parser")
            || ["/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"].iter().any(|p| Path::new(p).is_file());
        Facts {
            arch: Arch::from_kernel_name(&machine),
            machine,
            kernel_release,
            cgroups,
            systemd,
            modules_present,
            modules_loadable,
            sysctls,
            swap_kib,
            memory_mib: meminfo_kib("MemTotal:") / 1024,
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            hostname,
            ports_in_use,
            free_bytes,
            tools_missing,
            default_route,
            apparmor,
            apparmor_parser,
        }
    }
}

/// Free bytes of the file system that holds `dir`, or of its nearest existing ancestor.
pub fn free_bytes(dir: &Path) -> u64 {
    let mut probe = Some(dir);
    while let Some(p) = probe {
        if let Ok(s) = nix::sys::statvfs::statvfs(p) {
            return s.blocks_available().saturating_mul(s.fragment_size());
        }
        probe = p.parent();
    }
    0
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.join(tool)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_facts() -> Facts {
        Facts {
            arch: Some(Arch::Amd64),
            machine: "x86_64".into(),
            kernel_release: "6.1.0-18-amd64".into(),
            cgroups: Cgroups::V2,
            systemd: true,
            modules_present: ["overlay".to_string()].into(),
            modules_loadable: ["br_netfilter".to_string()].into(),
            sysctls: [("net.ipv4.ip_forward".to_string(), "0".to_string())].into(),
            swap_kib: 0,
            memory_mib: 4096,
            cpus: 2,
            hostname: "node-1".into(),
            ports_in_use: BTreeSet::new(),
            free_bytes: [(PathBuf::from("/var/lib/kubeferry"), 10 << 30)].into(),
            tools_missing: BTreeSet::new(),
            default_route: true,
            apparmor: true,
            apparmor_parser: true,
        }
    }

    fn requirements() -> Requirements {
        Requirements {
            arch: Arch::Amd64,
            cgroup_driver: "systemd".into(),
            ports: vec![6443, 10250, 5000],
            disk: vec![(PathBuf::from("/var/lib/kubeferry"), 3 << 30)],
            tools: vec!["iptables".into(), "conntrack".into()],
            advertise_address_given: false,
            min_memory_mib: MIN_MEMORY_MIB,
            min_cpus: MIN_CPUS,
            apparmor_profile: false,
        }
    }

    #[test]
    fn a_good_host_has_no_findings() {
        assert_eq!(check(&good_facts(), &requirements()), vec![]);
    }

    #[test]
    fn every_finding_is_reported_at_once_with_its_remedy() {
        let mut f = good_facts();
        f.arch = Some(Arch::Arm64);
        f.machine = "aarch64".into();
        f.kernel_release = "4.9.0-8-amd64".into();
        f.systemd = false;
        f.modules_loadable.clear();
        f.swap_kib = 2 << 20;
        f.ports_in_use = [6443].into();
        f.free_bytes = [(PathBuf::from("/var/lib/kubeferry"), 1 << 30)].into();
        f.memory_mib = 1024;
        f.cpus = 1;
        f.hostname = "Node_1".into();
        f.tools_missing = ["conntrack".to_string(), "modprobe".to_string()].into();
        f.default_route = false;
        let text: Vec<String> = check(&f, &requirements()).iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "[arch] this bundle is for amd64 but the host is aarch64\n      fix: use the bundle built for arm64",
                "[kernel] kernel 4.9 is older than 4.15, the oldest supported\n      fix: upgrade the kernel",
                "[cgroups] the kubelet configuration asks for the systemd cgroup driver but systemd is not running\n      fix: boot the host with systemd, or set cgroupDriver: cgroupfs in the KubeletConfiguration",
                "[systemd] systemd is not the init system: the runtime, registry and kubelet run as systemd services\n      fix: install on a host that boots with systemd",
                "[modules] kernel module 'br_netfilter' is neither loaded, built in nor loadable\n      fix: install the kernel's modules package so that 'modprobe br_netfilter' works",
                "[sysctl] sysctl 'net.bridge.bridge-nf-call-iptables' does not exist on this kernel\n      fix: load br_netfilter ('modprobe br_netfilter'); kubeferry sets the value itself",
                "[swap] swap is on (2.0 GiB); the kubelet refuses to run with swap\n      fix: run 'swapoff -a' and remove the swap entries from /etc/fstab",
                "[port-6443] port 6443 is in use\n      fix: stop what listens on it (see 'ss -ltnp sport = :6443')",
                "[disk] '/var/lib/kubeferry' has 1.0 GiB free, 3.0 GiB are needed\n      fix: free some space, or choose another directory with --rootfs-dir",
                "[memory] 1024 MiB of memory, 1700 MiB are needed\n      fix: give the host more memory",
                "[cpu] 1 CPU, 2 are needed\n      fix: give the host more CPUs",
                "[hostname] host name 'Node_1' is not a lower-case DNS name (letters, digits and '-', dot-separated)\n      fix: set a lower-case DNS name with 'hostnamectl set-hostname NAME'",
                "[tools] conntrack, modprobe not found on the PATH\n      fix: install them (Debian and Ubuntu: apt-get install conntrack kmod)",
                "[address] the host has no default route, so there is no address for the API server to advertise\n      fix: pass --advertise-address ADDR, or give the host an address and a default route (e.g. 'ip link add kubeferry0 type dummy; ip addr add 10.0.0.10/24 dev kubeferry0; ip link set kubeferry0 up; ip route add default dev kubeferry0')",
            ]
        );
    }

    #[test]
    fn ignored_findings_are_dropped_by_name_or_all() {
        let mut f = good_facts();
        f.swap_kib = 1024;
        f.ports_in_use = [6443, 10250].into();
        let found = check(&f, &requirements());
        let names: Vec<String> = without_ignored(found.clone(), &["Swap".into(), "port-6443".into()])
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["port-10250"]);
        assert!(without_ignored(found, &["all".into()]).is_empty());
    }

    #[test]
    fn an_advertise_address_replaces_the_default_route() {
        let mut f = good_facts();
        f.default_route = false;
        let mut req = requirements();
        req.advertise_address_given = true;
        assert_eq!(check(&f, &req), vec![]);
    }

    #[test]
    fn docker_under_apparmor_needs_apparmor_parser() {
        let mut f = good_facts();
        f.apparmor_parser = false;
        let mut req = requirements();
        // containerd runs its containers without a profile it must load.
        assert_eq!(check(&f, &req), vec![]);
        req.apparmor_profile = true;
        assert_eq!(
            check(&f, &req),
            vec![Finding {
                name: "apparmor".into(),
                problem: "the kernel enforces AppArmor and docker loads its containers' profile with \
                          apparmor_parser, which is not installed: no container would start"
                    .into(),
                remedy: "install it (Debian and Ubuntu: apt-get install apparmor), or boot with apparmor=0"
                    .into(),
            }]
        );
        f.apparmor = false;
        assert_eq!(check(&f, &req), vec![]);
        f.apparmor = true;
        f.apparmor_parser = true;
        assert_eq!(check(&f, &req), vec![]);
    }

    #[test]
    fn gathers_the_facts_of_this_machine() {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let busy = listener.local_addr().unwrap().port();
        let mut req = requirements();
        req.ports = vec![busy];
        req.tools = vec!["sh".into(), "kubeferry-no-such-tool".into()];
        req.disk = vec![(std::env::temp_dir().join("kubeferry-not-yet/deeper"), 1)];
        let f = Facts::gather(&req);
        assert_eq!(f.arch, Arch::current());
        assert!(f.cpus >= 1 && f.memory_mib > 0);
        assert_eq!(f.ports_in_use, [busy].into());
        assert_eq!(f.tools_missing, ["kubeferry-no-such-tool".to_string()].into());
        assert!(f.free_bytes.values().all(|&b| b > 0), "free space of the nearest existing ancestor");
        assert!(kernel_version(&f.kernel_release).is_some());
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(kernel_version("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(kernel_version("garbage"), None);
    }
}
