//! The fixed-size trailer at the very end of every bundle.
//!
//! A bundle is read from its end, the way a ZIP file is: the last [`TRAILER_LEN`] bytes hold the
//! offsets and lengths of every region, so nothing is ever found by scanning for magic bytes.
//!
//! ```text
//! offset  size  field
//!      0     4  format version (u32, little-endian)
//!      4     4  flags: bit 0 = signed
//!      8     8  stub length (the stub starts at offset 0)
//!     16     8  payload offset
//!     24     8  payload length
//!     32     8  index offset
//!     40     8  index length
//!     48     8  manifest offset
//!     56     8  manifest length
//!     64     8  signature offset
//!     72     8  signature length (0 when unsigned, SIGNATURE_LEN when signed)
//!     80     8  total file length, trailer included
//!     88    24  reserved, zero
//!    112    16  magic "kubeferry bundle"
//! ```

/// Length of the trailer in bytes.
pub const TRAILER_LEN: usize = 128;
/// The last sixteen bytes of every bundle.
pub const MAGIC: [u8; 16] = *b"kubeferry bundle";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Flag bit: the bundle carries a signature section.
pub const FLAG_SIGNED: u32 = 1;
/// Length of the signature section: the signer's ed25519 public key, then the signature.
pub const SIGNATURE_LEN: u64 = 32 + 64;
/// The largest manifest a reader accepts, so that a hostile trailer cannot make it allocate
/// without bound.
pub const MAX_MANIFEST_LEN: u64 = 256 << 20;

const RESERVED: std::ops::Range<usize> = 88..112;

/// The decoded trailer: where each region of the bundle lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Format version.
    pub version: u32,
    /// Flag bits ([`FLAG_SIGNED`]).
    pub flags: u32,
    /// Length of the stub executable at offset 0.
    pub stub_len: u64,
    /// Where the payload starts.
    pub payload_offset: u64,
    /// Length of the compressed payload.
    pub payload_len: u64,
    /// Where the index starts.
    pub index_offset: u64,
    /// Length of the index.
    pub index_len: u64,
    /// Where the manifest starts.
    pub manifest_offset: u64,
    /// Length of the manifest.
    pub manifest_len: u64,
    /// Where the signature section starts.
    pub signature_offset: u64,
    /// Length of the signature section.
    pub signature_len: u64,
    /// Length of the whole file.
    pub file_len: u64,
}

/// Why the last bytes of a file are not a trailer kubeferry can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrailerError {
    /// The magic is not where it must be.
    #[error("no kubeferry trailer at the end of the file")]
    NoMagic,
    /// A version this reader does not know.
    #[error("format version {found} is not supported (this kubeferry reads version {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version the trailer records.
        found: u32,
    },
    /// Offsets that do not describe one contiguous file, unknown flags, non-zero reserved bytes.
    #[error("the trailer is inconsistent: {0}")]
    Inconsistent(String),
}

impl Trailer {
    /// Lays out a bundle whose regions follow each other with no gaps.
    pub fn layout(
        stub_len: u64,
        payload_len: u64,
        index_len: u64,
        manifest_len: u64,
        signed: bool,
    ) -> Trailer {
        let payload_offset = stub_len;
        let index_offset = payload_offset + payload_len;
        let manifest_offset = index_offset + index_len;
        let signature_offset = manifest_offset + manifest_len;
        let signature_len = if signed { SIGNATURE_LEN } else { 0 };
        Trailer {
            version: FORMAT_VERSION,
            flags: if signed { FLAG_SIGNED } else { 0 },
            stub_len,
            payload_offset,
            payload_len,
            index_offset,
            index_len,
            manifest_offset,
            manifest_len,
            signature_offset,
            signature_len,
            file_len: signature_offset + signature_len + TRAILER_LEN as u64,
        }
    }

    /// Whether the bundle carries a signature section.
    pub fn is_signed(&self) -> bool {
        self.flags & FLAG_SIGNED != 0
    }

    /// Encodes the trailer.
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut out = [0u8; TRAILER_LEN];
        out[0..4].copy_from_slice(&self.version.to_le_bytes());
        out[4..8].copy_from_slice(&self.flags.to_le_bytes());
        let fields = [
            self.stub_len,
            self.payload_offset,
            self.payload_len,
            self.index_offset,
            self.index_len,
            self.manifest_offset,
            self.manifest_len,
            self.signature_offset,
            self.signature_len,
            self.file_len,
        ];
        for (i, value) in fields.iter().enumerate() {
            let at = 8 + i * 8;
            out[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        out[TRAILER_LEN - MAGIC.len()..].copy_from_slice(&MAGIC);
        out
    }

    /// Decodes and checks a trailer: magic, version, flags, reserved bytes, and that the
    /// regions are contiguous and end exactly at the trailer.
    pub fn decode(bytes: &[u8; TRAILER_LEN]) -> Result<Trailer, TrailerError> {
        if bytes[TRAILER_LEN - MAGIC.len()..] != MAGIC {
            return Err(TrailerError::NoMagic);
        }
        let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let version = u32_at(0);
        if version != FORMAT_VERSION {
            return Err(TrailerError::UnsupportedVersion { found: version });
        }
        let t = Trailer {
            version,
            flags: u32_at(4),
            stub_len: u64_at(8),
            payload_offset: u64_at(16),
            payload_len: u64_at(24),
            index_offset: u64_at(32),
            index_len: u64_at(40),
            manifest_offset: u64_at(48),
            manifest_len: u64_at(56),
            signature_offset: u64_at(64),
            signature_len: u64_at(72),
            file_len: u64_at(80),
        };
        let bad = |why: &str| Err(TrailerError::Inconsistent(why.to_string()));
        if t.flags & !FLAG_SIGNED != 0 {
            return bad("unknown flag bits are set");
        }
        if bytes[RESERVED].iter().any(|b| *b != 0) {
            return bad("reserved bytes are not zero");
        }
        let expected_sig_len = if t.is_signed() { SIGNATURE_LEN } else { 0 };
        if t.signature_len != expected_sig_len {
            return bad("the signature length does not match the signed flag");
        }
        if t.manifest_len == 0 || t.manifest_len > MAX_MANIFEST_LEN {
            return bad("the manifest length is out of range");
        }
        let end = t
            .stub_len
            .checked_add(t.payload_len)
            .and_then(|n| n.checked_add(t.index_len))
            .and_then(|n| n.checked_add(t.manifest_len))
            .and_then(|n| n.checked_add(t.signature_len))
            .and_then(|n| n.checked_add(TRAILER_LEN as u64));
        let laid_out = end
            .map(|_| Trailer::layout(t.stub_len, t.payload_len, t.index_len, t.manifest_len, t.is_signed()));
        if laid_out != Some(t) {
            return bad("the regions are not contiguous");
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for signed in [false, true] {
            let t = Trailer::layout(1000, 5000, 70, 300, signed);
            assert_eq!(Trailer::decode(&t.encode()), Ok(t));
            assert_eq!(t.file_len, 1000 + 5000 + 70 + 300 + t.signature_len + 128);
        }
    }

    #[test]
    fn rejects_each_kind_of_damage() {
        let good = Trailer::layout(10, 20, 5, 30, true).encode();
        let mut b = good;
        b[127] ^= 1;
        assert_eq!(Trailer::decode(&b), Err(TrailerError::NoMagic));
        let mut b = good;
        b[0] = 2;
        assert_eq!(
            Trailer::decode(&b).unwrap_err().to_string(),
            "format version 2 is not supported (this kubeferry reads version 1)"
        );
        let mut b = good;
        b[4] = 3;
        assert_eq!(
            Trailer::decode(&b).unwrap_err().to_string(),
            "the trailer is inconsistent: unknown flag bits are set"
        );
        let mut b = good;
        b[100] = 1;
        assert_eq!(
            Trailer::decode(&b).unwrap_err().to_string(),
            "the trailer is inconsistent: reserved bytes are not zero"
        );
        let mut b = good;
        b[24] ^= 1; // payload length
        assert_eq!(
            Trailer::decode(&b).unwrap_err().to_string(),
            "the trailer is inconsistent: the regions are not contiguous"
        );
        let mut b = good;
        b[4] = 0; // claims unsigned but keeps a signature length
        assert_eq!(
            Trailer::decode(&b).unwrap_err().to_string(),
            "the trailer is inconsistent: the signature length does not match the signed flag"
        );
        let mut b = good;
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Trailer::decode(&b), Err(TrailerError::Inconsistent(_))));
    }
}
