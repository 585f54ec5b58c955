//! HTTP/1.1 from an app, served by the proxy itself for the ordinary request; hyper for the
//! rest of the connection as soon as anything else arrives.
//!
//! hyper's HTTP/1.1 server spends about 9,000 instructions per request around the service it
//! calls (callgrind, proxy A of `bench/instructions`): a dispatcher state machine, a body
//! channel per request, a head parsed into hyper's own types and moved several times. Most app
//! traffic is simpler than what that machinery is for: a keep-alive request with no body or a
//! short one framed by `Content-Length`. [`serve`] reads such requests itself (`httparse`, as
//! hyper does), hands each to the handler as an `http::Request`, and writes the response.
//!
//! Everything else goes to hyper, with every byte read so far, for the rest of the connection:
//! a chunked or large body, `Expect`, `Upgrade`, `TE` (trailers), `CONNECT`, HTTP/1.0, a
//! malformed or oversized head, a `Connection` header naming anything but `close` or
//! `keep-alive`. hyper then frames,
//! answers errors (400, 431) and upgrades exactly as it did before this module existed. The one
//! case answered here is the request-smuggling shape: `Content-Length` with
//! `Transfer-Encoding` is a 400 and the connection closes, on any request of the connection.

use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use trellis_runtime::DrainWatcher;

use crate::h1::{self, Span};
use crate::pool::{Body, boxed, empty};
use crate::serve::MAX_HEADER_BYTES;

/// Headers read per request here; a request with more goes to hyper (which allows 100).
const MAX_HEADERS: usize = 64;
/// The largest request body read here (whole, before the handler runs); larger ones stream
/// through hyper.
const MAX_BODY: usize = 64 * 1024;
/// Room for the headers the proxy adds to a request (request id, forwarding, mesh metadata):
/// a map sized for the client's alone would grow, and rehash, on the way.
const ADDED_HEADERS: usize = 8;
/// Response bytes gathered before a write: a head and a body that is ready at once leave in
/// one write.
const WRITE_BATCH: usize = 64 * 1024;

/// Serve `io` (whose first bytes, read by protocol detection, are `prefix`) until the client
/// is done, drain asks it to close, or a request needs hyper: then the bytes read but not
/// served and the stream are returned, for `serve::http1` to go on from exactly there.
pub(crate) async fn serve<I, H, Fut>(
    mut io: I,
    prefix: Bytes,
    header_timeout: Duration,
    drain: &DrainWatcher,
    handle: H,
) -> Option<(Bytes, I)>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    buf.extend_from_slice(&prefix);
    drop(prefix);
    let mut out = BytesMut::with_capacity(8 * 1024);
    let mut clock = HeadClock::new(header_timeout);
    // The last response's header map, emptied: the next request's headers go in it (as hyper
    // does), sized already for what the proxy adds.
    let mut spare: Option<HeaderMap> = None;
    let drained = drain.signaled();
    tokio::pin!(drained);
    loop {
        // 1. A request: its head within the header timeout, then its body.
        clock.start();
        let taken = loop {
            if !buf.is_empty() {
                match take_request(&mut buf, &mut spare) {
                    Take::Request(req) => break req,
                    Take::Partial if buf.len() < MAX_HEADER_BYTES => {}
                    Take::Body { total } => {
                        if !read_at_least(&mut io, &mut buf, total).await {
                            return None;
                        }
                        continue;
                    }
                    Take::Partial | Take::Hyper => return Some((buf.freeze(), io)),
                    Take::Smuggling => {
                        tracing::warn!(
                            "request with both Content-Length and Transfer-Encoding refused (request smuggling)"
                        );
                        let reason = "request has both Content-Length and Transfer-Encoding";
                        crate::serve::bad_request(io, reason).await;
                        return None;
                    }
                    Take::Invalid(reason) => {
                        tracing::debug!(reason, "malformed request refused");
                        crate::serve::bad_request(io, reason).await;
                        return None;
                    }
                }
            }
            let read = tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => read,
                () = clock.expired() => {
                    tracing::debug!("no complete request head within the header timeout");
                    return None;
                }
                () = &mut drained, if buf.is_empty() => return None,
            };
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        };
        let Taken {
            req,
            head_only,
            mut close,
        } = taken;

        // 2. The handler, while watching the client: one that goes away takes its request
        //    with it (the upstream exchange is cancelled). Pipelined bytes are kept.
        // Pinned where it is built: `tokio::pin!` on a local moves the handler's future (7 KB
        // on the outbound side) once more per request, a memcpy that touches 220 cold lines.
        let mut handled = std::pin::pin!(handle(req));
        let resp = loop {
            tokio::select! {
                biased;
                resp = &mut handled => break resp,
                read = io.read_buf(&mut buf), if buf.len() < MAX_HEADER_BYTES => match read {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                },
            }
        };

        // 3. The response.
        close |= drain.is_draining();
        let written = write_response(&mut io, &mut out, resp, head_only, &mut close, &mut spare);
        if !written.await || close {
            let _ = io.shutdown().await;
            return None;
        }
    }
}

/// A request read off the connection.
struct Taken {
    req: Request<Body>,
    /// A `HEAD` request: the response has no body whatever its headers say.
    head_only: bool,
    /// The client asked for the connection to close after this response.
    close: bool,
}

/// What [`take_request`] found at the front of the buffer.
#[allow(clippy::large_enum_variant)] // returned once per request, never stored
enum Take {
    /// A whole request, removed from the buffer.
    Request(Taken),
    /// The head is not complete yet.
    Partial,
    /// The head is complete but its body is not: `total` bytes of head and body are needed.
    Body { total: usize },
    /// Not the ordinary shape: hyper serves it.
    Hyper,
    /// `Content-Length` with `Transfer-Encoding`: the request-smuggling shape, refused with a
    /// 400 and the connection closed.
    Smuggling,
    /// Refused with a 400 (and why) and the connection closed.
    Invalid(&'static str),
}

/// Take the request at the front of `buf`, if it is whole and of the ordinary shape; its
/// headers go into `spare` if there is one.
fn take_request(buf: &mut BytesMut, spare: &mut Option<HeaderMap>) -> Take {
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Take::Partial,
        // Malformed, or too many headers for this path: hyper answers or serves it.
        Err(_) => return Take::Hyper,
    };
    if parsed.version != Some(1) {
        return Take::Hyper;
    }
    let method = match parsed.method.map(|m| Method::from_bytes(m.as_bytes())) {
        Some(Ok(m)) if m != Method::CONNECT => m,
        _ => return Take::Hyper,
    };
    let Some(path) = parsed.path.map(|p| h1::at(buf, p.as_bytes())) else {
        return Take::Hyper;
    };
    let mut spans = [Span::default(); MAX_HEADERS];
    let mut body_len: Option<usize> = None;
    let mut chunked = false;
    let mut close = false;
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = h.name.as_bytes();
        *span = Span::of(buf, h);
        if name.eq_ignore_ascii_case(b"content-length") {
            // A second one, even equal, is hyper's to judge (it refuses unequal values).
            match (body_len, h1::content_length(h.value)) {
                (None, Some(len)) => body_len = Some(len),
                _ => return Take::Hyper,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    // `Upgrade`, or headers the client calls hop-by-hop: hyper's.
                    return Take::Hyper;
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"te")
        {
            // Upgrades, `100 Continue`, and trailers the client asks for are hyper's.
            return Take::Hyper;
        }
    }
    if chunked {
        return match body_len {
            Some(_) => Take::Smuggling,
            None => Take::Hyper,
        };
    }
    let count = parsed.headers.len();
    let body_len = body_len.unwrap_or(0);
    if body_len > MAX_BODY {
        return Take::Hyper;
    }
    if buf.len() - head_len < body_len {
        return Take::Body {
            total: head_len + body_len,
        };
    }

    let head = buf.split_to(head_len).freeze();
    let body = buf.split_to(body_len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(h1::slice(&head, path)) else {
        return Take::Invalid("invalid request target");
    };
    let mut map = spare
        .take()
        .unwrap_or_else(|| HeaderMap::with_capacity(count + ADDED_HEADERS));
    if h1::append_headers(&mut map, &head, &spans[..count]).is_err() {
        return Take::Invalid("invalid header");
    }
    let head_only = method == Method::HEAD;
    let mut req = Request::new(if body.is_empty() {
        empty()
    } else {
        boxed(http_body_util::Full::new(body))
    });
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = map;
    Take::Request(Taken {
        req,
        head_only,
        close,
    })
}

/// Read until `buf` holds `total` bytes; false if the client went away first.
async fn read_at_least<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut, total: usize) -> bool {
    buf.reserve(total.saturating_sub(buf.len()));
    while buf.len() < total {
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}

/// How a response body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body (`HEAD`, 1xx, 204, 304).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked` (trailers are not sent, as hyper does not by default).
    Chunked,
}

/// Write `resp` and its body; false if the connection cannot carry another request (a write
/// failed or the body was not what its length said). Sets `close` when the response asks to.
async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut BytesMut,
    resp: Response<Body>,
    head_only: bool,
    close: &mut bool,
    spare: &mut Option<HeaderMap>,
) -> bool {
    let (parts, mut body) = resp.into_parts();
    out.clear();
    let framing = encode_head(out, parts.status, &parts.headers, &body, head_only, close);
    let mut headers = parts.headers;
    headers.clear();
    *spare = Some(headers);
    if framing == Framing::None {
        return io.write_all(out).await.is_ok();
    }
    let mut sent: u64 = 0;
    loop {
        // Gather what the body has ready now; write when it has nothing more at once.
        let next = if out.is_empty() {
            body.frame().await
        } else {
            match body.frame().now_or_never() {
                Some(next) => next,
                None => {
                    if io.write_all(out).await.is_err() {
                        return false;
                    }
                    out.clear();
                    continue;
                }
            }
        };
        let data = match next {
            None => break,
            Some(Err(error)) => {
                tracing::debug!(%error, "response body failed; closing the connection");
                let _ = io.write_all(out).await;
                return false;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                // Trailers, or an empty frame.
                _ => continue,
            },
        };
        let len = data.len() as u64;
        match framing {
            Framing::Length(total) if sent + len > total => {
                tracing::debug!(total, "response body longer than its Content-Length");
                let _ = io.write_all(out).await;
                return false;
            }
            Framing::Chunked => {
                let _ = write!(out, "{len:X}\r\n");
                out.put_slice(&data);
                out.put_slice(b"\r\n");
            }
            _ => out.put_slice(&data),
        }
        sent += len;
        if out.len() >= WRITE_BATCH {
            if io.write_all(out).await.is_err() {
                return false;
            }
            out.clear();
        }
    }
    let complete = match framing {
        Framing::Length(total) => sent == total,
        Framing::Chunked => {
            out.put_slice(b"0\r\n\r\n");
            true
        }
        Framing::None => true,
    };
    if !complete {
        tracing::debug!(sent, "response body shorter than its Content-Length");
    }
    io.write_all(out).await.is_ok() && complete
}

/// Write the status line and headers into `out`, and choose the body's framing as hyper's
/// server does: a valid `Content-Length` from the response, else the body's exact size, else
/// chunked. Hop-by-hop framing headers from the response are replaced by our own.
fn encode_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    body: &Body,
    head_only: bool,
    close: &mut bool,
) -> Framing {
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    // One Content-Length value (repeats of it allowed); anything else is ignored and the
    // body's own size frames it.
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let declared = lengths
        .next()
        .and_then(|v| h1::content_length(v.as_bytes()));
    let declared =
        declared.filter(|&n| lengths.all(|v| h1::content_length(v.as_bytes()) == Some(n)));
    let mut has_date = false;
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        if name == CONNECTION {
            *close |= h1::has_token(value.as_bytes(), b"close");
            continue;
        }
        has_date |= name == DATE;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    let framing = if no_body {
        // A HEAD response keeps the length of what a GET would get; 1xx and 204 have none.
        if let Some(n) = declared.filter(|_| head_only || status == StatusCode::NOT_MODIFIED) {
            h1::put_content_length(out, n as u64);
        }
        Framing::None
    } else if let Some(n) = declared.map(|n| n as u64).or(body.size_hint().exact()) {
        h1::put_content_length(out, n);
        Framing::Length(n)
    } else {
        out.put_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if !has_date {
        out.put_slice(b"date: ");
        date::put(out);
        out.put_slice(b"\r\n");
    }
    if *close {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    framing
}

/// The header timeout without a timer operation per request: the deadline moves with each
/// request, the timer only when it fires before the deadline (at most once per timeout).
struct HeadClock {
    timeout: Duration,
    deadline: Instant,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl HeadClock {
    fn new(timeout: Duration) -> Self {
        let deadline = Instant::now() + timeout;
        HeadClock {
            timeout,
            deadline,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// A request head is awaited from now on.
    fn start(&mut self) {
        self.deadline = Instant::now() + self.timeout;
    }

    /// Resolves once the current head is overdue; never with a zero timeout (`0s` disables it).
    async fn expired(&mut self) {
        if self.timeout.is_zero() {
            return std::future::pending().await;
        }
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= self.deadline {
                return;
            }
            let deadline = self.deadline;
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// The `Date` header value, formatted once a second per thread (as hyper caches it).
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    use bytes::{BufMut, BytesMut};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub(super) fn put(out: &mut BytesMut) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|(at, text)| {
            if *at != secs || text.is_empty() {
                *at = secs;
                *text = httpdate::fmt_http_date(now);
            }
            out.put_slice(text.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests;
