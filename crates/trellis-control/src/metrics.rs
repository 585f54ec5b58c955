//! The control plane's own metrics, served as OpenMetrics text on the admin port's `/metrics`:
//!
//! - `trellis_ca_certificates_issued_total{credential="join_token"|"certificate"}`: certificates
//!   signed, by what authenticated the request (bootstrap or renewal).
//! - `trellis_ca_certificates_refused_total{reason=...}`: requests refused, by
//!   [`Refusal::reason`](crate::ca::Refusal::reason).
//!
//! Every label value is created at start, so a dashboard sees zeros rather than gaps.

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::ca::{Credential, Refusal};

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
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuedLabels {
    credential: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: &'static str,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("trellis_ca");
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
        Metrics {
            inner: Arc::new(Inner {
                registry,
                issued,
                refused,
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
