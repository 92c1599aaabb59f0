//! Extraction: the verified payload is written into a staging directory beside the target
//! and renamed into place only when every digest matched.
//!
//! # Security
//!
//! Nothing is written outside the target. The manifest has been authenticated before a byte
//! is read, and each entry of the index is validated ([`crate::manifest::Validator`]) before it
//! is acted on: paths are relative with only normal components, entries come in strict tree
//! order (so no path is listed twice), every parent is a directory listed earlier and created
//! here as a real directory (so no entry is ever reached through a symlink), symlink targets
//! stay inside the tree, hard links name earlier regular files, and nothing but directories,
//! regular files and links exists in the format. The staging directory is new and private
//! (0700) while it is filled and files are created with `O_EXCL`. An entry refused half-way
//! through the index leaves only the staging directory, which is removed.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{UtimensatFlags, futimens, utimensat};
use nix::sys::time::TimeSpec;

use crate::error::{Error, Result, human_bytes};
use crate::index::Entries;
use crate::manifest::{Entry, Manifest, Owner, is_below};
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
    let mut writer = TreeWriter::new(&staging, &target, bundle, manifest)?;
    stream::run(bundle, manifest, Some(&mut writer), &options.stream, reporter)?;
    let entries = writer.finish()?;
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
    Ok(ExtractSummary { entries, bytes: manifest.payload.unpacked_size })
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
    let needed = manifest.payload.unpacked_size + SPACE_MARGIN_PER_ENTRY * manifest.index.entries;
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

/// Builds the tree in the staging directory as the index and the payload come: directories,
/// files, and links in index order, each file's bytes as the payload delivers them. A
/// directory's mode and time are set when the walk leaves it, after everything in it.
struct TreeWriter<'a> {
    staging: &'a Path,
    target: &'a Path,
    root: File,
    entries: Entries<'a>,
    open: Option<OpenFile>,
    dirs: Vec<(String, u32)>,
    time: TimeSpec,
    owner: Option<Owner>,
    count: usize,
}

struct OpenFile {
    file: File,
    path: String,
    remaining: u64,
    mode: u32,
}

impl<'a> TreeWriter<'a> {
    fn new(staging: &'a Path, target: &'a Path, bundle: &'a Bundle, manifest: &'a Manifest) -> Result<Self> {
        Ok(TreeWriter {
            staging,
            target,
            root: File::open(staging).map_err(Error::io("open", staging))?,
            entries: bundle.entries(manifest),
            open: None,
            dirs: Vec::new(),
            time: TimeSpec::new(manifest.mtime, 0),
            owner: nix::unistd::geteuid().is_root().then_some(manifest.owner),
            count: 0,
        })
    }

    /// Places entries until a file with content is open; returns false at the end of the index.
    fn open_next(&mut self) -> Result<bool> {
        while let Some(entry) = self.entries.next() {
            let entry = entry?;
            self.count += 1;
            self.leave_dirs(entry.path())?;
            let shown = self.target.join(entry.path());
            let full = self.staging.join(entry.path());
            match entry {
                Entry::Dir { path, mode } => {
                    fs::DirBuilder::new().mode(0o700).create(&full).map_err(Error::io("create", shown))?;
                    self.dirs.push((path, mode.0));
                }
                Entry::File { path, mode, size, .. } => {
                    let file = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&full)
                        .map_err(Error::io("create", shown))?;
                    let open = OpenFile { file, path, remaining: size, mode: mode.0 };
                    if size > 0 {
                        self.open = Some(open);
                        return Ok(true);
                    }
                    self.close(open)?;
                }
                Entry::Symlink { path, target } => {
                    std::os::unix::fs::symlink(target, &full).map_err(Error::io("create", &shown))?;
                    self.set_metadata(Path::new(&path), &shown, None)?;
                }
                Entry::Hardlink { target, .. } => {
                    fs::hard_link(self.staging.join(target), &full).map_err(Error::io("create", shown))?;
                }
            }
        }
        Ok(false)
    }

    /// Finishes the directories the walk has left: every one not above `path`.
    fn leave_dirs(&mut self, path: &str) -> Result<()> {
        while let Some((dir, _)) = self.dirs.last() {
            if is_below(path, dir) {
                break;
            }
            if let Some((dir, mode)) = self.dirs.pop() {
                self.set_metadata(Path::new(&dir), &self.target.join(&dir), Some(mode))?;
            }
        }
        Ok(())
    }

    /// Sets owner (when root), mode (of a directory) and time of an entry by its path.
    fn set_metadata(&self, relative: &Path, shown: &Path, dir_mode: Option<u32>) -> Result<()> {
        let full = self.staging.join(relative);
        if let Some(owner) = self.owner {
            std::os::unix::fs::lchown(&full, Some(owner.uid), Some(owner.gid))
                .map_err(Error::io("chown", shown))?;
        }
        if let Some(mode) = dir_mode {
            fs::set_permissions(&full, Permissions::from_mode(mode))
                .map_err(Error::io("set the mode of", shown))?;
        }
        utimensat(&self.root, relative, &self.time, &self.time, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| Error::io("set the time of", shown)(e.into()))
    }

    /// Gives a written file its owner, mode and time.
    fn close(&self, open: OpenFile) -> Result<()> {
        let shown = self.target.join(&open.path);
        if let Some(owner) = self.owner {
            std::os::unix::fs::fchown(&open.file, Some(owner.uid), Some(owner.gid))
                .map_err(Error::io("chown", &shown))?;
        }
        open.file
            .set_permissions(Permissions::from_mode(open.mode))
            .map_err(Error::io("set the mode of", &shown))?;
        futimens(&open.file, &self.time, &self.time)
            .map_err(|e| Error::io("set the time of", &shown)(e.into()))
    }

    /// Places the entries after the last byte of content, checks that no file is left
    /// waiting for content, and finishes every directory and the root. Returns the number
    /// of entries.
    fn finish(mut self) -> Result<usize> {
        if self.open.is_some() || self.open_next()? {
            let path = self.open.as_ref().map(|o| o.path.clone()).unwrap_or_default();
            return Err(Error::Digest {
                what: format!("file '{path}'"),
                expected: "more content".into(),
                found: "the end of the payload".into(),
            });
        }
        self.leave_dirs("")?;
        self.set_metadata(Path::new("."), self.target, Some(0o755))?;
        Ok(self.count)
    }
}

impl Sink for TreeWriter<'_> {
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
            open.file.write_all(&data[..n]).map_err(Error::io("write", self.target.join(&open.path)))?;
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
