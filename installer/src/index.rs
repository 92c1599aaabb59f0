//! The index region: one JSON record per entry of the rootfs, one per line, in tree order,
//! cut into blocks of at most [`BLOCK_LEN`] bytes that are compressed and digested one by one.
//!
//! The manifest lists the blocks' digests, so a reader checks each block before it parses a
//! byte of it, holds one block at a time, and checks the entries as they come
//! ([`Validator`]): memory does not grow with the number of files. Regular files appear in the
//! index in the order their bytes follow each other in the payload.

use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use crate::error::{Error, Result};
use crate::manifest::{Chunk, Codec, Digest, Entry, Index, Manifest, ManifestError, Validator};
use crate::reader::Bundle;
use crate::stream::open_chunk;

/// The most unpacked bytes a writer puts in one index block.
pub const BLOCK_LEN: usize = 1 << 20;

/// Writes index records into blocks as entries come, each block compressed as one zstd frame
/// (or stored when that is not smaller) and written to `out`.
#[derive(Debug)]
pub struct IndexWriter<W: Write> {
    out: W,
    level: i32,
    buf: Vec<u8>,
    index: Index,
}

impl<W: Write> IndexWriter<W> {
    /// A writer whose blocks go to `out`, compressed at zstd `level`.
    pub fn new(out: W, level: i32) -> Self {
        IndexWriter {
            out,
            level,
            buf: Vec::new(),
            index: Index { entries: 0, size: 0, unpacked_size: 0, blocks: Vec::new() },
        }
    }

    /// Appends the next entry's record.
    pub fn push(&mut self, entry: &Entry) -> io::Result<()> {
        let line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        if !self.buf.is_empty() && self.buf.len() + line.len() + 1 > BLOCK_LEN {
            self.flush_block()?;
        }
        self.buf.extend_from_slice(&line);
        self.buf.push(b'\n');
        self.index.entries += 1;
        Ok(())
    }

    fn flush_block(&mut self) -> io::Result<()> {
        let data = std::mem::take(&mut self.buf);
        let (codec, bytes) = match zstd::bulk::compress(&data, self.level) {
            Ok(z) if z.len() < data.len() => (Codec::Zstd, z),
            _ => (Codec::Stored, data.clone()),
        };
        self.out.write_all(&bytes)?;
        self.index.size += bytes.len() as u64;
        self.index.unpacked_size += data.len() as u64;
        self.index.blocks.push(Chunk {
            codec,
            size: bytes.len() as u64,
            unpacked_size: data.len() as u64,
            digest: Digest::of(&bytes),
        });
        self.buf = data;
        self.buf.clear();
        Ok(())
    }

    /// Writes the last block and returns the output and the index's description.
    pub fn finish(mut self) -> io::Result<(W, Index)> {
        if !self.buf.is_empty() {
            self.flush_block()?;
        }
        Ok((self.out, self.index))
    }
}

/// The entries of an authenticated bundle, read block by block from its index: each block's
/// digest is checked before it is parsed and each entry is validated before it is returned.
/// After the last entry the totals are checked against the manifest. The first error ends
/// the iteration.
#[derive(Debug)]
pub struct Entries<'a> {
    bundle: &'a Bundle,
    manifest: &'a Manifest,
    next_block: usize,
    offset: u64,
    block: Vec<u8>,
    pos: usize,
    validator: Validator,
    done: bool,
}

impl<'a> Entries<'a> {
    /// Reads the index of `bundle`, whose manifest has been authenticated.
    pub fn new(bundle: &'a Bundle, manifest: &'a Manifest) -> Self {
        Entries {
            bundle,
            manifest,
            next_block: 0,
            offset: bundle.trailer().index_offset,
            block: Vec::new(),
            pos: 0,
            validator: Validator::new(),
            done: false,
        }
    }

    fn next_entry(&mut self) -> Result<Option<Entry>> {
        while self.pos >= self.block.len() {
            let Some(chunk) = self.manifest.index.blocks.get(self.next_block) else {
                self.validator.finish(self.manifest).map_err(Error::Manifest)?;
                return Ok(None);
            };
            let mut data = vec![0u8; chunk.size as usize];
            let bundle = self.bundle;
            bundle.file().read_exact_at(&mut data, self.offset).map_err(Error::io("read", bundle.path()))?;
            self.block = open_chunk(&format!("index block {}", self.next_block), chunk, data)?;
            self.offset += chunk.size;
            self.next_block += 1;
            self.pos = 0;
        }
        let rest = &self.block[self.pos..];
        let block = self.next_block - 1;
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(Error::Manifest(ManifestError::Inconsistent(format!(
                "index block {block} ends inside a record"
            ))));
        };
        let entry: Entry = serde_json::from_slice(&rest[..end]).map_err(|e| {
            Error::Manifest(ManifestError::Inconsistent(format!(
                "index block {block} holds a record that is not an entry: {e}"
            )))
        })?;
        self.pos += end + 1;
        self.validator.check(&entry).map_err(Error::Manifest)?;
        Ok(Some(entry))
    }
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_entry() {
            Ok(Some(entry)) => Some(Ok(entry)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Mode;

    #[test]
    fn blocks_hold_whole_records_and_add_up() {
        let mut w = IndexWriter::new(Vec::new(), 3);
        let long = "d/".repeat(1000);
        let mut n = 0;
        while w.index.blocks.len() < 2 {
            let path = format!("{long}{n:08}");
            w.push(&Entry::File { path, mode: Mode(0o644), size: n, linked: false }).unwrap();
            n += 1;
        }
        let (out, index) = w.finish().unwrap();
        assert_eq!(index.entries, n);
        assert_eq!(index.blocks.len(), 3);
        assert_eq!(index.size, out.len() as u64);
        let mut at = 0usize;
        let mut lines = 0;
        for block in &index.blocks {
            assert!(block.unpacked_size as usize <= BLOCK_LEN);
            let bytes = out[at..at + block.size as usize].to_vec();
            at += block.size as usize;
            let data = open_chunk("index block", block, bytes).unwrap();
            assert_eq!(data.last(), Some(&b'\n'));
            lines += data.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        assert_eq!(lines, n);
    }
}
