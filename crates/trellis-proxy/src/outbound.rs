//! The outbound side: traffic from the local app to the mesh.
//!
//! Two listeners feed it. The explicit proxy (`HTTP_PROXY`) receives absolute-form HTTP/1.1
//! requests, `CONNECT` tunnels and HTTP/2 prior-knowledge requests routed by `:authority`. The
//! transparent listener receives connections redirected by iptables and routes them by their
//! original destination. Either way: detect the protocol, find the destination, pick an
//! endpoint, and send over the mesh (HTTP/2 to the endpoint's proxy) or directly.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use trellis_model::{OutboundPolicy, Protocol as Declared, Timeouts};
use trellis_runtime::DrainWatcher;

use crate::detect::{Protocol, detect};
use crate::error::ProxyError;
use crate::forward::{Upstreams, absolute};
use crate::h2_client::RecvBody;
use crate::headers::{self, TRELLIS_META};
use crate::metrics::{Metrics, Reporter, ResponseFlags};
use crate::observe::{ConnAddrs, RequestObserver, authority_of};
use crate::orig_dst::original_dst;
use crate::pool::{Body, boxed, empty};
use crate::state::{Destination, Snapshot, State};
use crate::tunnel::{self, relay};
use routing::Decision;
use trellis_identity::SpiffeId;

mod attempt;
mod mirror;
mod routing;
mod tcp;

/// The outbound side of one proxy.
#[derive(Debug)]
pub(crate) struct Outbound {
    state: Arc<State>,
    upstreams: Arc<Upstreams>,
    metrics: Metrics,
    /// This proxy's own listeners: passthrough never goes there (it would loop).
    own: Vec<SocketAddr>,
    /// Request copies out at once (route mirrors), capped.
    mirror_slots: Arc<tokio::sync::Semaphore>,
}

/// Which listener accepted a connection.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    /// The explicit proxy (`HTTP_PROXY`): requests name their destination.
    Explicit,
    /// Transparent capture: the destination is the connection's original one.
    Transparent,
    /// An ingress: every request goes to this `host:port`, whatever its Host says.
    Ingress(Arc<str>),
}

/// What one downstream connection brings to each of its requests.
#[derive(Debug, Clone, Copy)]
struct ConnCtx {
    addrs: ConnAddrs,
    /// Transparent capture: where the client meant to go.
    orig_dst: Option<SocketAddr>,
    /// The version the client speaks on this connection.
    version: Version,
}

/// Where a request goes: the endpoint's app address and, in the mesh, its proxy.
#[derive(Debug, Clone)]
struct Upstream {
    target: SocketAddr,
    mesh: Option<SocketAddr>,
    /// The endpoint speaks HTTP/2 (declared `http2`/`grpc`), when reached directly.
    h2: bool,
    /// The identity the endpoint's proxy must prove: with it (and an identity of our own) the
    /// mesh connection is mutual TLS.
    identity: Option<Arc<SpiffeId>>,
    /// Its index in the destination's endpoints (`None` outside the mesh's services).
    index: Option<usize>,
    /// Its `trellis-meta` values (HTTP/1.1 client, HTTP/2 client), made once per config
    /// (`None` outside the services).
    meta: Option<[HeaderValue; 2]>,
}

impl Outbound {
    pub(crate) fn new(
        state: Arc<State>,
        upstreams: Arc<Upstreams>,
        metrics: Metrics,
        own: Vec<SocketAddr>,
    ) -> Self {
        Self {
            state,
            upstreams,
            metrics,
            own,
            mirror_slots: Arc::new(tokio::sync::Semaphore::new(mirror::MAX_IN_FLIGHT)),
        }
    }

    /// Is `addr` one of this proxy's listeners (a listener on `0.0.0.0` is every local address)?
    fn is_own(&self, addr: SocketAddr) -> bool {
        self.own.iter().any(|own| {
            own.port() == addr.port()
                && (own.ip() == addr.ip()
                    || own.ip().is_unspecified()
                    || (own.ip().is_loopback() && addr.ip().is_loopback()))
        })
    }

    /// Serve one connection accepted by the explicit proxy listener, the transparent capture
    /// listener or an ingress.
    pub(crate) async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        drain: DrainWatcher,
        entry: Entry,
    ) {
        let transparent = matches!(entry, Entry::Transparent);
        let ingress = match entry {
            Entry::Ingress(to) => Some(to),
            _ => None,
        };
        let snapshot = self.state.load();
        let timeouts = snapshot.timeouts;
        let local = stream.local_addr().unwrap_or(client);
        let addrs = ConnAddrs { client, local };
        let orig_dst = if transparent {
            match original_dst(&stream) {
                Ok(dst) if dst != local => Some(dst),
                Ok(_) => {
                    tracing::warn!("connection to the capture port was not redirected; closing");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "no original destination (not redirected by iptables?)");
                    return;
                }
            }
        } else {
            None
        };

        // Ports declared `tcp` skip detection: server-first protocols must not wait for it.
        if let Some(dst) = orig_dst {
            if snapshot
                .by_addr(dst)
                .is_some_and(|f| f.own.protocol == Declared::Tcp)
            {
                return self.tcp(stream, addrs, dst, None, &snapshot).await;
            }
        }
        // Detection gives up after `timeouts.detect` so that server-first protocols, which wait
        // for the server to speak, still become TCP. The explicit proxy port has no such
        // clients (HTTP/1.1 and HTTP/2 speak first) and nothing to fall back to, while a
        // client that connects ahead of its first request (a pool that pre-connects, a
        // browser's preconnect) is common: it waits up to the header timeout, the bound on a
        // slow client anyway.
        let detect_timeout = if orig_dst.is_some() {
            timeouts.detect
        } else {
            timeouts.header.max(timeouts.detect)
        };
        let (protocol, io) = match detect(stream, detect_timeout).await {
            Ok(detected) => detected,
            Err(error) => {
                tracing::debug!(%error, "connection closed during protocol detection");
                return;
            }
        };
        tracing::trace!(protocol = protocol.as_str(), "detected");
        match protocol {
            Protocol::Http1 => {
                let (prefix, inner) = io.into_parts();
                let ctx = ConnCtx {
                    addrs,
                    orig_dst,
                    version: Version::HTTP_11,
                };
                // Ordinary requests are served here; the first one that is not (an upgrade, a
                // chunked body, ...) hands the rest of the connection to hyper.
                let handle = |req| {
                    let this = self.clone();
                    let ingress = ingress.clone();
                    async move { std::pin::pin!(this.handle(ctx, ingress.as_deref(), req)).await }
                };
                let rest = crate::h1_server::serve(inner, prefix, timeouts.header, &drain, handle);
                if let Some((read, inner)) = rest.await {
                    let io = crate::prefixed::Prefixed::new(read, inner);
                    let service = self.service(ctx, ingress);
                    crate::serve::http1(io, timeouts.header, &drain, service).await;
                }
            }
            Protocol::Http2 => {
                let ctx = ConnCtx {
                    addrs,
                    orig_dst,
                    version: Version::HTTP_2,
                };
                // Boxed here: hyper's HTTP/2 server spawns a task per stream and moves the
                // future into it, several copies of kilobytes; a pointer moves for free.
                let service = self.service(ctx, ingress);
                let boxed = service_fn(move |req| {
                    let fut: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(service.call(req));
                    fut
                });
                crate::serve::http2(io, &drain, boxed).await;
            }
            Protocol::Tls { sni } => match orig_dst {
                Some(dst) => self.tcp(io, addrs, dst, sni, &snapshot).await,
                None => tracing::debug!("TLS sent to the explicit proxy port; it needs CONNECT"),
            },
            Protocol::Opaque => match orig_dst {
                Some(dst) => self.tcp(io, addrs, dst, None, &snapshot).await,
                None if io.prefix().is_empty() => {
                    // Silent for the whole header timeout: closed without an answer, as nginx
                    // does for a client that sent nothing.
                    tracing::debug!(
                        "no request on the explicit proxy port within the header timeout"
                    );
                }
                None => {
                    // The explicit proxy speaks HTTP only: tell the client so.
                    tracing::debug!("non-HTTP bytes sent to the explicit proxy port");
                    crate::serve::bad_request(io, "malformed HTTP request (this is an HTTP proxy)")
                        .await;
                }
            },
        }
    }

    fn service(
        self: &Arc<Self>,
        ctx: ConnCtx,
        ingress: Option<Arc<str>>,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    > + Send
    + 'static {
        let this = self.clone();
        service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            let ingress = ingress.clone();
            let req = req.map(|body| {
                if http_body::Body::is_end_stream(&body) {
                    empty()
                } else {
                    boxed(body)
                }
            });
            // Not boxed: hyper's HTTP/1.1 dispatcher keeps the future in one box per connection
            // (HTTP/2 boxes it in `serve`: hyper's HTTP/2 server moves it into a task).
            async move { Ok::<_, Infallible>(this.handle(ctx, ingress.as_deref(), req).await) }
        })
    }

    /// One HTTP request from the app.
    async fn handle(
        &self,
        ctx: ConnCtx,
        ingress: Option<&str>,
        mut req: Request<Body>,
    ) -> Response<Body> {
        let snapshot = self.state.load();
        let mut obs = RequestObserver::start(
            &self.metrics,
            Reporter::Source,
            &snapshot.node,
            &req,
            ctx.addrs,
        );
        // An ingress sends every request to its service: as if the client had named it.
        if let Some(to) = ingress {
            if let Err(error) = to_ingress(&mut req, to) {
                return obs.fail(&error, ctx.version);
            }
        }

        // 1. Where is it going? A service port (by address or name), or outside the mesh.
        //    Two Host headers make that ambiguous: RFC 9112 §3.2 asks for a 400.
        if req
            .headers()
            .get_all(http::header::HOST)
            .iter()
            .nth(1)
            .is_some()
        {
            let error = ProxyError::BadRequest {
                reason: "more than one Host header",
            };
            return obs.fail(&error, ctx.version);
        }
        let Some(authority) = authority_of(&req) else {
            return obs.fail(&ProxyError::NoAuthority, ctx.version);
        };
        let (host, port) = split_authority(&authority);
        let frontend = ctx
            .orig_dst
            .and_then(|dst| snapshot.by_addr(dst))
            .or_else(|| snapshot.by_host(host, port))
            .cloned();

        // 2. The service's routes (GAMMA) pick the rule, and the rule the backend service;
        //    without routes the service itself is the destination.
        let (dest, rule) = match routing::decide(frontend.as_deref(), &req, host, port) {
            Decision::Forward { dest, rule } => (dest, rule),
            // Answered from the routes: telemetry names the service the caller addressed.
            Decision::Redirect { status, location } => {
                if let Some(f) = &frontend {
                    obs.set_service(f.own.fqdn.clone());
                }
                let mut resp = Response::new(empty());
                *resp.status_mut() = status;
                resp.headers_mut().insert(http::header::LOCATION, location);
                return obs.observe_response(resp, ctx.version, ResponseFlags::None);
            }
            Decision::Refuse(error) => {
                if let Some(f) = &frontend {
                    obs.set_service(f.own.fqdn.clone());
                }
                return obs.fail(&error, ctx.version);
            }
        };

        // The destination's timeouts; a rule's own request timeout, else that of the service
        // the caller addressed, bounds the exchange.
        let mut timeouts = dest.as_ref().map_or(snapshot.timeouts, |d| d.timeouts);
        if let (Some(rule), Some(frontend)) = (rule, &frontend) {
            timeouts.request = rule.timeout.unwrap_or(frontend.own.timeouts.request);
        }

        // 2b. The rule's faults (FaultInjection): a delay before anything else, then an
        //     abort answered here, never reaching the destination. A rule without is one branch.
        if let Some(fault) = rule.and_then(|r| r.filters.fault.as_ref()) {
            let injected = fault.roll(crate::balance::random_u64);
            if injected.delay.is_some() {
                obs.set_flags(ResponseFlags::DelayInjected);
                injected.delay().await;
            }
            if let Some(abort) = injected.abort {
                if let Some(d) = &dest {
                    obs.set_service(d.fqdn.clone());
                }
                let resp = abort.response(req.headers(), ctx.version);
                return obs.observe_response(resp, ctx.version, ResponseFlags::FaultInjected);
            }
        }

        // 3. The destination's limits (503 `UO` over them), then an endpoint: by its
        //    balancer, on the request's hash key if it hashes; outside the mesh, a captured
        //    request goes where the app was connecting, whatever its Host header says (it may
        //    name anything, even this proxy's admin port); a CONNECT names its own target.
        let _admission = match dest.as_deref() {
            Some(d) => match admit(d, timeouts).await {
                Ok(admission) => admission,
                Err(error) => {
                    obs.set_service(d.fqdn.clone());
                    return obs.fail(&error, ctx.version);
                }
            },
            None => None,
        };
        let hash = dest
            .as_deref()
            .and_then(|d| d.hash_key(&req, ctx.addrs.client.ip()));
        let orig_dst = ctx.orig_dst.filter(|_| req.method() != Method::CONNECT);
        let upstream = match self
            .upstream(
                &snapshot,
                dest.as_deref(),
                (host, port),
                orig_dst,
                ctx.version,
                hash,
            )
            .await
        {
            Ok(upstream) => upstream,
            Err(error) => return obs.fail(&error, ctx.version),
        };
        match &dest {
            Some(d) => self.set_destination(&mut obs, d, &upstream),
            None => obs.set_upstream(upstream.target),
        }

        // 4. CONNECT: a tunnel, answered here once the far end is reachable. Boxed, as is an
        //    upgrade below: a tunnel's setup is kilobytes of state that every ordinary
        //    request's future would otherwise carry (and copy), and a tunnel lives long enough
        //    for one allocation not to matter.
        if req.method() == Method::CONNECT {
            return Box::pin(self.connect(
                req,
                obs,
                dest.as_deref(),
                &upstream,
                &snapshot,
                timeouts,
                ctx.version,
            ))
            .await;
        }

        // 5. Header hygiene, at the edge of the mesh; then the rule's rewrite and header
        //    modifiers; then copies for the rule's mirrors, sent on their own.
        let upgrade = headers::is_upgrade(req.headers());
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        obs.set_request_id(headers::ensure_request_id(req.headers_mut()));
        headers::strip_internal(req.headers_mut());
        if !upgrade {
            headers::strip_hop_by_hop(req.headers_mut());
        }
        headers::set_forwarded(req.headers_mut(), ctx.addrs.client.ip(), "http");
        if let Some(rule) = rule {
            rule.edit_request(&mut req);
        }
        let (parts, body) = req.into_parts();
        let body = match rule.filter(|r| !r.mirrors.is_empty() && !upgrade) {
            Some(rule) => obs.count_request(self.mirror(rule, &parts, body)),
            None => obs.count_request(body),
        };
        let req = Request::from_parts(parts, body);

        // 6. Send it.
        let result = match downstream_upgrade {
            Some(downstream) => Box::pin(self.upgrade(
                req,
                downstream,
                &upstream,
                dest.as_deref(),
                &snapshot,
                timeouts,
            ))
            .await
            .map(|r| r.map(crate::retry::UpstreamBody::new)),
            None => {
                // Tries, as the destination's retry policy allows.
                let (result, last) =
                    std::pin::pin!(self.send(req, ctx, dest.as_deref(), upstream, hash, timeouts))
                        .await;
                if let Some(d) = &dest {
                    self.set_destination(&mut obs, d, &last);
                }
                result
            }
        };
        let result = match (result, rule) {
            (Ok(mut resp), Some(rule)) => {
                rule.edit_response(resp.headers_mut());
                Ok(resp)
            }
            (result, _) => result,
        };
        obs.respond(result, ctx.version)
    }

    /// Label the request with the endpoint it went to.
    fn set_destination(&self, obs: &mut RequestObserver, dest: &Destination, upstream: &Upstream) {
        if let Some(ep) = upstream.index.and_then(|i| dest.endpoints.get(i)) {
            let mtls = self.upstreams.connector.uses_tls(ep.identity.as_deref());
            obs.set_destination(dest, ep, mtls);
        }
    }

    /// Pick the endpoint for a destination; outside the mesh, `orig_dst` when the connection
    /// was captured, else the named host.
    async fn upstream(
        &self,
        snapshot: &Snapshot,
        dest: Option<&Destination>,
        (host, port): (&str, u16),
        orig_dst: Option<SocketAddr>,
        version: Version,
        hash: Option<u64>,
    ) -> Result<Upstream, ProxyError> {
        if let Some(dest) = dest {
            let (i, _) = dest
                .pick(hash, &[])
                .ok_or_else(|| ProxyError::NoEndpoints {
                    service: dest.fqdn.to_string(),
                })?;
            return Ok(Upstream::endpoint(dest, i));
        }
        if snapshot.outbound_policy == OutboundPolicy::RegistryOnly {
            return Err(ProxyError::NoRoute {
                authority: format!("{host}:{port}"),
            });
        }
        // Passthrough (ALLOW_ANY), in the client's protocol.
        let target = match orig_dst {
            Some(dst) => dst,
            None => resolve(host, port).await?,
        };
        if self.is_own(target) {
            return Err(ProxyError::Loop { addr: target });
        }
        Ok(Upstream {
            target,
            mesh: None,
            h2: version == Version::HTTP_2,
            identity: None,
            index: None,
            meta: None,
        })
    }

    /// An HTTP/1.1 upgrade (WebSocket): the request travels in a tunnel to the endpoint as
    /// HTTP/1.1, and once both sides switch protocols the bytes are relayed.
    async fn upgrade(
        &self,
        mut req: Request<Body>,
        downstream: hyper::upgrade::OnUpgrade,
        upstream: &Upstream,
        dest: Option<&Destination>,
        snapshot: &Snapshot,
        t: Timeouts,
    ) -> Result<Response<RecvBody>, ProxyError> {
        let slot = connection_slot(dest)?;
        let tunnel = self.open_tunnel(upstream, dest, snapshot, t).await?;
        let addr = upstream.mesh.unwrap_or(upstream.target);
        let (mut send, conn) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tunnel))
                .await
                .map_err(|source| ProxyError::Handshake {
                    addr,
                    source: source.into(),
                })?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upgrade connection ended");
            }
        });
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = path.as_str().parse().map_err(|_| ProxyError::BadRequest {
            reason: "invalid path",
        })?;
        *req.version_mut() = Version::HTTP_11;
        let mut resp = send
            .send_request(req)
            .await
            .map_err(|source| ProxyError::Upstream {
                addr,
                source: source.into(),
            })?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream = hyper::upgrade::on(&mut resp);
            let idle = t.idle;
            tokio::spawn(async move {
                // Held while the upgraded connection is open.
                let _slot = slot;
                match tokio::try_join!(downstream, upstream) {
                    Ok((d, u)) => {
                        let relayed = relay(TokioIo::new(d), TokioIo::new(u), idle).await;
                        tracing::debug!(
                            sent = relayed.sent,
                            received = relayed.received,
                            "upgraded connection closed"
                        );
                    }
                    Err(error) => tracing::debug!(%error, "upgrade failed"),
                }
            });
        }
        Ok(resp.map(RecvBody::H1))
    }

    /// `CONNECT host:port`: open the tunnel first (so a failure is a proper 503), answer 200,
    /// then relay bytes.
    #[allow(clippy::too_many_arguments)]
    async fn connect(
        &self,
        mut req: Request<Body>,
        obs: RequestObserver,
        dest: Option<&Destination>,
        upstream: &Upstream,
        snapshot: &Snapshot,
        t: Timeouts,
        version: Version,
    ) -> Response<Body> {
        let slot = match connection_slot(dest) {
            Ok(slot) => slot,
            Err(error) => return obs.fail(&error, version),
        };
        let tunnel = match self.open_tunnel(upstream, dest, snapshot, t).await {
            Ok(tunnel) => tunnel,
            Err(error) => return obs.fail(&error, version),
        };
        let tls = dest.is_some_and(|d| d.protocol == Declared::Tls)
            || dest.is_none() && upstream.target.port() == 443;
        let on_upgrade = hyper::upgrade::on(&mut req);
        let detect_timeout = t.detect;
        let idle = t.idle;
        let mut tcp = obs.into_tcp(None);
        tokio::spawn(async move {
            // Held while the tunnel is open.
            let _slot = slot;
            let client = match on_upgrade.await {
                Ok(upgraded) => TokioIo::new(upgraded),
                Err(error) => {
                    tracing::debug!(%error, "CONNECT client went away before the tunnel opened");
                    return tcp.close(Default::default());
                }
            };
            // TLS inside the tunnel: record the SNI (the bytes pass through untouched).
            let relayed = if tls {
                match detect(client, detect_timeout).await {
                    Ok((Protocol::Tls { sni }, io)) => {
                        tcp.set_sni(sni);
                        relay(io, tunnel, idle).await
                    }
                    Ok((_, io)) => relay(io, tunnel, idle).await,
                    Err(_) => Default::default(),
                }
            } else {
                relay(client, tunnel, idle).await
            };
            tcp.close(relayed);
        });
        let mut resp = Response::new(empty());
        *resp.version_mut() = version;
        resp
    }

    /// A byte stream to the upstream endpoint: a `CONNECT` stream through its proxy, or TCP.
    async fn open_tunnel(
        &self,
        upstream: &Upstream,
        dest: Option<&Destination>,
        snapshot: &Snapshot,
        t: Timeouts,
    ) -> Result<tunnel::Tunnel, ProxyError> {
        let meta = dest.map_or(&snapshot.node.tunnel_meta, |d| &d.tunnel_meta);
        tunnel::open(
            &self.upstreams,
            upstream.target,
            upstream.mesh,
            upstream.identity.as_deref(),
            t.connect,
            meta,
        )
        .await
    }
}

impl Upstream {
    /// Endpoint `i` of `dest` (an index `dest.pick` returned).
    fn endpoint(dest: &Destination, i: usize) -> Self {
        let ep = &dest.endpoints[i];
        Self {
            target: ep.target,
            mesh: ep.mesh,
            h2: matches!(dest.protocol, Declared::Http2 | Declared::Grpc),
            identity: ep.identity.clone(),
            index: Some(i),
            meta: Some(ep.meta.clone()),
        }
    }
}

/// Send an ordinary request to `upstream` (across the mesh: one HTTP/2 stream to its proxy,
/// which restores the client's protocol `version`) and return the response.
async fn forward(
    upstreams: &Upstreams,
    mut req: Request<Body>,
    version: Version,
    upstream: &Upstream,
    t: Timeouts,
) -> Result<Response<RecvBody>, ProxyError> {
    let authority = authority_of(&req).ok_or(ProxyError::NoAuthority)?;
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match upstream.mesh {
        Some(peer) => {
            // Across the mesh: one HTTP/2 stream; the far side restores the client's protocol.
            *req.uri_mut() = absolute(authority, path)?;
            let http1 = version != Version::HTTP_2;
            let meta = match &upstream.meta {
                Some([for_http1, for_h2]) => (if http1 { for_http1 } else { for_h2 }).clone(),
                // Every mesh endpoint has its values; this only keeps the request well-formed.
                None => headers::meta_value(
                    Some(upstream.target),
                    Some(http1),
                    ("unknown", "unknown"),
                    None,
                ),
            };
            req.headers_mut().insert(TRELLIS_META, meta);
            upstreams
                .send_h2(
                    peer,
                    upstream.identity.as_deref(),
                    req,
                    t.connect,
                    t.request,
                )
                .await
        }
        None => {
            headers::strip_internal(req.headers_mut());
            if upstream.h2 || version == Version::HTTP_2 {
                *req.uri_mut() = absolute(authority, path)?;
                upstreams
                    .send_h2(upstream.target, None, req, t.connect, t.request)
                    .await
            } else {
                upstreams.send_h1(upstream.target, req, t.request).await
            }
        }
    }
}

/// A new connection's place under its destination's `max_connections` (refused at once over
/// it); nothing to hold outside the mesh's services.
fn connection_slot(
    dest: Option<&Destination>,
) -> Result<Option<crate::limit::ConnectionSlot>, ProxyError> {
    match dest.and_then(|d| Some((d, d.limiter.as_ref()?))) {
        Some((d, limiter)) => limiter.connect(&d.fqdn).map(Some),
        None => Ok(None),
    }
}

/// A request's place under its destination's limits; waiting for one (when the limits let it
/// wait) is bounded by the request timeout.
async fn admit(
    dest: &Destination,
    t: Timeouts,
) -> Result<Option<crate::limit::Admission>, ProxyError> {
    let Some(limiter) = &dest.limiter else {
        return Ok(None);
    };
    let admit = limiter.admit(&dest.fqdn);
    if t.request.is_zero() {
        return admit.await.map(Some);
    }
    match tokio::time::timeout(t.request, admit).await {
        Ok(admission) => admission.map(Some),
        Err(_) => Err(ProxyError::Overflow {
            service: dest.fqdn.to_string(),
            limit: "max_pending_requests (waited for the request timeout)",
        }),
    }
}

/// `host[:port]` → (host, port), port 80 by default (or when the port is not a number);
/// IPv6 literals without their brackets. One pass over the text, where `Authority::host` and
/// `port_u16` each search it again (about 600 instructions a request together).
fn split_authority(authority: &Authority) -> (&str, u16) {
    // Byte searches: the separators are ASCII, so every cut is on a character boundary (and
    // a loop over bytes is a third of what `str`'s pattern searchers cost on a short text).
    let find = |text: &str, sep: u8| text.bytes().position(|b| b == sep);
    let text = authority.as_str();
    let host_port = match text.bytes().rposition(|b| b == b'@') {
        Some(at) => &text[at + 1..],
        None => text,
    };
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => match find(bracketed, b']') {
            Some(end) => (&bracketed[..end], bracketed[end + 1..].strip_prefix(':')),
            None => (bracketed, None),
        },
        None => match find(host_port, b':') {
            Some(colon) => (&host_port[..colon], Some(&host_port[colon + 1..])),
            None => (host_port, None),
        },
    };
    (host, port.and_then(|p| p.parse().ok()).unwrap_or(80))
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, ProxyError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ProxyError::Resolve {
            host: host.to_owned(),
            source,
        })?;
    addrs.next().ok_or_else(|| ProxyError::Resolve {
        host: host.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
    })
}

/// Points a request that came in at an ingress at the ingress's service (`host:port`);
/// CONNECT is refused there (an ingress is for HTTP requests, not tunnels).
fn to_ingress<B>(req: &mut Request<B>, to: &str) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest {
            reason: "CONNECT is not served by an ingress",
        });
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let to = to.parse().map_err(|_| ProxyError::BadRequest {
        reason: "invalid authority",
    })?;
    *req.uri_mut() = absolute(to, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_with_default_port() {
        let split = |a: &str| {
            let a: Authority = a.parse().ok()?;
            let (host, port) = split_authority(&a);
            Some((host.to_owned(), port))
        };
        assert_eq!(split("web.test"), Some(("web.test".into(), 80)));
        assert_eq!(split("web.test:8080"), Some(("web.test".into(), 8080)));
        assert_eq!(split("[::1]:9"), Some(("::1".into(), 9)));
        assert_eq!(split("bad host"), None);
    }

    #[test]
    fn authorities_split_as_http_reads_them() {
        // What `Authority::host` and `port_u16` give, the reference the one-pass split keeps.
        for text in [
            "web.test",
            "web.test:8080",
            "web.test:",
            "web.test:99999",
            "user@web.test:81",
            "user:pw@web.test",
            "[::1]",
            "[::1]:9",
            "[::1]:",
            "[fe80::1%25eth0]:443",
            "10.0.0.1:0",
        ] {
            let a: Authority = text.parse().unwrap();
            let host = a.host().trim_start_matches('[').trim_end_matches(']');
            let port = a.port_u16().unwrap_or(80);
            assert_eq!(split_authority(&a), (host, port), "{text}");
        }
    }

    #[test]
    fn the_authority_is_the_uris_else_the_host_headers() {
        let req = Request::get("http://a.test:81/x")
            .header("host", "b.test")
            .body(())
            .unwrap();
        assert_eq!(authority_of(&req).unwrap().as_str(), "a.test:81");
        let req = Request::get("/x")
            .header("host", "b.test:82")
            .body(())
            .unwrap();
        assert_eq!(authority_of(&req).unwrap().as_str(), "b.test:82");
        let req = Request::get("/x")
            .header("host", "bad host")
            .body(())
            .unwrap();
        assert!(authority_of(&req).is_none());
        assert!(authority_of(&Request::get("/x").body(()).unwrap()).is_none());
    }
}
