//! Connections to upstreams: one pooled, multiplexed HTTP/2 connection per address (peer proxies
//! on the mesh transport, and HTTP/2 apps on the inbound side), and the HTTP/1.1 client for apps
//! and destinations outside the mesh.
//!
//! [`Connector`] is the seam the mTLS work wraps: today it opens plain TCP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use trellis_identity::SpiffeId;

use crate::error::ProxyError;
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
    peers: Mutex<HashMap<SocketAddr, Arc<Slot>>>,
}

#[derive(Debug, Default)]
struct Slot {
    current: ArcSwapOption<SendRequest<Body>>,
    connecting: tokio::sync::Mutex<()>,
}

impl H2Pool {
    pub(crate) fn new(connector: Connector) -> Self {
        Self {
            connector,
            peers: Mutex::default(),
        }
    }

    /// A sender on the live connection to `addr`, connecting if there is none (with mutual
    /// TLS when `peer`, the identity it must prove, is known).
    pub(crate) async fn sender(
        &self,
        addr: SocketAddr,
        peer: Option<&SpiffeId>,
        connect_timeout: Duration,
    ) -> Result<SendRequest<Body>, ProxyError> {
        let slot = {
            let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
            peers.entry(addr).or_default().clone()
        };
        if let Some(send) = live(&slot) {
            return Ok(send);
        }
        // One connection attempt at a time per address; the others wait and reuse it.
        let _connecting = slot.connecting.lock().await;
        if let Some(send) = live(&slot) {
            return Ok(send);
        }
        let io = self
            .connector
            .connect_mesh(addr, peer, connect_timeout)
            .await?;
        let tls = io.is_tls();
        let (send, conn) = h2_client()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| ProxyError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(peer.addr = %addr, %error, "HTTP/2 connection ended");
            }
        });
        slot.current.store(Some(Arc::new(send.clone())));
        tracing::debug!(peer.addr = %addr, tls, "HTTP/2 connection opened");
        Ok(send)
    }
}

fn live(slot: &Slot) -> Option<SendRequest<Body>> {
    let guard = slot.current.load();
    let send = guard.as_ref()?;
    (!send.is_closed()).then(|| SendRequest::clone(send))
}

/// HTTP/2 client settings for proxy-to-proxy and proxy-to-app connections: large windows so a
/// single stream can fill a fast link, keep-alive pings so a dead peer is noticed.
fn h2_client() -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .max_frame_size(64 * 1024)
        .max_send_buf_size(1024 * 1024)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// The HTTP/1.1 client: for apps behind the inbound side and for destinations outside the mesh.
/// Connections are pooled per address.
pub(crate) type H1Client = Client<HttpConnector, Body>;

pub(crate) fn h1_client(connect_timeout: Duration) -> H1Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .set_host(false)
        .build(connector)
}
