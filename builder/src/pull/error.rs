//! What can go wrong pulling an image, each error naming the reference it was for.

use std::io;
use std::path::PathBuf;

use crate::reference::ReferenceError;

/// Everything that can go wrong pulling images and storing them.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// A reference that does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The registry has no such manifest (or repository).
    #[error("'{reference}' was not found in {registry} ({detail})")]
    NotFound {
        /// The reference.
        reference: String,
        /// The registry asked (after mirrors).
        registry: String,
        /// What the registry said.
        detail: String,
    },
    /// The registry refused the credentials, or asked for some and had none.
    #[error("{registry} refused access to '{reference}': {detail}")]
    Unauthorized {
        /// The reference.
        reference: String,
        /// The registry asked (after mirrors).
        registry: String,
        /// What went wrong: no credentials, wrong ones, the token endpoint's answer.
        detail: String,
    },
    /// Content whose sha256 is not the digest it was asked by.
    #[error("{what} {expected} of '{reference}' does not match its digest: its content hashes to {found}")]
    DigestMismatch {
        /// The reference.
        reference: String,
        /// "blob" or "manifest".
        what: &'static str,
        /// The digest asked for.
        expected: String,
        /// The digest of what came.
        found: String,
    },
    /// Content whose length is not the size its descriptor gives.
    #[error("{what} {digest} of '{reference}' is {found} bytes long, its descriptor says {expected}")]
    SizeMismatch {
        /// The reference.
        reference: String,
        /// "blob" or "manifest".
        what: &'static str,
        /// The blob's digest.
        digest: String,
        /// The descriptor's size.
        expected: u64,
        /// The bytes received.
        found: u64,
    },
    /// An answer the client cannot use.
    #[error("{registry} answered {status} for {url} ('{reference}'): {detail}")]
    Http {
        /// The reference.
        reference: String,
        /// The registry asked.
        registry: String,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's error message, or the start of its body.
        detail: String,
    },
    /// The registry could not be reached, after the retries.
    #[error("could not reach {registry} for '{reference}' ({url}) after {attempts} attempts")]
    Unreachable {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// A manifest that is not JSON of a known kind.
    #[error("the manifest {digest} of '{reference}' cannot be used: {reason}")]
    BadManifest {
        /// The reference.
        reference: String,
        /// The manifest's digest.
        digest: String,
        /// Why.
        reason: String,
    },
    /// An index without the platform asked for.
    #[error("'{reference}' has no image for {wanted} (it has: {available})")]
    NoPlatform {
        /// The reference.
        reference: String,
        /// The platform wanted.
        wanted: String,
        /// The platforms the index lists.
        available: String,
    },
    /// A docker configuration file or a credential that cannot be read.
    #[error("could not use the registry credentials in {source_name}: {reason}")]
    Credentials {
        /// The file, or the option.
        source_name: String,
        /// Why.
        reason: String,
    },
    /// An option that cannot be used (mirror, platform...).
    #[error("{0}")]
    Option(String),
    /// An I/O error on a named file.
    #[error("could not {action} '{path}'")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Stopped by a signal; nothing was linked into the output.
    #[error("interrupted; nothing was linked into the output")]
    Interrupted,
    /// Reading a response body failed.
    #[error("could not read {what} {digest} of '{reference}' from {registry}")]
    Transfer {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// "blob" or "manifest".
        what: &'static str,
        /// The digest.
        digest: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl PullError {
    /// Wraps an I/O error with what was done and to which file.
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> PullError {
        let path = path.into();
        move |source| PullError::Io { action, path, source }
    }

    /// The reference the error is about, normalised, when it is about one.
    pub fn reference(&self) -> Option<&str> {
        match self {
            PullError::Reference(e) => Some(&e.reference),
            PullError::NotFound { reference, .. }
            | PullError::Unauthorized { reference, .. }
            | PullError::DigestMismatch { reference, .. }
            | PullError::SizeMismatch { reference, .. }
            | PullError::Http { reference, .. }
            | PullError::Unreachable { reference, .. }
            | PullError::BadManifest { reference, .. }
            | PullError::NoPlatform { reference, .. }
            | PullError::Transfer { reference, .. } => Some(reference),
            PullError::Credentials { .. }
            | PullError::Option(_)
            | PullError::Io { .. }
            | PullError::Interrupted => None,
        }
    }

    /// What the user can do about it, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            PullError::Unauthorized { registry, .. } => Some(format!(
                "log in with 'docker login {registry}' (kubeferry reads ~/.docker/config.json) or pass \
                 --registry-auth {registry}=USER:PASSWORD"
            )),
            PullError::NotFound { .. } => Some("check the repository name and the tag or digest".into()),
            PullError::Unreachable { registry, .. } => Some(format!(
                "check that {registry} is reachable from this host; a registry that speaks plain HTTP must \
                 be passed with --insecure-registry {registry}"
            )),
            PullError::DigestMismatch { .. } | PullError::SizeMismatch { .. } => Some(
                "the registry (or something between it and this host) served altered content; nothing of it was kept"
                    .into(),
            ),
            _ => None,
        }
    }
}
