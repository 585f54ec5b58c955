//! HTTP/1.1 written and read by hand over a `TcpStream`: for the admin port, for scripted bad
//! input, and for `CONNECT` tunnels.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use tokio::time::Instant;

/// How long a single read may block before we look at the deadline again.
const READ_SLICE: Duration = Duration::from_millis(50);

/// Header or trailer fields in order, names lower-cased.
pub type Fields = Vec<(String, String)>;

/// A parsed HTTP/1.x response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub reason: String,
    pub headers: Fields,
    pub body: Vec<u8>,
    /// Trailer fields after a chunked body.
    pub trailers: Fields,
}

/// A client connection that sends exactly the bytes it is given and parses what comes back.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    /// Bytes read but not yet consumed.
    buf: Vec<u8>,
}

/// Whether the peer ended the connection, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// An orderly close (FIN).
    Eof,
    /// A reset or another error.
    Error(String),
}

impl RawResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first trailer field named `name` (case-insensitive).
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Opens a `CONNECT authority` tunnel through the explicit proxy at `proxy`. Panics unless
    /// the proxy answers 2xx. Bytes after the response head stay buffered for [`RawConn::read_some`].
    pub fn connect_tunnel(proxy: SocketAddr, authority: &str) -> RawConn {
        let mut conn = RawConn::connect(proxy);
        conn.send(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
            .expect("send CONNECT");
        let head = conn
            .read_head(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("CONNECT {authority} via {proxy}: {e}"));
        assert!(
            (200..300).contains(&head.status),
            "CONNECT {authority} via {proxy} answered {} {}",
            head.status,
            head.reason
        );
        conn
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Half-closes the connection (no more bytes from us).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads one response: skips 1xx, then reads the body by content-length, chunked coding, or
    /// until the server closes.
    pub fn read_response(&mut self, timeout: Duration) -> Result<RawResponse, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut response =
                self.read_head(deadline.saturating_duration_since(Instant::now()))?;
            if (100..200).contains(&response.status) && response.status != 101 {
                continue;
            }
            if response.status == 204 || response.status == 304 {
                return Ok(response);
            }
            let chunked = response
                .header("transfer-encoding")
                .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
            let length = response
                .header("content-length")
                .and_then(|len| len.trim().parse::<usize>().ok());
            response.body = if chunked {
                let (body, trailers) = self.read_chunked(deadline)?;
                response.trailers = trailers;
                body
            } else if let Some(length) = length {
                self.read_exact_until(length, deadline)?
            } else {
                self.read_to_close(deadline)?
            };
            return Ok(response);
        }
    }

    /// Reads a response head (status line and headers); the body stays unread.
    pub fn read_head(&mut self, timeout: Duration) -> Result<RawResponse, String> {
        let deadline = Instant::now() + timeout;
        let end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end;
            }
            if self.fill(deadline)? == 0 {
                return Err(format!(
                    "connection closed before a complete response head (got {:?})",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        };
        let head: Vec<u8> = self.buf.drain(..end + 4).collect();
        let head = String::from_utf8_lossy(&head[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let _version = parts.next();
        let status = parts
            .next()
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let reason = parts.next().unwrap_or_default().to_owned();
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(RawResponse {
            status,
            reason,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        })
    }

    /// Whatever bytes arrive next (buffered ones first); empty at EOF.
    pub fn read_some(&mut self, timeout: Duration) -> Result<Vec<u8>, String> {
        if self.buf.is_empty() {
            self.fill(Instant::now() + timeout)?;
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// Exactly `n` bytes, within `timeout`.
    pub fn read_exact(&mut self, n: usize, timeout: Duration) -> Result<Vec<u8>, String> {
        self.read_exact_until(n, Instant::now() + timeout)
    }

    /// Exactly `n` bytes, by `deadline`.
    pub fn read_exact_until(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if self.fill(deadline)? == 0 {
                return Err(format!(
                    "connection closed after {} of {n} bytes",
                    self.buf.len()
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Waits until the peer closes the connection, discarding anything it sends meanwhile.
    /// `Ok` with how it closed, `Err` if it is still open at the deadline.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<Closed, String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.buf.clear();
            match self.fill(deadline) {
                Ok(0) => return Ok(Closed::Eof),
                Ok(_) => {}
                Err(e) if e.starts_with("timed out") => {
                    return Err(format!("connection still open after {timeout:?}"));
                }
                Err(e) => return Ok(Closed::Error(e)),
            }
        }
    }

    fn read_chunked(&mut self, deadline: Instant) -> Result<(Vec<u8>, Fields), String> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line(deadline)?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| format!("bad chunk size line {line:?}"))?;
            if size == 0 {
                // Trailers, up to an empty line.
                let mut trailers = Vec::new();
                loop {
                    let line = self.read_line(deadline)?;
                    if line.is_empty() {
                        return Ok((body, trailers));
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        trailers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                    }
                }
            }
            body.extend(self.read_exact_until(size, deadline)?);
            self.read_line(deadline)?;
        }
    }

    fn read_line(&mut self, deadline: Instant) -> Result<String, String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if self.fill(deadline)? == 0 {
                return Err("connection closed in the middle of a line".to_owned());
            }
        }
    }

    fn read_to_close(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        while self.fill(deadline)? != 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads more bytes into the buffer; 0 at EOF. Errors carry "timed out" at the deadline.
    fn fill(&mut self, deadline: Instant) -> Result<usize, String> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err("timed out waiting for the server".to_owned());
            }
            let slice = deadline
                .saturating_duration_since(now)
                .min(READ_SLICE)
                .max(Duration::from_millis(1));
            let _ = self.stream.set_read_timeout(Some(slice));
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(format!("read error: {e}")),
            }
        }
    }
}

/// One request on a fresh connection (`Connection: close`), for admin endpoints and simple
/// checks. `target` is sent as is: `/ready`, or `http://web.test/` through a proxy.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let host = target
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .map_or_else(|| addr.to_string(), str::to_owned);
    let mut request =
        format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut conn = RawConn::connect(addr);
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    conn.send(&bytes)
        .unwrap_or_else(|e| panic!("send {method} {target} to {addr}: {e}"));
    conn.read_response(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{method} {target} via {addr}: {e}"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
