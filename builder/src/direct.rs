//! Writing a bundle past the page cache.
//!
//! A bundle is written once, front to back, and read again on another host. Written through
//! the page cache, every byte is first copied into a newly allocated cache page and written
//! back later; on the machines measured for docs/benchmarks.md that costs the kernel about
//! 2.5 CPU-seconds per GB, more than the bundle's three digests together. [`DirectFile`]
//! writes whole aligned blocks with `O_DIRECT` instead, from its own buffer straight to the
//! disk, and writes ordinarily where the file system refuses direct I/O.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// The alignment direct I/O asks of buffers, file offsets and lengths: a multiple of every
/// common logical block size.
const ALIGN: usize = 4096;

/// The bytes of one direct write.
const BLOCK: usize = 1 << 20;

/// A file written sequentially from its start, with `O_DIRECT` when its file system allows
/// it. Only [`DirectFile::finish`] writes the last, partial block: bytes written before are
/// in the file only once a whole block is full.
pub struct DirectFile {
    file: File,
    /// `BLOCK + ALIGN` bytes, of which the block is the aligned slice at `start`.
    buf: Vec<u8>,
    start: usize,
    /// The bytes of the block that are filled.
    filled: usize,
    /// Where the block goes in the file.
    offset: u64,
    direct: bool,
}

impl std::fmt::Debug for DirectFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectFile").field("offset", &self.offset).field("direct", &self.direct).finish()
    }
}

impl DirectFile {
    /// Writes `file`, open for writing and empty, directly if its file system allows it.
    pub fn new(file: File) -> DirectFile {
        let direct = set_direct(&file, true).is_ok();
        DirectFile::with(file, direct)
    }

    /// Writes `file` through the page cache.
    pub fn buffered(file: File) -> DirectFile {
        DirectFile::with(file, false)
    }

    fn with(file: File, direct: bool) -> DirectFile {
        let buf = vec![0u8; BLOCK + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        DirectFile { file, buf, start, filled: 0, offset: 0, direct }
    }

    /// Whether writes go past the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The file, for calls that neither read nor write it.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(BLOCK - self.filled);
            let at = self.start + self.filled;
            self.buf[at..at + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == BLOCK {
                self.write_front(BLOCK)?;
            }
        }
        Ok(())
    }

    /// Writes the last bytes and returns the file, no longer in direct mode, for its sync.
    pub fn finish(mut self) -> io::Result<File> {
        let whole = self.filled / ALIGN * ALIGN;
        if self.direct && whole > 0 {
            self.write_front(whole)?;
        }
        if self.direct {
            set_direct(&self.file, false)?;
            self.direct = false;
        }
        if self.filled > 0 {
            self.write_front(self.filled)?;
        }
        Ok(self.file)
    }

    /// Writes the block's first `len` bytes (a multiple of [`ALIGN`] when direct) and moves
    /// the rest to its front.
    fn write_front(&mut self, len: usize) -> io::Result<()> {
        let bytes = &self.buf[self.start..self.start + len];
        match self.file.write_all_at(bytes, self.offset) {
            Ok(()) => {}
            // A file system that took O_DIRECT may still refuse a write (an alignment it
            // wants larger): the same bytes go to the same place through the page cache.
            Err(e) if self.direct && e.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32) => {
                set_direct(&self.file, false)?;
                self.direct = false;
                self.file.write_all_at(bytes, self.offset)?;
            }
            Err(e) => return Err(e),
        }
        self.offset += len as u64;
        self.buf.copy_within(self.start + len..self.start + self.filled, self.start);
        self.filled -= len;
        Ok(())
    }
}

/// Turns `O_DIRECT` on or off for `file`; the kernel refuses it with `EINVAL` where the
/// file system cannot do direct I/O.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(file, FcntlArg::F_GETFL)?);
    let flags = if on { flags | OFlag::O_DIRECT } else { flags - OFlag::O_DIRECT };
    fcntl(file, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `pieces` of these lengths (each piece's bytes counting on from the last) and
    /// returns the file's bytes and whether it was written directly.
    fn written(pieces: &[usize], direct: bool) -> (Vec<u8>, Vec<u8>, bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let mut out = if direct { DirectFile::new(file) } else { DirectFile::buffered(file) };
        let was_direct = out.is_direct();
        let mut expected = Vec::new();
        for &len in pieces {
            let piece: Vec<u8> =
                (expected.len()..expected.len() + len).map(|i| (i * 7 % 251) as u8).collect();
            out.write_all(&piece).unwrap();
            expected.extend_from_slice(&piece);
        }
        out.finish().unwrap();
        (std::fs::read(&path).unwrap(), expected, was_direct)
    }

    #[test]
    fn every_length_is_written_whole_and_in_order_directly_or_not() {
        let cases: &[&[usize]] = &[
            &[],
            &[1],
            &[ALIGN - 1],
            &[ALIGN],
            &[ALIGN + 1],
            &[BLOCK - 1, 1],
            &[BLOCK],
            &[BLOCK, 1],
            &[3 * BLOCK + 17],
            &[5, BLOCK - 3, 2 * ALIGN, 7, BLOCK + ALIGN + 1, 0, 4000],
        ];
        for direct in [true, false] {
            for pieces in cases {
                let (found, expected, was_direct) = written(pieces, direct);
                // The test directory's file system (ext4 in CI) takes direct I/O.
                assert_eq!(was_direct, direct, "{pieces:?}");
                assert_eq!(found.len(), expected.len(), "{pieces:?} direct {direct}");
                assert!(found == expected, "{pieces:?} direct {direct}: the bytes differ");
            }
        }
    }

    #[test]
    fn direct_mode_is_off_once_finished() {
        let dir = tempfile::tempdir().unwrap();
        let out = DirectFile::new(File::create(dir.path().join("out")).unwrap());
        assert!(out.is_direct());
        let file = out.finish().unwrap();
        let flags = OFlag::from_bits_retain(fcntl(&file, FcntlArg::F_GETFL).unwrap());
        assert!(!flags.contains(OFlag::O_DIRECT));
    }
}
