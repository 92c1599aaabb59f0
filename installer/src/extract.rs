//! Extraction: the verified payload is written into a staging directory beside the target
//! and renamed into place only when every digest matched.
//!
//! # Security
//!
//! Nothing is written outside the target. Before a byte is written the manifest has been
//! authenticated and validated ([`Manifest::validate`]): paths are relative with only normal
//! components, every parent is a directory listed earlier (so no entry is reached through a
//! symlink), symlink targets stay inside the tree, hard links name earlier regular files, and
//! nothing but directories, regular files and links exists in the format. The staging
//! directory is new and private (0700) while it is filled; files are created with `O_EXCL`;
//! links are made only after every file is written.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result, human_bytes};
use crate::manifest::{Digest, Entry, Manifest};
use crate::progress::Reporter;
use crate::reader::{Bundle, Verified};
use crate::stream::{self, Sink, StreamOptions};

/// Space kept free beyond the payload's unpacked size: metadata, directories, small files'
/// rounding to blocks.
const SPACE_MARGIN_PER_ENTRY: u64 = 4096;

/// Options of an extraction.
#[derive(Debug, Default, Clone)]
pub struct ExtractOptions {
    /// Replace a target directory that is not empty (it is moved aside, then removed once
    /// the new tree is in place).
    pub replace: bool,
    /// Skip the free-space check (for tests of the disk-full path).
    pub skip_space_check: bool,
    /// Threads and cancellation.
    pub stream: StreamOptions,
}

/// What an extraction wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractSummary {
    /// Entries written.
    pub entries: usize,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Checks every byte of the bundle against the authenticated manifest, without unpacking.
pub fn verify(
    bundle: &Bundle,
    verified: &Verified,
    options: &StreamOptions,
    reporter: &dyn Reporter,
) -> Result<()> {
    stream::run(bundle, &verified.manifest, None, options, reporter)
}

/// Extracts the bundle's rootfs to `target`, in one streaming pass that checks every digest.
/// On any failure the target is as it was and no staging directory is left.
pub fn extract(
    bundle: &Bundle,
    verified: &Verified,
    target: &Path,
    options: &ExtractOptions,
    reporter: &dyn Reporter,
) -> Result<ExtractSummary> {
    let manifest = &verified.manifest;
    let target = std::path::absolute(target).map_err(Error::io("resolve", target))?;
    let (parent, name) = match (target.parent(), target.file_name()) {
        (Some(parent), Some(name)) => (parent.to_path_buf(), name.to_string_lossy().into_owned()),
        _ => {
            return Err(Error::Io {
                action: "extract into",
                path: target.clone(),
                source: std::io::Error::new(
                    ErrorKind::InvalidInput,
                    "the target must name a directory below '/'",
                ),
            });
        }
    };
    fs::create_dir_all(&parent).map_err(Error::io("create", &parent))?;
    let _lock = lock_dir(&parent)?;

    let existing = existing_target(&target, options.replace)?;
    let staging = parent.join(format!(".{name}.kubeferry-staging"));
    let aside = parent.join(format!(".{name}.kubeferry-old"));
    for stale in [&staging, &aside] {
        remove_if_present(stale)?;
    }
    if !options.skip_space_check {
        check_space(&parent, manifest)?;
    }

    let guard = RemoveOnDrop(Some(staging.clone()));
    fs::DirBuilder::new().mode(0o700).create(&staging).map_err(Error::io("create", &staging))?;
    let shown = |entry: &str| target.join(entry);
    for entry in &manifest.entries {
        if let Entry::Dir { path, .. } = entry {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(staging.join(path))
                .map_err(Error::io("create", shown(path)))?;
        }
    }

    let mut writer = FileWriter::new(&staging, &target, manifest);
    stream::run(bundle, manifest, Some(&mut writer), &options.stream, reporter)?;
    writer.finish()?;

    for entry in &manifest.entries {
        match entry {
            Entry::Symlink { path, target: to } => {
                std::os::unix::fs::symlink(to, staging.join(path))
                    .map_err(Error::io("create", shown(path)))?;
            }
            Entry::Hardlink { path, target: to } => {
                fs::hard_link(staging.join(to), staging.join(path))
                    .map_err(Error::io("create", shown(path)))?;
            }
            _ => {}
        }
    }
    set_metadata(&staging, &target, manifest)?;
    let root = File::open(&staging).map_err(Error::io("open", &staging))?;
    nix::unistd::syncfs(&root).map_err(|e| Error::io("sync", &staging)(e.into()))?;

    match existing {
        Existing::None => {}
        Existing::Empty => fs::remove_dir(&target).map_err(Error::io("replace", &target))?,
        Existing::Full => fs::rename(&target, &aside).map_err(Error::io("move aside", &target))?,
    }
    fs::rename(&staging, &target).map_err(Error::io("rename into place", &target))?;
    guard.disarm();
    if matches!(existing, Existing::Full) {
        fs::remove_dir_all(&aside).map_err(Error::io("remove", &aside))?;
    }
    if let Ok(dir) = File::open(&parent) {
        let _ = dir.sync_all();
    }
    Ok(ExtractSummary { entries: manifest.entries.len(), bytes: manifest.payload.unpacked_size })
}

/// What is at the target before extraction.
#[derive(Debug, Clone, Copy)]
enum Existing {
    None,
    Empty,
    Full,
}

fn existing_target(target: &Path, replace: bool) -> Result<Existing> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Existing::None),
        Err(e) => Err(Error::io("inspect", target)(e)),
        Ok(meta) if !meta.is_dir() => Err(Error::TargetExists { path: target.to_path_buf() }),
        Ok(_) => {
            let mut entries = fs::read_dir(target).map_err(Error::io("read", target))?;
            match (entries.next().is_some(), replace) {
                (false, _) => Ok(Existing::Empty),
                (true, true) => Ok(Existing::Full),
                (true, false) => Err(Error::TargetExists { path: target.to_path_buf() }),
            }
        }
    }
}

/// Holds an exclusive lock on a directory so that two extractions into it cannot race.
fn lock_dir(dir: &Path) -> Result<Flock<File>> {
    let file = File::open(dir).map_err(Error::io("open", dir))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| Error::Io {
        action: "lock",
        path: dir.to_path_buf(),
        source: if errno == nix::errno::Errno::EWOULDBLOCK {
            std::io::Error::other("another kubeferry is extracting here")
        } else {
            errno.into()
        },
    })
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io("remove", path)(e)),
        _ => Ok(()),
    }
}

fn check_space(dir: &Path, manifest: &Manifest) -> Result<()> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| Error::io("inspect", dir)(e.into()))?;
    let available = stat.blocks_available().saturating_mul(stat.fragment_size());
    let needed = manifest.payload.unpacked_size + SPACE_MARGIN_PER_ENTRY * manifest.entries.len() as u64;
    if available < needed {
        return Err(Error::NoSpace {
            path: dir.to_path_buf(),
            needed: human_bytes(needed),
            available: human_bytes(available),
        });
    }
    Ok(())
}

/// Removes a directory tree when dropped, unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_dir_all(path);
        }
    }
}

/// Writes the payload's bytes into the regular files, in payload order, checking each file's
/// digest as it closes.
struct FileWriter<'a> {
    staging: &'a Path,
    target: &'a Path,
    files: Vec<(&'a str, u64, Digest, u32)>,
    next: usize,
    open: Option<OpenFile<'a>>,
}

struct OpenFile<'a> {
    file: File,
    path: &'a str,
    remaining: u64,
    hasher: Sha256,
    digest: Digest,
    mode: u32,
}

impl<'a> FileWriter<'a> {
    fn new(staging: &'a Path, target: &'a Path, manifest: &'a Manifest) -> Self {
        let by_path: std::collections::HashMap<&str, (Digest, u32)> = manifest
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::File { path, digest, mode, .. } => Some((path.as_str(), (*digest, mode.0))),
                _ => None,
            })
            .collect();
        let files = manifest
            .payload_files()
            .filter_map(|(path, size)| by_path.get(path).map(|(digest, mode)| (path, size, *digest, *mode)))
            .collect();
        FileWriter { staging, target, files, next: 0, open: None }
    }

    /// Creates the next file of payload order; returns false when there is none.
    fn open_next(&mut self) -> Result<bool> {
        while let Some(&(path, size, digest, mode)) = self.files.get(self.next) {
            self.next += 1;
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.staging.join(path))
                .map_err(Error::io("create", self.target.join(path)))?;
            let open = OpenFile { file, path, remaining: size, hasher: Sha256::new(), digest, mode };
            if size == 0 {
                self.close(open)?;
            } else {
                self.open = Some(open);
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn close(&self, open: OpenFile<'a>) -> Result<()> {
        let found = Digest::from_hasher(open.hasher);
        if found != open.digest {
            return Err(Error::Digest {
                what: format!("file '{}'", open.path),
                expected: open.digest.to_string(),
                found: found.to_string(),
            });
        }
        open.file
            .set_permissions(Permissions::from_mode(open.mode))
            .map_err(Error::io("set the mode of", self.target.join(open.path)))
    }

    /// Checks that every file was written in full.
    fn finish(&mut self) -> Result<()> {
        if self.open.is_none() && !self.open_next()? {
            return Ok(());
        }
        let path = self.open.as_ref().map(|o| o.path).unwrap_or_default();
        Err(Error::Digest {
            what: format!("file '{path}'"),
            expected: "more content".into(),
            found: "the end of the payload".into(),
        })
    }
}

impl Sink for FileWriter<'_> {
    fn accept(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.open.is_none() && !self.open_next()? {
                return Err(Error::Digest {
                    what: "the payload".into(),
                    expected: "no more content".into(),
                    found: format!("{} more bytes", data.len()),
                });
            }
            let Some(open) = self.open.as_mut() else { continue };
            let n = (open.remaining.min(data.len() as u64)) as usize;
            open.file.write_all(&data[..n]).map_err(Error::io("write", self.target.join(open.path)))?;
            open.hasher.update(&data[..n]);
            open.remaining -= n as u64;
            data = &data[n..];
            if open.remaining == 0
                && let Some(done) = self.open.take()
            {
                self.close(done)?;
            }
        }
        Ok(())
    }
}

/// Sets owner (when root), directory modes and every mtime, children before parents.
fn set_metadata(staging: &Path, target: &Path, manifest: &Manifest) -> Result<()> {
    let root = File::open(staging).map_err(Error::io("open", staging))?;
    let time = TimeSpec::new(manifest.mtime, 0);
    let as_root = nix::unistd::geteuid().is_root();
    let owner = manifest.owner;
    let apply = |relative: &Path, shown: &Path, dir_mode: Option<u32>| -> Result<()> {
        let full = staging.join(relative);
        if as_root {
            std::os::unix::fs::lchown(&full, Some(owner.uid), Some(owner.gid))
                .map_err(Error::io("chown", shown))?;
        }
        if let Some(mode) = dir_mode {
            fs::set_permissions(&full, Permissions::from_mode(mode))
                .map_err(Error::io("set the mode of", shown))?;
        }
        utimensat(&root, relative, &time, &time, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| Error::io("set the time of", shown)(e.into()))
    };
    for entry in manifest.entries.iter().rev() {
        let dir_mode = match entry {
            Entry::Dir { mode, .. } => Some(mode.0),
            _ => None,
        };
        apply(Path::new(entry.path()), &target.join(entry.path()), dir_mode)?;
    }
    apply(Path::new("."), target, Some(0o755))
}
