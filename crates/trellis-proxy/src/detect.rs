//! Protocol detection for the inbound and outbound listeners.
//!
//! A connection's first bytes tell what it carries: an HTTP/1.x request line, the HTTP/2
//! client preface (prior knowledge), a TLS ClientHello (passed through untouched, its SNI
//! recorded for routing), or anything else, which is forwarded as opaque TCP.
//!
//! [`classify`] is the pure decision on a buffer; [`detect`] drives it over a stream with a
//! timeout and hands the stream back as a [`Prefixed`] that replays the bytes it consumed.
//! Server-first protocols (MySQL, SMTP, ...) never stall: the client sends nothing, the timeout
//! expires and the connection is opaque TCP. Ports declared `tcp` should skip detection
//! entirely; that choice belongs to the listener.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::debug;

pub use crate::prefixed::Prefixed;

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Methods that decide HTTP/1 as soon as they are followed by a space.
const KNOWN_METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

/// The longest method token we consider plausible (WebDAV's `VERSION-CONTROL` is 15).
const MAX_METHOD_LEN: usize = 20;

/// How far we look for the end of a request line whose method is not a known one.
const MAX_REQUEST_LINE: usize = 8 * 1024;

/// Length of a TLS record header: type, version (2), length (2).
const TLS_RECORD_HEADER: usize = 5;

/// Largest TLS plaintext record (RFC 8446 section 5.1).
const MAX_TLS_RECORD: usize = 16 * 1024;

/// [`classify`] always decides once it has this many bytes.
const MAX_DETECT: usize = TLS_RECORD_HEADER + MAX_TLS_RECORD;

/// Size of the detection buffer; it grows (once, to [`MAX_DETECT`]) only for an unusually large
/// ClientHello or request line.
const INITIAL_BUFFER: usize = 4 * 1024;

/// TLS content type of a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// TLS handshake message type of a ClientHello.
const TLS_CLIENT_HELLO: u8 = 0x01;

/// TLS extension number of `server_name` (RFC 6066 section 3).
const EXT_SERVER_NAME: u16 = 0;

/// `NameType` of a DNS host name in the `server_name` extension.
const NAME_TYPE_HOST_NAME: u8 = 0;

/// The protocol a connection speaks, as far as its first bytes tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// An HTTP/1.0 or HTTP/1.1 request.
    Http1,
    /// HTTP/2 with prior knowledge: the connection starts with the client preface.
    Http2,
    /// A TLS ClientHello, to be passed through untouched.
    Tls {
        /// The host name from the `server_name` extension, lower-cased; `None` when the
        /// ClientHello carries none or could not be parsed.
        sni: Option<String>,
    },
    /// Anything else, including a client that sent nothing before the timeout.
    Opaque,
}

impl Protocol {
    /// The protocol's name in logs and metrics (`request_protocol`).
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Http1 => "http/1.1",
            Self::Http2 => "h2",
            Self::Tls { .. } => "tls",
            Self::Opaque => "tcp",
        }
    }
}

/// Reads the start of `io` until its protocol is known, then returns the protocol and the
/// stream with the bytes read so far replayed in front.
///
/// Detection ends when [`classify`] decides, when the peer closes (what was read is classified,
/// falling back to [`Protocol::Opaque`]), or when `timeout` expires ([`Protocol::Opaque`]; with
/// nothing read this is a server-first protocol waiting for us). Data that is already buffered
/// is read even with a zero timeout. A client whose first segment holds its request line,
/// preface or ClientHello costs one read.
///
/// # Errors
///
/// Returns the error of a failed read; the stream is dropped with it.
pub async fn detect<S>(mut io: S, timeout: Duration) -> io::Result<(Protocol, Prefixed<S>)>
where
    S: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(INITIAL_BUFFER);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let protocol = loop {
        if buf.len() == buf.capacity() {
            buf.reserve(MAX_DETECT.saturating_sub(buf.len()).max(1));
        }
        let read = tokio::select! {
            biased;
            read = io.read_buf(&mut buf) => read?,
            () = &mut deadline => {
                debug!(detect.bytes = buf.len(), ?timeout, "protocol detection timed out");
                break Protocol::Opaque;
            }
        };
        if read == 0 {
            debug!(
                detect.bytes = buf.len(),
                "peer closed during protocol detection"
            );
            break classify(&buf).unwrap_or(Protocol::Opaque);
        }
        if let Some(protocol) = decide(&buf) {
            break protocol;
        }
    };
    debug!(
        detect.protocol = protocol.as_str(),
        detect.bytes = buf.len(),
        "protocol detected"
    );
    Ok((protocol, Prefixed::new(buf.freeze(), io)))
}

/// Classifies the first bytes of a connection, or returns `None` when more bytes are needed.
///
/// Once this returns `Some`, any longer buffer that starts with the same bytes gets the same
/// answer, so a caller may stop reading at the first decision. It always decides given
/// 16 KiB + 5 bytes. It never panics, whatever the input.
#[must_use]
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    match *buf.first()? {
        TLS_HANDSHAKE => classify_tls(buf),
        b'A'..=b'Z' => classify_text(buf),
        _ => Some(Protocol::Opaque),
    }
}

/// [`classify`], with a guarantee that a full buffer always decides (so [`detect`] terminates
/// even if a future edit to a classifier forgets a cap).
fn decide(buf: &[u8]) -> Option<Protocol> {
    classify(buf).or_else(|| (buf.len() >= MAX_DETECT).then_some(Protocol::Opaque))
}

/// Classifies a buffer that starts with an upper-case letter: the h2 preface or HTTP/1.
fn classify_text(buf: &[u8]) -> Option<Protocol> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf.get(..n) == H2_PREFACE.get(..n) {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    classify_http1(buf)
}

/// Classifies a buffer as an HTTP/1 request line or opaque.
fn classify_http1(buf: &[u8]) -> Option<Protocol> {
    let Some(method_len) = buf.iter().position(|&b| !is_method_byte(b)) else {
        // Still inside the method token.
        return (buf.len() > MAX_METHOD_LEN).then_some(Protocol::Opaque);
    };
    if method_len == 0 || method_len > MAX_METHOD_LEN || buf.get(method_len) != Some(&b' ') {
        return Some(Protocol::Opaque);
    }
    if KNOWN_METHODS.contains(&buf.get(..method_len)?) {
        return Some(Protocol::Http1);
    }
    confirm_request_line(buf, method_len)
}

/// Whether `b` may appear in a method token we consider plausible.
fn is_method_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

/// Waits for the end of a request line with an unknown method and checks that it ends in
/// ` HTTP/1.x`.
fn confirm_request_line(buf: &[u8], method_len: usize) -> Option<Protocol> {
    let window = buf.get(..buf.len().min(MAX_REQUEST_LINE))?;
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        return (buf.len() >= MAX_REQUEST_LINE).then_some(Protocol::Opaque);
    };
    let line = window.get(..end)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.get(method_len + 1..).unwrap_or_default();
    Some(if is_target_and_version(rest) {
        Protocol::Http1
    } else {
        Protocol::Opaque
    })
}

/// Whether `rest` is `request-target SP HTTP/1.x`.
fn is_target_and_version(rest: &[u8]) -> bool {
    let Some((target, version)) = rest.len().checked_sub(9).map(|at| rest.split_at(at)) else {
        return false;
    };
    let version_ok = matches!(
        version,
        [b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit()
    );
    version_ok && !target.is_empty() && target.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// Classifies a buffer that starts with the TLS handshake content type.
///
/// Only the first record is parsed: a ClientHello that continues into a second record (real
/// clients split only hellos over 16 KiB) yields an SNI only if it sits in the first record.
fn classify_tls(buf: &[u8]) -> Option<Protocol> {
    // Record header: 0x16, legacy version 3.0..=3.4, length; then the handshake type.
    match *buf.get(1)? {
        3 => {}
        _ => return Some(Protocol::Opaque),
    }
    match *buf.get(2)? {
        0..=4 => {}
        _ => return Some(Protocol::Opaque),
    }
    let record_len = usize::from(u16::from_be_bytes([*buf.get(3)?, *buf.get(4)?]));
    if record_len == 0 || record_len > MAX_TLS_RECORD {
        return Some(Protocol::Tls { sni: None });
    }
    if *buf.get(TLS_RECORD_HEADER)? != TLS_CLIENT_HELLO {
        return Some(Protocol::Opaque);
    }
    let fragment = buf.get(TLS_RECORD_HEADER..).unwrap_or_default();
    let record = Reader::new(fragment.get(..record_len).unwrap_or(fragment), record_len);
    match client_hello_sni(record) {
        Ok(sni) => Some(Protocol::Tls { sni }),
        Err(Stop::NeedMore) => None,
        Err(Stop::Malformed) => Some(Protocol::Tls { sni: None }),
    }
}

/// Finds the SNI host name in a handshake record holding a ClientHello (RFC 8446 section
/// 4.1.2), stopping as soon as it is found.
fn client_hello_sni(mut record: Reader<'_>) -> Result<Option<String>, Stop> {
    record.skip(1)?; // msg_type, checked by the caller
    let hello_len = record.u24()?;
    let mut hello = record.sub(hello_len.min(record.remaining()))?;
    hello.skip(2 + 32)?; // legacy_version, random
    let session_id_len = hello.u8()?;
    hello.skip(usize::from(session_id_len))?;
    let cipher_suites_len = hello.u16()?;
    hello.skip(usize::from(cipher_suites_len))?;
    let compression_len = hello.u8()?;
    hello.skip(usize::from(compression_len))?;
    if hello.is_at_end() {
        return Ok(None); // No extensions at all (allowed before TLS 1.3).
    }
    let extensions_len = hello.u16()?;
    let mut extensions = hello.sub(usize::from(extensions_len))?;
    while !extensions.is_at_end() {
        let ty = extensions.u16()?;
        let len = extensions.u16()?;
        let body = extensions.sub(usize::from(len))?;
        if ty == EXT_SERVER_NAME {
            return server_name(body);
        }
    }
    Ok(None)
}

/// Reads the host name out of a `server_name` extension body (RFC 6066 section 3).
fn server_name(mut body: Reader<'_>) -> Result<Option<String>, Stop> {
    let list_len = body.u16()?;
    let mut list = body.sub(usize::from(list_len))?;
    while !list.is_at_end() {
        let name_type = list.u8()?;
        let len = list.u16()?;
        let name = list.take(usize::from(len))?;
        if name_type == NAME_TYPE_HOST_NAME {
            return Ok(host_name(name));
        }
    }
    Ok(None)
}

/// Validates an SNI host name and returns it lower-cased; `None` if it is not a DNS name.
fn host_name(name: &[u8]) -> Option<String> {
    let valid = (1..=253).contains(&name.len())
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    valid.then(|| String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// Why a bounded parse stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The bytes read so far end before the declared length: read more.
    NeedMore,
    /// A length points past its enclosing structure.
    Malformed,
}

/// A cursor over a length-delimited TLS structure of which only a prefix may have arrived.
///
/// `declared` is the structure's length on the wire and `data` the part of it we hold
/// (`data.len() <= declared`). Reading past `declared` is [`Stop::Malformed`]; reading within
/// it but past `data` is [`Stop::NeedMore`]. Skipping needs no data, so a parse decides as early
/// as the bytes it actually looks at allow.
#[derive(Debug, Clone, Copy)]
struct Reader<'a> {
    data: &'a [u8],
    declared: usize,
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over a structure of `declared` bytes of which `data` has arrived.
    fn new(data: &'a [u8], declared: usize) -> Self {
        let data = data.get(..declared).unwrap_or(data);
        Self {
            data,
            declared,
            pos: 0,
        }
    }

    /// Declared bytes not yet consumed.
    fn remaining(&self) -> usize {
        self.declared.saturating_sub(self.pos)
    }

    /// Whether the whole declared structure has been consumed.
    fn is_at_end(&self) -> bool {
        self.pos >= self.declared
    }

    /// Advances past `n` bytes without looking at them.
    fn skip(&mut self, n: usize) -> Result<(), Stop> {
        if n > self.remaining() {
            return Err(Stop::Malformed);
        }
        self.pos += n;
        Ok(())
    }

    /// Returns the next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], Stop> {
        if n > self.remaining() {
            return Err(Stop::Malformed);
        }
        let bytes = self
            .data
            .get(self.pos..self.pos + n)
            .ok_or(Stop::NeedMore)?;
        self.pos += n;
        Ok(bytes)
    }

    /// Returns a reader over the next `n` bytes (a nested length-delimited structure).
    fn sub(&mut self, n: usize) -> Result<Reader<'a>, Stop> {
        let start = self.pos;
        self.skip(n)?;
        Ok(Reader::new(self.data.get(start..).unwrap_or_default(), n))
    }

    fn u8(&mut self) -> Result<u8, Stop> {
        let [a] = self.array()?;
        Ok(a)
    }

    fn u16(&mut self) -> Result<u16, Stop> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u24(&mut self) -> Result<usize, Stop> {
        let [a, b, c] = self.array()?;
        Ok((usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Stop> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
