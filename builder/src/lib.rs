//! The build-host side of kubeferry: turns a cluster rootfs into one signed, self-extracting
//! file per architecture.
//!
//! The pipeline, in the order data flows:
//!
//! 0. [`base`]: a build `FROM` a cluster image pulls it for the architecture and flattens its
//!    layers ([`flatten`]: whiteouts, nothing written outside the target) into a base directory.
//!    [`archive`]: image archives in the rootfs's `images/` (`docker save`, OCI layouts) are
//!    imported into the distribution layout the build adds at `registry/`.
//!    [`pull`]: fetch the container images the cluster needs ([`reference`] parses their names)
//!    from registries into the rootfs's `registry/`, in the docker distribution layout.
//! 1. [`collect`]: walk the CloudRootfs, lay the target architecture's folder over the common
//!    tree, normalise metadata, and read what the rootfs says of itself ([`collect::facts`]).
//! 2. [`stub`]: find the static installer stub for the architecture and check its ELF header.
//! 3. [`pack`]: write the stub, the payload in independently compressed chunks, the manifest,
//!    the signature and the trailer in one pass, with `.sha256` and `.minisig` files beside;
//!    [`direct`] writes it past the page cache.
//! 4. [`sign`]: sign a bundle that was built unsigned, on the machine that holds the key.
//!
//! Libraries never print: progress goes through [`kubeferry_installer::progress::Reporter`].

pub mod archive;
pub mod base;
pub mod collect;
pub mod direct;
pub mod error;
pub mod flatten;
pub mod images;
pub mod kubefile;
pub mod pack;
pub mod pull;
pub mod reference;
pub mod sign;
pub mod stored;
pub mod stub;

pub use error::{Error, Result};
