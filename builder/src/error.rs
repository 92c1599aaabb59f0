//! The builder's errors, with the hint and exit code each one calls for.

use std::io;
use std::path::PathBuf;

use kubeferry_installer::arch::{Arch, ElfError};
use kubeferry_installer::error::exit;
use kubeferry_installer::keys::KeyError;

/// Result alias for the builder.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong building or signing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    /// Something in the rootfs that a bundle cannot carry.
    #[error("cannot pack '{path}': {reason}")]
    Unpackable {
        /// The file in the rootfs.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file that should name images and cannot be read as such.
    #[error("cannot read the images '{path}' names: {reason}")]
    Images {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An image of the rootfs's registry/ whose manifest cannot be read.
    #[error("cannot read the image '{name}' of registry/ ('{path}'): {reason}")]
    StoredImage {
        /// The image.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file changed while it was read.
    #[error("'{path}' changed while it was being packed")]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// No stub for an architecture.
    #[error("no installer stub for {arch} was found (looked in: {searched})")]
    StubNotFound {
        /// The architecture.
        arch: Arch,
        /// The places looked in.
        searched: String,
    },
    /// A stub that is not a static executable for the target architecture.
    #[error("the stub '{path}' cannot be used for {arch}: {reason}")]
    BadStub {
        /// The stub file.
        path: PathBuf,
        /// The target architecture.
        arch: Arch,
        /// Why.
        reason: String,
    },
    /// A stub that is not an executable at all.
    #[error("the stub '{path}' is not an executable kubeferry can use")]
    StubNotElf {
        /// The stub file.
        path: PathBuf,
        /// What the header says.
        #[source]
        source: ElfError,
    },
    /// A name or version that cannot be part of a file name.
    #[error("{what} '{value}' may only hold letters, digits and . _ + -")]
    BadName {
        /// "name" or "version".
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// A bundle that is already signed.
    #[error("'{path}' is already signed by {fingerprint}")]
    AlreadySigned {
        /// The bundle.
        path: PathBuf,
        /// The existing signer.
        fingerprint: String,
    },
    /// A key file could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Reading or verifying a bundle failed.
    #[error(transparent)]
    Bundle(#[from] kubeferry_installer::Error),
    /// A Kubefile that cannot be used.
    #[error(transparent)]
    Kubefile(#[from] crate::kubefile::KubefileError),
    /// A `--build-arg` that is not NAME=VALUE.
    #[error("--build-arg '{0}' is not NAME=VALUE")]
    BuildArg(String),
    /// Pulling an image failed.
    #[error(transparent)]
    Pull(Box<crate::pull::PullError>),
    /// Pulling an image a file of the rootfs names failed.
    #[error("could not pull '{reference}' (named in {named_in})")]
    ImagePull {
        /// The reference, normalised.
        reference: String,
        /// The places that name it.
        named_in: String,
        /// Why.
        #[source]
        source: Box<crate::pull::PullError>,
    },
    /// Images the rootfs names that its registry/ does not hold, with --no-pull.
    #[error("{}", missing_images(*.arch, .missing))]
    MissingImages {
        /// The architecture built.
        arch: Arch,
        /// Each reference, with the places that name it.
        missing: Vec<(String, Vec<String>)>,
    },
    /// A base image (`FROM IMAGE`, `--from`) could not be pulled or flattened.
    #[error("the base image '{reference}' could not be used for {arch}")]
    Base {
        /// The reference.
        reference: String,
        /// The architecture being built.
        arch: Arch,
        /// Why.
        #[source]
        source: Box<crate::base::BaseError>,
    },
    /// An image archive of `images/` could not be imported.
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    /// Interrupted by a signal; the partial output was removed.
    #[error("interrupted; the partial output was removed")]
    Interrupted,
}

impl From<crate::pull::PullError> for Error {
    fn from(e: crate::pull::PullError) -> Self {
        Error::Pull(Box::new(e))
    }
}

/// How many missing images a message names; `kubeferry images` lists every one.
pub const MISSING_SHOWN: usize = 20;

/// The line that ends a list of missing images cut at [`MISSING_SHOWN`].
pub fn more_missing(count: usize) -> String {
    format!("and {count} more ('kubeferry images ROOTFS' lists every image the rootfs names, and where)")
}

fn missing_images(arch: Arch, missing: &[(String, Vec<String>)]) -> String {
    let mut list: Vec<String> = missing
        .iter()
        .take(MISSING_SHOWN)
        .map(|(r, places)| format!("'{r}' (named in {})", places.join("; ")))
        .collect();
    if missing.len() > MISSING_SHOWN {
        list.push(more_missing(missing.len() - MISSING_SHOWN));
    }
    let (count, verb) = match missing.len() {
        1 => ("1 image".to_string(), "is"),
        n => (format!("{n} images"), "are"),
    };
    format!(
        "{count} the rootfs names for {arch} {verb} not in its registry/ and --no-pull was given: {}",
        list.join(", ")
    )
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
            Error::Bundle(e) => e.exit_code(),
            Error::Interrupted => exit::INTERRUPTED,
            Error::Pull(e) if matches!(**e, crate::pull::PullError::Interrupted) => exit::INTERRUPTED,
            Error::ImagePull { source, .. } if matches!(**source, crate::pull::PullError::Interrupted) => {
                exit::INTERRUPTED
            }
            Error::Base { source, .. }
                if matches!(**source, crate::base::BaseError::Pull(crate::pull::PullError::Interrupted)) =>
            {
                exit::INTERRUPTED
            }
            _ => exit::FAILED,
        }
    }

    /// What the user can do about it, when there is something.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::StubNotFound { arch, .. } => Some(format!(
                "build the stub with 'packaging/build-stub.sh {arch}', or pass --stub {arch}=PATH"
            )),
            Error::BadStub { arch, .. } => Some(format!(
                "pass a static kubeferry-stub built for {arch}: 'packaging/build-stub.sh {arch}' builds one"
            )),
            Error::StubNotElf { .. } => {
                Some("pass the kubeferry-stub executable that 'packaging/build-stub.sh' builds".into())
            }
            Error::AlreadySigned { .. } => Some("pass --force to sign it again with another key".into()),
            Error::Key(key) => key.hint(),
            Error::Bundle(e) => e.hint(),
            Error::Pull(e) => e.hint(),
            Error::ImagePull { source, .. } => Some(match (source.as_ref(), source.hint()) {
                (crate::pull::PullError::NotFound { .. }, _) | (_, None) => {
                    "check the reference in the file that names it (repository, tag or digest), the registry's \
                     address, or pass --mirror REGISTRY=MIRROR"
                        .to_string()
                }
                (_, Some(hint)) => hint,
            }),
            Error::MissingImages { .. } => Some(
                "build without --no-pull to pull them, add them to registry/ ('kubeferry pull REF... --out \
                 ROOTFS/registry'), or pass --allow-missing-images to build without them"
                    .into(),
            ),
            Error::Base { source, .. } => match &**source {
                crate::base::BaseError::Pull(e) => e.hint(),
                crate::base::BaseError::Layer { .. } => Some(
                    "the image's layers are refused as they are; rebuild the image without the entry named"
                        .into(),
                ),
                crate::base::BaseError::Unusable { .. } => None,
            },
            _ => None,
        }
    }
}
