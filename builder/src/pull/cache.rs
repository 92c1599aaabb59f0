//! The content-addressed blob cache of the build host, shared by every image and architecture.
//!
//! ```text
//! CACHE/sha256/<64 hex>        a blob or a manifest, whose sha256 is its name
//! CACHE/tmp/                   downloads in progress
//! ```
//!
//! A download streams into `tmp/`, hashing as it goes, and is renamed into place only when
//! its size and sha256 are the ones asked for: a file in `sha256/` was verified when written,
//! and nothing else ever writes there. A transfer cut short is retried from the start.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest as _, Sha256};

use super::Stats;
use super::client::{Client, Endpoint};
use super::error::PullError;
use crate::reference::Reference;

/// Bytes read from the network between progress reports.
const CHUNK: usize = 256 << 10;

/// The cache directory and what it holds.
#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
}

/// `$XDG_CACHE_HOME/kubeferry/blobs`, else `~/.cache/kubeferry/blobs`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("kubeferry/blobs"))
}

impl BlobCache {
    /// The cache in `dir`, created when missing.
    pub fn open(dir: &Path) -> Result<BlobCache, PullError> {
        for sub in ["sha256", "tmp"] {
            fs_err::create_dir_all(dir.join(sub)).map_err(PullError::io("create", dir.join(sub)))?;
        }
        Ok(BlobCache { dir: dir.to_path_buf() })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a digest's content is (or would be).
    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join("sha256").join(digest.strip_prefix("sha256:").unwrap_or(digest))
    }

    /// Whether the cache holds `digest` (of `size` bytes, when known).
    pub fn contains(&self, digest: &str, size: Option<u64>) -> bool {
        std::fs::metadata(self.path(digest)).is_ok_and(|m| m.is_file() && size.is_none_or(|s| m.len() == s))
    }

    /// Puts bytes already verified to hash to `digest` (a manifest just fetched).
    pub fn insert(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf, PullError> {
        let path = self.path(digest);
        if self.contains(digest, Some(bytes.len() as u64)) {
            return Ok(path);
        }
        let tmp = self.temp()?;
        let mut file = tmp.as_file();
        file.write_all(bytes).map_err(PullError::io("write", tmp.path()))?;
        tmp.persist(&path).map_err(|e| PullError::io("write", &path)(e.error))?;
        Ok(path)
    }

    fn temp(&self) -> Result<tempfile::NamedTempFile, PullError> {
        let dir = self.dir.join("tmp");
        tempfile::Builder::new()
            .prefix("partial-")
            .tempfile_in(&dir)
            .map_err(PullError::io("create a file in", dir))
    }

    /// The blob `digest` of `size` bytes: from the cache, or fetched, verified and cached.
    /// `progress` hears of every chunk received.
    #[allow(clippy::too_many_arguments)]
    pub fn fetch(
        &self,
        client: &Client,
        reference: &Reference,
        endpoint: &Endpoint,
        digest: &str,
        size: u64,
        stats: &Stats,
        progress: &dyn Fn(u64),
        cancel: Option<&AtomicBool>,
    ) -> Result<PathBuf, PullError> {
        let path = self.path(digest);
        if self.contains(digest, Some(size)) {
            stats.count_hit();
            progress(size);
            return Ok(path);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let response = client.get(reference, endpoint, "blobs", digest, "*/*", stats)?;
            let tmp = self.temp()?;
            let mut reader = response.body.into_reader();
            let mut hasher = Sha256::new();
            let mut received = 0u64;
            let mut buf = vec![0u8; CHUNK];
            let outcome: Result<(), std::io::Error> = (|| {
                let mut file = tmp.as_file();
                loop {
                    if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                        return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"));
                    }
                    let n = reader.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    received += n as u64;
                    if received > size {
                        return Ok(());
                    }
                    hasher.update(&buf[..n]);
                    file.write_all(&buf[..n])?;
                    progress(n as u64);
                }
            })();
            if let Err(source) = outcome {
                if source.kind() == std::io::ErrorKind::Interrupted {
                    return Err(PullError::Interrupted);
                }
                // A transfer cut short: again from the start, while attempts remain.
                if attempt < client.attempts() {
                    stats.count_retry();
                    client.backoff(attempt);
                    continue;
                }
                return Err(PullError::Transfer {
                    reference: reference.to_string(),
                    registry: endpoint.host.clone(),
                    what: "blob",
                    digest: digest.to_owned(),
                    source,
                });
            }
            stats.count_fetch(received);
            if received != size {
                return Err(PullError::SizeMismatch {
                    reference: reference.to_string(),
                    what: "blob",
                    digest: digest.to_owned(),
                    expected: size,
                    found: received,
                });
            }
            let found = format!("sha256:{:x}", hasher.finalize());
            if found != digest {
                return Err(PullError::DigestMismatch {
                    reference: reference.to_string(),
                    what: "blob",
                    expected: digest.to_owned(),
                    found,
                });
            }
            tmp.persist(&path).map_err(|e| PullError::io("write", &path)(e.error))?;
            return Ok(path);
        }
    }
}
