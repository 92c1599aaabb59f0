//! The target-host side of kubeferry: reads a bundle, proves it intact and signed by a
//! trusted key, and unpacks it.
//!
//! The pipeline, in the order data flows:
//!
//! 1. [`reader`]: open the file and decode the fixed-size [`trailer`] at its end; read the
//!    signature section and the [`manifest`] without touching the payload or the [`index`].
//! 2. [`reader::Bundle::authenticate`]: check the ed25519 signature over the trailer and the
//!    manifest against the host's [`trust`] ([`keys`]), then parse and validate the manifest.
//! 3. [`extract::verify`] or [`extract::extract`]: one streaming pass that hashes the stub and
//!    every payload chunk, unpacks the chunks in parallel and, reading the [`index`] block by
//!    block alongside, writes the entries into a staging directory, checking every digest,
//!    then renames the tree into place.
//!
//! Libraries never print: progress goes through [`progress::Reporter`].

pub mod arch;
pub mod cri;
pub mod docker;
pub mod error;
pub mod extract;
pub mod host;
pub mod index;
pub mod install;
pub mod keys;
pub mod kubeadm;
pub mod manifest;
pub mod mounts;
pub mod pipeline;
pub mod preflight;
pub mod progress;
pub mod reader;
pub mod registry;
pub mod status;
mod stream;
pub mod trailer;
pub mod trust;
pub mod uninstall;

pub use error::{Error, Result};
pub use stream::StreamOptions;
