//! Packing: the stub, then the payload in independently compressed chunks, then the index,
//! the manifest, the signature and the trailer, written in one pass into `NAME.run.partial`
//! and renamed into place when complete.
//!
//! Entries come one at a time, in tree order, and are read once: the payload holds the
//! content of every regular file in that order, and the index their records. A chunk holds
//! files of one [`Kind`]: already-compressed files (layer blobs, tarballs) are stored as they
//! are instead of paying for a second compression, machine code is compressed with settings
//! that suit it, and everything else at the chosen level. The index is written to an
//! anonymous temporary file beside the output while the payload is written, then appended:
//! memory does not grow with the number of files. Chunk boundaries depend only on the
//! input, never on the number of threads, so the same input gives the same bytes.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kubeferry_installer::arch::Arch;
use kubeferry_installer::index::IndexWriter;
use kubeferry_installer::keys::{FileDigest, SecretKey};
use kubeferry_installer::manifest::{
    Blob, Chunk, Codec, Digest, Entry, ImageConfig, ImageRecord, MANIFEST_FORMAT, Manifest, Mode, Owner,
    Payload, Signer,
};
use kubeferry_installer::pipeline;
use kubeferry_installer::progress::Reporter;
use kubeferry_installer::reader::{SignatureSection, signed_message};
use kubeferry_installer::trailer::Trailer;
use sha2::{Digest as _, Sha256};

use crate::direct::DirectFile;
use crate::error::{Error, Result};

/// Unpacked length of a payload chunk.
pub const CHUNK_LEN: usize = 2 << 20;
/// Files smaller than this are always compressed with their neighbours, whatever they hold.
const KIND_MIN_LEN: u64 = 64 << 10;
/// Leading bytes of formats that are compressed already: gzip, zstd, xz, bzip2.
const COMPRESSED_MAGICS: [&[u8]; 4] = [&[0x1f, 0x8b], &[0x28, 0xb5, 0x2f, 0xfd], b"\xfd7zXZ\0", b"BZh"];
/// Leading bytes of an ELF file: executables and shared libraries.
const ELF_MAGIC: &[u8] = b"\x7fELF";
/// The zstd level a build uses unless told otherwise; at it, machine code gets
/// [`code_parameters`].
pub const DEFAULT_LEVEL: i32 = 3;

/// What a file holds, as far as packing cares: a chunk holds files of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Compressed already: stored as it is.
    Compressed,
    /// ELF executables and libraries.
    Code,
    /// Anything else, and every file under [`KIND_MIN_LEN`].
    Other,
}

/// zstd's settings for machine code at the default level: the `fast` strategy with level 3's
/// hash table and window and matches from 5 bytes. On ELF files it takes about 20% less CPU
/// than level 3's `dfast` for output about 1.7% larger (docs/benchmarks.md); on text the
/// same settings lose 6%, so text keeps level 3.
fn code_parameters() -> [zstd::zstd_safe::CParameter; 4] {
    use zstd::zstd_safe::{CParameter, Strategy};
    [
        CParameter::Strategy(Strategy::ZSTD_fast),
        CParameter::WindowLog(21),
        CParameter::HashLog(17),
        CParameter::MinMatch(5),
    ]
}

/// One entry to pack. [`crate::collect`] makes these from a rootfs, in tree order, and checks
/// them; packing writes what it is given, so tests can build bundles a reader must refuse.
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
        /// Whether later hard links may name it (it has more than one name on disk).
        linked: bool,
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
    /// Its length in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Content::Path { size, .. } => *size,
            Content::Bytes(b) => b.len() as u64,
        }
    }

    /// The whole content of a file of at most 1 MiB, for reading facts from it.
    pub fn read_small(&self) -> Option<Vec<u8>> {
        match self {
            Content::Path { size, .. } if *size > 1 << 20 => None,
            Content::Path { path, .. } => fs::read(path).ok(),
            Content::Bytes(b) => (b.len() <= 1 << 20).then(|| b.clone()),
        }
    }

    fn into_reader(self) -> Result<Box<dyn Read + Send>> {
        Ok(match self {
            Content::Path { path, .. } => Box::new(File::open(&path).map_err(Error::io("open", &path))?),
            Content::Bytes(b) => Box::new(std::io::Cursor::new(b)),
        })
    }

    /// What the content holds, from its first bytes.
    fn kind(&self) -> Result<Kind> {
        if self.size() < KIND_MIN_LEN {
            return Ok(Kind::Other);
        }
        let mut head = [0u8; 6];
        let n = match self {
            Content::Path { path, .. } => {
                use std::os::unix::fs::FileExt;
                let file = File::open(path).map_err(Error::io("open", path))?;
                file.read_at(&mut head, 0).map_err(Error::io("read", path))?
            }
            Content::Bytes(b) => {
                let n = b.len().min(head.len());
                head[..n].copy_from_slice(&b[..n]);
                n
            }
        };
        Ok(if COMPRESSED_MAGICS.iter().any(|m| head[..n].starts_with(m)) {
            Kind::Compressed
        } else if head[..n].starts_with(ELF_MAGIC) {
            Kind::Code
        } else {
            Kind::Other
        })
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
    /// What the Kubefile says about the image.
    pub image: ImageConfig,
    /// The container images the bundle's registry/ holds.
    pub images: Vec<ImageRecord>,
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
            image: ImageConfig::default(),
            images: Vec::new(),
            mtime: 0,
            level: DEFAULT_LEVEL,
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

/// Writes a bundle into `out_dir` from a stub and the entries, which must come in tree order
/// and whose content holds `unpacked_size` bytes in all (for progress), signed with `key`
/// if given.
pub fn pack(
    stub: &[u8],
    entries: impl Iterator<Item = Result<PackEntry>> + Send,
    unpacked_size: u64,
    spec: &Spec,
    key: Option<&SecretKey>,
    out_dir: &Path,
    reporter: &dyn Reporter,
) -> Result<Packed> {
    pack_payload(stub, entries, unpacked_size, spec, None, out_dir, reporter)?.seal(spec.images.clone(), key)
}

/// A bundle whose stub, payload and index are written to its partial file: what remains is
/// the manifest, which lists the container images, so that the images can be found while the
/// payload is packed. Dropped unsealed, the partial file is removed.
pub struct Unsealed {
    out: Output,
    spec: Spec,
    stub: Blob,
    payload: Payload,
    index: kubeferry_installer::manifest::Index,
}

impl std::fmt::Debug for Unsealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsealed").field("file", &self.out.partial).field("spec", &self.spec).finish()
    }
}

/// The first part of [`pack`]: the stub, the payload and the index, without the manifest.
/// Packing stops with [`Error::Interrupted`] when `stop` (or the spec's `cancel`) is set.
pub fn pack_payload(
    stub: &[u8],
    entries: impl Iterator<Item = Result<PackEntry>> + Send,
    unpacked_size: u64,
    spec: &Spec,
    stop: Option<&AtomicBool>,
    out_dir: &Path,
    reporter: &dyn Reporter,
) -> Result<Unsealed> {
    fs::create_dir_all(out_dir).map_err(Error::io("create", out_dir))?;
    let path = out_dir.join(spec.file_name());
    let mut out = Output::create(&path)?;
    let buffers = out.buffers.clone();

    out.write(stub)?;
    let stub_blob = Blob { size: stub.len() as u64, digest: Digest::of(stub) };

    let index_file =
        tempfile::tempfile_in(out_dir).map_err(Error::io("create a temporary file in", out_dir))?;
    reporter.begin("pack", unpacked_size);
    let mut producer = ChunkProducer {
        entries,
        index: IndexWriter::new(std::io::BufWriter::new(index_file), spec.level),
        cancel: spec.cancel.as_deref(),
        stop,
        current: None,
        pending: None,
        buffers: buffers.clone(),
    };
    let mut chunks = Vec::new();
    let (mut payload_size, mut payload_unpacked) = (0u64, 0u64);
    let workers = if spec.jobs > 0 { spec.jobs } else { pipeline::default_workers() };
    pipeline::ordered(
        workers,
        || producer.next_chunk(),
        |(kind, data)| Ok(pack_chunk(kind, data, spec.level, &buffers)),
        |(chunk, packed, unpacked): (Chunk, Vec<u8>, u64)| {
            out.write_owned(packed)?;
            payload_size += chunk.size;
            payload_unpacked += unpacked;
            chunks.push(chunk);
            reporter.advance(unpacked);
            Ok(())
        },
    )?;
    reporter.end();

    let shown_tmp = || out_dir.join("<index>");
    let (index_out, index) = producer.index.finish().map_err(|e| Error::io("write", shown_tmp())(e))?;
    let mut index_file =
        index_out.into_inner().map_err(|e| Error::io("write", shown_tmp())(e.into_error()))?;
    index_file.rewind().map_err(Error::io("read", shown_tmp()))?;
    out.copy_from(&mut index_file, &shown_tmp())?;
    Ok(Unsealed {
        out,
        spec: spec.clone(),
        stub: stub_blob,
        payload: Payload { size: payload_size, unpacked_size: payload_unpacked, chunks },
        index,
    })
}

impl Unsealed {
    /// Writes the manifest, listing `images`, signs it with `key` if given, and renames the
    /// bundle into place.
    pub fn seal(mut self, images: Vec<ImageRecord>, key: Option<&SecretKey>) -> Result<Packed> {
        let spec = self.spec;
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: spec.name.clone(),
            version: spec.version.clone(),
            arch: spec.arch,
            kubernetes_version: spec.kubernetes_version.clone(),
            cri: spec.cri.clone(),
            image: spec.image.clone(),
            images,
            builder: format!("kubeferry {}", env!("CARGO_PKG_VERSION")),
            mtime: spec.mtime,
            owner: Owner { uid: 0, gid: 0 },
            signer: key.map(signer_of),
            stub: self.stub,
            payload: self.payload,
            index: self.index,
        };
        self.out.finish_tail(&manifest, key)?;
        self.out.commit(&spec.file_name(), key, manifest)
    }
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
    out.copy_from(&mut prefix, path)?;
    out.finish_tail(&manifest, Some(key))?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    out.commit(&file_name, Some(key), manifest)
}

/// How the manifest names a signing key.
pub fn signer_of(key: &SecretKey) -> Signer {
    let public = key.public_key();
    Signer { fingerprint: public.fingerprint().to_string(), key_id: public.key_id_hex() }
}

/// Compresses a chunk, or stores it when it is compressed already or compression does not
/// make it smaller. The buffer it does not return goes back to `buffers`.
fn pack_chunk(kind: Kind, data: Vec<u8>, level: i32, buffers: &Buffers) -> (Chunk, Vec<u8>, u64) {
    let unpacked = data.len() as u64;
    type Kept = Option<((Kind, i32), zstd::bulk::Compressor<'static>)>;
    thread_local! {
        /// Each worker's compressor, kept from chunk to chunk and set anew when the settings
        /// change: its memory is allocated once.
        static COMPRESSOR: std::cell::RefCell<Kept> = const { std::cell::RefCell::new(None) };
    }
    let settings = match kind {
        Kind::Compressed => None,
        Kind::Code if level == DEFAULT_LEVEL => Some((Kind::Code, level)),
        Kind::Code | Kind::Other => Some((Kind::Other, level)),
    };
    let packed = settings.and_then(|settings| {
        COMPRESSOR.with_borrow_mut(|kept| {
            if kept.as_ref().is_none_or(|(s, _)| *s != settings) {
                let compressor = match kept.take() {
                    Some((_, compressor)) => Some(compressor),
                    None => zstd::bulk::Compressor::new(level).ok(),
                };
                *kept = compressor.and_then(|c| configure(c, settings)).map(|c| (settings, c));
            }
            let (_, compressor) = kept.as_mut()?;
            let mut z = buffers.take();
            match compressor.compress_to_buffer(&data, &mut z) {
                Ok(n) if n < data.len() => Some(z),
                _ => {
                    buffers.give(z);
                    None
                }
            }
        })
    });
    let (codec, bytes) = match packed {
        Some(z) => {
            buffers.give(data);
            (Codec::Zstd, z)
        }
        None => (Codec::Stored, data),
    };
    let chunk =
        Chunk { codec, size: bytes.len() as u64, unpacked_size: unpacked, digest: Digest::of(&bytes) };
    (chunk, bytes, unpacked)
}

/// Sets `compressor` to `level`, with [`code_parameters`] for [`Kind::Code`].
fn configure(
    mut compressor: zstd::bulk::Compressor<'static>,
    (kind, level): (Kind, i32),
) -> Option<zstd::bulk::Compressor<'static>> {
    compressor.context_mut().reset(zstd::zstd_safe::ResetDirective::Parameters).ok()?;
    compressor.set_compression_level(level).ok()?;
    if kind == Kind::Code {
        for parameter in code_parameters() {
            compressor.set_parameter(parameter).ok()?;
        }
    }
    Some(compressor)
}

/// The record the index holds for an entry.
fn index_entry(entry: &PackEntry) -> Entry {
    let path = entry.path.clone();
    match &entry.kind {
        PackKind::Dir { mode } => Entry::Dir { path, mode: Mode(*mode) },
        PackKind::File { mode, linked, content } => {
            Entry::File { path, mode: Mode(*mode), size: content.size(), linked: *linked }
        }
        PackKind::Symlink { target } => Entry::Symlink { path, target: target.clone() },
        PackKind::Hardlink { target } => Entry::Hardlink { path, target: target.clone() },
    }
}

/// A file being read into chunks.
struct Reading {
    reader: Box<dyn Read + Send>,
    size: u64,
    read: u64,
    shown: PathBuf,
    kind: Kind,
}

/// Takes the entries in order, writes each one's index record, and cuts the files' bytes
/// into chunks. A chunk never mixes files of different [`Kind`]s.
struct ChunkProducer<'a, I, W: Write> {
    entries: I,
    index: IndexWriter<W>,
    cancel: Option<&'a AtomicBool>,
    stop: Option<&'a AtomicBool>,
    current: Option<Reading>,
    /// A file that starts the next chunk because it is not of the current chunk's kind: its
    /// record, its content and its kind.
    pending: Option<(Entry, Option<Content>, Kind)>,
    buffers: Buffers,
}

impl<I: Iterator<Item = Result<PackEntry>>, W: Write> ChunkProducer<'_, I, W> {
    fn next_chunk(&mut self) -> Result<Option<(Kind, Vec<u8>)>> {
        if [self.cancel, self.stop].into_iter().flatten().any(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Interrupted);
        }
        let mut buf = self.buffers.take();
        let mut class = self.current.as_ref().map(|r| r.kind);
        loop {
            if self.current.is_none() {
                let (record, content, kind) = match self.pending.take() {
                    Some(pending) => pending,
                    None => match self.entries.next() {
                        None => break,
                        Some(entry) => {
                            let entry = entry?;
                            let record = index_entry(&entry);
                            match entry.kind {
                                PackKind::File { content, .. } if content.size() > 0 => {
                                    let kind = content.kind()?;
                                    (record, Some(content), kind)
                                }
                                _ => (record, None, Kind::Other),
                            }
                        }
                    },
                };
                if let Some(content) = content {
                    if !buf.is_empty() && class != Some(kind) {
                        self.pending = Some((record, Some(content), kind));
                        break;
                    }
                    class = Some(kind);
                    self.current = Some(Reading {
                        size: content.size(),
                        shown: content.shown(),
                        reader: content.into_reader()?,
                        read: 0,
                        kind,
                    });
                }
                self.index.push(&record).map_err(|e| Error::io("write", "<index>")(e))?;
                continue;
            }
            if buf.len() == CHUNK_LEN {
                break;
            }
            let Some(reading) = self.current.as_mut() else { continue };
            let start = buf.len();
            let want = (CHUNK_LEN - start).min((reading.size - reading.read) as usize);
            buf.resize(start + want, 0);
            let mut filled = 0;
            while filled < want {
                match reading.reader.read(&mut buf[start + filled..]) {
                    Ok(0) => return Err(Error::Changed { path: reading.shown.clone() }),
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io("read", reading.shown.clone())(e)),
                }
            }
            reading.read += want as u64;
            if reading.read == reading.size {
                let mut probe = [0u8; 1];
                if matches!(reading.reader.read(&mut probe), Ok(n) if n > 0) {
                    return Err(Error::Changed { path: reading.shown.clone() });
                }
                self.current = None;
            }
        }
        if buf.is_empty() {
            self.buffers.give(buf);
            return Ok(None);
        }
        Ok(Some((class.unwrap_or(Kind::Other), buf)))
    }
}

/// The buffers of chunks, taken again rather than freed: every one has room for a chunk or
/// its compressed form at worst, so that a build allocates a few of them, at most as many as
/// are in flight at once, whatever the number of chunks. The producer
/// takes one for each chunk; a worker takes one for the compressed bytes and gives back the
/// one it does not return; the hashing thread gives back what was written.
#[derive(Clone, Debug, Default)]
struct Buffers {
    free: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// How many were ever made.
    made: Arc<std::sync::atomic::AtomicUsize>,
}

impl Buffers {
    /// The capacity of every buffer.
    fn capacity() -> usize {
        zstd::zstd_safe::compress_bound(CHUNK_LEN)
    }

    /// An empty buffer.
    fn take(&self) -> Vec<u8> {
        match self.free.lock().ok().and_then(|mut free| free.pop()) {
            Some(buffer) => buffer,
            None => {
                self.made.fetch_add(1, Ordering::Relaxed);
                Vec::with_capacity(Buffers::capacity())
            }
        }
    }

    /// Keeps `buffer` for a later [`Buffers::take`]; one of another size is freed.
    fn give(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() != Buffers::capacity() {
            return;
        }
        buffer.clear();
        if let Ok(mut free) = self.free.lock() {
            free.push(buffer);
        }
    }
}

/// The output file, hashed as it is written ([`Hasher`]). Removed on drop unless committed.
struct Output {
    path: PathBuf,
    partial: PathBuf,
    file: Option<DirectFile>,
    hasher: Option<Hasher>,
    len: u64,
    flusher: Option<Flusher>,
    /// Where the hashing thread gives back the buffers it is done with.
    buffers: Buffers,
}

/// The whole output's digests, SHA-256 for the `.sha256` file and BLAKE2b-512 for the minisign
/// signature, computed on a thread of their own: the thread that writes hands each buffer over
/// and goes on, so the hashing (about 2 CPU-seconds per GB) overlaps the compression and the
/// writing instead of holding up the ordered pipeline's consumer.
struct Hasher {
    buffers: std::sync::mpsc::SyncSender<Vec<u8>>,
    thread: std::thread::JoinHandle<(Sha256, FileDigest)>,
}

/// Buffers waiting for the hashing thread: each holds up to a chunk ([`CHUNK_LEN`]), so this
/// bounds the memory it adds.
const HASH_QUEUE: usize = 2;

impl Hasher {
    fn start(done: Buffers) -> Hasher {
        let (buffers, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASH_QUEUE);
        let thread = std::thread::spawn(move || {
            let (mut sha256, mut blake2b) = (Sha256::new(), FileDigest::new());
            for bytes in rx {
                sha256.update(&bytes);
                blake2b.update(&bytes);
                done.give(bytes);
            }
            (sha256, blake2b)
        });
        Hasher { buffers, thread }
    }

    fn update(&self, bytes: Vec<u8>) {
        // The thread only stops when this side hangs up: a send cannot fail before.
        let _ = self.buffers.send(bytes);
    }

    fn finish(self) -> (Digest, [u8; 64]) {
        drop(self.buffers);
        let (sha256, blake2b) = self.thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (Digest::from_hasher(sha256), blake2b.finalize())
    }
}

/// Every [`FLUSH_EVERY`] bytes written, asks a thread of its own to `fdatasync` the output, so
/// that the data goes to disk while the next chunks are compressed and the final sync before
/// the rename has little left to do.
struct Flusher {
    ticks: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<()>,
    since: u64,
}

/// How much output is written between two background syncs.
const FLUSH_EVERY: u64 = 128 << 20;

impl Flusher {
    fn start(file: &File) -> Option<Flusher> {
        let clone = file.try_clone().ok()?;
        // One tick may wait: a sync still running when the next is due is not queued twice.
        let (ticks, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::spawn(move || {
            while rx.recv().is_ok() {
                // An error here shows again, and is reported, at the final sync.
                let _ = clone.sync_data();
            }
        });
        Some(Flusher { ticks, thread, since: 0 })
    }

    /// Counts `n` bytes written; ticks when enough are.
    fn wrote(&mut self, n: u64) -> bool {
        self.since += n;
        self.since >= FLUSH_EVERY
    }

    fn tick(&mut self) {
        self.since = 0;
        let _ = self.ticks.try_send(());
    }

    fn stop(self) {
        drop(self.ticks);
        let _ = self.thread.join();
    }
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
        let file = DirectFile::new(file);
        let buffers = Buffers::default();
        // Direct writes are on the disk once written; ordinary ones are synced as they go.
        let flusher = if file.is_direct() { None } else { Flusher::start(file.file()) };
        Ok(Output {
            path: path.to_path_buf(),
            partial,
            file: Some(file),
            hasher: Some(Hasher::start(buffers.clone())),
            len: 0,
            flusher,
            buffers,
        })
    }

    /// Appends everything `source` holds.
    fn copy_from(&mut self, source: &mut impl Read, shown: &Path) -> Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = source.read(&mut buf).map_err(Error::io("read", shown))?;
            if n == 0 {
                return Ok(());
            }
            self.write(&buf[..n])?;
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_owned(bytes.to_vec())
    }

    /// Writes `bytes`, then hands them to the hashing thread.
    fn write_owned(&mut self, bytes: Vec<u8>) -> Result<()> {
        if let Some(file) = self.file.as_mut() {
            file.write_all(&bytes).map_err(Error::io("write", &self.partial))?;
            if let Some(flusher) = self.flusher.as_mut()
                && flusher.wrote(bytes.len() as u64)
            {
                flusher.tick();
            }
        }
        self.len += bytes.len() as u64;
        if let Some(hasher) = &self.hasher {
            hasher.update(bytes);
        }
        Ok(())
    }

    /// Writes the manifest, the signature section and the trailer.
    fn finish_tail(&mut self, manifest: &Manifest, key: Option<&SecretKey>) -> Result<()> {
        let manifest_bytes = manifest.to_bytes();
        let trailer = Trailer::layout(
            manifest.stub.size,
            manifest.payload.size,
            manifest.index.size,
            manifest_bytes.len() as u64,
            key.is_some(),
        );
        if trailer.manifest_offset != self.len {
            return Err(Error::io("write", &self.partial)(std::io::Error::other(
                "the payload and index lengths differ from the manifest's",
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
            let file = file.finish().map_err(Error::io("write", &self.partial))?;
            if let Some(flusher) = self.flusher.take() {
                flusher.stop();
            }
            file.sync_all().map_err(Error::io("sync", &self.partial))?;
        }
        let (sha256, blake2b) = match self.hasher.take() {
            Some(hasher) => hasher.finish(),
            None => unreachable!("an output is committed once"),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_given_back_are_taken_again_and_others_are_freed() {
        let buffers = Buffers::default();
        let mut first = buffers.take();
        first.extend_from_slice(b"chunk");
        let at = first.as_ptr();
        buffers.give(first);
        let again = buffers.take();
        assert!(again.is_empty(), "a buffer is taken empty");
        assert_eq!(again.as_ptr(), at, "the buffer given back is the one taken");
        let second = buffers.take();
        assert_eq!(buffers.made.load(Ordering::Relaxed), 2);
        buffers.give(Vec::with_capacity(10));
        assert_eq!(
            buffers.free.lock().map(|f| f.len()).unwrap_or(9),
            0,
            "a buffer of another size is not kept"
        );
        buffers.give(again);
        buffers.give(second);
        let _ = (buffers.take(), buffers.take());
        assert_eq!(buffers.made.load(Ordering::Relaxed), 2, "no buffer is made while one is free");
    }
}
