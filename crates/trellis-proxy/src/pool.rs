//! Connections to upstreams: one pooled, multiplexed HTTP/2 connection per address (peer proxies
//! on the mesh transport, and HTTP/2 apps on the inbound side), and pooled HTTP/1.1 connections
//! to apps and destinations outside the mesh.
//!
//! [`Connector`] is the seam the mTLS work wraps: today it opens plain TCP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use trellis_identity::SpiffeId;

use crate::error::ProxyError;
use crate::fast_map::FastMap;
use crate::h1_client::{self, SendError};
use crate::h2_client::{self, H2Conn, Ready, RecvBody};
use crate::mtls::{MeshStream, MeshTls};

/// Errors carried inside bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type on every hop: requests and responses stream through unbuffered.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Box any body into [`Body`].
pub(crate) fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// An empty body.
pub(crate) fn empty() -> Body {
    boxed(http_body_util::Empty::<Bytes>::new())
}

/// A body holding one short text.
pub(crate) fn full(text: impl Into<Bytes>) -> Body {
    boxed(http_body_util::Full::new(text.into()))
}

/// Opens transport connections: plain TCP to apps and destinations outside the mesh, mutual
/// TLS to peer proxies whose identity is known (auto mTLS).
#[derive(Debug, Clone, Default)]
pub(crate) struct Connector {
    tls: Option<Arc<MeshTls>>,
}

impl Connector {
    pub(crate) fn new(tls: Option<Arc<MeshTls>>) -> Self {
        Self { tls }
    }

    /// Would a connection to a peer with this identity be mutual TLS?
    pub(crate) fn uses_tls(&self, peer: Option<&SpiffeId>) -> bool {
        self.tls.is_some() && peer.is_some()
    }

    /// Connect to a peer proxy (or an HTTP/2 app): mutual TLS when the peer's identity is known
    /// and this proxy has one, checking the peer proves it; plaintext otherwise. `timeout`
    /// covers the TCP connect and the handshake.
    pub(crate) async fn connect_mesh(
        &self,
        addr: SocketAddr,
        peer: Option<&SpiffeId>,
        timeout: Duration,
    ) -> Result<MeshStream, ProxyError> {
        let connect = async {
            let tcp = self.connect(addr, timeout).await?;
            match (&self.tls, peer) {
                (Some(tls), Some(expected)) => tls.connect(tcp, addr, expected).await,
                _ => Ok(MeshStream::Plain(tcp)),
            }
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::ConnectTimeout { addr, timeout }),
        }
    }

    /// Connect to `addr` within `timeout`.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream, ProxyError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ProxyError::Connect { addr, source }),
            Err(_) => return Err(ProxyError::ConnectTimeout { addr, timeout }),
        };
        // Small writes (headers, frames) must not wait for Nagle.
        stream
            .set_nodelay(true)
            .map_err(|source| ProxyError::Connect { addr, source })?;
        Ok(stream)
    }
}

/// One multiplexed HTTP/2 connection per address, opened on first use and replaced when it
/// closes. Getting a sender for a live connection takes one short lock on the map and no
/// allocation; concurrent first requests share one connection attempt.
#[derive(Debug, Default)]
pub(crate) struct H2Pool {
    pub(crate) connector: Connector,
    peers: Mutex<FastMap<SocketAddr, Arc<Slot>>>,
}

#[derive(Debug, Default)]
struct Slot {
    current: ArcSwapOption<H2Conn>,
    connecting: tokio::sync::Mutex<()>,
}

impl H2Pool {
    pub(crate) fn new(connector: Connector) -> Self {
        Self {
            connector,
            peers: Mutex::default(),
        }
    }

    /// Room for a stream on `conn`, the connection to `addr` that [`sender`](Self::sender)
    /// gave. One found closing (GOAWAY) as the stream was about to open is replaced once.
    pub(crate) async fn ready(
        &self,
        conn: H2Conn,
        addr: SocketAddr,
        peer: Option<&SpiffeId>,
        connect_timeout: Duration,
    ) -> Result<Ready, ProxyError> {
        let failed = match conn.ready().await {
            Ok(ready) => return Ok(ready),
            Err(error) => error,
        };
        tracing::debug!(peer.addr = %addr, error = %failed, "HTTP/2 connection closing; reconnecting");
        // Boxed, as in `sender`: rare, and a connection attempt's state is large.
        let conn = Box::pin(self.sender(addr, peer, connect_timeout)).await?;
        conn.ready().await.map_err(|source| ProxyError::Upstream {
            addr,
            source: source.into(),
        })
    }

    /// The live connection to `addr`, connecting if there is none (with mutual TLS when
    /// `peer`, the identity it must prove, is known).
    pub(crate) async fn sender(
        &self,
        addr: SocketAddr,
        peer: Option<&SpiffeId>,
        connect_timeout: Duration,
    ) -> Result<H2Conn, ProxyError> {
        let slot = {
            let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
            peers.entry(addr).or_default().clone()
        };
        if let Some(send) = live(&slot) {
            return Ok(send);
        }
        // Boxed: connecting (TCP, TLS and HTTP/2 handshakes) is kilobytes of state that every
        // request's future would otherwise carry for the rare request that connects.
        Box::pin(self.connect(addr, peer, connect_timeout, &slot)).await
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        peer: Option<&SpiffeId>,
        connect_timeout: Duration,
        slot: &Slot,
    ) -> Result<H2Conn, ProxyError> {
        // One connection attempt at a time per address; the others wait and reuse it.
        let _connecting = slot.connecting.lock().await;
        if let Some(send) = live(slot) {
            return Ok(send);
        }
        let io = self
            .connector
            .connect_mesh(addr, peer, connect_timeout)
            .await?;
        let tls = io.is_tls();
        let send =
            h2_client::handshake(io, addr)
                .await
                .map_err(|source| ProxyError::Handshake {
                    addr,
                    source: source.into(),
                })?;
        slot.current.store(Some(Arc::new(send.clone())));
        tracing::debug!(peer.addr = %addr, tls, "HTTP/2 connection opened");
        Ok(send)
    }
}

fn live(slot: &Slot) -> Option<H2Conn> {
    let guard = slot.current.load();
    let send = guard.as_ref()?;
    (!send.is_closed()).then(|| H2Conn::clone(send))
}

/// HTTP/1.1 connections to apps behind the inbound side and to destinations outside the mesh,
/// kept per address for reuse (keep-alive). A request takes the first connection that is ready
/// for one (hyper's `is_ready`: no request in flight, the previous response read to its end) or
/// opens a new one; connections stay in the list while busy, so there is nothing to hand back.
/// One short lock per request, no task or channel of our own: hyper-util's pooled client did the
/// same with a checkout future raced against a lazy connect, boxed, per request.
#[derive(Debug)]
pub(crate) struct H1Pool {
    connector: Connector,
    connect_timeout: Duration,
    conns: Mutex<FastMap<SocketAddr, Vec<H1Conn>>>,
    /// Idle connections of requests without a body, which `h1_client` sends itself.
    idle: Arc<h1_client::Idle>,
}

#[derive(Debug)]
struct H1Conn {
    send: http1::SendRequest<Body>,
    /// Closed if still unused by then.
    idle_until: Instant,
}

/// What a pooled connection made of a request: the response, or why not (with the request
/// when it was never written).
type H1Sent = Result<Response<Incoming>, TrySendError<Request<Body>>>;

/// A connection unused for this long is closed (apps close theirs sooner or later, too).
const H1_IDLE: Duration = Duration::from_secs(90);

impl H1Pool {
    pub(crate) fn new(connector: Connector, connect_timeout: Duration) -> Self {
        Self {
            connector,
            connect_timeout,
            conns: Mutex::default(),
            idle: Arc::default(),
        }
    }

    /// Send `req` to `addr` on a pooled connection, or on a new one; on the wire its target is
    /// in origin-form with a `Host` header (from the target's authority if it has none). A
    /// request that a reused connection refused before writing it (the app closed the
    /// connection as we picked it) is sent once more on a new connection.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<RecvBody>, ProxyError> {
        if h1_client::handles(&req) {
            return self.send_direct(addr, req).await;
        }
        origin_form(&mut req);
        let upstream = |source: hyper::Error| ProxyError::Upstream {
            addr,
            source: source.into(),
        };
        let req = match self.try_pooled(addr, req) {
            Ok(sent) => match sent.await {
                Ok(resp) => return Ok(resp.map(RecvBody::H1)),
                Err(mut error) => match error.take_message() {
                    Some(req) => req,
                    None => return Err(upstream(error.into_error())),
                },
            },
            Err(req) => req,
        };
        let mut send = self.open(addr).await?;
        let sent = send.send_request(req);
        self.add(addr, send);
        sent.await
            .map(|resp| resp.map(RecvBody::H1))
            .map_err(upstream)
    }

    /// Send on a pooled connection that is ready, if there is one; else give the request back.
    #[allow(clippy::result_large_err)]
    fn try_pooled(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<impl Future<Output = H1Sent> + use<>, Request<Body>> {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(list) = conns.get_mut(&addr) else {
            return Err(req);
        };
        // The first ready connection wins; closed and expired ones met on the way are dropped.
        let mut i = 0;
        while let Some(conn) = list.get_mut(i) {
            if conn.send.is_closed() || conn.idle_until <= now {
                list.swap_remove(i);
            } else if conn.send.is_ready() {
                conn.idle_until = now + H1_IDLE;
                return Ok(conn.send.try_send_request(req));
            } else {
                i += 1;
            }
        }
        Err(req)
    }

    /// A request without a body, written and answered by `h1_client` on this task.
    async fn send_direct(
        &self,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<RecvBody>, ProxyError> {
        // Connecting is boxed: rare once connections are pooled, and its state is large.
        let (conn, reused) = match self.idle.take(addr) {
            Some(conn) => (conn, true),
            None => (Box::pin(self.open_direct(addr)).await?, false),
        };
        let reconnect = || Box::pin(self.open_direct(addr));
        match h1_client::send(&self.idle, addr, req, conn, reused, reconnect).await {
            Ok(resp) => Ok(resp.map(RecvBody::Direct)),
            Err(SendError::Connect(error)) => Err(error),
            Err(SendError::Exchange(error)) => Err(ProxyError::Upstream {
                addr,
                source: error.into(),
            }),
        }
    }

    async fn open_direct(&self, addr: SocketAddr) -> Result<h1_client::Conn, ProxyError> {
        let tcp = self.connector.connect(addr, self.connect_timeout).await?;
        Ok(h1_client::Conn::new(tcp))
    }

    async fn open(&self, addr: SocketAddr) -> Result<http1::SendRequest<Body>, ProxyError> {
        let tcp = self.connector.connect(addr, self.connect_timeout).await?;
        let (send, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|source| ProxyError::Handshake {
                addr,
                source: source.into(),
            })?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(upstream.addr = %addr, %error, "HTTP/1.1 connection ended");
            }
        });
        Ok(send)
    }

    fn add(&self, addr: SocketAddr, send: http1::SendRequest<Body>) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget addresses whose connections have all closed, so the map does not grow with
        // every destination ever called.
        if conns.len() > 64 {
            conns.retain(|_, list| {
                list.retain(|c| !c.send.is_closed());
                !list.is_empty()
            });
        }
        conns.entry(addr).or_default().push(H1Conn {
            send,
            idle_until: Instant::now() + H1_IDLE,
        });
    }
}

/// What an HTTP/1.1 request sent with hyper's client needs: a `Host` header (from the target's
/// authority if it has none) and the target in origin-form, `/path?query` (hyper writes an
/// absolute target as it is). `h1_client` writes both from the request as it comes.
fn origin_form<B>(req: &mut Request<B>) {
    if !req.headers().contains_key(header::HOST) {
        if let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    if req.uri().authority().is_some() {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server answering `ok` to each request; `close_after_each` closes every connection once
    /// it has answered (without saying so), as an app whose keep-alive timeout fires would.
    async fn server(close_after_each: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = conn.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if conn.write_all(reply).await.is_err() || close_after_each {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get(addr: SocketAddr) -> Request<Body> {
        Request::get("/")
            .header(http::header::HOST, addr.to_string())
            .body(empty())
            .expect("request")
    }

    async fn call(pool: &H1Pool, addr: SocketAddr) -> Result<Bytes, ProxyError> {
        let resp = pool.send(addr, get(addr)).await?;
        Ok(resp.into_body().collect().await.expect("body").to_bytes())
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (addr, accepted) = server(false).await;
        let pool = H1Pool::new(Connector::default(), Duration::from_secs(1));
        for _ in 0..20 {
            assert_eq!(call(&pool, addr).await.expect("call"), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_and_then_reuse_them() {
        let (addr, accepted) = server(false).await;
        let pool = H1Pool::new(Connector::default(), Duration::from_secs(1));
        for _ in 0..5 {
            let calls = (0..4).map(|_| call(&pool, addr));
            for result in futures_util::future::join_all(calls).await {
                assert_eq!(result.expect("call"), "ok");
            }
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!(
            (1..=4).contains(&opened),
            "{opened} connections for 4 at a time"
        );
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_not_a_failed_request() {
        let (addr, accepted) = server(true).await;
        let pool = H1Pool::new(Connector::default(), Duration::from_secs(1));
        for i in 0..30 {
            let body = call(&pool, addr).await;
            assert_eq!(body.unwrap_or_else(|e| panic!("call {i}: {e}")), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 30);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            listener.local_addr().expect("addr")
        };
        let pool = H1Pool::new(Connector::default(), Duration::from_secs(1));
        let error = call(&pool, addr).await.expect_err("refused");
        assert!(matches!(error, ProxyError::Connect { .. }), "{error}");
    }
}
