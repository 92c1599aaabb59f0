//! Flattening an image's layers into one directory, as a container runtime's snapshotter lays
//! them over each other, for a build that starts `FROM` an image.
//!
//! Each layer is a tar stream (plain, gzip or zstd, as its media type says) applied over what
//! the layers before it left:
//!
//! - a file, link or symlink replaces whatever had its path; a directory merges with a
//!   directory;
//! - `.wh.NAME` deletes `NAME` as the layers below had it;
//! - `.wh..wh..opq` in a directory deletes everything the layers below had in it.
//!
//! # Security
//!
//! A layer comes from a registry and is not trusted beyond its digest. Nothing is ever written
//! outside the target directory: an entry's path must hold only normal components (no `..`, no
//! root), no entry is written through a symbolic link (a path whose parent is a symlink is
//! refused), a file is created only where nothing is (what was there is removed first, so an
//! existing symlink is never followed), and a hard link must name a file the layers already
//! wrote, by a path that obeys the same rules. Devices, FIFOs and other entry kinds are
//! refused. Owners and times are not kept: the packer normalises them.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The prefix of a whiteout file's name.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of an opaque directory's marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression a layer media type names; `None` for a media type that is not a layer
    /// kubeferry can read.
    pub fn of_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The compression whose magic number `head` starts with (a plain tar otherwise).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// `reader`, decompressed.
    pub fn decoder<'a>(self, reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(reader),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
        })
    }
}

/// A layer that cannot be applied, and why.
#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    /// An entry that would write outside the target, or that kubeferry does not write.
    #[error("the layer entry '{path}' is refused: {reason}")]
    Unsafe {
        /// The entry's path as the layer names it.
        path: String,
        /// Why.
        reason: String,
    },
    /// The layer is not a tar stream that can be read.
    #[error("the layer cannot be read as a tar archive")]
    Read(#[source] io::Error),
    /// Writing into the target failed.
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
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FlattenError {
    let path = path.to_path_buf();
    move |source| FlattenError::Io { action, path, source }
}

/// What applying one layer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Entries written (files, directories, links).
    pub written: u64,
    /// Paths deleted by whiteouts, and opaque directories emptied.
    pub whited_out: u64,
}

/// Applies the tar stream `layer` (already decompressed) over `target`, which must exist.
pub fn apply_layer(layer: impl Read, target: &Path) -> Result<Applied, FlattenError> {
    let mut archive = tar::Archive::new(layer);
    let mut applied = Applied::default();
    // Paths this layer wrote: a whiteout or an opaque marker deletes only what lower layers
    // had, whatever the order of the entries in the stream.
    let mut written: HashSet<String> = HashSet::new();
    for entry in archive.entries().map_err(FlattenError::Read)? {
        let mut entry = entry.map_err(FlattenError::Read)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let unsafe_entry = |reason: String| FlattenError::Unsafe { path: raw.clone(), reason };
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            continue;
        }
        let rel = normal_path(&raw).map_err(unsafe_entry)?;
        if rel.is_empty() {
            // The layer's root directory itself.
            continue;
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
        check_parents(target, parent).map_err(unsafe_entry)?;
        let dest = target.join(&rel);
        if name == OPAQUE_MARKER {
            let dir = target.join(parent);
            if dir.is_dir() {
                empty_lower(&dir, parent, &written)?;
            }
            applied.whited_out += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let victim = if parent.is_empty() { hidden.to_string() } else { format!("{parent}/{hidden}") };
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(unsafe_entry("a whiteout must name an entry".into()));
            }
            if !written.contains(&victim) {
                remove(&target.join(&victim))?;
            }
            applied.whited_out += 1;
            continue;
        }
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&dest) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        remove(&dest)?;
                        fs::create_dir(&dest).map_err(io_err("create", &dest))?;
                    }
                    Err(_) => fs::create_dir_all(&dest).map_err(io_err("create", &dest))?,
                }
                let mode = entry.header().mode().unwrap_or(0o755) & 0o777 | 0o700;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(io_err("set the mode of", &dest))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove(&dest)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dest)
                    .map_err(io_err("create", &dest))?;
                io::copy(&mut entry, &mut file).map_err(io_err("write", &dest))?;
                let mode = entry.header().mode().unwrap_or(0o644) & 0o777 | 0o600;
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(io_err("set the mode of", &dest))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| unsafe_entry("a symbolic link without a target".into()))?;
                remove(&dest)?;
                std::os::unix::fs::symlink(&link, &dest)
                    .map_err(io_err("create the symbolic link", &dest))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| unsafe_entry("a hard link without a target".into()))?;
                let link_rel = normal_path(&link)
                    .map_err(|reason| unsafe_entry(format!("its link target is refused: {reason}")))?;
                let (link_parent, _) = link_rel.rsplit_once('/').unwrap_or(("", ""));
                check_parents(target, link_parent)
                    .map_err(|reason| unsafe_entry(format!("its link target is refused: {reason}")))?;
                let source = target.join(&link_rel);
                match fs::symlink_metadata(&source) {
                    Ok(meta) if meta.is_file() => {}
                    _ => {
                        return Err(unsafe_entry(format!(
                            "it links to '{link}', which is not a file the layers wrote before it"
                        )));
                    }
                }
                if link_rel != rel {
                    remove(&dest)?;
                    fs::hard_link(&source, &dest).map_err(io_err("create the hard link", &dest))?;
                }
            }
            other => {
                return Err(unsafe_entry(format!(
                    "it is a {}, which a cluster image's rootfs does not hold",
                    kind_name(other)
                )));
            }
        }
        // The directories above an entry are this layer's too, whether it lists them or not.
        let mut above = rel.as_str();
        while let Some((parent, _)) = above.rsplit_once('/') {
            if !written.insert(parent.to_string()) {
                break;
            }
            above = parent;
        }
        written.insert(rel);
        applied.written += 1;
    }
    Ok(applied)
}

/// Applies a layer blob from a file, decompressed as `compression` says.
pub fn apply_layer_file(
    path: &Path,
    compression: Compression,
    target: &Path,
) -> Result<Applied, FlattenError> {
    let file = fs::File::open(path).map_err(io_err("read", path))?;
    let reader =
        compression.decoder(io::BufReader::with_capacity(256 << 10, file)).map_err(FlattenError::Read)?;
    apply_layer(reader, target)
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "FIFO",
        _ => "tar entry of an unknown kind",
    }
}

/// A tar path as a relative `/`-separated path with only normal components (`./` and
/// trailing `/` dropped), or why it is refused.
pub fn normal_path(raw: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(part) => {
                let part = part.to_str().ok_or_else(|| "its name is not valid UTF-8".to_string())?;
                parts.push(part);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err("its path climbs out with '..'".into()),
            Component::RootDir | Component::Prefix(_) => return Err("its path is absolute".into()),
        }
    }
    Ok(parts.join("/"))
}

/// Checks that every directory of `parent` (relative to `target`) that exists is a real
/// directory, not a symbolic link or a file, and creates those missing.
fn check_parents(target: &Path, parent: &str) -> Result<(), String> {
    let mut at = target.to_path_buf();
    let mut walked = String::new();
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        at.push(part);
        if !walked.is_empty() {
            walked.push('/');
        }
        walked.push_str(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!(
                    "its parent '{walked}' is a symbolic link, and kubeferry never writes through one"
                ));
            }
            Ok(_) => return Err(format!("its parent '{walked}' is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&at).map_err(|e| format!("could not create '{}': {e}", at.display()))?;
            }
            Err(e) => return Err(format!("could not read '{}': {e}", at.display())),
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (a directory with its contents); nothing there is fine.
fn remove(path: &Path) -> Result<(), FlattenError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// Deletes from the directory `dir` (at `rel`) what lower layers put there: everything this
/// layer did not write, looking into the directories it wrote.
fn empty_lower(dir: &Path, rel: &str, written: &HashSet<String>) -> Result<(), FlattenError> {
    for entry in fs::read_dir(dir).map_err(io_err("read", dir))? {
        let entry = entry.map_err(io_err("read", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child_rel = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let path = entry.path();
        if !written.contains(&child_rel) {
            remove(&path)?;
        } else if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            empty_lower(&path, &child_rel, written)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(if *kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
            header.set_size(data.len() as u64);
            if !link.is_empty() {
                header.set_link_name(link).unwrap();
            }
            // Bypass the tar crate's own path checks, so that hostile paths reach the reader
            // as a hostile layer would carry them.
            let name = path.as_bytes();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    const F: tar::EntryType = tar::EntryType::Regular;
    const D: tar::EntryType = tar::EntryType::Directory;

    #[test]
    fn whiteouts_and_opaque_directories_delete_only_lower_content() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        let lower = tar_of(&[
            ("etc/", D, b"", ""),
            ("etc/a.conf", F, b"a1", ""),
            ("etc/gone.conf", F, b"x", ""),
            ("opq/", D, b"", ""),
            ("opq/old", F, b"old", ""),
            ("opq/sub/", D, b"", ""),
            ("opq/sub/older", F, b"o", ""),
        ]);
        apply_layer(&lower[..], t).unwrap();
        let upper = tar_of(&[
            ("etc/a.conf", F, b"a2", ""),
            ("etc/.wh.gone.conf", F, b"", ""),
            ("opq/sub/new", F, b"n", ""),
            ("opq/.wh..wh..opq", F, b"", ""),
        ]);
        let applied = apply_layer(&upper[..], t).unwrap();
        assert_eq!(applied, Applied { written: 2, whited_out: 2 });
        assert_eq!(fs::read(t.join("etc/a.conf")).unwrap(), b"a2");
        assert!(!t.join("etc/gone.conf").exists());
        assert!(!t.join("opq/old").exists() && !t.join("opq/sub/older").exists());
        assert_eq!(fs::read(t.join("opq/sub/new")).unwrap(), b"n");
    }

    #[test]
    fn refuses_every_way_out_of_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        fs::create_dir(&t).unwrap();
        let err = |entries: &[(&str, tar::EntryType, &[u8], &str)]| {
            apply_layer(&tar_of(entries)[..], &t).unwrap_err().to_string()
        };
        assert_eq!(
            err(&[("../escape", F, b"x", "")]),
            "the layer entry '../escape' is refused: its path climbs out with '..'"
        );
        assert_eq!(err(&[("/abs", F, b"x", "")]), "the layer entry '/abs' is refused: its path is absolute");
        assert_eq!(
            err(&[("out", tar::EntryType::Symlink, b"", ".."), ("out/escape", F, b"x", "")]),
            "the layer entry 'out/escape' is refused: its parent 'out' is a symbolic link, and kubeferry \
             never writes through one"
        );
        assert_eq!(
            err(&[("hl", tar::EntryType::Link, b"", "../../etc/passwd")]),
            "the layer entry 'hl' is refused: its link target is refused: its path climbs out with '..'"
        );
        assert_eq!(
            err(&[("etc/.wh...", F, b"", "")]),
            "the layer entry 'etc/.wh...' is refused: a whiteout must name an entry"
        );
        assert_eq!(
            err(&[("dev/null", tar::EntryType::Char, b"", "")]),
            "the layer entry 'dev/null' is refused: it is a character device, which a cluster image's \
             rootfs does not hold"
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "nothing beside the target");
        // A symlink replaced by a file: the file is written in its place, not through it.
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        apply_layer(&tar_of(&[("f", tar::EntryType::Symlink, b"", "../victim")])[..], &t).unwrap();
        apply_layer(&tar_of(&[("f", F, b"new", "")])[..], &t).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(t.join("f")).unwrap(), b"new");
    }

    #[test]
    fn hard_links_symlinks_and_compressions() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        let layer = tar_of(&[
            ("bin/", D, b"", ""),
            ("bin/tool", F, b"#!/bin/sh\n", ""),
            ("bin/alias", tar::EntryType::Link, b"", "bin/tool"),
            ("bin/sym", tar::EntryType::Symlink, b"", "tool"),
        ]);
        let gz = {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&layer).unwrap();
            e.finish().unwrap()
        };
        let zst = zstd::encode_all(&layer[..], 1).unwrap();
        for (bytes, media) in [
            (&layer, "application/vnd.oci.image.layer.v1.tar"),
            (&gz, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
            (&zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
        ] {
            let c = Compression::of_media_type(media).unwrap();
            assert_eq!(Compression::sniff(bytes), c);
            let out = t.join(media.replace('/', "_"));
            fs::create_dir(&out).unwrap();
            apply_layer(c.decoder(&bytes[..]).unwrap(), &out).unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                fs::metadata(out.join("bin/tool")).unwrap().ino(),
                fs::metadata(out.join("bin/alias")).unwrap().ino()
            );
            assert_eq!(fs::read_link(out.join("bin/sym")).unwrap(), Path::new("tool"));
        }
        assert_eq!(Compression::of_media_type("application/vnd.oci.image.layer.v1.tar+encrypted"), None);
    }
}
