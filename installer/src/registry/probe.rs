//! Waiting until a registry, this one or a shipped one, answers.

use super::*;

/// Every manifest media type, for the `Accept` header of a probe.
pub(super) const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Polls the registry on `addr` until `GET /v2/` answers (200, or 401 from a registry that
/// wants credentials) and, when `probe` is given as `(repository, tag)`, until `HEAD` of that
/// manifest answers 200. `host_header` is sent as `Host` (such as `sea.hub:5000`). Works with
/// any distribution registry, not only this one.
pub fn wait_ready(
    addr: SocketAddr,
    host_header: &str,
    probe: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<(), RegistryError> {
    wait_ready_as(addr, host_header, probe, None, timeout)
}

/// [`wait_ready`] for a registry that wants credentials: the probe's manifest is read with
/// them (`/v2/` may still answer 401 to a registry that checks credentials there only).
pub fn wait_ready_as(
    addr: SocketAddr,
    host_header: &str,
    probe: Option<(&str, &str)>,
    credentials: Option<&Credentials>,
    timeout: Duration,
) -> Result<(), RegistryError> {
    if let Some((repository, tag)) = probe
        && !(valid_name(repository) && valid_tag(tag))
    {
        return Err(RegistryError::InvalidProbe { repository: repository.to_owned(), tag: tag.to_owned() });
    }
    let start = Instant::now();
    let deadline = start + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        let attempt_timeout = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(100), Duration::from_secs(2));
        let last = match ready_once(addr, host_header, probe, credentials, attempt_timeout) {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(RegistryError::NotReady { addr, waited: now - start, last });
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// One readiness check; Err: what it saw, for the user.
pub(super) fn ready_once(
    addr: SocketAddr,
    host: &str,
    probe: Option<(&str, &str)>,
    credentials: Option<&Credentials>,
    timeout: Duration,
) -> Result<(), String> {
    let authorization = credentials.map(|c| format!("Authorization: {}\r\n", c.authorization()));
    let authorization = authorization.as_deref().unwrap_or("");
    let status = http_status(addr, host, "GET", "/v2/", authorization, timeout)?;
    if status != 200 && status != 401 {
        return Err(format!("'/v2/' answered HTTP {status}"));
    }
    if let Some((repository, tag)) = probe {
        let path = format!("/v2/{repository}/manifests/{tag}");
        let headers = format!("Accept: {ACCEPT_MANIFESTS}\r\n{authorization}");
        let status = http_status(addr, host, "HEAD", &path, &headers, timeout)?;
        if status != 200 {
            return Err(format!("'{path}' answered HTTP {status}"));
        }
    }
    Ok(())
}

/// Sends one HTTP/1.1 request, with `headers` (each ending in CRLF) beside `Host`, and returns
/// the response's status code.
pub(super) fn http_status(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &str,
    timeout: Duration,
) -> Result<u16, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("could not connect: {e}"))?;
    let io = |e: io::Error| format!("'{path}' did not answer: {e}");
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kubeferry\r\n{headers}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    // Only the status line is needed: "HTTP/1.1 200 OK\r\n".
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 4096 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    match (words.next(), words.next().and_then(|code| code.parse::<u16>().ok())) {
        (Some(version), Some(status)) if version.starts_with("HTTP/") => Ok(status),
        _ if line.is_empty() => Err(format!("'{path}' closed the connection without answering")),
        _ => Err(format!("'{path}' did not answer HTTP: '{}'", line.chars().take(80).collect::<String>())),
    }
}
