//! Telemetry on the request path: one observer per request or TCP connection, which records
//! metrics and writes the access log line once, when the exchange is over (the response body's
//! last byte, or the client going away), whatever path the request took.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::time::Instant;

use crate::access_log::{self, Protocol, RequestLog, TcpLog};
use crate::error::ProxyError;
use crate::headers::Meta;
use crate::metrics::{
    Metrics, Reporter, RequestLabels, RequestProtocol, ResponseFlags, SecurityPolicy, TcpLabels,
};
use crate::pool::{Body, BoxError, boxed, empty, full};
use crate::state::{Destination, EndpointInfo, NodeInfo};
use crate::tunnel::Relayed;

/// Labels used before anything better is known.
fn unknown() -> Arc<str> {
    crate::metrics::unknown()
}

/// Observes one HTTP request.
#[derive(Debug)]
pub(crate) struct RequestObserver {
    metrics: Metrics,
    start: Instant,
    labels: RequestLabels,
    /// The access log's request id and user agent: copied, and only while the log is on. A
    /// header value shares the buffer it was read into (hyper's read buffer, h2's frame);
    /// holding one would keep that whole buffer alive until the response ends.
    request_id: Option<String>,
    method: Method,
    authority: String,
    path: String,
    protocol: Protocol,
    client: SocketAddr,
    local: SocketAddr,
    upstream: Option<SocketAddr>,
    user_agent: Option<String>,
    /// Request body bytes, counted as they pass; `None` while there is no body to count.
    received: Option<Arc<AtomicU64>>,
}

/// What the inbound side knows of the peer proxy's connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerConn {
    /// The peer's verified SPIFFE ID, when the connection is mutual TLS.
    pub(crate) principal: Option<Arc<str>>,
    /// The metric labels its last requests named, made once per change rather than per request.
    labels: Arc<PeerLabels>,
}

/// One connection carries one peer workload calling a few app ports and services, from HTTP/1.1
/// or HTTP/2 clients: the last few `trellis-meta` values, as the header said them and as read
/// (labels, address), so that requests alternating between them are not parsed again.
/// Lock-free: a load per request, a store when a new value comes.
#[derive(Debug, Default)]
struct PeerLabels {
    metas: ArcSwapOption<Vec<(HeaderValue, Arc<Meta>)>>,
}

/// How many `trellis-meta` values a connection keeps read.
const METAS_KEPT: usize = 8;

impl PeerConn {
    pub(crate) fn new(principal: Option<Arc<str>>) -> Self {
        Self {
            principal,
            labels: Arc::default(),
        }
    }

    /// A `trellis-meta` value, read (the last few are kept, so a repeated value is not parsed
    /// again).
    pub(crate) fn meta(&self, value: &HeaderValue) -> Arc<Meta> {
        let guard = self.labels.metas.load();
        let kept = guard.as_deref().map_or(&[][..], Vec::as_slice);
        if let Some((_, meta)) = kept.iter().find(|(v, _)| v == value) {
            return meta.clone();
        }
        let meta = Arc::new(crate::headers::parse_meta(value));
        // The newest first; the oldest goes when the list is full.
        let mut metas = Vec::with_capacity(METAS_KEPT);
        metas.push((value.clone(), meta.clone()));
        metas.extend(kept.iter().take(METAS_KEPT - 1).cloned());
        self.labels.metas.store(Some(Arc::new(metas)));
        meta
    }
}

/// Where a connection came from and arrived.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnAddrs {
    pub(crate) client: SocketAddr,
    pub(crate) local: SocketAddr,
}

impl RequestObserver {
    /// Start observing `req`, received on `addrs`, as seen by `reporter`; `node` is this proxy.
    pub(crate) fn start<B>(
        metrics: &Metrics,
        reporter: Reporter,
        node: &NodeInfo,
        req: &Request<B>,
        addrs: ConnAddrs,
    ) -> Self {
        let grpc = is_grpc(req.headers());
        let log = access_log::enabled();
        let me = node.workload.clone();
        let my_ns = node.namespace.clone();
        let (src, src_ns, dst, dst_ns) = match reporter {
            Reporter::Source => (me, my_ns, unknown(), unknown()),
            Reporter::Destination => (unknown(), unknown(), me, my_ns),
        };
        let (src_principal, dst_principal) = match reporter {
            Reporter::Source => (node.principal.clone(), unknown()),
            Reporter::Destination => (unknown(), node.principal.clone()),
        };
        Self {
            metrics: metrics.clone(),
            start: Instant::now(),
            labels: RequestLabels {
                reporter,
                source_workload: src,
                source_namespace: src_ns,
                source_principal: src_principal,
                destination_service: unknown(),
                destination_workload: dst,
                destination_namespace: dst_ns,
                destination_principal: dst_principal,
                request_protocol: if grpc {
                    RequestProtocol::Grpc
                } else {
                    RequestProtocol::Http
                },
                response_code: 0,
                grpc_response_status: None,
                response_flags: ResponseFlags::None,
                connection_security_policy: match reporter {
                    // mTLS arrives with the identity work; until then every hop is plaintext.
                    Reporter::Source => SecurityPolicy::Unknown,
                    Reporter::Destination => SecurityPolicy::Plaintext,
                },
            },
            request_id: log
                .then(|| header_text(req.headers().get(crate::headers::X_REQUEST_ID)))
                .flatten(),
            method: req.method().clone(),
            // Only the access log reads these two: not copied when it is off.
            authority: log
                .then(|| authority_of(req).map(|a| a.as_str().to_owned()))
                .flatten()
                .unwrap_or_default(),
            path: log
                .then(|| req.uri().path_and_query().map(|p| p.as_str().to_owned()))
                .flatten()
                .unwrap_or_default(),
            protocol: Protocol::new(req.version(), grpc),
            client: addrs.client,
            local: addrs.local,
            upstream: None,
            user_agent: log
                .then(|| header_text(req.headers().get(header::USER_AGENT)))
                .flatten(),
            received: None,
        }
    }

    /// The protocol the client spoke, as the caller's proxy reports it (inbound side).
    pub(crate) fn set_client_http1(&mut self) {
        if self.protocol == Protocol::Http2 {
            self.protocol = Protocol::Http11;
        }
    }

    pub(crate) fn set_request_id(&mut self, id: &HeaderValue) {
        if access_log::enabled() {
            self.request_id = header_text(Some(id));
        }
    }

    /// The request's `x-request-id`, if it has one, for the access log; looked up only when
    /// the log is on.
    pub(crate) fn note_request_id(&mut self, headers: &HeaderMap) {
        if access_log::enabled() {
            self.request_id = header_text(headers.get(crate::headers::X_REQUEST_ID));
        }
    }

    /// The caller, as named by the peer proxy (inbound side).
    pub(crate) fn set_source(&mut self, workload: Arc<str>, namespace: Arc<str>) {
        self.labels.source_workload = workload;
        self.labels.source_namespace = namespace;
    }

    pub(crate) fn set_service(&mut self, fqdn: Arc<str>) {
        self.labels.destination_service = fqdn;
    }

    /// The destination chosen by routing (outbound side), reached over mutual TLS or not.
    pub(crate) fn set_destination(&mut self, dest: &Destination, ep: &EndpointInfo, mtls: bool) {
        self.labels.destination_service = dest.fqdn.clone();
        self.labels.destination_workload = ep.workload.clone();
        self.labels.destination_namespace = ep.namespace.clone();
        if mtls {
            self.labels.destination_principal = ep.principal.clone();
            self.labels.connection_security_policy = SecurityPolicy::MutualTls;
        }
        self.upstream = Some(ep.mesh.unwrap_or(ep.target));
    }

    /// The peer proxy's connection (inbound side): its verified identity when it used mTLS.
    pub(crate) fn set_peer(&mut self, peer: &PeerConn) {
        if let Some(principal) = &peer.principal {
            self.labels.source_principal = principal.clone();
            self.labels.connection_security_policy = SecurityPolicy::MutualTls;
        }
    }

    pub(crate) fn set_upstream(&mut self, addr: SocketAddr) {
        self.upstream = Some(addr);
    }

    /// Flag the request for something the proxy did to it on its way (a delay injected); a
    /// failure's flag replaces it.
    pub(crate) fn set_flags(&mut self, flags: ResponseFlags) {
        self.labels.response_flags = flags;
    }

    /// Wrap the request body so that its bytes are counted. A request without one (most GETs)
    /// gets the empty body, which costs no allocation, instead of a counter and a wrapper.
    pub(crate) fn count_request<B>(&mut self, body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return empty();
        }
        let count = self.received.get_or_insert_with(Arc::default).clone();
        boxed(Counting { inner: body, count })
    }

    /// Finish with the upstream's response (its body is observed until its end) or an error
    /// (answered locally).
    pub(crate) fn respond<B>(
        self,
        result: Result<Response<B>, ProxyError>,
        version: Version,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        match result {
            Ok(resp) => self.observe_response(resp, version, ResponseFlags::None),
            Err(error) => self.fail(&error, version),
        }
    }

    /// Answer locally with the error's status; recorded at once.
    pub(crate) fn fail(mut self, error: &ProxyError, version: Version) -> Response<Body> {
        let status = error.status();
        if status.is_server_error() {
            tracing::warn!(%error, "request failed");
        } else {
            tracing::debug!(%error, "request refused");
        }
        self.labels.response_code = status.as_u16();
        self.labels.response_flags = error.flags();
        let body = format!("{error}\n");
        let len = body.len() as u64;
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        // A client that broke the protocol gets its connection closed (HTTP/1 only: HTTP/2 has
        // no Connection header, and its other streams are fine).
        if status == StatusCode::BAD_REQUEST && version != Version::HTTP_2 {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        self.finish(len, None);
        resp
    }

    /// Record a response the proxy built itself (e.g. a tunnel's `200`).
    pub(crate) fn observe_response<B>(
        mut self,
        resp: Response<B>,
        version: Version,
        flags: ResponseFlags,
    ) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = resp.into_parts();
        if parts.status != StatusCode::SWITCHING_PROTOCOLS {
            crate::headers::strip_hop_by_hop(&mut parts.headers);
        }
        parts.version = version;
        self.labels.response_code = parts.status.as_u16();
        // A flag set earlier (a delay injected) stays unless this one says more.
        if flags != ResponseFlags::None {
            self.labels.response_flags = flags;
        }
        // A trailers-only gRPC response carries its status in the headers. Only a gRPC
        // request has a `grpc_response_status` (as in Istio); the lookup is skipped for the
        // rest (240 instructions a response).
        let grpc_status = if self.labels.request_protocol == RequestProtocol::Grpc {
            grpc_status(&parts.headers)
        } else {
            None
        };
        // An empty body (a redirect, a 204) is never polled: the exchange is over already,
        // and waiting for its end would record the client as gone (DC).
        if body.is_end_stream() {
            self.finish(0, grpc_status);
            return Response::from_parts(parts, boxed(body));
        }
        let pending = Pending {
            obs: Some(self),
            sent: 0,
            grpc_status,
        };
        // Boxed as it is: its errors are `BoxError` already, and `boxed`'s `map_err` would move
        // it (half a kilobyte) once more per response.
        Response::from_parts(
            parts,
            UnsyncBoxBody::new(Observed {
                inner: body,
                pending,
            }),
        )
    }

    fn finish(mut self, sent: u64, grpc_status: Option<u16>) {
        let duration = self.start.elapsed();
        self.labels.grpc_response_status = grpc_status;
        self.metrics.record_request(&self.labels, duration);
        let request_id = self.request_id.as_deref();
        let user_agent = self.user_agent.as_deref();
        access_log::log_request(&RequestLog {
            reporter: self.labels.reporter,
            request_id,
            method: self.method.as_str(),
            authority: &self.authority,
            path: &self.path,
            protocol: self.protocol,
            response_code: self.labels.response_code,
            grpc_status,
            response_flags: self.labels.response_flags,
            bytes_received: self
                .received
                .as_ref()
                .map_or(0, |count| count.load(Ordering::Relaxed)),
            bytes_sent: sent,
            duration,
            upstream_host: self.upstream,
            destination_service: &self.labels.destination_service,
            downstream_remote_address: self.client,
            downstream_local_address: self.local,
            source_workload: &self.labels.source_workload,
            destination_workload: &self.labels.destination_workload,
            source_principal: &self.labels.source_principal,
            destination_principal: &self.labels.destination_principal,
            user_agent,
        });
    }

    /// Turn this observer into one for the TCP tunnel the request opened (CONNECT, upgrades).
    pub(crate) fn into_tcp(self, sni: Option<String>) -> TcpObserver {
        let labels = TcpLabels {
            reporter: self.labels.reporter,
            source_workload: self.labels.source_workload,
            source_namespace: self.labels.source_namespace,
            source_principal: self.labels.source_principal,
            destination_service: self.labels.destination_service,
            destination_workload: self.labels.destination_workload,
            destination_namespace: self.labels.destination_namespace,
            destination_principal: self.labels.destination_principal,
            response_flags: ResponseFlags::None,
            connection_security_policy: self.labels.connection_security_policy,
        };
        // CONNECT and upgrades reach this point once the upstream side is open.
        self.metrics.tcp_opened(&labels);
        TcpObserver {
            opened: true,
            metrics: self.metrics,
            start: self.start,
            labels,
            client: self.client,
            local: self.local,
            upstream: self.upstream,
            sni,
        }
    }
}

/// Observes one TCP connection or tunnel.
#[derive(Debug)]
pub(crate) struct TcpObserver {
    /// `tcp_opened` was recorded (with the labels `tcp_closed` will use).
    opened: bool,
    metrics: Metrics,
    start: Instant,
    labels: TcpLabels,
    client: SocketAddr,
    local: SocketAddr,
    upstream: Option<SocketAddr>,
    sni: Option<String>,
}

impl TcpObserver {
    /// Start observing a TCP connection (transparent capture, inbound capture).
    pub(crate) fn start(
        metrics: &Metrics,
        reporter: Reporter,
        node: &NodeInfo,
        addrs: ConnAddrs,
    ) -> Self {
        let me = node.workload.clone();
        let my_ns = node.namespace.clone();
        let (src, src_ns, dst, dst_ns) = match reporter {
            Reporter::Source => (me, my_ns, unknown(), unknown()),
            Reporter::Destination => (unknown(), unknown(), me, my_ns),
        };
        let (src_principal, dst_principal) = match reporter {
            Reporter::Source => (node.principal.clone(), unknown()),
            Reporter::Destination => (unknown(), node.principal.clone()),
        };
        let labels = TcpLabels {
            reporter,
            source_workload: src,
            source_namespace: src_ns,
            source_principal: src_principal,
            destination_service: unknown(),
            destination_workload: dst,
            destination_namespace: dst_ns,
            destination_principal: dst_principal,
            response_flags: ResponseFlags::None,
            connection_security_policy: match reporter {
                Reporter::Source => SecurityPolicy::Unknown,
                Reporter::Destination => SecurityPolicy::Plaintext,
            },
        };
        Self {
            opened: false,
            metrics: metrics.clone(),
            start: Instant::now(),
            labels,
            client: addrs.client,
            local: addrs.local,
            upstream: None,
            sni: None,
        }
    }

    pub(crate) fn set_sni(&mut self, sni: Option<String>) {
        self.sni = sni;
    }

    pub(crate) fn set_destination(&mut self, dest: &Destination, ep: &EndpointInfo, mtls: bool) {
        self.labels.destination_service = dest.fqdn.clone();
        self.labels.destination_workload = ep.workload.clone();
        self.labels.destination_namespace = ep.namespace.clone();
        if mtls {
            self.labels.destination_principal = ep.principal.clone();
            self.labels.connection_security_policy = SecurityPolicy::MutualTls;
        }
        self.upstream = Some(ep.mesh.unwrap_or(ep.target));
    }

    pub(crate) fn set_upstream(&mut self, addr: SocketAddr) {
        self.upstream = Some(addr);
    }

    /// The upstream side is open: count the connection as opened. Opened and closed are
    /// recorded with the same labels, so that opened minus closed per series is what is open.
    pub(crate) fn connected(&mut self) {
        if !self.opened {
            self.opened = true;
            self.metrics.tcp_opened(&self.labels);
        }
    }

    /// The connection could not be set up.
    pub(crate) fn fail(mut self, error: &ProxyError) {
        tracing::warn!(%error, "connection failed");
        self.labels.response_flags = error.flags();
        self.close(Relayed::default());
    }

    /// The relay is over.
    pub(crate) fn close(mut self, relayed: Relayed) {
        self.connected();
        self.metrics
            .tcp_bytes(&self.labels, relayed.sent, relayed.received);
        self.metrics.tcp_closed(&self.labels);
        // An idle timeout is the proxy's doing: say so in the log line (the metric series keeps
        // the flags it was opened with).
        let flags = match self.labels.response_flags {
            ResponseFlags::None if relayed.idle_timeout => ResponseFlags::StreamIdleTimeout,
            flags => flags,
        };
        access_log::log_tcp(&TcpLog {
            reporter: self.labels.reporter,
            response_flags: flags,
            bytes_received: relayed.received,
            bytes_sent: relayed.sent,
            duration: self.start.elapsed(),
            upstream_host: self.upstream,
            destination_service: &self.labels.destination_service,
            downstream_remote_address: self.client,
            downstream_local_address: self.local,
            source_workload: &self.labels.source_workload,
            destination_workload: &self.labels.destination_workload,
            source_principal: &self.labels.source_principal,
            destination_principal: &self.labels.destination_principal,
            sni: self.sni.as_deref(),
        });
    }
}

/// Records the request when the response body ends or is dropped (the client went away).
#[derive(Debug)]
struct Pending {
    obs: Option<RequestObserver>,
    sent: u64,
    grpc_status: Option<u16>,
}

impl Pending {
    fn done(&mut self, flags: Option<ResponseFlags>) {
        if let Some(mut obs) = self.obs.take() {
            if let Some(flags) = flags {
                if obs.labels.response_flags == ResponseFlags::None {
                    obs.labels.response_flags = flags;
                }
            }
            obs.finish(self.sent, self.grpc_status);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Dropped before the end: the client closed the stream or connection mid-response.
        self.done(Some(ResponseFlags::DownstreamConnectionTermination));
    }
}

/// A response body observed frame by frame.
struct Observed<B> {
    inner: B,
    pending: Pending,
}

impl<B> http_body::Body for Observed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.pending.sent += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    if let Some(status) = grpc_status(trailers) {
                        this.pending.grpc_status = Some(status);
                    }
                }
                if this.inner.is_end_stream() {
                    this.pending.done(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.pending
                    .done(Some(ResponseFlags::UpstreamConnectionTermination));
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                this.pending.done(None);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body whose bytes are counted.
struct Counting<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> http_body::Body for Counting<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    headers.get(&GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// A header's value as text of its own (not sharing the buffer it was read into).
fn header_text(value: Option<&HeaderValue>) -> Option<String> {
    value?.to_str().ok().map(str::to_owned)
}

/// The authority a request names: its URI's (absolute-form, HTTP/2) or its Host header.
/// The URI's shares the request's bytes; the Host header's is one copy (`http` keeps a
/// header value's bytes to itself).
pub(crate) fn authority_of<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    Authority::try_from(req.headers().get(header::HOST)?.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connections_meta_is_read_once_per_change() {
        let peer = PeerConn::new(None);
        let value = |text: &'static str| HeaderValue::from_static(text);
        let first = peer.meta(&value(
            "dst=10.0.0.1:80; proto=http1; peer=web ns; service=a.ns.svc",
        ));
        let again = peer.meta(&value(
            "dst=10.0.0.1:80; proto=http1; peer=web ns; service=a.ns.svc",
        ));
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same value is not parsed again"
        );
        assert_eq!(first.dst, Some("10.0.0.1:80".parse().unwrap()));
        assert!(first.http1);
        let (workload, namespace) = first.peer.clone().unwrap();
        assert_eq!((&*workload, &*namespace), ("web", "ns"));
        assert_eq!(first.service.as_deref(), Some("a.ns.svc"));

        let other = peer.meta(&value("peer=api other; service=b.ns.svc"));
        assert!(!Arc::ptr_eq(&first, &other));
        let first_again = peer.meta(&value(
            "dst=10.0.0.1:80; proto=http1; peer=web ns; service=a.ns.svc",
        ));
        assert!(
            Arc::ptr_eq(&first, &first_again),
            "values alternating on one connection are each read once"
        );
        assert_eq!(other.dst, None, "a tunnel's meta names no address");
        assert!(!other.http1);
        assert_eq!(other.service.as_deref(), Some("b.ns.svc"));
    }
}
