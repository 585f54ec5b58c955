//! Request and TCP metrics with Istio's names and labels (DESIGN §6), served as OpenMetrics text.
//!
//! Six metrics (and `trellis_mirror_requests_total` for route mirrors), each a [`Family`]
//! keyed by a label struct (`labels.rs`): [`RequestLabels`] for the HTTP/gRPC pair
//! (`trellis_requests_total`, `trellis_request_duration_seconds`) and [`TcpLabels`] for the
//! four TCP counters, which carry `request_protocol="tcp"` as Istio's do. This module records
//! and exposes them.
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
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

mod labels;

use labels::MirrorLabels;
pub use labels::{
    MirrorResult, Reporter, RequestLabels, RequestProtocol, ResponseFlags, SecurityPolicy,
    TcpLabels, UNKNOWN, unknown,
};

/// The `Content-Type` of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus
/// scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds, in seconds, of the request duration histogram's buckets (`+Inf` is implicit).
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The proxy's telemetry metrics and the registry that exposes them.
///
/// Cloning is cheap (one `Arc`): build one at startup and hand clones to every listener and
/// to the admin server's `/metrics` handler.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
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

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
