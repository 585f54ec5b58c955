//! Sending a request upstream: the connections both sides share and the per-hop rewriting of
//! the request's version and target.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;

use http::header;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};

use std::sync::Arc;

use trellis_identity::SpiffeId;

use crate::error::ProxyError;
use crate::h2_client::RecvBody;
use crate::mtls::MeshTls;
use crate::pool::{Body, Connector, H1Pool, H2Pool};

/// Every upstream connection the proxy holds.
#[derive(Debug)]
pub(crate) struct Upstreams {
    pub(crate) connector: Connector,
    /// HTTP/2: peer proxies (mesh transport) and HTTP/2 apps.
    pub(crate) h2: H2Pool,
    /// HTTP/1.1: apps and destinations outside the mesh.
    pub(crate) h1: H1Pool,
}

impl Upstreams {
    pub(crate) fn new(connect_timeout: Duration, tls: Option<Arc<MeshTls>>) -> Self {
        let connector = Connector::new(tls);
        Self {
            connector: connector.clone(),
            h2: H2Pool::new(connector.clone()),
            h1: H1Pool::new(connector, connect_timeout),
        }
    }

    /// Send `req` as HTTP/2 on the pooled connection to `addr`. The request's URI must be
    /// absolute (its authority becomes `:authority`).
    pub(crate) async fn send_h2(
        &self,
        addr: SocketAddr,
        peer: Option<&SpiffeId>,
        mut req: Request<Body>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Response<RecvBody>, ProxyError> {
        *req.version_mut() = Version::HTTP_2;
        // HTTP/2 carries the host in :authority; a Host header would be a second source of truth.
        req.headers_mut().remove(header::HOST);
        // The request's timeout covers waiting for room for a stream, too (a peer at its
        // concurrent-stream limit); connecting has the connect timeout.
        let conn = self.h2.sender(addr, peer, connect_timeout).await?;
        let send = async {
            let ready = self.h2.ready(conn, addr, peer, connect_timeout).await?;
            ready
                .send(req)
                .await
                .map_err(|source| ProxyError::Upstream {
                    addr,
                    source: source.into(),
                })
        };
        with_timeout(addr, request_timeout, std::pin::pin!(send)).await?
    }

    /// Send `req` as HTTP/1.1 to `addr`, keeping its `Host` header (set from the URI's
    /// authority when absent).
    ///
    /// Not an `async fn`: the request is rewritten here and only the pool's future is returned,
    /// so the caller's state does not hold the request a second time (every byte of a
    /// request's future is copied and touched on each request).
    pub(crate) fn send_h1(
        &self,
        addr: SocketAddr,
        mut req: Request<Body>,
        request_timeout: Duration,
    ) -> impl Future<Output = Result<Response<RecvBody>, ProxyError>> + Send + '_ {
        // The target stays as it is: the pool puts it in origin-form (`/path?query`) with a
        // `Host` from its authority when it has none (a request that came as HTTP/2).
        *req.version_mut() = Version::HTTP_11;
        with_timeout(addr, request_timeout, self.h1.send(addr, req))
            .map(|sent| sent.and_then(std::convert::identity))
    }
}

/// `fut`, bounded by `timeout` (unbounded when zero). A plain function: an `async fn` would
/// keep `fut` twice in its state, as its argument and inside the `Timeout`.
fn with_timeout<F: Future>(
    addr: SocketAddr,
    timeout: Duration,
    fut: F,
) -> impl Future<Output = Result<F::Output, ProxyError>> {
    if timeout.is_zero() {
        return Either::Left(fut.map(Ok));
    }
    Either::Right(
        tokio::time::timeout(timeout, fut)
            .map(move |done| done.map_err(|_| ProxyError::Timeout { addr, timeout })),
    )
}

/// `http://authority/path`.
pub(crate) fn absolute(authority: Authority, path: PathAndQuery) -> Result<Uri, ProxyError> {
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| ProxyError::BadRequest {
            reason: "invalid request target",
        })
}
