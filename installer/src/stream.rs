//! The one streaming pass over a bundle: the stub and every payload chunk are read once,
//! checked against the manifest's digests, and (when extracting) unpacked in parallel and
//! handed in order to a sink, which reads the index alongside; when only verifying, the index
//! is read after the payload. Memory stays bounded: at most [`pipeline::in_flight`] chunks are held.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest as _, Sha256};

use crate::arch::{Arch, ELF_HEADER_PREFIX};
use crate::error::{Error, Result, StubArchError};
use crate::index::Entries;
use crate::manifest::{Chunk, Codec, Digest, Manifest};
use crate::pipeline;
use crate::progress::Reporter;
use crate::reader::Bundle;

/// Bytes read at a time while hashing the stub.
const READ_BUF: usize = 1 << 20;

/// Receives unpacked payload chunks, in order.
pub(crate) trait Sink {
    /// The next chunk's bytes.
    fn accept(&mut self, data: &[u8]) -> Result<()>;
}

/// Options of a streaming pass.
#[derive(Debug, Default, Clone)]
pub struct StreamOptions {
    /// Worker threads; 0 means one per core.
    pub jobs: usize,
    /// Set from a signal handler to stop early.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl StreamOptions {
    fn workers(&self) -> usize {
        if self.jobs > 0 { self.jobs } else { pipeline::default_workers() }
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// Reads and checks the stub, then every chunk; when `sink` is given, unpacks each chunk and
/// feeds it to the sink in order.
pub(crate) fn run(
    bundle: &Bundle,
    manifest: &Manifest,
    sink: Option<&mut dyn Sink>,
    options: &StreamOptions,
    reporter: &dyn Reporter,
) -> Result<()> {
    check_stub(bundle, manifest)?;

    let chunks = &manifest.payload.chunks;
    let unpack = sink.is_some();
    let mut sink = sink;
    let mut index = 0;
    let mut offset = bundle.trailer().payload_offset;
    reporter.begin(if unpack { "extract" } else { "verify" }, manifest.payload.size);
    let outcome = pipeline::ordered(
        options.workers(),
        || {
            let Some(chunk) = chunks.get(index) else { return Ok(None) };
            if options.cancelled() {
                return Err(Error::Interrupted);
            }
            let mut data = vec![0u8; chunk.size as usize];
            bundle.file().read_exact_at(&mut data, offset).map_err(Error::io("read", bundle.path()))?;
            offset += chunk.size;
            index += 1;
            Ok(Some((index - 1, data)))
        },
        |(index, data)| check_chunk(index, &chunks[index], data, unpack),
        |(size, data)| {
            if let Some(sink) = sink.as_deref_mut() {
                sink.accept(&data)?;
            }
            reporter.advance(size);
            Ok(())
        },
    );
    reporter.end();
    outcome?;
    if !unpack {
        // Reading the index checks every block's digest and every entry.
        for entry in Entries::new(bundle, manifest) {
            entry?;
        }
    }
    Ok(())
}

/// Checks that the stub is an executable for the manifest's architecture (so a stub swapped
/// for another architecture's is named as such), then hashes it.
fn check_stub(bundle: &Bundle, manifest: &Manifest) -> Result<()> {
    let len = bundle.trailer().stub_len;
    let (file, path) = (bundle.file(), bundle.path());
    let mut head = [0u8; ELF_HEADER_PREFIX];
    let head_len = (len as usize).min(ELF_HEADER_PREFIX);
    file.read_exact_at(&mut head[..head_len], 0).map_err(Error::io("read", path))?;
    match Arch::of_elf(&head[..head_len]) {
        Ok(arch) if arch == manifest.arch => {}
        Ok(other) => {
            return Err(Error::StubArch { arch: manifest.arch, source: StubArchError::Other(other) });
        }
        Err(e) => return Err(Error::StubArch { arch: manifest.arch, source: e.into() }),
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut offset = 0u64;
    while offset < len {
        let n = (len - offset).min(READ_BUF as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset).map_err(Error::io("read", path))?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    let found = Digest::from_hasher(hasher);
    if found != manifest.stub.digest {
        return Err(Error::Digest {
            what: "the stub".into(),
            expected: manifest.stub.digest.to_string(),
            found: found.to_string(),
        });
    }
    Ok(())
}

/// A worker's job: checks a chunk's digest, then unpacks it when asked. Returns the packed
/// size (for progress) and the unpacked bytes.
fn check_chunk(index: usize, chunk: &Chunk, data: Vec<u8>, unpack: bool) -> Result<(u64, Vec<u8>)> {
    let what = format!("payload chunk {index}");
    if !unpack {
        check_digest(&what, chunk, &data)?;
        return Ok((chunk.size, Vec::new()));
    }
    Ok((chunk.size, open_chunk(&what, chunk, data)?))
}

fn check_digest(what: &str, chunk: &Chunk, data: &[u8]) -> Result<()> {
    let found = Digest::of(data);
    if found != chunk.digest {
        return Err(Error::Digest {
            what: what.to_string(),
            expected: chunk.digest.to_string(),
            found: found.to_string(),
        });
    }
    Ok(())
}

/// Checks a packed chunk or block against its digest, then unpacks it to exactly its recorded
/// length: a chunk cannot unpack to more than the manifest says.
pub(crate) fn open_chunk(what: &str, chunk: &Chunk, data: Vec<u8>) -> Result<Vec<u8>> {
    check_digest(what, chunk, &data)?;
    let unpacked = match chunk.codec {
        Codec::Stored => data,
        Codec::Zstd => zstd::bulk::decompress(&data, chunk.unpacked_size as usize)
            .map_err(|source| Error::Unpack { what: what.to_string(), source })?,
    };
    if unpacked.len() as u64 != chunk.unpacked_size {
        return Err(Error::Unpack {
            what: what.to_string(),
            source: std::io::Error::other(format!(
                "it unpacks to {} bytes, the manifest says {}",
                unpacked.len(),
                chunk.unpacked_size
            )),
        });
    }
    Ok(unpacked)
}
