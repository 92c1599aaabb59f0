//! The HTTP/1.1 server: accepting connections into a bounded queue, reading request heads
//! with limits and deadlines, and writing replies.

use super::*;

/// Connections accepted and waiting for a handler; past this, new ones are turned away.
pub(super) const MAX_PENDING: usize = 512;

/// How long a connection may stay open with no request: keep-alive, or a client that
/// connected and sent nothing.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a request head once it started.
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one write may make no progress before the client is given up on.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a handler waiting on an idle connection looks at the stop flag and the queue.
pub(super) const IDLE_POLL: Duration = Duration::from_millis(50);

/// The largest request head (request line and headers) read.
pub(super) const MAX_HEAD_BYTES: usize = 16 << 10;

/// The most headers read.
pub(super) const MAX_HEADERS: usize = 100;

/// A request body up to this size is read and dropped so that the connection can go on; a
/// larger one ends the connection after the answer.
pub(super) const MAX_DISCARDED_BODY: u64 = 1 << 20;

/// How long `accept` may keep failing (out of file descriptors...) before the server gives up.
pub(super) const ACCEPT_GIVE_UP: Duration = Duration::from_secs(30);

/// What a plain HTTP server answers to a TLS handshake, as Go's does: clients that try HTTPS
/// first (docker, containerd, skopeo with TLS verification off) then fall back to HTTP at once
/// instead of waiting for their handshake to time out.
pub(super) const TLS_REFUSAL: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The accepting thread: queues connections for the handlers until stopped.
pub(super) fn accept_connections(listener: &TcpListener, shared: &Shared) {
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
pub(super) fn turn_away(stream: TcpStream) {
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
pub(super) fn handle_connections(shared: &Shared) {
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
pub(super) struct RequestHead {
    pub(super) method: String,
    pub(super) target: String,
    /// The client asked to close, or speaks HTTP/1.0 (answered, then closed).
    pub(super) close: bool,
    pub(super) range: Option<String>,
    /// The `Authorization` header, for a registry with users.
    pub(super) authorization: Option<String>,
    pub(super) body: RequestBody,
    /// `Expect: 100-continue`: the client sends its body only once told to.
    pub(super) expect_continue: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum RequestBody {
    None,
    Length(u64),
    /// Chunked, or otherwise of unknown length.
    Unknown,
}

/// Why a request head could not be read.
#[derive(Debug)]
pub(super) enum HeadError {
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
pub(super) fn serve_connection(shared: &Shared, stream: &TcpStream) -> io::Result<()> {
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
        let reply = match &shared.users {
            Some(users) if !users.check(request.authorization.as_deref()) => unauthorized(),
            _ => handle(&shared.storage, &request.method, &request.target, request.range.as_deref()),
        };
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
pub(super) fn wait_for_request(
    shared: &Shared,
    reader: &BufReader<&TcpStream>,
    first: bool,
) -> io::Result<bool> {
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
pub(super) fn read_head(
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
        authorization: None,
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
pub(super) fn read_line(
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
pub(super) fn parse_request_line(line: &str) -> Result<(&str, &str, bool), HeadError> {
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
pub(super) fn apply_header(head: &mut RequestHead, line: &str, http10: bool) -> Result<(), HeadError> {
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
    } else if name.eq_ignore_ascii_case("authorization") {
        head.authorization = Some(value.to_owned());
    }
    Ok(())
}

/// After answering a request whose body was not read: stop sending, then read (and drop)
/// what the client still sends for a moment, so that closing does not reset the connection
/// before the client has read the answer.
pub(super) fn linger(stream: &TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = io::copy(&mut stream.take(MAX_DISCARDED_BODY), &mut io::sink());
}

/// Writes a reply with its Content-Length (never chunked); for HEAD, no body is read.
pub(super) fn write_reply(stream: &TcpStream, reply: Reply, head: bool, close: bool) -> io::Result<()> {
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

pub(super) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        401 => "Unauthorized",
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
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: Body,
}

pub(super) enum Body {
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
    pub(super) fn new(status: u16, body: Body) -> Reply {
        Reply { status, headers: vec![("Docker-Distribution-API-Version", "registry/2.0".to_owned())], body }
    }

    pub(super) fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply::new(status, Body::Bytes(value.to_string().into_bytes())).header("Content-Type", JSON)
    }

    /// Distribution's error body: `{"errors":[{"code","message","detail"}]}`.
    pub(super) fn error(status: u16, code: &str, message: &str, detail: serde_json::Value) -> Reply {
        Reply::json(
            status,
            &serde_json::json!({"errors": [{"code": code, "message": message, "detail": detail}]}),
        )
    }

    pub(super) fn internal(what: &str) -> Reply {
        Reply::error(500, "UNKNOWN", "unknown error", serde_json::Value::String(what.to_owned()))
    }

    pub(super) fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    #[cfg(test)]
    pub(super) fn header_value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}
