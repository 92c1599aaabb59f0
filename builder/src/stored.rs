//! The images a rootfs's `registry/` already holds, read from the docker distribution layout
//! (see [`crate::pull::store`]) as the walk of the rootfs finds it, so that the layers of a
//! Kubefile are seen merged: which references it can serve without pulling, and what each
//! image is (digest, platforms, size) for the signed manifest.
//!
//! A first walk of the rootfs ([`scan`]) reads no content: it keeps the files image references
//! are read from ([`crate::images::is_source`]) and the files below
//! `registry/docker/registry/v2/`; only links and manifests are read afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;

use kubeferry_installer::manifest::{Digest, ImageRecord};

use crate::collect::Walk;
use crate::error::{Error, Result};
use crate::pack::{Content, PackKind};
use crate::pull::manifest::{self, MAX_MANIFEST_BYTES, Parsed, Platform};
use crate::reference::Reference;

/// Where the distribution layout starts in a rootfs.
pub const REGISTRY_V2: &str = "registry/docker/registry/v2/";

/// What the first walk of a rootfs finds.
#[derive(Debug, Default)]
pub struct Scan {
    /// The files image references are read from: (path in the rootfs, file on disk).
    pub sources: Vec<(String, PathBuf)>,
    /// The rootfs's registry.
    pub stored: Stored,
}

/// The files of a rootfs's registry layout.
#[derive(Debug, Default)]
pub struct Stored {
    /// By path below [`REGISTRY_V2`]: the file on disk and its size.
    files: BTreeMap<String, (PathBuf, u64)>,
}

/// Walks the rootfs once, reading no content, for [`Scan`].
pub fn scan(walk: Walk) -> Result<Scan> {
    let mut scan = Scan::default();
    // Files hard links may name, by path in the rootfs.
    let mut kept: BTreeMap<String, (PathBuf, u64)> = BTreeMap::new();
    for entry in walk {
        let entry = entry?;
        let (disk, size) = match entry.kind {
            PackKind::File { content: Content::Path { path, size }, .. } => (path, size),
            PackKind::Hardlink { target } => match kept.get(&target) {
                Some(found) => found.clone(),
                None => continue,
            },
            _ => continue,
        };
        if crate::images::is_source(&entry.path) {
            scan.sources.push((entry.path.clone(), disk.clone()));
        }
        if let Some(below) = entry.path.strip_prefix(REGISTRY_V2) {
            scan.stored.files.insert(below.to_string(), (disk.clone(), size));
        }
        kept.insert(entry.path, (disk, size));
    }
    Ok(scan)
}

impl Stored {
    /// Whether the layout holds no file at all.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn blob(&self, digest: &str) -> Option<&(PathBuf, u64)> {
        let hex = digest.strip_prefix("sha256:")?;
        self.files.get(&format!("blobs/sha256/{}/{hex}/data", hex.get(..2)?))
    }

    /// The digest a link file holds, when it is there and holds one.
    fn link(&self, path: &str) -> Option<String> {
        let (disk, size) = self.files.get(path)?;
        if *size > 1024 {
            return None;
        }
        let text = std::fs::read_to_string(disk).ok()?;
        crate::reference::parse_digest(text.trim()).ok()
    }

    /// The digest of the manifest `reference` names, when the layout can serve it: its tag (or
    /// its digest) is linked in its repository and the manifest's blob is there.
    pub fn resolve(&self, reference: &Reference) -> Option<String> {
        let manifests = format!("repositories/{}/_manifests", reference.repository());
        let digest = match (reference.digest(), reference.tag()) {
            (Some(digest), _) => {
                let hex = digest.strip_prefix("sha256:")?;
                self.link(&format!("{manifests}/revisions/sha256/{hex}/link"))?
            }
            (None, Some(tag)) => self.link(&format!("{manifests}/tags/{tag}/current/link"))?,
            (None, None) => return None,
        };
        self.blob(&digest).map(|_| digest)
    }

    /// Every tag of the layout: (repository, tag, digest), sorted. Tags whose link is broken
    /// are left out.
    pub fn tags(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for path in self.files.keys() {
            let Some(rest) = path.strip_prefix("repositories/") else { continue };
            let Some(rest) = rest.strip_suffix("/current/link") else { continue };
            let Some((repository, tag)) = rest.rsplit_once("/_manifests/tags/") else { continue };
            if tag.contains('/') {
                continue;
            }
            if let Some(digest) = self.link(path)
                && self.blob(&digest).is_some()
            {
                out.push((repository.to_string(), tag.to_string(), digest));
            }
        }
        out
    }

    fn read_manifest(&self, name: &str, digest: &str) -> Result<Vec<u8>> {
        let fail =
            |path: PathBuf, reason: String| Error::StoredImage { name: name.to_string(), path, reason };
        let (disk, size) = self
            .blob(digest)
            .ok_or_else(|| fail(PathBuf::from(REGISTRY_V2), format!("the blob of {digest} is missing")))?;
        if *size > MAX_MANIFEST_BYTES {
            return Err(fail(
                disk.clone(),
                format!("the manifest is {size} bytes, more than a manifest may be"),
            ));
        }
        let mut bytes = Vec::new();
        std::fs::File::open(disk)
            .and_then(|f| f.take(MAX_MANIFEST_BYTES).read_to_end(&mut bytes))
            .map_err(Error::io("read", disk))?;
        let found = format!("sha256:{}", Digest::of(&bytes).hex());
        if found != digest {
            return Err(fail(disk.clone(), format!("it should hash to {digest}, it hashes to {found}")));
        }
        Ok(bytes)
    }

    /// The platform an image config names, when its blob is there and says it.
    fn config_platform(&self, digest: &str) -> Option<Platform> {
        let (disk, size) = self.blob(digest)?;
        if *size > MAX_MANIFEST_BYTES {
            return None;
        }
        let platform: Platform = serde_json::from_slice(&std::fs::read(disk).ok()?).ok()?;
        (!platform.architecture.is_empty()).then_some(platform)
    }

    /// What the manifest `digest` of `repository` is, recorded under `name`: its platforms (of
    /// the children of an index that the layout holds), and the bytes of every manifest and
    /// blob of it, each counted once.
    pub fn record(&self, name: &str, repository: &str, digest: &str) -> Result<ImageRecord> {
        let bytes = self.read_manifest(name, digest)?;
        let parse = |bytes: &[u8], digest: &str| {
            manifest::parse(bytes, None).map(|(_, parsed)| parsed).map_err(|reason| Error::StoredImage {
                name: name.to_string(),
                path: self.blob(digest).map(|(p, _)| p.clone()).unwrap_or_default(),
                reason,
            })
        };
        let mut counted = BTreeSet::new();
        let mut size = bytes.len() as u64;
        let mut platforms = BTreeSet::new();
        let mut images = Vec::new();
        match parse(&bytes, digest)? {
            Parsed::Image { config, layers } => images.push((None, config, layers)),
            Parsed::Index { manifests } => {
                for child in manifests {
                    if self.blob(&child.digest).is_none() {
                        continue;
                    }
                    let child_bytes = self.read_manifest(name, &child.digest)?;
                    if counted.insert(child.digest.clone()) {
                        size += child_bytes.len() as u64;
                    }
                    if let Parsed::Image { config, layers } = parse(&child_bytes, &child.digest)? {
                        images.push((child.platform, config, layers));
                    }
                }
            }
        }
        for (platform, config, layers) in images {
            if let Some(platform) = platform.or_else(|| self.config_platform(&config.digest)) {
                platforms.insert(platform.to_string());
            }
            for blob in std::iter::once(config).chain(layers) {
                if counted.insert(blob.digest.clone()) {
                    size += blob.size;
                }
            }
        }
        Ok(ImageRecord {
            name: name.to_string(),
            repository: repository.to_string(),
            digest: Digest::parse(digest).ok_or_else(|| Error::StoredImage {
                name: name.to_string(),
                path: PathBuf::from(REGISTRY_V2),
                reason: format!("'{digest}' is not a sha256 digest"),
            })?,
            platforms: platforms.into_iter().collect(),
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use kubeferry_installer::arch::Arch;

    use super::*;
    use crate::pull::store::Store;

    fn put(dir: &Path, store: &Store, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", Digest::of(bytes).hex());
        // A file of its own: the store may hard-link it.
        let src = dir.join(&digest[7..]);
        fs::write(&src, bytes).unwrap();
        store.put_blob(&digest, &src).unwrap();
        digest
    }

    #[test]
    fn reads_what_the_layout_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        fs::create_dir_all(root.join("manifests")).unwrap();
        fs::write(root.join("manifests/imageList"), "app:v1\n").unwrap();
        let store = Store::new(&root.join("registry"));
        let config_bytes = br#"{"architecture":"arm64","os":"linux","variant":"v8"}"#;
        let config = put(tmp.path(), &store, config_bytes);
        let layer = put(tmp.path(), &store, b"layer bytes");
        let image = serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
            "config": {"digest": config, "size": config_bytes.len()}, "layers": [{"digest": layer, "size": 11}],
        })
        .to_string();
        let digest = put(tmp.path(), &store, image.as_bytes());
        store.link_revision("library/app", &digest).unwrap();
        store.tag("library/app", "v1", &digest).unwrap();
        // A tag whose manifest blob is missing cannot be served.
        store.tag("library/app", "broken", &format!("sha256:{}", "0".repeat(64))).unwrap();

        let scan = scan(crate::collect::walk(&root, Arch::Amd64).unwrap()).unwrap();
        assert_eq!(scan.sources, [("manifests/imageList".to_string(), root.join("manifests/imageList"))]);
        let stored = &scan.stored;
        let resolve = |r: &str| stored.resolve(&Reference::parse(r).unwrap());
        assert_eq!(resolve("docker.io/library/app:v1"), Some(digest.clone()));
        assert_eq!(resolve(&format!("other.io/library/app@{digest}")), Some(digest.clone()));
        assert_eq!(resolve("app:v2"), None);
        assert_eq!(resolve("app:broken"), None);
        assert_eq!(stored.tags(), [("library/app".to_string(), "v1".to_string(), digest.clone())]);

        let record = stored.record("docker.io/library/app:v1", "library/app", &digest).unwrap();
        assert_eq!(record.platforms, ["linux/arm64/v8"]);
        assert_eq!(record.size, (image.len() + config_bytes.len() + 11) as u64);
        assert_eq!(record.digest.to_string(), digest);

        // A blob that does not hash to its digest is named.
        fs::write(store.blob_path(&digest), b"{}").unwrap();
        let scan = super::scan(crate::collect::walk(&root, Arch::Amd64).unwrap()).unwrap();
        let err = scan.stored.record("x", "library/app", &digest).unwrap_err().to_string();
        assert!(err.contains("it should hash to"), "{err}");
    }
}
