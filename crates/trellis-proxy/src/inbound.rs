//! The inbound side: traffic from the mesh (and captured clients) to the local app.
//!
//! The mesh listener speaks HTTP/2 with peer proxies. An ordinary request names the app
//! address in `trellis-dst` and the client's protocol in `trellis-proto`; it is forwarded to
//! the app in that protocol. A `CONNECT` stream carries TCP (and upgrades) to an app port.
//! Only the local app's declared ports are reachable: the proxy is not an open relay.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use trellis_runtime::DrainWatcher;

use crate::error::ProxyError;
use crate::forward::Upstreams;
use crate::headers::{self, TRELLIS_DST, TRELLIS_PEER, TRELLIS_PROTO, TRELLIS_SERVICE};
use crate::metrics::{Metrics, Reporter};
use crate::observe::{ConnAddrs, RequestObserver, TcpObserver};
use crate::orig_dst::original_dst;
use crate::pool::{Body, empty};
use crate::state::{Snapshot, State};
use crate::tunnel::relay;

/// The inbound side of one proxy.
#[derive(Debug)]
pub(crate) struct Inbound {
    state: Arc<State>,
    upstreams: Arc<Upstreams>,
    metrics: Metrics,
}

impl Inbound {
    pub(crate) fn new(state: Arc<State>, upstreams: Arc<Upstreams>, metrics: Metrics) -> Self {
        Self {
            state,
            upstreams,
            metrics,
        }
    }

    /// Serve one connection from a peer proxy on the mesh transport.
    pub(crate) async fn serve_mesh(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        drain: DrainWatcher,
    ) {
        let local = stream.local_addr().unwrap_or(client);
        let addrs = ConnAddrs { client, local };
        let this = self.clone();
        let service = service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, Infallible>(this.handle(addrs, req).await) }
        });
        crate::serve::http2(stream, &drain, service).await;
    }

    /// Serve one connection captured on its way to the app (clients outside the mesh): relay it
    /// to the app port it was addressed to.
    pub(crate) async fn serve_captured(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        _drain: DrainWatcher,
    ) {
        let snapshot = self.state.load();
        let local = stream.local_addr().unwrap_or(client);
        let mut obs = TcpObserver::start(
            &self.metrics,
            Reporter::Destination,
            &snapshot.node,
            ConnAddrs { client, local },
        );
        let target = match original_dst(&stream) {
            Ok(dst) if dst != local => dst,
            _ => {
                tracing::warn!("inbound capture connection was not redirected; closing");
                return;
            }
        };
        // The app listens on the same port, on its own address.
        let app = SocketAddr::new(snapshot.app_address, target.port());
        if snapshot.app_port(app).is_none() {
            return obs.fail(&ProxyError::NotAnAppPort { target: app });
        }
        obs.set_upstream(app);
        let t = snapshot.timeouts;
        match self.upstreams.connector.connect(app, t.connect).await {
            Ok(upstream) => {
                obs.connected();
                obs.close(relay(stream, upstream, t.idle).await);
            }
            Err(error) => obs.fail(&error),
        }
    }

    /// One request (or CONNECT stream) from a peer proxy.
    async fn handle(&self, addrs: ConnAddrs, mut req: Request<Incoming>) -> Response<Body> {
        let snapshot = self.state.load();
        let mut obs = RequestObserver::start(
            &self.metrics,
            Reporter::Destination,
            &snapshot.node,
            &req,
            addrs,
        );
        if let Some((workload, namespace)) = req
            .headers()
            .get(TRELLIS_PEER)
            .and_then(headers::parse_peer)
        {
            obs.set_source(workload.into(), namespace.into());
        }
        if let Some(service) = req
            .headers()
            .get(TRELLIS_SERVICE)
            .and_then(|v| v.to_str().ok())
        {
            obs.set_service(service.into());
        }
        let t = snapshot.timeouts;

        if req.method() == Method::CONNECT {
            return self.connect(req, obs, &snapshot).await;
        }

        // Where the caller's proxy says this request is for, and in which protocol.
        let target = match app_target(req.headers().get(TRELLIS_DST), &snapshot) {
            Ok(target) => target,
            Err(error) => return obs.fail(&error, Version::HTTP_2),
        };
        obs.set_upstream(target);
        let http1 = req
            .headers()
            .get(TRELLIS_PROTO)
            .is_some_and(|v| v == "http1");
        if http1 {
            obs.set_client_http1();
        }
        headers::strip_internal(req.headers_mut());
        headers::strip_hop_by_hop(req.headers_mut());
        if let Some(id) = req.headers().get(headers::X_REQUEST_ID) {
            obs.set_request_id(id.clone());
        }
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, obs.count_request(body));
        let result = if http1 {
            self.upstreams.send_h1(target, req, t.request).await
        } else {
            self.upstreams
                .send_h2(target, req, t.connect, t.request)
                .await
        };
        obs.respond(result, Version::HTTP_2)
    }

    /// A `CONNECT` stream to an app port: connect, answer 200, relay.
    async fn connect(
        &self,
        mut req: Request<Incoming>,
        obs: RequestObserver,
        snapshot: &Snapshot,
    ) -> Response<Body> {
        let target = match req
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        {
            Some(target) => target,
            None => {
                return obs.fail(
                    &ProxyError::BadRequest {
                        reason: "CONNECT target must be ip:port",
                    },
                    Version::HTTP_2,
                );
            }
        };
        if snapshot.app_port(target).is_none() {
            return obs.fail(&ProxyError::NotAnAppPort { target }, Version::HTTP_2);
        }
        let t = snapshot.timeouts;
        let upstream = match self.upstreams.connector.connect(target, t.connect).await {
            Ok(upstream) => upstream,
            Err(error) => return obs.fail(&error, Version::HTTP_2),
        };
        let mut obs = obs;
        obs.set_upstream(target);
        let mut tcp = obs.into_tcp(None);
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => tcp.close(relay(TokioIo::new(upgraded), upstream, t.idle).await),
                Err(error) => {
                    tracing::debug!(%error, "tunnel stream ended before it opened");
                    tcp.set_sni(None);
                    tcp.close(Default::default());
                }
            }
        });
        Response::new(empty())
    }
}

/// The app address named by `trellis-dst`, if it is one of the local app's ports.
fn app_target(
    value: Option<&http::HeaderValue>,
    snapshot: &Snapshot,
) -> Result<SocketAddr, ProxyError> {
    let target: SocketAddr = value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or(ProxyError::BadRequest {
            reason: "mesh request without a valid trellis-dst",
        })?;
    match snapshot.app_port(target) {
        Some(_) => Ok(target),
        None => Err(ProxyError::NotAnAppPort { target }),
    }
}
