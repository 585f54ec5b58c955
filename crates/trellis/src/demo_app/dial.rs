//! How the demo app reaches a backend: a TCP connection straight to it, or to the explicit
//! HTTP proxy (the sidecar) when one is configured.
//!
//! - HTTP and gRPC connections come from [`Dialer`], the connector of both the HTTP client and
//!   the gRPC channels. Through a proxy it connects to the proxy's address whatever the URI;
//!   the HTTP client then sends absolute-form requests (the connection says it is proxied),
//!   and gRPC sends HTTP/2 with prior knowledge whose `:authority` names the backend, which
//!   is how the Trellis proxy routes it.
//! - TCP backends get [`tcp`]: directly, or a `CONNECT host:port` tunnel through the proxy.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{
    AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader,
    ReadBuf,
};
use tokio::net::TcpStream;

use super::backend::ProxyAddr;

/// The longest CONNECT response line we read before giving up on the proxy.
const MAX_HEAD_LINE: u64 = 8 << 10;
/// At most this many header lines in a CONNECT response.
const MAX_HEAD_LINES: usize = 100;
/// The most of a refused CONNECT's body we show.
const MAX_REFUSAL_BODY: usize = 1024;

/// Opens connections for the HTTP client and the gRPC channels (a tower `Service<Uri>`).
#[derive(Debug, Clone)]
pub(super) struct Dialer {
    proxy: Option<ProxyAddr>,
}

/// A connection from [`Dialer`]: TCP, and whether it goes to a proxy (which makes the HTTP
/// client write absolute-form request targets).
#[derive(Debug)]
pub(super) struct Conn {
    tcp: TcpStream,
    proxied: bool,
}

/// A byte stream to a TCP backend, possibly inside a CONNECT tunnel. Buffered: the proxy's
/// answer to CONNECT and the server's first bytes may arrive in one read.
pub(super) type TcpConn = BufReader<TcpStream>;

impl Dialer {
    pub(super) fn new(proxy: Option<ProxyAddr>) -> Self {
        Self { proxy }
    }
}

impl tower::Service<Uri> for Dialer {
    type Response = TokioIo<Conn>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<Conn>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let proxy = self.proxy.clone();
        Box::pin(async move {
            let (addr, proxied) = match &proxy {
                Some(proxy) => (proxy.as_str().to_owned(), true),
                None => (host_port(&uri)?, false),
            };
            let tcp = connect(&addr, proxied).await?;
            Ok(TokioIo::new(Conn { tcp, proxied }))
        })
    }
}

/// A connection to a TCP backend (`host:port`): straight to it, or through the proxy's
/// `CONNECT` tunnel (the proxy answers 2xx once it reached the backend).
pub(super) async fn tcp(proxy: Option<&ProxyAddr>, target: &str) -> io::Result<TcpConn> {
    let Some(proxy) = proxy else {
        return Ok(BufReader::new(connect(target, false).await?));
    };
    let mut stream = BufReader::new(connect(proxy.as_str(), true).await?);
    stream
        .get_mut()
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    // The status line, then header lines up to the blank line. What follows stays in the
    // buffer: it is already the backend's.
    let status_line = read_line(&mut stream).await?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok());
    let mut content_length = 0;
    for _ in 0..MAX_HEAD_LINES {
        let line = read_line(&mut stream).await?;
        if line.is_empty() {
            if let Some(200..=299) = status {
                return Ok(stream);
            }
            // A refusal usually says why in a short body (Trellis: the error, one line).
            let mut why = vec![0; content_length.min(MAX_REFUSAL_BODY)];
            let why = match stream.read_exact(&mut why).await {
                Ok(_) => String::from_utf8_lossy(&why).trim().to_owned(),
                Err(_) => String::new(),
            };
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            };
            return Err(io::Error::other(format!(
                "the proxy {} refused CONNECT {target}: {status_line:?}{why}",
                proxy.as_str()
            )));
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    Err(io::Error::other(format!(
        "the proxy {} answered CONNECT with more than {MAX_HEAD_LINES} header lines",
        proxy.as_str()
    )))
}

/// One line without its line ending (`\n` or `\r\n`); an error at EOF or past
/// [`MAX_HEAD_LINE`] bytes.
pub(super) async fn read_line(stream: &mut TcpConn) -> io::Result<String> {
    let mut line = Vec::new();
    let n = (&mut *stream)
        .take(MAX_HEAD_LINE)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 || line.last() != Some(&b'\n') {
        let why = if n as u64 == MAX_HEAD_LINE {
            format!("a line longer than {MAX_HEAD_LINE} bytes")
        } else {
            "the connection closed mid-line".to_owned()
        };
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

async fn connect(addr: &str, proxy: bool) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| {
        let what = if proxy {
            format!("connecting to the proxy {addr} (is it running?): {e}")
        } else {
            format!("connecting to {addr}: {e}")
        };
        io::Error::new(e.kind(), what)
    })?;
    tcp.set_nodelay(true).ok();
    Ok(tcp)
}

/// `host:port` of an `http://` URI (port 80 when absent).
fn host_port(uri: &Uri) -> io::Result<String> {
    let authority = uri
        .authority()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri} has no host")))?;
    Ok(format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    ))
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new().proxy(self.proxied)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}
