//! The read-only registry with the real tools: a real image made as an OCI layout, pushed by
//! skopeo into Debian's docker-registry (docker distribution 2.8), whose storage directory is
//! then served by kubeferry's registry alone, and pulled back by skopeo.
//!
//! Needs `skopeo` and `docker-registry` (`apt-get install -y docker-registry skopeo`). Every
//! address is on 127.0.0.1; every file is in a temporary directory; every process is killed
//! when its guard drops, on failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kubeferry_installer::registry::{self, ImageRef, Registry, RegistryConfig, RegistryError};
use kubeferry_tests::images::*;

fn serve(storage: &Path) -> Registry {
    let registry = Registry::start(RegistryConfig {
        root: storage.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 4,
        users: None,
    })
    .unwrap();
    registry::wait_ready(
        registry.local_addr(),
        "sea.hub:5000",
        Some(("library/app", "v1")),
        Duration::from_secs(5),
    )
    .unwrap();
    registry
}

/// The digest of the manifest an OCI layout's index.json names for `tag`.
fn layout_manifest(layout: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let found = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {index}"));
    found["digest"].as_str().unwrap().to_owned()
}

fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    fs::read(layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())).unwrap()
}

/// Every file under `dir`, relative, with its size.
fn tree(dir: &Path) -> BTreeSet<(String, u64)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<(String, u64)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let rel = entry.path().strip_prefix(base).unwrap().display().to_string();
            if meta.is_dir() {
                walk(base, &entry.path(), out);
            }
            out.insert((rel, if meta.is_dir() { 0 } else { meta.len() }));
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// One raw HTTP/1.1 request: (status, head, body).
fn http(addr: SocketAddr, method: &str, target: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "{method} {target} HTTP/1.1\r\nHost: sea.hub:5000\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, response[split + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn distribution_2_8_storage_layout_is_what_the_server_reads() {
    let p = pushed();
    let v2 = p.storage.join("docker/registry/v2");
    let repo = v2.join("repositories/library/app");
    let hex = |d: &str| d.strip_prefix("sha256:").unwrap().to_owned();
    let app = &p.made.app;
    // Layers and the config are linked under _layers; the manifest under _manifests/revisions.
    for blob in [&app.layer, &app.config] {
        assert_eq!(
            fs::read_to_string(repo.join("_layers/sha256").join(hex(&blob.digest)).join("link")).unwrap(),
            blob.digest
        );
    }
    assert!(!repo.join("_layers/sha256").join(hex(&app.manifest.digest)).exists());
    let revision = repo.join("_manifests/revisions/sha256").join(hex(&app.manifest.digest)).join("link");
    assert_eq!(fs::read_to_string(revision).unwrap(), app.manifest.digest);
    for tag in ["v1", "v2"] {
        let current = repo.join("_manifests/tags").join(tag).join("current/link");
        assert_eq!(fs::read_to_string(current).unwrap(), app.manifest.digest);
        assert!(
            repo.join("_manifests/tags")
                .join(tag)
                .join("index/sha256")
                .join(hex(&app.manifest.digest))
                .join("link")
                .is_file()
        );
    }
    // Each child of an index is a revision of the index's repository, and its blobs are layers.
    let multi = v2.join("repositories/library/multi");
    for child in [&p.made.amd64, &p.made.arm64] {
        assert!(
            multi
                .join("_manifests/revisions/sha256")
                .join(hex(&child.manifest.digest))
                .join("link")
                .is_file()
        );
        for blob in [&child.layer, &child.config] {
            assert!(multi.join("_layers/sha256").join(hex(&blob.digest)).join("link").is_file());
        }
    }
    // Every blob, manifests included, is stored once under blobs/.
    let data = layout_blob(&p.dir.join("layout"), &app.layer.digest);
    let stored =
        v2.join("blobs/sha256").join(&hex(&app.layer.digest)[..2]).join(hex(&app.layer.digest)).join("data");
    assert_eq!(fs::read(stored).unwrap(), data);

    let images = registry::list_images(&p.storage).unwrap();
    let expect = |repository: &str, tag: &str, digest: &str, media_type: &str| ImageRef {
        repository: repository.into(),
        tag: tag.into(),
        digest: digest.into(),
        media_type: media_type.into(),
    };
    assert_eq!(
        images,
        vec![
            expect("library/app", "v1", &app.manifest.digest, OCI_MANIFEST),
            expect("library/app", "v2", &app.manifest.digest, OCI_MANIFEST),
            expect("library/multi", "v1", &p.made.index.digest, OCI_INDEX),
        ]
    );
}

#[test]
fn skopeo_pulls_an_image_by_tag_and_by_digest() {
    let p = pushed();
    let served = serve(&p.storage);
    let addr = served.local_addr();
    let app = &p.made.app;

    let start = Instant::now();
    let inspect: serde_json::Value = serde_json::from_str(&ok(skopeo(&p.dir)
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{addr}/library/app:v1"))))
    .unwrap();
    // skopeo tries HTTPS first: a TLS handshake must be refused at once, not left to time out
    // (10 s in Go's client).
    assert!(start.elapsed() < Duration::from_secs(8), "skopeo inspect took {:?}", start.elapsed());
    assert_eq!(inspect["Digest"], app.manifest.digest.as_str());
    assert_eq!(inspect["Layers"], serde_json::json!([app.layer.digest]));
    assert_eq!(inspect["RepoTags"], serde_json::json!(["v1", "v2"]));
    assert_eq!(inspect["Architecture"], "amd64");

    let out = p.dir.join("pulled");
    let start = Instant::now();
    ok(skopeo(&p.dir)
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{addr}/library/app:v1"))
        .arg(format!("oci:{}:v1", out.display())));
    let ours = start.elapsed();
    eprintln!(
        "skopeo copy of library/app:v1: {:?} from docker-registry, {:?} from kubeferry's registry",
        p.docker_registry_copy, ours
    );
    ok(skopeo(&p.dir)
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{addr}/library/app@{}", app.manifest.digest))
        .arg(format!("oci:{}:by-digest", out.display())));
    ok(skopeo(&p.dir)
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{addr}/library/app:v2"))
        .arg(format!("oci:{}:v2", out.display())));
    for tag in ["v1", "by-digest", "v2"] {
        assert_eq!(layout_manifest(&out, tag), app.manifest.digest, "{tag}");
    }
    // The bytes themselves, as pushed.
    let layout = p.dir.join("layout");
    for blob in [&app.manifest, &app.config, &app.layer] {
        assert_eq!(layout_blob(&out, &blob.digest), layout_blob(&layout, &blob.digest), "{}", blob.digest);
    }

    // The headers a client relies on, over the real socket.
    let (status, head, body) = http(addr, "GET", "/v2/library/app/manifests/v1");
    assert_eq!(status, 200);
    assert_eq!(header(&head, "Content-Type"), Some(OCI_MANIFEST));
    assert_eq!(header(&head, "Docker-Content-Digest"), Some(app.manifest.digest.as_str()));
    assert_eq!(header(&head, "Content-Length"), Some(body.len().to_string().as_str()));
    assert_eq!(header(&head, "Docker-Distribution-API-Version"), Some("registry/2.0"));
    let blob = format!("/v2/library/app/blobs/{}", app.layer.digest);
    let (status, head, body) = http(addr, "HEAD", &blob);
    assert_eq!((status, body.len()), (200, 0));
    assert_eq!(header(&head, "Content-Length"), Some(app.layer.size.to_string().as_str()));
    assert_eq!(header(&head, "Docker-Content-Digest"), Some(app.layer.digest.as_str()));
    assert_eq!(header(&head, "Transfer-Encoding"), None);
    let (status, head, body) = http(addr, "GET", &blob);
    assert_eq!((status, header(&head, "Content-Type")), (200, Some("application/octet-stream")));
    assert_eq!(sha256(&body), app.layer.digest);
    served.stop();
}

#[test]
fn skopeo_copies_a_multi_arch_index_with_all_its_children() {
    let p = pushed();
    let served = serve(&p.storage);
    let addr = served.local_addr();
    let raw = ok(skopeo(&p.dir)
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{addr}/library/multi:v1")));
    assert_eq!(sha256(raw.as_bytes()), p.made.index.digest);
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(index["mediaType"], OCI_INDEX);

    let out = p.dir.join("multi");
    ok(skopeo(&p.dir)
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{addr}/library/multi:v1"))
        .arg(format!("oci:{}:multi", out.display())));
    assert_eq!(layout_manifest(&out, "multi"), p.made.index.digest);
    for child in [&p.made.amd64, &p.made.arm64] {
        for blob in [&child.manifest, &child.config, &child.layer] {
            assert_eq!(sha256(&layout_blob(&out, &blob.digest)), blob.digest);
        }
    }
    // One platform picked from the index, as a node would.
    let arm = p.dir.join("arm64");
    ok(skopeo(&p.dir)
        .args(["--override-arch", "arm64", "--override-os", "linux", "copy", "--src-tls-verify=false"])
        .arg(format!("docker://{addr}/library/multi:v1"))
        .arg(format!("oci:{}:arm64", arm.display())));
    assert_eq!(layout_manifest(&arm, "arm64"), p.made.arm64.manifest.digest);
    // A child by digest, with its own media type.
    let (status, head, _) =
        http(addr, "HEAD", &format!("/v2/library/multi/manifests/{}", p.made.amd64.manifest.digest));
    assert_eq!((status, header(&head, "Content-Type")), (200, Some(OCI_MANIFEST)));
    served.stop();
}

#[test]
fn missing_tags_traversal_and_pushes_are_refused() {
    let p = pushed();
    let before = tree(&p.storage);
    let served = serve(&p.storage);
    let addr = served.local_addr();

    let out = run(skopeo(&p.dir)
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{addr}/library/app:nope")));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("manifest unknown"), "{stderr}");
    let (status, _, body) = http(addr, "GET", "/v2/library/app/manifests/nope");
    assert_eq!(status, 404);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
    let (status, _, body) = http(addr, "GET", "/v2/library/nope/tags/list");
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("NAME_UNKNOWN"));

    // A push: skopeo fails, and nothing in the storage changes.
    let out = run(skopeo(&p.dir)
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", p.dir.join("layout").display()))
        .arg(format!("docker://{addr}/library/pushed:v1")));
    assert!(!out.status.success(), "a push to the read-only registry succeeded");
    let (status, _, body) = http(addr, "POST", "/v2/library/app/blobs/uploads/");
    assert_eq!(status, 405);
    assert!(String::from_utf8_lossy(&body).contains("UNSUPPORTED"));
    let (status, _, _) = http(addr, "PUT", "/v2/library/app/manifests/v1");
    assert_eq!(status, 405);
    let (status, _, _) =
        http(addr, "DELETE", &format!("/v2/library/app/manifests/{}", p.made.app.manifest.digest));
    assert_eq!(status, 405);

    // Requests that try to leave the storage directory.
    let digest = p.made.app.layer.digest.clone();
    fs::write(p.dir.join("outside"), "OUTSIDE-THE-STORAGE").unwrap();
    let outside = sha256(b"OUTSIDE-THE-STORAGE");
    for target in [
        format!("/v2/../../etc/passwd/blobs/{digest}"),
        format!("/v2/%2e%2e/%2e%2e/%2e%2e/etc/passwd/blobs/{digest}"),
        format!("/v2/%2E%2E%2F%2E%2E%2Fetc/blobs/{digest}"),
        format!("/v2//etc/passwd/blobs/{digest}"),
        format!("/v2/%2Fetc%2Fpasswd/blobs/{digest}"),
        format!("/v2/library/app/blobs/{outside}"),
        "/v2/library/app/blobs/sha256:..%2F..%2F..%2F..%2Foutside".to_owned(),
        "/v2/library/app/manifests/..%2F..%2F..%2F..%2F..%2Foutside".to_owned(),
        "/v2/../../../outside/tags/list".to_owned(),
        "/../../outside".to_owned(),
        "/v2/library/app/_layers/tags/list".to_owned(),
    ] {
        let (status, _, body) = http(addr, "GET", &target);
        let body = String::from_utf8_lossy(&body);
        assert!(matches!(status, 400 | 404), "{target}: {status} {body}");
        assert!(!body.contains("OUTSIDE-THE-STORAGE") && !body.contains("root:"), "{target}: {body}");
    }
    served.stop();
    assert_eq!(tree(&p.storage), before, "the storage changed");
}

#[test]
fn a_second_registry_on_the_same_port_is_refused_with_a_hint() {
    let p = pushed();
    let served = serve(&p.storage);
    let err = Registry::start(RegistryConfig {
        root: p.storage.clone(),
        listen: served.local_addr(),
        threads: 1,
        users: None,
    })
    .unwrap_err();
    assert!(matches!(err, RegistryError::Listen { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("could not listen on '{}'", served.local_addr()));
    assert!(err.hint().unwrap().contains("--registry-port"), "{:?}", err.hint());
    // An empty directory is no storage.
    let err = Registry::start(RegistryConfig {
        root: p.dir.join("layout"),
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        users: None,
    })
    .unwrap_err();
    assert!(matches!(err, RegistryError::NotAStorage { .. }), "{err:?}");
}

/// The copy time of a 64 MiB image from docker-registry and from kubeferry's registry.
/// Run with `cargo test --test registry -- --ignored --nocapture bench`.
#[test]
#[ignore = "a measurement, not a check"]
fn bench_copy_from_docker_registry_and_from_ours() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let layout = dir.join("layout");
    // Incompressible content: a xorshift stream.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let big: Vec<u8> = (0..64 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let made = image(&layout, "amd64", &[("big.bin", &big)], flate2::Compression::fast());
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [descriptor(OCI_MANIFEST, &made.manifest,
        serde_json::json!({"annotations": {"org.opencontainers.image.ref.name": "v1"}}))]});
    fs::write(layout.join("index.json"), top.to_string()).unwrap();
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let storage = dir.join("storage");
    let copy = |addr: SocketAddr, out: &str| {
        let start = Instant::now();
        ok(skopeo(dir)
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{addr}/library/big:v1"))
            .arg(format!("oci:{}:v1", dir.join(out).display())));
        start.elapsed()
    };
    let (running, addr) = docker_registry(dir, &storage);
    ok(skopeo(dir)
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker://{addr}/library/big:v1")));
    let theirs = copy(addr, "theirs");
    drop(running);
    let served = serve_big(&storage);
    let ours = copy(served.local_addr(), "ours");
    eprintln!(
        "skopeo copy of a {} MiB layer: docker-registry {theirs:?}, kubeferry {ours:?}",
        made.layer.size >> 20
    );
}

fn serve_big(storage: &Path) -> Registry {
    Registry::start(RegistryConfig {
        root: storage.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 4,
        users: None,
    })
    .unwrap()
}

/// The stub's `serve-registry` command, as the bundled registry's service runs it: serves the
/// storage until SIGTERM, then exits cleanly.
#[test]
fn the_stub_serves_a_storage_directory_until_it_is_stopped() {
    let p = pushed();
    let addr = free_addr();
    let child = Command::new(kubeferry_tests::stub_bin())
        .arg("serve-registry")
        .arg("--root")
        .arg(&p.storage)
        .arg("--listen")
        .arg(addr.to_string())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let ready =
        registry::wait_ready(addr, "sea.hub:5000", Some(("library/app", "v1")), Duration::from_secs(10));
    let inspect = ready.as_ref().ok().map(|_| {
        ok(skopeo(&p.dir)
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{addr}/library/app:v1")))
    });
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    ready.unwrap_or_else(|e| panic!("{e}\n{stderr}"));
    let inspect: serde_json::Value = serde_json::from_str(&inspect.unwrap()).unwrap();
    assert_eq!(inspect["Digest"], p.made.app.manifest.digest.as_str());
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("serving '{}' read-only on {addr}", p.storage.display())), "{stderr}");
}
