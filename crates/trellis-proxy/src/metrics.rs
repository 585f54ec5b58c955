//! Request and TCP metrics with Istio's names and labels (DESIGN §6), served as OpenMetrics text.
//!
//! Six metrics (and `trellis_mirror_requests_total` for route mirrors), each a [`Family`] keyed by a label struct: [`RequestLabels`] for the HTTP/gRPC
//! pair (`trellis_requests_total`, `trellis_request_duration_seconds`) and [`TcpLabels`] for
//! the four TCP counters, which carry `request_protocol="tcp"` as Istio's do.
//!
//! What a record costs: a label set among the last 8 recorded on the thread is found by
//! comparing labels (pointer compares for shared names) and costs an atomic add and a short
//! histogram lock. Otherwise `record_request` does two family lookups (one per metric), each
//! a shared read lock, one SipHash of a digest of the label set and a compare on hit; then an
//! atomic add (counter) and a short mutex hold (histogram: 15-bucket scan, sum, count).
//! Nothing is allocated or formatted once a label set has been seen; the first record of a
//! new label set clones the key (Arc refcount bumps) into the map under the write lock. The
//! caller's side is building the label struct: Arc clones, no allocation.
//! `tcp_opened`/`tcp_closed` are one lookup each; `tcp_bytes` two, skipping a zero count.

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus
/// scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds, in seconds, of the request duration histogram's buckets (`+Inf` is implicit).
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The label value Istio uses for a peer attribute it cannot determine.
pub const UNKNOWN: &str = "unknown";

/// The proxy's telemetry metrics and the registry that exposes them.
///
/// Cloning is cheap (one `Arc`): build one at startup and hand clones to every listener and
/// to the admin server's `/metrics` handler.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// Labels of one HTTP or gRPC request, in Istio's shape.
///
/// Peer names are `Arc<str>` so that building one per request copies pointers, not strings;
/// use [`unknown()`] for a value the proxy cannot determine (e.g. principals on plaintext).
#[derive(Clone, Debug)]
pub struct RequestLabels {
    pub reporter: Reporter,
    pub source_workload: Arc<str>,
    pub source_namespace: Arc<str>,
    pub source_principal: Arc<str>,
    pub destination_service: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_namespace: Arc<str>,
    pub destination_principal: Arc<str>,
    pub request_protocol: RequestProtocol,
    /// The status sent downstream; 0 when no response was sent (downstream went away first).
    pub response_code: u16,
    /// The `grpc-status` of a gRPC response, rendered `-` when absent.
    pub grpc_response_status: Option<u16>,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

/// Each request looks its series up twice (counter and histogram) in maps hashed with SipHash;
/// hashing all seven names in full was 3 % of a proxy's instructions. This hashes one word: a
/// cheap digest of the numbers and, for each name, its length and first and last eight bytes.
/// Equal labels give equal digests, so the maps stay correct; labels that differ only inside a
/// long name share a bucket and are told apart by `Eq` (a proxy has tens of series, not millions).
impl std::hash::Hash for RequestLabels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        fn name(digest: u64, s: &str) -> u64 {
            let b = s.as_bytes();
            // Whole-word loads where the name is long enough (no call to memcpy for a
            // variable-length copy); a shorter name is folded byte by byte.
            let (head, tail) = match (b.first_chunk::<8>(), b.last_chunk::<8>()) {
                (Some(head), Some(tail)) => (u64::from_le_bytes(*head), u64::from_le_bytes(*tail)),
                _ => {
                    let short = b.iter().fold(0u64, |w, &x| w << 8 | u64::from(x));
                    (short, short)
                }
            };
            mix(mix(mix(digest, b.len() as u64), head), tail)
        }
        let mut d = mix(0, self.reporter as u64);
        for s in [
            &self.source_workload,
            &self.source_namespace,
            &self.source_principal,
            &self.destination_service,
            &self.destination_workload,
            &self.destination_namespace,
            &self.destination_principal,
        ] {
            d = name(d, s);
        }
        let numbers = u64::from(self.response_code)
            | u64::from(self.grpc_response_status.map_or(u16::MAX, |g| g)) << 16
            | (self.request_protocol as u64) << 32
            | (self.connection_security_policy as u64) << 40
            | (self.response_flags as u64) << 48;
        state.write_u64(mix(d, numbers));
    }
}

/// Equal when every label is. The names of one request are nearly always the very strings of
/// the series it is recorded in (the config's and the connection's), so each is first compared
/// by pointer: seven length-and-`memcmp` comparisons were 220 instructions a request.
impl PartialEq for RequestLabels {
    fn eq(&self, other: &Self) -> bool {
        fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
            Arc::ptr_eq(a, b) || a == b
        }
        // Destructured, so that a label added later cannot be left out of the comparison.
        let RequestLabels {
            reporter,
            source_workload,
            source_namespace,
            source_principal,
            destination_service,
            destination_workload,
            destination_namespace,
            destination_principal,
            request_protocol,
            response_code,
            grpc_response_status,
            response_flags,
            connection_security_policy,
        } = self;
        *reporter == other.reporter
            && *response_code == other.response_code
            && *grpc_response_status == other.grpc_response_status
            && *request_protocol == other.request_protocol
            && *response_flags == other.response_flags
            && *connection_security_policy == other.connection_security_policy
            && same(source_workload, &other.source_workload)
            && same(source_namespace, &other.source_namespace)
            && same(source_principal, &other.source_principal)
            && same(destination_service, &other.destination_service)
            && same(destination_workload, &other.destination_workload)
            && same(destination_namespace, &other.destination_namespace)
            && same(destination_principal, &other.destination_principal)
    }
}

impl Eq for RequestLabels {}

/// One step of a multiplicative hash (FxHash's).
fn mix(digest: u64, word: u64) -> u64 {
    (digest.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95)
}

/// Label sets whose series [`Metrics::record_request`] keeps at hand, per thread.
const RECENT_KEPT: usize = 8;

/// One label set's series, kept by [`Metrics::record_request`].
struct Recent {
    /// The [`Metrics`] instance (`Inner::id`) they belong to.
    id: u64,
    labels: RequestLabels,
    requests: Counter,
    duration: Histogram,
}

/// Labels of one TCP connection; exposed with `request_protocol="tcp"`.
///
/// Use the same labels for `tcp_opened`, `tcp_bytes` and `tcp_closed` of a connection, so that
/// opened minus closed counts the open connections of a series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_workload: Arc<str>,
    pub source_namespace: Arc<str>,
    pub source_principal: Arc<str>,
    pub destination_service: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_namespace: Arc<str>,
    pub destination_principal: Arc<str>,
    pub response_flags: ResponseFlags,
    pub connection_security_policy: SecurityPolicy,
}

/// Which proxy recorded the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client side: the outbound proxy beside the caller (`source`).
    Source,
    /// The server side: the inbound proxy beside the callee (`destination`).
    Destination,
}

/// The protocol of a request (`request_protocol`); TCP connections are always `tcp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    Http,
    Grpc,
}

/// Whether the connection between the proxies was mutual TLS (`connection_security_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    /// `mutual_tls`
    MutualTls,
    /// `none`: plaintext.
    Plaintext,
    /// `unknown`: the reporter cannot tell (Istio reports this on the source side).
    Unknown,
}

/// Why the proxy, rather than the application, shaped a response: Envoy's response flags.
///
/// One flag per request or connection: the one that decided the outcome (when attempts failed
/// with `UF` and retries ran out, that is `URX`). `-` when the proxy did nothing unusual.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResponseFlags {
    /// `-`
    #[default]
    None,
    /// `UH`: no healthy endpoint for the destination.
    NoHealthyUpstream,
    /// `UF`: connecting to the endpoint failed.
    UpstreamConnectionFailure,
    /// `UO`: a connection or request limit (circuit breaker) was reached.
    UpstreamOverflow,
    /// `NR`: no route (or no service) for the request.
    NoRouteFound,
    /// `NC`: the route names a backend the proxy does not know.
    NoClusterFound,
    /// `URX`: the retry limit or retry budget was exhausted.
    UpstreamRetryLimitExceeded,
    /// `UT`: the route's request timeout fired.
    UpstreamRequestTimeout,
    /// `SI`: the stream was idle too long.
    StreamIdleTimeout,
    /// `DT`: the connection or request exceeded its maximum duration.
    DurationTimeout,
    /// `LR`: the proxy reset the stream or connection itself.
    LocalReset,
    /// `UR`: the endpoint reset the stream.
    UpstreamRemoteReset,
    /// `UC`: the endpoint closed the connection mid-request.
    UpstreamConnectionTermination,
    /// `DC`: the downstream client closed the connection mid-request.
    DownstreamConnectionTermination,
    /// `DPE`: the downstream request broke the protocol.
    DownstreamProtocolError,
    /// `UPE`: the endpoint's response broke the protocol.
    UpstreamProtocolError,
    /// `RBAC`: an authorization policy denied the request or connection. Trellis's own flag:
    /// Envoy's RBAC filters set none (the detail is in its `response_code_details`).
    AccessDenied,
    /// `FI`: the request was aborted by fault injection.
    FaultInjected,
    /// `DI`: the request was delayed by fault injection.
    DelayInjected,
}

/// What became of a request copy (route mirroring).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MirrorResult {
    /// The shadow answered (whatever its status).
    Sent,
    /// No answer: the shadow could not be reached, or timed out.
    Failed,
    /// Not sent: too many copies in flight.
    Dropped,
    /// Not sent: the request body was too large to keep, or never ended.
    Skipped,
}

/// Labels of `trellis_mirror_requests_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct MirrorLabels {
    destination_service: Arc<str>,
    result: MirrorResult,
}

struct Inner {
    /// Tells this instance's series apart in the per-thread cache of [`Metrics::record_request`].
    id: u64,
    registry: Registry,
    mirrors: Family<MirrorLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
}

impl Metrics {
    /// Registers the six metrics in a fresh registry under the `trellis_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("trellis");
        let requests = Family::default();
        let request_duration: Family<_, _, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        let tcp_sent = Family::default();
        let tcp_received = Family::default();
        let tcp_opened = Family::default();
        let tcp_closed = Family::default();
        let mirrors = Family::default();

        // Counter names omit `_total` and byte/second names their unit: the encoder adds both.
        registry.register(
            "requests",
            "Requests handled, by peers, protocol, response code and flags",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from the first request byte to the last response byte",
            Unit::Seconds,
            request_duration.clone(),
        );
        registry.register_with_unit(
            "tcp_sent",
            "Bytes sent to the downstream peer over TCP connections (the response direction)",
            Unit::Bytes,
            tcp_sent.clone(),
        );
        registry.register_with_unit(
            "tcp_received",
            "Bytes received from the downstream peer over TCP connections (the request direction)",
            Unit::Bytes,
            tcp_received.clone(),
        );
        registry.register(
            "tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );

        registry.register(
            "mirror_requests",
            "Copies of requests sent to route mirrors (shadows), by shadow service and result",
            mirrors.clone(),
        );

        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let inner = Inner {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            registry,
            mirrors,
            requests,
            request_duration,
            tcp_sent,
            tcp_received,
            tcp_opened,
            tcp_closed,
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// The exposition for `/metrics`: OpenMetrics text ending in `# EOF`, served with
    /// [`CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(fmt::Error) =
            prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
        {
            // Writing to a String cannot fail and our label encoders never fail: unreachable in
            // practice, and a truncated body (no `# EOF`) is rejected by the scraper, not misread.
            tracing::warn!("encoding metrics failed; the /metrics response is truncated");
        }
        out
    }

    /// Records one finished request (or one that failed before a response).
    ///
    /// The series of the last few label sets recorded on this thread are kept (a counter and a
    /// histogram are handles to shared state, and series are never removed): a request like
    /// the last ones compares its labels, mostly by pointer, instead of hashing them and
    /// looking both families up under their locks.
    pub fn record_request(&self, labels: &RequestLabels, duration: Duration) {
        thread_local! {
            static RECENT: std::cell::RefCell<Vec<Recent>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let seconds = duration.as_secs_f64();
        let id = self.inner.id;
        let hit = RECENT.with_borrow_mut(|recent| {
            let i = recent
                .iter()
                .position(|r| r.id == id && r.labels == *labels)?;
            let r = &recent[i];
            r.requests.inc();
            r.duration.observe(seconds);
            // Most recent first: a steady mix finds its series in the first slots.
            recent[..=i].rotate_right(1);
            Some(())
        });
        if hit.is_some() {
            return;
        }
        let requests = self.inner.requests.get_or_create(labels).clone();
        let duration = self.inner.request_duration.get_or_create(labels).clone();
        requests.inc();
        duration.observe(seconds);
        RECENT.with_borrow_mut(|recent| {
            recent.truncate(RECENT_KEPT - 1);
            recent.insert(
                0,
                Recent {
                    id,
                    labels: labels.clone(),
                    requests,
                    duration,
                },
            );
        });
    }

    /// Records a TCP connection opened.
    pub fn tcp_opened(&self, labels: &TcpLabels) {
        self.inner.tcp_opened.get_or_create(labels).inc();
    }

    /// Adds bytes sent to and received from the downstream peer since the last call; call it
    /// during long connections (so the counters move) and once at close with the remainder.
    pub fn tcp_bytes(&self, labels: &TcpLabels, sent: u64, received: u64) {
        if sent > 0 {
            self.inner.tcp_sent.get_or_create(labels).inc_by(sent);
        }
        if received > 0 {
            self.inner
                .tcp_received
                .get_or_create(labels)
                .inc_by(received);
        }
    }

    /// Records what became of a request copy for a route mirror.
    pub fn mirror(&self, destination_service: &Arc<str>, result: MirrorResult) {
        let labels = MirrorLabels {
            destination_service: destination_service.clone(),
            result,
        };
        self.inner.mirrors.get_or_create(&labels).inc();
    }

    /// Records a TCP connection closed.
    pub fn tcp_closed(&self, labels: &TcpLabels) {
        self.inner.tcp_closed.get_or_create(labels).inc();
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// A shared `"unknown"` label value: cloning it bumps a refcount instead of allocating.
pub fn unknown() -> Arc<str> {
    static UNKNOWN_VALUE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(UNKNOWN));
    Arc::clone(&UNKNOWN_VALUE)
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        ("reporter", self.reporter).encode(encoder.encode_label())?;
        ("source_workload", &*self.source_workload).encode(encoder.encode_label())?;
        ("source_namespace", &*self.source_namespace).encode(encoder.encode_label())?;
        ("source_principal", &*self.source_principal).encode(encoder.encode_label())?;
        ("destination_service", &*self.destination_service).encode(encoder.encode_label())?;
        ("destination_workload", &*self.destination_workload).encode(encoder.encode_label())?;
        ("destination_namespace", &*self.destination_namespace).encode(encoder.encode_label())?;
        ("destination_principal", &*self.destination_principal).encode(encoder.encode_label())?;
        ("request_protocol", self.request_protocol).encode(encoder.encode_label())?;
        ("response_code", self.response_code).encode(encoder.encode_label())?;
        (
            "grpc_response_status",
            GrpcStatus(self.grpc_response_status),
        )
            .encode(encoder.encode_label())?;
        ("response_flags", self.response_flags).encode(encoder.encode_label())?;
        (
            "connection_security_policy",
            self.connection_security_policy,
        )
            .encode(encoder.encode_label())
    }
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        ("reporter", self.reporter).encode(encoder.encode_label())?;
        ("source_workload", &*self.source_workload).encode(encoder.encode_label())?;
        ("source_namespace", &*self.source_namespace).encode(encoder.encode_label())?;
        ("source_principal", &*self.source_principal).encode(encoder.encode_label())?;
        ("destination_service", &*self.destination_service).encode(encoder.encode_label())?;
        ("destination_workload", &*self.destination_workload).encode(encoder.encode_label())?;
        ("destination_namespace", &*self.destination_namespace).encode(encoder.encode_label())?;
        ("destination_principal", &*self.destination_principal).encode(encoder.encode_label())?;
        ("request_protocol", "tcp").encode(encoder.encode_label())?;
        ("response_flags", self.response_flags).encode(encoder.encode_label())?;
        (
            "connection_security_policy",
            self.connection_security_policy,
        )
            .encode(encoder.encode_label())
    }
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

impl RequestProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
        }
    }
}

impl SecurityPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::Plaintext => "none",
            SecurityPolicy::Unknown => "unknown",
        }
    }
}

impl EncodeLabelSet for MirrorLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        ("destination_service", &*self.destination_service).encode(encoder.encode_label())?;
        ("result", self.result).encode(encoder.encode_label())
    }
}

impl MirrorResult {
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorResult::Sent => "sent",
            MirrorResult::Failed => "failed",
            MirrorResult::Dropped => "dropped",
            MirrorResult::Skipped => "skipped",
        }
    }
}

impl ResponseFlags {
    /// Envoy's short name: `UF`, `URX`, … or `-` for none.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlags::None => "-",
            ResponseFlags::NoHealthyUpstream => "UH",
            ResponseFlags::UpstreamConnectionFailure => "UF",
            ResponseFlags::UpstreamOverflow => "UO",
            ResponseFlags::NoRouteFound => "NR",
            ResponseFlags::NoClusterFound => "NC",
            ResponseFlags::UpstreamRetryLimitExceeded => "URX",
            ResponseFlags::UpstreamRequestTimeout => "UT",
            ResponseFlags::StreamIdleTimeout => "SI",
            ResponseFlags::DurationTimeout => "DT",
            ResponseFlags::LocalReset => "LR",
            ResponseFlags::UpstreamRemoteReset => "UR",
            ResponseFlags::UpstreamConnectionTermination => "UC",
            ResponseFlags::DownstreamConnectionTermination => "DC",
            ResponseFlags::DownstreamProtocolError => "DPE",
            ResponseFlags::UpstreamProtocolError => "UPE",
            ResponseFlags::AccessDenied => "RBAC",
            ResponseFlags::FaultInjected => "FI",
            ResponseFlags::DelayInjected => "DI",
        }
    }
}

/// Display and label encoding through `as_str`, for the small enums above.
macro_rules! label_value_via_as_str {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    )*};
}

label_value_via_as_str!(
    Reporter,
    RequestProtocol,
    SecurityPolicy,
    ResponseFlags,
    MirrorResult
);

/// `grpc_response_status`: the code, or `-` for a response without one.
struct GrpcStatus(Option<u16>);

impl EncodeLabelValue for GrpcStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        match self.0 {
            Some(code) => EncodeLabelValue::encode(&code, encoder),
            None => EncodeLabelValue::encode(&"-", encoder),
        }
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_equal_by_content_not_by_pointer() {
        // The same names in strings of their own: one series, as with the derived comparison.
        let a = request_labels(200, ResponseFlags::None);
        let b = request_labels(200, ResponseFlags::None);
        assert!(!Arc::ptr_eq(&a.source_workload, &b.source_workload));
        assert_eq!(a, b);
        // One name that differs, whatever the pointers: another series.
        let mut c = a.clone();
        c.destination_workload = Arc::from("reviews-v2");
        assert_ne!(a, c);
        let mut d = a.clone();
        d.response_code = 503;
        assert_ne!(a, d);
    }

    fn request_labels(code: u16, flags: ResponseFlags) -> RequestLabels {
        RequestLabels {
            reporter: Reporter::Destination,
            source_workload: Arc::from("productpage-v1"),
            source_namespace: Arc::from("default"),
            source_principal: Arc::from("spiffe://cluster.local/ns/default/sa/productpage"),
            destination_service: Arc::from("reviews.default.svc.cluster.local"),
            destination_workload: Arc::from("reviews-v1"),
            destination_namespace: Arc::from("default"),
            destination_principal: Arc::from("spiffe://cluster.local/ns/default/sa/reviews"),
            request_protocol: RequestProtocol::Http,
            response_code: code,
            grpc_response_status: None,
            response_flags: flags,
            connection_security_policy: SecurityPolicy::MutualTls,
        }
    }

    fn tcp_labels() -> TcpLabels {
        TcpLabels {
            reporter: Reporter::Source,
            source_workload: Arc::from("productpage-v1"),
            source_namespace: Arc::from("default"),
            source_principal: Arc::from("spiffe://cluster.local/ns/default/sa/productpage"),
            destination_service: Arc::from("mysql.db.svc.cluster.local"),
            destination_workload: Arc::from("mysql-v1"),
            destination_namespace: Arc::from("db"),
            destination_principal: unknown(),
            response_flags: ResponseFlags::None,
            connection_security_policy: SecurityPolicy::Unknown,
        }
    }

    const OK_LABELS: &str = concat!(
        r#"reporter="destination",source_workload="productpage-v1",source_namespace="default","#,
        r#"source_principal="spiffe://cluster.local/ns/default/sa/productpage","#,
        r#"destination_service="reviews.default.svc.cluster.local","#,
        r#"destination_workload="reviews-v1",destination_namespace="default","#,
        r#"destination_principal="spiffe://cluster.local/ns/default/sa/reviews","#,
        r#"request_protocol="http",response_code="200",grpc_response_status="-","#,
        r#"response_flags="-",connection_security_policy="mutual_tls""#,
    );

    const FAILED_LABELS: &str = concat!(
        r#"reporter="destination",source_workload="productpage-v1",source_namespace="default","#,
        r#"source_principal="spiffe://cluster.local/ns/default/sa/productpage","#,
        r#"destination_service="reviews.default.svc.cluster.local","#,
        r#"destination_workload="reviews-v1",destination_namespace="default","#,
        r#"destination_principal="spiffe://cluster.local/ns/default/sa/reviews","#,
        r#"request_protocol="http",response_code="503",grpc_response_status="-","#,
        r#"response_flags="UF",connection_security_policy="mutual_tls""#,
    );

    const TCP_LABELS: &str = concat!(
        r#"reporter="source",source_workload="productpage-v1",source_namespace="default","#,
        r#"source_principal="spiffe://cluster.local/ns/default/sa/productpage","#,
        r#"destination_service="mysql.db.svc.cluster.local","#,
        r#"destination_workload="mysql-v1",destination_namespace="db","#,
        r#"destination_principal="unknown",request_protocol="tcp","#,
        r#"response_flags="-",connection_security_policy="unknown""#,
    );

    /// Records 3 requests answered 200, 1 answered 503 with `UF`, and 2 TCP connections.
    fn known_traffic() -> String {
        let metrics = Metrics::new();
        let ok = request_labels(200, ResponseFlags::None);
        // Durations that are exact in binary, so `_sum` prints exactly: 2^-9 s, 2^-8 s, 0.25 s.
        metrics.record_request(&ok, Duration::from_nanos(1_953_125));
        metrics.record_request(&ok, Duration::from_nanos(3_906_250));
        metrics.record_request(&ok, Duration::from_millis(250));
        let failed = request_labels(503, ResponseFlags::UpstreamConnectionFailure);
        metrics.record_request(&failed, Duration::from_millis(500));

        let tcp = tcp_labels();
        metrics.tcp_opened(&tcp);
        metrics.tcp_bytes(&tcp, 100, 200);
        metrics.tcp_opened(&tcp);
        metrics.tcp_bytes(&tcp, 1000, 2000);
        metrics.tcp_bytes(&tcp, 50, 0);
        metrics.tcp_closed(&tcp);
        metrics.tcp_closed(&tcp);
        metrics.encode()
    }

    fn assert_line(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing line\n  {line}\nin exposition:\n{text}"
        );
    }

    #[test]
    fn request_counts_by_label_set() {
        let text = known_traffic();
        assert_line(&text, "# TYPE trellis_requests counter");
        assert_line(&text, &format!("trellis_requests_total{{{OK_LABELS}}} 3"));
        assert_line(
            &text,
            &format!("trellis_requests_total{{{FAILED_LABELS}}} 1"),
        );
        assert_eq!(text.matches("trellis_requests_total{").count(), 2);
    }

    #[test]
    fn names_that_differ_only_in_the_middle_are_separate_series() {
        // The hash reads a name's length and its first and last eight bytes: these two share
        // a bucket, and must still be two series.
        let metrics = Metrics::new();
        for workload in ["reviews-aaaa-v1", "reviews-bbbb-v1", "reviews-aaaa-v1"] {
            let mut labels = request_labels(200, ResponseFlags::None);
            labels.destination_workload = Arc::from(workload);
            metrics.record_request(&labels, Duration::from_millis(1));
        }
        let text = metrics.encode();
        let count = |workload: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("trellis_requests_total{")
                        && l.contains(&format!("destination_workload=\"{workload}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(count("reviews-aaaa-v1").as_deref(), Some("2"), "{text}");
        assert_eq!(count("reviews-bbbb-v1").as_deref(), Some("1"), "{text}");
    }

    #[test]
    fn instances_on_one_thread_keep_their_own_counts() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let ok = request_labels(200, ResponseFlags::None);
        for _ in 0..3 {
            a.record_request(&ok, Duration::from_millis(1));
        }
        b.record_request(&ok, Duration::from_millis(1));
        // A label set seen before, after others pushed it down the recent list.
        for code in 300..320 {
            a.record_request(&request_labels(code, ResponseFlags::None), Duration::ZERO);
        }
        a.record_request(&ok, Duration::from_millis(1));
        let count = |m: &Metrics| {
            m.encode()
                .lines()
                .find(|l| {
                    l.starts_with("trellis_requests_total{") && l.contains("response_code=\"200\"")
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(count(&a).as_deref(), Some("4"));
        assert_eq!(count(&b).as_deref(), Some("1"));
    }

    #[test]
    fn request_duration_histogram() {
        let text = known_traffic();
        assert_line(&text, "# TYPE trellis_request_duration_seconds histogram");
        assert_line(&text, "# UNIT trellis_request_duration_seconds seconds");
        // The encoder puts `le` first, before the family's labels.
        let bucket = |labels: &str, le: &str, count: u64| {
            format!(r#"trellis_request_duration_seconds_bucket{{le="{le}",{labels}}} {count}"#)
        };
        let sum = |labels: &str, sum: &str| {
            format!("trellis_request_duration_seconds_sum{{{labels}}} {sum}")
        };
        let count = |labels: &str, count: u64| {
            format!("trellis_request_duration_seconds_count{{{labels}}} {count}")
        };
        // 200s took 2^-9 s, 2^-8 s and 0.25 s: cumulative counts per upper bound.
        assert_line(&text, &bucket(OK_LABELS, "0.001", 0));
        assert_line(&text, &bucket(OK_LABELS, "0.005", 2));
        assert_line(&text, &bucket(OK_LABELS, "0.1", 2));
        assert_line(&text, &bucket(OK_LABELS, "0.25", 3));
        assert_line(&text, &bucket(OK_LABELS, "1.0", 3));
        assert_line(&text, &bucket(OK_LABELS, "+Inf", 3));
        assert_line(&text, &sum(OK_LABELS, "0.255859375"));
        assert_line(&text, &count(OK_LABELS, 3));
        // The 503 took 0.5 s.
        assert_line(&text, &bucket(FAILED_LABELS, "0.005", 0));
        assert_line(&text, &bucket(FAILED_LABELS, "0.25", 0));
        assert_line(&text, &bucket(FAILED_LABELS, "0.5", 1));
        assert_line(&text, &sum(FAILED_LABELS, "0.5"));
        assert_line(&text, &count(FAILED_LABELS, 1));
        // 15 configured buckets plus +Inf, per series.
        let buckets = text.matches(&format!(",{OK_LABELS}}}")).count();
        assert_eq!(buckets, 16);
    }

    #[test]
    fn tcp_counters() {
        let text = known_traffic();
        assert_line(
            &text,
            &format!("trellis_tcp_connections_opened_total{{{TCP_LABELS}}} 2"),
        );
        assert_line(
            &text,
            &format!("trellis_tcp_connections_closed_total{{{TCP_LABELS}}} 2"),
        );
        assert_line(
            &text,
            &format!("trellis_tcp_sent_bytes_total{{{TCP_LABELS}}} 1150"),
        );
        assert_line(
            &text,
            &format!("trellis_tcp_received_bytes_total{{{TCP_LABELS}}} 2200"),
        );
        assert_line(&text, "# UNIT trellis_tcp_sent_bytes bytes");
    }

    #[test]
    fn exposition_ends_with_eof() {
        assert!(known_traffic().ends_with("# EOF\n"));
        assert_eq!(Metrics::new().encode().lines().last(), Some("# EOF"));
    }

    #[test]
    fn grpc_status_is_a_number() {
        let metrics = Metrics::new();
        let labels = RequestLabels {
            request_protocol: RequestProtocol::Grpc,
            grpc_response_status: Some(14),
            ..request_labels(200, ResponseFlags::None)
        };
        metrics.record_request(&labels, Duration::from_millis(1));
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"request_protocol="grpc",response_code="200",grpc_response_status="14","#
            ),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        let labels = TcpLabels {
            source_workload: Arc::from("a\"b\\c\nd"),
            ..tcp_labels()
        };
        metrics.tcp_opened(&labels);
        assert!(metrics.encode().contains(r#"source_workload="a\"b\\c\nd""#));
    }

    #[test]
    fn response_flags_render_envoy_names() {
        assert_eq!(ResponseFlags::default().to_string(), "-");
        assert_eq!(ResponseFlags::UpstreamRetryLimitExceeded.as_str(), "URX");
        assert_eq!(ResponseFlags::DownstreamProtocolError.to_string(), "DPE");
    }
}
