//! Real images for tests: made as an OCI image layout, pushed by skopeo into Debian's
//! docker-registry (docker distribution 2.8), whose storage directory then holds them as a
//! cluster image's registry/ does.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kubeferry_installer::registry;
use sha2::{Digest as _, Sha256};

pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Fails with the packages to install when a tool is missing.
pub fn require_tools() {
    let skopeo = Command::new("skopeo").arg("--version").output().is_ok_and(|o| o.status.success());
    let registry = Path::new(DOCKER_REGISTRY).is_file();
    assert!(
        skopeo && registry,
        "the registry tests need skopeo and {DOCKER_REGISTRY} (found skopeo: {skopeo}, docker-registry: \
         {registry}): apt-get install -y docker-registry skopeo"
    );
}

/// A child process killed and reaped when dropped.
#[derive(Debug)]
pub struct Running {
    pub child: Child,
    pub log: PathBuf,
}

impl Running {
    /// The process's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's docker-registry on a free 127.0.0.1 port, storing under `storage`, ready.
pub fn docker_registry(dir: &Path, storage: &Path) -> (Running, SocketAddr) {
    docker_registry_with(dir, storage, "")
}

/// docker-registry with more configuration (YAML at the top level, such as an `auth:` section).
pub fn docker_registry_with(dir: &Path, storage: &Path, extra: &str) -> (Running, SocketAddr) {
    let addr = free_addr();
    let config = dir.join("docker-registry.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: false\nhttp:\n  addr: {addr}\n{extra}",
            storage.display()
        ),
    )
    .unwrap();
    let log = dir.join("docker-registry.log");
    let child = Command::new(DOCKER_REGISTRY)
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(dir.join("docker-registry.err")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {DOCKER_REGISTRY}: {e}"));
    let running = Running { child, log: dir.join("docker-registry.err") };
    // Our readiness poll, against the real distribution.
    if let Err(e) = registry::wait_ready(addr, &addr.to_string(), None, Duration::from_secs(20)) {
        panic!("docker-registry did not start: {e}\n{}", running.log());
    }
    (running, addr)
}

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A blob written into an OCI layout.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub size: usize,
}

pub fn put(layout: &Path, bytes: &[u8]) -> Blob {
    let digest = sha256(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(digest.strip_prefix("sha256:").unwrap()), bytes).unwrap();
    Blob { digest, size: bytes.len() }
}

/// A gzipped tar of `files`, and its diff ID (the digest of the tar).
pub fn layer(files: &[(&str, &[u8])], level: flate2::Compression) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        if let Some((parent, _)) = path.rsplit_once('/') {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_mtime(0);
            header.set_size(0);
            header.set_cksum();
            tar.append_data(&mut header, format!("{parent}/"), std::io::empty()).unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        header.set_cksum();
        tar.append_data(&mut header, path, *data).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), level);
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), sha256(&tar))
}

/// One single-platform image in an OCI layout.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest: Blob,
    pub config: Blob,
    pub layer: Blob,
}

pub fn image(layout: &Path, arch: &str, files: &[(&str, &[u8])], level: flate2::Compression) -> Image {
    let (gz, diff_id) = layer(files, level);
    let layer = put(layout, &gz);
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config = put(layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}],
    });
    let manifest = put(layout, manifest.to_string().as_bytes());
    Image { manifest, config, layer }
}

pub fn descriptor(media_type: &str, blob: &Blob, extra: serde_json::Value) -> serde_json::Value {
    let mut value = serde_json::json!({"mediaType": media_type, "digest": blob.digest, "size": blob.size});
    value.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    value
}

/// The images made for the tests: `app` (tagged v1 in the layout) and the index `multi`
/// of an amd64 and an arm64 image.
#[derive(Debug, Clone)]
pub struct Made {
    pub app: Image,
    pub index: Blob,
    pub amd64: Image,
    pub arm64: Image,
}

pub fn write_layout(layout: &Path) -> Made {
    let level = flate2::Compression::default();
    let app = image(
        layout,
        "amd64",
        &[("hello.txt", b"hello from kubeferry\n"), ("etc/app.conf", b"port=8080\n")],
        level,
    );
    let amd64 = image(layout, "amd64", &[("arch.txt", b"amd64\n")], level);
    let arm64 = image(layout, "arm64", &[("arch.txt", b"arm64\n")], level);
    let platform = |arch: &str| serde_json::json!({"platform": {"architecture": arch, "os": "linux"}});
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            descriptor(OCI_MANIFEST, &amd64.manifest, platform("amd64")),
            descriptor(OCI_MANIFEST, &arm64.manifest, platform("arm64")),
        ],
    });
    let index = put(layout, index.to_string().as_bytes());
    let name = |tag: &str| serde_json::json!({"annotations": {"org.opencontainers.image.ref.name": tag}});
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [descriptor(OCI_MANIFEST, &app.manifest, name("v1")), descriptor(OCI_INDEX, &index, name("multi"))],
    });
    fs::write(layout.join("index.json"), top.to_string()).unwrap();
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Made { app, index, amd64, arm64 }
}

/// skopeo with a policy of its own, so that the host's configuration plays no part.
pub fn skopeo(dir: &Path) -> Command {
    let policy = dir.join("policy.json");
    if !policy.exists() {
        fs::write(&policy, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    }
    let mut cmd = Command::new("skopeo");
    cmd.arg("--policy").arg(policy).env("REGISTRY_AUTH_FILE", dir.join("auth.json")).stdin(Stdio::null());
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"))
}

pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A storage directory written by docker-registry, the image layout it was pushed from, and
/// the images in it: `library/app:v1`, `library/app:v2` (the same image), `library/multi:v1`.
#[allow(missing_debug_implementations)]
pub struct Pushed {
    pub _dir: tempfile::TempDir,
    pub dir: PathBuf,
    /// The directory that holds docker/registry/v2.
    pub storage: PathBuf,
    pub made: Made,
    /// Seconds skopeo took to copy library/app:v1 out of docker-registry.
    pub docker_registry_copy: Duration,
}

pub fn pushed() -> Pushed {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let layout = dir.join("layout");
    let made = write_layout(&layout);
    let storage = dir.join("storage");
    let (running, addr) = docker_registry(&dir, &storage);
    let push = |src: &str, dest: &str, all: bool| {
        let mut cmd = skopeo(&dir);
        cmd.args(["copy", "--dest-tls-verify=false"]);
        if all {
            cmd.arg("--all");
        }
        ok(cmd.arg(format!("oci:{}:{src}", layout.display())).arg(format!("docker://{addr}/{dest}")));
    };
    push("v1", "library/app:v1", false);
    push("v1", "library/app:v2", false);
    push("multi", "library/multi:v1", true);
    // The probe against the real registry: distribution 2.8 answers 404 for an OCI manifest
    // unless it is in Accept, so this also checks the probe's Accept header.
    registry::wait_ready(addr, &addr.to_string(), Some(("library/app", "v1")), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", running.log()));
    let start = Instant::now();
    ok(skopeo(&dir)
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{addr}/library/app:v1"))
        .arg(format!("oci:{}:v1", dir.join("from-docker-registry").display())));
    let docker_registry_copy = start.elapsed();
    drop(running);
    // No other registry is reachable from here on.
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "docker-registry still answers"
    );
    Pushed { _dir: tmp, dir, storage, made, docker_registry_copy }
}

/// An `auth:` section for [`docker_registry_with`] that asks for `user` and `password`
/// (htpasswd, bcrypt), its file written in `dir`.
pub fn htpasswd(dir: &Path, user: &str, password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("the authentication tests need htpasswd: apt-get install -y apache2-utils");
    assert!(out.status.success());
    let path = dir.join("htpasswd");
    fs::write(&path, &out.stdout).unwrap();
    format!("auth:\n  htpasswd:\n    realm: kubeferry-test\n    path: {}\n", path.display())
}

/// A `docker save` archive (one layer) of a registry image made from Debian's docker-registry:
/// the program, the shared libraries `ldd` names, and distribution's default configuration
/// (storage in /var/lib/registry, port 5000), run as `docker-registry serve CONFIG`. Both
/// `ctr images import` and `docker load` read it.
pub fn registry_image_archive(out: &Path, repo_tag: &str) {
    require_tools();
    let ldd = ok(Command::new("ldd").arg(DOCKER_REGISTRY));
    let mut files: Vec<(String, Vec<u8>, u32)> = vec![(
        DOCKER_REGISTRY.trim_start_matches('/').to_string(),
        fs::read(DOCKER_REGISTRY).unwrap(),
        0o755,
    )];
    for line in ldd.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line.split("=>").last().unwrap().split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            files.push((path.trim_start_matches('/').to_string(), fs::read(path).unwrap(), 0o755));
        }
    }
    let config = "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n\
                  http:\n  addr: :5000\n";
    files.push(("etc/docker/registry/config.yml".into(), config.as_bytes().to_vec(), 0o644));
    files.push(("etc/passwd".into(), b"root:x:0:0:root:/root:/bin/sh\n".to_vec(), 0o644));

    let mut layer = tar::Builder::new(Vec::new());
    let mut dirs: Vec<(String, u32)> = vec![("tmp".into(), 0o1777), ("var/lib/registry".into(), 0o755)];
    for (path, _, _) in &files {
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.push((dir.display().to_string(), 0o755));
            parent = dir.parent();
        }
    }
    dirs.push(("var".into(), 0o755));
    dirs.push(("var/lib".into(), 0o755));
    dirs.sort();
    dirs.dedup_by(|a, b| a.0 == b.0);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h
    };
    for (dir, mode) in &dirs {
        let mut h = header(tar::EntryType::Directory, *mode, 0);
        layer.append_data(&mut h, format!("{dir}/"), std::io::empty()).unwrap();
    }
    for (path, bytes, mode) in &files {
        let mut h = header(tar::EntryType::Regular, *mode, bytes.len() as u64);
        layer.append_data(&mut h, path, bytes.as_slice()).unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let diff_id = sha256(&layer);
    let image_config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": [DOCKER_REGISTRY], "Cmd": ["serve", "/etc/docker/registry/config.yml"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
    .to_string();
    let config_name = format!("{}.json", &sha256(image_config.as_bytes())[7..]);
    let layer_id = &diff_id[7..];
    let manifest = serde_json::json!([{
        "Config": config_name, "RepoTags": [repo_tag], "Layers": [format!("{layer_id}/layer.tar")],
    }])
    .to_string();
    let (name, tag) = repo_tag.rsplit_once(':').unwrap();
    let repositories = serde_json::json!({name: {tag: layer_id}}).to_string();
    let mut archive = tar::Builder::new(fs::File::create(out).unwrap());
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    archive.append_data(&mut h, format!("{layer_id}/"), std::io::empty()).unwrap();
    for (path, bytes) in [
        (format!("{layer_id}/VERSION"), b"1.0".as_slice()),
        (format!("{layer_id}/layer.tar"), layer.as_slice()),
        (config_name.clone(), image_config.as_bytes()),
        ("manifest.json".to_string(), manifest.as_bytes()),
        ("repositories".to_string(), repositories.as_bytes()),
    ] {
        let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        archive.append_data(&mut h, path, bytes).unwrap();
    }
    archive.into_inner().unwrap().flush().unwrap();
}
