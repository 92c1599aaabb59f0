//! The OCI distribution API over HTTP(S): where a reference's registry is reached (mirrors,
//! Docker Hub's endpoint, plain HTTP for loopback and insecure registries), authentication on
//! a 401 challenge, and retries with backoff.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use super::Stats;
use super::auth::{Challenge, Credentials, parse_challenge};
use super::error::PullError;
use crate::reference::{DOCKER_HUB, Reference};

/// Docker Hub's API host.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The most of an error body read, for its message.
const MAX_ERROR_BODY: u64 = 16 << 10;
/// The largest token response read.
const MAX_TOKEN_BODY: u64 = 1 << 20;

/// `FROM=TO`: requests for the registry (or registry/prefix) `from` go to `to` instead, which
/// is a host, or a host and a repository prefix. `docker.io=mirror.local:5000`,
/// `registry.k8s.io=mirror.local:5000/k8s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// A registry, or a registry and a repository prefix.
    pub from: String,
    /// A registry, or a registry and a repository prefix.
    pub to: String,
}

impl std::str::FromStr for Mirror {
    type Err = PullError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = || {
            PullError::Option(format!("'{text}' is not a mirror: expected REGISTRY[/PREFIX]=HOST[/PREFIX]"))
        };
        let (from, to) = text.split_once('=').ok_or_else(fail)?;
        let (from, to) = (from.trim_end_matches('/'), to.trim_end_matches('/'));
        if from.is_empty() || to.is_empty() || to.contains("://") || from.contains("://") {
            return Err(fail());
        }
        let from = match from {
            "index.docker.io" => DOCKER_HUB.to_owned(),
            f => f
                .strip_prefix("index.docker.io/")
                .map_or_else(|| f.to_owned(), |r| format!("{DOCKER_HUB}/{r}")),
        };
        Ok(Mirror { from, to: to.to_owned() })
    }
}

/// Where one repository is served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://host:port` or `http://host:port`.
    pub base: String,
    /// The host (and port) as credentials are looked up: the mirror's when mirrored.
    pub host: String,
    /// The repository at that host.
    pub repository: String,
}

/// How the client reaches registries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Credentials by host.
    pub credentials: Credentials,
    /// Mirrors and rewrites, the longest match first.
    pub mirrors: Vec<Mirror>,
    /// Hosts (or host:port) spoken to over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Attempts per request (1 = no retry).
    pub attempts: u32,
    /// The first retry's wait; doubled at each retry.
    pub backoff: Duration,
    /// Connection and per-read timeout.
    pub timeout: Duration,
}

/// A synchronous registry client, shared by the download threads.
#[derive(Debug)]
pub struct Client {
    agent: ureq::Agent,
    options: ClientOptions,
    /// `Authorization` values that worked, by (host, repository).
    authorizations: Mutex<HashMap<(String, String), String>>,
}

/// An answer with a body to read.
pub struct Response {
    /// The Content-Type.
    pub content_type: Option<String>,
    /// `Docker-Content-Digest`, when sent.
    pub digest: Option<String>,
    /// The body.
    pub body: ureq::Body,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("content_type", &self.content_type)
            .field("digest", &self.digest)
            .finish()
    }
}

impl Client {
    /// A client with these options.
    pub fn new(options: ClientOptions) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(options.timeout))
            .timeout_per_read(Some(options.timeout))
            .user_agent(concat!("kubeferry/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections_per_host(8)
            // As Go's client does: credentials follow a redirect only to the same host (a blob
            // redirected to object storage carries its own signature).
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .build();
        let mut options = options;
        options.mirrors.sort_by_key(|m| std::cmp::Reverse(m.from.len()));
        Client { agent: config.into(), options, authorizations: Mutex::default() }
    }

    /// Where a reference is fetched from: the longest mirror that matches, else its own
    /// registry (Docker Hub at its API host); over plain HTTP for a loopback or insecure host.
    pub fn endpoint(&self, reference: &Reference) -> Endpoint {
        let name = reference.name();
        let (host, repository) = self
            .options
            .mirrors
            .iter()
            .find_map(|m| {
                let rest = if name == m.from { "" } else { name.strip_prefix(&m.from)?.strip_prefix('/')? };
                let rest = if m.from.contains('/') { rest } else { reference.repository() };
                let (host, prefix) = m.to.split_once('/').unwrap_or((&m.to, ""));
                let repository = match (prefix, rest) {
                    ("", r) => r.to_owned(),
                    (p, "") => p.to_owned(),
                    (p, r) => format!("{p}/{r}"),
                };
                Some((host.to_owned(), repository))
            })
            .unwrap_or_else(|| (reference.registry().to_owned(), reference.repository().to_owned()));
        let api_host = if host == DOCKER_HUB { DOCKER_HUB_API.to_owned() } else { host.clone() };
        let scheme = if self.plain_http(&host) { "http" } else { "https" };
        Endpoint { base: format!("{scheme}://{api_host}"), host, repository }
    }

    /// Loopback hosts (as docker allows) and the ones listed as insecure.
    fn plain_http(&self, host: &str) -> bool {
        let bare = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        let loopback = bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        loopback || self.options.insecure.iter().any(|i| i == host || i == bare)
    }

    /// GETs `/v2/<repository>/<kind>/<object>`: retries transport errors, 5xx and 429 with
    /// backoff; answers one 401 by authenticating. Any other status than 200 is an error.
    pub fn get(
        &self,
        reference: &Reference,
        endpoint: &Endpoint,
        kind: &str,
        object: &str,
        accept: &str,
        stats: &Stats,
    ) -> Result<Response, PullError> {
        let url = format!("{}/v2/{}/{kind}/{object}", endpoint.base, endpoint.repository);
        let key = (endpoint.host.clone(), endpoint.repository.clone());
        let mut authenticated = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let authorization = self.lock().get(&key).cloned();
            let mut request = self.agent.get(&url).header("Accept", accept);
            if let Some(value) = &authorization {
                request = request.header("Authorization", value);
            }
            let response = match request.call() {
                Ok(response) => response,
                Err(e) if attempt < self.options.attempts && retryable(&e) => {
                    stats.count_retry();
                    self.wait(attempt);
                    continue;
                }
                Err(source) => {
                    return Err(PullError::Unreachable {
                        reference: reference.to_string(),
                        registry: endpoint.host.clone(),
                        url,
                        attempts: attempt,
                        source: Box::new(source),
                    });
                }
            };
            let status = response.status().as_u16();
            let header =
                |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            match status {
                200 => {
                    return Ok(Response {
                        content_type: header("content-type"),
                        digest: header("docker-content-digest"),
                        body: response.into_body(),
                    });
                }
                401 if !authenticated => {
                    let challenge = header("www-authenticate");
                    let detail = error_detail(response.into_body());
                    let value =
                        self.authenticate(reference, endpoint, challenge.as_deref(), &detail, stats)?;
                    self.lock().insert(key.clone(), value);
                    authenticated = true;
                    attempt = 0;
                }
                401 | 403 => {
                    let detail = error_detail(response.into_body());
                    let creds = self.options.credentials.get(&endpoint.host).is_some();
                    return Err(PullError::Unauthorized {
                        reference: reference.to_string(),
                        registry: endpoint.host.clone(),
                        detail: if creds {
                            format!("the credentials for {} were refused ({detail})", endpoint.host)
                        } else {
                            format!("it needs credentials and none were given ({detail})")
                        },
                    });
                }
                404 => {
                    return Err(PullError::NotFound {
                        reference: reference.to_string(),
                        registry: endpoint.host.clone(),
                        detail: error_detail(response.into_body()),
                    });
                }
                429 | 500..=599 if attempt < self.options.attempts => {
                    stats.count_retry();
                    self.wait(attempt);
                }
                _ => {
                    return Err(PullError::Http {
                        reference: reference.to_string(),
                        registry: endpoint.host.clone(),
                        url,
                        status,
                        detail: error_detail(response.into_body()),
                    });
                }
            }
        }
    }

    /// The `Authorization` value that answers a challenge.
    fn authenticate(
        &self,
        reference: &Reference,
        endpoint: &Endpoint,
        challenge: Option<&str>,
        detail: &str,
        stats: &Stats,
    ) -> Result<String, PullError> {
        let credential = self.options.credentials.get(&endpoint.host);
        let unauthorized = |detail: String| PullError::Unauthorized {
            reference: reference.to_string(),
            registry: endpoint.host.clone(),
            detail,
        };
        match challenge.and_then(parse_challenge) {
            Some(Challenge::Basic) => match credential {
                Some(c) => Ok(c.basic()),
                None => Err(unauthorized(format!("it needs credentials and none were given ({detail})"))),
            },
            Some(Challenge::Bearer { realm, service, scope }) => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", endpoint.repository));
                let mut url = realm.clone();
                url.push(if url.contains('?') { '&' } else { '?' });
                if let Some(service) = &service {
                    url.push_str(&format!("service={}&", encode(service)));
                }
                url.push_str(&format!("scope={}", encode(&scope)));
                let mut attempt = 0;
                let response = loop {
                    attempt += 1;
                    let mut request = self.agent.get(&url);
                    if let Some(c) = credential {
                        request = request.header("Authorization", c.basic());
                    }
                    match request.call() {
                        Ok(r) if r.status().is_server_error() && attempt < self.options.attempts => {}
                        Ok(r) => break r,
                        Err(e) if attempt < self.options.attempts && retryable(&e) => {}
                        Err(source) => {
                            return Err(PullError::Unreachable {
                                reference: reference.to_string(),
                                registry: endpoint.host.clone(),
                                url: realm,
                                attempts: attempt,
                                source: Box::new(source),
                            });
                        }
                    }
                    stats.count_retry();
                    self.wait(attempt);
                };
                let status = response.status().as_u16();
                if status != 200 {
                    let why = error_detail(response.into_body());
                    return Err(unauthorized(match credential {
                        Some(_) => {
                            format!("the token service {realm} refused the credentials ({status}: {why})")
                        }
                        None => format!(
                            "the token service {realm} answered {status} ({why}); no credentials were given"
                        ),
                    }));
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body =
                    response.into_body().with_config().limit(MAX_TOKEN_BODY).read_to_vec().map_err(|e| {
                        unauthorized(format!("the token service {realm} sent no token ({e})"))
                    })?;
                let token: Token = serde_json::from_slice(&body)
                    .map_err(|e| unauthorized(format!("the token service {realm} sent no token ({e})")))?;
                match token.token.or(token.access_token).filter(|t| !t.is_empty()) {
                    Some(t) => Ok(format!("Bearer {t}")),
                    None => Err(unauthorized(format!("the token service {realm} sent no token"))),
                }
            }
            None => Err(unauthorized(format!(
                "it answered 401 without a challenge kubeferry understands ({})",
                challenge.unwrap_or("no WWW-Authenticate")
            ))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        self.authorizations.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait(&self, attempt: u32) {
        let factor = 1u32 << attempt.saturating_sub(1).min(6);
        std::thread::sleep(self.options.backoff * factor);
    }

    /// The retry policy, for callers that retry a whole transfer.
    pub fn attempts(&self) -> u32 {
        self.options.attempts
    }

    /// Waits before retry `attempt`.
    pub fn backoff(&self, attempt: u32) {
        self.wait(attempt);
    }
}

/// Transport errors worth another attempt.
fn retryable(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
    )
}

/// The registry's error message (`{"errors":[{"code","message"}]}`), or the start of the body.
fn error_detail(body: ureq::Body) -> String {
    let mut bytes = Vec::new();
    let _ = body.into_reader().take(MAX_ERROR_BODY).read_to_end(&mut bytes);
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(errors) = serde_json::from_slice::<Errors>(&bytes)
        && !errors.errors.is_empty()
    {
        return errors
            .errors
            .iter()
            .map(|e| match (&e.code, &e.message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.clone(),
                (None, Some(m)) => m.clone(),
                (None, None) => "an error".into(),
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text = String::from_utf8_lossy(&bytes);
    let text: String = text.trim().chars().take(200).collect();
    if text.is_empty() { "no message".into() } else { text }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters, ':' and '/' stay).
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(mirrors: &[&str], insecure: &[&str]) -> Client {
        Client::new(ClientOptions {
            credentials: Credentials::default(),
            mirrors: mirrors.iter().map(|m| m.parse().unwrap()).collect(),
            insecure: insecure.iter().map(|s| s.to_string()).collect(),
            attempts: 1,
            backoff: Duration::from_millis(1),
            timeout: Duration::from_secs(1),
        })
    }

    fn endpoint(c: &Client, reference: &str) -> (String, String, String) {
        let e = c.endpoint(&reference.parse().unwrap());
        (e.base, e.host, e.repository)
    }

    #[test]
    fn endpoints_schemes_and_mirrors() {
        let c = client(
            &[
                "docker.io=mirror.local:5000",
                "registry.k8s.io=127.0.0.1:5001/k8s",
                "quay.io/coreos=q.local/c",
            ],
            &["mirror.local:5000", "plain.example"],
        );
        let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(
            endpoint(&c, "nginx"),
            s("http://mirror.local:5000", "mirror.local:5000", "library/nginx")
        );
        assert_eq!(
            endpoint(&c, "registry.k8s.io/pause:3.9"),
            s("http://127.0.0.1:5001", "127.0.0.1:5001", "k8s/pause")
        );
        assert_eq!(endpoint(&c, "quay.io/coreos/etcd"), s("https://q.local", "q.local", "c/etcd"));
        assert_eq!(endpoint(&c, "quay.io/other/x"), s("https://quay.io", "quay.io", "other/x"));
        assert_eq!(endpoint(&c, "plain.example/a"), s("http://plain.example", "plain.example", "a"));
        assert_eq!(
            endpoint(&c, "plain.example:444/a"),
            s("http://plain.example:444", "plain.example:444", "a")
        );
        assert_eq!(endpoint(&c, "localhost:5000/a"), s("http://localhost:5000", "localhost:5000", "a"));
        assert_eq!(endpoint(&c, "127.9.9.9/a"), s("http://127.9.9.9", "127.9.9.9", "a"));
        assert_eq!(endpoint(&c, "[::1]:5000/a"), s("http://[::1]:5000", "[::1]:5000", "a"));
        assert_eq!(endpoint(&c, "ghcr.io/a/b"), s("https://ghcr.io", "ghcr.io", "a/b"));
        let hub = client(&[], &[]);
        assert_eq!(endpoint(&hub, "nginx"), s("https://registry-1.docker.io", "docker.io", "library/nginx"));
        assert!("nohost".parse::<Mirror>().is_err());
        assert!("a=https://b".parse::<Mirror>().is_err());
        assert_eq!("index.docker.io=m:1".parse::<Mirror>().unwrap().from, "docker.io");
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(encode("repository:library/app:pull"), "repository:library/app:pull");
        assert_eq!(encode("a b&c=d"), "a%20b%26c%3Dd");
    }
}
