//! Which keys a host trusts to sign bundles.
//!
//! A signature proves nothing if the key that checks it travels inside the same file, so the
//! key must come from the operator: a public key file, a fingerprint checked out of band, or
//! the host's directory of trusted keys.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::keys::{Fingerprint, PublicKey};

/// The host's directory of trusted public keys.
pub const TRUSTED_KEYS_DIR: &str = "/etc/kubeferry/trusted-keys";
/// An environment variable that names another directory of trusted keys (for tests and for
/// hosts that keep configuration elsewhere).
pub const TRUSTED_KEYS_DIR_ENV: &str = "KUBEFERRY_TRUSTED_KEYS_DIR";

/// The keys a verification accepts.
#[derive(Debug, Default, Clone)]
pub struct Trust {
    /// Public keys trusted outright.
    pub keys: Vec<PublicKey>,
    /// Fingerprints of keys trusted when the bundle presents the matching key.
    pub fingerprints: Vec<Fingerprint>,
    /// Accept any signature, or none, without checking. The caller warns.
    pub skip_verification: bool,
}

impl Trust {
    /// The directory of trusted keys on this host: [`TRUSTED_KEYS_DIR`], or the directory
    /// [`TRUSTED_KEYS_DIR_ENV`] names.
    pub fn host_dir() -> PathBuf {
        std::env::var_os(TRUSTED_KEYS_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(TRUSTED_KEYS_DIR))
    }

    /// The trust an operator expressed on the command line: key files, fingerprints, the
    /// host's directory of trusted keys (when `host_dir`), or no check at all.
    pub fn from_sources(
        key_files: &[PathBuf],
        fingerprints: &[String],
        host_dir: bool,
        skip: bool,
    ) -> Result<Trust> {
        let mut trust = Trust { skip_verification: skip, ..Trust::default() };
        for path in key_files {
            trust.keys.push(PublicKey::read(path)?);
        }
        for text in fingerprints {
            trust.fingerprints.push(Fingerprint::parse(text)?);
        }
        if host_dir {
            trust.add_dir(&Trust::host_dir())?;
        }
        Ok(trust)
    }

    /// Adds every `*.pub` file of `dir`. A directory that does not exist adds nothing.
    pub fn add_dir(&mut self, dir: &Path) -> Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("read", dir)(e)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pub"))
            .collect();
        paths.sort();
        for path in paths {
            self.keys.push(PublicKey::read(&path)?);
        }
        Ok(())
    }

    /// Whether nothing at all is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.fingerprints.is_empty() && !self.skip_verification
    }

    /// The trusted key that matches a bundle's signing key, if any.
    pub(crate) fn accepts(&self, presented: &[u8; 32]) -> bool {
        self.keys.iter().any(|k| k.as_bytes() == presented)
            || self.fingerprints.contains(&Fingerprint::of(presented))
    }
}
