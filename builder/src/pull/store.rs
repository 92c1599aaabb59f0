//! Writes pulled images as the docker distribution registry's filesystem storage, which
//! distribution and kubeferry's own registry (`kubeferry_installer::registry`) both serve:
//!
//! ```text
//! ROOT/docker/registry/v2/blobs/sha256/<2 hex>/<64 hex>/data                  every blob and manifest, once
//! ROOT/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link
//! ROOT/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/index/sha256/<hex>/link
//! ROOT/docker/registry/v2/repositories/<name>/_manifests/revisions/sha256/<hex>/link
//! ROOT/docker/registry/v2/repositories/<name>/_layers/sha256/<hex>/link        layers and configs
//! ```
//!
//! As distribution 2.8 does: every manifest stored (an index and each child) has a revision
//! link, layers and configs have `_layers` links, and each link holds `sha256:<hex>`. Blobs are
//! hard links to the cache when it is on the same file system, copies otherwise, and are
//! written before any link that names them, through a temporary file and a rename, so an
//! interrupted pull leaves no link to a missing or partial blob.

use std::path::{Path, PathBuf};

use super::error::PullError;

/// The storage driver's directory under the root.
pub const STORAGE_PREFIX: &str = "docker/registry/v2";

/// A registry storage directory being written.
#[derive(Debug, Clone)]
pub struct Store {
    v2: PathBuf,
}

impl Store {
    /// The storage under `root` (the directory that holds, or will hold, `docker/registry/v2`).
    pub fn new(root: &Path) -> Store {
        Store { v2: root.join(STORAGE_PREFIX) }
    }

    /// The directory that holds `docker/registry/v2`.
    pub fn root(&self) -> &Path {
        self.v2.ancestors().nth(3).unwrap_or(&self.v2)
    }

    /// The data file of a digest.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = hex(digest);
        self.v2.join("blobs/sha256").join(&hex[..2.min(hex.len())]).join(hex).join("data")
    }

    /// Puts the content of `from` (verified to hash to `digest`) as a blob; true when it was
    /// not there already.
    pub fn put_blob(&self, digest: &str, from: &Path) -> Result<bool, PullError> {
        let path = self.blob_path(digest);
        let from_len = fs_err::metadata(from).map_err(PullError::io("read", from))?.len();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == from_len) {
            return Ok(false);
        }
        let dir = parent(&path)?;
        fs_err::create_dir_all(dir).map_err(PullError::io("create", dir))?;
        let tmp = dir.join("data.partial");
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(from, &tmp).is_err() {
            fs_err::copy(from, &tmp).map_err(PullError::io("copy a blob to", &tmp))?;
        }
        fs_err::rename(&tmp, &path).map_err(PullError::io("write", &path))?;
        Ok(true)
    }

    fn repository(&self, name: &str) -> PathBuf {
        self.v2.join("repositories").join(name)
    }

    /// Links a layer or config blob to a repository.
    pub fn link_layer(&self, name: &str, digest: &str) -> Result<(), PullError> {
        write_link(&self.repository(name).join("_layers/sha256").join(hex(digest)).join("link"), digest)
    }

    /// Links a manifest to a repository.
    pub fn link_revision(&self, name: &str, digest: &str) -> Result<(), PullError> {
        write_link(
            &self.repository(name).join("_manifests/revisions/sha256").join(hex(digest)).join("link"),
            digest,
        )
    }

    /// Points a tag at a manifest.
    pub fn tag(&self, name: &str, tag: &str, digest: &str) -> Result<(), PullError> {
        let dir = self.repository(name).join("_manifests/tags").join(tag);
        write_link(&dir.join("index/sha256").join(hex(digest)).join("link"), digest)?;
        write_link(&dir.join("current/link"), digest)
    }
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn parent(path: &Path) -> Result<&Path, PullError> {
    path.parent().ok_or_else(|| PullError::Option(format!("'{}' has no parent directory", path.display())))
}

/// Writes a link file through a temporary file and a rename.
fn write_link(path: &Path, digest: &str) -> Result<(), PullError> {
    if std::fs::read(path).is_ok_and(|b| b == digest.as_bytes()) {
        return Ok(());
    }
    let dir = parent(path)?;
    fs_err::create_dir_all(dir).map_err(PullError::io("create", dir))?;
    let tmp = dir.join("link.partial");
    fs_err::write(&tmp, digest).map_err(PullError::io("write", &tmp))?;
    fs_err::rename(&tmp, path).map_err(PullError::io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_distribution_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let d = "sha256:abababababababababababababababababababababababababababababababab";
        let src = dir.path().join("src");
        std::fs::write(&src, b"content").unwrap();
        assert!(store.put_blob(d, &src).unwrap());
        assert!(!store.put_blob(d, &src).unwrap());
        store.link_layer("library/app", d).unwrap();
        store.link_revision("library/app", d).unwrap();
        store.tag("library/app", "v1", d).unwrap();
        let v2 = dir.path().join(STORAGE_PREFIX);
        let hex = &d[7..];
        assert_eq!(std::fs::read(v2.join(format!("blobs/sha256/ab/{hex}/data"))).unwrap(), b"content");
        for link in [
            format!("repositories/library/app/_layers/sha256/{hex}/link"),
            format!("repositories/library/app/_manifests/revisions/sha256/{hex}/link"),
            "repositories/library/app/_manifests/tags/v1/current/link".to_string(),
            format!("repositories/library/app/_manifests/tags/v1/index/sha256/{hex}/link"),
        ] {
            assert_eq!(std::fs::read_to_string(v2.join(&link)).unwrap(), d, "{link}");
        }
    }
}
