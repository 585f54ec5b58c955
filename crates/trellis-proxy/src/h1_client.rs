//! HTTP/1.1 to apps and to destinations outside the mesh, driven by the request's own task for
//! the ordinary request; hyper's client for the rest.
//!
//! hyper's HTTP/1.1 client runs each connection in a task of its own: a request crosses a
//! channel to it, its response comes back through a one-shot and its body through another
//! channel, every hop a wake-up. On proxy B of `bench/instructions` that was about 20,000
//! instructions per request. Here the request's task writes the request and reads the
//! response head itself; the response body reads the connection as it is polled and puts the
//! connection back in the pool once the body has ended.
//!
//! Requests without a body or with a short one of known length (and no `Upgrade`, `Expect` or
//! framing headers of their own) go this way: nearly every GET, HEAD and DELETE, and most
//! POSTs of an API. A longer or unsized body streams through hyper's client (`pool::H1Pool`),
//! which writes it while reading an early response.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::fast_map::FastMap;
use crate::h1::{self, Span};
use crate::pool::{Body, BoxError};
use crate::serve::MAX_HEADER_BYTES;

/// Response headers read here; more is an error (hyper's client allows 100 too).
const MAX_HEADERS: usize = 100;
/// A connection unused for this long is closed rather than reused.
pub(crate) const IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per address.
const IDLE_PER_ADDR: usize = 256;
/// The longest request body sent here: read whole first, then written with the head (and
/// kept, so that the request can be sent again on a new connection). Longer ones stream
/// through hyper's client.
const MAX_BODY: usize = 64 * 1024;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    #[error("connection closed before the response was complete")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("request body: {0}")]
    RequestBody(BoxError),
}

/// Would this request go through [`send`]? No body or a short one of known length, and
/// nothing that hyper's client handles specially (upgrades, `100 Continue`, a framing of the
/// caller's own).
pub(crate) fn handles(req: &Request<Body>) -> bool {
    let h = req.headers();
    let body = req.body();
    (http_body::Body::is_end_stream(body)
        || http_body::Body::size_hint(body)
            .exact()
            .is_some_and(|n| n <= MAX_BODY as u64))
        && req.method() != Method::CONNECT
        // One pass over the few names a request has, where four lookups hashed each of these.
        && !h
            .keys()
            .any(|n| n == UPGRADE || n == CONNECTION || n == EXPECT || n == TRANSFER_ENCODING)
}

/// Idle connections per address, shared with the response bodies that give theirs back.
///
/// An idle connection has no task watching it: one the app closes is found closed when it is
/// next taken, or by the sweep that a return to the pool runs every [`SWEEP`], which closes
/// the expired and the closed ones of every address.
#[derive(Debug, Default)]
pub(crate) struct Idle {
    inner: Mutex<IdleInner>,
}

#[derive(Debug, Default)]
struct IdleInner {
    conns: FastMap<SocketAddr, Vec<Conn>>,
    swept: Option<Instant>,
}

/// How often returning a connection sweeps the pool.
const SWEEP: Duration = Duration::from_secs(10);

/// A connection with the bytes read from it and not yet used.
#[derive(Debug)]
pub(crate) struct Conn {
    io: TcpStream,
    buf: BytesMut,
    idle_until: Instant,
}

impl Conn {
    pub(crate) fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
            idle_until: Instant::now(),
        }
    }
}

impl Idle {
    /// The most recently used live connection to `addr`; expired and closed ones are dropped.
    pub(crate) fn take(&self, addr: SocketAddr) -> Option<Conn> {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let list = inner.conns.get_mut(&addr)?;
        while let Some(mut conn) = list.pop() {
            if conn.idle_until > now && still_open(&mut conn.io) {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, mut conn: Conn) {
        let now = Instant::now();
        conn.idle_until = now + IDLE;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.swept.is_none_or(|at| now >= at + SWEEP) {
            inner.swept = Some(now);
            // Close what expired or was closed, and forget addresses with no connection
            // left, so the map does not grow with every destination ever called.
            inner.conns.retain(|_, list| {
                list.retain_mut(|c| c.idle_until > now && still_open(&mut c.io));
                !list.is_empty()
            });
        }
        let list = inner.conns.entry(addr).or_default();
        if list.len() < IDLE_PER_ADDR {
            list.push(conn);
        }
    }
}

/// Has the peer neither closed an idle connection nor sent on it? No system call unless the
/// poller saw it readable (then one read, which finds the end, stray bytes or nothing).
fn still_open(io: &mut TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Send `req` (origin-form, `Host` set, a short body at most: see [`handles`]) on `conn`, a connection
/// taken from `idle` if `reused`. A reused connection that the app closed before answering
/// anything (its keep-alive ran out as we picked it) is replaced once by `reconnect` when the
/// request is idempotent.
pub(crate) async fn send<F, Fut>(
    idle: &Arc<Idle>,
    addr: SocketAddr,
    req: Request<Body>,
    mut conn: Conn,
    mut reused: bool,
    reconnect: F,
) -> Result<Response<RecvH1>, SendError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Conn, crate::error::ProxyError>>,
{
    let head_only = req.method() == Method::HEAD;
    let idempotent = req.method().is_idempotent();
    let (parts, body) = req.into_parts();
    let body = if http_body::Body::is_end_stream(&body) {
        Bytes::new()
    } else {
        let body = http_body_util::BodyExt::collect(body)
            .await
            .map_err(|e| SendError::Exchange(H1Error::RequestBody(e)))?
            .to_bytes();
        if body.len() > MAX_BODY {
            return Err(SendError::Exchange(H1Error::RequestBody(
                "longer than its length".into(),
            )));
        }
        body
    };
    let mut wire = BytesMut::with_capacity(256 + body.len());
    encode_request(&mut wire, &parts, body.len());
    wire.put_slice(&body);
    drop((parts, body));
    loop {
        match exchange(&mut conn, &wire, head_only).await {
            Ok(head) => return Ok(response(head, conn, idle, addr)),
            Err((error, answered)) => {
                if reused && idempotent && !answered {
                    tracing::debug!(upstream.addr = %addr, %error, "kept-alive connection closed; retrying on a new one");
                    conn = reconnect().await.map_err(SendError::Connect)?;
                    reused = false;
                    continue;
                }
                return Err(SendError::Exchange(error));
            }
        }
    }
}

/// Why [`send`] failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Replacing a closed connection failed.
    Connect(crate::error::ProxyError),
    Exchange(H1Error),
}

/// The request head on the wire: `METHOD /path HTTP/1.1`, the headers, and the body's
/// `content-length` (`0` only for the methods whose requests usually carry a body, as hyper
/// writes it).
fn encode_request(out: &mut BytesMut, req: &http::request::Parts, body_len: usize) {
    out.put_slice(req.method.as_str().as_bytes());
    out.put_u8(b' ');
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let headers = &req.headers;
    // `Host` first, as RFC 9112 §3.2 recommends; the target's authority when the request has
    // no `Host` (one that came as HTTP/2 has `:authority` instead). Written from the URI, not
    // added to the map: that was a validated copy and an insert per request.
    let host = headers
        .get(HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
    if let Some(host) = host {
        out.put_slice(b"host: ");
        out.put_slice(host);
        out.put_slice(b"\r\n");
    }
    for (name, value) in headers {
        // The length is the body's, written below.
        if name == HOST || name == CONTENT_LENGTH {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if body_len > 0 || matches!(req.method, Method::POST | Method::PUT | Method::PATCH) {
        h1::put_content_length(out, body_len as u64);
    }
    out.put_slice(b"\r\n");
}

/// A response head read off a connection, and how its body is framed.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    /// May the connection carry another request once the body is read?
    keep_alive: bool,
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// By `Content-Length`: this many bytes are left.
    Length(u64),
    /// Chunked.
    Chunked(Chunk),
    /// By the end of the connection.
    Eof,
}

/// Where the chunked decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// In a chunk's data: this many bytes are left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one (trailers are not passed on,
    /// as hyper's client does not either unless asked).
    Trailers,
}

/// Write the request and read the response head. The error says whether any of the response
/// had arrived (if not, the app never answered and the request may be tried elsewhere).
async fn exchange(conn: &mut Conn, wire: &[u8], head_only: bool) -> Result<Head, (H1Error, bool)> {
    if let Err(error) = conn.io.write_all(wire).await {
        return Err((error.into(), false));
    }
    let mut answered = !conn.buf.is_empty();
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf, head_only) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) if conn.buf.len() < MAX_HEADER_BYTES => {}
                Ok(None) => return Err((H1Error::Invalid("response head too large"), true)),
                Err(error) => return Err((error, true)),
            }
        }
        conn.buf.reserve(READ_SIZE);
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) => return Err((H1Error::Closed, answered)),
            Ok(_) => answered = true,
            Err(error) => return Err((error.into(), answered)),
        }
    }
}

/// Parse the final response head at the front of `buf`, skipping informational ones (`100
/// Continue` and the like); `None` until a whole one is there.
fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Head>, H1Error> {
    loop {
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(H1Error::Invalid("too many headers"));
            }
            Err(_) => return Err(H1Error::Invalid("malformed response head")),
        };
        let code = parsed.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("invalid status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(H1Error::Invalid(
                "101 Switching Protocols to a request without Upgrade",
            ));
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        let version = match parsed.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        let mut keep_alive = version == Version::HTTP_11;
        let mut length: Option<usize> = None;
        let mut chunked = None;
        // The headers that only concern this connection (its framing and keep-alive) are read
        // here and left out of the map, which saves removing them again (`strip_hop_by_hop`,
        // 900 instructions a response when `Connection: keep-alive` was there). A `Connection`
        // that names other headers stays, for `strip_hop_by_hop` to remove those too.
        let mut spans = [Span::default(); MAX_HEADERS];
        let mut count = 0;
        for h in parsed.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let value = h1::content_length(h.value)
                    .ok_or(H1Error::Invalid("invalid Content-Length"))?;
                if length.is_some_and(|l| l != value) {
                    return Err(H1Error::Invalid("conflicting Content-Length values"));
                }
                length = Some(value);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // The last of several Transfer-Encoding lines says how the body ends.
                chunked = Some(h1::chunked_last(h.value));
                continue;
            } else if name.eq_ignore_ascii_case(b"connection") {
                if h1::has_token(h.value, b"close") {
                    keep_alive = false;
                }
                if h1::only_tokens(h.value, &[b"close", b"keep-alive"]) {
                    continue;
                }
            } else if name.eq_ignore_ascii_case(b"keep-alive")
                || name.eq_ignore_ascii_case(b"proxy-connection")
            {
                continue;
            }
            spans[count] = Span::of(buf, h);
            count += 1;
        }
        let no_body =
            head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let framing = match (no_body, chunked, length) {
            (true, _, _) => Framing::Length(0),
            // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); a response with both
            // may be an attempt at smuggling, so its connection is not reused.
            (_, Some(true), length) => {
                keep_alive &= length.is_none();
                if length.is_some() {
                    // ... and the Content-Length is not passed on: the body forwarded is the
                    // chunked one, whatever length that header claimed.
                    let base: &[u8] = buf;
                    let mut kept = 0;
                    for i in 0..count {
                        if !spans[i].name(base).eq_ignore_ascii_case(b"content-length") {
                            spans[kept] = spans[i];
                            kept += 1;
                        }
                    }
                    count = kept;
                }
                Framing::Chunked(Chunk::Size)
            }
            (_, Some(false), _) | (_, None, None) => {
                keep_alive = false;
                Framing::Eof
            }
            (_, None, Some(n)) => Framing::Length(n as u64),
        };
        let head = buf.split_to(len).freeze();
        let mut map = HeaderMap::with_capacity(count + 4);
        h1::append_headers(&mut map, &head, &spans[..count])
            .map_err(|()| H1Error::Invalid("invalid header"))?;
        return Ok(Some(Head {
            status,
            version,
            headers: map,
            framing,
            keep_alive,
        }));
    }
}

fn response(head: Head, conn: Conn, idle: &Arc<Idle>, addr: SocketAddr) -> Response<RecvH1> {
    let mut body = RecvH1 {
        conn: Some(conn),
        framing: head.framing,
        keep_alive: head.keep_alive,
        idle: Arc::clone(idle),
        addr,
    };
    body.finish_if_done();
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    resp
}

/// A response body read straight off its connection, which goes back to the pool when the
/// body has ended (and is closed if the body is dropped before).
#[derive(Debug)]
pub(crate) struct RecvH1 {
    /// `None` once the body has ended.
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    idle: Arc<Idle>,
    addr: SocketAddr,
}

impl RecvH1 {
    /// If the body has ended, give the connection back (or close it).
    fn finish_if_done(&mut self) {
        if self.framing != Framing::Length(0) {
            return;
        }
        if let Some(conn) = self.conn.take() {
            // Bytes after the body would be a response nobody asked for.
            if self.keep_alive && conn.buf.is_empty() {
                self.idle.put(self.addr, conn);
            }
        }
    }

    /// The body's end as an error (the connection is closed).
    fn fail(&mut self, error: H1Error) -> Poll<Option<Result<Bytes, H1Error>>> {
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, H1Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // What the bytes already read give.
            match self.framing {
                Framing::Length(0) => {
                    self.finish_if_done();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let take = left.min(conn.buf.len() as u64);
                    let data = conn.buf.split_to(take as usize).freeze();
                    self.framing = Framing::Length(left - take);
                    self.finish_if_done();
                    return Poll::Ready(Some(Ok(data)));
                }
                Framing::Eof if !conn.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(conn.buf.split().freeze())));
                }
                Framing::Chunked(state) => match decode_chunked(&mut conn.buf, state) {
                    Err(error) => return self.fail(error),
                    Ok(Step::Data(next, data)) => {
                        self.framing = Framing::Chunked(next);
                        // Reach the end now if it is already here, so that the end is seen
                        // with the last data rather than after one more poll.
                        self.skip_framing();
                        self.finish_if_done();
                        return Poll::Ready(Some(Ok(data)));
                    }
                    Ok(Step::Next(next)) => {
                        self.framing = next;
                        continue;
                    }
                    Ok(Step::More) => {}
                },
                _ => {}
            }
            // More bytes are needed.
            conn.buf.reserve(READ_SIZE);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                &mut conn.buf
            ));
            match read {
                Ok(0) if self.framing == Framing::Eof => {
                    self.conn = None;
                    self.framing = Framing::Length(0);
                    return Poll::Ready(None);
                }
                Ok(0) => return self.fail(H1Error::Closed),
                Ok(_) => {}
                Err(error) => return self.fail(error.into()),
            }
        }
    }

    /// Step the chunked decoder over buffered chunk delimiters and trailers (not data).
    fn skip_framing(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        while let Framing::Chunked(state) = self.framing {
            if matches!(state, Chunk::Data(_)) {
                return;
            }
            match decode_chunked(&mut conn.buf, state) {
                Ok(Step::Next(next)) => self.framing = next,
                // An error is met again, and reported, by the next poll.
                _ => return,
            }
        }
    }
}

/// One step of the chunked decoder.
enum Step {
    /// Data, and the decoder's state after it.
    Data(Chunk, Bytes),
    /// A delimiter or trailer line consumed; the framing after it (`Length(0)`: the end).
    Next(Framing),
    /// More bytes are needed.
    More,
}

/// One step of the chunked decoder over `buf` in `state`.
fn decode_chunked(buf: &mut BytesMut, state: Chunk) -> Result<Step, H1Error> {
    let line_end = |buf: &BytesMut| buf.iter().position(|&b| b == b'\n');
    match state {
        Chunk::Size => {
            let Some(end) = line_end(buf) else {
                return if buf.len() > 1024 {
                    Err(H1Error::Invalid("chunk size line too long"))
                } else {
                    Ok(Step::More)
                };
            };
            let line = buf.split_to(end + 1);
            let line = line[..end].strip_suffix(b"\r").unwrap_or(&line[..end]);
            // Extensions after `;` are ignored (RFC 9112 §7.1.1).
            let hex = line
                .split(|&b| b == b';')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            if hex.is_empty() || hex.len() > 15 || !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(H1Error::Invalid("invalid chunk size"));
            }
            let size = hex.iter().fold(0u64, |n, &d| {
                n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0))
            });
            Ok(Step::Next(Framing::Chunked(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            })))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Step::More);
            }
            let take = left.min(buf.len() as u64);
            let data = buf.split_to(take as usize).freeze();
            let next = if take == left {
                Chunk::DataEnd
            } else {
                Chunk::Data(left - take)
            };
            Ok(Step::Data(next, data))
        }
        Chunk::DataEnd => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
            } else if buf.starts_with(b"\n") {
                buf.advance(1);
            } else if buf.is_empty() || buf[..] == b"\r"[..] {
                return Ok(Step::More);
            } else {
                return Err(H1Error::Invalid("chunk data longer than its size"));
            }
            Ok(Step::Next(Framing::Chunked(Chunk::Size)))
        }
        Chunk::Trailers => {
            let Some(end) = line_end(buf) else {
                return if buf.len() > MAX_HEADER_BYTES {
                    Err(H1Error::Invalid("trailers too large"))
                } else {
                    Ok(Step::More)
                };
            };
            let line = buf.split_to(end + 1);
            Ok(Step::Next(if line[..end].trim_ascii().is_empty() {
                Framing::Length(0)
            } else {
                Framing::Chunked(Chunk::Trailers)
            }))
        }
    }
}

impl http_body::Body for RecvH1 {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut()
            .poll_next(cx)
            .map(|next| next.map(|r| r.map(Frame::data).map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Length(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
