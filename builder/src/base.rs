//! A build's base image pulled from a registry: `FROM registry.example.com/labring/kubernetes:v1.28.4`
//! in a Kubefile, or `kubeferry build --from REF`.
//!
//! 1. **Pull** the reference for the one platform being built ([`crate::pull`]: the blob cache,
//!    credentials, mirrors, plain HTTP for insecure registries, every digest checked) into a
//!    scratch registry storage beside the output.
//! 2. **Resolve** the platform's image manifest in what was stored (a digest that names an
//!    index keeps the index), and read its config.
//! 3. **Flatten** the layers, in order, into a directory ([`crate::flatten`]).
//!
//! The image config's `Env`, `Labels`, `Cmd` and `Entrypoint` become the base's
//! [`ImageConfig`], as a `FROM` bundle's manifest does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kubeferry_installer::arch::Arch;
use kubeferry_installer::manifest::ImageConfig;
use kubeferry_installer::progress::Reporter;
use serde::Deserialize;

use crate::flatten::{self, Compression, FlattenError};
use crate::pull::manifest::{self, Descriptor, Parsed};
use crate::pull::store::Store;
use crate::pull::{Platform, PullError, PullOptions, Puller};
use crate::reference::Reference;

/// Why a base image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// Pulling it failed.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// What was pulled is not an image kubeferry can flatten.
    #[error("'{reference}': {reason}")]
    Unusable {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// A layer could not be applied.
    #[error("layer {index} ({digest}) of '{reference}'")]
    Layer {
        /// The reference.
        reference: String,
        /// 1-based position of the layer.
        index: usize,
        /// Its digest.
        digest: String,
        /// What went wrong.
        #[source]
        source: FlattenError,
    },
}

/// The parts of an image config a build reads.
#[derive(Debug, Default, Deserialize)]
struct Config {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    config: Option<RunConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// What was flattened.
#[derive(Debug, Clone)]
pub struct Flattened {
    /// The directory the layers were flattened into.
    pub dir: PathBuf,
    /// The digest of the platform's image manifest.
    pub digest: String,
    /// What the image config says of the image.
    pub image: ImageConfig,
    /// The number of layers.
    pub layers: usize,
}

/// Pulls `reference` for `arch` with `options` (whose platforms are replaced by `arch`) and
/// flattens its layers into `dir`, created when missing, over what it holds already (so that
/// several images flatten into one tree, whiteouts included). `scratch` is a
/// directory for the pulled storage, removed before returning.
pub fn pull_and_flatten(
    reference: &Reference,
    arch: Arch,
    options: &PullOptions,
    dir: &Path,
    scratch: &Path,
    reporter: &dyn Reporter,
) -> Result<Flattened, BaseError> {
    let options = PullOptions {
        platforms: vec![Platform::linux(arch.name())],
        all_platforms: false,
        ..options.clone()
    };
    let puller = Puller::new(options)?;
    let _ = std::fs::remove_dir_all(scratch);
    let result = (|| {
        let pulled = puller.pull(std::slice::from_ref(reference), scratch, reporter)?;
        let digest = pulled.first().map(|p| p.digest.clone()).ok_or_else(|| BaseError::Unusable {
            reference: reference.to_string(),
            reason: "the pull stored nothing".into(),
        })?;
        flatten_stored(&Store::new(scratch), reference, &digest, arch, dir, reporter)
    })();
    let _ = std::fs::remove_dir_all(scratch);
    result
}

/// Flattens the image `digest` of `reference` (an image manifest, or an index with the
/// manifest for `arch`) held by `store` into `dir`, over what `dir` holds.
pub fn flatten_stored(
    store: &Store,
    reference: &Reference,
    digest: &str,
    arch: Arch,
    dir: &Path,
    reporter: &dyn Reporter,
) -> Result<Flattened, BaseError> {
    let unusable = |reason: String| BaseError::Unusable { reference: reference.to_string(), reason };
    let read = |digest: &str| {
        let path = store.blob_path(digest);
        fs_err::read(&path).map_err(|e| unusable(format!("its blob {digest} cannot be read: {e}")))
    };
    let mut digest = digest.to_string();
    let (config, layers) = loop {
        let (_, parsed) = manifest::parse(&read(&digest)?, None)
            .map_err(|e| unusable(format!("its manifest {digest} cannot be used: {e}")))?;
        match parsed {
            Parsed::Image { config, layers } => break (config, layers),
            Parsed::Index { manifests } => {
                let wanted = Platform::linux(arch.name());
                let child = manifest::select(&manifests, &wanted).ok_or_else(|| {
                    unusable(format!(
                        "it has no image for {wanted} (it has: {})",
                        manifest::available(&manifests)
                    ))
                })?;
                if child.digest == digest {
                    return Err(unusable("its index names itself".into()));
                }
                digest = child.digest.clone();
            }
        }
    };
    let config_bytes = read(&config.digest)?;
    let parsed: Config = serde_json::from_slice(&config_bytes)
        .map_err(|e| unusable(format!("its config {} is not an image config: {e}", config.digest)))?;
    if !parsed.architecture.is_empty() && parsed.architecture != arch.name() {
        return Err(unusable(format!(
            "it is an image for {}, not {arch}; push a multi-platform index, or build for {}",
            parsed.architecture, parsed.architecture
        )));
    }
    if let Some(rootfs) = &parsed.rootfs
        && !rootfs.diff_ids.is_empty()
        && rootfs.diff_ids.len() != layers.len()
    {
        return Err(unusable(format!(
            "its config lists {} layers and its manifest {}",
            rootfs.diff_ids.len(),
            layers.len()
        )));
    }
    fs_err::create_dir_all(dir)
        .map_err(|e| unusable(format!("the base directory cannot be created: {e}")))?;
    reporter.begin(&format!("flattening {} layers of '{reference}' for {arch}", layers.len()), 0);
    for (i, layer) in layers.iter().enumerate() {
        apply(store, reference, i + 1, layer, dir)?;
    }
    reporter.end();
    Ok(Flattened { dir: dir.to_path_buf(), digest, image: image_config(parsed.config), layers: layers.len() })
}

fn apply(
    store: &Store,
    reference: &Reference,
    index: usize,
    layer: &Descriptor,
    dir: &Path,
) -> Result<(), BaseError> {
    let fail = |source: FlattenError| BaseError::Layer {
        reference: reference.to_string(),
        index,
        digest: layer.digest.clone(),
        source,
    };
    let compression = Compression::of_media_type(&layer.media_type).ok_or_else(|| BaseError::Unusable {
        reference: reference.to_string(),
        reason: format!(
            "layer {index} ({}) has the media type '{}', which is not a tar layer kubeferry reads \
             (plain, gzip or zstd)",
            layer.digest, layer.media_type
        ),
    })?;
    flatten::apply_layer_file(&store.blob_path(&layer.digest), compression, dir).map_err(fail)?;
    Ok(())
}

/// An image config's run settings as a bundle's [`ImageConfig`].
fn image_config(config: Option<RunConfig>) -> ImageConfig {
    let config = config.unwrap_or_default();
    ImageConfig {
        env: config
            .env
            .unwrap_or_default()
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect(),
        labels: config.labels.unwrap_or_default(),
        cmd: config.cmd.filter(|c| !c.is_empty()),
        entrypoint: config.entrypoint.filter(|c| !c.is_empty()),
    }
}
