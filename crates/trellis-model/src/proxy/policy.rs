//! How a proxy treats one service's endpoints: the proxy's form of a `TrafficPolicy` — load
//! balancing, retries, outlier detection and limits. Absent, a service is balanced by least
//! request (P2C over peak-EWMA latency), never retried, never ejected, and unlimited.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A service's traffic policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePolicy {
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Absent: a request is tried once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Absent: endpoints are never ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// How an endpoint is chosen for each request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(rename = "type", default)]
    pub kind: LoadBalancerKind,
    /// What `ring_hash` and `maglev` hash; required by them, refused by the others. A request
    /// without the key is balanced by least request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancerKind {
    RoundRobin,
    /// Power of two choices over peak-EWMA latency × pending requests.
    #[default]
    LeastRequest,
    /// A ring of virtual nodes (consistent hashing).
    RingHash,
    /// Google's Maglev lookup table (consistent hashing, even spread).
    Maglev,
}

/// The key of a consistent hash: `{ header: NAME }`, `{ cookie: NAME }` or `source_ip`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    Header(String),
    Cookie(String),
    SourceIp,
}

/// Retrying a failed try on another endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first try (0: none).
    pub attempts: u32,
    /// What is retried (Envoy's names, HTTP statuses such as `"503"`, gRPC codes).
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// A limit on each try; absent, the request timeout is the only limit.
    #[serde(default, with = "crate::duration::serde_option_duration")]
    pub per_try_timeout: Option<Duration>,
    /// The first wait between tries (above zero); each next one doubles, up to
    /// `max_backoff`, and the wait is drawn at random below that (full jitter).
    #[serde(default = "default_backoff", with = "crate::duration::serde_duration")]
    pub backoff: Duration,
    /// The longest wait between tries (at least `backoff`); absent, ten times `backoff`
    /// (Envoy's default).
    #[serde(default, with = "crate::duration::serde_option_duration")]
    pub max_backoff: Option<Duration>,
    #[serde(default)]
    pub budget: RetryBudget,
}

/// A retry condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RetryOn {
    /// `5xx`: a 5xx response, a reset, a failed connection or a per-try timeout.
    ServerError,
    /// `gateway-error`: 502, 503, 504, a failed connection or a per-try timeout.
    GatewayError,
    /// `reset`: the upstream reset the stream or closed the connection without answering.
    Reset,
    /// `connect-failure`: the connection to the endpoint failed.
    ConnectFailure,
    /// `refused-stream`: the upstream refused the HTTP/2 stream (REFUSED_STREAM).
    RefusedStream,
    /// `retriable-4xx`: 409.
    Retriable4xx,
    /// gRPC status (`grpc-status` of a trailers-only response): `cancelled` (1).
    Cancelled,
    /// `deadline-exceeded` (4).
    DeadlineExceeded,
    /// `internal` (13).
    Internal,
    /// `resource-exhausted` (8).
    ResourceExhausted,
    /// `unavailable` (14).
    Unavailable,
    /// A response with this HTTP status (`"503"`).
    Status(u16),
}

/// Retries may add at most `percent` % to the requests, plus `min_retries_per_second`,
/// counted over the last `ttl`: retries never amplify an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default = "default_budget_percent")]
    pub percent: u32,
    #[serde(default = "default_min_retries")]
    pub min_retries_per_second: u32,
    #[serde(
        default = "default_budget_ttl",
        with = "crate::duration::serde_duration"
    )]
    pub ttl: Duration,
}

/// Passive health checking: an endpoint that fails `consecutive_5xx` times in a row (5xx
/// responses, failed connections) is ejected for `base_ejection_time × 2^(n-1)` (its `n`th
/// ejection, up to `max_ejection_time`); then one probe request decides whether it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// Each `interval` an endpoint stays healthy after returning, `n` goes down by one.
    #[serde(default = "default_interval", with = "crate::duration::serde_duration")]
    pub interval: Duration,
    #[serde(
        default = "default_base_ejection",
        with = "crate::duration::serde_duration"
    )]
    pub base_ejection_time: Duration,
    #[serde(
        default = "default_max_ejection",
        with = "crate::duration::serde_duration"
    )]
    pub max_ejection_time: Duration,
    /// Never more than this share of the endpoints is ejected at once (rounded down).
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

/// Limits on what this proxy sends to the service; over one, a request is answered 503 with
/// response flag `UO` at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Connections open to the service at once: each opaque TCP connection, `CONNECT`
    /// tunnel or upgraded (WebSocket) connection relayed to it. HTTP requests share the one
    /// multiplexed HTTP/2 connection per peer proxy and do not count (`max_requests` bounds
    /// them). Over the limit a connection is refused at once (503 `UO`, or closed).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Requests waiting for a `max_requests` slot; absent, none wait.
    #[serde(default)]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight at once.
    #[serde(default)]
    pub max_requests: Option<u32>,
}

/// The retry conditions and their names.
pub(crate) const RETRY_CONDITIONS: &[(&str, RetryOn)] = &[
    ("5xx", RetryOn::ServerError),
    ("gateway-error", RetryOn::GatewayError),
    ("reset", RetryOn::Reset),
    ("connect-failure", RetryOn::ConnectFailure),
    ("refused-stream", RetryOn::RefusedStream),
    ("retriable-4xx", RetryOn::Retriable4xx),
    ("cancelled", RetryOn::Cancelled),
    ("deadline-exceeded", RetryOn::DeadlineExceeded),
    ("internal", RetryOn::Internal),
    ("resource-exhausted", RetryOn::ResourceExhausted),
    ("unavailable", RetryOn::Unavailable),
];

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: default_budget_percent(),
            min_retries_per_second: default_min_retries(),
            ttl: default_budget_ttl(),
        }
    }
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: default_consecutive_5xx(),
            interval: default_interval(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

impl Retries {
    /// The longest wait between tries: `max_backoff`, else ten times `backoff`.
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
            .unwrap_or_else(|| self.backoff.saturating_mul(10))
    }
}

impl RetryOn {
    /// The condition a name (`5xx`, `unavailable`) or HTTP status (`503`) stands for.
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(status) = text.parse::<u16>().ok().filter(|s| (100..=599).contains(s)) {
            return Some(Self::Status(status));
        }
        RETRY_CONDITIONS
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, on)| *on)
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Self::Status(status) = self {
            return write!(f, "{status}");
        }
        let name = RETRY_CONDITIONS
            .iter()
            .find(|(_, on)| on == self)
            .map_or("?", |(name, _)| name);
        f.write_str(name)
    }
}

impl TryFrom<String> for RetryOn {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text).ok_or_else(|| format!("{text:?} is not a retry condition"))
    }
}

impl From<RetryOn> for String {
    fn from(on: RetryOn) -> String {
        on.to_string()
    }
}

/// `connect-failure`, `refused-stream`, `unavailable`: what is always safe to retry.
pub(crate) fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::RefusedStream,
        RetryOn::Unavailable,
    ]
}
pub(crate) fn default_backoff() -> Duration {
    Duration::from_millis(25)
}
fn default_budget_percent() -> u32 {
    20
}
fn default_min_retries() -> u32 {
    10
}
fn default_budget_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_consecutive_5xx() -> u32 {
    5
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejection_percent() -> u32 {
    10
}
