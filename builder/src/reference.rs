//! Container image references, parsed and normalised the way docker and containerd do.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component ( "/" path-component )*
//! domain     := host [ ":" port ]          host: DNS labels, "localhost", or "[IPv6]"
//! path-comp. := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := "sha256:" 64 lowercase hex digits
//! ```
//!
//! The first component of a name is a registry when it holds a `.` or a `:`, or is `localhost`
//! (docker's rule); otherwise the image is on Docker Hub. Normalisation then gives every
//! reference one canonical spelling, so that the same image asked for twice is pulled once:
//!
//! - no registry → `docker.io`; `index.docker.io` → `docker.io`;
//! - a one-component Docker Hub name gets `library/` (`nginx` → `docker.io/library/nginx`);
//! - no tag and no digest → tag `latest`; a digest alone stays without a tag.
//!
//! A name with an upper-case letter is refused (registries refuse it too), as is any other
//! character the grammar does not allow; the error says which and where.

use std::fmt;
use std::str::FromStr;

/// Docker Hub as references name it.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's legacy name, normalised to [`DOCKER_HUB`].
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// The tag of a reference that names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// The longest name (registry and repository) distribution accepts.
const MAX_NAME_LEN: usize = 255;
/// The longest tag.
const MAX_TAG_LEN: usize = 128;

/// A normalised image reference: `registry/repository[:tag][@digest]`.
///
/// Ordered and hashed by its canonical form, so references can be sorted and deduplicated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference '{reference}': {reason}")]
pub struct ReferenceError {
    /// The text given.
    pub reference: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Reference {
    /// Parses and normalises a reference.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let fail = |reason: String| ReferenceError { reference: text.to_owned(), reason };
        if text.is_empty() {
            return Err(fail("it is empty".into()));
        }
        if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail(format!("it holds the character {c:?}")));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(digest).map_err(fail)?)),
            None => (text, None),
        };
        // A tag follows the last ':' after the last '/', so a registry port is never a tag.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                check_tag(tag).map_err(fail)?;
                (&rest[..last_slash + i], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(fail("it has no repository name".into()));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(fail(format!(
                "the name is {} characters long, at most {MAX_NAME_LEN} are allowed",
                name.len()
            )));
        }
        let (registry, repository) = split_registry(name);
        let registry = match registry {
            Some(registry) => {
                check_registry(registry).map_err(fail)?;
                if registry == DOCKER_HUB_LEGACY { DOCKER_HUB.to_owned() } else { registry.to_owned() }
            }
            None => DOCKER_HUB.to_owned(),
        };
        check_repository(repository).map_err(fail)?;
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag,
        };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The registry host (and port), such as `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository within the registry, such as `library/nginx`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag; `None` only for a reference by digest alone.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, `sha256:<hex>`, when the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What the registry is asked for: the digest when there is one (it wins over the tag, as
    /// in docker and containerd), else the tag.
    pub fn object(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or(DEFAULT_TAG)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Reference::parse(text)
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Splits docker's way: the first component is a registry when it looks like a host.
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (Some(first), rest),
        _ => (None, name),
    }
}

/// Checks `sha256:<64 lowercase hex>` and returns it.
pub fn parse_digest(digest: &str) -> Result<String, String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("the digest '{digest}' has no algorithm (expected sha256:<64 hex digits>)"));
    };
    if algorithm != "sha256" {
        return Err(format!("the digest algorithm '{algorithm}' is not supported (only sha256)"));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("the digest '{digest}' must be sha256: and 64 lowercase hex digits"));
    }
    Ok(digest.to_owned())
}

fn check_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("the tag after ':' is empty".into());
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(format!("the tag is {} characters long, at most {MAX_TAG_LEN} are allowed", tag.len()));
    }
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if !word(tag.as_bytes()[0]) {
        return Err(format!("the tag '{tag}' must start with a letter, a digit or '_'"));
    }
    if let Some(c) = tag.chars().find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!(
            "the tag '{tag}' holds {c:?}; a tag may only hold letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        // [IPv6]:port
        let Some((address, after)) = rest.split_once(']') else {
            return Err(format!("the registry '{registry}' opens '[' without closing it"));
        };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("the registry '{registry}' holds '{address}', which is not an IPv6 address"));
        }
        match after {
            "" => return Ok(()),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(format!("the registry '{registry}' has '{after}' after its address")),
            },
        }
    } else {
        match registry.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err())
    {
        return Err(format!("the registry '{registry}' has the port '{port}', which is not a port number"));
    }
    if let Some(host) = host {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err(format!(
                "the registry host '{host}' is not a host name (labels of letters, digits and inner '-', joined by '.')"
            ));
        }
    }
    Ok(())
}

fn check_repository(repository: &str) -> Result<(), String> {
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("the repository name '{repository}' must be lowercase"));
    }
    for component in repository.split('/') {
        check_component(component).map_err(|why| format!("the repository name '{repository}' {why}"))?;
    }
    Ok(())
}

/// `[a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*`
fn check_component(component: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err("has an empty component (a '/' too many)".into());
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(format!(
            "has the component '{component}', which must start and end with a letter or a digit"
        ));
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return Err(format!(
                "has the component '{component}' with the separator '{separator}'; only '.', '_', '__' and \
                 dashes may join letters and digits"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn canonical(text: &str) -> String {
        Reference::parse(text).unwrap_or_else(|e| panic!("{e}")).to_string()
    }

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("library/nginx", "docker.io/library/nginx:latest"),
            ("docker.io/nginx", "docker.io/library/nginx:latest"),
            ("index.docker.io/nginx:1", "docker.io/library/nginx:1"),
            ("index.docker.io/calico/node:v3.26.1", "docker.io/calico/node:v3.26.1"),
            ("calico/node:v3.26.1", "docker.io/calico/node:v3.26.1"),
            ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
            ("registry.k8s.io/kube-apiserver:v1.28.4", "registry.k8s.io/kube-apiserver:v1.28.4"),
            ("quay.io/coreos/etcd", "quay.io/coreos/etcd:latest"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app:v1", "localhost:5000/app:v1"),
            ("127.0.0.1:5000/library/app:v1", "127.0.0.1:5000/library/app:v1"),
            ("sea.hub:5000/pause:3.2", "sea.hub:5000/pause:3.2"),
            ("[::1]:5000/app:v1", "[::1]:5000/app:v1"),
            ("[fe80::1]/app", "[fe80::1]/app:latest"),
            ("Registry.Example.COM/app", "Registry.Example.COM/app:latest"),
            ("a/b/c/d:e", "docker.io/a/b/c/d:e"),
            ("ghcr.io/org/team/app:1.0.0-rc.1", "ghcr.io/org/team/app:1.0.0-rc.1"),
            ("a-b.example/x-y/z__w:1", "a-b.example/x-y/z__w:1"),
        ];
        for (input, want) in cases {
            assert_eq!(canonical(input), want, "{input}");
        }
    }

    #[test]
    fn digests_and_tags() {
        assert_eq!(canonical(&format!("nginx@{D}")), format!("docker.io/library/nginx@{D}"));
        assert_eq!(canonical(&format!("nginx:1.25@{D}")), format!("docker.io/library/nginx:1.25@{D}"));
        assert_eq!(canonical(&format!("localhost:5000/a/b@{D}")), format!("localhost:5000/a/b@{D}"));
        let r = Reference::parse(&format!("localhost:5000/a/b:v2@{D}")).unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("v2"));
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.object(), D);
        let r = Reference::parse(&format!("app@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        let r = Reference::parse("app").unwrap();
        assert_eq!(r.object(), "latest");
        assert_eq!(r.name(), "docker.io/library/app");
    }

    #[test]
    fn equal_images_dedup() {
        let mut refs: Vec<Reference> =
            ["nginx", "docker.io/library/nginx:latest", "index.docker.io/library/nginx"]
                .iter()
                .map(|t| t.parse().unwrap())
                .collect();
        refs.push("nginx:1".parse().unwrap());
        refs.sort();
        refs.dedup();
        assert_eq!(refs.len(), 2);
    }

    #[test]
    fn refuses_with_a_reason() {
        let cases = [
            ("", "it is empty"),
            ("Nginx", "the repository name 'Nginx' must be lowercase"),
            ("docker.io/Library/nginx", "the repository name 'Library/nginx' must be lowercase"),
            ("nginx:", "the tag after ':' is empty"),
            ("nginx:-x", "the tag '-x' must start with a letter, a digit or '_'"),
            ("nginx:a+b", "the tag 'a+b' holds '+'; a tag may only hold letters, digits, '_', '.' and '-'"),
            ("nginx@sha256:abc", "the digest 'sha256:abc' must be sha256: and 64 lowercase hex digits"),
            ("nginx@md5:abc", "the digest algorithm 'md5' is not supported (only sha256)"),
            ("nginx@abc", "the digest 'abc' has no algorithm (expected sha256:<64 hex digits>)"),
            ("a//b", "the repository name 'a//b' has an empty component (a '/' too many)"),
            ("/nginx", "the repository name '/nginx' has an empty component (a '/' too many)"),
            ("nginx/", "the repository name 'nginx/' has an empty component (a '/' too many)"),
            (
                "-nginx",
                "the repository name '-nginx' has the component '-nginx', which must start and end with a letter or a digit",
            ),
            (
                "a/b...c",
                "the repository name 'a/b...c' has the component 'b...c' with the separator '...'; only '.', '_', '__' and dashes may join letters and digits",
            ),
            ("host:99999/app", "the registry 'host:99999' has the port '99999', which is not a port number"),
            ("host:/app", "the registry 'host:' has the port '', which is not a port number"),
            (
                "ho_st.io/app",
                "the registry host 'ho_st.io' is not a host name (labels of letters, digits and inner '-', joined by '.')",
            ),
            ("[zz]:5000/app", "the registry '[zz]:5000' holds 'zz', which is not an IPv6 address"),
            ("nginx latest", "it holds the character ' '"),
        ];
        for (input, reason) in cases {
            let e = Reference::parse(input).expect_err(input);
            assert_eq!(e.reason, reason, "{input}");
            assert_eq!(e.to_string(), format!("invalid image reference '{input}': {reason}"));
        }
        let long = format!("a/{}", "b".repeat(260));
        assert!(Reference::parse(&long).unwrap_err().reason.contains("at most 255"));
        let tag = format!("a:{}", "t".repeat(129));
        assert!(Reference::parse(&tag).unwrap_err().reason.contains("at most 128"));
    }

    #[test]
    fn underscores_in_the_first_component_make_a_docker_hub_name() {
        // 'foo_bar' holds no '.' or ':', so it is a Docker Hub user, as docker reads it.
        assert_eq!(canonical("foo_bar/x"), "docker.io/foo_bar/x:latest");
        assert_eq!(canonical("a__b/x_y.z:_T"), "docker.io/a__b/x_y.z:_T");
    }

    #[test]
    fn serialises_as_its_canonical_form() {
        let r: Reference = "nginx".parse().unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"docker.io/library/nginx:latest\"");
    }
}
