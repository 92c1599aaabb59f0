//! Support for the workspace integration tests: the real `kubeferry` binary and the real
//! static stub, built on first use; fixture rootfs trees; keys; and a way to compare trees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod images;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn must(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("could not run {what}: {e}"));
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The `kubeferry` binary, built once per test process.
pub fn kubeferry_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        must(
            cargo().args(["build", "--quiet", "-p", "kubeferry-builder", "--bin", "kubeferry"]),
            "cargo build",
        );
        root().join("target/debug/kubeferry")
    })
}

/// The static stub for amd64, built once per test process by `packaging/build-stub.sh`.
pub fn stub_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_stub("amd64"))
}

/// The static stub for arm64, cross-built with Debian's toolchain by `packaging/build-stub.sh`
/// (which installs it with `packaging/cross-setup.sh` when run as root).
pub fn arm64_stub_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_stub("arm64"))
}

fn build_stub(arch: &str) -> PathBuf {
    must(Command::new(root().join("packaging/build-stub.sh")).arg(arch), "packaging/build-stub.sh");
    root().join(format!("target/stubs/kubeferry-stub-{arch}"))
}

/// A `kubeferry` command with the stub passed explicitly.
pub fn kubeferry() -> Command {
    let mut cmd = Command::new(kubeferry_bin());
    cmd.env("SOURCE_DATE_EPOCH", "1700000000").env_remove("KUBEFERRY_STUB_DIR");
    cmd
}

/// Runs a command and returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("the command runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command that must succeed and returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let (code, stdout, stderr) = run(cmd);
    assert_eq!(code, 0, "command failed: {cmd:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

/// A key pair made by `kubeferry keygen` in `dir`: (private, public).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let prefix = dir.join(name);
    ok(kubeferry().arg("keygen").arg("--out").arg(&prefix));
    (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")))
}

/// Writes a file, creating its parents.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough for zstd.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A CloudRootfs tree like a real cluster image's, with real executables, a gzip'd runtime
/// tarball, registry blobs, YAML, scripts, links, and amd64/arm64 overlay folders.
pub fn fixture_rootfs(dir: &Path) -> PathBuf {
    let r = dir.join("rootfs");
    for bin in ["/usr/bin/env", "/usr/bin/true"] {
        let name = Path::new(bin).file_name().unwrap();
        write(&r.join("bin").join(name), fs::read(bin).unwrap());
        fs::set_permissions(r.join("bin").join(name), fs::Permissions::from_mode(0o755)).unwrap();
    }
    // A tarball in cri/, made by the real tar and gzip.
    fs::create_dir_all(r.join("cri")).unwrap();
    let stage = dir.join("cri-stage");
    write(&stage.join("bin/containerd"), noise(300_000, 7));
    write(&stage.join("bin/runc"), noise(100_000, 8));
    must(
        Command::new("tar").arg("-czf").arg(r.join("cri/containerd.tar.gz")).arg("-C").arg(&stage).arg("bin"),
        "tar",
    );
    write(
        &r.join("etc/kubeadm.yml"),
        "apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\n---\n\
         apiVersion: kubeadm.k8s.io/v1beta2\nkind: ClusterConfiguration\nkubernetesVersion: v1.20.2\n\
         imageRepository: sea.hub:5000\n",
    );
    write(
        &r.join("etc/registry_config.yml"),
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n",
    );
    write(&r.join("scripts/init.sh"), "#!/bin/bash\nset -e\necho init\n");
    fs::set_permissions(r.join("scripts/init.sh"), fs::Permissions::from_mode(0o775)).unwrap();
    write(&r.join("manifests/imageList"), "# images\nsea.hub:5000/pause:3.2\n");
    write(&r.join("statics/empty"), "");
    fs::create_dir_all(r.join("charts")).unwrap();
    let blobs = r.join("registry/docker/registry/v2/blobs/sha256");
    let layer = gzip(&noise(200_000, 9));
    write(&blobs.join("ab/abcdef/data"), &layer);
    write(&blobs.join("cd/cdef01/data"), "{\"schemaVersion\":2}");
    write(
        &r.join("registry/docker/registry/v2/repositories/pause/_layers/sha256/abcdef/link"),
        "sha256:abcdef",
    );
    std::os::unix::fs::symlink("../bin/env", r.join("scripts/env")).unwrap();
    std::os::unix::fs::symlink("init.sh", r.join("scripts/init")).unwrap();
    fs::hard_link(r.join("bin/true"), r.join("bin/true-again")).unwrap();
    write(&r.join("amd64/bin/arch-tool"), "amd64 tool");
    write(&r.join("arm64/bin/arch-tool"), "arm64 tool");
    write(&r.join("amd64/etc/kubeadm.yml"), fs::read(r.join("etc/kubeadm.yml")).unwrap());
    r
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out.stdout
}

/// What a tree holds, for comparing two trees: path → description (type, mode, content
/// digest or link target, and which paths share an inode).
/// What differs between two [`snapshot`]s, a line per path (`- PATH: BEFORE`, `+ PATH: NEW`);
/// empty when they are the same.
pub fn snapshot_diff(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> String {
    before
        .iter()
        .filter(|(path, desc)| after.get(*path) != Some(desc))
        .map(|(path, desc)| format!("- {path}: {desc}"))
        .chain(
            after.iter().filter(|(path, _)| !before.contains_key(*path)).map(|(p, d)| format!("+ {p}: {d}")),
        )
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    walk(dir, dir, &mut out, &mut inodes);
    out
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>, inodes: &mut BTreeMap<u64, String>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        let rel = path.strip_prefix(base).unwrap().to_string_lossy().into_owned();
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let desc = if meta.is_dir() {
            walk(base, &path, out, inodes);
            format!("dir {mode:o}")
        } else if meta.file_type().is_symlink() {
            format!("symlink -> {}", fs::read_link(&path).unwrap().display())
        } else {
            let digest = kubeferry_installer::manifest::Digest::of(&fs::read(&path).unwrap());
            let shared = match inodes.get(&meta.ino()) {
                Some(first) => format!(" (same inode as {first})"),
                None => {
                    inodes.insert(meta.ino(), rel.clone());
                    String::new()
                }
            };
            format!("file {mode:o} {digest}{shared}")
        };
        out.insert(rel, desc);
    }
}

/// The names in a directory, sorted: to check that nothing was left behind.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The example rootfs of `packaging/example-rootfs/mini.sh` (Debian's containerd, runc,
/// conntrack, socat for amd64 and arm64), made once per test process.
pub fn example_rootfs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = root().join("target/test-example-rootfs");
        must(Command::new(root().join("packaging/example-rootfs/mini.sh")).arg(&dir), "mini.sh");
        dir
    })
}

/// `cri/docker.tar.gz` in docker's static bundle layout, made of Debian's docker.io,
/// containerd, runc and tini by packaging/example-rootfs/docker-tarball.sh (once per run).
pub fn docker_tarball() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let file = root().join("target/test-docker/docker.tar.gz");
        must(
            Command::new(root().join("packaging/example-rootfs/docker-tarball.sh")).arg(&file),
            "docker-tarball.sh",
        );
        file
    })
}

/// Pulls `reference` with the `docker` the install put below `host`: refused without credentials,
/// then pulled with the kubelet's `/var/lib/kubelet/config.json` as the client's configuration
/// (copied into `client`). Gives `docker images` as "REPOSITORY:TAG DIGEST" lines.
pub fn docker_pull_with_kubelet_credentials(host: &RootedHost, client: &Path, reference: &str) -> String {
    use kubeferry_installer::docker::docker;
    let (code, _, err) = run(docker(host).args(["pull", reference]));
    assert_ne!(code, 0, "pulled without credentials");
    assert!(err.contains("no basic auth credentials") || err.contains("unauthorized"), "{err}");
    fs::create_dir_all(client).unwrap();
    fs::copy(host.root.join("var/lib/kubelet/config.json"), client.join("config.json")).unwrap();
    ok(docker(host).env("DOCKER_CONFIG", client).args(["pull", reference]));
    ok(docker(host).args(["images", "--digests", "--format", "{{.Repository}}:{{.Tag}} {{.Digest}}"]))
}

/// Removes, when dropped, what dockerd 20.10 writes outside its configured directories
/// whatever its configuration says (its trust key `/etc/docker/key.json`, its plugin
/// directory `/run/docker/plugins`, the parent cgroup `docker` of its containers in every
/// controller), unless they were there before.
#[derive(Debug)]
pub struct DockerdFiles {
    key_json_before: bool,
    run_docker_before: bool,
    cgroups_before: Vec<PathBuf>,
}

/// `/sys/fs/cgroup/*/docker` (cgroup v1) and `/sys/fs/cgroup/docker` (v2) that exist.
fn docker_cgroups() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|controller| controller.path().join("docker"))
        .collect();
    dirs.push(PathBuf::from("/sys/fs/cgroup/docker"));
    dirs.retain(|d| d.is_dir());
    dirs
}

impl DockerdFiles {
    pub fn new() -> DockerdFiles {
        DockerdFiles {
            key_json_before: Path::new("/etc/docker/key.json").exists(),
            run_docker_before: Path::new("/run/docker").exists(),
            cgroups_before: docker_cgroups(),
        }
    }
}

impl Default for DockerdFiles {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DockerdFiles {
    fn drop(&mut self) {
        if !self.key_json_before {
            let _ = fs::remove_file("/etc/docker/key.json");
        }
        if !self.run_docker_before {
            let _ = fs::remove_dir("/run/docker/plugins");
            let _ = fs::remove_dir("/run/docker");
        }
        // Empty once docker removed its containers: a cgroup directory goes with rmdir.
        for dir in docker_cgroups().into_iter().filter(|d| !self.cgroups_before.contains(d)) {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Whether `child` ended at once because exec found its program busy ("Text file busy"):
/// watched for at most 300 ms, after which a program that runs has got past its exec.
fn exec_was_busy(child: &mut std::process::Child, log: &Path) -> bool {
    for _ in 0..30 {
        if child.try_wait().unwrap().is_some() {
            return fs::read_to_string(log).unwrap_or_default().contains("Text file busy");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// A target host kept below a root directory, for tests. Paths map below the root; commands
/// run as they are. It stands in for systemd and for the kernel, and only for them: starting a
/// unit runs the unit file's `ExecStart` (as the install wrote it) in a private mount
/// namespace, with its output in `ROOT/var/log/UNIT.log`, and stopping it kills that process;
/// its `Environment=` lines are its environment; enabling a unit is recorded in
/// [`RootedHost::enabled`]; loading a module or applying sysctls
/// is recorded in [`RootedHost::kernel`] and not done, since it would change the machine that
/// runs the tests.
#[derive(Debug)]
pub struct RootedHost {
    /// The root directory.
    pub root: PathBuf,
    log_path: PathBuf,
    services: std::sync::Mutex<Vec<(String, std::process::Child)>>,
    /// Units enabled (not started), for the tests to look at.
    pub enabled: std::sync::Mutex<Vec<String>>,
    /// Kernel changes asked for (`modprobe NAME`, `sysctl -p FILE`): recorded, not made.
    pub kernel: std::sync::Mutex<Vec<String>>,
}

impl RootedHost {
    /// A host below `root` (created).
    pub fn new(root: &Path) -> RootedHost {
        fs::create_dir_all(root).unwrap();
        fs::create_dir_all(Self::logs_of(root)).unwrap();
        RootedHost {
            root: root.to_path_buf(),
            log_path: Self::logs_of(root).join("kubeferry-install.log"),
            services: Default::default(),
            enabled: Default::default(),
            kernel: Default::default(),
        }
    }

    /// The test host's own logs (the install's, the services' output) are kept beside the root,
    /// so that the root holds only what the code under test wrote.
    fn logs_of(root: &Path) -> PathBuf {
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        root.with_file_name(format!("{name}.logs"))
    }

    /// The install log.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A service's output.
    pub fn service_log(&self, unit: &str) -> String {
        fs::read_to_string(Self::logs_of(&self.root).join(format!("{unit}.log"))).unwrap_or_default()
    }
}

impl kubeferry_installer::host::Host for RootedHost {
    fn path(&self, target: &Path) -> PathBuf {
        self.root.join(target.strip_prefix("/").unwrap_or(target))
    }

    fn run(&self, command: &mut Command) -> kubeferry_installer::Result<String> {
        kubeferry_installer::host::run_logged(self, command, &self.log_path)
    }

    fn run_watched(
        &self,
        command: &mut Command,
        every: std::time::Duration,
        watch: &mut dyn FnMut(kubeferry_installer::host::Watch<'_>),
    ) -> kubeferry_installer::Result<String> {
        kubeferry_installer::host::run_logged_watched(self, command, &self.log_path, every, watch)
    }

    fn start_service(&self, unit: &str) -> kubeferry_installer::Result<()> {
        let file = self.path(&Path::new("/etc/systemd/system").join(unit));
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("no unit '{}': {e}", file.display()));
        let exec = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("no ExecStart in '{}'", file.display()));
        let argv: Vec<&str> = exec.split_whitespace().collect();
        // `Environment=NAME=VALUE` lines, as systemd passes them (one assignment a line).
        let env: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Environment="))
            .map(|assignment| assignment.trim_matches('"'))
            .filter_map(|assignment| assignment.split_once('='))
            .collect();
        let log = Self::logs_of(&self.root).join(format!("{unit}.log"));
        // The program was written a moment ago: a process forked meanwhile by another test's
        // thread holds the written file's descriptor until it execs, and exec fails with "Text
        // file busy" (ETXTBSY) until then. systemd, a process of its own, never meets this.
        let mut attempt = 0;
        let child = loop {
            let out = fs::File::create(&log).unwrap();
            let mut child = Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--"])
                .args(&argv)
                .envs(env.iter().copied())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("could not start {unit}: {e}"));
            attempt += 1;
            if attempt == 10 || !exec_was_busy(&mut child, &log) {
                break child;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        kubeferry_installer::host::Host::log(self, &format!("started {unit}: {exec}"));
        self.services.lock().unwrap().push((unit.to_string(), child));
        Ok(())
    }

    fn stop_service(&self, unit: &str) -> kubeferry_installer::Result<()> {
        let mut services = self.services.lock().unwrap();
        for (_, child) in services.iter_mut().filter(|(name, _)| name == unit) {
            stop(child);
        }
        services.retain(|(name, _)| name != unit);
        Ok(())
    }

    fn enable_service(&self, unit: &str) -> kubeferry_installer::Result<()> {
        kubeferry_installer::host::Host::log(self, &format!("enabled {unit}"));
        self.enabled.lock().unwrap().push(unit.to_string());
        Ok(())
    }

    fn service_active(&self, unit: &str) -> bool {
        self.services
            .lock()
            .unwrap()
            .iter_mut()
            .any(|(name, child)| name == unit && matches!(child.try_wait(), Ok(None)))
    }

    fn reload_units(&self) -> kubeferry_installer::Result<()> {
        Ok(())
    }

    fn load_module(&self, name: &str) -> kubeferry_installer::Result<()> {
        self.kernel.lock().unwrap().push(format!("modprobe {name}"));
        Ok(())
    }

    fn apply_sysctls(&self, file: &Path) -> kubeferry_installer::Result<()> {
        self.kernel.lock().unwrap().push(format!("sysctl -p {}", file.display()));
        Ok(())
    }

    fn log(&self, line: &str) {
        use std::io::Write;
        let mut file = fs::OpenOptions::new().create(true).append(true).open(&self.log_path).unwrap();
        writeln!(file, "{line}").unwrap();
    }
}

impl Drop for RootedHost {
    fn drop(&mut self) {
        for (_, child) in self.services.lock().unwrap().iter_mut().rev() {
            stop(child);
        }
    }
}

/// Stops a service's process as systemd does: SIGTERM, then SIGKILL if it has not ended
/// within 10 s (dockerd stops the containerd it started only when it ends this way).
fn stop(child: &mut std::process::Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        for _ in 0..100 {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Makes `root` look like a host before anything is installed: the system's directories, an
/// `/etc/hosts` with the loopback names.
pub fn host_skeleton(root: &Path) {
    for dir in kubeferry_installer::uninstall::SYSTEM_DIRS {
        fs::create_dir_all(root.join(dir.trim_start_matches('/'))).unwrap();
    }
    write(&root.join("etc/hosts"), "127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
}

/// A signed bundle of `rootfs` named `example` (stub for amd64) built in `dir`, opened and
/// verified.
pub fn open_bundle(
    dir: &Path,
    rootfs: &Path,
) -> (kubeferry_installer::reader::Bundle, kubeferry_installer::reader::Verified) {
    use kubeferry_installer::reader::Bundle;
    use kubeferry_installer::trust::Trust;
    let (key, public) = keygen(dir, "release");
    let out = ok(kubeferry()
        .args([
            "build",
            "--quiet",
            "--no-pull",
            "--allow-missing-images",
            "--name",
            "example",
            "--version",
            "v1.20.2",
            "-o",
        ])
        .arg(dir.join("dist"))
        .arg("--key")
        .arg(&key)
        .arg(format!("--stub=amd64={}", stub_bin().display()))
        .arg(rootfs));
    let bundle = Bundle::open(Path::new(out.trim())).unwrap();
    let verified = bundle.authenticate(&Trust::from_sources(&[public], &[], false, false).unwrap()).unwrap();
    (bundle, verified)
}

/// STAND-IN kubeadm, for tests only. The real kubeadm 1.20 cannot be run here (it is being built
/// from Debian's source for the air-gapped VM test, which is where the real end-to-end proof
/// belongs): this shell script records how it was called and answers as kubeadm does, no more.
/// It finds the test root from its own path (`ROOT/usr/bin/kubeadm`) and writes its record in
/// `ROOT.logs/` beside it (where [`RootedHost`] keeps its logs), so the root holds only what a
/// real kubeadm would write:
/// - `init --config FILE ...`: records the arguments and a copy of FILE; writes a fake
///   `etc/kubernetes/admin.conf`, `pki/ca.crt`, a static pod manifest, `var/lib/etcd/member/`
///   and `var/lib/kubelet/config.yaml`; prints kubeadm 1.20's closing text with its two join
///   commands. Exits 1 when FILE contains `standin-fail`; when it contains `standin-slow`, prints
///   a line and waits 2.5 s before it goes on, as a control plane coming up does.
/// - `join --config FILE ...`: records; writes a fake `kubelet.conf`, `pki/ca.crt` and kubelet
///   configuration. Exits 1, once, when `ROOT.logs/standin-fail-join-once` exists (and removes it).
/// - `reset -f`: records; deletes what `init` wrote, as kubeadm reset does (pki and etcd's data
///   too).
/// - `version -o short`: `v1.20.2`.
pub const STANDIN_KUBEADM: &str = r#"#!/bin/sh
# STAND-IN kubeadm for kubeferry's tests: not Kubernetes. See kubeferry_tests::STANDIN_KUBEADM.
set -e
root=$(cd "$(dirname "$0")/../.." && pwd)
logs="$root.logs"
mkdir -p "$logs"
echo "kubeadm $*" >>"$logs/standin-calls"
case "$1" in
  init)
    config=""
    for arg in "$@"; do
      case "$prev" in --config) config="$arg" ;; esac
      prev="$arg"
    done
    cp "$config" "$logs/kubeadm-init.yaml"
    if grep -q standin-slow "$config"; then
      echo "[wait-control-plane] Waiting for the kubelet to boot up the control plane (stand-in: 2.5 s)"
      sleep 2.5
    fi
    if grep -q standin-fail "$config"; then
      echo "error execution phase wait-control-plane: couldn't initialize a Kubernetes cluster" >&2
      exit 1
    fi
    mkdir -p "$root/etc/kubernetes/pki" "$root/etc/kubernetes/manifests" "$root/var/lib/etcd/member" "$root/var/lib/kubelet"
    printf 'apiVersion: v1\nkind: Config\nclusters: []\n# stand-in admin.conf\n' >"$root/etc/kubernetes/admin.conf"
    echo "stand-in CA" >"$root/etc/kubernetes/pki/ca.crt"
    echo "kind: Pod" >"$root/etc/kubernetes/manifests/kube-apiserver.yaml"
    echo "stand-in etcd data" >"$root/var/lib/etcd/member/snap"
    echo "kind: KubeletConfiguration" >"$root/var/lib/kubelet/config.yaml"
    cat <<'OUT'
[init] Using Kubernetes version: v1.20.2
[addons] Applied essential addon: kube-proxy

Your Kubernetes control-plane has initialized successfully!

To start using your cluster, you need to run the following as a regular user:

  mkdir -p $HOME/.kube
  sudo cp -i /etc/kubernetes/admin.conf $HOME/.kube/config
  sudo chown $(id -u):$(id -g) $HOME/.kube/config

You can now join any number of the control-plane node running the following command on each as root:

  kubeadm join 10.0.0.10:6443 --token abcdef.0123456789abcdef \
    --discovery-token-ca-cert-hash sha256:2f1b5aa0c4a14a2e4a1f4b5c6d7e8f90112233445566778899aabbccddeeff00 \
    --control-plane --certificate-key 0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff1

Please note that the certificate-key gives access to cluster sensitive data, keep it secret!

Then you can join any number of worker nodes by running the following on each as root:

kubeadm join 10.0.0.10:6443 --token abcdef.0123456789abcdef \
    --discovery-token-ca-cert-hash sha256:2f1b5aa0c4a14a2e4a1f4b5c6d7e8f90112233445566778899aabbccddeeff00 
OUT
    ;;
  join)
    config=""
    for arg in "$@"; do
      case "$prev" in --config) config="$arg" ;; esac
      prev="$arg"
    done
    cp "$config" "$logs/kubeadm-join.yaml"
    if [ -e "$logs/standin-fail-join-once" ]; then
      rm "$logs/standin-fail-join-once"
      echo "error execution phase kubelet-start: timed out waiting for the condition" >&2
      exit 1
    fi
    mkdir -p "$root/etc/kubernetes/pki" "$root/var/lib/kubelet"
    printf 'apiVersion: v1\nkind: Config\n# stand-in kubelet.conf\n' >"$root/etc/kubernetes/kubelet.conf"
    echo "stand-in CA" >"$root/etc/kubernetes/pki/ca.crt"
    echo "kind: KubeletConfiguration" >"$root/var/lib/kubelet/config.yaml"
    echo "This node has joined the cluster (stand-in)"
    ;;
  reset)
    rm -rf "$root/etc/kubernetes/manifests" "$root/etc/kubernetes/pki" "$root/var/lib/etcd"
    rm -f "$root/etc/kubernetes/admin.conf" "$root/etc/kubernetes/kubelet.conf"
    rm -rf "$root/var/lib/kubelet/"*
    echo "[reset] stand-in reset done"
    ;;
  version) echo "v1.20.2" ;;
  *) echo "stand-in kubeadm: '$1' is not part of the stand-in" >&2; exit 1 ;;
esac
"#;

/// STAND-IN kubectl, for tests only (see [`STANDIN_KUBEADM`] for why): records each call with
/// its `KUBECONFIG` and working directory in `ROOT.logs/standin-calls`, and for `apply -f FILE`
/// a line naming FILE's first `name:`. Exits 1 for a file that contains `standin-fail`.
pub const STANDIN_KUBECTL: &str = r#"#!/bin/sh
# STAND-IN kubectl for kubeferry's tests: not Kubernetes. See kubeferry_tests::STANDIN_KUBECTL.
root=$(cd "$(dirname "$0")/../.." && pwd)
logs="$root.logs"
mkdir -p "$logs"
echo "kubectl $* (KUBECONFIG=$KUBECONFIG, in $(pwd))" >>"$logs/standin-calls"
prev=""
for arg in "$@"; do
  if [ "$prev" = "-f" ]; then
    if grep -q standin-fail "$arg"; then echo "error: stand-in refuses $arg" >&2; exit 1; fi
    echo "applied $(basename "$arg")"
  fi
  prev="$arg"
done
"#;

/// STAND-IN kubelet, for tests only (see [`STANDIN_KUBEADM`] for why): it only says its
/// version; the tests never start it.
pub const STANDIN_KUBELET: &str =
    "#!/bin/sh\n# STAND-IN kubelet for kubeferry's tests.\necho \"Kubernetes v1.20.2\"\n";

/// The example rootfs with the STAND-IN kubeadm, kubelet and kubectl in `bin/` (see
/// [`STANDIN_KUBEADM`]), two manifests and a Kubefile `CMD`, copied into `dir/rootfs`.
pub fn kubernetes_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    must(Command::new("cp").arg("-a").arg(example_rootfs()).arg(&rootfs), "cp -a");
    for (name, text) in
        [("kubeadm", STANDIN_KUBEADM), ("kubectl", STANDIN_KUBECTL), ("kubelet", STANDIN_KUBELET)]
    {
        let path = rootfs.join("bin").join(name);
        write(&path, text);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    write(
        &rootfs.join("manifests/10-namespace.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: edge\n",
    );
    write(
        &rootfs.join("manifests/app/20-config.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: edge\n",
    );
    let kubefile = fs::read_to_string(rootfs.join("Kubefile")).unwrap();
    write(
        &rootfs.join("Kubefile"),
        kubefile + "CMD [\"kubectl get nodes\", \"kubectl apply -f manifests/10-namespace.yaml\"]\n",
    );
    rootfs
}
