//! Image archives placed in a rootfs's `images/`, imported into the registry storage the
//! bundle carries.
//!
//! Two formats are read, as a directory or as a tar file (`.tar`, plain, gzip or zstd):
//!
//! - **`docker save`** (`manifest.json`: each image's `Config`, `RepoTags` and `Layers`): each
//!   layer is checked against the config's `rootfs.diff_ids`, and a Docker v2 manifest is made
//!   for the image;
//! - **OCI image layout** (`oci-layout` and `index.json`): each manifest of `index.json` named
//!   by the annotation `io.containerd.image.name` or a full reference in
//!   `org.opencontainers.image.ref.name`; an index is narrowed to the architecture built, whose
//!   image manifest the tag then names (as a pull for one platform stores it). Every blob is
//!   checked against its digest and size.
//!
//! Images are stored under their original repository names and tags in the distribution
//! layout ([`crate::pull::store`]). `images/shim/` (sealos's image lists), the registry's own
//! image ([`REGISTRY_IMAGE`]) and files of other kinds are left alone. An image for another
//! architecture is skipped with a warning.
//!
//! # Security
//!
//! A tar archive is unpacked by [`crate::flatten`]'s extractor into a scratch directory: no
//! entry is written outside it. Paths inside `manifest.json` must stay inside the archive.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use kubeferry_installer::arch::Arch;
use kubeferry_installer::progress::Reporter;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::flatten::{self, Compression, FlattenError};
use crate::pull::PullError;
use crate::pull::manifest::{self, DOCKER_MANIFEST, Parsed, Platform};
use crate::pull::store::Store;
use crate::reference::Reference;

/// The directory of sealos's image lists, which is not an archive.
pub const SHIM_DIR: &str = "shim";
/// The registry's own image (sealer's `images/registry.tar`, a `docker save` archive): not
/// imported, since the registry it starts on the target cannot serve its own image, but kept
/// in the bundle as a file, which the installer loads into the container runtime
/// ([`kubeferry_installer::install::registry_image::ARCHIVE`]).
pub const REGISTRY_IMAGE: &str = "registry.tar";
/// The annotation containerd and docker write with an image's full name.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation with an image's reference or tag.
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The media type of a Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// One image imported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportedImage {
    /// Its name and tag.
    pub reference: Reference,
    /// The digest of the manifest its tag names.
    pub digest: String,
    /// The archive it came from.
    pub archive: PathBuf,
}

/// An archive that cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Something in the archive is wrong.
    #[error("the image archive '{archive}': {reason}")]
    Bad {
        /// The archive.
        archive: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tar archive could not be unpacked.
    #[error("the image archive '{archive}' cannot be unpacked")]
    Unpack {
        /// The archive.
        archive: PathBuf,
        /// Why.
        #[source]
        source: FlattenError,
    },
    /// Reading a file failed.
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
    /// Writing the registry storage failed.
    #[error(transparent)]
    Store(#[from] PullError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.to_path_buf();
    move |source| ArchiveError::Io { action, path, source }
}

/// Imports every image archive in `images_dir` (not `images/shim/`) for `arch` into the
/// registry storage under `registry_out` (the directory that gets `docker/registry/v2`).
/// Archives are read in name order; a later one's tag replaces an earlier one's.
pub fn import_archives(
    images_dir: &Path,
    registry_out: &Path,
    arch: Arch,
    reporter: &dyn Reporter,
) -> Result<Vec<ImportedImage>, ArchiveError> {
    let mut names: Vec<PathBuf> = match fs_err::read_dir(images_dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io_err("read", images_dir))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read", images_dir)(e)),
    };
    names.sort();
    fs_err::create_dir_all(registry_out).map_err(io_err("create", registry_out))?;
    let store = Store::new(registry_out);
    let mut imported = Vec::new();
    for path in names {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let meta = fs_err::metadata(&path).map_err(io_err("read", &path))?;
        if meta.is_dir() {
            let layout = path.join("oci-layout").is_file() || path.join("manifest.json").is_file();
            if name != SHIM_DIR && layout {
                imported.extend(import_dir(&path, &path, &store, arch, reporter)?);
            }
        } else if name == REGISTRY_IMAGE {
            reporter.note(&format!("kept '{}' as a file: the registry's own image", path.display()));
        } else if is_tar_name(&name) {
            let scratch = tempfile::Builder::new()
                .prefix(".kubeferry-archive-")
                .tempdir_in(registry_out.parent().unwrap_or(Path::new(".")))
                .map_err(io_err("create a directory beside", registry_out))?;
            unpack(&path, scratch.path())?;
            imported.extend(import_dir(&path, scratch.path(), &store, arch, reporter)?);
        }
    }
    Ok(imported)
}

/// Whether a file name is one of a tar archive.
fn is_tar_name(name: &str) -> bool {
    [".tar", ".tar.gz", ".tgz", ".tar.zst"].iter().any(|s| name.ends_with(s))
}

/// Unpacks a tar archive (compression sniffed) into `into`.
fn unpack(archive: &Path, into: &Path) -> Result<(), ArchiveError> {
    let mut file = fs_err::File::open(archive).map_err(io_err("read", archive))?;
    let mut head = [0u8; 4];
    let n = file.read(&mut head).map_err(io_err("read", archive))?;
    let file = fs_err::File::open(archive).map_err(io_err("read", archive))?;
    let reader = Compression::sniff(&head[..n])
        .decoder(io::BufReader::new(file))
        .map_err(io_err("decompress", archive))?;
    flatten::apply_layer(reader, into)
        .map_err(|source| ArchiveError::Unpack { archive: archive.to_path_buf(), source })?;
    Ok(())
}

/// Imports the layout or `docker save` tree at `root`, which came from `archive`.
fn import_dir(
    archive: &Path,
    root: &Path,
    store: &Store,
    arch: Arch,
    reporter: &dyn Reporter,
) -> Result<Vec<ImportedImage>, ArchiveError> {
    let importer = Importer { archive, root, store, arch, reporter };
    if root.join("manifest.json").is_file() {
        importer.docker_save()
    } else if root.join("oci-layout").is_file() && root.join("index.json").is_file() {
        importer.oci_layout()
    } else {
        Err(importer.bad(
            "it holds neither a manifest.json (docker save) nor an oci-layout and an index.json \
                          (OCI image layout)"
                .into(),
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<IndexEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// One archive being imported.
struct Importer<'a> {
    archive: &'a Path,
    root: &'a Path,
    store: &'a Store,
    arch: Arch,
    reporter: &'a dyn Reporter,
}

/// A blob of the archive, checked: its digest, size and file.
struct Blob {
    digest: String,
    size: u64,
    path: PathBuf,
}

impl Importer<'_> {
    fn bad(&self, reason: String) -> ArchiveError {
        ArchiveError::Bad { archive: self.archive.to_path_buf(), reason }
    }

    /// A file of the archive by its relative path, which must stay inside it.
    fn file(&self, rel: &str) -> Result<PathBuf, ArchiveError> {
        let normal =
            flatten::normal_path(rel).map_err(|e| self.bad(format!("the path '{rel}' is refused: {e}")))?;
        let path = self.root.join(&normal);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(path),
            _ => Err(self.bad(format!("it names '{rel}', which it does not hold as a file"))),
        }
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, rel: &str) -> Result<T, ArchiveError> {
        let path = self.file(rel)?;
        let bytes = fs_err::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| self.bad(format!("'{rel}' cannot be read: {e}")))
    }

    /// The sha256 of a file, and the sha256 of its content decompressed as `compression`.
    fn hash(&self, path: &Path, compression: Compression) -> Result<(String, u64, String), ArchiveError> {
        struct Tee<R> {
            inner: R,
            hasher: Sha256,
            len: u64,
        }
        impl<R: Read> Read for Tee<R> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.inner.read(buf)?;
                self.hasher.update(&buf[..n]);
                self.len += n as u64;
                Ok(n)
            }
        }
        let file = fs_err::File::open(path).map_err(io_err("read", path))?;
        let mut tee = Tee { inner: io::BufReader::new(file), hasher: Sha256::new(), len: 0 };
        let mut decoded = Sha256::new();
        {
            let mut reader = compression.decoder(&mut tee).map_err(io_err("decompress", path))?;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = reader.read(&mut buf).map_err(io_err("read", path))?;
                if n == 0 {
                    break;
                }
                decoded.update(&buf[..n]);
            }
        }
        // Whatever the decoder left unread still counts for the file's digest.
        io::copy(&mut tee, &mut io::sink()).map_err(io_err("read", path))?;
        Ok((
            format!("sha256:{:x}", tee.hasher.finalize()),
            tee.len,
            format!("sha256:{:x}", decoded.finalize()),
        ))
    }

    /// The blob `digest` of an OCI layout, checked against its digest and size.
    fn layout_blob(&self, digest: &str, size: u64) -> Result<Blob, ArchiveError> {
        let hex = crate::reference::parse_digest(digest)
            .map_err(|e| self.bad(format!("the digest '{digest}' is refused: {e}")))?;
        let hex = hex.strip_prefix("sha256:").unwrap_or(&hex).to_string();
        let path = self.file(&format!("blobs/sha256/{hex}"))?;
        let (found, len, _) = self.hash(&path, Compression::None)?;
        if found != digest {
            return Err(self
                .bad(format!("the blob {digest} does not match its digest: its content hashes to {found}")));
        }
        if len != size {
            return Err(
                self.bad(format!("the blob {digest} is {len} bytes long, its descriptor says {size}"))
            );
        }
        Ok(Blob { digest: digest.to_string(), size, path })
    }

    /// Stores an image: its blobs, its manifest (already a blob), the links, the tags.
    fn store_image(
        &self,
        manifest: &Blob,
        blobs: &[Blob],
        tags: &[Reference],
    ) -> Result<Vec<ImportedImage>, ArchiveError> {
        for blob in blobs {
            self.store.put_blob(&blob.digest, &blob.path)?;
        }
        self.store.put_blob(&manifest.digest, &manifest.path)?;
        let mut out = Vec::new();
        for reference in tags {
            let name = reference.repository();
            for blob in blobs {
                self.store.link_layer(name, &blob.digest)?;
            }
            self.store.link_revision(name, &manifest.digest)?;
            if let Some(tag) = reference.tag() {
                self.store.tag(name, tag, &manifest.digest)?;
            }
            out.push(ImportedImage {
                reference: reference.clone(),
                digest: manifest.digest.clone(),
                archive: self.archive.to_path_buf(),
            });
        }
        Ok(out)
    }

    /// Whether an image whose config says `architecture` belongs in this build; warns when not.
    fn for_this_arch(&self, what: &str, architecture: &str) -> bool {
        if architecture.is_empty() || architecture == self.arch.name() {
            return true;
        }
        self.reporter.warn(&format!(
            "{what} of '{}' is an image for {architecture}, not {}: left out of this bundle",
            self.archive.display(),
            self.arch
        ));
        false
    }

    fn docker_save(&self) -> Result<Vec<ImportedImage>, ArchiveError> {
        let saved: Vec<SavedImage> = self.read_json("manifest.json")?;
        let mut out = Vec::new();
        for image in saved {
            let tags = image.repo_tags.clone().unwrap_or_default();
            let what = tags.first().cloned().unwrap_or_else(|| image.config.clone());
            if tags.is_empty() {
                self.reporter.warn(&format!(
                    "the image {what} of '{}' has no RepoTags: left out, as nothing could pull it by name",
                    self.archive.display()
                ));
                continue;
            }
            let tags = tags
                .iter()
                .map(|t| Reference::parse(t).map_err(|e| self.bad(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            let config_path = self.file(&image.config)?;
            let config_bytes = fs_err::read(&config_path).map_err(io_err("read", &config_path))?;
            let config_digest = format!("sha256:{:x}", Sha256::digest(&config_bytes));
            // The config's file is named by its digest: `HEX.json` or `blobs/sha256/HEX`.
            let stem = Path::new(&image.config).file_name().map(|n| n.to_string_lossy().into_owned());
            let named = stem.as_deref().map(|s| s.trim_end_matches(".json")).unwrap_or("");
            if named.len() == 64
                && named.bytes().all(|b| b.is_ascii_hexdigit())
                && config_digest[7..] != *named
            {
                return Err(self.bad(format!(
                    "the config '{}' does not match its digest: its content hashes to {config_digest}",
                    image.config
                )));
            }
            let config: ImageConfig = serde_json::from_slice(&config_bytes)
                .map_err(|e| self.bad(format!("the config '{}' cannot be read: {e}", image.config)))?;
            if !self.for_this_arch(&what, &config.architecture) {
                continue;
            }
            let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
            if diff_ids.len() != image.layers.len() {
                return Err(self.bad(format!(
                    "the config of {what} lists {} layers and manifest.json {}",
                    diff_ids.len(),
                    image.layers.len()
                )));
            }
            let config_blob =
                Blob { digest: config_digest, size: config_bytes.len() as u64, path: config_path };
            let mut layers = Vec::new();
            let mut descriptors = Vec::new();
            for (rel, diff_id) in image.layers.iter().zip(&diff_ids) {
                let path = self.file(rel)?;
                let mut head = [0u8; 4];
                let n = fs_err::File::open(&path)
                    .and_then(|mut f| f.read(&mut head))
                    .map_err(io_err("read", &path))?;
                let compression = Compression::sniff(&head[..n]);
                let (digest, size, uncompressed) = self.hash(&path, compression)?;
                if uncompressed != *diff_id {
                    return Err(self.bad(format!(
                        "the layer '{rel}' of {what} does not match its diff ID {diff_id}: its content hashes to \
                         {uncompressed}"
                    )));
                }
                let media_type = match compression {
                    Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
                    Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    Compression::Zstd => "application/vnd.docker.image.rootfs.diff.tar.zstd",
                };
                descriptors
                    .push(serde_json::json!({"mediaType": media_type, "size": size, "digest": digest}));
                layers.push(Blob { digest, size, path });
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {"mediaType": DOCKER_CONFIG, "size": config_blob.size, "digest": config_blob.digest},
                "layers": descriptors,
            });
            let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| self.bad(e.to_string()))?;
            let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
            // Made beside the storage, never in the archive (which may be the rootfs's own).
            let manifest_path = self.store.root().join(format!(".kubeferry-manifest-{}", &digest[7..]));
            fs_err::write(&manifest_path, &bytes).map_err(io_err("write", &manifest_path))?;
            let manifest_blob = Blob { digest, size: bytes.len() as u64, path: manifest_path.clone() };
            let mut blobs = vec![config_blob];
            blobs.extend(layers);
            let stored = self.store_image(&manifest_blob, &blobs, &tags);
            let _ = std::fs::remove_file(&manifest_path);
            out.extend(stored?);
        }
        Ok(out)
    }

    fn oci_layout(&self) -> Result<Vec<ImportedImage>, ArchiveError> {
        let index: Index = self.read_json("index.json")?;
        let mut out = Vec::new();
        for entry in index.manifests {
            let name = entry
                .annotations
                .get(CONTAINERD_NAME)
                .or_else(|| entry.annotations.get(OCI_REF_NAME).filter(|n| n.contains(['/', ':'])));
            let Some(name) = name else {
                self.reporter.warn(&format!(
                    "the manifest {} of '{}' has no full image name ({CONTAINERD_NAME}, or a reference in \
                     {OCI_REF_NAME}): left out, as nothing could pull it by name",
                    entry.digest,
                    self.archive.display()
                ));
                continue;
            };
            let reference = Reference::parse(name).map_err(|e| self.bad(e.to_string()))?;
            let mut top = self.layout_blob(&entry.digest, entry.size)?;
            let mut media_type = entry.media_type.clone();
            let found = loop {
                let bytes = fs_err::read(&top.path).map_err(io_err("read", &top.path))?;
                let (_, parsed) = manifest::parse(&bytes, Some(&media_type))
                    .map_err(|e| self.bad(format!("the manifest {} cannot be used: {e}", top.digest)))?;
                match parsed {
                    Parsed::Image { config, layers } => break Some((config, layers)),
                    Parsed::Index { manifests } => {
                        let wanted = Platform::linux(self.arch.name());
                        let Some(child) = manifest::select(&manifests, &wanted) else {
                            self.reporter.warn(&format!(
                                "{reference} of '{}' has no image for {wanted} (it has: {}): left out of this bundle",
                                self.archive.display(),
                                manifest::available(&manifests)
                            ));
                            break None;
                        };
                        if child.digest == top.digest {
                            return Err(self.bad(format!("the index {} names itself", top.digest)));
                        }
                        media_type = child.media_type.clone();
                        top = self.layout_blob(&child.digest, child.size)?;
                    }
                }
            };
            let Some((config, layers)) = found else { continue };
            let config_blob = self.layout_blob(&config.digest, config.size)?;
            let bytes = fs_err::read(&config_blob.path).map_err(io_err("read", &config_blob.path))?;
            let parsed: ImageConfig = serde_json::from_slice(&bytes)
                .map_err(|e| self.bad(format!("the config {} cannot be read: {e}", config.digest)))?;
            if !self.for_this_arch(&reference.to_string(), &parsed.architecture) {
                continue;
            }
            let mut blobs = vec![config_blob];
            for layer in &layers {
                blobs.push(self.layout_blob(&layer.digest, layer.size)?);
            }
            out.extend(self.store_image(&top, &blobs, std::slice::from_ref(&reference))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use kubeferry_installer::progress::Silent;

    use super::*;
    use crate::pull::manifest::{OCI_INDEX, OCI_MANIFEST};

    #[test]
    fn the_registry_image_kept_is_the_one_the_installer_runs() {
        assert_eq!(
            Path::new("images").join(REGISTRY_IMAGE),
            Path::new(kubeferry_installer::install::registry_image::ARCHIVE)
        );
    }

    fn put(layout: &Path, bytes: &[u8]) -> serde_json::Value {
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        let dir = layout.join("blobs/sha256");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(&digest[7..]), bytes).unwrap();
        serde_json::json!({"digest": digest, "size": bytes.len()})
    }

    /// An OCI layout of an amd64 + arm64 index named `example.com/app:v1`; returns the amd64
    /// manifest's digest.
    fn layout(dir: &Path) -> String {
        let mut children = Vec::new();
        let mut amd64 = String::new();
        for arch in ["amd64", "arm64"] {
            let layer = put(dir, format!("not really a tar for {arch}").as_bytes());
            let config =
                put(dir, serde_json::json!({"architecture": arch, "os": "linux"}).to_string().as_bytes());
            let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": config, "layers": [layer]});
            let mut d = put(dir, manifest.to_string().as_bytes());
            if arch == "amd64" {
                amd64 = d["digest"].as_str().unwrap().to_string();
            }
            d["mediaType"] = OCI_MANIFEST.into();
            d["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
            children.push(d);
        }
        let mut index = put(
            dir,
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
                .to_string()
                .as_bytes(),
        );
        index["mediaType"] = OCI_INDEX.into();
        index["annotations"] = serde_json::json!({OCI_REF_NAME: "example.com/app:v1"});
        fs::write(
            dir.join("index.json"),
            serde_json::json!({"schemaVersion": 2, "manifests": [index]}).to_string(),
        )
        .unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        amd64
    }

    fn tar_dir(dir: &Path, to: &Path) {
        let mut builder = tar::Builder::new(fs::File::create(to).unwrap());
        builder.append_dir_all(".", dir).unwrap();
        builder.finish().unwrap();
    }

    #[test]
    fn imports_an_oci_layout_archive_for_one_architecture_and_refuses_a_tampered_blob() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let amd64 = layout(&src);
        let images = tmp.path().join("images");
        fs::create_dir_all(images.join("shim")).unwrap();
        fs::write(images.join("shim/imageList"), "example.com/app:v1\n").unwrap();
        tar_dir(&src, &images.join("app.tar"));
        let out = tmp.path().join("registry");
        let imported = import_archives(&images, &out, Arch::Amd64, &Silent).unwrap();
        assert_eq!(imported.len(), 1);
        assert_eq!(imported[0].reference.to_string(), "example.com/app:v1");
        assert_eq!(imported[0].digest, amd64);
        let store = Store::new(&out);
        let link = out.join("docker/registry/v2/repositories/app/_manifests/tags/v1/current/link");
        assert_eq!(fs::read_to_string(link).unwrap(), amd64);
        assert!(store.blob_path(&amd64).is_file());
        let leftovers: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(leftovers.iter().all(|n| !n.starts_with(".kubeferry")), "{leftovers:?}");

        // One byte changed in a layer: refused, naming the blob and both digests.
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(src.join("blobs/sha256").join(&amd64[7..])).unwrap()).unwrap();
        let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
        let path = src.join("blobs/sha256").join(&layer[7..]);
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let found = format!("sha256:{:x}", Sha256::digest(&bytes));
        let err =
            import_archives(&src.parent().unwrap().join("src-parent-missing"), &out, Arch::Amd64, &Silent);
        assert!(err.unwrap().is_empty(), "a missing images/ imports nothing");
        fs::remove_file(images.join("app.tar")).unwrap();
        fs::rename(&src, images.join("app")).unwrap();
        let err = import_archives(&images, &out, Arch::Amd64, &Silent).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "the image archive '{}': the blob {layer} does not match its digest: its content hashes to {found}",
                images.join("app").display()
            )
        );
    }
}
