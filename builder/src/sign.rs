//! Signing a bundle that was built with `--unsigned`, on the machine that holds the key.
//!
//! The stub and payload are kept byte for byte; the manifest gains the signer and the tail
//! (manifest, signature, trailer) is written anew. Every digest of the unsigned bundle is
//! checked first: a key never signs bytes nobody has checked. The result is identical to a
//! bundle built signed from the same input.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use kubeferry_installer::StreamOptions;
use kubeferry_installer::extract;
use kubeferry_installer::keys::SecretKey;
use kubeferry_installer::progress::Reporter;
use kubeferry_installer::reader::Bundle;
use kubeferry_installer::trust::Trust;

use crate::error::{Error, Result};
use crate::pack::{self, Packed};

/// Signs the bundle at `path` in place (through a new file and a rename).
pub fn sign(path: &Path, key: &SecretKey, force: bool, reporter: &dyn Reporter) -> Result<Packed> {
    let bundle = Bundle::open(path)?;
    if let (Some(section), false) = (bundle.signature(), force) {
        return Err(Error::AlreadySigned {
            path: path.to_path_buf(),
            fingerprint: section.fingerprint().to_string(),
        });
    }
    let checked = bundle.authenticate(&Trust { skip_verification: true, ..Trust::default() })?;
    extract::verify(&bundle, &checked, &StreamOptions::default(), reporter)?;

    let mut manifest = checked.manifest;
    manifest.signer = Some(pack::signer_of(key));
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let prefix_len = bundle.trailer().manifest_offset;
    let source = File::open(path).map_err(Error::io("open", path))?;
    pack::rewrite_tail(&dir.join(&file_name), source.take(prefix_len), manifest, key)
}
