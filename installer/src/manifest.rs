//! The manifest: what a bundle holds, and the digest of every byte of it.
//!
//! It is JSON, stored between the index and the signature, and can be read without reading
//! the payload or the index. The signature covers it; it covers the stub, every payload chunk
//! and every index block, so every byte of the bundle.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::arch::Arch;

/// The manifest format version this code writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;
/// The largest chunk, packed or unpacked, a reader accepts: bounds the memory of extraction.
pub const MAX_CHUNK_LEN: u64 = 16 << 20;
/// The longest path a bundle may hold.
pub const MAX_PATH_LEN: usize = 4096;

/// Everything known about a bundle without reading its payload or its index: the signed
/// header. It stays small whatever the input: its size grows with the number of payload chunks
/// (one per 4 MiB of content) and index blocks (one per MiB of entry records), never with the
/// number of files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Cluster image name, e.g. `edge`.
    pub name: String,
    /// Cluster image version, e.g. `v1.28.4`.
    pub version: String,
    /// Target architecture.
    pub arch: Arch,
    /// The Kubernetes version, when the rootfs says it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// The container runtime the rootfs carries (`containerd`, `docker`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cri: Option<String>,
    /// What the image's Kubefile says about it: ENV, LABEL, CMD and ENTRYPOINT.
    #[serde(default, skip_serializing_if = "ImageConfig::is_empty")]
    pub image: ImageConfig,
    /// Every container image the bundle's `registry/` holds, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageRecord>,
    /// The program that built the bundle, e.g. `kubeferry 0.1.0`.
    pub builder: String,
    /// Modification time (seconds since the epoch) given to every extracted entry.
    pub mtime: i64,
    /// Owner (uid) and group (gid) of every extracted entry when extracting as root.
    pub owner: Owner,
    /// The key that signed the bundle, or none for an unsigned bundle.
    pub signer: Option<Signer>,
    /// The stub executable at the head of the file.
    pub stub: Blob,
    /// The compressed payload.
    pub payload: Payload,
    /// The index: every entry of the rootfs, in tree order, in compressed blocks.
    pub index: Index,
}

/// What a Kubefile says about the image beyond its files: the sealer and sealos ENV values
/// (registry domain, port, credentials...), LABELs, and the commands that run after install.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// `ENV` values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `LABEL` values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `CMD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `ENTRYPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
}

impl ImageConfig {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == ImageConfig::default()
    }
}

/// A container image the bundle's `registry/` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// The reference the rootfs names it by, in its canonical form
    /// (`docker.io/library/nginx:1.25`); `REPOSITORY:TAG` for an image of `registry/` that no
    /// file of the rootfs names.
    pub name: String,
    /// The repository `registry/` holds it in (`library/nginx`), which the bundled registry
    /// serves.
    pub repository: String,
    /// The digest of the manifest (or index) the name points at.
    pub digest: Digest,
    /// The platforms held (`linux/amd64`); empty when the image does not say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// Bytes of every manifest and blob of the image, each counted once.
    pub size: u64,
}

/// The index region: one record per entry of the rootfs, in tree order, as JSON lines cut
/// into blocks that are compressed and digested one by one, so that a reader checks each
/// block before it parses it and never holds more than one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// Number of entries.
    pub entries: u64,
    /// Packed length: the sum of the blocks' sizes.
    pub size: u64,
    /// Unpacked length.
    pub unpacked_size: u64,
    /// The blocks, in order.
    pub blocks: Vec<Chunk>,
}

/// Owner of extracted entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The signing key, as named in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signer {
    /// `SHA256:...` of the public key.
    pub fingerprint: String,
    /// The minisign key id, as minisign prints it.
    pub key_id: String,
}

/// A region of bytes named by size and digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blob {
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the bytes.
    pub digest: Digest,
}

/// The payload: the content of every regular file, in tree order, cut into chunks that are
/// compressed independently so that they can be checked and unpacked in parallel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// Packed length: the sum of the chunks' sizes.
    pub size: u64,
    /// Unpacked length: the sum of the regular files' sizes.
    pub unpacked_size: u64,
    /// The chunks, in order.
    pub chunks: Vec<Chunk>,
}

/// One independently compressed piece of the payload or of the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// How the bytes are packed.
    pub codec: Codec,
    /// Packed length.
    pub size: u64,
    /// Unpacked length.
    pub unpacked_size: u64,
    /// SHA-256 of the packed bytes, checked before they are unpacked.
    pub digest: Digest,
}

/// How a chunk is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// One zstd frame.
    Zstd,
    /// Stored as is: data that is compressed already (layer blobs, tarballs).
    Stored,
}

/// One entry of the rootfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Entry {
    /// A directory.
    Dir {
        /// Relative path, `/`-separated.
        path: String,
        /// Permission bits.
        mode: Mode,
    },
    /// A regular file; its content is the next `size` bytes of the payload.
    File {
        /// Relative path.
        path: String,
        /// Permission bits.
        mode: Mode,
        /// Length in bytes.
        size: u64,
        /// Whether later hard links may name this file; only such files are remembered.
        #[serde(default, skip_serializing_if = "is_false")]
        linked: bool,
    },
    /// A symbolic link, relative and inside the rootfs.
    Symlink {
        /// Relative path.
        path: String,
        /// Link target, relative to the link's directory.
        target: String,
    },
    /// A second name for an earlier regular file marked `linked`.
    Hardlink {
        /// Relative path.
        path: String,
        /// Path of the earlier regular file.
        target: String,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Entry {
    /// The entry's relative path.
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. }
            | Entry::File { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::Hardlink { path, .. } => path,
        }
    }

    /// A one-word name of the entry's type.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::Dir { .. } => "dir",
            Entry::File { .. } => "file",
            Entry::Symlink { .. } => "symlink",
            Entry::Hardlink { .. } => "hardlink",
        }
    }
}

/// Unix permission bits, written in octal (`"0755"`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        u32::from_str_radix(&text, 8)
            .map(Mode)
            .map_err(|_| serde::de::Error::custom(format!("mode '{text}' is not octal")))
    }
}

/// A SHA-256 digest, written `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The digest a finished hasher holds.
    pub fn from_hasher(hasher: Sha256) -> Digest {
        Digest(hasher.finalize().into())
    }

    /// Lower-case hex without the algorithm prefix.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses `sha256:<64 hex digits>`.
    pub fn parse(text: &str) -> Option<Digest> {
        let hex = text.strip_prefix("sha256:")?;
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Digest::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("'{text}' is not a sha256 digest")))
    }
}

/// Why a manifest cannot be trusted to extract safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// An entry whose path or link target could lead outside the target directory, or that the
    /// format does not allow.
    #[error("unsafe entry '{path}': {reason}")]
    UnsafeEntry {
        /// The entry's path, as the manifest gives it.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Sizes, counts or versions that do not add up.
    #[error("{0}")]
    Inconsistent(String),
}

impl Manifest {
    /// Serialises the manifest as it is stored in a bundle.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain data structures to a Vec cannot fail.
        #[allow(clippy::expect_used)]
        serde_json::to_vec(self).expect("a manifest always serialises")
    }

    /// Checks everything a reader relies on before it reads the payload or the index: the
    /// format version, and that the chunk and block sizes are bounded and add up. The
    /// entries are checked one by one as the index is read ([`Validator`]).
    pub fn validate(&self) -> Result<(), ManifestError> {
        let inconsistent = |m: String| Err(ManifestError::Inconsistent(m));
        if self.format != MANIFEST_FORMAT {
            return inconsistent(format!(
                "manifest format {} is not supported (this kubeferry reads {MANIFEST_FORMAT})",
                self.format
            ));
        }
        check_chunks("payload chunk", &self.payload.chunks, self.payload.size, self.payload.unpacked_size)?;
        check_chunks("index block", &self.index.blocks, self.index.size, self.index.unpacked_size)
    }
}

/// Checks that chunks are bounded, that stored ones keep their size, and that their sizes add
/// up to the recorded totals.
fn check_chunks(what: &str, chunks: &[Chunk], size: u64, unpacked_size: u64) -> Result<(), ManifestError> {
    let inconsistent = |m: String| Err(ManifestError::Inconsistent(m));
    let (mut packed, mut unpacked) = (0u64, 0u64);
    for (i, chunk) in chunks.iter().enumerate() {
        if chunk.size > MAX_CHUNK_LEN || chunk.unpacked_size > MAX_CHUNK_LEN {
            return inconsistent(format!("{what} {i} is larger than {MAX_CHUNK_LEN} bytes"));
        }
        if chunk.codec == Codec::Stored && chunk.size != chunk.unpacked_size {
            return inconsistent(format!("stored {what} {i} changes size"));
        }
        packed += chunk.size;
        unpacked += chunk.unpacked_size;
    }
    if packed != size || unpacked != unpacked_size {
        return inconsistent(format!(
            "{what} sizes do not add up: they hold {packed} bytes packed and {unpacked} unpacked, \
             the manifest says {size} and {unpacked_size}"
        ));
    }
    Ok(())
}

/// Compares two paths in tree order: component by component, each bytewise. It is the order
/// of a depth-first walk that visits each directory's children sorted by name, so that a
/// directory's whole subtree follows it without anything in between.
pub fn tree_order(a: &str, b: &str) -> Ordering {
    let key = |c: u8| if c == b'/' { 0 } else { c };
    a.bytes().map(key).cmp(b.bytes().map(key))
}

/// Whether `path` lies below the directory `dir` (both relative, `/`-separated).
pub fn is_below(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// Checks the entries of an index one at a time, in the order they come, with memory that
/// grows with the depth of the tree and the number of files marked `linked`, never with the
/// number of entries: each entry is accepted only if its path is relative and normal, comes
/// after the previous one in tree order, has as parent a directory listed before it (so no
/// entry is ever reached through a symlink), is a symlink that stays inside the tree, or a
/// hard link to an earlier `linked` file; modes carry permission bits only.
#[derive(Debug, Default)]
pub struct Validator {
    previous: Option<(String, bool)>,
    dirs: Vec<String>,
    linked: HashSet<String>,
    entries: u64,
    file_bytes: u64,
}

impl Validator {
    /// A validator for a new index.
    pub fn new() -> Validator {
        Validator::default()
    }

    /// Checks the next entry.
    pub fn check(&mut self, entry: &Entry) -> Result<(), ManifestError> {
        let path = entry.path();
        let unsafe_entry =
            |reason: &str| ManifestError::UnsafeEntry { path: path.to_string(), reason: reason.to_string() };
        let depth = check_relative_path(path).map_err(|r| unsafe_entry(&r))?;
        if let Some((previous, _)) = &self.previous
            && tree_order(previous, path) != Ordering::Less
        {
            return Err(unsafe_entry("entries are not in tree order, or the path is listed twice"));
        }
        while let Some(top) = self.dirs.last() {
            if is_below(path, top) {
                break;
            }
            self.dirs.pop();
        }
        if let Some((parent, _)) = path.rsplit_once('/')
            && self.dirs.last().map(String::as_str) != Some(parent)
        {
            return Err(match &self.previous {
                Some((previous, false)) if previous == parent => {
                    unsafe_entry("its parent is not a directory")
                }
                _ => unsafe_entry("its parent directory is not listed before it"),
            });
        }
        match entry {
            Entry::Dir { mode, .. } | Entry::File { mode, .. } if mode.0 & !0o777 != 0 => {
                return Err(unsafe_entry(&format!("mode {mode} has bits other than permissions")));
            }
            Entry::Symlink { target, .. } => {
                check_symlink_target(target, depth - 1).map_err(|r| unsafe_entry(&r))?;
            }
            Entry::Hardlink { target, .. } if !self.linked.contains(target) => {
                return Err(unsafe_entry("a hard link must name a regular file listed before it"));
            }
            _ => {}
        }
        match entry {
            Entry::Dir { .. } => self.dirs.push(path.to_string()),
            Entry::File { size, linked, .. } => {
                self.file_bytes += size;
                if *linked {
                    self.linked.insert(path.to_string());
                }
            }
            _ => {}
        }
        self.entries += 1;
        self.previous = Some((path.to_string(), matches!(entry, Entry::Dir { .. })));
        Ok(())
    }

    /// Checks, after the last entry, that the index held as many entries as the manifest says
    /// and that the files hold exactly the payload's unpacked bytes.
    pub fn finish(&self, manifest: &Manifest) -> Result<(), ManifestError> {
        if self.entries != manifest.index.entries || self.file_bytes != manifest.payload.unpacked_size {
            return Err(ManifestError::Inconsistent(format!(
                "the index holds {} entries whose files hold {} bytes, the manifest says {} entries \
                 and {} bytes",
                self.entries, self.file_bytes, manifest.index.entries, manifest.payload.unpacked_size
            )));
        }
        Ok(())
    }

    /// Entries checked so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }
}

/// Checks a relative entry path and returns its depth (number of components).
fn check_relative_path(path: &str) -> Result<usize, String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("the path is longer than {MAX_PATH_LEN} bytes"));
    }
    if path.starts_with('/') {
        return Err("the path is absolute".into());
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    let mut depth = 0;
    for component in path.split('/') {
        match component {
            "" => return Err("the path has an empty component".into()),
            "." | ".." => return Err(format!("the path has a '{component}' component")),
            c if c.len() > 255 => return Err("a path component is longer than 255 bytes".into()),
            _ => depth += 1,
        }
    }
    Ok(depth)
}

/// Checks that a symlink at `path` pointing to `target` is one a bundle may hold.
pub fn check_symlink(path: &str, target: &str) -> Result<(), ManifestError> {
    let unsafe_entry = |reason: String| ManifestError::UnsafeEntry { path: path.to_string(), reason };
    let depth = check_relative_path(path).map_err(unsafe_entry)?;
    check_symlink_target(target, depth - 1).map_err(unsafe_entry)
}

/// Checks a symlink target: relative, with `..` only at its start and never climbing above
/// the root from a directory `dir_depth` levels below it.
fn check_symlink_target(target: &str, dir_depth: usize) -> Result<(), String> {
    if target.is_empty() {
        return Err("the link target is empty".into());
    }
    if target.starts_with('/') {
        return Err(format!("the link target '{target}' is absolute"));
    }
    if target.contains('\0') || target.len() > MAX_PATH_LEN {
        return Err("the link target is malformed".into());
    }
    let mut ups = 0;
    let mut seen_name = false;
    for component in target.split('/') {
        match component {
            ".." if !seen_name => ups += 1,
            ".." => return Err(format!("the link target '{target}' has '..' after a name")),
            "" | "." => return Err(format!("the link target '{target}' has an empty or '.' component")),
            _ => seen_name = true,
        }
    }
    if ups > dir_depth {
        return Err(format!("the link target '{target}' points outside the bundle"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(path: &str) -> Entry {
        Entry::Dir { path: path.into(), mode: Mode(0o755) }
    }

    fn file(path: &str, size: u64) -> Entry {
        Entry::File { path: path.into(), mode: Mode(0o644), size, linked: false }
    }

    fn linked(path: &str) -> Entry {
        Entry::File { path: path.into(), mode: Mode(0o644), size: 1, linked: true }
    }

    fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink { path: path.into(), target: target.into() }
    }

    fn manifest(entries: u64, files: u64) -> Manifest {
        let chunk = |size| Chunk { codec: Codec::Stored, size, unpacked_size: size, digest: Digest::of(b"") };
        Manifest {
            format: MANIFEST_FORMAT,
            name: "t".into(),
            version: "v1".into(),
            arch: Arch::Amd64,
            kubernetes_version: None,
            cri: None,
            image: ImageConfig::default(),
            images: Vec::new(),
            builder: "test".into(),
            mtime: 0,
            owner: Owner { uid: 0, gid: 0 },
            signer: None,
            stub: Blob { size: 0, digest: Digest::of(b"") },
            payload: Payload { size: files, unpacked_size: files, chunks: vec![chunk(files)] },
            index: Index { entries, size: 10, unpacked_size: 10, blocks: vec![chunk(10)] },
        }
    }

    fn check_all(entries: &[Entry]) -> Result<Validator, ManifestError> {
        let mut v = Validator::new();
        for e in entries {
            v.check(e)?;
        }
        Ok(v)
    }

    fn reason(entries: Vec<Entry>) -> String {
        check_all(&entries).unwrap_err().to_string()
    }

    #[test]
    fn accepts_a_normal_tree_in_tree_order() {
        let entries = vec![
            dir("a"),
            dir("a/b"),
            linked("a/b/kubeadm"),
            Entry::Hardlink { path: "a/b/kubeadm2".into(), target: "a/b/kubeadm".into() },
            file("a/c", 2),
            file("a-z", 3),
            dir("etc"),
            symlink("etc/tool", "../a/b/kubeadm"),
            symlink("up", "etc"),
        ];
        let v = check_all(&entries).unwrap();
        assert_eq!(v.finish(&manifest(9, 6)), Ok(()));
        assert!(v.finish(&manifest(8, 6)).unwrap_err().to_string().starts_with("the index holds 9 entries"));
        let m = manifest(9, 6);
        assert_eq!(m.validate(), Ok(()));
        let back: Manifest = serde_json::from_slice(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
        for e in &entries {
            let line = serde_json::to_string(e).unwrap();
            assert_eq!(&serde_json::from_str::<Entry>(&line).unwrap(), e);
        }
    }

    #[test]
    fn tree_order_keeps_each_subtree_together() {
        let mut paths = vec!["a-b", "a/c", "a", "a/b/c", "b", "a.d"];
        paths.sort_by(|a, b| tree_order(a, b));
        assert_eq!(paths, ["a", "a/b/c", "a/c", "a-b", "a.d", "b"]);
    }

    #[test]
    fn rejects_paths_that_leave_the_target() {
        assert_eq!(reason(vec![file("../x", 0)]), "unsafe entry '../x': the path has a '..' component");
        assert_eq!(reason(vec![file("/etc/passwd", 0)]), "unsafe entry '/etc/passwd': the path is absolute");
        assert_eq!(
            reason(vec![dir("a"), file("a/./b", 0)]),
            "unsafe entry 'a/./b': the path has a '.' component"
        );
        assert_eq!(reason(vec![file("a//b", 0)]), "unsafe entry 'a//b': the path has an empty component");
        assert_eq!(
            reason(vec![file("a/b", 0)]),
            "unsafe entry 'a/b': its parent directory is not listed before it"
        );
        assert_eq!(
            reason(vec![dir("a"), file("a/x", 0), dir("b"), file("a/y", 0)]),
            "unsafe entry 'a/y': entries are not in tree order, or the path is listed twice"
        );
        assert_eq!(
            reason(vec![symlink("a", "/etc"), file("a/passwd", 0)]),
            "unsafe entry 'a': the link target '/etc' is absolute"
        );
        assert_eq!(
            reason(vec![symlink("a", "b"), file("a/passwd", 0)]),
            "unsafe entry 'a/passwd': its parent is not a directory"
        );
        assert_eq!(
            reason(vec![dir("a"), symlink("a/l", "../..")]),
            "unsafe entry 'a/l': the link target '../..' points outside the bundle"
        );
        assert_eq!(
            reason(vec![symlink("l", "x/../../y")]),
            "unsafe entry 'l': the link target 'x/../../y' has '..' after a name"
        );
        assert_eq!(
            reason(vec![Entry::Hardlink { path: "h".into(), target: "/etc/shadow".into() }]),
            "unsafe entry 'h': a hard link must name a regular file listed before it"
        );
        assert_eq!(
            reason(vec![file("a", 1), Entry::Hardlink { path: "h".into(), target: "a".into() }]),
            "unsafe entry 'h': a hard link must name a regular file listed before it"
        );
        assert_eq!(
            reason(vec![file("b", 0), file("a", 0)]),
            "unsafe entry 'a': entries are not in tree order, or the path is listed twice"
        );
        assert_eq!(
            reason(vec![Entry::File { path: "s".into(), mode: Mode(0o4755), size: 0, linked: false }]),
            "unsafe entry 's': mode 4755 has bits other than permissions"
        );
    }

    #[test]
    fn sizes_must_add_up() {
        let mut m = manifest(1, 3);
        m.payload.chunks[0].unpacked_size = 2;
        m.payload.chunks[0].size = 2;
        assert!(m.validate().unwrap_err().to_string().starts_with("payload chunk sizes do not add up"));
        let mut m = manifest(1, 3);
        m.index.blocks[0].unpacked_size = 11;
        assert_eq!(m.validate().unwrap_err().to_string(), "stored index block 0 changes size");
    }

    #[test]
    fn digests_and_modes_round_trip() {
        let d = Digest::of(b"abc");
        assert_eq!(d.to_string(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(Digest::parse(&d.to_string()), Some(d));
        assert_eq!(Digest::parse("sha256:zz"), None);
        assert_eq!(serde_json::to_string(&Mode(0o755)).unwrap(), "\"0755\"");
    }

    #[test]
    fn images_are_optional_and_checked() {
        // A manifest written before images were listed reads, and one without images is
        // written as it was.
        let m = manifest(1, 3);
        let bytes = m.to_bytes();
        assert!(!String::from_utf8_lossy(&bytes).contains("images"));
        assert_eq!(serde_json::from_slice::<Manifest>(&bytes).unwrap(), m);
        let mut m = manifest(1, 3);
        m.images.push(ImageRecord {
            name: "docker.io/library/nginx:1.25".into(),
            repository: "library/nginx".into(),
            digest: Digest::of(b"manifest"),
            platforms: vec!["linux/amd64".into()],
            size: 42,
        });
        let text = String::from_utf8(m.to_bytes()).unwrap();
        assert!(text.contains(&format!(
            r#""images":[{{"name":"docker.io/library/nginx:1.25","repository":"library/nginx","digest":"{}","platforms":["linux/amd64"],"size":42}}]"#,
            Digest::of(b"manifest")
        )));
        assert_eq!(serde_json::from_str::<Manifest>(&text).unwrap(), m);
        let unknown = text.replace(r#""size":42"#, r#""size":42,"extra":1"#);
        assert!(
            serde_json::from_str::<Manifest>(&unknown)
                .unwrap_err()
                .to_string()
                .contains("unknown field `extra`")
        );
        let bad = text.replace(&Digest::of(b"manifest").to_string(), "sha256:abc");
        assert!(
            serde_json::from_str::<Manifest>(&bad)
                .unwrap_err()
                .to_string()
                .contains("is not a sha256 digest")
        );
    }
}
