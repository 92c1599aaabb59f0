//! The installer's errors, with the hint and exit code each one calls for.

use std::io;
use std::path::PathBuf;

use crate::arch::{Arch, ElfError};
use crate::keys::KeyError;
use crate::manifest::ManifestError;
use crate::trailer::TrailerError;

/// Exit codes of the kubeferry binaries.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The operation failed (I/O, disk, a command that failed).
    pub const FAILED: i32 = 1;
    /// The command line was wrong.
    pub const USAGE: i32 = 2;
    /// The bundle is corrupt, or not signed by a trusted key.
    pub const UNTRUSTED: i32 = 3;
    /// A host check refused to go on.
    pub const PREFLIGHT: i32 = 4;
    /// Interrupted by a signal.
    pub const INTERRUPTED: i32 = 130;
}

/// Result alias for the installer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong reading, verifying or extracting a bundle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("could not {action} '{path}'")]
    Io {
        /// What was being done: "read", "create", "write"...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Smaller than a trailer.
    #[error("the file is {size} bytes, too short to be a kubeferry bundle")]
    TooShort {
        /// The file's length.
        size: u64,
    },
    /// Bytes follow the trailer.
    #[error("{extra} bytes follow the end of the bundle; nothing outside the signed file is accepted")]
    Padded {
        /// How many bytes were appended.
        extra: u64,
    },
    /// No trailer where it must be.
    #[error("the file does not end with a kubeferry trailer: it is truncated, or not a kubeferry bundle")]
    NotABundle,
    /// A trailer that is there but unusable.
    #[error("the bundle's trailer cannot be used")]
    Trailer(#[source] TrailerError),
    /// The file's length and the trailer's record differ.
    #[error("the file is {actual} bytes but its trailer records {recorded}: bytes were removed or inserted")]
    SizeMismatch {
        /// Length on disk.
        actual: u64,
        /// Length the trailer records.
        recorded: u64,
    },
    /// The bundle carries no signature and verification was asked for.
    #[error("the bundle is not signed")]
    Unsigned,
    /// Signed by a key that is not trusted.
    #[error("signature was made by key {fingerprint} which is not trusted on this host")]
    UntrustedKey {
        /// Fingerprint of the signing key.
        fingerprint: String,
    },
    /// The signature does not verify.
    #[error(
        "the signature by key {fingerprint} does not match: the manifest or trailer was changed after signing"
    )]
    BadSignature {
        /// Fingerprint of the signing key.
        fingerprint: String,
    },
    /// The manifest names another signer than the signature section.
    #[error("the manifest names signer {manifest} but the signature is by {signature}")]
    SignerMismatch {
        /// The manifest's signer.
        manifest: String,
        /// The signature section's key.
        signature: String,
    },
    /// The manifest is not JSON kubeferry can read.
    #[error("the manifest cannot be read")]
    ManifestSyntax(#[source] serde_json::Error),
    /// The manifest is not safe or not consistent.
    #[error("the manifest is not acceptable")]
    Manifest(#[source] ManifestError),
    /// The manifest and trailer disagree about a region.
    #[error("the manifest and the trailer disagree about the {region}")]
    LayoutMismatch {
        /// "stub", "payload" or "index".
        region: &'static str,
    },
    /// The bundle is for another architecture than wanted.
    #[error("this bundle is for {bundle}, but {wanted} is needed here")]
    WrongArch {
        /// The bundle's architecture.
        bundle: Arch,
        /// The architecture needed.
        wanted: Arch,
        /// The file the user needs instead, when it can be named.
        instead: Option<String>,
    },
    /// The stub is not an executable for the manifest's architecture.
    #[error("the stub is not an executable for {arch}")]
    StubArch {
        /// The manifest's architecture.
        arch: Arch,
        /// What the stub is.
        #[source]
        source: StubArchError,
    },
    /// A region whose bytes do not match the manifest.
    #[error("{what} is corrupt: expected {expected}, found {found}")]
    Digest {
        /// What failed: "the stub", "payload chunk 3", "index block 0".
        what: String,
        /// The manifest's digest.
        expected: String,
        /// The digest of the bytes read.
        found: String,
    },
    /// A payload chunk or index block that does not unpack.
    #[error("{what} does not unpack")]
    Unpack {
        /// What failed: "payload chunk 3", "index block 0".
        what: String,
        /// The decompressor's error.
        #[source]
        source: io::Error,
    },
    /// The extraction target exists and is not empty.
    #[error("'{path}' already exists and is not empty")]
    TargetExists {
        /// The target.
        path: PathBuf,
    },
    /// Not enough room for the extracted rootfs.
    #[error("not enough free space in '{path}': the bundle unpacks to {needed} and {available} are free")]
    NoSpace {
        /// The directory checked.
        path: PathBuf,
        /// Bytes needed, human readable.
        needed: String,
        /// Bytes free, human readable.
        available: String,
    },
    /// A key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A command the install ran failed.
    #[error("{command} failed ({status}); the install log is '{log}':\n{output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines of its output.
        output: String,
        /// The install log, which holds all of it.
        log: PathBuf,
    },
    /// The container runtime could not be set up.
    #[error("the container runtime cannot be installed: {0}")]
    Runtime(String),
    /// The bundled registry could not be set up or did not answer.
    #[error("the bundled registry cannot be served")]
    Registry(#[source] crate::registry::RegistryError),
    /// The registry image of the rootfs (`images/registry.tar`) could not be loaded or run.
    #[error("the registry image cannot be run: {0}")]
    RegistryImage(String),
    /// The registry settings (flags or the image's ENV) cannot be used.
    #[error("the registry settings are not usable: {0}")]
    RegistrySettings(String),
    /// The host lacks what the install needs.
    #[error("this host is not ready for the install:\n{}", render_findings(.findings))]
    Preflight {
        /// Every finding, each with its remedy.
        findings: Vec<crate::preflight::Finding>,
    },
    /// Steps of the install that are not part of this version.
    #[error("steps {done} are done, but this version of kubeferry cannot do {missing} yet")]
    InstallUnavailable {
        /// The steps done, comma-separated.
        done: String,
        /// The steps not implemented, comma-separated.
        missing: String,
    },
    /// Interrupted by a signal; everything half-written was removed.
    #[error("interrupted; nothing half-written was left behind")]
    Interrupted,
}

/// What a stub executable turned out to be.
#[derive(Debug, thiserror::Error)]
pub enum StubArchError {
    /// An executable for another architecture.
    #[error("it is an executable for {0}")]
    Other(Arch),
    /// Not an executable kubeferry knows.
    #[error(transparent)]
    Elf(#[from] ElfError),
}

impl Error {
    /// Wraps an I/O error with what was done and to which file.
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { action, path, source }
    }

    /// The exit code this error calls for.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Io { .. }
            | Error::Unpack { .. }
            | Error::TargetExists { .. }
            | Error::NoSpace { .. }
            | Error::InstallUnavailable { .. }
            | Error::Command { .. }
            | Error::Runtime(_)
            | Error::Registry(_)
            | Error::RegistryImage(_) => exit::FAILED,
            Error::RegistrySettings(_) => exit::USAGE,
            Error::Key(KeyError::Io { .. }) => exit::FAILED,
            Error::WrongArch { .. } | Error::Preflight { .. } => exit::PREFLIGHT,
            Error::Interrupted => exit::INTERRUPTED,
            _ => exit::UNTRUSTED,
        }
    }

    /// What the user can do about it, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Unsigned => Some(
                "sign the bundle with 'kubeferry sign --key KEY FILE'; \
                 --insecure-skip-verify runs an unsigned bundle at your own risk"
                    .into(),
            ),
            Error::UntrustedKey { fingerprint } => Some(format!(
                "pass --trusted-key FILE, place the public key in /etc/kubeferry/trusted-keys/, \
                 or, after checking the fingerprint with the bundle's publisher, pass --key-fingerprint {fingerprint}"
            )),
            Error::Padded { .. } | Error::NotABundle | Error::SizeMismatch { .. } | Error::Digest { .. } => {
                Some("copy the file again from its source and compare it with its .sha256 file".into())
            }
            Error::BadSignature { .. } => {
                Some("do not use this file: fetch it again from its publisher".into())
            }
            Error::Trailer(TrailerError::UnsupportedVersion { .. }) => {
                Some("use a kubeferry release that reads this format version".into())
            }
            Error::WrongArch { instead: Some(file), .. } => Some(format!("use '{file}' on this host")),
            Error::TargetExists { .. } => {
                Some("choose an empty directory, or pass --force to replace it".into())
            }
            Error::NoSpace { .. } => Some("free some space or extract to another file system".into()),
            Error::Preflight { findings } => {
                let mut names: Vec<&str> = findings.iter().map(|f| f.name.as_str()).collect();
                names.dedup();
                Some(format!(
                    "fix what is listed, or pass --ignore-preflight {} to go on anyway",
                    names.join(",")
                ))
            }
            Error::Key(key) => key.hint(),
            Error::Registry(e) => e.hint(),
            _ => None,
        }
    }
}

fn render_findings(findings: &[crate::preflight::Finding]) -> String {
    findings.iter().map(|f| format!("    {f}")).collect::<Vec<_>>().join("\n")
}

/// Formats a byte count in binary units: `512 B`, `3.2 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
