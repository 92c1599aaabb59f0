//! Reading the docker distribution storage layout: names, tags and digests checked against
//! distribution's grammar before any path is built from them.

use super::*;

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Digest {
    pub(super) hex: String,
}

impl Digest {
    pub(super) fn parse(s: &str) -> Option<Digest> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Digest { hex: hex.to_owned() })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// A repository name as distribution's reference grammar allows it: components matching
/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*` separated by '/', at most 255 characters. So no
/// component is empty, ".", "..", or starts with '_' (the storage's own directories).
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('/').all(valid_component)
}

pub(super) fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alphanumeric(first) || !alphanumeric(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alphanumeric(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alphanumeric(bytes[i]) {
            i += 1;
        }
        let separator = &bytes[start..i];
        let allowed = matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|&b| b == b'-');
        if !allowed {
            return false;
        }
    }
    true
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(super) fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    match bytes.split_first() {
        Some((&first, rest)) => {
            word(first) && rest.len() <= 127 && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        None => false,
    }
}

/// Decodes `%XX` escapes; None for a malformed escape, a NUL, or bytes that are not UTF-8.
pub(super) fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return (!s.contains('\0')).then(|| s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return None;
    }
    String::from_utf8(out).ok()
}

/// The media type a manifest is served with: its own `mediaType` field, else guessed from its
/// shape (an OCI manifest or index may omit the field). None: not a manifest.
pub fn manifest_media_type(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let object = value.as_object()?;
    if let Some(media_type) = object.get("mediaType").and_then(serde_json::Value::as_str)
        && valid_media_type(media_type)
    {
        return Some(media_type.to_owned());
    }
    let guessed = match object.get("schemaVersion").and_then(serde_json::Value::as_u64) {
        Some(1) if object.contains_key("signatures") => DOCKER_MANIFEST_V1_SIGNED,
        Some(1) => DOCKER_MANIFEST_V1,
        _ if object.get("manifests").is_some_and(serde_json::Value::is_array) => OCI_INDEX,
        _ if object.contains_key("config")
            || object.get("layers").is_some_and(serde_json::Value::is_array) =>
        {
            OCI_MANIFEST
        }
        _ => return None,
    };
    Some(guessed.to_owned())
}

/// `type/subtype` with token characters only: safe as a header value.
pub(super) fn valid_media_type(media_type: &str) -> bool {
    let token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b));
    media_type.len() <= 255 && media_type.split_once('/').is_some_and(|(t, sub)| token(t) && token(sub))
}

pub(super) fn missing(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

/// The storage directory; every path it builds comes from a validated name, tag or digest.
#[derive(Debug)]
pub(super) struct Storage {
    /// ROOT/docker/registry/v2
    pub(super) v2: PathBuf,
}

impl Storage {
    pub(super) fn open(root: &Path) -> Result<Storage, RegistryError> {
        let v2 = root.join(STORAGE_PREFIX);
        match fs::metadata(&v2) {
            Ok(meta) if meta.is_dir() => Ok(Storage { v2 }),
            Ok(_) => Err(RegistryError::NotAStorage { path: root.to_path_buf() }),
            Err(error) if missing(&error) => Err(RegistryError::NotAStorage { path: root.to_path_buf() }),
            Err(source) => Err(RegistryError::Io { action: "read", path: v2, source }),
        }
    }

    pub(super) fn repository(&self, name: &str) -> PathBuf {
        debug_assert!(valid_name(name));
        self.v2.join("repositories").join(name)
    }

    pub(super) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.v2.join("blobs/sha256").join(&digest.hex[..2]).join(&digest.hex).join("data")
    }

    /// A repository is a directory with `_manifests` or `_layers` in it.
    pub(super) fn has_repository(&self, name: &str) -> bool {
        let repository = self.repository(name);
        repository.join("_manifests").is_dir() || repository.join("_layers").is_dir()
    }

    /// The digest a link file names; None when it does not exist.
    pub(super) fn read_link(path: &Path) -> Result<Option<Digest>, RegistryError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if missing(&error) => return Ok(None),
            Err(source) => {
                return Err(RegistryError::Io { action: "open", path: path.to_path_buf(), source });
            }
        };
        let mut text = String::new();
        file.take(MAX_LINK_BYTES).read_to_string(&mut text).map_err(|source| RegistryError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        Digest::parse(text.trim()).map(Some).ok_or_else(|| RegistryError::Corrupt {
            path: path.to_path_buf(),
            reason: "a link must hold 'sha256:' and 64 lowercase hex digits".to_owned(),
        })
    }

    /// Whether the link at `path` exists and names `digest`.
    pub(super) fn linked(path: &Path, digest: &Digest) -> Result<bool, RegistryError> {
        Ok(Self::read_link(path)?.is_some_and(|linked| linked == *digest))
    }

    pub(super) fn revision_link(&self, name: &str, digest: &Digest) -> PathBuf {
        self.repository(name).join("_manifests/revisions/sha256").join(&digest.hex).join("link")
    }

    pub(super) fn layer_link(&self, name: &str, digest: &Digest) -> PathBuf {
        self.repository(name).join("_layers/sha256").join(&digest.hex).join("link")
    }

    /// A manifest of the repository: a revision link, or (as distribution also looks) a layer link.
    pub(super) fn has_manifest(&self, name: &str, digest: &Digest) -> Result<bool, RegistryError> {
        Ok(Self::linked(&self.revision_link(name, digest), digest)?
            || Self::linked(&self.layer_link(name, digest), digest)?)
    }

    /// A blob of the repository: a layer link (layers and configs), or a revision link.
    pub(super) fn has_blob(&self, name: &str, digest: &Digest) -> Result<bool, RegistryError> {
        Ok(Self::linked(&self.layer_link(name, digest), digest)?
            || Self::linked(&self.revision_link(name, digest), digest)?)
    }

    /// The digest a tag points at.
    pub(super) fn tag(&self, name: &str, tag: &str) -> Result<Option<Digest>, RegistryError> {
        debug_assert!(valid_tag(tag));
        Self::read_link(&self.repository(name).join("_manifests/tags").join(tag).join("current/link"))
    }

    /// A manifest's bytes, checked against its digest; None when the blob is absent.
    pub(super) fn read_manifest(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RegistryError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if missing(&error) => return Ok(None),
            Err(source) => return Err(RegistryError::Io { action: "open", path, source }),
        };
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes).map_err(|source| RegistryError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(RegistryError::Corrupt {
                path,
                reason: format!("a manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        let actual = hex(&Sha256::digest(&bytes));
        if actual != digest.hex {
            return Err(RegistryError::Corrupt {
                path,
                reason: format!("its content has digest sha256:{actual}"),
            });
        }
        Ok(Some(bytes))
    }

    /// The tags of a repository that point at a manifest, sorted.
    pub(super) fn tags(&self, name: &str) -> Result<Vec<String>, RegistryError> {
        let dir = self.repository(name).join("_manifests/tags");
        let mut tags = Vec::new();
        for entry in read_dir_sorted(&dir)? {
            if entry.is_dir && valid_tag(&entry.name) && dir.join(&entry.name).join("current/link").is_file()
            {
                tags.push(entry.name);
            }
        }
        Ok(tags)
    }

    /// Every repository name, sorted.
    pub(super) fn repositories(&self) -> Result<Vec<String>, RegistryError> {
        let mut names = Vec::new();
        walk_repositories(&self.v2.join("repositories"), "", 0, &mut names)?;
        names.sort();
        Ok(names)
    }
}

pub(super) struct DirEntry {
    pub(super) name: String,
    pub(super) is_dir: bool,
}

/// The entries of a directory (not following symlinks), sorted by name; empty when it is
/// missing. Names that are not UTF-8 are skipped: no valid name or tag is.
pub(super) fn read_dir_sorted(dir: &Path) -> Result<Vec<DirEntry>, RegistryError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if missing(&error) => return Ok(Vec::new()),
        Err(source) => return Err(RegistryError::Io { action: "list", path: dir.to_path_buf(), source }),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|source| RegistryError::Io { action: "list", path: dir.to_path_buf(), source })?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        out.push(DirEntry { name, is_dir });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Collects the repositories under `dir` (whose name is `prefix`): a directory with a
/// `_manifests` directory is one; `_`-directories are the storage's own and are not walked.
pub(super) fn walk_repositories(
    dir: &Path,
    prefix: &str,
    depth: usize,
    out: &mut Vec<String>,
) -> Result<(), RegistryError> {
    if depth > MAX_NAME_DEPTH {
        return Ok(());
    }
    for entry in read_dir_sorted(dir)? {
        if !entry.is_dir {
            continue;
        }
        if entry.name == "_manifests" && !prefix.is_empty() {
            out.push(prefix.to_owned());
        } else if valid_component(&entry.name) {
            let name =
                if prefix.is_empty() { entry.name.clone() } else { format!("{prefix}/{}", entry.name) };
            if name.len() <= MAX_NAME_LEN {
                walk_repositories(&dir.join(&entry.name), &name, depth + 1, out)?;
            }
        }
    }
    Ok(())
}

pub(super) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Every tag of every repository in the storage directory `root` (the directory that holds
/// `docker/registry/v2`), sorted by repository and tag, with its manifest's digest and media
/// type. A tag whose link or manifest is broken is an error: the registry could not serve it.
pub fn list_images(root: &Path) -> Result<Vec<ImageRef>, RegistryError> {
    let storage = Storage::open(root)?;
    let mut images = Vec::new();
    for repository in storage.repositories()? {
        for tag in storage.tags(&repository)? {
            let link =
                storage.repository(&repository).join("_manifests/tags").join(&tag).join("current/link");
            let Some(digest) = Storage::read_link(&link)? else { continue };
            let path = storage.blob_path(&digest);
            let bytes = storage.read_manifest(&digest)?.ok_or_else(|| RegistryError::Corrupt {
                path: link.clone(),
                reason: format!("it names {digest}, whose blob is missing"),
            })?;
            let media_type = manifest_media_type(&bytes).ok_or_else(|| RegistryError::Corrupt {
                path,
                reason: "the manifest is neither an image manifest nor an index".to_owned(),
            })?;
            images.push(ImageRef {
                repository: repository.clone(),
                tag,
                digest: digest.to_string(),
                media_type,
            });
        }
    }
    Ok(images)
}
