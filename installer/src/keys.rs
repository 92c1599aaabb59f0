//! Ed25519 keys and detached signatures in the minisign file formats.
//!
//! kubeferry signs bundles with plain minisign keys, so that a bundle can be
//! checked with the `minisign` tool alone and a key made by `minisign -G -W`
//! can sign bundles. Three text files are involved:
//!
//! - the public key (`.pub`): an `untrusted comment:` line, then the base64 of
//!   `"Ed"` || key id (8 bytes) || ed25519 public key (32 bytes);
//! - the unencrypted secret key: an `untrusted comment:` line, then the base64
//!   of `"Ed"` || KDF algorithm (`[0, 0]`: none) || `"B2"` || KDF salt (32) ||
//!   KDF opslimit (u64 LE) || KDF memlimit (u64 LE) || key id (8) || seed (32)
//!   || public key (32) || BLAKE2b-256 checksum (32) of `"Ed"` || key id ||
//!   seed || public key;
//! - the detached signature (`.minisig`), in minisign's prehashed mode: an
//!   `untrusted comment:` line, the base64 of `"ED"` || key id || ed25519
//!   signature of the BLAKE2b-512 digest of the file, a `trusted comment:`
//!   line, and the base64 of the "global" ed25519 signature of the first
//!   signature followed by the trusted comment text.
//!
//! Password-protected (scrypt) secret keys are not supported: kubeferry runs
//! unattended, so it reads unencrypted keys protected by file permissions.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// Length in bytes of a minisign key id.
pub const KEY_ID_LEN: usize = 8;

/// Length in bytes of an ed25519 public key.
const PUBLIC_KEY_LEN: usize = 32;
/// Length in bytes of an ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// Signature algorithm tag of keys (and of legacy, non-prehashed signatures).
const ALG_ED25519: [u8; 2] = *b"Ed";
/// Signature algorithm tag of prehashed (BLAKE2b-512) signatures.
const ALG_ED25519_PREHASHED: [u8; 2] = *b"ED";
/// KDF algorithm tag of an unencrypted secret key.
const KDF_NONE: [u8; 2] = [0, 0];
/// KDF algorithm tag of a password-protected (scrypt) secret key.
const KDF_SCRYPT: [u8; 2] = *b"Sc";
/// Checksum algorithm tag of secret keys (BLAKE2b-256).
const CHECKSUM_BLAKE2B: [u8; 2] = *b"B2";

/// Length of the decoded public key line: algorithm, key id, key.
const PUBLIC_FILE_LEN: usize = 2 + KEY_ID_LEN + PUBLIC_KEY_LEN;
/// Length of the decoded signature line: algorithm, key id, signature.
const SIGNATURE_LINE_LEN: usize = 2 + KEY_ID_LEN + SIGNATURE_LEN;

// Offsets of the fields of a decoded secret key.
const SK_SIG_ALG: usize = 0;
const SK_KDF_ALG: usize = 2;
const SK_CHECKSUM_ALG: usize = 4;
const SK_KDF_SALT: usize = 6;
const SK_KDF_OPSLIMIT: usize = SK_KDF_SALT + 32;
const SK_KDF_MEMLIMIT: usize = SK_KDF_OPSLIMIT + 8;
const SK_KEY_ID: usize = SK_KDF_MEMLIMIT + 8;
const SK_SEED: usize = SK_KEY_ID + KEY_ID_LEN;
const SK_PUBLIC: usize = SK_SEED + 32;
const SK_CHECKSUM: usize = SK_PUBLIC + PUBLIC_KEY_LEN;
/// Length of a decoded secret key.
const SECRET_FILE_LEN: usize = SK_CHECKSUM + 32;

const UNTRUSTED_PREFIX: &str = "untrusted comment:";
const TRUSTED_PREFIX: &str = "trusted comment: ";

/// Key files larger than this are refused before they are parsed: real ones
/// are a few hundred bytes.
const MAX_KEY_FILE_LEN: u64 = 16 * 1024;

/// Buffer size for hashing files.
const HASH_BUFFER_LEN: usize = 1024 * 1024;

/// The fingerprint kubeferry shows for a key: `SHA256:` followed by the
/// base64 (standard alphabet, no padding) of the SHA-256 of the 32 public key
/// bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    const PREFIX: &'static str = "SHA256:";

    /// The fingerprint of an ed25519 public key.
    pub fn of(public_key: &[u8; 32]) -> Self {
        let digest = Sha256::digest(public_key);
        Self(format!("{}{}", Self::PREFIX, STANDARD_NO_PAD.encode(digest)))
    }

    /// Parses a fingerprint as [`Fingerprint::of`] prints it, ignoring
    /// surrounding whitespace; anything else is
    /// [`KeyError::BadFingerprint`].
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let valid = text.strip_prefix(Self::PREFIX).is_some_and(|encoded| {
            // The engine rejects padding and non-zero trailing bits, so a
            // successful decode means `text` is exactly what `of` prints.
            STANDARD_NO_PAD.decode(encoded).is_ok_and(|digest| digest.len() == 32)
        });
        if valid { Ok(Self(text.to_owned())) } else { Err(KeyError::BadFingerprint(text.to_owned())) }
    }

    /// The fingerprint text, `SHA256:...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A minisign public key: an ed25519 public key and its 8-byte key id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key_id: [u8; KEY_ID_LEN],
    key: VerifyingKey,
}

impl PublicKey {
    /// A public key from its key id and ed25519 key bytes. Bytes that are not
    /// a valid curve point, or a weak (small-order) point, are refused.
    pub fn from_parts(key_id: [u8; 8], public_key: [u8; 32]) -> Result<Self, KeyError> {
        let malformed = |reason: &str| KeyError::Malformed { what: "public key", reason: reason.to_owned() };
        let key =
            VerifyingKey::from_bytes(&public_key).map_err(|_| malformed("not a valid ed25519 point"))?;
        if key.is_weak() {
            return Err(malformed("weak ed25519 key (small-order point)"));
        }
        Ok(Self { key_id, key })
    }

    /// Parses the text of a minisign `.pub` file, or the bare base64 line
    /// alone (as `minisign -P` takes it).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        const WHAT: &str = "public key";
        let line = key_line(text, WHAT)?;
        let bytes = decode_base64(line, WHAT)?;
        let bytes: [u8; PUBLIC_FILE_LEN] = exact_len(&bytes, WHAT)?;
        let (alg, rest) = bytes.split_at(2);
        if alg != ALG_ED25519 {
            return Err(unsupported_signature_algorithm(WHAT, alg));
        }
        let (key_id, key) = rest.split_at(KEY_ID_LEN);
        Self::from_parts(array(key_id), array(key))
    }

    /// Reads a minisign `.pub` file.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let mut file = File::open(path).map_err(|source| KeyError::io("open", path, source))?;
        let bytes = read_limited(&mut file, path, "public key")?;
        std::str::from_utf8(&bytes)
            .map_err(|_| not_text("public key"))
            .and_then(Self::parse)
            .map_err(|error| error.in_file(path))
    }

    /// The text of a minisign `.pub` file for this key, ending in a newline.
    pub fn to_file_string(&self) -> String {
        format!("{UNTRUSTED_PREFIX} minisign public key {}\n{}\n", self.key_id_hex(), self.to_base64())
    }

    /// The base64 line of the `.pub` file alone, as `minisign -P` takes it.
    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::with_capacity(PUBLIC_FILE_LEN);
        bytes.extend_from_slice(&ALG_ED25519);
        bytes.extend_from_slice(&self.key_id);
        bytes.extend_from_slice(self.key.as_bytes());
        STANDARD.encode(bytes)
    }

    /// The 8-byte key id.
    pub fn key_id(&self) -> [u8; 8] {
        self.key_id
    }

    /// The key id as minisign prints it: the key id bytes read as a
    /// little-endian integer, in upper-case hex without leading zeros (so
    /// usually, but not always, 16 digits).
    pub fn key_id_hex(&self) -> String {
        key_id_hex(&self.key_id)
    }

    /// Parses a key id as [`PublicKey::key_id_hex`] prints it.
    pub fn parse_key_id_hex(text: &str) -> Option<[u8; KEY_ID_LEN]> {
        if text.is_empty() || text.len() > 16 {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(u64::to_le_bytes)
    }

    /// The 32 bytes of the ed25519 public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// The fingerprint kubeferry shows for this key.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.as_bytes())
    }

    /// Checks an ed25519 signature of `message` (strict verification:
    /// non-canonical and small-order encodings are refused).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), KeyError> {
        self.key.verify_strict(message, &Signature::from_bytes(signature)).map_err(|_| KeyError::BadSignature)
    }

    /// Verifies the text of a `.minisig` file against the BLAKE2b-512 digest
    /// of the signed file (see [`FileDigest`]) and returns its trusted
    /// comment.
    ///
    /// Only prehashed signatures (`ED`) are accepted; legacy ones (`Ed`, made
    /// by `minisign -S -l`) are [`KeyError::LegacySignature`]. A signature by
    /// another key is [`KeyError::WrongKey`]; a bad signature of the file is
    /// [`KeyError::BadSignature`] and a bad signature of the trusted comment
    /// [`KeyError::BadCommentSignature`].
    pub fn verify_minisig(&self, file_digest: &[u8; 64], minisig_text: &str) -> Result<String, KeyError> {
        let minisig = Minisig::parse(minisig_text)?;
        if minisig.key_id != self.key_id {
            return Err(KeyError::WrongKey {
                expected: self.key_id_hex(),
                found: key_id_hex(&minisig.key_id),
            });
        }
        self.verify(file_digest, &minisig.signature)?;
        let signed_comment = global_message(&minisig.signature, minisig.trusted_comment);
        self.verify(&signed_comment, &minisig.global_signature).map_err(|_| KeyError::BadCommentSignature)?;
        Ok(minisig.trusted_comment.to_owned())
    }
}

/// A minisign secret key: an ed25519 signing key and its 8-byte key id. The
/// key material is zeroed when the value is dropped.
#[derive(Debug)]
pub struct SecretKey {
    key_id: [u8; KEY_ID_LEN],
    key: SigningKey,
}

impl SecretKey {
    /// A new random key: the 32-byte seed and the 8-byte key id come from the
    /// operating system's random number generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        let mut key_id = [0u8; KEY_ID_LEN];
        getrandom::fill(&mut seed).and_then(|()| getrandom::fill(&mut key_id)).map_err(|error| {
            KeyError::Random {
                source: match error.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::other(error.to_string()),
                },
            }
        })?;
        let key = SigningKey::from_bytes(&seed);
        wipe(&mut seed);
        Ok(Self { key_id, key })
    }

    /// Parses the text of an unencrypted minisign secret key file (as
    /// `minisign -G -W` writes it).
    ///
    /// A password-protected key is [`KeyError::Encrypted`] and a checksum
    /// mismatch is [`KeyError::Checksum`]. An all-zero checksum is accepted:
    /// it is what minisign 0.11 writes for unencrypted keys. The public key
    /// stored in the file must be the one derived from the seed.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        const WHAT: &str = "secret key";
        let line = key_line(text, WHAT)?;
        let mut bytes = decode_base64(line, WHAT)?;
        let parsed = Self::from_file_bytes(&bytes);
        wipe(&mut bytes);
        parsed
    }

    fn from_file_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        const WHAT: &str = "secret key";
        let malformed = |reason: &str| KeyError::Malformed { what: WHAT, reason: reason.to_owned() };
        if bytes.len() != SECRET_FILE_LEN {
            return Err(wrong_len(WHAT, SECRET_FILE_LEN, bytes.len()));
        }
        let sig_alg = &bytes[SK_SIG_ALG..SK_KDF_ALG];
        if sig_alg != ALG_ED25519 {
            return Err(unsupported_signature_algorithm(WHAT, sig_alg));
        }
        match [bytes[SK_KDF_ALG], bytes[SK_KDF_ALG + 1]] {
            KDF_NONE => {}
            KDF_SCRYPT => return Err(KeyError::Encrypted),
            other => {
                let alg = other.escape_ascii();
                return Err(malformed(&format!("unsupported key derivation algorithm '{alg}'")));
            }
        }
        let checksum_alg = &bytes[SK_CHECKSUM_ALG..SK_KDF_SALT];
        if checksum_alg != CHECKSUM_BLAKE2B {
            let alg = checksum_alg.escape_ascii();
            return Err(malformed(&format!("unsupported checksum algorithm '{alg}'")));
        }
        // The KDF salt and limits mean nothing for an unencrypted key.
        let key_id: [u8; KEY_ID_LEN] = array(&bytes[SK_KEY_ID..SK_SEED]);
        let keypair = &bytes[SK_SEED..SK_CHECKSUM];
        let stored_checksum = &bytes[SK_CHECKSUM..SECRET_FILE_LEN];
        let zero_checksum = stored_checksum.iter().all(|&byte| byte == 0);
        if !zero_checksum && stored_checksum != secret_checksum(&key_id, keypair).as_slice() {
            return Err(KeyError::Checksum);
        }
        let mut seed: [u8; 32] = array(&bytes[SK_SEED..SK_PUBLIC]);
        let key = SigningKey::from_bytes(&seed);
        wipe(&mut seed);
        if key.verifying_key().as_bytes() != &bytes[SK_PUBLIC..SK_CHECKSUM] {
            return Err(malformed("the public key does not match the secret seed"));
        }
        Ok(Self { key_id, key })
    }

    /// Reads an unencrypted minisign secret key file.
    ///
    /// A file that group or others can read or write (`mode & 0o077 != 0`) is
    /// refused with [`KeyError::Permissions`] before its contents are read.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let mut file = File::open(path).map_err(|source| KeyError::io("open", path, source))?;
        let mode = file.metadata().map_err(|source| KeyError::io("read", path, source))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: path.to_path_buf(), mode: mode & 0o7777 });
        }
        let mut bytes = read_limited(&mut file, path, "secret key")?;
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|_| not_text("secret key"))
            .and_then(Self::parse)
            .map_err(|error| error.in_file(path));
        wipe(&mut bytes);
        parsed
    }

    /// The text of an unencrypted minisign secret key file for this key,
    /// ending in a newline. The checksum is the BLAKE2b-256 one and the KDF
    /// salt and limits are zero, as `minisign -G -W` writes them.
    pub fn to_file_string(&self) -> String {
        let mut keypair = self.key.to_keypair_bytes();
        let mut bytes = Vec::with_capacity(SECRET_FILE_LEN);
        bytes.extend_from_slice(&ALG_ED25519);
        bytes.extend_from_slice(&KDF_NONE);
        bytes.extend_from_slice(&CHECKSUM_BLAKE2B);
        bytes.resize(SK_KEY_ID, 0); // salt, opslimit and memlimit
        bytes.extend_from_slice(&self.key_id);
        bytes.extend_from_slice(&keypair);
        bytes.extend_from_slice(&secret_checksum(&self.key_id, &keypair));
        let text =
            format!("{UNTRUSTED_PREFIX} minisign unencrypted secret key\n{}\n", STANDARD.encode(&bytes));
        wipe(&mut keypair);
        wipe(&mut bytes);
        text
    }

    /// Writes the key to a new file, created with mode 0600. An existing file
    /// is never overwritten: it is [`KeyError::Exists`].
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let mut file =
            OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|source| {
                match source.kind() {
                    io::ErrorKind::AlreadyExists => KeyError::Exists { path: path.to_path_buf() },
                    _ => KeyError::io("create", path, source),
                }
            })?;
        let mut text = self.to_file_string().into_bytes();
        // The mode given at creation is filtered by the umask; make it exact.
        let written = file
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .and_then(|()| file.write_all(&text))
            .and_then(|()| file.sync_all());
        wipe(&mut text);
        written.map_err(|source| {
            // Do not leave a partial key behind; the write error is the one
            // worth reporting.
            let _ = std::fs::remove_file(path);
            KeyError::io("write", path, source)
        })
    }

    /// The public half of this key, with the same key id.
    pub fn public_key(&self) -> PublicKey {
        PublicKey { key_id: self.key_id, key: self.key.verifying_key() }
    }

    /// The ed25519 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// The text of a `.minisig` file (prehashed mode) for a file whose
    /// BLAKE2b-512 digest is `file_digest`, with the given trusted comment.
    ///
    /// The trusted comment is one line: any `'\r'` or `'\n'` in it is replaced
    /// by a space, and that is the text signed and written.
    pub fn sign_minisig(&self, file_digest: &[u8; 64], trusted_comment: &str) -> String {
        let trusted_comment = trusted_comment.replace(['\r', '\n'], " ");
        let signature = self.sign(file_digest);
        let global_signature = self.sign(&global_message(&signature, &trusted_comment));
        let mut signature_line = Vec::with_capacity(SIGNATURE_LINE_LEN);
        signature_line.extend_from_slice(&ALG_ED25519_PREHASHED);
        signature_line.extend_from_slice(&self.key_id);
        signature_line.extend_from_slice(&signature);
        format!(
            "{UNTRUSTED_PREFIX} signature from minisign secret key\n{}\n{TRUSTED_PREFIX}{trusted_comment}\n{}\n",
            STANDARD.encode(signature_line),
            STANDARD.encode(global_signature)
        )
    }
}

/// Streaming BLAKE2b-512 of a whole file, the digest minisign signs in its
/// prehashed mode.
/// (`blake2b_simd`: the SIMD implementation hashes about 1 GB/s here, a third faster than
/// the portable one; the build hashes its whole output with it.)
#[derive(Clone, Debug)]
pub struct FileDigest(blake2b_simd::State);

impl Default for FileDigest {
    fn default() -> Self {
        FileDigest(blake2b_simd::State::new())
    }
}

impl FileDigest {
    /// An empty digest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next bytes of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of all the bytes added.
    pub fn finalize(self) -> [u8; 64] {
        *self.0.finalize().as_array()
    }

    /// The digest of the file at `path`, read in 1 MiB pieces.
    pub fn of_file(path: &Path) -> Result<[u8; 64], KeyError> {
        let mut file = File::open(path).map_err(|source| KeyError::io("open", path, source))?;
        let mut digest = Self::new();
        let mut buffer = vec![0u8; HASH_BUFFER_LEN];
        loop {
            match file.read(&mut buffer) {
                Ok(0) => return Ok(digest.finalize()),
                Ok(len) => digest.update(&buffer[..len]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(KeyError::io("read", path, source)),
            }
        }
    }
}

/// What can go wrong with keys and signatures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file could not be opened, read, created or written.
    #[error("cannot {action} '{}'", path.display())]
    Io {
        /// What was being done: "open", "read", "create" or "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The contents of a key file were unusable; the cause says why.
    #[error("cannot use key file '{}'", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why its contents were refused.
        #[source]
        source: Box<KeyError>,
    },
    /// A public key, secret key or signature line is not valid base64.
    #[error("malformed {what}: invalid base64")]
    Base64 {
        /// "public key", "secret key" or "signature".
        what: &'static str,
        /// The decoding error.
        #[source]
        source: base64::DecodeError,
    },
    /// A public key, secret key or signature does not have the expected
    /// structure.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// "public key", "secret key" or "signature".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The secret key is protected by a password.
    #[error("the secret key is encrypted with a password")]
    Encrypted,
    /// The checksum stored in the secret key does not match the key.
    #[error("the secret key checksum does not match the key")]
    Checksum,
    /// A secret key file that group or others can read or write.
    #[error("secret key file '{}' is accessible by group or others (mode {mode:04o})", path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file that was to be created already exists.
    #[error("key file '{}' already exists", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Text that is not a key fingerprint as kubeferry prints it.
    #[error("invalid key fingerprint '{0}'")]
    BadFingerprint(String),
    /// A signature made by another key than the one expected.
    #[error("the signature was made by key {found}, not by key {expected}")]
    WrongKey {
        /// Key id (as minisign prints it) of the key used to verify.
        expected: String,
        /// Key id of the key that made the signature.
        found: String,
    },
    /// A legacy minisign signature (`Ed`, not prehashed).
    #[error("legacy (non-prehashed) minisign signatures are not supported")]
    LegacySignature,
    /// The signature does not match the data.
    #[error("signature verification failed")]
    BadSignature,
    /// The signature of the trusted comment does not match it.
    #[error("trusted comment signature verification failed")]
    BadCommentSignature,
    /// The operating system's random number generator failed.
    #[error("cannot get random bytes from the operating system")]
    Random {
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl KeyError {
    /// A line telling the user what to do, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::File { source, .. } => source.hint(),
            Self::Permissions { path, .. } => Some(format!("run: chmod 600 '{}'", path.display())),
            Self::Encrypted => Some(
                "kubeferry reads unencrypted minisign keys: create one with 'kubeferry keygen' or 'minisign -G -W'"
                    .to_owned(),
            ),
            Self::Checksum => Some("the key file is damaged: restore it from a backup".to_owned()),
            Self::Exists { path } => Some(format!(
                "choose another path, or move '{}' away first: key files are never overwritten",
                path.display()
            )),
            Self::BadFingerprint(_) => Some(
                "a fingerprint is 'SHA256:' followed by 43 base64 characters, as kubeferry prints it"
                    .to_owned(),
            ),
            Self::WrongKey { found, .. } => Some(format!(
                "verify with the public key whose id is {found}, if you trust it"
            )),
            Self::LegacySignature => {
                Some("sign the file again without minisign's -l option".to_owned())
            }
            Self::Io { .. }
            | Self::Base64 { .. }
            | Self::Malformed { .. }
            | Self::BadSignature
            | Self::BadCommentSignature
            | Self::Random { .. } => None,
        }
    }

    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io { action, path: path.to_path_buf(), source }
    }

    /// This error, about the contents of the file at `path`.
    fn in_file(self, path: &Path) -> Self {
        Self::File { path: path.to_path_buf(), source: Box::new(self) }
    }
}

/// The parts of a `.minisig` file.
struct Minisig<'a> {
    key_id: [u8; KEY_ID_LEN],
    signature: [u8; SIGNATURE_LEN],
    trusted_comment: &'a str,
    global_signature: [u8; SIGNATURE_LEN],
}

impl<'a> Minisig<'a> {
    fn parse(text: &'a str) -> Result<Self, KeyError> {
        const WHAT: &str = "signature";
        let malformed = |reason: String| KeyError::Malformed { what: WHAT, reason };
        // Lines end in "\n" or "\r\n"; the trusted comment is kept exactly,
        // spaces included, as it is signed.
        let mut lines: Vec<&str> =
            text.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line)).collect();
        while lines.last().is_some_and(|line| line.trim().is_empty()) {
            lines.pop();
        }
        let [untrusted, signature_line, trusted, global_line] = lines[..] else {
            return Err(malformed(format!("expected 4 lines, found {}", lines.len())));
        };
        if !untrusted.starts_with(UNTRUSTED_PREFIX) {
            return Err(malformed(format!("the first line does not start with '{UNTRUSTED_PREFIX}'")));
        }
        let Some(trusted_comment) = trusted.strip_prefix(TRUSTED_PREFIX) else {
            return Err(malformed(format!("the third line does not start with '{TRUSTED_PREFIX}'")));
        };
        let signature_bytes = decode_base64(signature_line, WHAT)?;
        let signature_bytes: [u8; SIGNATURE_LINE_LEN] = exact_len(&signature_bytes, WHAT)?;
        match [signature_bytes[0], signature_bytes[1]] {
            ALG_ED25519_PREHASHED => {}
            ALG_ED25519 => return Err(KeyError::LegacySignature),
            other => return Err(unsupported_signature_algorithm(WHAT, &other)),
        }
        let (key_id, signature) = signature_bytes[2..].split_at(KEY_ID_LEN);
        let global_signature = decode_base64(global_line, WHAT)?;
        let global_signature: [u8; SIGNATURE_LEN] =
            <[u8; SIGNATURE_LEN]>::try_from(global_signature.as_slice()).map_err(|_| {
                malformed(format!(
                    "trusted comment signature: expected {SIGNATURE_LEN} bytes, found {}",
                    global_signature.len()
                ))
            })?;
        Ok(Self { key_id: array(key_id), signature: array(signature), trusted_comment, global_signature })
    }
}

/// What the global signature of a `.minisig` file signs: the signature of the
/// file followed by the trusted comment text.
fn global_message(signature: &[u8; SIGNATURE_LEN], trusted_comment: &str) -> Vec<u8> {
    [signature.as_slice(), trusted_comment.as_bytes()].concat()
}

/// The BLAKE2b-256 checksum of a secret key: of the signature algorithm, the
/// key id and the 64-byte keypair (seed, then public key).
fn secret_checksum(key_id: &[u8; KEY_ID_LEN], keypair: &[u8]) -> [u8; 32] {
    let hash = blake2b_simd::Params::new()
        .hash_length(32)
        .to_state()
        .update(&ALG_ED25519)
        .update(key_id)
        .update(keypair)
        .finalize();
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.as_bytes());
    out
}

/// minisign prints key ids with `printf("%" PRIX64)`: no zero padding.
fn key_id_hex(key_id: &[u8; KEY_ID_LEN]) -> String {
    format!("{:X}", u64::from_le_bytes(*key_id))
}

/// The base64 line of a key file: the line after the `untrusted comment:`
/// line, or the only line of `text`. Blank lines are ignored.
fn key_line<'a>(text: &'a str, what: &'static str) -> Result<&'a str, KeyError> {
    let malformed = |reason: &str| KeyError::Malformed { what, reason: reason.to_owned() };
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    match lines[..] {
        [] => Err(malformed("empty")),
        [comment] if comment.starts_with(UNTRUSTED_PREFIX) => Err(malformed("no key after the comment line")),
        [line] => Ok(line),
        [comment, line] if comment.starts_with(UNTRUSTED_PREFIX) => Ok(line),
        [comment, ..] if comment.starts_with(UNTRUSTED_PREFIX) => {
            Err(malformed("unexpected lines after the key"))
        }
        _ => Err(malformed(&format!("the first line does not start with '{UNTRUSTED_PREFIX}'"))),
    }
}

fn decode_base64(line: &str, what: &'static str) -> Result<Vec<u8>, KeyError> {
    STANDARD.decode(line.trim()).map_err(|source| KeyError::Base64 { what, source })
}

fn exact_len<const N: usize>(bytes: &[u8], what: &'static str) -> Result<[u8; N], KeyError> {
    <[u8; N]>::try_from(bytes).map_err(|_| wrong_len(what, N, bytes.len()))
}

fn wrong_len(what: &'static str, expected: usize, found: usize) -> KeyError {
    KeyError::Malformed { what, reason: format!("expected {expected} bytes, found {found}") }
}

fn unsupported_signature_algorithm(what: &'static str, alg: &[u8]) -> KeyError {
    KeyError::Malformed { what, reason: format!("unsupported signature algorithm '{}'", alg.escape_ascii()) }
}

fn not_text(what: &'static str) -> KeyError {
    KeyError::Malformed { what, reason: "not UTF-8 text".to_owned() }
}

/// A fixed-size array from a slice whose length the caller has checked.
fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut array = [0u8; N];
    // Panics if the lengths differ: every caller passes a sub-slice of a
    // buffer whose length was checked, with bounds derived from `N`.
    array.copy_from_slice(slice);
    array
}

/// Reads a key file, refusing one larger than any real key file.
fn read_limited(file: &mut File, path: &Path, what: &'static str) -> Result<Vec<u8>, KeyError> {
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| KeyError::io("read", path, source))?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        wipe(&mut bytes);
        return Err(KeyError::File {
            path: path.to_path_buf(),
            source: Box::new(KeyError::Malformed {
                what,
                reason: format!("larger than {MAX_KEY_FILE_LEN} bytes"),
            }),
        });
    }
    Ok(bytes)
}

/// Overwrites a buffer that held secret material. Without unsafe code this is
/// best effort: `black_box` keeps the compiler from dropping the writes.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::error::Error as _;

    // A key pair made by `minisign -G -W` (minisign 0.11), and its signatures
    // of a file containing "hello\n": `minisign -S` (prehashed) and
    // `minisign -S -l` (legacy).
    const MINISIGN_PUB: &str = "untrusted comment: minisign public key 89BD29612CB72BFC\n\
        RWT8K7csYSm9ieQ+v3w+ZBW7idkoY3/B+Fs+uE8dwut+ZT5hz6XFoGAH\n";
    const MINISIGN_KEY: &str = "untrusted comment: minisign encrypted secret key\n\
        RWQAAEIyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/Cu3LGEpvYn5f+xxLO0m1a9c\
        VxPeaw3oP/TiHvIytnVDGLhqYi3mL+Q+v3w+ZBW7idkoY3/B+Fs+uE8dwut+ZT5hz6XFoGAHAAAAAAAAAAAAAAAAAAAAAAAA\
        AAAAAAAAAAAAAAAAAAA=\n";
    const HELLO: &[u8] = b"hello\n";
    const HELLO_COMMENT: &str = "timestamp:1795455738\tfile:f\thashed";
    const HELLO_MINISIG: &str = "untrusted comment: signature from minisign secret key\n\
        RUT8K7csYSm9iT2PO6kRLa8s3g6/8VaO2YM+YWUhr2vonbH0FHL9XTbhbYceTuZfkhOsO0HjT8vJ/ou6u02QXisqm5Puq1vONgI=\n\
        trusted comment: timestamp:1795455738\tfile:f\thashed\n\
        laz8aTnDSLt7KXVc5cV6GKRJ5o6HRhIIPoRLnz8yVjubWaAwGNcIlbkerMJeIupVJ1jpTp7k13aqsXt7doPyAg==\n";
    const HELLO_LEGACY_MINISIG: &str = "untrusted comment: signature from minisign secret key\n\
        RWT8K7csYSm9ifUq5nRbQeMowyY21tUUZ0p1g+vPOtlUlzw/NToIusdtdDQ8qTVVzjHgIhnCtycD+8FDBuI51AqPEPVz2ypcxg0=\n\
        trusted comment: timestamp:1795455743\tfile:g\n\
        LkhFKRfsPmDaV9lop2PvSj9FE3wXzKAjKYbBoYpfi9jquN8JhTuQT1f+gY7mXYD85dbQsKMKaeBU9HiLTkuACQ==\n";

    // RFC 8032, section 7.1, test 1.
    const RFC_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const RFC_SIGNATURE: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    fn unhex<const N: usize>(hex: &str) -> [u8; N] {
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        bytes.try_into().unwrap()
    }

    fn rfc_key() -> SecretKey {
        SecretKey { key_id: *b"rfc8032!", key: SigningKey::from_bytes(&unhex(RFC_SEED)) }
    }

    fn digest(bytes: &[u8]) -> [u8; 64] {
        let mut digest = FileDigest::new();
        digest.update(bytes);
        digest.finalize()
    }

    /// The error's message followed by those of its sources.
    fn chain(error: &KeyError) -> Vec<String> {
        let mut messages = vec![error.to_string()];
        let mut source = error.source();
        while let Some(error) = source {
            messages.push(error.to_string());
            source = error.source();
        }
        messages
    }

    /// `text` with its `line`-th line (from 0) replaced by `f(line)`.
    fn edit_line(text: &str, line: usize, f: impl FnOnce(&str) -> String) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[line] = f(&lines[line]);
        lines.join("\n") + "\n"
    }

    /// `text` with the base64 payload of its `line`-th line edited by `f`.
    fn edit_payload(text: &str, line: usize, f: impl FnOnce(&mut Vec<u8>)) -> String {
        edit_line(text, line, |encoded| {
            let mut bytes = STANDARD.decode(encoded).unwrap();
            f(&mut bytes);
            STANDARD.encode(bytes)
        })
    }

    fn set_checksum(bytes: &mut [u8]) {
        let key_id: [u8; KEY_ID_LEN] = array(&bytes[SK_KEY_ID..SK_SEED]);
        let checksum = secret_checksum(&key_id, &bytes[SK_SEED..SK_CHECKSUM]);
        bytes[SK_CHECKSUM..].copy_from_slice(&checksum);
    }

    #[test]
    fn fingerprint_of_a_known_key() {
        let fingerprint = Fingerprint::of(&unhex(RFC_PUBLIC));
        assert_eq!(fingerprint.as_str(), "SHA256:If4x36FUomFia/hUBG/SJxt77UtqvkWqWId+9H+XIbk");
        assert_eq!(fingerprint.to_string(), fingerprint.as_str());
        assert_eq!(rfc_key().public_key().fingerprint(), fingerprint);
    }

    #[test]
    fn fingerprint_parse_round_trip() {
        let fingerprint = SecretKey::generate().unwrap().public_key().fingerprint();
        assert_eq!(Fingerprint::parse(fingerprint.as_str()).unwrap(), fingerprint);
        let padded = format!("  {fingerprint}\n");
        assert_eq!(Fingerprint::parse(&padded).unwrap(), fingerprint);
    }

    #[test]
    fn fingerprint_parse_rejects_other_text() {
        let good = "SHA256:If4x36FUomFia/hUBG/SJxt77UtqvkWqWId+9H+XIbk";
        for bad in [
            "",
            "If4x36FUomFia/hUBG/SJxt77UtqvkWqWId+9H+XIbk",
            "sha256:If4x36FUomFia/hUBG/SJxt77UtqvkWqWId+9H+XIbk",
            "SHA256: If4x36FUomFia/hUBG/SJxt77UtqvkWqWId+9H+XIbk",
            "SHA256:If4x36FUomFia/hUBG/SJxt77UtqvkWqWId+9H+XIbk=",
            "SHA256:If4x36FUomFia/hUBG/SJxt77UtqvkWqWId+9H+XIb",
            "SHA256:If4x36FUomFia/hUBG/SJxt77UtqvkWqWId+9H+XIbl",
            "SHA256:If4x36FUomFia_hUBG_SJxt77UtqvkWqWId-9H-XIbk",
            "MD5:If4x36FUomFia/hUBG/SJxt77UtqvkWqWId+9H+XIbk",
        ] {
            let error = Fingerprint::parse(bad).unwrap_err();
            assert!(matches!(&error, KeyError::BadFingerprint(text) if text == bad.trim()), "{bad}");
            assert_eq!(error.to_string(), format!("invalid key fingerprint '{}'", bad.trim()));
            assert!(error.hint().unwrap().contains("'SHA256:'"));
        }
        assert!(Fingerprint::parse(good).is_ok());
    }

    #[test]
    fn sign_and_verify_match_rfc8032() {
        let key = rfc_key();
        let signature = key.sign(b"");
        assert_eq!(signature, unhex::<64>(RFC_SIGNATURE));
        let public = key.public_key();
        assert_eq!(public.as_bytes(), &unhex::<32>(RFC_PUBLIC));
        public.verify(b"", &signature).unwrap();
        let error = public.verify(b"x", &signature).unwrap_err();
        assert!(matches!(error, KeyError::BadSignature));
        assert_eq!(error.to_string(), "signature verification failed");
    }

    #[test]
    fn generated_keys_differ() {
        let a = SecretKey::generate().unwrap().public_key();
        let b = SecretKey::generate().unwrap().public_key();
        assert_ne!(a.key_id(), b.key_id());
        assert_ne!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn from_parts_rejects_invalid_and_weak_points() {
        let mut invalid = [0u8; 32];
        invalid[0] = 2;
        let error = PublicKey::from_parts([0; 8], invalid).unwrap_err();
        assert_eq!(error.to_string(), "malformed public key: not a valid ed25519 point");
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let error = PublicKey::from_parts([0; 8], identity).unwrap_err();
        assert_eq!(error.to_string(), "malformed public key: weak ed25519 key (small-order point)");
        PublicKey::from_parts([0; 8], unhex(RFC_PUBLIC)).unwrap();
    }

    #[test]
    fn reads_minisign_public_key() {
        let public = PublicKey::parse(MINISIGN_PUB).unwrap();
        assert_eq!(public.key_id(), [0xfc, 0x2b, 0xb7, 0x2c, 0x61, 0x29, 0xbd, 0x89]);
        assert_eq!(public.key_id_hex(), "89BD29612CB72BFC");
        // What we write is byte for byte what minisign wrote.
        assert_eq!(public.to_file_string(), MINISIGN_PUB);
        // The bare line, as `minisign -P` takes it.
        let bare = MINISIGN_PUB.lines().nth(1).unwrap();
        assert_eq!(public.to_base64(), bare);
        assert_eq!(PublicKey::parse(bare).unwrap(), public);
        // CRLF line endings and blank lines.
        let crlf = MINISIGN_PUB.replace('\n', "\r\n") + "\r\n";
        assert_eq!(PublicKey::parse(&crlf).unwrap(), public);
    }

    #[test]
    fn key_id_hex_has_no_leading_zeros() {
        // minisign 0.11 wrote this one: its key id is 0x08fc49a9afee4950.
        const SHORT_ID_PUB: &str = "untrusted comment: minisign public key 8FC49A9AFEE4950\n\
            RWRQSe6vqUn8CMPYga730v/GjuoShykVSsUNM44eGIaNLYaAMsO7t7ML\n";
        let public = PublicKey::parse(SHORT_ID_PUB).unwrap();
        assert_eq!(public.key_id(), [0x50, 0x49, 0xee, 0xaf, 0xa9, 0x49, 0xfc, 0x08]);
        assert_eq!(public.key_id_hex(), "8FC49A9AFEE4950");
        assert_eq!(PublicKey::parse_key_id_hex("8FC49A9AFEE4950"), Some(public.key_id()));
        assert_eq!(PublicKey::parse_key_id_hex("not hex"), None);
        assert_eq!(public.to_file_string(), SHORT_ID_PUB);
        let zero = PublicKey::from_parts([0; 8], *public.as_bytes()).unwrap();
        assert_eq!(zero.key_id_hex(), "0");
    }

    #[test]
    fn public_key_file_round_trip() {
        let public = SecretKey::generate().unwrap().public_key();
        let text = public.to_file_string();
        let expected_comment = format!("untrusted comment: minisign public key {}\n", public.key_id_hex());
        assert!(text.starts_with(&expected_comment), "{text}");
        assert!(text.ends_with('\n'));
        assert_eq!(text.lines().count(), 2);
        assert_eq!(PublicKey::parse(&text).unwrap(), public);
        assert_eq!(public.key_id_hex(), public.key_id_hex().to_uppercase());
    }

    #[test]
    fn reads_minisign_unencrypted_secret_key() {
        // minisign 0.11 writes an all-zero checksum (and KDF fields) for -W.
        let secret = SecretKey::parse(MINISIGN_KEY).unwrap();
        assert_eq!(secret.public_key(), PublicKey::parse(MINISIGN_PUB).unwrap());
        // Ed25519 is deterministic: our .minisig is byte for byte minisign's.
        assert_eq!(secret.sign_minisig(&digest(HELLO), HELLO_COMMENT), HELLO_MINISIG);
    }

    #[test]
    fn secret_key_file_round_trip() {
        let secret = SecretKey::generate().unwrap();
        let text = secret.to_file_string();
        assert!(text.starts_with("untrusted comment: minisign unencrypted secret key\n"));
        assert!(text.ends_with('\n'));
        let bytes = STANDARD.decode(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(bytes.len(), SECRET_FILE_LEN);
        assert_eq!(&bytes[..SK_KDF_SALT], b"Ed\0\0B2");
        assert!(bytes[SK_KDF_SALT..SK_KEY_ID].iter().all(|&byte| byte == 0));
        assert_eq!(bytes[SK_KEY_ID..SK_SEED], secret.public_key().key_id());
        assert_eq!(&bytes[SK_PUBLIC..SK_CHECKSUM], secret.public_key().as_bytes());
        let key_id = secret.public_key().key_id();
        assert_eq!(bytes[SK_CHECKSUM..], secret_checksum(&key_id, &bytes[SK_SEED..SK_CHECKSUM]));

        let parsed = SecretKey::parse(&text).unwrap();
        assert_eq!(parsed.public_key(), secret.public_key());
        assert_eq!(parsed.sign(b"message"), secret.sign(b"message"));
    }

    #[test]
    fn secret_key_checksum_mismatch() {
        let text = SecretKey::generate().unwrap().to_file_string();
        let text = edit_payload(&text, 1, |bytes| bytes[SK_CHECKSUM] ^= 1);
        let error = SecretKey::parse(&text).unwrap_err();
        assert!(matches!(error, KeyError::Checksum));
        assert_eq!(error.to_string(), "the secret key checksum does not match the key");
        // A key id changed without the checksum is caught too.
        let text = SecretKey::generate().unwrap().to_file_string();
        let text = edit_payload(&text, 1, |bytes| bytes[SK_KEY_ID] ^= 1);
        assert!(matches!(SecretKey::parse(&text), Err(KeyError::Checksum)));
    }

    #[test]
    fn encrypted_secret_key_is_refused() {
        let text =
            edit_payload(MINISIGN_KEY, 1, |bytes| bytes[SK_KDF_ALG..SK_CHECKSUM_ALG].copy_from_slice(b"Sc"));
        let error = SecretKey::parse(&text).unwrap_err();
        assert!(matches!(error, KeyError::Encrypted));
        assert_eq!(error.to_string(), "the secret key is encrypted with a password");
        assert_eq!(
            error.hint().unwrap(),
            "kubeferry reads unencrypted minisign keys: create one with 'kubeferry keygen' or 'minisign -G -W'"
        );
    }

    #[test]
    fn secret_key_public_half_must_match_seed() {
        let text = edit_payload(&SecretKey::generate().unwrap().to_file_string(), 1, |bytes| {
            bytes[SK_PUBLIC..SK_CHECKSUM].copy_from_slice(&unhex::<32>(RFC_PUBLIC));
            set_checksum(bytes);
        });
        let error = SecretKey::parse(&text).unwrap_err();
        assert_eq!(error.to_string(), "malformed secret key: the public key does not match the secret seed");
    }

    #[test]
    fn secret_key_wrong_algorithms() {
        let text = SecretKey::generate().unwrap().to_file_string();
        let cases: [(usize, &[u8], &str); 4] = [
            (SK_SIG_ALG, b"ED", "malformed secret key: unsupported signature algorithm 'ED'"),
            (
                SK_KDF_ALG,
                b"\x01\x02",
                "malformed secret key: unsupported key derivation algorithm '\\x01\\x02'",
            ),
            (SK_KDF_ALG, b"Ar", "malformed secret key: unsupported key derivation algorithm 'Ar'"),
            (SK_CHECKSUM_ALG, b"B3", "malformed secret key: unsupported checksum algorithm 'B3'"),
        ];
        for (offset, value, message) in cases {
            let edited = edit_payload(&text, 1, |bytes| bytes[offset..offset + 2].copy_from_slice(value));
            assert_eq!(SecretKey::parse(&edited).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn malformed_base64_is_refused() {
        let text = "untrusted comment: x\nnot base64!\n";
        let error = PublicKey::parse(text).unwrap_err();
        assert!(matches!(error, KeyError::Base64 { what: "public key", .. }));
        assert_eq!(error.to_string(), "malformed public key: invalid base64");
        assert!(error.source().is_some());
        assert_eq!(SecretKey::parse(text).unwrap_err().to_string(), "malformed secret key: invalid base64");
        let minisig = edit_line(HELLO_MINISIG, 1, |_| "RUT8K7cs*".to_owned());
        let error =
            PublicKey::parse(MINISIGN_PUB).unwrap().verify_minisig(&digest(HELLO), &minisig).unwrap_err();
        assert_eq!(error.to_string(), "malformed signature: invalid base64");
        // Missing padding is not tolerated either.
        let unpadded = HELLO_MINISIG.replace("vONgI=", "vONgI");
        let error =
            PublicKey::parse(MINISIGN_PUB).unwrap().verify_minisig(&digest(HELLO), &unpadded).unwrap_err();
        assert_eq!(error.to_string(), "malformed signature: invalid base64");
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let public = edit_payload(MINISIGN_PUB, 1, |bytes| {
            bytes.pop();
        });
        assert_eq!(
            PublicKey::parse(&public).unwrap_err().to_string(),
            "malformed public key: expected 42 bytes, found 41"
        );
        let secret = edit_payload(MINISIGN_KEY, 1, |bytes| bytes.push(0));
        assert_eq!(
            SecretKey::parse(&secret).unwrap_err().to_string(),
            "malformed secret key: expected 158 bytes, found 159"
        );
        let key = PublicKey::parse(MINISIGN_PUB).unwrap();
        let minisig = edit_payload(HELLO_MINISIG, 1, |bytes| {
            bytes.pop();
        });
        let error = key.verify_minisig(&digest(HELLO), &minisig).unwrap_err();
        assert_eq!(error.to_string(), "malformed signature: expected 74 bytes, found 73");
        let minisig = edit_payload(HELLO_MINISIG, 3, |bytes| {
            bytes.pop();
        });
        let error = key.verify_minisig(&digest(HELLO), &minisig).unwrap_err();
        assert_eq!(
            error.to_string(),
            "malformed signature: trusted comment signature: expected 64 bytes, found 63"
        );
    }

    #[test]
    fn public_key_wrong_algorithm() {
        let text = edit_payload(MINISIGN_PUB, 1, |bytes| bytes[..2].copy_from_slice(b"ED"));
        assert_eq!(
            PublicKey::parse(&text).unwrap_err().to_string(),
            "malformed public key: unsupported signature algorithm 'ED'"
        );
    }

    #[test]
    fn key_file_structure_errors() {
        let line = MINISIGN_PUB.lines().nth(1).unwrap();
        let cases = [
            ("", "malformed public key: empty"),
            (" \n\n", "malformed public key: empty"),
            ("untrusted comment: x\n", "malformed public key: no key after the comment line"),
            (
                "comment\nRWT8\n",
                "malformed public key: the first line does not start with 'untrusted comment:'",
            ),
            (
                &*format!("untrusted comment: x\n{line}\n{line}\n"),
                "malformed public key: unexpected lines after the key",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(PublicKey::parse(text).unwrap_err().to_string(), message, "{text:?}");
        }
    }

    #[test]
    fn verifies_minisign_signature() {
        let key = PublicKey::parse(MINISIGN_PUB).unwrap();
        assert_eq!(key.verify_minisig(&digest(HELLO), HELLO_MINISIG).unwrap(), HELLO_COMMENT);
        let crlf = HELLO_MINISIG.replace('\n', "\r\n");
        assert_eq!(key.verify_minisig(&digest(HELLO), &crlf).unwrap(), HELLO_COMMENT);
        let error = key.verify_minisig(&digest(b"hello!\n"), HELLO_MINISIG).unwrap_err();
        assert!(matches!(error, KeyError::BadSignature));
    }

    #[test]
    fn minisig_round_trip() {
        let secret = SecretKey::generate().unwrap();
        let file_digest = digest(b"bundle contents");
        let comment = "timestamp:1700000000\tfile:bundle.run  ";
        let text = secret.sign_minisig(&file_digest, comment);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(text.ends_with('\n'));
        assert_eq!(lines[0], "untrusted comment: signature from minisign secret key");
        assert_eq!(lines[2], format!("trusted comment: {comment}"));
        let signature = STANDARD.decode(lines[1]).unwrap();
        assert_eq!(&signature[..2], b"ED");
        assert_eq!(signature[2..10], secret.public_key().key_id());
        assert_eq!(secret.public_key().verify_minisig(&file_digest, &text).unwrap(), comment);
    }

    #[test]
    fn trusted_comment_line_breaks_become_spaces() {
        let secret = SecretKey::generate().unwrap();
        let text = secret.sign_minisig(&digest(b"x"), "a\nb\r\nc");
        assert_eq!(text.lines().count(), 4);
        assert_eq!(secret.public_key().verify_minisig(&digest(b"x"), &text).unwrap(), "a b  c");
    }

    #[test]
    fn tampered_minisig_is_rejected() {
        let secret = SecretKey::generate().unwrap();
        let public = secret.public_key();
        let file_digest = digest(b"bundle contents");
        let text = secret.sign_minisig(&file_digest, "trusted");

        let other_digest = digest(b"bundle content");
        assert!(matches!(public.verify_minisig(&other_digest, &text), Err(KeyError::BadSignature)));

        let bad_signature = edit_payload(&text, 1, |bytes| bytes[40] ^= 1);
        assert!(matches!(public.verify_minisig(&file_digest, &bad_signature), Err(KeyError::BadSignature)));

        let bad_comment = edit_line(&text, 2, |_| "trusted comment: trusteD".to_owned());
        let error = public.verify_minisig(&file_digest, &bad_comment).unwrap_err();
        assert!(matches!(error, KeyError::BadCommentSignature));
        assert_eq!(error.to_string(), "trusted comment signature verification failed");
        // Even a trailing space changes the signed comment.
        let bad_comment = edit_line(&text, 2, |line| format!("{line} "));
        assert!(matches!(
            public.verify_minisig(&file_digest, &bad_comment),
            Err(KeyError::BadCommentSignature)
        ));

        let bad_global = edit_payload(&text, 3, |bytes| bytes[0] ^= 1);
        assert!(matches!(
            public.verify_minisig(&file_digest, &bad_global),
            Err(KeyError::BadCommentSignature)
        ));

        // Another key that claims the same key id.
        let impostor = SecretKey { key_id: public.key_id(), key: SigningKey::from_bytes(&unhex(RFC_SEED)) };
        let forged = impostor.sign_minisig(&file_digest, "trusted");
        assert!(matches!(public.verify_minisig(&file_digest, &forged), Err(KeyError::BadSignature)));
    }

    #[test]
    fn wrong_key_is_named() {
        let key = PublicKey::parse(MINISIGN_PUB).unwrap();
        let other = SecretKey::generate().unwrap();
        let text = other.sign_minisig(&digest(HELLO), "c");
        let error = key.verify_minisig(&digest(HELLO), &text).unwrap_err();
        let found = other.public_key().key_id_hex();
        assert!(
            matches!(&error, KeyError::WrongKey { expected, found: f } if expected == "89BD29612CB72BFC" && *f == found)
        );
        assert_eq!(
            error.to_string(),
            format!("the signature was made by key {found}, not by key 89BD29612CB72BFC")
        );
        assert_eq!(
            error.hint().unwrap(),
            format!("verify with the public key whose id is {found}, if you trust it")
        );
    }

    #[test]
    fn legacy_signature_is_refused() {
        let key = PublicKey::parse(MINISIGN_PUB).unwrap();
        let error = key.verify_minisig(&digest(HELLO), HELLO_LEGACY_MINISIG).unwrap_err();
        assert!(matches!(error, KeyError::LegacySignature));
        assert_eq!(error.to_string(), "legacy (non-prehashed) minisign signatures are not supported");
        assert_eq!(error.hint().unwrap(), "sign the file again without minisign's -l option");
    }

    #[test]
    fn minisig_structure_errors() {
        let key = PublicKey::parse(MINISIGN_PUB).unwrap();
        let file_digest = digest(HELLO);
        let three_lines: String = HELLO_MINISIG.lines().take(3).map(|line| format!("{line}\n")).collect();
        let cases = [
            (three_lines, "malformed signature: expected 4 lines, found 3"),
            (HELLO_MINISIG.to_owned() + "extra\n", "malformed signature: expected 4 lines, found 5"),
            (
                edit_line(HELLO_MINISIG, 0, |_| "comment".to_owned()),
                "malformed signature: the first line does not start with 'untrusted comment:'",
            ),
            (
                edit_line(HELLO_MINISIG, 2, |line| line.replace("trusted comment: ", "trusted:")),
                "malformed signature: the third line does not start with 'trusted comment: '",
            ),
            (
                edit_payload(HELLO_MINISIG, 1, |bytes| bytes[..2].copy_from_slice(b"Xy")),
                "malformed signature: unsupported signature algorithm 'Xy'",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(key.verify_minisig(&file_digest, &text).unwrap_err().to_string(), message);
        }
        // Trailing blank lines are fine.
        let padded = HELLO_MINISIG.to_owned() + "\n\n";
        assert_eq!(key.verify_minisig(&file_digest, &padded).unwrap(), HELLO_COMMENT);
    }

    #[test]
    fn write_new_creates_0600_and_refuses_existing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeferry.key");
        let secret = SecretKey::generate().unwrap();
        secret.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), secret.to_file_string());
        assert_eq!(SecretKey::read(&path).unwrap().public_key(), secret.public_key());

        let other = SecretKey::generate().unwrap();
        let error = other.write_new(&path).unwrap_err();
        assert!(matches!(&error, KeyError::Exists { path: p } if *p == path));
        assert_eq!(error.to_string(), format!("key file '{}' already exists", path.display()));
        assert!(error.hint().unwrap().contains(&format!("'{}'", path.display())));
        assert_eq!(SecretKey::read(&path).unwrap().public_key(), secret.public_key());

        let error = secret.write_new(&dir.path().join("missing/kubeferry.key")).unwrap_err();
        assert!(matches!(error, KeyError::Io { action: "create", .. }));
    }

    #[test]
    fn secret_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeferry.key");
        SecretKey::generate().unwrap().write_new(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = SecretKey::read(&path).unwrap_err();
        assert!(matches!(&error, KeyError::Permissions { path: p, mode: 0o644 } if *p == path));
        assert_eq!(
            error.to_string(),
            format!("secret key file '{}' is accessible by group or others (mode 0644)", path.display())
        );
        assert_eq!(error.hint().unwrap(), format!("run: chmod 600 '{}'", path.display()));

        // The mode is checked before the contents are looked at.
        std::fs::write(&path, "not a key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(matches!(SecretKey::read(&path), Err(KeyError::Permissions { mode: 0o620, .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(SecretKey::read(&path), Err(KeyError::File { .. })));
    }

    #[test]
    fn read_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pub");
        let error = PublicKey::read(&missing).unwrap_err();
        assert_eq!(chain(&error)[0], format!("cannot open '{}'", missing.display()));
        assert!(error.source().is_some());

        let path = dir.path().join("bad.pub");
        std::fs::write(&path, "untrusted comment: x\nRWT8\n").unwrap();
        let error = PublicKey::read(&path).unwrap_err();
        assert_eq!(
            chain(&error),
            [
                format!("cannot use key file '{}'", path.display()),
                "malformed public key: expected 42 bytes, found 3".to_owned(),
            ]
        );
        std::fs::write(&path, b"\xff\xfe").unwrap();
        let error = PublicKey::read(&path).unwrap_err();
        assert_eq!(chain(&error)[1], "malformed public key: not UTF-8 text");
        std::fs::write(&path, vec![b'A'; 20_000]).unwrap();
        let error = PublicKey::read(&path).unwrap_err();
        assert_eq!(chain(&error)[1], "malformed public key: larger than 16384 bytes");

        let path = dir.path().join("encrypted.key");
        let encrypted =
            edit_payload(MINISIGN_KEY, 1, |bytes| bytes[SK_KDF_ALG..SK_CHECKSUM_ALG].copy_from_slice(b"Sc"));
        std::fs::write(&path, encrypted).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = SecretKey::read(&path).unwrap_err();
        assert!(matches!(&error, KeyError::File { source, .. } if matches!(**source, KeyError::Encrypted)));
        assert_eq!(
            chain(&error),
            [
                format!("cannot use key file '{}'", path.display()),
                "the secret key is encrypted with a password".to_owned(),
            ]
        );
        // The hint of the cause is the hint of the error.
        assert_eq!(error.hint(), KeyError::Encrypted.hint());
    }

    #[test]
    fn public_key_file_round_trip_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeferry.pub");
        let public = SecretKey::generate().unwrap().public_key();
        std::fs::write(&path, public.to_file_string()).unwrap();
        assert_eq!(PublicKey::read(&path).unwrap(), public);
    }

    #[test]
    fn file_digest_is_blake2b_512() {
        let expected = unhex::<64>(
            "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1\
             7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923",
        );
        assert_eq!(digest(b"abc"), expected);
        let mut pieces = FileDigest::new();
        pieces.update(b"a");
        pieces.clone().update(b"zzz");
        pieces.update(b"bc");
        assert_eq!(pieces.finalize(), expected);
    }

    #[test]
    fn file_digest_of_file_streams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        // Larger than the buffer, and not a multiple of it.
        let contents: Vec<u8> = (0..HASH_BUFFER_LEN * 2 + 12345).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &contents).unwrap();
        assert_eq!(FileDigest::of_file(&path).unwrap(), digest(&contents));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(FileDigest::of_file(&empty).unwrap(), digest(b""));
        let error = FileDigest::of_file(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(error, KeyError::Io { action: "open", .. }));
    }
}
