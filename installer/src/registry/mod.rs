//! A read-only OCI distribution endpoint over a docker distribution storage directory.
//!
//! A cluster image keeps its container images in `registry/`, the storage layout of the docker
//! distribution registry's filesystem driver. When the image ships no registry program, the
//! installer serves that directory itself, so that no image import is needed at boot:
//!
//! ```text
//! ROOT/docker/registry/v2/blobs/sha256/<2 hex>/<64 hex>/data              every blob and manifest
//! ROOT/docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link   "sha256:<hex>"
//! ROOT/docker/registry/v2/repositories/<name>/_manifests/revisions/sha256/<hex>/link
//! ROOT/docker/registry/v2/repositories/<name>/_layers/sha256/<hex>/link   layers and configs
//! ```
//!
//! Distribution 2.8 links a repository's layers *and* image configs under `_layers`, and every
//! manifest it stores (a tagged one and each child of an index alike) under
//! `_manifests/revisions`; manifests get no `_layers` link. A manifest is served by digest when
//! the repository has a revision link for it (or, as distribution also accepts, a `_layers`
//! link); a blob when the repository has a `_layers` link for it, or a revision link (some
//! clients fetch manifests through the blob endpoint; distribution 2.8 refuses that).
//!
//! Served, for `GET` and `HEAD`: `/v2/`, `/v2/_catalog`, `/v2/<name>/tags/list`,
//! `/v2/<name>/manifests/<tag or digest>` with the manifest's own media type, and
//! `/v2/<name>/blobs/<digest>` streamed from disk (single byte ranges too). Every other method
//! is refused with 405 `UNSUPPORTED`. Every repository name, tag and digest is checked against
//! distribution's grammar before any path is built from it, and every digest read from a link
//! file is checked the same way, so no request can read outside the storage directory.
//!
//! The HTTP/1.1 server is the standard library's sockets and a fixed pool of threads: one
//! thread accepts into a bounded queue, `threads` handlers answer a connection's requests in
//! turn (keep-alive, pipelining), and every response has a Content-Length. It reads request
//! heads with size limits and deadlines, and answers a TLS handshake at once with a plain 400,
//! as Go's server does, so that clients which try HTTPS first (docker, containerd, skopeo)
//! fall back to HTTP without waiting for a handshake timeout.
//!
//! [`Registry::start`] serves in background threads (tests, installation);
//! [`serve_forever`] is the systemd service mode; [`wait_ready`] polls any registry, this one
//! or a shipped one; [`list_images`] reads the tags from the storage directory.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// The storage driver's directory under the root.
const STORAGE_PREFIX: &str = "docker/registry/v2";

/// The largest manifest served (distribution's own limit for a manifest payload).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// The largest link file read; a real one is 71 bytes.
const MAX_LINK_BYTES: u64 = 1024;

/// Deepest repository nesting walked by the catalog (a name is at most 255 characters).
const MAX_NAME_DEPTH: usize = 128;

/// The longest repository name distribution accepts.
const MAX_NAME_LEN: usize = 255;

/// Handler threads used when [`RegistryConfig::threads`] is 0.
pub const DEFAULT_THREADS: usize = 8;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list (schema 2).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 1 manifest, signed.
pub const DOCKER_MANIFEST_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker schema 1 manifest, unsigned.
pub const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";

const JSON: &str = "application/json; charset=utf-8";

/// Where and how to serve a storage directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// The directory that holds `docker/registry/v2` (an image's `registry/`).
    pub root: PathBuf,
    /// The address to listen on; port 0 picks a free port (see [`Registry::local_addr`]).
    pub listen: SocketAddr,
    /// The users allowed to read (Basic authentication); None serves everyone.
    pub users: Option<Users>,
    /// Connections served at once: each handler thread answers one connection's requests (a
    /// whole blob download included) before it takes another. 0 means [`DEFAULT_THREADS`].
    pub threads: usize,
}

/// One tag of one repository in a storage directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ImageRef {
    /// The repository name, such as `library/nginx` (without the registry's domain).
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The manifest's digest, `sha256:<hex>`.
    pub digest: String,
    /// The manifest's media type, as served.
    pub media_type: String,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}@{}", self.repository, self.tag, self.digest)
    }
}

/// What can go wrong serving, probing or reading a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The root has no `docker/registry/v2` directory.
    #[error("'{path}' is not a registry storage directory: it has no 'docker/registry/v2' directory")]
    NotAStorage {
        /// The root given.
        path: PathBuf,
    },
    /// An I/O error on a file of the storage directory.
    #[error("could not {action} '{path}'")]
    Io {
        /// What was being done: "read", "list"...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A file of the storage directory holds something a registry never writes.
    #[error("'{path}' is not valid registry storage: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry credentials given cannot be used.
    #[error("the registry credentials are not usable: {reason}")]
    BadCredentials {
        /// What is wrong with them.
        reason: String,
    },
    /// An htpasswd file that cannot be used.
    #[error("'{path}' is not a usable htpasswd file: {reason}")]
    Htpasswd {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The address cannot be bound.
    #[error("could not listen on '{addr}'")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A handler thread could not be started.
    #[error("could not start a registry thread")]
    Thread(#[source] io::Error),
    /// Accepting connections kept failing; the server stopped.
    #[error("the registry on '{addr}' could not accept connections")]
    Accept {
        /// The bound address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The probe given to [`wait_ready`] is not a valid repository and tag.
    #[error("'{repository}:{tag}' is not a valid repository and tag")]
    InvalidProbe {
        /// The repository given.
        repository: String,
        /// The tag given.
        tag: String,
    },
    /// The registry did not answer in time.
    #[error("the registry on '{addr}' was not ready within {}s: {last}", waited.as_secs_f32())]
    NotReady {
        /// The address polled.
        addr: SocketAddr,
        /// How long it was polled.
        waited: Duration,
        /// What the last attempt saw.
        last: String,
    },
}

impl RegistryError {
    /// A suggestion for the user, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Listen { addr, source } => match source.kind() {
                io::ErrorKind::AddrInUse => Some(format!(
                    "another registry is running on port {}; pass --registry-port with a free port, or stop it",
                    addr.port()
                )),
                io::ErrorKind::PermissionDenied => {
                    Some(format!("port {} needs root or CAP_NET_BIND_SERVICE", addr.port()))
                }
                io::ErrorKind::AddrNotAvailable => {
                    Some(format!("'{}' is not an address of this host", addr.ip()))
                }
                _ => None,
            },
            Self::NotAStorage { .. } => Some(
                "the image's registry/ directory must hold the docker distribution storage layout \
                 (docker/registry/v2/blobs and docker/registry/v2/repositories)"
                    .to_owned(),
            ),
            Self::Accept { .. } => Some("restart the registry service".to_owned()),
            Self::NotReady { addr, .. } => Some(format!(
                "check that the registry service is running and listening on '{addr}', and read its log"
            )),
            _ => None,
        }
    }
}

/// A registry serving a storage directory from background threads; stops when dropped.
///
/// One thread accepts connections into a bounded queue; `threads` handler threads each take a
/// connection and answer its requests in turn (HTTP/1.1 keep-alive). A handler whose connection
/// goes idle while others wait closes it and takes the next one, so idle clients cannot hold
/// the pool.
pub struct Registry {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

struct Shared {
    storage: Storage,
    users: Option<Users>,
    stopping: AtomicBool,
    pending: Mutex<VecDeque<TcpStream>>,
    available: Condvar,
    /// The accept error that ended serving, if one did.
    failure: Mutex<Option<io::Error>>,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn pending(&self) -> MutexGuard<'_, VecDeque<TcpStream>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks every thread to end. The flag is set under the queue's lock so that no handler
    /// misses the wake-up between its check and its wait.
    fn stop(&self) {
        let pending = self.pending();
        self.stopping.store(true, Ordering::SeqCst);
        drop(pending);
        self.available.notify_all();
    }

    /// Whether a connection waits for a handler.
    fn others_waiting(&self) -> bool {
        !self.pending().is_empty()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .field("root", &self.shared.storage.v2)
            .field("threads", &self.workers.len())
            .finish()
    }
}

impl Registry {
    /// Binds `config.listen` and serves `config.root` from `config.threads` background threads.
    /// Returns once the socket listens: a connection made after this returns is served.
    pub fn start(config: RegistryConfig) -> Result<Registry, RegistryError> {
        let storage = Storage::open(&config.root)?;
        let listen = config.listen;
        let listener =
            TcpListener::bind(listen).map_err(|source| RegistryError::Listen { addr: listen, source })?;
        let addr = listener.local_addr().map_err(|source| RegistryError::Listen { addr: listen, source })?;
        let threads = if config.threads == 0 { DEFAULT_THREADS } else { config.threads };
        let shared = Arc::new(Shared {
            storage,
            users: config.users,
            stopping: AtomicBool::new(false),
            pending: Mutex::new(VecDeque::new()),
            available: Condvar::new(),
            failure: Mutex::new(None),
        });
        // Built before the threads: if one cannot be spawned, dropping it stops the others.
        let mut registry = Registry { addr, shared, acceptor: None, workers: Vec::with_capacity(threads) };
        for i in 0..threads {
            let shared = Arc::clone(&registry.shared);
            let worker = thread::Builder::new()
                .name(format!("registry-{i}"))
                .spawn(move || handle_connections(&shared))
                .map_err(RegistryError::Thread)?;
            registry.workers.push(worker);
        }
        let shared = Arc::clone(&registry.shared);
        let acceptor = thread::Builder::new()
            .name("registry-accept".to_owned())
            .spawn(move || accept_connections(&listener, &shared))
            .map_err(RegistryError::Thread)?;
        registry.acceptor = Some(acceptor);
        Ok(registry)
    }

    /// The address it listens on (with the port chosen when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and closes the socket. Answers being sent finish first (each write is
    /// bounded by a timeout); connections not yet taken by a handler are closed unanswered.
    pub fn stop(self) {
        drop(self);
    }

    /// Blocks until the threads end: only after `accept` kept failing, or never.
    fn wait(mut self) -> Result<(), RegistryError> {
        if let Some(acceptor) = self.acceptor.take() {
            // A thread that panicked has ended all the same.
            let _ = acceptor.join();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        let failure = self.shared.failure.lock().unwrap_or_else(PoisonError::into_inner).take();
        match failure {
            Some(source) => Err(RegistryError::Accept { addr: self.addr, source }),
            None => Ok(()),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.shared.stop();
        if let Some(acceptor) = self.acceptor.take() {
            // `accept` returns only for a connection: make one. Should that fail, the thread
            // is left to end at its next connection rather than blocking this drop for ever.
            let woken = TcpStream::connect_timeout(&wake_address(self.addr), Duration::from_secs(1)).is_ok();
            if woken || acceptor.is_finished() {
                let _ = acceptor.join();
            }
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        // Connections still queued are closed with `self.shared`.
    }
}

/// The address to connect to in order to reach a socket bound to `addr`.
fn wake_address(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

/// Serves `config.root` on `config.listen` until the process is killed: the systemd service
/// mode. Returns only when the registry cannot start, or when accepting connections kept
/// failing for 30 seconds (the service manager then restarts it).
pub fn serve_forever(config: RegistryConfig) -> Result<(), RegistryError> {
    Registry::start(config)?.wait()
}

mod auth;
mod probe;
mod routes;
mod server;
mod storage;
#[cfg(test)]
mod tests;

pub use auth::{BCRYPT_COST, Credentials, REALM, Users};
pub use probe::{wait_ready, wait_ready_as};
use routes::*;
use server::*;
use storage::*;
pub use storage::{list_images, manifest_media_type};
