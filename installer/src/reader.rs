//! Opening a bundle: trailer, signature section and manifest, read from the end of the file
//! without touching the payload or the index; then authenticating the manifest against the
//! trusted keys.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::index::Entries;
use crate::keys::{Fingerprint, PublicKey};
use crate::manifest::Manifest;
use crate::trailer::{MAGIC, TRAILER_LEN, Trailer, TrailerError};
use crate::trust::Trust;

/// Prefix of every signed message, so that a bundle signature can never be taken for a
/// signature of anything else made with the same key.
pub const SIGNATURE_DOMAIN: &[u8] = b"kubeferry bundle signature v1\0";

/// How far back from the end [`Bundle::open`] looks for a trailer that was padded, to say so
/// instead of "not a bundle". Only used to explain a rejection, never to accept a file.
const PADDING_SEARCH: u64 = 1 << 20;

/// The signature section: the signing key and its signature over
/// `SIGNATURE_DOMAIN || trailer || manifest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureSection {
    /// The signer's ed25519 public key.
    pub public_key: [u8; 32],
    /// The ed25519 signature.
    pub signature: [u8; 64],
}

impl SignatureSection {
    /// Encodes the section as stored.
    pub fn encode(&self) -> [u8; 96] {
        let mut out = [0u8; 96];
        out[..32].copy_from_slice(&self.public_key);
        out[32..].copy_from_slice(&self.signature);
        out
    }

    /// The signer's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.public_key)
    }
}

/// The message a bundle signature covers.
pub fn signed_message(trailer: &[u8; TRAILER_LEN], manifest: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_DOMAIN.len() + TRAILER_LEN + manifest.len());
    message.extend_from_slice(SIGNATURE_DOMAIN);
    message.extend_from_slice(trailer);
    message.extend_from_slice(manifest);
    message
}

/// An open bundle whose trailer has been read and checked.
#[derive(Debug)]
pub struct Bundle {
    path: PathBuf,
    file: File,
    trailer: Trailer,
    trailer_bytes: [u8; TRAILER_LEN],
    manifest_bytes: Vec<u8>,
    signature: Option<SignatureSection>,
}

/// How a manifest came to be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticity {
    /// Signed by this trusted key.
    Signed(Fingerprint),
    /// Not checked, as the caller asked.
    Unchecked,
}

/// A manifest whose signature has been checked (or whose check was skipped on request).
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest, parsed and validated.
    pub manifest: Manifest,
    /// How it was trusted.
    pub authenticity: Authenticity,
}

impl Bundle {
    /// Opens a bundle and reads its trailer, signature section and manifest.
    pub fn open(path: &Path) -> Result<Bundle> {
        let file = File::open(path).map_err(Error::io("open", path))?;
        let size = file.metadata().map_err(Error::io("read", path))?.len();
        if size < TRAILER_LEN as u64 {
            return Err(Error::TooShort { size });
        }
        let read_at = |offset: u64, len: usize| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset).map_err(Error::io("read", path))?;
            Ok(buf)
        };
        let mut trailer_bytes = [0u8; TRAILER_LEN];
        trailer_bytes.copy_from_slice(&read_at(size - TRAILER_LEN as u64, TRAILER_LEN)?);
        let trailer = match Trailer::decode(&trailer_bytes) {
            Ok(t) => t,
            Err(TrailerError::NoMagic) => return Err(explain_missing_trailer(&file, size)),
            Err(e) => return Err(Error::Trailer(e)),
        };
        if trailer.file_len != size {
            return Err(Error::SizeMismatch { actual: size, recorded: trailer.file_len });
        }
        let manifest_len = usize::try_from(trailer.manifest_len).map_err(|_| Error::NotABundle)?;
        let manifest_bytes = read_at(trailer.manifest_offset, manifest_len)?;
        let signature = if trailer.is_signed() {
            let raw = read_at(trailer.signature_offset, 96)?;
            let mut section = SignatureSection { public_key: [0; 32], signature: [0; 64] };
            section.public_key.copy_from_slice(&raw[..32]);
            section.signature.copy_from_slice(&raw[32..]);
            Some(section)
        } else {
            None
        };
        Ok(Bundle { path: path.to_path_buf(), file, trailer, trailer_bytes, manifest_bytes, signature })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The decoded trailer.
    pub fn trailer(&self) -> &Trailer {
        &self.trailer
    }

    /// The manifest as stored.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The entries of the index, each block checked against `manifest` before it is parsed
    /// and each entry validated. `manifest` must be the one [`Bundle::authenticate`] returned
    /// (or, to show what an unverified file claims, [`Bundle::manifest_unverified`]).
    pub fn entries<'a>(&'a self, manifest: &'a Manifest) -> Entries<'a> {
        Entries::new(self, manifest)
    }

    /// The signature section, if the bundle is signed.
    pub fn signature(&self) -> Option<&SignatureSection> {
        self.signature.as_ref()
    }

    /// Parses the manifest WITHOUT checking the signature: for showing what a file claims to
    /// be, never for acting on it.
    pub fn manifest_unverified(&self) -> Result<Manifest> {
        serde_json::from_slice(&self.manifest_bytes).map_err(Error::ManifestSyntax)
    }

    /// Checks the signature over the trailer and manifest against `trust`, then parses and
    /// validates the manifest and checks it against the trailer. No byte of the manifest is
    /// parsed before its signature has been checked.
    pub fn authenticate(&self, trust: &Trust) -> Result<Verified> {
        let authenticity = if trust.skip_verification {
            Authenticity::Unchecked
        } else {
            let section = self.signature.as_ref().ok_or(Error::Unsigned)?;
            let fingerprint = section.fingerprint();
            if !trust.accepts(&section.public_key) {
                return Err(Error::UntrustedKey { fingerprint: fingerprint.to_string() });
            }
            let key = PublicKey::from_parts([0; 8], section.public_key)?;
            let message = signed_message(&self.trailer_bytes, &self.manifest_bytes);
            key.verify(&message, &section.signature)
                .map_err(|_| Error::BadSignature { fingerprint: fingerprint.to_string() })?;
            Authenticity::Signed(fingerprint)
        };
        let manifest = self.manifest_unverified()?;
        manifest.validate().map_err(Error::Manifest)?;
        if let (Some(section), Some(signer)) = (&self.signature, &manifest.signer) {
            let presented = section.fingerprint();
            if signer.fingerprint != presented.as_str() {
                return Err(Error::SignerMismatch {
                    manifest: signer.fingerprint.clone(),
                    signature: presented.to_string(),
                });
            }
        }
        if manifest.stub.size != self.trailer.stub_len {
            return Err(Error::LayoutMismatch { region: "stub" });
        }
        if manifest.payload.size != self.trailer.payload_len {
            return Err(Error::LayoutMismatch { region: "payload" });
        }
        if manifest.index.size != self.trailer.index_len {
            return Err(Error::LayoutMismatch { region: "index" });
        }
        Ok(Verified { manifest, authenticity })
    }
}

/// Tells a padded file from a truncated or foreign one, by looking for a trailer a little
/// before the end. The answer only words the rejection; such a file is never accepted.
fn explain_missing_trailer(file: &File, size: u64) -> Error {
    let window = size.min(PADDING_SEARCH);
    let start = size - window;
    let mut tail = vec![0u8; window as usize];
    if file.read_exact_at(&mut tail, start).is_err() {
        return Error::NotABundle;
    }
    let mut end = tail.len();
    while let Some(pos) = find_last(&tail[..end], &MAGIC) {
        let trailer_end = pos + MAGIC.len();
        if trailer_end >= TRAILER_LEN {
            let mut bytes = [0u8; TRAILER_LEN];
            bytes.copy_from_slice(&tail[trailer_end - TRAILER_LEN..trailer_end]);
            if let Ok(t) = Trailer::decode(&bytes)
                && t.file_len == start + trailer_end as u64
            {
                return Error::Padded { extra: size - t.file_len };
            }
        }
        end = pos;
    }
    Error::NotABundle
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}
