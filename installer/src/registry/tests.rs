//! Tests of the registry against its storage layout and real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const SECRET: &[u8] = b"TOP-SECRET content";
const HEX_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[test]
fn routes_split_names_with_slashes_at_the_fixed_tail() {
    assert_eq!(route("/v2/"), Some(Route::Base));
    assert_eq!(route("/v2"), Some(Route::Base));
    assert_eq!(route("/v2/_catalog"), Some(Route::Catalog));
    assert_eq!(
        route("/v2/library/nginx/manifests/v1.2"),
        Some(Route::Manifest { name: "library/nginx", reference: "v1.2" })
    );
    assert_eq!(
        route("/v2/sea.hub/kube-apiserver/manifests/sha256:abc"),
        Some(Route::Manifest { name: "sea.hub/kube-apiserver", reference: "sha256:abc" })
    );
    assert_eq!(route("/v2/a/b/c/blobs/sha256:x"), Some(Route::Blob { name: "a/b/c", digest: "sha256:x" }));
    // A repository may itself be called "blobs" or "manifests".
    assert_eq!(
        route("/v2/x/blobs/blobs/sha256:x"),
        Some(Route::Blob { name: "x/blobs", digest: "sha256:x" })
    );
    assert_eq!(
        route("/v2/manifests/manifests/latest"),
        Some(Route::Manifest { name: "manifests", reference: "latest" })
    );
    assert_eq!(route("/v2/library/app/tags/list"), Some(Route::Tags { name: "library/app" }));
    assert_eq!(route("/v2/library/app/blobs/uploads/"), Some(Route::Upload));
    assert_eq!(route("/v2/library/app/blobs/uploads/1234-abcd"), Some(Route::Upload));
    assert_eq!(route("/v2/library/app"), None);
    assert_eq!(route("/v2/library/app/manifests/v1/extra"), None);
    assert_eq!(route("/v1/library/app/manifests/v1"), None);
    assert_eq!(route("/v2x/app/manifests/v1"), None);
    assert_eq!(route("/"), None);
}

#[test]
fn names_follow_the_distribution_grammar() {
    for good in ["library/nginx", "a", "sea.hub/kube-apiserver", "a__b/c_d/e--f/g.h", "0/1/2", "a---b"] {
        assert!(valid_name(good), "{good}");
    }
    for bad in [
        "",
        "/",
        "/etc",
        "a/",
        "a//b",
        ".",
        "..",
        "../x",
        "a/../b",
        "a/./b",
        ".a",
        "a.",
        "a..b",
        "a.-b",
        "Library/nginx",
        "a b",
        "a%2fb",
        "_manifests",
        "a/_layers",
        "a___b",
        "a\0b",
        "é",
    ] {
        assert!(!valid_name(bad), "{bad:?}");
    }
    assert!(valid_name(&"a".repeat(255)));
    assert!(!valid_name(&"a".repeat(256)));
}

#[test]
fn tags_and_digests_are_checked() {
    for good in ["v1", "latest", "V1.2.3-rc_1", "_x", &"a".repeat(128)] {
        assert!(valid_tag(good), "{good}");
    }
    for bad in ["", ".", "..", "-x", ".hidden", "a/b", "a:b", &"a".repeat(129)] {
        assert!(!valid_tag(bad), "{bad}");
    }
    assert!(Digest::parse(&format!("sha256:{HEX_A}")).is_some());
    for bad in [
        "sha256:".to_owned(),
        format!("sha256:{}", HEX_A.to_uppercase()),
        format!("sha256:{}", &HEX_A[1..]),
        format!("sha256:{HEX_A}a"),
        format!("sha512:{HEX_A}"),
        format!("sha256:../{}", &HEX_A[3..]),
        HEX_A.to_owned(),
    ] {
        assert!(Digest::parse(&bad).is_none(), "{bad}");
    }
}

#[test]
fn percent_escapes_decode_strictly() {
    assert_eq!(percent_decode("/v2/a%2Fb").as_deref(), Some("/v2/a/b"));
    assert_eq!(percent_decode("%2e%2E").as_deref(), Some(".."));
    assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
    assert_eq!(percent_decode("%"), None);
    assert_eq!(percent_decode("%2"), None);
    assert_eq!(percent_decode("%zz"), None);
    assert_eq!(percent_decode("%00"), None);
    assert_eq!(percent_decode("%ff"), None);
}

#[test]
fn media_types_come_from_the_manifest_or_its_shape() {
    let typed = |t: &str| format!(r#"{{"schemaVersion":2,"mediaType":"{t}","config":{{}},"layers":[]}}"#);
    for t in [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST] {
        assert_eq!(manifest_media_type(typed(t).as_bytes()).as_deref(), Some(t));
    }
    assert_eq!(
        manifest_media_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).as_deref(),
        Some(OCI_MANIFEST)
    );
    assert_eq!(manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(), Some(OCI_INDEX));
    assert_eq!(
        manifest_media_type(br#"{"schemaVersion":1,"name":"a","fsLayers":[],"signatures":[]}"#).as_deref(),
        Some(DOCKER_MANIFEST_V1_SIGNED)
    );
    assert_eq!(
        manifest_media_type(br#"{"schemaVersion":1,"name":"a","fsLayers":[]}"#).as_deref(),
        Some(DOCKER_MANIFEST_V1)
    );
    // A mediaType that could not be a header value falls back to the shape.
    assert_eq!(
        manifest_media_type(b"{\"mediaType\":\"a/b\\r\\nX: y\",\"manifests\":[]}").as_deref(),
        Some(OCI_INDEX)
    );
    assert_eq!(manifest_media_type(br#"{"schemaVersion":2}"#), None);
    assert_eq!(manifest_media_type(b"[]"), None);
    assert_eq!(manifest_media_type(b"not json"), None);
}

#[test]
fn ranges_are_single_and_clamped() {
    assert_eq!(parse_range("bytes=0-9", 100), ByteRange::Part { start: 0, end: 9 });
    assert_eq!(parse_range("bytes=90-", 100), ByteRange::Part { start: 90, end: 99 });
    assert_eq!(parse_range("bytes=90-1000", 100), ByteRange::Part { start: 90, end: 99 });
    assert_eq!(parse_range("bytes=-10", 100), ByteRange::Part { start: 90, end: 99 });
    assert_eq!(parse_range("bytes=-1000", 100), ByteRange::Part { start: 0, end: 99 });
    assert_eq!(parse_range("bytes=100-", 100), ByteRange::Unsatisfiable);
    assert_eq!(parse_range("bytes=-0", 100), ByteRange::Unsatisfiable);
    assert_eq!(parse_range("bytes=0-", 0), ByteRange::Unsatisfiable);
    for ignored in ["bytes=0-1,5-6", "bytes=9-1", "items=0-1", "bytes=a-b", "bytes=-", "bytes=+1-2"] {
        assert_eq!(parse_range(ignored, 100), ByteRange::Full, "{ignored}");
    }
}

#[test]
fn pagination_follows_last_and_n() {
    let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    assert_eq!(paginate(&items, ""), (&items[..], None));
    assert_eq!(paginate(&items, "n=2"), (&items[..2], Some(("b", 2))));
    assert_eq!(paginate(&items, "n=2&last=b"), (&items[2..], None));
    assert_eq!(paginate(&items, "last=c"), (&items[3..], None));
    assert_eq!(paginate(&items, "last=z"), (&items[4..], None));
}

/// A storage with one repository, `library/app:v1` (a manifest and one layer), and a
/// secret beside and above it that no request may read.
struct Fixture {
    _dir: tempfile::TempDir,
    storage: Storage,
    manifest: String,
    layer: String,
}

fn put_blob(v2: &Path, bytes: &[u8]) -> Digest {
    let digest = Digest { hex: hex(&Sha256::digest(bytes)) };
    let dir = v2.join("blobs/sha256").join(&digest.hex[..2]).join(&digest.hex);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("data"), bytes).unwrap();
    digest
}

fn put_link(path: &Path, digest: &Digest) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, digest.to_string()).unwrap();
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("registry");
    let v2 = root.join(STORAGE_PREFIX);
    fs::create_dir_all(&v2).unwrap();
    fs::write(dir.path().join("secret"), SECRET).unwrap();
    fs::write(v2.join("secret"), SECRET).unwrap();
    let layer = put_blob(&v2, b"layer bytes 0123456789");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{}},"layers":[{{"digest":"{layer}"}}]}}"#
    );
    let manifest = put_blob(&v2, manifest.as_bytes());
    let repo = v2.join("repositories/library/app");
    put_link(&repo.join("_layers/sha256").join(&layer.hex).join("link"), &layer);
    put_link(&repo.join("_manifests/revisions/sha256").join(&manifest.hex).join("link"), &manifest);
    put_link(&repo.join("_manifests/tags/v1/current/link"), &manifest);
    fs::create_dir_all(repo.join("_uploads")).unwrap();
    let storage = Storage::open(&root).unwrap();
    Fixture { _dir: dir, storage, manifest: manifest.to_string(), layer: layer.to_string() }
}

fn get(f: &Fixture, url: &str) -> Reply {
    handle(&f.storage, "GET", url, None)
}

fn code(reply: &Reply) -> String {
    match &reply.body {
        Body::Bytes(bytes) => {
            let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
            value["errors"][0]["code"].as_str().unwrap_or_default().to_owned()
        }
        _ => String::new(),
    }
}

fn body(reply: Reply) -> Vec<u8> {
    match reply.body {
        Body::Bytes(bytes) => bytes,
        Body::File { file, len } => {
            let mut out = Vec::new();
            file.take(len).read_to_end(&mut out).unwrap();
            out
        }
        Body::Empty | Body::Length(_) => Vec::new(),
    }
}

#[test]
fn serves_the_fixture() {
    let f = fixture();
    let base = get(&f, "/v2/");
    assert_eq!(
        (base.status, base.header_value("Docker-Distribution-API-Version")),
        (200, Some("registry/2.0"))
    );
    let by_tag = get(&f, "/v2/library/app/manifests/v1");
    assert_eq!(by_tag.status, 200);
    assert_eq!(by_tag.header_value("Content-Type"), Some(OCI_MANIFEST));
    assert_eq!(by_tag.header_value("Docker-Content-Digest"), Some(f.manifest.as_str()));
    let by_digest = get(&f, &format!("/v2/library/app/manifests/{}", f.manifest));
    assert_eq!(body(by_digest), body(by_tag));
    let layer = get(&f, &format!("/v2/library/app/blobs/{}", f.layer));
    assert_eq!((layer.status, layer.header_value("Content-Type")), (200, Some("application/octet-stream")));
    assert_eq!(body(layer), b"layer bytes 0123456789");
    let head = handle(&f.storage, "HEAD", &format!("/v2/library/app/blobs/{}", f.layer), None);
    assert!(matches!(head.body, Body::Length(22)), "{head:?}");
    let part = handle(&f.storage, "GET", &format!("/v2/library/app/blobs/{}", f.layer), Some("bytes=6-10"));
    assert_eq!((part.status, part.header_value("Content-Range")), (206, Some("bytes 6-10/22")));
    assert_eq!(body(part), b"bytes");
    assert_eq!(body(get(&f, "/v2/_catalog")), br#"{"repositories":["library/app"]}"#);
    assert_eq!(body(get(&f, "/v2/library/app/tags/list")), br#"{"name":"library/app","tags":["v1"]}"#);
}

#[test]
fn unknown_and_invalid_requests_get_distribution_errors() {
    let f = fixture();
    let cases = [
        ("/v2/library/app/manifests/v2", 404, "MANIFEST_UNKNOWN"),
        (&format!("/v2/library/app/manifests/sha256:{HEX_A}"), 404, "MANIFEST_UNKNOWN"),
        ("/v2/library/app/manifests/sha256:bad", 400, "DIGEST_INVALID"),
        ("/v2/library/nope/manifests/v1", 404, "NAME_UNKNOWN"),
        ("/v2/library/nope/tags/list", 404, "NAME_UNKNOWN"),
        ("/v2/Library/app/manifests/v1", 400, "NAME_INVALID"),
        (&format!("/v2/library/app/blobs/sha256:{HEX_A}"), 404, "BLOB_UNKNOWN"),
        ("/v2/library/app/blobs/sha256:bad", 400, "DIGEST_INVALID"),
    ];
    for (url, status, expected) in cases {
        let reply = get(&f, url);
        assert_eq!((reply.status, code(&reply)), (status, expected.to_owned()), "{url}");
    }
    let refused = handle(&f.storage, "PUT", "/v2/library/app/manifests/v1", None);
    assert_eq!((refused.status, code(&refused)), (405, "UNSUPPORTED".to_owned()));
    let upload = handle(&f.storage, "POST", "/v2/library/app/blobs/uploads/", None);
    assert_eq!((upload.status, code(&upload)), (405, "UNSUPPORTED".to_owned()));
    for method in ["DELETE", "PATCH"] {
        assert_eq!(handle(&f.storage, method, "/v2/library/app/blobs/uploads/x", None).status, 405);
    }
    assert_eq!(get(&f, "/").status, 404);
    // A manifest through the blob endpoint: served, from the repository that links it.
    let manifest_blob = get(&f, &format!("/v2/library/app/blobs/{}", f.manifest));
    assert_eq!(manifest_blob.header_value("Docker-Content-Digest"), Some(f.manifest.as_str()));
    let unsatisfiable =
        handle(&f.storage, "GET", &format!("/v2/library/app/blobs/{}", f.layer), Some("bytes=22-"));
    assert_eq!(unsatisfiable.status, 416);
}

#[test]
fn no_request_reads_outside_the_storage() {
    let f = fixture();
    let secret_digest = "sha256:".to_owned() + &hex(&Sha256::digest(SECRET));
    // The secret is even stored as a blob, but no repository links it.
    put_blob(&f.storage.v2, SECRET);
    let attempts = [
        format!("/v2/../../etc/passwd/blobs/{secret_digest}"),
        format!("/v2/%2e%2e/%2e%2e/secret/blobs/{secret_digest}"),
        format!("/v2/%2E%2E%2F%2E%2E/blobs/{secret_digest}"),
        format!("/v2//etc/passwd/blobs/{secret_digest}"),
        format!("/v2/%2fetc/passwd/blobs/{secret_digest}"),
        format!("/v2/library/app/../../../blobs/{secret_digest}"),
        format!("/v2/library/app/blobs/{secret_digest}"),
        "/v2/library/app/blobs/sha256:..%2f..%2f..%2fsecret".to_owned(),
        "/v2/library/app/manifests/..".to_owned(),
        "/v2/library/app/manifests/%2e%2e".to_owned(),
        "/v2/library/app/manifests/..%2f..%2f..%2fsecret".to_owned(),
        "/v2/library/app/_manifests/tags/list".to_owned(),
        "/v2/library/app/_layers/manifests/v1".to_owned(),
        "/v2/%00/manifests/v1".to_owned(),
        "/v2/library%00/app/manifests/v1".to_owned(),
        "/v2/../tags/list".to_owned(),
        "/v2/./library/app/tags/list".to_owned(),
    ];
    for url in attempts {
        for method in ["GET", "HEAD"] {
            let reply = handle(&f.storage, method, &url, None);
            assert!(matches!(reply.status, 400 | 404), "{method} {url}: {reply:?}");
            let text = String::from_utf8_lossy(&body(reply)).into_owned();
            assert!(!text.contains("TOP-SECRET"), "{method} {url}: {text}");
        }
    }
}

#[test]
fn a_link_naming_a_path_is_refused() {
    let f = fixture();
    let link = f.storage.v2.join("repositories/library/app/_manifests/tags/evil/current/link");
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    fs::write(&link, "sha256:../../../../secret").unwrap();
    let reply = get(&f, "/v2/library/app/manifests/evil");
    assert_eq!((reply.status, code(&reply)), (500, "UNKNOWN".to_owned()));
    assert!(matches!(
        list_images(f.storage.v2.parent().unwrap().parent().unwrap().parent().unwrap()),
        Err(RegistryError::Corrupt { .. })
    ));
}

#[test]
fn a_manifest_that_does_not_match_its_digest_is_not_served() {
    let f = fixture();
    let hex = f.manifest.strip_prefix("sha256:").unwrap();
    fs::write(f.storage.v2.join("blobs/sha256").join(&hex[..2]).join(hex).join("data"), "{}").unwrap();
    assert_eq!(get(&f, "/v2/library/app/manifests/v1").status, 500);
}

#[test]
fn list_images_reads_tags() {
    let f = fixture();
    let root = f.storage.v2.parent().unwrap().parent().unwrap().parent().unwrap();
    let images = list_images(root).unwrap();
    assert_eq!(
        images,
        vec![ImageRef {
            repository: "library/app".into(),
            tag: "v1".into(),
            digest: f.manifest.clone(),
            media_type: OCI_MANIFEST.into()
        }]
    );
    assert_eq!(images[0].to_string(), format!("library/app:v1@{}", f.manifest));
    let empty = tempfile::tempdir().unwrap();
    let err = list_images(empty.path()).unwrap_err();
    assert!(matches!(err, RegistryError::NotAStorage { .. }));
    assert!(err.hint().is_some());
}

#[test]
fn errors_read_well() {
    let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let err = RegistryError::Listen { addr, source: io::Error::from(io::ErrorKind::AddrInUse) };
    assert_eq!(err.to_string(), "could not listen on '127.0.0.1:5000'");
    assert!(err.hint().unwrap().contains("--registry-port"));
    let err = RegistryError::NotReady { addr, waited: Duration::from_millis(1500), last: "x".into() };
    assert_eq!(err.to_string(), "the registry on '127.0.0.1:5000' was not ready within 1.5s: x");
}

#[test]
fn request_heads_are_parsed_strictly() {
    assert_eq!(parse_request_line("GET /v2/ HTTP/1.1").unwrap(), ("GET", "/v2/", false));
    assert_eq!(parse_request_line("HEAD /v2/x HTTP/1.0").unwrap(), ("HEAD", "/v2/x", true));
    for bad in [
        "GET /v2/ HTTP/2",
        "GET /v2/",
        "GET  /v2/ HTTP/1.1",
        "get /v2/ HTTP/1.1",
        "GET http://x/v2/ HTTP/1.1",
        "GET /v2/ HTTP/1.1 x",
        "GET /v2/\u{7f} HTTP/1.1",
    ] {
        assert!(matches!(parse_request_line(bad), Err(HeadError::Bad(_))), "{bad}");
    }
    let mut head = RequestHead {
        method: "GET".into(),
        target: "/".into(),
        close: false,
        range: None,
        authorization: None,
        body: RequestBody::None,
        expect_continue: false,
    };
    apply_header(&mut head, "Connection: keep-alive, Close", false).unwrap();
    apply_header(&mut head, "range:  bytes=0-1 ", false).unwrap();
    apply_header(&mut head, "Content-Length: 12", false).unwrap();
    apply_header(&mut head, "Content-Length: 12", false).unwrap();
    assert_eq!(
        (head.close, head.range.as_deref(), &head.body),
        (true, Some("bytes=0-1"), &RequestBody::Length(12))
    );
    for bad in ["Content-Length: 13", "Content-Length: -1", "Content-Length: +1", "no colon", " X: y", ": y"]
    {
        assert!(matches!(apply_header(&mut head, bad, false), Err(HeadError::Bad(_))), "{bad}");
    }
    apply_header(&mut head, "Expect: 100-Continue", false).unwrap();
    assert!(head.expect_continue);
    apply_header(&mut head, "Transfer-Encoding: chunked", false).unwrap();
    assert_eq!(head.body, RequestBody::Unknown);
}

fn start(f: &Fixture, threads: usize) -> Registry {
    let root = f.storage.v2.parent().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    Registry::start(RegistryConfig { root, listen: "127.0.0.1:0".parse().unwrap(), threads, users: None })
        .unwrap()
}

fn connect(registry: &Registry) -> TcpStream {
    let stream = TcpStream::connect(registry.local_addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Reads one response: (status, head, body), by its Content-Length.
fn response(reader: &mut BufReader<&TcpStream>) -> (u16, String, Vec<u8>) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the connection closed; so far: {head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap();
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    (status, head, body)
}

fn closed(stream: &TcpStream) -> bool {
    let mut rest = Vec::new();
    let mut reader = stream;
    matches!(reader.read_to_end(&mut rest), Ok(0))
}

#[test]
fn http_keep_alive_pipelining_heads_and_bodies() {
    let f = fixture();
    let registry = start(&f, 2);
    let stream = connect(&registry);
    let mut writer = &stream;
    let mut reader = BufReader::new(&stream);
    // Two pipelined requests, then a HEAD, on one connection.
    write!(writer, "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/library/app/manifests/v1 HTTP/1.1\r\n\r\n")
        .unwrap();
    let (status, head, body) = response(&mut reader);
    assert_eq!((status, body.as_slice()), (200, b"{}".as_slice()), "{head}");
    assert!(head.contains("Docker-Distribution-API-Version: registry/2.0\r\n"), "{head}");
    let (status, head, _) = response(&mut reader);
    assert!(status == 200 && head.contains(&format!("Docker-Content-Digest: {}", f.manifest)), "{head}");
    write!(writer, "HEAD /v2/library/app/blobs/{} HTTP/1.1\r\n\r\n", f.layer).unwrap();
    let mut line = String::new();
    let mut head = String::new();
    while line != "\r\n" {
        line.clear();
        reader.read_line(&mut line).unwrap();
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("Content-Length: 22\r\n"), "{head}");
    // A push with a small body: refused, and the connection goes on.
    write!(writer, "PUT /v2/library/app/manifests/v2 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}").unwrap();
    assert_eq!(response(&mut reader).0, 405);
    write!(writer, "GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let (status, head, _) = response(&mut reader);
    assert!(status == 200 && head.contains("Connection: close"), "{head}");
    assert!(closed(&stream));
    registry.stop();
}

#[test]
fn http_refusals_close_the_connection() {
    let f = fixture();
    let registry = start(&f, 2);
    let cases: [(&[u8], &str); 5] = [
        // A TLS ClientHello's first bytes: answered at once, as Go's server does.
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "HTTP/1.0 400 Bad Request\r\n"),
        (b"GET /v2/ HTTP/2.0\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n"),
        (b"BREW /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n", "HTTP/1.1 405 Method Not Allowed\r\n"),
        (b"GET /v2/ HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK\r\n"),
        (
            b"POST /v2/x/blobs/uploads/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            "HTTP/1.1 405",
        ),
    ];
    for (request, expected) in cases {
        let stream = connect(&registry);
        (&stream).write_all(request).unwrap();
        let mut answer = Vec::new();
        (&stream).read_to_end(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(expected), "{request:?}: {answer}");
    }
    // A push that waits for "100 Continue" is answered at once.
    let stream = connect(&registry);
    let started = Instant::now();
    (&stream)
        .write_all(b"PUT /v2/x/manifests/v1 HTTP/1.1\r\nContent-Length: 9\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let (status, _, _) = response(&mut BufReader::new(&stream));
    assert_eq!(status, 405);
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    // A head that never ends is cut off at the limit.
    let stream = connect(&registry);
    let long = format!("GET /v2/ HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
    let _ = (&stream).write_all(long.as_bytes());
    let mut answer = String::new();
    let _ = (&stream).read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    registry.stop();
}

#[test]
fn an_idle_connection_does_not_hold_the_only_handler() {
    let f = fixture();
    let registry = start(&f, 1);
    let idle = connect(&registry);
    let mut reader = BufReader::new(&idle);
    (&idle).write_all(b"GET /v2/ HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(response(&mut reader).0, 200);
    // The one handler now waits on `idle`; another client is served all the same.
    let started = Instant::now();
    let other = connect(&registry);
    (&other).write_all(b"GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(response(&mut BufReader::new(&other)).0, 200);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(closed(&idle), "the idle connection was closed for the waiting one");
    // A client that connects and says nothing is given up on once another waits.
    let silent = connect(&registry);
    thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let other = connect(&registry);
    (&other).write_all(b"GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(response(&mut BufReader::new(&other)).0, 200);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(closed(&silent));
    registry.stop();
}

#[test]
fn starts_serves_and_stops_on_a_real_socket() {
    let f = fixture();
    let root = f.storage.v2.parent().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let registry = Registry::start(RegistryConfig {
        root: root.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        users: None,
    })
    .unwrap();
    let addr = registry.local_addr();
    wait_ready(addr, "sea.hub:5000", Some(("library/app", "v1")), Duration::from_secs(5)).unwrap();
    let err = wait_ready(addr, "sea.hub:5000", Some(("library/app", "v9")), Duration::from_millis(300))
        .unwrap_err();
    assert!(err.to_string().contains("'/v2/library/app/manifests/v9' answered HTTP 404"), "{err}");
    assert!(matches!(
        wait_ready(addr, "x", Some(("../x", "v1")), Duration::from_secs(1)),
        Err(RegistryError::InvalidProbe { .. })
    ));
    // The same port again: refused while it serves, with the hint.
    let busy = Registry::start(RegistryConfig { root: root.clone(), listen: addr, threads: 1, users: None })
        .unwrap_err();
    assert!(
        matches!(&busy, RegistryError::Listen { source, .. } if source.kind() == io::ErrorKind::AddrInUse)
    );
    registry.stop();
    let err = wait_ready(addr, "x", None, Duration::from_millis(200)).unwrap_err();
    assert!(err.to_string().contains("could not connect"), "{err}");
}

#[test]
fn a_registry_with_users_answers_only_their_credentials() {
    let f = fixture();
    let root = f.storage.v2.parent().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let admin = Credentials::new("admin", "passw0rd").unwrap();
    let users = Users::parse(&admin.htpasswd_line().unwrap(), Path::new("htpasswd")).unwrap();
    let registry = Registry::start(RegistryConfig {
        root,
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        users: Some(users),
    })
    .unwrap();
    let stream = connect(&registry);
    let mut reader = BufReader::new(&stream);
    let ask = |authorization: Option<&str>| {
        let header = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        (&stream).write_all(format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{header}\r\n").as_bytes()).unwrap();
    };
    ask(None);
    let (status, head, body) = response(&mut reader);
    assert_eq!(status, 401, "{head}");
    assert!(head.contains("WWW-Authenticate: Basic realm=\"kubeferry-registry\"\r\n"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("\"code\":\"UNAUTHORIZED\""));
    ask(Some(&Credentials::new("admin", "wrong").unwrap().authorization()));
    assert_eq!(response(&mut reader).0, 401);
    ask(Some(&admin.authorization()));
    assert_eq!(response(&mut reader).0, 200, "the same connection goes on after a 401");
    wait_ready_as(
        registry.local_addr(),
        "x",
        Some(("library/app", "v1")),
        Some(&admin),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = wait_ready_as(
        registry.local_addr(),
        "x",
        Some(("library/app", "v1")),
        None,
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(err.to_string().ends_with("'/v2/library/app/manifests/v1' answered HTTP 401"), "{err}");
}
