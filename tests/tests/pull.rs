//! Pulling images from real registries: Debian's docker-registry (docker distribution 2.8) on
//! 127.0.0.1, with and without htpasswd authentication, holding images made here and pushed
//! with skopeo (a single-platform image under two tags, and an amd64 + arm64 index). What the
//! puller stores is then served by kubeferry's registry and by docker-registry and read back
//! with skopeo.
//!
//! Needs `skopeo`, `docker-registry` and `htpasswd` (`apt-get install -y docker-registry skopeo
//! apache2-utils`). Every process is killed when its guard drops, on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kubeferry_builder::pull::{Counters, Platform, PullError, PullOptions, PulledImage, Puller, auth};
use kubeferry_builder::reference::Reference;
use kubeferry_installer::progress::Silent;
use kubeferry_installer::registry::{self, Registry, RegistryConfig};
use kubeferry_tests::images::*;

/// The images pushed once per test process (docker-registry is stopped; each test serves the
/// storage with its own).
fn fixture() -> &'static Pushed {
    static PUSHED: OnceLock<Pushed> = OnceLock::new();
    PUSHED.get_or_init(pushed)
}

fn reference(addr: SocketAddr, name: &str) -> Reference {
    format!("{addr}/{name}").parse().unwrap()
}

fn options(cache: &Path, platforms: &[&str]) -> PullOptions {
    PullOptions {
        platforms: platforms.iter().map(|p| p.parse().unwrap()).collect(),
        cache_dir: Some(cache.to_path_buf()),
        // No credentials from the host's own docker configuration.
        docker_config: Some(cache.join("no-docker-config.json")),
        attempts: 2,
        backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(10),
        ..PullOptions::default()
    }
}

fn pull(
    options: PullOptions,
    refs: &[Reference],
    out: &Path,
) -> (Result<Vec<PulledImage>, PullError>, Counters) {
    let puller = Puller::new(options).unwrap();
    let result = puller.pull(refs, out, &Silent);
    (result, puller.counters())
}

fn by_name(images: &[PulledImage]) -> BTreeMap<String, &PulledImage> {
    images.iter().map(|i| (i.reference.to_string(), i)).collect()
}

/// Serves a storage directory with kubeferry's registry.
fn serve(storage: &Path) -> Registry {
    let registry = Registry::start(RegistryConfig {
        root: storage.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 4,
        users: None,
    })
    .unwrap();
    registry::wait_ready(registry.local_addr(), "127.0.0.1", None, Duration::from_secs(5)).unwrap();
    registry
}

fn inspect(dir: &Path, image: &str, raw: bool) -> serde_json::Value {
    let mut cmd = skopeo(dir);
    cmd.args(["inspect", "--tls-verify=false"]);
    if raw {
        cmd.arg("--raw");
    }
    serde_json::from_str(&ok(cmd.arg(format!("docker://{image}")))).unwrap()
}

fn blob_bytes(layout: &Path, digest: &str) -> Vec<u8> {
    fs::read(layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())).unwrap()
}

#[test]
fn pulls_tags_digests_and_a_platform_and_the_store_serves_them() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_source, addr) = docker_registry(dir, &f.storage);
    let app_by_digest = reference(addr, &format!("library/app@{}", f.made.app.manifest.digest));
    let refs = [
        reference(addr, "library/app:v1"),
        reference(addr, "library/app:v2"),
        reference(addr, "library/multi:v1"),
        app_by_digest.clone(),
        // The same image spelt differently: pulled once.
        reference(addr, "library/app:v1"),
    ];
    let out = dir.join("out");
    let start = Instant::now();
    let (pulled, counters) = pull(options(&dir.join("cache"), &["amd64"]), &refs, &out);
    let elapsed = start.elapsed();
    let pulled = pulled.unwrap();
    let images = by_name(&pulled);
    assert_eq!(images.len(), 4, "{images:#?}");
    let app = images[&format!("{addr}/library/app:v1")];
    assert_eq!(app.digest, f.made.app.manifest.digest);
    assert_eq!(app.platforms, vec![Platform::linux("amd64")]);
    assert_eq!(app.size as usize, f.made.app.manifest.size + f.made.app.config.size + f.made.app.layer.size);
    assert_eq!(images[&format!("{addr}/library/app:v2")].digest, f.made.app.manifest.digest);
    assert_eq!(images[&app_by_digest.to_string()].digest, f.made.app.manifest.digest);
    // One platform of a tag: the tag names the platform's own manifest.
    let multi = images[&format!("{addr}/library/multi:v1")];
    assert_eq!(multi.digest, f.made.amd64.manifest.digest);
    assert_eq!(multi.platforms, vec![Platform::linux("amd64")]);
    // Each blob fetched once although two tags and a digest name the app.
    assert_eq!(counters.blobs_fetched, 4, "{counters:?}");
    // The references are resolved side by side: the manifest the digest names is fetched, or
    // found in the cache when a tag of the same image brought it first.
    assert_eq!(counters.manifests_fetched + counters.cache_hits, 5, "{counters:?}");
    assert!(counters.cache_hits <= 1, "{counters:?}");
    let bytes = [&f.made.app, &f.made.amd64].iter().map(|i| i.config.size + i.layer.size).sum::<usize>();
    assert!(counters.bytes_fetched as usize > bytes, "{counters:?}");
    eprintln!("pulled 4 references (4 blobs, {bytes} blob bytes) in {elapsed:?}: {counters:?}");

    // The store is a registry: kubeferry's own serves it to skopeo, under the original names.
    let served = serve(&out);
    let at = served.local_addr();
    let listed: Vec<String> =
        registry::list_images(&out).unwrap().iter().map(|i| format!("{}:{}", i.repository, i.tag)).collect();
    assert_eq!(listed, ["library/app:v1", "library/app:v2", "library/multi:v1"]);
    let info = inspect(dir, &format!("{at}/library/multi:v1"), false);
    assert_eq!(info["Architecture"], "amd64");
    let copy = dir.join("copy");
    ok(skopeo(dir)
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{at}/library/app:v1"))
        .arg(format!("oci:{}:v1", copy.display())));
    let layout = f.dir.join("layout");
    assert_eq!(blob_bytes(&copy, &f.made.app.layer.digest), blob_bytes(&layout, &f.made.app.layer.digest));
    assert_eq!(
        blob_bytes(&copy, &f.made.app.manifest.digest),
        blob_bytes(&layout, &f.made.app.manifest.digest),
        "the manifest is stored byte for byte"
    );
    // And so does docker distribution itself.
    let ddir = dir.join("serve-out");
    fs::create_dir_all(&ddir).unwrap();
    let (_served, daddr) = docker_registry(&ddir, &out);
    let raw = inspect(dir, &format!("{daddr}/library/app@{}", f.made.app.manifest.digest), true);
    assert_eq!(raw["layers"][0]["digest"], f.made.app.layer.digest.as_str());
    ok(skopeo(dir)
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{daddr}/library/multi:v1"))
        .arg(format!("oci:{}:multi", copy.display())));
}

#[test]
fn a_second_pull_is_served_from_the_cache() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_source, addr) = docker_registry(dir, &f.storage);
    let refs = [reference(addr, "library/app:v1"), reference(addr, "library/multi:v1")];
    let cache = dir.join("cache");
    let (first, c1) = pull(options(&cache, &["amd64"]), &refs, &dir.join("out1"));
    let first = first.unwrap();
    assert_eq!((c1.blobs_fetched, c1.cache_hits), (4, 0), "{c1:?}");
    let (second, c2) = pull(options(&cache, &["amd64"]), &refs, &dir.join("out2"));
    assert_eq!(second.unwrap(), first);
    // Nothing fetched twice: only the tags were asked again; the 4 blobs and the amd64
    // manifest the index names came from the cache.
    assert_eq!((c2.blobs_fetched, c2.cache_hits, c2.manifests_fetched), (0, 5, 2), "{c2:?}");
    assert_eq!(
        kubeferry_tests::snapshot(&dir.join("out1")).len(),
        kubeferry_tests::snapshot(&dir.join("out2")).len()
    );
    // Another architecture shares the cache: only what it does not share is fetched (the
    // app is a single-platform image, pulled as it is, from the cache).
    let (third, c3) = pull(options(&cache, &["arm64"]), &refs, &dir.join("out3"));
    let third = third.unwrap();
    assert_eq!(third[1].digest, f.made.arm64.manifest.digest);
    assert_eq!(third[0].platforms, vec![Platform::linux("amd64")]);
    assert_eq!((c3.blobs_fetched, c3.cache_hits, c3.manifests_fetched), (2, 2, 3), "{c3:?}");
    eprintln!("first {c1:?}\nsecond {c2:?}\narm64 {c3:?}");
}

/// Records the progress a pull reports: the step's bytes and each part's.
#[derive(Default)]
struct Recorder {
    events: std::sync::Mutex<Vec<(String, usize, u64)>>,
}

impl kubeferry_installer::progress::Reporter for Recorder {
    fn begin(&self, step: &str, total: u64) {
        self.events.lock().unwrap().push((format!("begin {step}"), 0, total));
    }
    fn advance(&self, bytes: u64) {
        self.events.lock().unwrap().push(("advance".into(), 0, bytes));
    }
    fn part_begin(&self, id: usize, label: &str, total: u64) {
        self.events.lock().unwrap().push((format!("part_begin {label}"), id, total));
    }
    fn part_advance(&self, id: usize, bytes: u64) {
        self.events.lock().unwrap().push(("part_advance".into(), id, bytes));
    }
    fn part_end(&self, id: usize) {
        self.events.lock().unwrap().push(("part_end".into(), id, 0));
    }
}

#[test]
fn each_image_reports_its_own_progress() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_source, addr) = docker_registry(dir, &f.storage);
    // v1 and v2 are one image: its blobs are v1's part (the first to need them), v2 has none.
    let refs = [
        reference(addr, "library/app:v1"),
        reference(addr, "library/app:v2"),
        reference(addr, "library/multi:v1"),
    ];
    let recorder = Recorder::default();
    let puller = Puller::new(options(&dir.join("cache"), &["amd64"])).unwrap();
    let pulled = puller.pull(&refs, &dir.join("out"), &recorder).unwrap();
    assert_eq!(pulled.len(), 3);
    let events = recorder.events.into_inner().unwrap();
    let step_total = events.iter().find(|(e, _, _)| e.starts_with("begin fetching")).unwrap().2;
    let advanced: u64 = events.iter().filter(|(e, _, _)| e == "advance").map(|(_, _, n)| n).sum();
    assert_eq!(advanced, step_total);
    let begun: Vec<(&str, usize, u64)> = events
        .iter()
        .filter_map(|(e, id, total)| e.strip_prefix("part_begin ").map(|label| (label, *id, *total)))
        .collect();
    let labels: Vec<&str> = begun.iter().map(|(label, _, _)| *label).collect();
    assert_eq!(labels, [format!("{addr}/library/app:v1"), format!("{addr}/library/multi:v1")], "{events:?}");
    assert_eq!(begun.iter().map(|(_, _, total)| total).sum::<u64>(), step_total);
    for (label, id, total) in begun {
        let part: u64 =
            events.iter().filter(|(e, i, _)| e == "part_advance" && *i == id).map(|(_, _, n)| n).sum();
        assert_eq!(part, total, "{label}");
        let ends = events.iter().filter(|(e, i, _)| e == "part_end" && *i == id).count();
        assert_eq!(ends, 1, "{label} ends once");
    }
}

#[test]
fn several_platforms_keep_the_index() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_source, addr) = docker_registry(dir, &f.storage);
    let multi = reference(addr, "library/multi:v1");
    for (platforms, all) in [(&["amd64", "arm64"][..], false), (&[][..], true)] {
        let out = dir.join(format!("out-{all}"));
        let mut o = options(&dir.join("cache"), platforms);
        o.all_platforms = all;
        let (pulled, _) = pull(o, std::slice::from_ref(&multi), &out);
        let pulled = pulled.unwrap();
        assert_eq!(pulled[0].digest, f.made.index.digest);
        assert_eq!(pulled[0].media_type, OCI_INDEX);
        assert_eq!(pulled[0].platforms, vec![Platform::linux("amd64"), Platform::linux("arm64")]);
        let served = serve(&out);
        let copy = dir.join(format!("copy-{all}"));
        ok(skopeo(dir)
            .args(["copy", "--all", "--src-tls-verify=false"])
            .arg(format!("docker://{}/library/multi:v1", served.local_addr()))
            .arg(format!("oci:{}:multi", copy.display())));
        assert_eq!(
            blob_bytes(&copy, &f.made.arm64.layer.digest),
            blob_bytes(&f.dir.join("layout"), &f.made.arm64.layer.digest)
        );
    }
    // The index by digest, for one platform: the index is kept, as the digest names it.
    let by_digest = reference(addr, &format!("library/multi@{}", f.made.index.digest));
    let (pulled, _) = pull(options(&dir.join("cache"), &["arm64"]), &[by_digest], &dir.join("out-digest"));
    let pulled = pulled.unwrap();
    assert_eq!(
        (pulled[0].digest.as_str(), pulled[0].platforms.clone()),
        (f.made.index.digest.as_str(), vec![Platform::linux("arm64")])
    );
}

#[test]
fn missing_images_and_platforms_are_named() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_source, addr) = docker_registry(dir, &f.storage);
    let cache = dir.join("cache");
    let out = dir.join("out");
    let (result, _) = pull(options(&cache, &["amd64"]), &[reference(addr, "library/app:v9")], &out);
    let e = result.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("'{addr}/library/app:v9' was not found in {addr} (MANIFEST_UNKNOWN: manifest unknown)")
    );
    assert_eq!(e.hint().unwrap(), "check the repository name and the tag or digest");
    let (result, _) = pull(options(&cache, &["amd64"]), &[reference(addr, "library/nothing:v1")], &out);
    assert!(
        result
            .unwrap_err()
            .to_string()
            .starts_with(&format!("'{addr}/library/nothing:v1' was not found in {addr} (")),
    );
    let (result, _) = pull(options(&cache, &["riscv64"]), &[reference(addr, "library/multi:v1")], &out);
    assert_eq!(
        result.unwrap_err().to_string(),
        format!(
            "'{addr}/library/multi:v1' has no image for linux/riscv64 (it has: linux/amd64, linux/arm64)"
        )
    );
    // One missing image among good ones: nothing is linked into the output.
    let (result, _) = pull(
        options(&cache, &["amd64"]),
        &[reference(addr, "library/app:v1"), reference(addr, "library/app:v9")],
        &out,
    );
    assert!(result.is_err());
    assert!(!out.join("docker/registry/v2/repositories").exists());
    // A registry that is not there: retried, then named.
    let gone = free_addr();
    let (result, c) = pull(options(&cache, &["amd64"]), &[reference(gone, "library/app:v1")], &out);
    assert_eq!(
        result.unwrap_err().to_string(),
        format!(
            "could not reach {gone} for '{gone}/library/app:v1' (http://{gone}/v2/library/app/manifests/v1) after 2 attempts"
        )
    );
    assert_eq!(c.retries, 1);
}

#[test]
fn an_interrupted_pull_links_nothing() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_source, addr) = docker_registry(dir, &f.storage);
    let mut o = options(&dir.join("cache"), &["amd64"]);
    o.cancel = Some(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)));
    let out = dir.join("out");
    let (result, c) =
        pull(o, &[reference(addr, "library/app:v1"), reference(addr, "library/multi:v1")], &out);
    assert_eq!(result.unwrap_err().to_string(), "interrupted; nothing was linked into the output");
    assert_eq!(c.blobs_fetched, 0);
    assert!(!out.exists());
}

#[test]
fn a_mirror_serves_another_registry_under_the_original_names() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_source, addr) = docker_registry(dir, &f.storage);
    let mut o = options(&dir.join("cache"), &["amd64"]);
    o.mirrors = vec![format!("registry.example.com={addr}").parse().unwrap()];
    let out = dir.join("out");
    let (pulled, _) = pull(o, &["registry.example.com/library/app:v1".parse().unwrap()], &out);
    assert_eq!(pulled.unwrap()[0].digest, f.made.app.manifest.digest);
    assert!(
        out.join("docker/registry/v2/repositories/library/app/_manifests/tags/v1/current/link").is_file()
    );
}

#[test]
fn a_blob_that_does_not_match_its_digest_is_refused() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let storage = dir.join("storage");
    ok(Command::new("cp").arg("-a").arg(&f.storage).arg(&storage));
    // The same length, one byte changed: the registry serves it as it is.
    let layer = &f.made.app.layer.digest;
    let hex = layer.strip_prefix("sha256:").unwrap();
    let data = storage.join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut bytes = fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&data, &bytes).unwrap();
    let found = sha256(&bytes);
    let (_source, addr) = docker_registry(dir, &storage);
    let cache = dir.join("cache");
    let out = dir.join("out");
    let (result, _) = pull(options(&cache, &["amd64"]), &[reference(addr, "library/app:v1")], &out);
    let e = result.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "blob {layer} of '{addr}/library/app:v1' does not match its digest: its content hashes to {found}"
        )
    );
    // Nothing of it kept: not in the cache, no partial download, nothing linked.
    assert!(!cache.join("sha256").join(hex).exists());
    assert_eq!(kubeferry_tests::listing(&cache.join("tmp")), Vec::<String>::new());
    assert!(!out.join("docker/registry/v2/repositories").exists());
}

#[test]
fn basic_authentication_with_htpasswd() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let auth_config = htpasswd(dir, "puller", "s3cret");
    let (_source, addr) = docker_registry_with(dir, &f.storage, &auth_config);
    let app = reference(addr, "library/app:v1");
    let cache = dir.join("cache");
    let out = dir.join("out");

    let (result, _) = pull(options(&cache, &["amd64"]), std::slice::from_ref(&app), &out);
    let e = result.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{addr} refused access to '{app}': it needs credentials and none were given (UNAUTHORIZED: authentication required)"
        )
    );
    assert_eq!(
        e.hint().unwrap(),
        format!(
            "log in with 'docker login {addr}' (kubeferry reads ~/.docker/config.json) or pass --registry-auth {addr}=USER:PASSWORD"
        )
    );

    let mut wrong = options(&cache, &["amd64"]);
    wrong.registry_auth = vec![auth::parse_registry_auth(&format!("{addr}=puller:wrong")).unwrap()];
    let (result, _) = pull(wrong, std::slice::from_ref(&app), &out);
    assert_eq!(
        result.unwrap_err().to_string(),
        format!(
            "{addr} refused access to '{app}': the credentials for {addr} were refused (UNAUTHORIZED: authentication required)"
        )
    );

    let mut right = options(&cache, &["amd64"]);
    right.registry_auth = vec![auth::parse_registry_auth(&format!("{addr}=puller:s3cret")).unwrap()];
    let (pulled, _) = pull(right, std::slice::from_ref(&app), &out);
    assert_eq!(pulled.unwrap()[0].digest, f.made.app.manifest.digest);

    // The same from a docker configuration file, with a fresh cache.
    let config = dir.join("docker-config.json");
    let b64 = base64_encode("puller:s3cret");
    fs::write(&config, format!(r#"{{"auths":{{"{addr}":{{"auth":"{b64}"}}}}}}"#)).unwrap();
    let mut from_file = options(&dir.join("cache2"), &["amd64"]);
    from_file.docker_config = Some(config);
    let (pulled, c) = pull(from_file, &[app, reference(addr, "library/multi:v1")], &dir.join("out2"));
    assert_eq!(pulled.unwrap().len(), 2);
    assert_eq!(c.blobs_fetched, 4);
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A token server and a registry front in one: it answers every `/v2/` request without a
/// valid bearer token with a `Bearer` challenge, gives a token at `/token` to a client that
/// sends the right Basic credentials and asks for the right scope, and forwards requests with
/// the token to docker-registry (which itself needs nothing). What it saw is kept.
struct TokenFront {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

const TOKEN: &str = "kubeferry-test-token";

/// How a [`front`] behaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Bearer tokens, as described above.
    Token,
    /// No authentication; the first request for each manifest gets 503, the first for each
    /// blob gets its headers and half its body before the connection closes.
    Flaky,
}

fn token_front(backend: SocketAddr) -> TokenFront {
    front(backend, Mode::Token)
}

fn front(backend: SocketAddr, mode: Mode) -> TokenFront {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let _ = serve_front(stream, addr, backend, &log, mode);
            });
        }
    });
    TokenFront { addr, seen }
}

fn serve_front(
    stream: std::net::TcpStream,
    me: SocketAddr,
    backend: SocketAddr,
    log: &std::sync::Mutex<Vec<String>>,
    mode: Mode,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            headers.push(h.trim().to_owned());
        }
        let header = |name: &str| {
            headers.iter().find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let authorization = header("authorization").unwrap_or_default();
        let first = {
            let mut log = log.lock().unwrap();
            log.push(format!("{target} {authorization}"));
            log.iter().filter(|l| l.split(' ').next() == Some(target.as_str())).count() == 1
        };
        let respond = |out: &mut std::net::TcpStream, status: &str, extra: &str, body: &[u8]| {
            write!(out, "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\n\r\n", body.len())?;
            out.write_all(body)
        };
        let forward = |target: &str| -> std::io::Result<Vec<u8>> {
            let mut upstream = std::net::TcpStream::connect(backend)?;
            let accept = header("accept").map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
            write!(
                upstream,
                "GET {target} HTTP/1.1\r\nHost: {backend}\r\n{accept}Connection: close\r\n\r\n"
            )?;
            let mut response = Vec::new();
            std::io::Read::read_to_end(&mut upstream, &mut response)?;
            Ok(response)
        };
        if mode == Mode::Flaky {
            let response = forward(&target)?;
            if first && target.contains("/manifests/") {
                respond(&mut out, "503 Service Unavailable", "", b"try again")?;
                continue;
            }
            if first && target.contains("/blobs/") {
                let head = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let cut = head + (response.len() - head) / 2;
                out.write_all(&response[..cut])?;
                return Ok(());
            }
            out.write_all(&response)?;
            return Ok(());
        }
        if let Some(query) = target.strip_prefix("/token?") {
            let good_user = authorization == format!("Basic {}", base64_encode("robot:t0ken-pass"));
            if good_user
                && query.contains("service=kubeferry-test")
                && query.contains("scope=repository:library/app:pull")
            {
                respond(
                    &mut out,
                    "200 OK",
                    "Content-Type: application/json\r\n",
                    format!(r#"{{"token":"{TOKEN}"}}"#).as_bytes(),
                )?;
            } else {
                respond(&mut out, "401 Unauthorized", "", br#"{"details":"wrong credentials"}"#)?;
            }
            continue;
        }
        if authorization != format!("Bearer {TOKEN}") {
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"kubeferry-test\",scope=\"repository:library/app:pull\"\r\n"
            );
            respond(
                &mut out,
                "401 Unauthorized",
                &challenge,
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}"#,
            )?;
            continue;
        }
        // Forward to docker-registry: one request, then the connection closes.
        out.write_all(&forward(&target)?)?;
        return Ok(());
    }
}

#[test]
fn bearer_token_authentication() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_source, backend) = docker_registry(dir, &f.storage);
    let front = token_front(backend);
    let app = reference(front.addr, "library/app:v1");
    let mut o = options(&dir.join("cache"), &["amd64"]);
    o.registry_auth = vec![auth::parse_registry_auth(&format!("{}=robot:t0ken-pass", front.addr)).unwrap()];
    let (pulled, c) = pull(o, std::slice::from_ref(&app), &dir.join("out"));
    assert_eq!(pulled.unwrap()[0].digest, f.made.app.manifest.digest);
    assert_eq!(c.blobs_fetched, 2);
    let seen = front.seen.lock().unwrap().clone();
    // One challenge, one token request, then every request with the token.
    assert_eq!(seen.iter().filter(|s| s.starts_with("/token?")).count(), 1, "{seen:#?}");
    assert_eq!(seen.iter().filter(|s| s.ends_with(&format!("Bearer {TOKEN}"))).count(), 3, "{seen:#?}");

    let mut wrong = options(&dir.join("cache"), &["amd64"]);
    wrong.registry_auth = vec![auth::parse_registry_auth(&format!("{}=robot:nope", front.addr)).unwrap()];
    let (result, _) = pull(wrong, std::slice::from_ref(&app), &dir.join("out2"));
    assert_eq!(
        result.unwrap_err().to_string(),
        format!(
            "{} refused access to '{app}': the token service http://{}/token refused the credentials (401: {{\"details\":\"wrong credentials\"}})",
            front.addr, front.addr
        )
    );
}

#[test]
fn server_errors_and_cut_transfers_are_retried() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_source, backend) = docker_registry(dir, &f.storage);
    let flaky = front(backend, Mode::Flaky);
    let (pulled, c) = pull(
        options(&dir.join("cache"), &["amd64"]),
        &[reference(flaky.addr, "library/app:v1")],
        &dir.join("out"),
    );
    assert_eq!(pulled.unwrap()[0].digest, f.made.app.manifest.digest);
    // The manifest's 503, then the config and the layer cut in half: each tried again once.
    assert_eq!((c.retries, c.blobs_fetched, c.manifests_fetched), (3, 2, 1), "{c:?}");
    assert_eq!(kubeferry_tests::listing(&dir.join("cache/tmp")), Vec::<String>::new());
}

#[test]
fn the_pull_command() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_source, addr) = docker_registry(dir, &f.storage);
    let out: PathBuf = dir.join("out");
    let stdout = kubeferry_tests::ok(
        kubeferry_tests::kubeferry()
            .args(["pull", "--json", "--arch", "arm64", "--cache-dir"])
            .arg(dir.join("cache"))
            .arg("--out")
            .arg(&out)
            .env("DOCKER_CONFIG", dir.join("no-docker"))
            .arg(format!("{addr}/library/multi:v1")),
    );
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(value["images"][0]["digest"], f.made.arm64.manifest.digest.as_str());
    assert_eq!(value["images"][0]["platforms"][0]["architecture"], "arm64");
    assert_eq!(value["counters"]["blobs_fetched"], 2);
    let (code, _, stderr) = kubeferry_tests::run(
        kubeferry_tests::kubeferry()
            .args(["pull", "--out"])
            .arg(&out)
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .arg("Bad/Name"),
    );
    assert_eq!(code, 1);
    assert!(
        stderr
            .contains("invalid image reference 'Bad/Name': the repository name 'Bad/Name' must be lowercase"),
        "{stderr}"
    );
}
