//! Byte streams: opening a tunnel to a destination (direct TCP, or an HTTP/2 `CONNECT` stream
//! through the destination's proxy, the HBONE shape) and relaying bytes both ways with an idle
//! timeout and byte counts.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use trellis_identity::SpiffeId;

use crate::error::ProxyError;
use crate::forward::Upstreams;
use crate::h2_client::H2Io;
use crate::headers::TRELLIS_META;

/// A stream to a destination.
#[derive(Debug)]
pub(crate) enum Tunnel {
    /// Straight to the destination (outside the mesh, or the local app).
    Tcp(TcpStream),
    /// A `CONNECT` stream on the pooled HTTP/2 connection to the destination's proxy.
    Mesh(H2Io),
}

/// Open a stream to `target`: through the proxy at `mesh` when the destination is in the mesh,
/// directly otherwise. `meta` (`trellis-meta`) names the calling workload and the service for
/// the far side's telemetry.
pub(crate) async fn open(
    upstreams: &Upstreams,
    target: SocketAddr,
    mesh: Option<SocketAddr>,
    identity: Option<&SpiffeId>,
    connect_timeout: Duration,
    meta: &http::HeaderValue,
) -> Result<Tunnel, ProxyError> {
    let Some(proxy) = mesh else {
        return Ok(Tunnel::Tcp(
            upstreams.connector.connect(target, connect_timeout).await?,
        ));
    };
    let conn = upstreams
        .h2
        .sender(proxy, identity, connect_timeout)
        .await?;
    let uri: Uri = target
        .to_string()
        .parse()
        .map_err(|_| ProxyError::BadRequest {
            reason: "invalid tunnel target",
        })?;
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = uri;
    req.headers_mut().insert(TRELLIS_META, meta.clone());
    let open = async {
        let ready = upstreams
            .h2
            .ready(conn, proxy, identity, connect_timeout)
            .await?;
        ready
            .connect(req)
            .await
            .map_err(|source| ProxyError::Upstream {
                addr: proxy,
                source: source.into(),
            })
    };
    let (resp, io) = tokio::time::timeout(connect_timeout, open)
        .await
        .map_err(|_| ProxyError::ConnectTimeout {
            addr: proxy,
            timeout: connect_timeout,
        })??;
    if resp.status() != StatusCode::OK {
        return Err(ProxyError::TunnelRefused {
            addr: proxy,
            target,
            status: resp.status(),
        });
    }
    Ok(Tunnel::Mesh(io))
}

/// What a relay moved before it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// Bytes from the client to the upstream.
    pub(crate) received: u64,
    /// Bytes from the upstream to the client.
    pub(crate) sent: u64,
    /// The relay ended because nothing moved for the idle timeout.
    pub(crate) idle_timeout: bool,
    /// The relay ended with an I/O error (reset, broken pipe).
    pub(crate) error: bool,
}

/// Each direction's buffer. Zeroed when the relay starts, so it is resident at once: 16 KiB (a
/// TLS record, an HTTP/2 frame at the default size) keeps a thousand tunnels at 32 MB rather
/// than the 128 MB that 64 KiB cost; bulk transfers still move 16 KiB per system call.
const RELAY_BUFFER: usize = 16 * 1024;

/// Copy bytes both ways until both sides are done (half-closes are passed on), an I/O error, or
/// `idle` passes with no byte moving in either direction.
pub(crate) async fn relay<A, B>(client: A, upstream: B, idle: Duration) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let counts = Counts::default();
    let mut client = Counted {
        inner: client,
        count: &counts.received,
    };
    let mut upstream = Counted {
        inner: upstream,
        count: &counts.sent,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        RELAY_BUFFER,
        RELAY_BUFFER,
    );
    let (idle_timeout, error) = tokio::select! {
        result = copy => (false, result.is_err()),
        () = idle_watch(&counts, idle) => (true, false),
    };
    Relayed {
        received: counts.received.load(Ordering::Relaxed),
        sent: counts.sent.load(Ordering::Relaxed),
        idle_timeout,
        error,
    }
}

#[derive(Debug, Default)]
struct Counts {
    received: AtomicU64,
    sent: AtomicU64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.received.load(Ordering::Relaxed) + self.sent.load(Ordering::Relaxed)
    }
}

/// Resolves once a whole `idle` period passes with no byte read on either side.
async fn idle_watch(counts: &Counts, idle: Duration) {
    if idle.is_zero() {
        return std::future::pending().await;
    }
    let mut seen = counts.total();
    loop {
        tokio::time::sleep(idle).await;
        let now = counts.total();
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// Counts the bytes read from a stream.
struct Counted<'a, S> {
    inner: S,
    count: &'a AtomicU64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.count.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Tunnel::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Tunnel::Mesh(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Tunnel::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Tunnel::Mesh(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Tunnel::Tcp(s) => Pin::new(s).poll_flush(cx),
            Tunnel::Mesh(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Tunnel::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Tunnel::Mesh(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Tunnel::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Tunnel::Mesh(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Tunnel::Tcp(s) => s.is_write_vectored(),
            Tunnel::Mesh(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relay_copies_both_ways_and_counts() {
        let (client, mut client_far) = tokio::io::duplex(1024);
        let (upstream, mut upstream_far) = tokio::io::duplex(1024);
        let task = tokio::spawn(relay(client, upstream, Duration::from_secs(60)));
        client_far.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        upstream_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        upstream_far.write_all(b"world!").await.unwrap();
        let mut buf = [0u8; 6];
        client_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"world!");
        drop(client_far);
        drop(upstream_far);
        let r = task.await.unwrap();
        assert_eq!((r.received, r.sent), (5, 6));
        assert!(!r.idle_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn relay_ends_after_idle_timeout() {
        let (client, _client_far) = tokio::io::duplex(1024);
        let (upstream, _upstream_far) = tokio::io::duplex(1024);
        let r = relay(client, upstream, Duration::from_secs(5)).await;
        assert!(r.idle_timeout);
    }
}
