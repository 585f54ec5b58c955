//! The control plane's own metrics, served as OpenMetrics text on the admin port's `/metrics`:
//!
//! - `trellis_ca_certificates_issued_total{credential="join_token"|"certificate"}`: certificates
//!   signed, by what authenticated the request (bootstrap or renewal).
//! - `trellis_ca_certificates_refused_total{reason=...}`: requests refused, by
//!   [`Refusal::reason`](crate::ca::Refusal::reason).
//! - `trellis_discovery_pushes_total{kind="full"|"delta"}`: configs sent to proxies, whole or
//!   as the Services changed since the config the proxy has in force.
//! - `trellis_discovery_push_bytes_total`: bytes of config sent (JSON payloads).
//! - `trellis_discovery_push_latency_seconds`: from sending a config to its ACK.
//! - `trellis_discovery_nacks_total`: configs proxies refused.
//! - `trellis_discovery_connected_proxies`: discovery streams open now.
//! - `trellis_discovery_config_errors_total`: changes to the config sources refused as
//!   invalid (the configs in force stayed).
//!
//! Every label value is created at start, so a dashboard sees zeros rather than gaps.

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ca::{Credential, Refusal};

/// Push latency buckets: 1 ms to 8 s, doubling (+Inf implicit).
const LATENCY_BUCKETS: (f64, f64, u16) = (0.001, 2.0, 14);

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The control plane's metrics and their registry. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    issued: Family<IssuedLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    pushes: Family<PushLabels, Counter>,
    push_bytes: Counter,
    push_latency: Histogram,
    nacks: Counter,
    connected: Gauge,
    config_errors: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuedLabels {
    credential: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("trellis_ca");
        let issued = Family::<IssuedLabels, Counter>::default();
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "certificates_issued",
            "Workload certificates signed, by the credential that authenticated the request",
            issued.clone(),
        );
        registry.register(
            "certificates_refused",
            "Certificate requests refused, by reason",
            refused.clone(),
        );
        for credential in [Credential::JoinToken, Credential::Certificate] {
            let _ = issued.get_or_create(&IssuedLabels {
                credential: credential.label(),
            });
        }
        for reason in Refusal::REASONS {
            let _ = refused.get_or_create(&RefusedLabels { reason });
        }

        let discovery = root.sub_registry_with_prefix("trellis_discovery");
        let pushes = Family::<PushLabels, Counter>::default();
        for kind in ["full", "delta"] {
            let _ = pushes.get_or_create(&PushLabels { kind });
        }
        let push_bytes = Counter::default();
        let (start, factor, count) = LATENCY_BUCKETS;
        let push_latency = Histogram::new(exponential_buckets(start, factor, count));
        let nacks = Counter::default();
        let connected = Gauge::default();
        let config_errors = Counter::default();
        discovery.register(
            "pushes",
            "Configs sent to proxies, whole or as a delta",
            pushes.clone(),
        );
        discovery.register(
            "push_bytes",
            "Bytes of config sent to proxies",
            push_bytes.clone(),
        );
        discovery.register(
            "push_latency_seconds",
            "Time from sending a config to a proxy to its ACK",
            push_latency.clone(),
        );
        discovery.register("nacks", "Configs refused by proxies (NACK)", nacks.clone());
        discovery.register(
            "connected_proxies",
            "Proxies with a discovery stream open",
            connected.clone(),
        );
        discovery.register(
            "config_errors",
            "Changes to the config sources refused as invalid; the configs in force stayed",
            config_errors.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry: root,
                issued,
                refused,
                pushes,
                push_bytes,
                push_latency,
                nacks,
                connected,
                config_errors,
            }),
        }
    }

    pub fn issued(&self, credential: Credential) {
        self.inner
            .issued
            .get_or_create(&IssuedLabels {
                credential: credential.label(),
            })
            .inc();
    }

    pub fn refused(&self, refusal: &Refusal) {
        self.inner
            .refused
            .get_or_create(&RefusedLabels {
                reason: refusal.reason(),
            })
            .inc();
    }

    /// A config of `bytes` was sent to a proxy, whole or as a delta.
    pub fn pushed(&self, delta: bool, bytes: usize) {
        let kind = if delta { "delta" } else { "full" };
        self.inner.pushes.get_or_create(&PushLabels { kind }).inc();
        self.inner.push_bytes.inc_by(bytes as u64);
    }

    /// A proxy ACKed a config `latency` after it was sent.
    pub fn applied(&self, latency: std::time::Duration) {
        self.inner.push_latency.observe(latency.as_secs_f64());
    }

    /// A proxy NACKed a config.
    pub fn nacked(&self) {
        self.inner.nacks.inc();
    }

    /// A discovery stream opened (`+1`) or closed (`-1`).
    pub fn connected(&self, delta: i64) {
        self.inner.connected.inc_by(delta);
    }

    /// A change to a config source was refused.
    pub fn config_error(&self) {
        self.inner.config_errors.inc();
    }

    /// The exposition for `/metrics`, ending in `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(1024);
        if let Err(fmt::Error) =
            prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
        {
            tracing::warn!("encoding metrics failed; the /metrics response is truncated");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}
