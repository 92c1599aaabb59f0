//! Basic authentication for the bundled registry (sealos' `registryUsername` and
//! `registryPassword`): the credentials, the htpasswd file that holds their bcrypt hash (read
//! by kubeferry's own server and by a distribution registry alike), and the check of a
//! request's `Authorization` header against that file.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::RegistryError;

/// The bcrypt cost of the hashes kubeferry writes: `htpasswd -B`'s default. Every request is
/// checked against the hash, so a high cost would slow every pull; the password itself lives in
/// the runtime's configuration on the same host anyway.
pub const BCRYPT_COST: u32 = 5;

/// The realm the registry names in its `WWW-Authenticate` challenge.
pub const REALM: &str = "kubeferry-registry";

/// A user name and password for the bundled registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (sealos: `registryUsername`).
    pub username: String,
    /// The password (sealos: `registryPassword`).
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"…").finish()
    }
}

impl Credentials {
    /// Checks the user name and password: both given, no control characters, no `:` in the
    /// user name (htpasswd and Basic authentication both split there), and a password bcrypt
    /// does not cut short (72 bytes at most).
    pub fn new(username: &str, password: &str) -> Result<Credentials, RegistryError> {
        let bad = |reason: &str| Err(RegistryError::BadCredentials { reason: reason.to_owned() });
        if username.is_empty() {
            return bad("the user name is empty");
        }
        if username.contains(':') {
            return bad("the user name contains ':'");
        }
        if password.is_empty() {
            return bad("the password is empty");
        }
        if password.len() > 72 {
            return bad("the password is longer than 72 bytes, which bcrypt cannot hash");
        }
        if username.chars().chain(password.chars()).any(char::is_control) {
            return bad("the user name or password contains a control character");
        }
        Ok(Credentials { username: username.to_owned(), password: password.to_owned() })
    }

    /// The value of an `Authorization` header that presents these credentials.
    pub fn authorization(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }

    /// One htpasswd line, `USER:$2y$05$...`, with a new random salt.
    pub fn htpasswd_line(&self) -> Result<String, RegistryError> {
        let parts = bcrypt::hash_with_result(&self.password, BCRYPT_COST).map_err(|e| {
            RegistryError::BadCredentials { reason: format!("could not hash the password: {e}") }
        })?;
        Ok(format!("{}:{}\n", self.username, parts.format_for_version(bcrypt::Version::TwoY)))
    }
}

/// The users of an htpasswd file (bcrypt hashes only, as distribution's htpasswd auth too
/// accepts), and the `Authorization` headers already found good.
#[derive(Debug)]
pub struct Users {
    entries: Vec<(String, String)>,
    /// SHA-256 of headers that passed, so that a bcrypt check runs once per client, not once
    /// per request.
    accepted: Mutex<HashSet<[u8; 32]>>,
}

impl Clone for Users {
    fn clone(&self) -> Self {
        Users { entries: self.entries.clone(), accepted: Mutex::default() }
    }
}

impl PartialEq for Users {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for Users {}

impl Users {
    /// Reads an htpasswd file.
    pub fn read(path: &Path) -> Result<Users, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        Users::parse(&text, path)
    }

    /// Parses htpasswd text (`path` names it in errors): `USER:HASH` lines, blank lines and
    /// `#` comments; every hash must be bcrypt (`$2a$`, `$2b$`, `$2y$`).
    pub fn parse(text: &str, path: &Path) -> Result<Users, RegistryError> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| RegistryError::Htpasswd {
                path: path.to_path_buf(),
                reason: format!("line {}: {reason}", n + 1),
            };
            let (user, hash) = line.split_once(':').ok_or_else(|| bad("it is not 'USER:HASH'"))?;
            if user.is_empty() {
                return Err(bad("the user name is empty"));
            }
            if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
                return Err(bad(&format!(
                    "the hash of '{user}' is not bcrypt (make the file with 'htpasswd -B')"
                )));
            }
            entries.push((user.to_owned(), hash.to_owned()));
        }
        if entries.is_empty() {
            return Err(RegistryError::Htpasswd {
                path: path.to_path_buf(),
                reason: "it names no user".into(),
            });
        }
        Ok(Users { entries, accepted: Mutex::default() })
    }

    /// Whether an `Authorization` header value presents the password of one of the users.
    pub fn check(&self, authorization: Option<&str>) -> bool {
        let Some(header) = authorization else {
            return false;
        };
        let key: [u8; 32] = Sha256::digest(header.as_bytes()).into();
        if self.accepted.lock().unwrap_or_else(PoisonError::into_inner).contains(&key) {
            return true;
        }
        let Some((scheme, encoded)) = header.trim().split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(pair) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = pair.split_once(':') else {
            return false;
        };
        let good = self
            .entries
            .iter()
            .any(|(name, hash)| name == user && bcrypt::verify(password, hash).unwrap_or(false));
        if good {
            let mut accepted = self.accepted.lock().unwrap_or_else(PoisonError::into_inner);
            // Bounded: a flood of distinct good headers cannot grow it for ever.
            if accepted.len() >= 1024 {
                accepted.clear();
            }
            accepted.insert(key);
        }
        good
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_line_checks_the_right_password_only() {
        let credentials = Credentials::new("admin", "passw0rd").unwrap();
        let line = credentials.htpasswd_line().unwrap();
        assert!(line.starts_with("admin:$2y$05$") && line.ends_with('\n'), "{line}");
        let users = Users::parse(&line, Path::new("htpasswd")).unwrap();
        assert!(users.check(Some(&credentials.authorization())));
        assert!(users.check(Some(&credentials.authorization())), "again, from the accepted set");
        let wrong = Credentials::new("admin", "wrong").unwrap();
        assert!(!users.check(Some(&wrong.authorization())));
        let other = Credentials::new("other", "passw0rd").unwrap();
        assert!(!users.check(Some(&other.authorization())));
        assert!(!users.check(None));
        assert!(!users.check(Some("Bearer abc")));
        assert!(!users.check(Some("Basic not-base64!")));
    }

    #[test]
    fn bad_credentials_and_htpasswd_files_are_refused_with_the_reason() {
        let reason = |u: &str, p: &str| Credentials::new(u, p).unwrap_err().to_string();
        assert_eq!(reason("", "x"), "the registry credentials are not usable: the user name is empty");
        assert_eq!(reason("a:b", "x"), "the registry credentials are not usable: the user name contains ':'");
        assert_eq!(reason("a", ""), "the registry credentials are not usable: the password is empty");
        assert_eq!(
            reason("a", &"x".repeat(73)),
            "the registry credentials are not usable: the password is longer than 72 bytes, which bcrypt cannot hash"
        );
        let parse = |text: &str| Users::parse(text, Path::new("/etc/htpasswd")).unwrap_err().to_string();
        assert_eq!(
            parse("admin:{SHA}abc\n"),
            "'/etc/htpasswd' is not a usable htpasswd file: line 1: the hash of 'admin' is not bcrypt (make the file with 'htpasswd -B')"
        );
        assert_eq!(
            parse("# only a comment\n"),
            "'/etc/htpasswd' is not a usable htpasswd file: it names no user"
        );
        assert_eq!(
            parse("\nadmin\n"),
            "'/etc/htpasswd' is not a usable htpasswd file: line 2: it is not 'USER:HASH'"
        );
    }
}
