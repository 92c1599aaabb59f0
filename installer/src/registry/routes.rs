//! The routes of the distribution API and their replies.

use super::*;

/// The routes of the distribution API this server knows.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route<'a> {
    Base,
    Catalog,
    Tags { name: &'a str },
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    Upload,
}

/// Splits a decoded path (no query) into a route; None for paths outside the API.
pub(super) fn route(path: &str) -> Option<Route<'_>> {
    let rest = match path {
        "/v2" | "/v2/" => return Some(Route::Base),
        _ => path.strip_prefix("/v2/")?,
    };
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    // The name is everything before the route's fixed tail; references and digests have no
    // '/', so splitting at the last '/' is unambiguous even for a repository named "x/blobs".
    let (before, last) = rest.rsplit_once('/')?;
    if before.ends_with("/blobs/uploads") || (last == "uploads" && before.ends_with("/blobs")) {
        return Some(Route::Upload);
    }
    if let Some(name) = before.strip_suffix("/manifests") {
        return Some(Route::Manifest { name, reference: last });
    }
    if let Some(name) = before.strip_suffix("/blobs") {
        return Some(Route::Blob { name, digest: last });
    }
    if last == "list"
        && let Some(name) = before.strip_suffix("/tags")
    {
        return Some(Route::Tags { name });
    }
    None
}

/// Answers one request.
pub(super) fn handle(storage: &Storage, method: &str, url: &str, range: Option<&str>) -> Reply {
    let (raw_path, query) = url.split_once('?').unwrap_or((url, ""));
    let Some(path) = percent_decode(raw_path) else {
        return Reply::error(400, "NAME_INVALID", "invalid repository name", serde_json::Value::Null);
    };
    let Some(route) = route(&path) else {
        return not_found();
    };
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Reply::error(
                405,
                "UNSUPPORTED",
                "The operation is unsupported.",
                serde_json::Value::Null,
            )
            .header("Allow", "GET, HEAD");
        }
    };
    let result = match route {
        Route::Base => Ok(Reply::json(200, &serde_json::json!({}))),
        Route::Upload => {
            return Reply::error(
                405,
                "UNSUPPORTED",
                "The operation is unsupported.",
                serde_json::Value::Null,
            )
            .header("Allow", "GET, HEAD");
        }
        Route::Catalog => catalog(storage, query),
        Route::Tags { name } => tags(storage, name, query),
        Route::Manifest { name, reference } => manifest(storage, name, reference),
        Route::Blob { name, digest } => blob(storage, name, digest, head, range),
    };
    match result {
        Ok(reply) => reply,
        Err(error) => Reply::internal(&error.to_string()),
    }
}

/// The answer to a request without good credentials, as distribution's htpasswd auth gives it.
pub(super) fn unauthorized() -> Reply {
    Reply::error(401, "UNAUTHORIZED", "authentication required", serde_json::Value::Null)
        .header("WWW-Authenticate", format!("Basic realm=\"{REALM}\""))
}

pub(super) fn not_found() -> Reply {
    Reply::new(404, Body::Bytes(b"404 page not found\n".to_vec()))
        .header("Content-Type", "text/plain; charset=utf-8")
}

pub(super) fn name_invalid(name: &str) -> Reply {
    Reply::error(400, "NAME_INVALID", "invalid repository name", serde_json::json!({"name": name}))
}

pub(super) fn name_unknown(name: &str) -> Reply {
    Reply::error(
        404,
        "NAME_UNKNOWN",
        "repository name not known to registry",
        serde_json::json!({"name": name}),
    )
}

pub(super) fn digest_invalid(digest: &str) -> Reply {
    Reply::error(
        400,
        "DIGEST_INVALID",
        "provided digest did not match uploaded content",
        serde_json::json!({"digest": digest}),
    )
}

pub(super) fn catalog(storage: &Storage, query: &str) -> Result<Reply, RegistryError> {
    let names = storage.repositories()?;
    let (page, next) = paginate(&names, query);
    let mut reply = Reply::json(200, &serde_json::json!({"repositories": page}));
    if let Some((last, n)) = next {
        reply = reply.header("Link", format!("</v2/_catalog?last={last}&n={n}>; rel=\"next\""));
    }
    Ok(reply)
}

pub(super) fn tags(storage: &Storage, name: &str, query: &str) -> Result<Reply, RegistryError> {
    if !valid_name(name) {
        return Ok(name_invalid(name));
    }
    if !storage.has_repository(name) {
        return Ok(name_unknown(name));
    }
    let tags = storage.tags(name)?;
    let (page, next) = paginate(&tags, query);
    let mut reply = Reply::json(200, &serde_json::json!({"name": name, "tags": page}));
    if let Some((last, n)) = next {
        reply = reply.header("Link", format!("</v2/{name}/tags/list?last={last}&n={n}>; rel=\"next\""));
    }
    Ok(reply)
}

/// The page of `items` (sorted) that `n` and `last` in `query` ask for, and the next page's
/// `(last, n)` when there is one.
pub(super) fn paginate<'a>(items: &'a [String], query: &str) -> (&'a [String], Option<(&'a str, usize)>) {
    let mut n = None;
    let mut last = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("n", value)) => n = value.parse::<usize>().ok(),
            Some(("last", value)) => last = percent_decode(value),
            _ => {}
        }
    }
    let start = match &last {
        Some(last) => items.partition_point(|item| item.as_str() <= last.as_str()),
        None => 0,
    };
    let rest = &items[start..];
    match n {
        Some(n) if n < rest.len() => {
            let page = &rest[..n];
            (page, page.last().map(|last| (last.as_str(), n)))
        }
        _ => (rest, None),
    }
}

pub(super) fn manifest(storage: &Storage, name: &str, reference: &str) -> Result<Reply, RegistryError> {
    if !valid_name(name) {
        return Ok(name_invalid(name));
    }
    let unknown = |detail| Reply::error(404, "MANIFEST_UNKNOWN", "manifest unknown", detail);
    let digest = if let Some(digest) = Digest::parse(reference) {
        if !storage.has_repository(name) {
            return Ok(name_unknown(name));
        }
        if !storage.has_manifest(name, &digest)? {
            return Ok(unknown(serde_json::json!({"Name": name, "Revision": reference})));
        }
        digest
    } else if valid_tag(reference) {
        if !storage.has_repository(name) {
            return Ok(name_unknown(name));
        }
        match storage.tag(name, reference)? {
            Some(digest) => digest,
            None => return Ok(unknown(serde_json::json!({"Tag": reference}))),
        }
    } else if reference.contains(':') {
        return Ok(digest_invalid(reference));
    } else {
        return Ok(unknown(serde_json::json!({"Tag": reference})));
    };
    let Some(bytes) = storage.read_manifest(&digest)? else {
        return Ok(unknown(serde_json::json!({"Name": name, "Revision": digest.to_string()})));
    };
    let path = storage.blob_path(&digest);
    let media_type = manifest_media_type(&bytes).ok_or_else(|| RegistryError::Corrupt {
        path: path.clone(),
        reason: "the manifest is neither an image manifest nor an index".to_owned(),
    })?;
    Ok(Reply::new(200, Body::Bytes(bytes))
        .header("Content-Type", media_type)
        .header("Docker-Content-Digest", digest.to_string())
        .header("ETag", format!("\"{digest}\"")))
}

pub(super) fn blob(
    storage: &Storage,
    name: &str,
    digest: &str,
    head: bool,
    range: Option<&str>,
) -> Result<Reply, RegistryError> {
    if !valid_name(name) {
        return Ok(name_invalid(name));
    }
    let Some(digest) = Digest::parse(digest) else {
        return Ok(digest_invalid(digest));
    };
    if !storage.has_repository(name) {
        return Ok(name_unknown(name));
    }
    let unknown = || {
        Reply::error(404, "BLOB_UNKNOWN", "blob unknown to registry", serde_json::json!(digest.to_string()))
    };
    if !storage.has_blob(name, &digest)? {
        return Ok(unknown());
    }
    let path = storage.blob_path(&digest);
    let headers = |reply: Reply| {
        reply
            .header("Content-Type", "application/octet-stream")
            .header("Docker-Content-Digest", digest.to_string())
            .header("ETag", format!("\"{digest}\""))
            .header("Accept-Ranges", "bytes")
            .header("Cache-Control", "max-age=31536000")
    };
    if head {
        let size = match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => meta.len(),
            Ok(_) => return Ok(unknown()),
            Err(error) if missing(&error) => return Ok(unknown()),
            Err(source) => return Err(RegistryError::Io { action: "read", path, source }),
        };
        return Ok(headers(Reply::new(200, Body::Length(size))));
    }
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if missing(&error) => return Ok(unknown()),
        Err(source) => return Err(RegistryError::Io { action: "open", path, source }),
    };
    let size = match file.metadata() {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => return Ok(unknown()),
        Err(source) => return Err(RegistryError::Io { action: "read", path, source }),
    };
    match range.map(|range| parse_range(range, size)) {
        None | Some(ByteRange::Full) => Ok(headers(Reply::new(200, Body::File { file, len: size }))),
        Some(ByteRange::Part { start, end }) => {
            file.seek(SeekFrom::Start(start)).map_err(|source| RegistryError::Io {
                action: "read",
                path,
                source,
            })?;
            Ok(headers(Reply::new(206, Body::File { file, len: end - start + 1 }))
                .header("Content-Range", format!("bytes {start}-{end}/{size}")))
        }
        Some(ByteRange::Unsatisfiable) => Ok(Reply::new(416, Body::Empty)
            .header("Content-Range", format!("bytes */{size}"))
            .header("Docker-Content-Digest", digest.to_string())),
    }
}

/// A `Range` header's meaning for a body of known size.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ByteRange {
    /// No usable single range: send everything (RFC 9110 lets a server ignore a range).
    Full,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// A well-formed range that starts past the end.
    Unsatisfiable,
}

pub(super) fn parse_range(value: &str, size: u64) -> ByteRange {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let number = |s: &str| if s.bytes().all(|b| b.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    match (first.is_empty(), last.is_empty()) {
        // "-N": the last N bytes.
        (true, false) => match number(last) {
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if size == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Part { start: size - n.min(size), end: size - 1 },
            None => ByteRange::Full,
        },
        (false, _) => {
            let Some(start) = number(first) else { return ByteRange::Full };
            let end = if last.is_empty() { Some(u64::MAX) } else { number(last) };
            match end {
                None => ByteRange::Full,
                Some(end) if end < start => ByteRange::Full,
                Some(_) if start >= size => ByteRange::Unsatisfiable,
                Some(end) => ByteRange::Part { start, end: end.min(size - 1) },
            }
        }
        (true, true) => ByteRange::Full,
    }
}
