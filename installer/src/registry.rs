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

/// Connections accepted and waiting for a handler; past this, new ones are turned away.
const MAX_PENDING: usize = 512;

/// How long a connection may stay open with no request: keep-alive, or a client that
/// connected and sent nothing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a request head once it started.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one write may make no progress before the client is given up on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a handler waiting on an idle connection looks at the stop flag and the queue.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// The largest request head (request line and headers) read.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// The most headers read.
const MAX_HEADERS: usize = 100;

/// A request body up to this size is read and dropped so that the connection can go on; a
/// larger one ends the connection after the answer.
const MAX_DISCARDED_BODY: u64 = 1 << 20;

/// How long `accept` may keep failing (out of file descriptors...) before the server gives up.
const ACCEPT_GIVE_UP: Duration = Duration::from_secs(30);

/// What a plain HTTP server answers to a TLS handshake, as Go's does: clients that try HTTPS
/// first (docker, containerd, skopeo with TLS verification off) then fall back to HTTP at once
/// instead of waiting for their handshake to time out.
const TLS_REFUSAL: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

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

/// The accepting thread: queues connections for the handlers until stopped.
fn accept_connections(listener: &TcpListener, shared: &Shared) {
    let mut failing_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = listener.accept();
        if shared.stopping() {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                failing_since = None;
                backoff = Duration::from_millis(5);
                let mut pending = shared.pending();
                if pending.len() >= MAX_PENDING {
                    drop(pending);
                    turn_away(stream);
                    continue;
                }
                pending.push_back(stream);
                drop(pending);
                shared.available.notify_one();
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted | io::ErrorKind::WouldBlock
                ) => {}
            // Out of file descriptors or memory: wait for some to be freed, as Go's server does.
            Err(error) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= ACCEPT_GIVE_UP {
                    shared.failure.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(error);
                    shared.stop();
                    return;
                }
                thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Answers a connection the queue has no room for.
fn turn_away(stream: TcpStream) {
    let body = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"too many requests","detail":null}]}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: {JSON}\r\nRetry-After: 1\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let mut stream = &stream;
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
}

/// A handler thread: serves connections from the queue until stopped.
fn handle_connections(shared: &Shared) {
    loop {
        let stream = {
            let mut pending = shared.pending();
            loop {
                if shared.stopping() {
                    return;
                }
                if let Some(stream) = pending.pop_front() {
                    break stream;
                }
                pending = shared.available.wait(pending).unwrap_or_else(PoisonError::into_inner);
            }
        };
        // An I/O error ends that connection only; the client has gone or stalled.
        let _ = serve_connection(shared, &stream);
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct RequestHead {
    method: String,
    target: String,
    /// The client asked to close, or speaks HTTP/1.0 (answered, then closed).
    close: bool,
    range: Option<String>,
    body: RequestBody,
    /// `Expect: 100-continue`: the client sends its body only once told to.
    expect_continue: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum RequestBody {
    None,
    Length(u64),
    /// Chunked, or otherwise of unknown length.
    Unknown,
}

/// Why a request head could not be read.
#[derive(Debug)]
enum HeadError {
    /// The connection ended, failed or stalled: close it without answering.
    Io(io::Error),
    /// Not HTTP/1.x, or over a limit: answer 400 and close.
    Bad(&'static str),
}

impl From<io::Error> for HeadError {
    fn from(error: io::Error) -> Self {
        HeadError::Io(error)
    }
}

/// Answers the requests of one connection until it closes, idles, or others wait.
fn serve_connection(shared: &Shared, stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut reader = BufReader::with_capacity(8 << 10, stream);
    let mut first = true;
    loop {
        if !wait_for_request(shared, &reader, first)? {
            return Ok(());
        }
        if first {
            first = false;
            stream.set_read_timeout(Some(HEAD_TIMEOUT))?;
            // A TLS record starts with 0x16 (handshake); no HTTP method does.
            if reader.fill_buf()?.first() == Some(&0x16) {
                let mut writer = stream;
                writer.write_all(TLS_REFUSAL)?;
                return Ok(());
            }
        }
        let request = match read_head(&mut reader, Instant::now() + HEAD_TIMEOUT) {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(HeadError::Io(error)) => return Err(error),
            Err(HeadError::Bad(why)) => {
                let reply = Reply::new(400, Body::Bytes(format!("{why}\n").into_bytes()))
                    .header("Content-Type", "text/plain; charset=utf-8");
                write_reply(stream, reply, false, true)?;
                return Ok(());
            }
        };
        let mut close = request.close;
        let mut unread_body = false;
        match request.body {
            RequestBody::None => {}
            // Every request with a body is refused: answer without asking for the body.
            _ if request.expect_continue => {
                close = true;
                unread_body = true;
            }
            RequestBody::Length(len) if len <= MAX_DISCARDED_BODY => {
                let discarded = io::copy(&mut (&mut reader).take(len), &mut io::sink())?;
                if discarded < len {
                    return Ok(());
                }
            }
            RequestBody::Length(_) | RequestBody::Unknown => {
                close = true;
                unread_body = true;
            }
        }
        let head = request.method == "HEAD";
        let reply = handle(&shared.storage, &request.method, &request.target, request.range.as_deref());
        // Keep-alive only while no other connection waits for a handler.
        close = close || shared.stopping() || shared.others_waiting();
        write_reply(stream, reply, head, close)?;
        if close {
            if unread_body {
                linger(stream);
            }
            return Ok(());
        }
    }
}

/// Waits until the connection has bytes to read. False when it closed, idled out, the server
/// stops, or another connection waits for a handler (for a new connection, once it has sent
/// nothing for a second).
fn wait_for_request(shared: &Shared, reader: &BufReader<&TcpStream>, first: bool) -> io::Result<bool> {
    if !reader.buffer().is_empty() {
        return Ok(true);
    }
    let stream = reader.get_ref();
    stream.set_read_timeout(Some(IDLE_POLL))?;
    let started = Instant::now();
    let mut byte = [0u8; 1];
    loop {
        match stream.peek(&mut byte) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
        let waited = started.elapsed();
        let yield_to_others = !first || waited >= Duration::from_secs(1);
        if shared.stopping() || waited >= IDLE_TIMEOUT || (yield_to_others && shared.others_waiting()) {
            return Ok(false);
        }
    }
}

/// Reads and parses a request head; None when the connection closed before one began.
fn read_head(
    reader: &mut BufReader<&TcpStream>,
    deadline: Instant,
) -> Result<Option<RequestHead>, HeadError> {
    let mut budget = MAX_HEAD_BYTES;
    // RFC 9112: a server ignores at least one empty line before the request line.
    let mut line = match read_line(reader, deadline, &mut budget)? {
        Some(line) if line.is_empty() => match read_line(reader, deadline, &mut budget)? {
            Some(line) => line,
            None => return Ok(None),
        },
        Some(line) => line,
        None => return Ok(None),
    };
    let (method, target, http10) = parse_request_line(&line)?;
    let mut head = RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        close: http10,
        range: None,
        body: RequestBody::None,
        expect_continue: false,
    };
    let mut headers = 0;
    loop {
        line = read_line(reader, deadline, &mut budget)?
            .ok_or(HeadError::Bad("the request head is incomplete"))?;
        if line.is_empty() {
            return Ok(Some(head));
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Err(HeadError::Bad("too many headers"));
        }
        apply_header(&mut head, &line, http10)?;
    }
}

/// One line without its CRLF; None at end of stream before any byte of it.
fn read_line(
    reader: &mut BufReader<&TcpStream>,
    deadline: Instant,
    budget: &mut usize,
) -> Result<Option<String>, HeadError> {
    let mut line = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HeadError::Io(io::ErrorKind::TimedOut.into()));
        }
        reader.get_ref().set_read_timeout(Some(remaining))?;
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(HeadError::Io(error)),
        };
        if available.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(HeadError::Bad("the request head is incomplete"))
            };
        }
        let (taken, done) = match available.iter().position(|&b| b == b'\n') {
            Some(newline) => (newline + 1, true),
            None => (available.len(), false),
        };
        if line.len() + taken > *budget {
            return Err(HeadError::Bad("the request head is too large"));
        }
        line.extend_from_slice(&available[..taken]);
        reader.consume(taken);
        if done {
            *budget -= line.len();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return String::from_utf8(line)
                .map(Some)
                .map_err(|_| HeadError::Bad("the request head is not text"));
        }
    }
}

/// `METHOD TARGET HTTP/1.x` → (method, target, whether HTTP/1.0).
fn parse_request_line(line: &str) -> Result<(&str, &str, bool), HeadError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Bad("the request line is not 'METHOD TARGET HTTP/1.1'"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HeadError::Bad("the request method is not valid"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HeadError::Bad("the request target is not a path"));
    }
    match version {
        "HTTP/1.1" => Ok((method, target, false)),
        "HTTP/1.0" => Ok((method, target, true)),
        _ => Err(HeadError::Bad("only HTTP/1.0 and HTTP/1.1 are served")),
    }
}

/// Records what a header line means for the request.
fn apply_header(head: &mut RequestHead, line: &str, http10: bool) -> Result<(), HeadError> {
    let Some((name, value)) = line.split_once(':') else {
        return Err(HeadError::Bad("a header line has no ':'"));
    };
    if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(HeadError::Bad("a header name is not valid"));
    }
    let value = value.trim_matches([' ', '\t']);
    if name.eq_ignore_ascii_case("connection") {
        for option in value.split(',').map(str::trim) {
            if option.eq_ignore_ascii_case("close") {
                head.close = true;
            } else if option.eq_ignore_ascii_case("keep-alive") && http10 {
                // HTTP/1.0 keep-alive is not offered: the answer closes.
            }
        }
    } else if name.eq_ignore_ascii_case("content-length") {
        let len = value
            .parse::<u64>()
            .ok()
            .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(HeadError::Bad("Content-Length is not a number"))?;
        head.body = match head.body {
            RequestBody::None if len == 0 => RequestBody::None,
            RequestBody::None => RequestBody::Length(len),
            RequestBody::Length(previous) if previous == len => RequestBody::Length(len),
            _ => return Err(HeadError::Bad("Content-Length is given twice")),
        };
    } else if name.eq_ignore_ascii_case("transfer-encoding") {
        head.body = RequestBody::Unknown;
    } else if name.eq_ignore_ascii_case("expect") {
        head.expect_continue = value.eq_ignore_ascii_case("100-continue");
    } else if name.eq_ignore_ascii_case("range") {
        head.range = Some(value.to_owned());
    }
    Ok(())
}

/// After answering a request whose body was not read: stop sending, then read (and drop)
/// what the client still sends for a moment, so that closing does not reset the connection
/// before the client has read the answer.
fn linger(stream: &TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = io::copy(&mut stream.take(MAX_DISCARDED_BODY), &mut io::sink());
}

/// Writes a reply with its Content-Length (never chunked); for HEAD, no body is read.
fn write_reply(stream: &TcpStream, reply: Reply, head: bool, close: bool) -> io::Result<()> {
    let len = match &reply.body {
        Body::Empty => 0,
        Body::Bytes(bytes) => bytes.len() as u64,
        Body::File { len, .. } | Body::Length(len) => *len,
    };
    let mut out = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    for (name, value) in &reply.headers {
        // Values are built here from validated parts; a control character would split the head.
        if !value.bytes().any(|b| b.is_ascii_control()) {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str(&format!("Content-Length: {len}\r\n"));
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut writer = stream;
    match reply.body {
        Body::Bytes(bytes) if !head => {
            let mut all = out.into_bytes();
            all.extend_from_slice(&bytes);
            writer.write_all(&all)
        }
        Body::File { file, len } if !head => {
            writer.write_all(out.as_bytes())?;
            // Straight from the file to the socket (sendfile or splice where the kernel can).
            let sent = io::copy(&mut file.take(len), &mut writer)?;
            if sent < len {
                // The file shrank under us: the client must not take the short body as whole.
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(())
        }
        _ => writer.write_all(out.as_bytes()),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// What a request is answered with, before it becomes an HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// `len` bytes of `file` from its current position.
    File {
        file: File,
        len: u64,
    },
    /// The length of a body not sent (HEAD).
    Length(u64),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Empty => write!(f, "Empty"),
            Body::Bytes(bytes) => write!(f, "Bytes({})", String::from_utf8_lossy(bytes)),
            Body::File { len, .. } => write!(f, "File({len})"),
            Body::Length(len) => write!(f, "Length({len})"),
        }
    }
}

impl Reply {
    fn new(status: u16, body: Body) -> Reply {
        Reply { status, headers: vec![("Docker-Distribution-API-Version", "registry/2.0".to_owned())], body }
    }

    fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply::new(status, Body::Bytes(value.to_string().into_bytes())).header("Content-Type", JSON)
    }

    /// Distribution's error body: `{"errors":[{"code","message","detail"}]}`.
    fn error(status: u16, code: &str, message: &str, detail: serde_json::Value) -> Reply {
        Reply::json(
            status,
            &serde_json::json!({"errors": [{"code": code, "message": message, "detail": detail}]}),
        )
    }

    fn internal(what: &str) -> Reply {
        Reply::error(500, "UNKNOWN", "unknown error", serde_json::Value::String(what.to_owned()))
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    #[cfg(test)]
    fn header_value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The routes of the distribution API this server knows.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Base,
    Catalog,
    Tags { name: &'a str },
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    Upload,
}

/// Splits a decoded path (no query) into a route; None for paths outside the API.
fn route(path: &str) -> Option<Route<'_>> {
    let rest = match path {
        "/v2" | "/v2/" => return Some(Route::Base),
        _ => path.strip_prefix("/v2/")?,
    };
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    // The name is everything before the route's fixed tail; references and digests have no
    // '/', so splitting at the last '/' is unambiguous even for a repository named "x/blobs".
    let (before, last) = rest.rsplit_once('/')?;
    if before.ends_with("/blobs/uploads") || (last == "uploads" && before.ends_with("/blobs")) {
        return Some(Route::Upload);
    }
    if let Some(name) = before.strip_suffix("/manifests") {
        return Some(Route::Manifest { name, reference: last });
    }
    if let Some(name) = before.strip_suffix("/blobs") {
        return Some(Route::Blob { name, digest: last });
    }
    if last == "list"
        && let Some(name) = before.strip_suffix("/tags")
    {
        return Some(Route::Tags { name });
    }
    None
}

/// Answers one request.
fn handle(storage: &Storage, method: &str, url: &str, range: Option<&str>) -> Reply {
    let (raw_path, query) = url.split_once('?').unwrap_or((url, ""));
    let Some(path) = percent_decode(raw_path) else {
        return Reply::error(400, "NAME_INVALID", "invalid repository name", serde_json::Value::Null);
    };
    let Some(route) = route(&path) else {
        return not_found();
    };
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Reply::error(
                405,
                "UNSUPPORTED",
                "The operation is unsupported.",
                serde_json::Value::Null,
            )
            .header("Allow", "GET, HEAD");
        }
    };
    let result = match route {
        Route::Base => Ok(Reply::json(200, &serde_json::json!({}))),
        Route::Upload => {
            return Reply::error(
                405,
                "UNSUPPORTED",
                "The operation is unsupported.",
                serde_json::Value::Null,
            )
            .header("Allow", "GET, HEAD");
        }
        Route::Catalog => catalog(storage, query),
        Route::Tags { name } => tags(storage, name, query),
        Route::Manifest { name, reference } => manifest(storage, name, reference),
        Route::Blob { name, digest } => blob(storage, name, digest, head, range),
    };
    match result {
        Ok(reply) => reply,
        Err(error) => Reply::internal(&error.to_string()),
    }
}

fn not_found() -> Reply {
    Reply::new(404, Body::Bytes(b"404 page not found\n".to_vec()))
        .header("Content-Type", "text/plain; charset=utf-8")
}

fn name_invalid(name: &str) -> Reply {
    Reply::error(400, "NAME_INVALID", "invalid repository name", serde_json::json!({"name": name}))
}

fn name_unknown(name: &str) -> Reply {
    Reply::error(
        404,
        "NAME_UNKNOWN",
        "repository name not known to registry",
        serde_json::json!({"name": name}),
    )
}

fn digest_invalid(digest: &str) -> Reply {
    Reply::error(
        400,
        "DIGEST_INVALID",
        "provided digest did not match uploaded content",
        serde_json::json!({"digest": digest}),
    )
}

fn catalog(storage: &Storage, query: &str) -> Result<Reply, RegistryError> {
    let names = storage.repositories()?;
    let (page, next) = paginate(&names, query);
    let mut reply = Reply::json(200, &serde_json::json!({"repositories": page}));
    if let Some((last, n)) = next {
        reply = reply.header("Link", format!("</v2/_catalog?last={last}&n={n}>; rel=\"next\""));
    }
    Ok(reply)
}

fn tags(storage: &Storage, name: &str, query: &str) -> Result<Reply, RegistryError> {
    if !valid_name(name) {
        return Ok(name_invalid(name));
    }
    if !storage.has_repository(name) {
        return Ok(name_unknown(name));
    }
    let tags = storage.tags(name)?;
    let (page, next) = paginate(&tags, query);
    let mut reply = Reply::json(200, &serde_json::json!({"name": name, "tags": page}));
    if let Some((last, n)) = next {
        reply = reply.header("Link", format!("</v2/{name}/tags/list?last={last}&n={n}>; rel=\"next\""));
    }
    Ok(reply)
}

/// The page of `items` (sorted) that `n` and `last` in `query` ask for, and the next page's
/// `(last, n)` when there is one.
fn paginate<'a>(items: &'a [String], query: &str) -> (&'a [String], Option<(&'a str, usize)>) {
    let mut n = None;
    let mut last = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("n", value)) => n = value.parse::<usize>().ok(),
            Some(("last", value)) => last = percent_decode(value),
            _ => {}
        }
    }
    let start = match &last {
        Some(last) => items.partition_point(|item| item.as_str() <= last.as_str()),
        None => 0,
    };
    let rest = &items[start..];
    match n {
        Some(n) if n < rest.len() => {
            let page = &rest[..n];
            (page, page.last().map(|last| (last.as_str(), n)))
        }
        _ => (rest, None),
    }
}

fn manifest(storage: &Storage, name: &str, reference: &str) -> Result<Reply, RegistryError> {
    if !valid_name(name) {
        return Ok(name_invalid(name));
    }
    let unknown = |detail| Reply::error(404, "MANIFEST_UNKNOWN", "manifest unknown", detail);
    let digest = if let Some(digest) = Digest::parse(reference) {
        if !storage.has_repository(name) {
            return Ok(name_unknown(name));
        }
        if !storage.has_manifest(name, &digest)? {
            return Ok(unknown(serde_json::json!({"Name": name, "Revision": reference})));
        }
        digest
    } else if valid_tag(reference) {
        if !storage.has_repository(name) {
            return Ok(name_unknown(name));
        }
        match storage.tag(name, reference)? {
            Some(digest) => digest,
            None => return Ok(unknown(serde_json::json!({"Tag": reference}))),
        }
    } else if reference.contains(':') {
        return Ok(digest_invalid(reference));
    } else {
        return Ok(unknown(serde_json::json!({"Tag": reference})));
    };
    let Some(bytes) = storage.read_manifest(&digest)? else {
        return Ok(unknown(serde_json::json!({"Name": name, "Revision": digest.to_string()})));
    };
    let path = storage.blob_path(&digest);
    let media_type = manifest_media_type(&bytes).ok_or_else(|| RegistryError::Corrupt {
        path: path.clone(),
        reason: "the manifest is neither an image manifest nor an index".to_owned(),
    })?;
    Ok(Reply::new(200, Body::Bytes(bytes))
        .header("Content-Type", media_type)
        .header("Docker-Content-Digest", digest.to_string())
        .header("ETag", format!("\"{digest}\"")))
}

fn blob(
    storage: &Storage,
    name: &str,
    digest: &str,
    head: bool,
    range: Option<&str>,
) -> Result<Reply, RegistryError> {
    if !valid_name(name) {
        return Ok(name_invalid(name));
    }
    let Some(digest) = Digest::parse(digest) else {
        return Ok(digest_invalid(digest));
    };
    if !storage.has_repository(name) {
        return Ok(name_unknown(name));
    }
    let unknown = || {
        Reply::error(404, "BLOB_UNKNOWN", "blob unknown to registry", serde_json::json!(digest.to_string()))
    };
    if !storage.has_blob(name, &digest)? {
        return Ok(unknown());
    }
    let path = storage.blob_path(&digest);
    let headers = |reply: Reply| {
        reply
            .header("Content-Type", "application/octet-stream")
            .header("Docker-Content-Digest", digest.to_string())
            .header("ETag", format!("\"{digest}\""))
            .header("Accept-Ranges", "bytes")
            .header("Cache-Control", "max-age=31536000")
    };
    if head {
        let size = match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => meta.len(),
            Ok(_) => return Ok(unknown()),
            Err(error) if missing(&error) => return Ok(unknown()),
            Err(source) => return Err(RegistryError::Io { action: "read", path, source }),
        };
        return Ok(headers(Reply::new(200, Body::Length(size))));
    }
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if missing(&error) => return Ok(unknown()),
        Err(source) => return Err(RegistryError::Io { action: "open", path, source }),
    };
    let size = match file.metadata() {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => return Ok(unknown()),
        Err(source) => return Err(RegistryError::Io { action: "read", path, source }),
    };
    match range.map(|range| parse_range(range, size)) {
        None | Some(ByteRange::Full) => Ok(headers(Reply::new(200, Body::File { file, len: size }))),
        Some(ByteRange::Part { start, end }) => {
            file.seek(SeekFrom::Start(start)).map_err(|source| RegistryError::Io {
                action: "read",
                path,
                source,
            })?;
            Ok(headers(Reply::new(206, Body::File { file, len: end - start + 1 }))
                .header("Content-Range", format!("bytes {start}-{end}/{size}")))
        }
        Some(ByteRange::Unsatisfiable) => Ok(Reply::new(416, Body::Empty)
            .header("Content-Range", format!("bytes */{size}"))
            .header("Docker-Content-Digest", digest.to_string())),
    }
}

/// A `Range` header's meaning for a body of known size.
#[derive(Debug, PartialEq, Eq)]
enum ByteRange {
    /// No usable single range: send everything (RFC 9110 lets a server ignore a range).
    Full,
    /// Bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// A well-formed range that starts past the end.
    Unsatisfiable,
}

fn parse_range(value: &str, size: u64) -> ByteRange {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let number = |s: &str| if s.bytes().all(|b| b.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    match (first.is_empty(), last.is_empty()) {
        // "-N": the last N bytes.
        (true, false) => match number(last) {
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if size == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Part { start: size - n.min(size), end: size - 1 },
            None => ByteRange::Full,
        },
        (false, _) => {
            let Some(start) = number(first) else { return ByteRange::Full };
            let end = if last.is_empty() { Some(u64::MAX) } else { number(last) };
            match end {
                None => ByteRange::Full,
                Some(end) if end < start => ByteRange::Full,
                Some(_) if start >= size => ByteRange::Unsatisfiable,
                Some(end) => ByteRange::Part { start, end: end.min(size - 1) },
            }
        }
        (true, true) => ByteRange::Full,
    }
}

/// A validated `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Digest {
    hex: String,
}

impl Digest {
    fn parse(s: &str) -> Option<Digest> {
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
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('/').all(valid_component)
}

fn valid_component(component: &str) -> bool {
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
fn valid_tag(tag: &str) -> bool {
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
fn percent_decode(s: &str) -> Option<String> {
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
fn valid_media_type(media_type: &str) -> bool {
    let token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b));
    media_type.len() <= 255 && media_type.split_once('/').is_some_and(|(t, sub)| token(t) && token(sub))
}

fn missing(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

/// The storage directory; every path it builds comes from a validated name, tag or digest.
#[derive(Debug)]
struct Storage {
    /// ROOT/docker/registry/v2
    v2: PathBuf,
}

impl Storage {
    fn open(root: &Path) -> Result<Storage, RegistryError> {
        let v2 = root.join(STORAGE_PREFIX);
        match fs::metadata(&v2) {
            Ok(meta) if meta.is_dir() => Ok(Storage { v2 }),
            Ok(_) => Err(RegistryError::NotAStorage { path: root.to_path_buf() }),
            Err(error) if missing(&error) => Err(RegistryError::NotAStorage { path: root.to_path_buf() }),
            Err(source) => Err(RegistryError::Io { action: "read", path: v2, source }),
        }
    }

    fn repository(&self, name: &str) -> PathBuf {
        debug_assert!(valid_name(name));
        self.v2.join("repositories").join(name)
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.v2.join("blobs/sha256").join(&digest.hex[..2]).join(&digest.hex).join("data")
    }

    /// A repository is a directory with `_manifests` or `_layers` in it.
    fn has_repository(&self, name: &str) -> bool {
        let repository = self.repository(name);
        repository.join("_manifests").is_dir() || repository.join("_layers").is_dir()
    }

    /// The digest a link file names; None when it does not exist.
    fn read_link(path: &Path) -> Result<Option<Digest>, RegistryError> {
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
    fn linked(path: &Path, digest: &Digest) -> Result<bool, RegistryError> {
        Ok(Self::read_link(path)?.is_some_and(|linked| linked == *digest))
    }

    fn revision_link(&self, name: &str, digest: &Digest) -> PathBuf {
        self.repository(name).join("_manifests/revisions/sha256").join(&digest.hex).join("link")
    }

    fn layer_link(&self, name: &str, digest: &Digest) -> PathBuf {
        self.repository(name).join("_layers/sha256").join(&digest.hex).join("link")
    }

    /// A manifest of the repository: a revision link, or (as distribution also looks) a layer link.
    fn has_manifest(&self, name: &str, digest: &Digest) -> Result<bool, RegistryError> {
        Ok(Self::linked(&self.revision_link(name, digest), digest)?
            || Self::linked(&self.layer_link(name, digest), digest)?)
    }

    /// A blob of the repository: a layer link (layers and configs), or a revision link.
    fn has_blob(&self, name: &str, digest: &Digest) -> Result<bool, RegistryError> {
        Ok(Self::linked(&self.layer_link(name, digest), digest)?
            || Self::linked(&self.revision_link(name, digest), digest)?)
    }

    /// The digest a tag points at.
    fn tag(&self, name: &str, tag: &str) -> Result<Option<Digest>, RegistryError> {
        debug_assert!(valid_tag(tag));
        Self::read_link(&self.repository(name).join("_manifests/tags").join(tag).join("current/link"))
    }

    /// A manifest's bytes, checked against its digest; None when the blob is absent.
    fn read_manifest(&self, digest: &Digest) -> Result<Option<Vec<u8>>, RegistryError> {
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
    fn tags(&self, name: &str) -> Result<Vec<String>, RegistryError> {
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
    fn repositories(&self) -> Result<Vec<String>, RegistryError> {
        let mut names = Vec::new();
        walk_repositories(&self.v2.join("repositories"), "", 0, &mut names)?;
        names.sort();
        Ok(names)
    }
}

struct DirEntry {
    name: String,
    is_dir: bool,
}

/// The entries of a directory (not following symlinks), sorted by name; empty when it is
/// missing. Names that are not UTF-8 are skipped: no valid name or tag is.
fn read_dir_sorted(dir: &Path) -> Result<Vec<DirEntry>, RegistryError> {
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
fn walk_repositories(
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

fn hex(bytes: &[u8]) -> String {
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

/// Every manifest media type, for the `Accept` header of a probe.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Polls the registry on `addr` until `GET /v2/` answers (200, or 401 from a registry that
/// wants credentials) and, when `probe` is given as `(repository, tag)`, until `HEAD` of that
/// manifest answers 200. `host_header` is sent as `Host` (such as `sea.hub:5000`). Works with
/// any distribution registry, not only this one.
pub fn wait_ready(
    addr: SocketAddr,
    host_header: &str,
    probe: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<(), RegistryError> {
    if let Some((repository, tag)) = probe
        && !(valid_name(repository) && valid_tag(tag))
    {
        return Err(RegistryError::InvalidProbe { repository: repository.to_owned(), tag: tag.to_owned() });
    }
    let start = Instant::now();
    let deadline = start + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        let attempt_timeout = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(100), Duration::from_secs(2));
        let last = match ready_once(addr, host_header, probe, attempt_timeout) {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(RegistryError::NotReady { addr, waited: now - start, last });
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// One readiness check; Err: what it saw, for the user.
fn ready_once(
    addr: SocketAddr,
    host: &str,
    probe: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<(), String> {
    let status = http_status(addr, host, "GET", "/v2/", None, timeout)?;
    if status != 200 && status != 401 {
        return Err(format!("'/v2/' answered HTTP {status}"));
    }
    if let Some((repository, tag)) = probe {
        let path = format!("/v2/{repository}/manifests/{tag}");
        let status = http_status(addr, host, "HEAD", &path, Some(ACCEPT_MANIFESTS), timeout)?;
        if status != 200 {
            return Err(format!("'{path}' answered HTTP {status}"));
        }
    }
    Ok(())
}

/// Sends one HTTP/1.1 request and returns the response's status code.
fn http_status(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    accept: Option<&str>,
    timeout: Duration,
) -> Result<u16, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("could not connect: {e}"))?;
    let io = |e: io::Error| format!("'{path}' did not answer: {e}");
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kubeferry\r\n{accept}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    // Only the status line is needed: "HTTP/1.1 200 OK\r\n".
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 4096 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    match (words.next(), words.next().and_then(|code| code.parse::<u16>().ok())) {
        (Some(version), Some(status)) if version.starts_with("HTTP/") => Ok(status),
        _ if line.is_empty() => Err(format!("'{path}' closed the connection without answering")),
        _ => Err(format!("'{path}' did not answer HTTP: '{}'", line.chars().take(80).collect::<String>())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const SECRET: &[u8] = b"TOP-SECRET content";
    const HEX_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn routes_split_names_with_slashes_at_the_fixed_tail() {
        assert_eq!(route("/v2/"), Some(Route::Base));
        assert_eq!(route("/v2"), Some(Route::Base));
        assert_eq!(route("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(
            route("/v2/library/nginx/manifests/v1.2"),
            Some(Route::Manifest { name: "library/nginx", reference: "v1.2" })
        );
        assert_eq!(
            route("/v2/sea.hub/kube-apiserver/manifests/sha256:abc"),
            Some(Route::Manifest { name: "sea.hub/kube-apiserver", reference: "sha256:abc" })
        );
        assert_eq!(
            route("/v2/a/b/c/blobs/sha256:x"),
            Some(Route::Blob { name: "a/b/c", digest: "sha256:x" })
        );
        // A repository may itself be called "blobs" or "manifests".
        assert_eq!(
            route("/v2/x/blobs/blobs/sha256:x"),
            Some(Route::Blob { name: "x/blobs", digest: "sha256:x" })
        );
        assert_eq!(
            route("/v2/manifests/manifests/latest"),
            Some(Route::Manifest { name: "manifests", reference: "latest" })
        );
        assert_eq!(route("/v2/library/app/tags/list"), Some(Route::Tags { name: "library/app" }));
        assert_eq!(route("/v2/library/app/blobs/uploads/"), Some(Route::Upload));
        assert_eq!(route("/v2/library/app/blobs/uploads/1234-abcd"), Some(Route::Upload));
        assert_eq!(route("/v2/library/app"), None);
        assert_eq!(route("/v2/library/app/manifests/v1/extra"), None);
        assert_eq!(route("/v1/library/app/manifests/v1"), None);
        assert_eq!(route("/v2x/app/manifests/v1"), None);
        assert_eq!(route("/"), None);
    }

    #[test]
    fn names_follow_the_distribution_grammar() {
        for good in ["library/nginx", "a", "sea.hub/kube-apiserver", "a__b/c_d/e--f/g.h", "0/1/2", "a---b"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            "/",
            "/etc",
            "a/",
            "a//b",
            ".",
            "..",
            "../x",
            "a/../b",
            "a/./b",
            ".a",
            "a.",
            "a..b",
            "a.-b",
            "Library/nginx",
            "a b",
            "a%2fb",
            "_manifests",
            "a/_layers",
            "a___b",
            "a\0b",
            "é",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name(&"a".repeat(255)));
        assert!(!valid_name(&"a".repeat(256)));
    }

    #[test]
    fn tags_and_digests_are_checked() {
        for good in ["v1", "latest", "V1.2.3-rc_1", "_x", &"a".repeat(128)] {
            assert!(valid_tag(good), "{good}");
        }
        for bad in ["", ".", "..", "-x", ".hidden", "a/b", "a:b", &"a".repeat(129)] {
            assert!(!valid_tag(bad), "{bad}");
        }
        assert!(Digest::parse(&format!("sha256:{HEX_A}")).is_some());
        for bad in [
            "sha256:".to_owned(),
            format!("sha256:{}", HEX_A.to_uppercase()),
            format!("sha256:{}", &HEX_A[1..]),
            format!("sha256:{HEX_A}a"),
            format!("sha512:{HEX_A}"),
            format!("sha256:../{}", &HEX_A[3..]),
            HEX_A.to_owned(),
        ] {
            assert!(Digest::parse(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn percent_escapes_decode_strictly() {
        assert_eq!(percent_decode("/v2/a%2Fb").as_deref(), Some("/v2/a/b"));
        assert_eq!(percent_decode("%2e%2E").as_deref(), Some(".."));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%00"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn media_types_come_from_the_manifest_or_its_shape() {
        let typed = |t: &str| format!(r#"{{"schemaVersion":2,"mediaType":"{t}","config":{{}},"layers":[]}}"#);
        for t in [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST] {
            assert_eq!(manifest_media_type(typed(t).as_bytes()).as_deref(), Some(t));
        }
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).as_deref(),
            Some(OCI_MANIFEST)
        );
        assert_eq!(manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(), Some(OCI_INDEX));
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":1,"name":"a","fsLayers":[],"signatures":[]}"#)
                .as_deref(),
            Some(DOCKER_MANIFEST_V1_SIGNED)
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":1,"name":"a","fsLayers":[]}"#).as_deref(),
            Some(DOCKER_MANIFEST_V1)
        );
        // A mediaType that could not be a header value falls back to the shape.
        assert_eq!(
            manifest_media_type(b"{\"mediaType\":\"a/b\\r\\nX: y\",\"manifests\":[]}").as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(manifest_media_type(br#"{"schemaVersion":2}"#), None);
        assert_eq!(manifest_media_type(b"[]"), None);
        assert_eq!(manifest_media_type(b"not json"), None);
    }

    #[test]
    fn ranges_are_single_and_clamped() {
        assert_eq!(parse_range("bytes=0-9", 100), ByteRange::Part { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=90-", 100), ByteRange::Part { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=90-1000", 100), ByteRange::Part { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-10", 100), ByteRange::Part { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-1000", 100), ByteRange::Part { start: 0, end: 99 });
        assert_eq!(parse_range("bytes=100-", 100), ByteRange::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), ByteRange::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), ByteRange::Unsatisfiable);
        for ignored in ["bytes=0-1,5-6", "bytes=9-1", "items=0-1", "bytes=a-b", "bytes=-", "bytes=+1-2"] {
            assert_eq!(parse_range(ignored, 100), ByteRange::Full, "{ignored}");
        }
    }

    #[test]
    fn pagination_follows_last_and_n() {
        let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(paginate(&items, ""), (&items[..], None));
        assert_eq!(paginate(&items, "n=2"), (&items[..2], Some(("b", 2))));
        assert_eq!(paginate(&items, "n=2&last=b"), (&items[2..], None));
        assert_eq!(paginate(&items, "last=c"), (&items[3..], None));
        assert_eq!(paginate(&items, "last=z"), (&items[4..], None));
    }

    /// A storage with one repository, `library/app:v1` (a manifest and one layer), and a
    /// secret beside and above it that no request may read.
    struct Fixture {
        _dir: tempfile::TempDir,
        storage: Storage,
        manifest: String,
        layer: String,
    }

    fn put_blob(v2: &Path, bytes: &[u8]) -> Digest {
        let digest = Digest { hex: hex(&Sha256::digest(bytes)) };
        let dir = v2.join("blobs/sha256").join(&digest.hex[..2]).join(&digest.hex);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("data"), bytes).unwrap();
        digest
    }

    fn put_link(path: &Path, digest: &Digest) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, digest.to_string()).unwrap();
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("registry");
        let v2 = root.join(STORAGE_PREFIX);
        fs::create_dir_all(&v2).unwrap();
        fs::write(dir.path().join("secret"), SECRET).unwrap();
        fs::write(v2.join("secret"), SECRET).unwrap();
        let layer = put_blob(&v2, b"layer bytes 0123456789");
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{}},"layers":[{{"digest":"{layer}"}}]}}"#
        );
        let manifest = put_blob(&v2, manifest.as_bytes());
        let repo = v2.join("repositories/library/app");
        put_link(&repo.join("_layers/sha256").join(&layer.hex).join("link"), &layer);
        put_link(&repo.join("_manifests/revisions/sha256").join(&manifest.hex).join("link"), &manifest);
        put_link(&repo.join("_manifests/tags/v1/current/link"), &manifest);
        fs::create_dir_all(repo.join("_uploads")).unwrap();
        let storage = Storage::open(&root).unwrap();
        Fixture { _dir: dir, storage, manifest: manifest.to_string(), layer: layer.to_string() }
    }

    fn get(f: &Fixture, url: &str) -> Reply {
        handle(&f.storage, "GET", url, None)
    }

    fn code(reply: &Reply) -> String {
        match &reply.body {
            Body::Bytes(bytes) => {
                let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
                value["errors"][0]["code"].as_str().unwrap_or_default().to_owned()
            }
            _ => String::new(),
        }
    }

    fn body(reply: Reply) -> Vec<u8> {
        match reply.body {
            Body::Bytes(bytes) => bytes,
            Body::File { file, len } => {
                let mut out = Vec::new();
                file.take(len).read_to_end(&mut out).unwrap();
                out
            }
            Body::Empty | Body::Length(_) => Vec::new(),
        }
    }

    #[test]
    fn serves_the_fixture() {
        let f = fixture();
        let base = get(&f, "/v2/");
        assert_eq!(
            (base.status, base.header_value("Docker-Distribution-API-Version")),
            (200, Some("registry/2.0"))
        );
        let by_tag = get(&f, "/v2/library/app/manifests/v1");
        assert_eq!(by_tag.status, 200);
        assert_eq!(by_tag.header_value("Content-Type"), Some(OCI_MANIFEST));
        assert_eq!(by_tag.header_value("Docker-Content-Digest"), Some(f.manifest.as_str()));
        let by_digest = get(&f, &format!("/v2/library/app/manifests/{}", f.manifest));
        assert_eq!(body(by_digest), body(by_tag));
        let layer = get(&f, &format!("/v2/library/app/blobs/{}", f.layer));
        assert_eq!(
            (layer.status, layer.header_value("Content-Type")),
            (200, Some("application/octet-stream"))
        );
        assert_eq!(body(layer), b"layer bytes 0123456789");
        let head = handle(&f.storage, "HEAD", &format!("/v2/library/app/blobs/{}", f.layer), None);
        assert!(matches!(head.body, Body::Length(22)), "{head:?}");
        let part =
            handle(&f.storage, "GET", &format!("/v2/library/app/blobs/{}", f.layer), Some("bytes=6-10"));
        assert_eq!((part.status, part.header_value("Content-Range")), (206, Some("bytes 6-10/22")));
        assert_eq!(body(part), b"bytes");
        assert_eq!(body(get(&f, "/v2/_catalog")), br#"{"repositories":["library/app"]}"#);
        assert_eq!(body(get(&f, "/v2/library/app/tags/list")), br#"{"name":"library/app","tags":["v1"]}"#);
    }

    #[test]
    fn unknown_and_invalid_requests_get_distribution_errors() {
        let f = fixture();
        let cases = [
            ("/v2/library/app/manifests/v2", 404, "MANIFEST_UNKNOWN"),
            (&format!("/v2/library/app/manifests/sha256:{HEX_A}"), 404, "MANIFEST_UNKNOWN"),
            ("/v2/library/app/manifests/sha256:bad", 400, "DIGEST_INVALID"),
            ("/v2/library/nope/manifests/v1", 404, "NAME_UNKNOWN"),
            ("/v2/library/nope/tags/list", 404, "NAME_UNKNOWN"),
            ("/v2/Library/app/manifests/v1", 400, "NAME_INVALID"),
            (&format!("/v2/library/app/blobs/sha256:{HEX_A}"), 404, "BLOB_UNKNOWN"),
            ("/v2/library/app/blobs/sha256:bad", 400, "DIGEST_INVALID"),
        ];
        for (url, status, expected) in cases {
            let reply = get(&f, url);
            assert_eq!((reply.status, code(&reply)), (status, expected.to_owned()), "{url}");
        }
        let refused = handle(&f.storage, "PUT", "/v2/library/app/manifests/v1", None);
        assert_eq!((refused.status, code(&refused)), (405, "UNSUPPORTED".to_owned()));
        let upload = handle(&f.storage, "POST", "/v2/library/app/blobs/uploads/", None);
        assert_eq!((upload.status, code(&upload)), (405, "UNSUPPORTED".to_owned()));
        for method in ["DELETE", "PATCH"] {
            assert_eq!(handle(&f.storage, method, "/v2/library/app/blobs/uploads/x", None).status, 405);
        }
        assert_eq!(get(&f, "/").status, 404);
        // A manifest through the blob endpoint: served, from the repository that links it.
        let manifest_blob = get(&f, &format!("/v2/library/app/blobs/{}", f.manifest));
        assert_eq!(manifest_blob.header_value("Docker-Content-Digest"), Some(f.manifest.as_str()));
        let unsatisfiable =
            handle(&f.storage, "GET", &format!("/v2/library/app/blobs/{}", f.layer), Some("bytes=22-"));
        assert_eq!(unsatisfiable.status, 416);
    }

    #[test]
    fn no_request_reads_outside_the_storage() {
        let f = fixture();
        let secret_digest = "sha256:".to_owned() + &hex(&Sha256::digest(SECRET));
        // The secret is even stored as a blob, but no repository links it.
        put_blob(&f.storage.v2, SECRET);
        let attempts = [
            format!("/v2/../../etc/passwd/blobs/{secret_digest}"),
            format!("/v2/%2e%2e/%2e%2e/secret/blobs/{secret_digest}"),
            format!("/v2/%2E%2E%2F%2E%2E/blobs/{secret_digest}"),
            format!("/v2//etc/passwd/blobs/{secret_digest}"),
            format!("/v2/%2fetc/passwd/blobs/{secret_digest}"),
            format!("/v2/library/app/../../../blobs/{secret_digest}"),
            format!("/v2/library/app/blobs/{secret_digest}"),
            "/v2/library/app/blobs/sha256:..%2f..%2f..%2fsecret".to_owned(),
            "/v2/library/app/manifests/..".to_owned(),
            "/v2/library/app/manifests/%2e%2e".to_owned(),
            "/v2/library/app/manifests/..%2f..%2f..%2fsecret".to_owned(),
            "/v2/library/app/_manifests/tags/list".to_owned(),
            "/v2/library/app/_layers/manifests/v1".to_owned(),
            "/v2/%00/manifests/v1".to_owned(),
            "/v2/library%00/app/manifests/v1".to_owned(),
            "/v2/../tags/list".to_owned(),
            "/v2/./library/app/tags/list".to_owned(),
        ];
        for url in attempts {
            for method in ["GET", "HEAD"] {
                let reply = handle(&f.storage, method, &url, None);
                assert!(matches!(reply.status, 400 | 404), "{method} {url}: {reply:?}");
                let text = String::from_utf8_lossy(&body(reply)).into_owned();
                assert!(!text.contains("TOP-SECRET"), "{method} {url}: {text}");
            }
        }
    }

    #[test]
    fn a_link_naming_a_path_is_refused() {
        let f = fixture();
        let link = f.storage.v2.join("repositories/library/app/_manifests/tags/evil/current/link");
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        fs::write(&link, "sha256:../../../../secret").unwrap();
        let reply = get(&f, "/v2/library/app/manifests/evil");
        assert_eq!((reply.status, code(&reply)), (500, "UNKNOWN".to_owned()));
        assert!(matches!(
            list_images(f.storage.v2.parent().unwrap().parent().unwrap().parent().unwrap()),
            Err(RegistryError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_manifest_that_does_not_match_its_digest_is_not_served() {
        let f = fixture();
        let hex = f.manifest.strip_prefix("sha256:").unwrap();
        fs::write(f.storage.v2.join("blobs/sha256").join(&hex[..2]).join(hex).join("data"), "{}").unwrap();
        assert_eq!(get(&f, "/v2/library/app/manifests/v1").status, 500);
    }

    #[test]
    fn list_images_reads_tags() {
        let f = fixture();
        let root = f.storage.v2.parent().unwrap().parent().unwrap().parent().unwrap();
        let images = list_images(root).unwrap();
        assert_eq!(
            images,
            vec![ImageRef {
                repository: "library/app".into(),
                tag: "v1".into(),
                digest: f.manifest.clone(),
                media_type: OCI_MANIFEST.into()
            }]
        );
        assert_eq!(images[0].to_string(), format!("library/app:v1@{}", f.manifest));
        let empty = tempfile::tempdir().unwrap();
        let err = list_images(empty.path()).unwrap_err();
        assert!(matches!(err, RegistryError::NotAStorage { .. }));
        assert!(err.hint().is_some());
    }

    #[test]
    fn errors_read_well() {
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let err = RegistryError::Listen { addr, source: io::Error::from(io::ErrorKind::AddrInUse) };
        assert_eq!(err.to_string(), "could not listen on '127.0.0.1:5000'");
        assert!(err.hint().unwrap().contains("--registry-port"));
        let err = RegistryError::NotReady { addr, waited: Duration::from_millis(1500), last: "x".into() };
        assert_eq!(err.to_string(), "the registry on '127.0.0.1:5000' was not ready within 1.5s: x");
    }

    #[test]
    fn request_heads_are_parsed_strictly() {
        assert_eq!(parse_request_line("GET /v2/ HTTP/1.1").unwrap(), ("GET", "/v2/", false));
        assert_eq!(parse_request_line("HEAD /v2/x HTTP/1.0").unwrap(), ("HEAD", "/v2/x", true));
        for bad in [
            "GET /v2/ HTTP/2",
            "GET /v2/",
            "GET  /v2/ HTTP/1.1",
            "get /v2/ HTTP/1.1",
            "GET http://x/v2/ HTTP/1.1",
            "GET /v2/ HTTP/1.1 x",
            "GET /v2/\u{7f} HTTP/1.1",
        ] {
            assert!(matches!(parse_request_line(bad), Err(HeadError::Bad(_))), "{bad}");
        }
        let mut head = RequestHead {
            method: "GET".into(),
            target: "/".into(),
            close: false,
            range: None,
            body: RequestBody::None,
            expect_continue: false,
        };
        apply_header(&mut head, "Connection: keep-alive, Close", false).unwrap();
        apply_header(&mut head, "range:  bytes=0-1 ", false).unwrap();
        apply_header(&mut head, "Content-Length: 12", false).unwrap();
        apply_header(&mut head, "Content-Length: 12", false).unwrap();
        assert_eq!(
            (head.close, head.range.as_deref(), &head.body),
            (true, Some("bytes=0-1"), &RequestBody::Length(12))
        );
        for bad in
            ["Content-Length: 13", "Content-Length: -1", "Content-Length: +1", "no colon", " X: y", ": y"]
        {
            assert!(matches!(apply_header(&mut head, bad, false), Err(HeadError::Bad(_))), "{bad}");
        }
        apply_header(&mut head, "Expect: 100-Continue", false).unwrap();
        assert!(head.expect_continue);
        apply_header(&mut head, "Transfer-Encoding: chunked", false).unwrap();
        assert_eq!(head.body, RequestBody::Unknown);
    }

    fn start(f: &Fixture, threads: usize) -> Registry {
        let root = f.storage.v2.parent().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
        Registry::start(RegistryConfig { root, listen: "127.0.0.1:0".parse().unwrap(), threads }).unwrap()
    }

    fn connect(registry: &Registry) -> TcpStream {
        let stream = TcpStream::connect(registry.local_addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    }

    /// Reads one response: (status, head, body), by its Content-Length.
    fn response(reader: &mut BufReader<&TcpStream>) -> (u16, String, Vec<u8>) {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(reader.read_line(&mut line).unwrap() > 0, "the connection closed; so far: {head}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map(|v| v.trim().parse().unwrap())
            .unwrap();
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        (status, head, body)
    }

    fn closed(stream: &TcpStream) -> bool {
        let mut rest = Vec::new();
        let mut reader = stream;
        matches!(reader.read_to_end(&mut rest), Ok(0))
    }

    #[test]
    fn http_keep_alive_pipelining_heads_and_bodies() {
        let f = fixture();
        let registry = start(&f, 2);
        let stream = connect(&registry);
        let mut writer = &stream;
        let mut reader = BufReader::new(&stream);
        // Two pipelined requests, then a HEAD, on one connection.
        write!(
            writer,
            "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/library/app/manifests/v1 HTTP/1.1\r\n\r\n"
        )
        .unwrap();
        let (status, head, body) = response(&mut reader);
        assert_eq!((status, body.as_slice()), (200, b"{}".as_slice()), "{head}");
        assert!(head.contains("Docker-Distribution-API-Version: registry/2.0\r\n"), "{head}");
        let (status, head, _) = response(&mut reader);
        assert!(status == 200 && head.contains(&format!("Docker-Content-Digest: {}", f.manifest)), "{head}");
        write!(writer, "HEAD /v2/library/app/blobs/{} HTTP/1.1\r\n\r\n", f.layer).unwrap();
        let mut line = String::new();
        let mut head = String::new();
        while line != "\r\n" {
            line.clear();
            reader.read_line(&mut line).unwrap();
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("Content-Length: 22\r\n"), "{head}");
        // A push with a small body: refused, and the connection goes on.
        write!(writer, "PUT /v2/library/app/manifests/v2 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{{}}").unwrap();
        assert_eq!(response(&mut reader).0, 405);
        write!(writer, "GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        let (status, head, _) = response(&mut reader);
        assert!(status == 200 && head.contains("Connection: close"), "{head}");
        assert!(closed(&stream));
        registry.stop();
    }

    #[test]
    fn http_refusals_close_the_connection() {
        let f = fixture();
        let registry = start(&f, 2);
        let cases: [(&[u8], &str); 5] = [
            // A TLS ClientHello's first bytes: answered at once, as Go's server does.
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "HTTP/1.0 400 Bad Request\r\n"),
            (b"GET /v2/ HTTP/2.0\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n"),
            (b"BREW /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n", "HTTP/1.1 405 Method Not Allowed\r\n"),
            (b"GET /v2/ HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK\r\n"),
            (
                b"POST /v2/x/blobs/uploads/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                "HTTP/1.1 405",
            ),
        ];
        for (request, expected) in cases {
            let stream = connect(&registry);
            (&stream).write_all(request).unwrap();
            let mut answer = Vec::new();
            (&stream).read_to_end(&mut answer).unwrap();
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with(expected), "{request:?}: {answer}");
        }
        // A push that waits for "100 Continue" is answered at once.
        let stream = connect(&registry);
        let started = Instant::now();
        (&stream)
            .write_all(
                b"PUT /v2/x/manifests/v1 HTTP/1.1\r\nContent-Length: 9\r\nExpect: 100-continue\r\n\r\n",
            )
            .unwrap();
        let (status, _, _) = response(&mut BufReader::new(&stream));
        assert_eq!(status, 405);
        assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
        // A head that never ends is cut off at the limit.
        let stream = connect(&registry);
        let long = format!("GET /v2/ HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        let _ = (&stream).write_all(long.as_bytes());
        let mut answer = String::new();
        let _ = (&stream).read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        registry.stop();
    }

    #[test]
    fn an_idle_connection_does_not_hold_the_only_handler() {
        let f = fixture();
        let registry = start(&f, 1);
        let idle = connect(&registry);
        let mut reader = BufReader::new(&idle);
        (&idle).write_all(b"GET /v2/ HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(response(&mut reader).0, 200);
        // The one handler now waits on `idle`; another client is served all the same.
        let started = Instant::now();
        let other = connect(&registry);
        (&other).write_all(b"GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!(response(&mut BufReader::new(&other)).0, 200);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(closed(&idle), "the idle connection was closed for the waiting one");
        // A client that connects and says nothing is given up on once another waits.
        let silent = connect(&registry);
        thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        let other = connect(&registry);
        (&other).write_all(b"GET /v2/ HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!(response(&mut BufReader::new(&other)).0, 200);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(closed(&silent));
        registry.stop();
    }

    #[test]
    fn starts_serves_and_stops_on_a_real_socket() {
        let f = fixture();
        let root = f.storage.v2.parent().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
        let registry = Registry::start(RegistryConfig {
            root: root.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            threads: 2,
        })
        .unwrap();
        let addr = registry.local_addr();
        wait_ready(addr, "sea.hub:5000", Some(("library/app", "v1")), Duration::from_secs(5)).unwrap();
        let err = wait_ready(addr, "sea.hub:5000", Some(("library/app", "v9")), Duration::from_millis(300))
            .unwrap_err();
        assert!(err.to_string().contains("'/v2/library/app/manifests/v9' answered HTTP 404"), "{err}");
        assert!(matches!(
            wait_ready(addr, "x", Some(("../x", "v1")), Duration::from_secs(1)),
            Err(RegistryError::InvalidProbe { .. })
        ));
        // The same port again: refused while it serves, with the hint.
        let busy =
            Registry::start(RegistryConfig { root: root.clone(), listen: addr, threads: 1 }).unwrap_err();
        assert!(
            matches!(&busy, RegistryError::Listen { source, .. } if source.kind() == io::ErrorKind::AddrInUse)
        );
        registry.stop();
        let err = wait_ready(addr, "x", None, Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("could not connect"), "{err}");
    }
}
