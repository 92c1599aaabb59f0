//! Packing: the stub, then the payload in independently compressed chunks, then the
//! manifest, the signature and the trailer, written in one pass into `NAME.run.partial` and
//! renamed into place when complete.
//!
//! The payload holds the content of every regular file, compressible files first and
//! already-compressed ones (layer blobs, tarballs) last, so that the latter are stored as they
//! are instead of paying for a second compression. Chunk boundaries depend only on the
//! input, never on the number of threads, so the same input gives the same bytes.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kubeferry_installer::arch::Arch;
use kubeferry_installer::keys::{FileDigest, SecretKey};
use kubeferry_installer::manifest::{
    Blob, Chunk, Codec, Digest, Entry, MANIFEST_FORMAT, Manifest, Mode, Owner, Payload, Signer,
};
use kubeferry_installer::pipeline;
use kubeferry_installer::progress::Reporter;
use kubeferry_installer::reader::{SignatureSection, signed_message};
use kubeferry_installer::trailer::Trailer;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Unpacked length of a payload chunk.
pub const CHUNK_LEN: usize = 4 << 20;
/// Files smaller than this are always compressed with their neighbours.
const STORE_MIN_LEN: u64 = 64 << 10;
/// Leading bytes of formats that are compressed already: gzip, zstd, xz, bzip2.
const COMPRESSED_MAGICS: [&[u8]; 4] = [&[0x1f, 0x8b], &[0x28, 0xb5, 0x2f, 0xfd], b"\xfd7zXZ\0", b"BZh"];

/// One entry to pack. [`crate::collect`] makes these from a rootfs and checks them; packing
/// writes what it is given, so tests can build bundles a reader must refuse.
#[derive(Debug, Clone)]
pub struct PackEntry {
    /// Relative path, `/`-separated.
    pub path: String,
    /// What the entry is.
    pub kind: PackKind,
}

/// What an entry is.
#[derive(Debug, Clone)]
pub enum PackKind {
    /// A directory.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits.
        mode: u32,
        /// Where its bytes come from.
        content: Content,
    },
    /// A symbolic link.
    Symlink {
        /// Link target.
        target: String,
    },
    /// A hard link to an earlier file.
    Hardlink {
        /// Path of the earlier file.
        target: String,
    },
}

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    /// A file on disk, of the size it had when collected.
    Path {
        /// The file.
        path: PathBuf,
        /// Its size when collected.
        size: u64,
    },
    /// Bytes in memory.
    Bytes(Vec<u8>),
}

impl Content {
    fn size(&self) -> u64 {
        match self {
            Content::Path { size, .. } => *size,
            Content::Bytes(b) => b.len() as u64,
        }
    }

    fn open(&self) -> Result<Box<dyn Read + Send + '_>> {
        Ok(match self {
            Content::Path { path, .. } => Box::new(File::open(path).map_err(Error::io("open", path))?),
            Content::Bytes(b) => Box::new(b.as_slice()),
        })
    }

    /// The whole content of a file of at most 1 MiB, for reading facts from it.
    pub fn read_small(&self) -> Option<Vec<u8>> {
        if self.size() > 1 << 20 {
            return None;
        }
        let mut out = Vec::new();
        self.open().ok()?.read_to_end(&mut out).ok()?;
        Some(out)
    }

    /// Whether the content starts like a compressed stream and is large enough to store as is.
    fn is_compressed(&self) -> Result<bool> {
        if self.size() < STORE_MIN_LEN {
            return Ok(false);
        }
        let mut head = [0u8; 6];
        let mut reader = self.open()?;
        let mut n = 0;
        while n < head.len() {
            match reader.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(self.read_error(e)),
            }
        }
        Ok(COMPRESSED_MAGICS.iter().any(|m| head[..n].starts_with(m)))
    }

    fn read_error(&self, e: std::io::Error) -> Error {
        match self {
            Content::Path { path, .. } => Error::io("read", path)(e),
            Content::Bytes(_) => Error::io("read", "<memory>")(e),
        }
    }

    fn shown(&self) -> PathBuf {
        match self {
            Content::Path { path, .. } => path.clone(),
            Content::Bytes(_) => PathBuf::from("<memory>"),
        }
    }
}

/// What to call the bundle and how to pack it.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Cluster image name.
    pub name: String,
    /// Cluster image version.
    pub version: String,
    /// Target architecture.
    pub arch: Arch,
    /// Kubernetes version, when known.
    pub kubernetes_version: Option<String>,
    /// Container runtime, when known.
    pub cri: Option<String>,
    /// Modification time of every entry (SOURCE_DATE_EPOCH, or 0).
    pub mtime: i64,
    /// zstd level.
    pub level: i32,
    /// Compression threads; 0 means one per core.
    pub jobs: usize,
    /// Set from a signal handler to stop early.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Spec {
    /// A spec with the defaults: unknown Kubernetes version and runtime, mtime 0, zstd level 3,
    /// one compression thread per core, no cancellation.
    pub fn new(name: &str, version: &str, arch: Arch) -> Spec {
        Spec {
            name: name.to_string(),
            version: version.to_string(),
            arch,
            kubernetes_version: None,
            cri: None,
            mtime: 0,
            level: 3,
            jobs: 0,
            cancel: None,
        }
    }

    /// The bundle's file name: `NAME-VERSION-linux-ARCH.run`.
    pub fn file_name(&self) -> String {
        bundle_file_name(&self.name, &self.version, self.arch)
    }
}

/// `NAME-VERSION-linux-ARCH.run`.
pub fn bundle_file_name(name: &str, version: &str, arch: Arch) -> String {
    format!("{name}-{version}-linux-{arch}.run")
}

/// Checks that a name or version can be part of a file name.
pub fn check_name(what: &'static str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && !value.starts_with('.')
        && value.chars().all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
    if ok { Ok(()) } else { Err(Error::BadName { what, value: value.to_string() }) }
}

/// What [`pack`] wrote.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The bundle.
    pub path: PathBuf,
    /// Its length.
    pub size: u64,
    /// SHA-256 of the whole file.
    pub sha256: Digest,
    /// The `.sha256` file beside it.
    pub sha256_path: PathBuf,
    /// The `.minisig` file beside it, when signed.
    pub minisig_path: Option<PathBuf>,
    /// The manifest it holds.
    pub manifest: Manifest,
}

/// Writes a bundle into `out_dir` from a stub and the entries, signed with `key` if given.
pub fn pack(
    stub: &[u8],
    entries: &[PackEntry],
    spec: &Spec,
    key: Option<&SecretKey>,
    out_dir: &Path,
    reporter: &dyn Reporter,
) -> Result<Packed> {
    fs::create_dir_all(out_dir).map_err(Error::io("create", out_dir))?;
    let path = out_dir.join(spec.file_name());
    let mut out = Output::create(&path)?;

    out.write(stub)?;
    let stub_blob = Blob { size: stub.len() as u64, digest: Digest::of(stub) };

    let stored = entries
        .iter()
        .map(|e| match &e.kind {
            PackKind::File { content, .. } => content.is_compressed(),
            _ => Ok(false),
        })
        .collect::<Result<Vec<bool>>>()?;
    let order: Vec<usize> = (0..entries.len())
        .filter(|&i| matches!(entries[i].kind, PackKind::File { .. }) && !stored[i])
        .chain((0..entries.len()).filter(|&i| stored[i]))
        .collect();
    let unpacked_size: u64 = order.iter().map(|&i| file_content(&entries[i]).map_or(0, Content::size)).sum();

    reporter.begin("pack", unpacked_size);
    let mut producer = ChunkProducer::new(entries, &order, &stored, spec.cancel.clone());
    let mut chunks = Vec::new();
    let mut payload_size = 0u64;
    let workers = if spec.jobs > 0 { spec.jobs } else { pipeline::default_workers() };
    pipeline::ordered(
        workers,
        || producer.next_chunk(),
        |(codec, data)| Ok(pack_chunk(codec, data, spec.level)),
        |(chunk, packed, unpacked): (Chunk, Vec<u8>, u64)| {
            out.write(&packed)?;
            payload_size += chunk.size;
            chunks.push(chunk);
            reporter.advance(unpacked);
            Ok(())
        },
    )?;
    reporter.end();
    let digests = producer.digests;

    let manifest_entries = entries
        .iter()
        .enumerate()
        .map(|(i, e)| match &e.kind {
            PackKind::Dir { mode } => Entry::Dir { path: e.path.clone(), mode: Mode(*mode) },
            PackKind::File { mode, content } => Entry::File {
                path: e.path.clone(),
                mode: Mode(*mode),
                size: content.size(),
                digest: digests.get(&i).copied().unwrap_or(Digest([0; 32])),
                stored: stored[i],
            },
            PackKind::Symlink { target } => Entry::Symlink { path: e.path.clone(), target: target.clone() },
            PackKind::Hardlink { target } => Entry::Hardlink { path: e.path.clone(), target: target.clone() },
        })
        .collect();
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: spec.name.clone(),
        version: spec.version.clone(),
        arch: spec.arch,
        kubernetes_version: spec.kubernetes_version.clone(),
        cri: spec.cri.clone(),
        builder: format!("kubeferry {}", env!("CARGO_PKG_VERSION")),
        mtime: spec.mtime,
        owner: Owner { uid: 0, gid: 0 },
        signer: key.map(signer_of),
        stub: stub_blob,
        payload: Payload { size: payload_size, unpacked_size, chunks },
        entries: manifest_entries,
    };
    out.finish_tail(&manifest, key)?;
    out.commit(&spec.file_name(), key, manifest)
}

/// Writes a bundle whose stub and payload are copied from `prefix` and whose tail is made
/// anew for `manifest`, signed with `key`. Used by signing: the output replaces `path`.
pub fn rewrite_tail(
    path: &Path,
    mut prefix: impl Read,
    manifest: Manifest,
    key: &SecretKey,
) -> Result<Packed> {
    let mut out = Output::create(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = prefix.read(&mut buf).map_err(Error::io("read", path))?;
        if n == 0 {
            break;
        }
        out.write(&buf[..n])?;
    }
    out.finish_tail(&manifest, Some(key))?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    out.commit(&file_name, Some(key), manifest)
}

fn file_content(entry: &PackEntry) -> Option<&Content> {
    match &entry.kind {
        PackKind::File { content, .. } => Some(content),
        _ => None,
    }
}

/// How the manifest names a signing key.
pub fn signer_of(key: &SecretKey) -> Signer {
    let public = key.public_key();
    Signer { fingerprint: public.fingerprint().to_string(), key_id: public.key_id_hex() }
}

/// Compresses a chunk, or stores it when compression does not make it smaller.
fn pack_chunk(codec: Codec, data: Vec<u8>, level: i32) -> (Chunk, Vec<u8>, u64) {
    let unpacked = data.len() as u64;
    let packed = match codec {
        Codec::Zstd => match zstd::bulk::compress(&data, level) {
            Ok(z) if z.len() < data.len() => Some(z),
            _ => None,
        },
        Codec::Stored => None,
    };
    let (codec, bytes) = match packed {
        Some(z) => (Codec::Zstd, z),
        None => (Codec::Stored, data),
    };
    let chunk =
        Chunk { codec, size: bytes.len() as u64, unpacked_size: unpacked, digest: Digest::of(&bytes) };
    (chunk, bytes, unpacked)
}

/// Reads the files in payload order and cuts their bytes into chunks, hashing every file as
/// it goes. A chunk never mixes compressible and stored files.
struct ChunkProducer<'a> {
    entries: &'a [PackEntry],
    order: &'a [usize],
    stored: &'a [bool],
    cancel: Option<Arc<AtomicBool>>,
    next: usize,
    current: Option<(usize, Box<dyn Read + Send + 'a>, Sha256, u64)>,
    digests: std::collections::HashMap<usize, Digest>,
}

impl<'a> ChunkProducer<'a> {
    fn new(
        entries: &'a [PackEntry],
        order: &'a [usize],
        stored: &'a [bool],
        cancel: Option<Arc<AtomicBool>>,
    ) -> Self {
        ChunkProducer { entries, order, stored, cancel, next: 0, current: None, digests: Default::default() }
    }

    fn next_chunk(&mut self) -> Result<Option<(Codec, Vec<u8>)>> {
        if self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Interrupted);
        }
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_LEN);
        let mut class: Option<bool> = None;
        loop {
            if self.current.is_none() {
                let Some(&index) = self.order.get(self.next) else { break };
                let is_stored = self.stored[index];
                if class.is_some_and(|c| c != is_stored) {
                    break;
                }
                class = Some(is_stored);
                self.next += 1;
                let Some(content) = file_content(&self.entries[index]) else { continue };
                self.current = Some((index, content.open()?, Sha256::new(), 0));
            }
            if buf.len() == CHUNK_LEN {
                break;
            }
            let Some((index, reader, hasher, read)) = self.current.as_mut() else { continue };
            let content = file_content(&self.entries[*index]).map(|c| (c.size(), c.shown()));
            let (size, shown) = content.unwrap_or_default();
            let start = buf.len();
            let want = (CHUNK_LEN - start).min((size - *read) as usize);
            buf.resize(start + want, 0);
            let mut filled = 0;
            while filled < want {
                match reader.read(&mut buf[start + filled..]) {
                    Ok(0) => return Err(Error::Changed { path: shown }),
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io("read", shown)(e)),
                }
            }
            hasher.update(&buf[start..]);
            *read += want as u64;
            if *read == size {
                let mut probe = [0u8; 1];
                if matches!(reader.read(&mut probe), Ok(n) if n > 0) {
                    return Err(Error::Changed { path: shown });
                }
                if let Some((index, _, hasher, _)) = self.current.take() {
                    self.digests.insert(index, Digest::from_hasher(hasher));
                }
            }
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let codec = if class == Some(true) { Codec::Stored } else { Codec::Zstd };
        Ok(Some((codec, buf)))
    }
}

/// The output file, hashed as it is written: SHA-256 for the `.sha256` file and BLAKE2b-512
/// for the minisign signature. Removed on drop unless committed.
struct Output {
    path: PathBuf,
    partial: PathBuf,
    file: Option<std::io::BufWriter<File>>,
    sha256: Sha256,
    blake2b: FileDigest,
    len: u64,
}

impl Output {
    fn create(path: &Path) -> Result<Output> {
        let partial = partial_path(path);
        let _ = fs::remove_file(&partial);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&partial)
            .map_err(Error::io("create", &partial))?;
        Ok(Output {
            path: path.to_path_buf(),
            partial,
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            sha256: Sha256::new(),
            blake2b: FileDigest::new(),
            len: 0,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(file) = self.file.as_mut() {
            file.write_all(bytes).map_err(Error::io("write", &self.partial))?;
        }
        self.sha256.update(bytes);
        self.blake2b.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Writes the manifest, the signature section and the trailer.
    fn finish_tail(&mut self, manifest: &Manifest, key: Option<&SecretKey>) -> Result<()> {
        let manifest_bytes = manifest.to_bytes();
        let trailer = Trailer::layout(
            manifest.stub.size,
            manifest.payload.size,
            manifest_bytes.len() as u64,
            key.is_some(),
        );
        if trailer.manifest_offset != self.len {
            return Err(Error::io("write", &self.partial)(std::io::Error::other(
                "the payload length differs from the manifest's",
            )));
        }
        let trailer_bytes = trailer.encode();
        self.write(&manifest_bytes)?;
        if let Some(key) = key {
            let section = SignatureSection {
                public_key: *key.public_key().as_bytes(),
                signature: key.sign(&signed_message(&trailer_bytes, &manifest_bytes)),
            };
            self.write(&section.encode())?;
        }
        self.write(&trailer_bytes)
    }

    /// Flushes and syncs the file, renames it into place and writes the `.sha256` and
    /// `.minisig` files beside it.
    fn commit(mut self, file_name: &str, key: Option<&SecretKey>, manifest: Manifest) -> Result<Packed> {
        if let Some(file) = self.file.take() {
            let file = file.into_inner().map_err(|e| Error::io("write", &self.partial)(e.into_error()))?;
            file.sync_all().map_err(Error::io("sync", &self.partial))?;
        }
        let sha256 = Digest::from_hasher(std::mem::take(&mut self.sha256));
        let blake2b = std::mem::take(&mut self.blake2b).finalize();
        let sha256_path = sidecar(&self.path, "sha256");
        write_atomic(&sha256_path, format!("{}  {file_name}\n", sha256.hex()).as_bytes())?;
        let minisig_path = match key {
            Some(key) => {
                let path = sidecar(&self.path, "minisig");
                write_atomic(&path, key.sign_minisig(&blake2b, &trusted_comment(file_name)).as_bytes())?;
                Some(path)
            }
            None => {
                let stale = sidecar(&self.path, "minisig");
                let _ = fs::remove_file(stale);
                None
            }
        };
        fs::rename(&self.partial, &self.path).map_err(Error::io("rename into place", &self.path))?;
        let packed =
            Packed { path: self.path.clone(), size: self.len, sha256, sha256_path, minisig_path, manifest };
        self.partial = PathBuf::new();
        Ok(packed)
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.partial.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

/// The trusted comment of a bundle's minisign signature: deterministic, so that the same input
/// gives the same signature file.
pub fn trusted_comment(file_name: &str) -> String {
    format!("kubeferry bundle {file_name}")
}

/// `FILE.EXT` beside `FILE`.
pub fn sidecar(path: &Path, ext: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    PathBuf::from(name)
}

fn partial_path(path: &Path) -> PathBuf {
    sidecar(path, "partial")
}

/// Writes a small file through a temporary name and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = partial_path(path);
    fs::write(&partial, bytes).map_err(Error::io("write", &partial))?;
    fs::rename(&partial, path).map_err(Error::io("rename into place", path))
}
