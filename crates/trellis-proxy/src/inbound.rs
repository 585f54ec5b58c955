//! The inbound side: traffic from the mesh (and captured clients) to the local app.
//!
//! The mesh listener speaks HTTP/2 with peer proxies. An ordinary request names the app
//! address and the client's protocol in `trellis-meta` (`dst`, `proto`); it is forwarded to
//! the app in that protocol. A `CONNECT` stream carries TCP (and upgrades) to an app port.
//! Only the local app's declared ports are reachable: the proxy is not an open relay. Every
//! request and connection that reaches the app passes the authorization policies first
//! (`authz`): a denied request is answered 403, a denied connection closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpStream;
use trellis_model::{MtlsMode, Protocol as Declared};
use trellis_runtime::DrainWatcher;

use crate::authz::{self, Attributes, Denial, HttpAttributes};
use crate::detect::{Protocol, detect};
use crate::error::ProxyError;
use crate::forward::Upstreams;
use crate::h2_client::RecvBody;
use crate::h2_server::Tunnel;
use crate::headers::{self, TRELLIS_META};
use crate::metrics::{Metrics, Reporter, ResponseFlags};
use crate::mtls::MeshTls;
use crate::observe::{ConnAddrs, PeerConn, RequestObserver, TcpObserver};
use crate::orig_dst::original_dst;
use crate::pool::{Body, empty};
use crate::state::{Snapshot, State};
use crate::tunnel::relay;

/// The inbound side of one proxy.
#[derive(Debug)]
pub(crate) struct Inbound {
    state: Arc<State>,
    /// This proxy's identity, when it has one: the mesh listener then accepts mutual TLS.
    tls: Option<Arc<MeshTls>>,
    upstreams: Arc<Upstreams>,
    metrics: Metrics,
}

impl Inbound {
    pub(crate) fn new(
        state: Arc<State>,
        upstreams: Arc<Upstreams>,
        metrics: Metrics,
        tls: Option<Arc<MeshTls>>,
    ) -> Self {
        Self {
            state,
            tls,
            upstreams,
            metrics,
        }
    }

    /// Serve one connection from a peer proxy on the mesh transport: mutual TLS (the peer's
    /// verified identity then labels every request) or, where the mTLS mode allows it,
    /// plaintext HTTP/2.
    pub(crate) async fn serve_mesh(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        drain: DrainWatcher,
    ) {
        let snapshot = self.state.load();
        let t = snapshot.timeouts;
        let local = stream.local_addr().unwrap_or(client);
        let addrs = ConnAddrs { client, local };
        // As on the explicit proxy port (outbound.rs): only peer proxies call here and they
        // speak first (a ClientHello or the HTTP/2 preface), so no server-first protocol needs
        // the short `detect` timeout and nothing falls back to TCP. A peer slow to send its
        // first bytes (a busy node) waits up to the header timeout instead of being taken for
        // opaque TCP and closed mid-handshake.
        let (protocol, io) = match detect(stream, t.header.max(t.detect)).await {
            Ok(detected) => detected,
            Err(error) => {
                tracing::debug!(%error, "mesh connection closed before it spoke");
                return;
            }
        };
        match protocol {
            Protocol::Tls { .. } => {
                let Some(tls) = &self.tls else {
                    tracing::warn!(
                        "a peer sent mutual TLS but this proxy has no identity; closing"
                    );
                    return;
                };
                let (stream, peer) = match tokio::time::timeout(t.header, tls.accept(io)).await {
                    Ok(Ok(accepted)) => accepted,
                    Ok(Err(reason)) => {
                        tracing::warn!(%reason, "mutual TLS handshake with a peer failed");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(timeout = ?t.header, "mutual TLS handshake with a peer timed out");
                        return;
                    }
                };
                let peer = PeerConn::new(peer.map(|id| id.to_string().into()));
                self.serve_mesh_h2(stream, addrs, peer, &drain).await;
            }
            Protocol::Http2 if snapshot.plaintext_allowed() => {
                self.serve_mesh_h2(io, addrs, PeerConn::default(), &drain)
                    .await;
            }
            Protocol::Http2 => {
                tracing::warn!(
                    "plaintext from a peer refused: this workload's mTLS mode is STRICT"
                );
            }
            Protocol::Http1 | Protocol::Opaque => {
                tracing::debug!(
                    protocol = protocol.as_str(),
                    "not the mesh protocol; closing"
                );
            }
        }
    }

    async fn serve_mesh_h2<I>(
        self: &Arc<Self>,
        io: I,
        addrs: ConnAddrs,
        peer: PeerConn,
        drain: &DrainWatcher,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        crate::h2_server::serve(io, drain, |req| {
            let this = self.clone();
            let peer = peer.clone();
            // Boxed: each stream's task is spawned with this future in it; a pointer moves
            // cheaper than the whole state machine (4.8 KB). Allocated first and written
            // after, so that it is built in the box: `Box::pin(future)` builds it on the stack
            // and copies all 4.8 KB in (callgrind: ~600 instructions of memcpy per request).
            Box::into_pin(Box::write(Box::new_uninit(), async move {
                this.handle(addrs, &peer, req).await
            }))
        })
        .await;
    }

    /// Serve one connection captured on its way to the app (clients outside the mesh,
    /// PERMISSIVE): detect the protocol; HTTP is served request by request (with telemetry and
    /// the edge headers), anything else is relayed to the app port it was addressed to. Ports
    /// declared `tcp`/`tls` skip detection (server-first protocols).
    pub(crate) async fn serve_captured(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        drain: DrainWatcher,
    ) {
        let snapshot = self.state.load();
        let local = stream.local_addr().unwrap_or(client);
        let addrs = ConnAddrs { client, local };
        let target = match original_dst(&stream) {
            Ok(dst) if dst != local => SocketAddr::new(snapshot.app_address, dst.port()),
            _ => {
                tracing::warn!("inbound capture connection was not redirected; closing");
                return;
            }
        };
        let declared = snapshot.app_port(target);
        if matches!(declared, Some(Declared::Tcp | Declared::Tls)) {
            return self.relay_to_app(stream, addrs, target, &snapshot).await;
        }
        let (protocol, io) = match detect(stream, snapshot.timeouts.detect).await {
            Ok(detected) => detected,
            Err(error) => {
                tracing::debug!(%error, "connection closed during protocol detection");
                return;
            }
        };
        let http1 = match protocol {
            Protocol::Http1 => true,
            Protocol::Http2 => false,
            Protocol::Tls { .. } | Protocol::Opaque => {
                return self.relay_to_app(io, addrs, target, &snapshot).await;
            }
        };
        let this = self.clone();
        let service = service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, Infallible>(this.handle_captured(addrs, target, http1, req).await) }
        });
        if http1 {
            crate::serve::http1(io, snapshot.timeouts.header, &drain, service).await;
        } else {
            crate::serve::http2(io, &drain, service).await;
        }
    }

    /// Relay a captured connection's bytes to the app.
    async fn relay_to_app<I>(
        &self,
        io: I,
        addrs: ConnAddrs,
        target: SocketAddr,
        snapshot: &Snapshot,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut obs =
            TcpObserver::start(&self.metrics, Reporter::Destination, &snapshot.node, addrs);
        if let Err(error) = admit_captured(target, snapshot) {
            return obs.fail(&error);
        }
        let attrs = tcp_attributes(None, addrs, target);
        if let Err(denial) = snapshot.authz.check(&attrs) {
            return obs.fail(&ProxyError::Denied { denial });
        }
        obs.set_upstream(target);
        let t = snapshot.timeouts;
        match self.upstreams.connector.connect(target, t.connect).await {
            Ok(upstream) => {
                obs.connected();
                obs.close(relay(io, upstream, t.idle).await);
            }
            Err(error) => obs.fail(&error),
        }
    }

    /// One HTTP request from a client outside the mesh, captured on its way to the app.
    async fn handle_captured(
        &self,
        addrs: ConnAddrs,
        target: SocketAddr,
        http1: bool,
        mut req: Request<Incoming>,
    ) -> Response<Body> {
        let snapshot = self.state.load();
        let version = if http1 {
            Version::HTTP_11
        } else {
            Version::HTTP_2
        };
        let mut obs = RequestObserver::start(
            &self.metrics,
            Reporter::Destination,
            &snapshot.node,
            &req,
            addrs,
        );
        if let Err(error) = admit_captured(target, &snapshot) {
            return obs.fail(&error, version);
        }
        // This is where the request enters the mesh: the edge headers are ours to set.
        obs.set_request_id(headers::ensure_request_id(req.headers_mut()));
        headers::strip_internal(req.headers_mut());
        headers::set_forwarded(req.headers_mut(), addrs.client.ip(), "http");
        // A client outside the mesh has no principal.
        let attrs = http_attributes(None, addrs, target, &req);
        if let Err(denial) = snapshot.authz.check(&attrs) {
            return denied(obs, &denial, version);
        }
        let resp = self
            .forward_to_app(req.map(RecvBody::H1), &mut obs, target, http1, &snapshot)
            .await;
        obs.respond(resp, version)
    }

    /// Send a request to the app in the protocol the client spoke.
    async fn forward_to_app(
        &self,
        mut req: Request<RecvBody>,
        obs: &mut RequestObserver,
        target: SocketAddr,
        http1: bool,
        snapshot: &Snapshot,
    ) -> Result<Response<RecvBody>, ProxyError> {
        obs.set_upstream(target);
        headers::strip_hop_by_hop(req.headers_mut());
        let t = snapshot.timeouts;
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, obs.count_request(body));
        if http1 {
            // Pinned where it is built (here and at the other hot `.await`s of big futures):
            // `fut.await` moves a returned future into the caller's state, twice (2.6 KB each).
            std::pin::pin!(self.upstreams.send_h1(target, req, t.request)).await
        } else {
            let mut req = req;
            if req.uri().authority().is_none() {
                let authority = match crate::observe::authority_of(&req) {
                    Some(authority) => authority,
                    None => target
                        .to_string()
                        .parse()
                        .map_err(|_| ProxyError::BadRequest {
                            reason: "invalid authority",
                        })?,
                };
                let path = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                *req.uri_mut() = crate::forward::absolute(authority, path)?;
            }
            self.upstreams
                .send_h2(target, None, req, t.connect, t.request)
                .await
        }
    }

    /// One request (or CONNECT stream) from a peer proxy.
    async fn handle(
        &self,
        addrs: ConnAddrs,
        peer: &PeerConn,
        mut req: Request<RecvBody>,
    ) -> Response<Body> {
        let snapshot = self.state.load();
        let mut obs = RequestObserver::start(
            &self.metrics,
            Reporter::Destination,
            &snapshot.node,
            &req,
            addrs,
        );
        obs.set_peer(peer);
        // Taken out, not read and removed later: one lookup of the name instead of two.
        let meta = req
            .headers_mut()
            .remove(TRELLIS_META)
            .map(|v| peer.meta(&v));
        if let Some(meta) = &meta {
            if let Some((workload, namespace)) = &meta.peer {
                obs.set_source(workload.clone(), namespace.clone());
            }
            if let Some(service) = &meta.service {
                obs.set_service(service.clone());
            }
        }

        if req.method() == Method::CONNECT {
            // Boxed: a tunnel's setup would otherwise be part of every request's state.
            return Box::pin(self.connect(req, obs, addrs, peer, &snapshot)).await;
        }

        // Where the caller's proxy says this request is for, and in which protocol.
        let target = match app_target(meta.as_ref().and_then(|m| m.dst), peer, &snapshot) {
            Ok(target) => target,
            Err(error) => return obs.fail(&error, Version::HTTP_2),
        };
        let client_http1 = meta.is_some_and(|m| m.http1);
        if client_http1 {
            obs.set_client_http1();
        }
        // The app gets the protocol its port declares (`http2`/`grpc`: HTTP/2 cleartext;
        // `http`: HTTP/1.1, as Istio does), so an HTTP/2 client can call an HTTP/1.1-only app.
        // An HTTP/2 request that asks for trailers (`te: trailers`, as every gRPC client does)
        // stays HTTP/2 on an `http` port: HTTP/1.1 would lose them.
        let http1 = match snapshot.app_port(target) {
            Some(Declared::Http2 | Declared::Grpc) => false,
            Some(Declared::Http) => client_http1 || !wants_trailers(req.headers()),
            _ => client_http1,
        };
        headers::strip_internal(req.headers_mut());
        obs.note_request_id(req.headers());
        let principal = peer.principal.as_deref();
        let attrs = http_attributes(principal, addrs, target, &req);
        if let Err(denial) = snapshot.authz.check(&attrs) {
            return denied(obs, &denial, Version::HTTP_2);
        }
        let result = self
            .forward_to_app(req, &mut obs, target, http1, &snapshot)
            .await;
        obs.respond(result, Version::HTTP_2)
    }

    /// A `CONNECT` stream to an app port: connect, answer 200, relay.
    async fn connect(
        &self,
        mut req: Request<RecvBody>,
        obs: RequestObserver,
        addrs: ConnAddrs,
        peer: &PeerConn,
        snapshot: &Snapshot,
    ) -> Response<Body> {
        // Put there by the mesh transport's server for every CONNECT stream.
        let Some(tunnel) = req.extensions_mut().remove::<Tunnel>() else {
            let reason = "CONNECT without a stream to tunnel";
            return obs.fail(&ProxyError::BadRequest { reason }, Version::HTTP_2);
        };
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
        if let Err(error) = admit(target, peer, snapshot) {
            return obs.fail(&error, Version::HTTP_2);
        }
        // A tunnel is TCP to the policies: refused before the app is connected to.
        let attrs = tcp_attributes(peer.principal.as_deref(), addrs, target);
        if let Err(denial) = snapshot.authz.check(&attrs) {
            return denied(obs, &denial, Version::HTTP_2);
        }
        let t = snapshot.timeouts;
        let upstream = match self.upstreams.connector.connect(target, t.connect).await {
            Ok(upstream) => upstream,
            Err(error) => return obs.fail(&error, Version::HTTP_2),
        };
        let mut obs = obs;
        obs.set_upstream(target);
        let mut tcp = obs.into_tcp(None);
        tokio::spawn(async move {
            match tunnel.opened().await {
                Some(stream) => tcp.close(relay(stream, upstream, t.idle).await),
                None => {
                    tracing::debug!("tunnel stream ended before it opened");
                    tcp.set_sni(None);
                    tcp.close(Default::default());
                }
            }
        });
        Response::new(empty())
    }
}

/// Does the client ask for trailers (`te: trailers`)?
fn wants_trailers(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
}

/// What the policies see of an HTTP request for `target`.
fn http_attributes<'a, B>(
    principal: Option<&'a str>,
    addrs: ConnAddrs,
    target: SocketAddr,
    req: &'a Request<B>,
) -> Attributes<'a> {
    Attributes {
        principal,
        source: addrs.client.ip(),
        destination: target,
        http: Some(HttpAttributes {
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
        }),
    }
}

/// What the policies see of a connection (or tunnel) to `target`.
fn tcp_attributes(principal: Option<&str>, addrs: ConnAddrs, target: SocketAddr) -> Attributes<'_> {
    Attributes {
        principal,
        source: addrs.client.ip(),
        destination: target,
        http: None,
    }
}

/// A request the policies denied: 403 `RBAC: access denied`, recorded with the `RBAC` flag.
fn denied(obs: RequestObserver, denial: &Denial, version: Version) -> Response<Body> {
    tracing::debug!(%denial, "request denied by an authorization policy");
    obs.observe_response(
        authz::denied_response(),
        version,
        ResponseFlags::AccessDenied,
    )
}

/// May this peer connection reach `target`? It must be a port of the local app, and a port
/// whose mTLS mode is STRICT only takes mutual TLS.
fn admit(target: SocketAddr, peer: &PeerConn, snapshot: &Snapshot) -> Result<(), ProxyError> {
    if snapshot.app_port(target).is_none() {
        return Err(ProxyError::NotAnAppPort { target });
    }
    if peer.principal.is_none() && snapshot.mtls_mode(target.port()) == MtlsMode::Strict {
        return Err(ProxyError::MtlsRequired { target });
    }
    Ok(())
}

/// May a captured connection (plaintext from outside the mesh) reach `target`? A port of
/// the local app whose mTLS mode is not STRICT: peers' mutual TLS arrives on the mesh port,
/// never here.
fn admit_captured(target: SocketAddr, snapshot: &Snapshot) -> Result<(), ProxyError> {
    admit(target, &PeerConn::default(), snapshot)
}

/// The app address `trellis-meta` names (`dst`), if this peer may reach it.
fn app_target(
    dst: Option<SocketAddr>,
    peer: &PeerConn,
    snapshot: &Snapshot,
) -> Result<SocketAddr, ProxyError> {
    let target = dst.ok_or(ProxyError::BadRequest {
        reason: "mesh request without a valid trellis-meta dst",
    })?;
    admit(target, peer, snapshot).map(|()| target)
}
