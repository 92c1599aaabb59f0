//! Registry credentials and authentication challenges.
//!
//! Credentials come from `--registry-auth HOST=USER:PASSWORD` (given first, they win) and from
//! the docker configuration file, `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, whose
//! `auths` map holds a base64 `auth` of `user:password` (or `username` and `password`) per
//! registry. Docker Hub's entry is keyed `https://index.docker.io/v1/`. Credential helpers
//! (`credsStore`, `credHelpers`) are programs kubeferry does not run; their registries get no
//! credentials unless given with `--registry-auth`.
//!
//! A registry that wants authentication answers 401 with `WWW-Authenticate`: `Basic` (send the
//! credentials) or `Bearer realm=...,service=...,scope=...` (ask the realm for a token, with
//! the credentials when there are some, then send the token).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::error::PullError;
use crate::reference::DOCKER_HUB;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential").field("username", &self.username).field("password", &"<hidden>").finish()
    }
}

impl Credential {
    /// The `Authorization: Basic` value.
    pub fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// Parses `HOST=USER:PASSWORD`, the form of `--registry-auth`.
pub fn parse_registry_auth(text: &str) -> Result<(String, Credential), PullError> {
    let fail = |reason: &str| PullError::Credentials {
        source_name: "--registry-auth".into(),
        reason: reason.into(),
    };
    let (host, userpass) = text.split_once('=').ok_or_else(|| fail("expected HOST=USER:PASSWORD"))?;
    let (username, password) = userpass.split_once(':').ok_or_else(|| fail("expected HOST=USER:PASSWORD"))?;
    if host.is_empty() || username.is_empty() {
        return Err(fail("expected HOST=USER:PASSWORD with a host and a user name"));
    }
    Ok((normalise_host(host), Credential { username: username.into(), password: password.into() }))
}

/// The credentials known, by registry host.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    by_host: BTreeMap<String, Credential>,
}

impl Credentials {
    /// Explicit credentials, then those of the docker configuration file (`config`, or the
    /// default one when `None`; a missing file is no error).
    pub fn load(explicit: &[(String, Credential)], config: Option<&Path>) -> Result<Credentials, PullError> {
        let mut creds = Credentials::default();
        let path = config.map(Path::to_path_buf).or_else(default_docker_config);
        if let Some(path) = path
            && path.is_file()
        {
            let text = fs_err::read_to_string(&path).map_err(PullError::io("read", &path))?;
            creds.by_host = parse_docker_config(&text, &path)?;
        }
        for (host, credential) in explicit {
            creds.by_host.insert(normalise_host(host), credential.clone());
        }
        Ok(creds)
    }

    /// The credential for a registry host (as a reference or a mirror names it).
    pub fn get(&self, host: &str) -> Option<&Credential> {
        self.by_host.get(&normalise_host(host))
    }
}

/// `$DOCKER_CONFIG/config.json`, or `~/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
}

/// The key a host is stored under: no scheme, no path, Docker Hub's names as `docker.io`.
pub fn normalise_host(host: &str) -> String {
    let host = host.strip_prefix("https://").or_else(|| host.strip_prefix("http://")).unwrap_or(host);
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.into(),
        other => other.to_owned(),
    }
}

/// Reads the `auths` of a docker configuration file.
pub fn parse_docker_config(text: &str, path: &Path) -> Result<BTreeMap<String, Credential>, PullError> {
    let fail =
        |reason: String| PullError::Credentials { source_name: format!("'{}'", path.display()), reason };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| fail(format!("it is not JSON ({e})")))?;
    let mut out = BTreeMap::new();
    let Some(auths) = value.get("auths").and_then(|a| a.as_object()) else { return Ok(out) };
    for (key, entry) in auths {
        let field = |name: &str| entry.get(name).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
        let credential = if let Some(auth) = field("auth") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| fail(format!("the 'auth' of '{key}' is not base64")))?;
            let raw =
                String::from_utf8(raw).map_err(|_| fail(format!("the 'auth' of '{key}' is not UTF-8")))?;
            let (username, password) = raw
                .split_once(':')
                .ok_or_else(|| fail(format!("the 'auth' of '{key}' is not user:password")))?;
            Credential { username: username.into(), password: password.into() }
        } else if let (Some(username), Some(password)) = (field("username"), field("password")) {
            Credential { username: username.into(), password: password.into() }
        } else {
            continue;
        };
        out.insert(normalise_host(key), credential);
    }
    Ok(out)
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Send the credentials.
    Basic,
    /// Ask `realm` for a token for `service` and `scope`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The service, when given.
        service: Option<String>,
        /// The scope the registry asks for, when given.
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header: `Basic realm="..."` or
/// `Bearer realm="...",service="...",scope="..."` (quoted or token values, any order).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| params.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
    Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), scope: get("scope") })
}

/// `key=value` and `key="quoted, value"` pairs separated by commas.
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_owned();
        }
        out.push((key.trim().to_owned(), value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
        // Unquoted values, another order, spaces, a scope with a comma inside quotes.
        assert_eq!(
            parse_challenge(r#"bearer scope="repository:a/b:pull,push", realm=http://127.0.0.1:9/t"#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:9/t".into(),
                service: None,
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn reads_docker_config() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let text = serde_json::json!({
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hubuser:hubpass")},
                "registry.example.com:5000": {"auth": b64("u:p:with:colons")},
                "http://old.example.com/v2/": {"username": "a", "password": "b"},
                "helper.example.com": {},
            },
            "credsStore": "desktop",
        })
        .to_string();
        let auths = parse_docker_config(&text, Path::new("config.json")).unwrap();
        assert_eq!(auths["docker.io"].username, "hubuser");
        assert_eq!(auths["registry.example.com:5000"].password, "p:with:colons");
        assert_eq!(auths["old.example.com"].password, "b");
        assert!(!auths.contains_key("helper.example.com"));
        let bad = r#"{"auths":{"x":{"auth":"!!"}}}"#;
        assert_eq!(
            parse_docker_config(bad, Path::new("c.json")).unwrap_err().to_string(),
            "could not use the registry credentials in 'c.json': the 'auth' of 'x' is not base64"
        );
    }

    #[test]
    fn explicit_credentials_win() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("file:secret");
        fs_err::write(&config, format!(r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{b64}"}}}}}}"#)).unwrap();
        let explicit = parse_registry_auth("127.0.0.1:5000=cli:pw").unwrap();
        let creds = Credentials::load(&[explicit], Some(&config)).unwrap();
        assert_eq!(creds.get("127.0.0.1:5000").unwrap().username, "cli");
        let creds = Credentials::load(&[], Some(&config)).unwrap();
        assert_eq!(creds.get("127.0.0.1:5000").unwrap().password, "secret");
        assert_eq!(
            format!("{:?}", creds.get("127.0.0.1:5000").unwrap()),
            r#"Credential { username: "file", password: "<hidden>" }"#
        );
        assert!(parse_registry_auth("nohost").is_err());
        assert!(parse_registry_auth("=u:p").is_err());
        assert_eq!(parse_registry_auth("index.docker.io=u:").unwrap().0, "docker.io");
    }
}
