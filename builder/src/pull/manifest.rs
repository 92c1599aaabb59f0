//! Manifests and indexes: the four media types pulled, their descriptors, and the choice of a
//! platform in an index.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list (schema 2).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The Accept header of a manifest request: every kind this client reads.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest read (distribution's own limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// The platform, in an index.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// A manifest, parsed: an index of manifests or one image's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An OCI index or Docker manifest list.
    Index {
        /// Its manifests.
        manifests: Vec<Descriptor>,
    },
    /// An image manifest.
    Image {
        /// The config blob.
        config: Descriptor,
        /// The layer blobs, in order.
        layers: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// Parses a manifest; `content_type` is the registry's Content-Type (used when the manifest
/// does not name its media type, as an OCI manifest need not). Returns the media type too.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<(String, Parsed), String> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| format!("it is not a JSON manifest ({e})"))?;
    if raw.schema_version != Some(2) {
        return Err(match raw.schema_version {
            Some(1) => "it is a Docker schema 1 manifest, which is deprecated and not supported".into(),
            other => format!("its schemaVersion is {other:?}, expected 2"),
        });
    }
    let content_type = content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_owned());
    let media_type = raw
        .media_type
        .clone()
        .or(content_type.filter(|c| {
            [OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST].contains(&c.as_str())
        }))
        .unwrap_or_else(|| if raw.manifests.is_some() { OCI_INDEX.into() } else { OCI_MANIFEST.into() });
    let parsed = match media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            Parsed::Index { manifests: raw.manifests.ok_or("an index without 'manifests'")? }
        }
        OCI_MANIFEST | DOCKER_MANIFEST => Parsed::Image {
            config: raw.config.ok_or("an image manifest without 'config'")?,
            layers: raw.layers.unwrap_or_default(),
        },
        other => return Err(format!("its media type '{other}' is not one kubeferry pulls")),
    };
    let descriptors: Vec<&Descriptor> = match &parsed {
        Parsed::Index { manifests } => manifests.iter().collect(),
        Parsed::Image { config, layers } => std::iter::once(config).chain(layers).collect(),
    };
    for d in descriptors {
        crate::reference::parse_digest(&d.digest)?;
    }
    Ok((media_type, parsed))
}

/// An OS, architecture and variant, as an index lists them: `linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
pub struct Platform {
    /// `linux`.
    #[serde(default)]
    pub os: String,
    /// `amd64`, `arm64`...
    #[serde(default)]
    pub architecture: String,
    /// `v8`, `v7`...: empty when not given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

impl Platform {
    /// `linux/<arch>` with no variant.
    pub fn linux(architecture: &str) -> Platform {
        Platform { os: "linux".into(), architecture: architecture.into(), variant: String::new() }
    }

    /// Whether an index entry for `other` serves this platform: os and architecture equal, and
    /// the variant equal when this one names one (arm64 with no variant means v8, as
    /// containerd normalises it).
    pub fn matches(&self, other: &Platform) -> bool {
        let norm = |p: &Platform| match (p.architecture.as_str(), p.variant.as_str()) {
            ("arm64", "") => "v8".to_owned(),
            (_, v) => v.to_owned(),
        };
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_empty() || norm(self) == norm(other))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;
    /// `amd64`, `arm64/v8`, `linux/amd64`, `linux/arm/v7`; `aarch64` and `x86_64` are accepted.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = text.split('/').collect();
        let is_variant =
            |v: &str| v.len() > 1 && v.starts_with('v') && v[1..].bytes().all(|b| b.is_ascii_digit());
        let (os, arch, variant) = match parts.as_slice() {
            [arch] => ("linux", *arch, ""),
            [arch, variant] if is_variant(variant) => ("linux", *arch, *variant),
            [os, arch] => (*os, *arch, ""),
            [os, arch, variant] => (*os, *arch, *variant),
            _ => {
                return Err(format!(
                    "'{text}' is not a platform (expected ARCH, ARCH/VARIANT or linux/ARCH[/VARIANT])"
                ));
            }
        };
        let arch = match arch {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        if arch.is_empty() || !arch.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("'{text}' is not a platform: '{arch}' is no architecture"));
        }
        if os != "linux" {
            return Err(format!("'{text}': only linux images are pulled"));
        }
        Ok(Platform { os: os.into(), architecture: arch.into(), variant: variant.into() })
    }
}

/// The entry of an index for `wanted`: the first that matches, preferring an exact variant.
pub fn select<'a>(manifests: &'a [Descriptor], wanted: &Platform) -> Option<&'a Descriptor> {
    let candidates: Vec<&Descriptor> =
        manifests.iter().filter(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p))).collect();
    candidates
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.variant == wanted.variant))
        .or(candidates.first())
        .copied()
}

/// The platforms an index lists, for an error message.
pub fn available(manifests: &[Descriptor]) -> String {
    let list: Vec<String> =
        manifests.iter().filter_map(|d| d.platform.as_ref()).map(ToString::to_string).collect();
    if list.is_empty() { "no platform".into() } else { list.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn index() -> Vec<Descriptor> {
        let json = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [
                {"mediaType": DOCKER_MANIFEST, "digest": D1, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": DOCKER_MANIFEST, "digest": D2, "size": 1, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"mediaType": DOCKER_MANIFEST, "digest": D3, "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            ]
        });
        match parse(json.to_string().as_bytes(), None).unwrap() {
            (media, Parsed::Index { manifests }) => {
                assert_eq!(media, DOCKER_MANIFEST_LIST);
                manifests
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn selects_platforms() {
        let m = index();
        assert_eq!(select(&m, &"amd64".parse().unwrap()).unwrap().digest, D1);
        assert_eq!(select(&m, &"linux/arm64".parse().unwrap()).unwrap().digest, D3);
        assert_eq!(select(&m, &"arm64/v8".parse().unwrap()).unwrap().digest, D3);
        assert_eq!(select(&m, &"aarch64".parse().unwrap()).unwrap().digest, D3);
        assert_eq!(select(&m, &"arm/v7".parse().unwrap()).unwrap().digest, D2);
        assert!(select(&m, &"arm/v6".parse().unwrap()).is_none());
        assert!(select(&m, &"riscv64".parse().unwrap()).is_none());
        assert_eq!(available(&m), "linux/amd64, linux/arm/v7, linux/arm64/v8");
    }

    #[test]
    fn parses_platforms() {
        assert_eq!("linux/arm/v7".parse::<Platform>().unwrap().to_string(), "linux/arm/v7");
        assert_eq!("x86_64".parse::<Platform>().unwrap().to_string(), "linux/amd64");
        assert_eq!(
            "windows/amd64".parse::<Platform>().unwrap_err(),
            "'windows/amd64': only linux images are pulled"
        );
        assert!("a/b/c/d".parse::<Platform>().is_err());
    }

    #[test]
    fn parses_manifests_and_refuses_others() {
        let oci = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 3},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2, "size": 4}],
        });
        let (media, parsed) =
            parse(oci.to_string().as_bytes(), Some("application/vnd.oci.image.manifest.v1+json")).unwrap();
        assert_eq!(media, OCI_MANIFEST);
        let Parsed::Image { config, layers } = parsed else { panic!() };
        assert_eq!((config.digest.as_str(), layers.len()), (D1, 1));
        assert_eq!(
            parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).unwrap_err(),
            "it is a Docker schema 1 manifest, which is deprecated and not supported"
        );
        assert!(parse(b"<html>", None).unwrap_err().starts_with("it is not a JSON manifest"));
        let bad = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"digest": "sha256:../../x", "size": 1}, "layers": []});
        assert!(parse(bad.to_string().as_bytes(), None).unwrap_err().contains("64 lowercase hex"));
        let other = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.foo+json"});
        assert_eq!(
            parse(other.to_string().as_bytes(), None).unwrap_err(),
            "its media type 'application/vnd.foo+json' is not one kubeferry pulls"
        );
    }
}
