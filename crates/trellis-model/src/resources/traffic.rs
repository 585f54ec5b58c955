//! `trellis.dev/v1alpha1` `TrafficPolicy`: how callers treat one Service's endpoints — load
//! balancing, retries, outlier detection, connection limits and timeouts.
//!
//! Parsed and validated here; the proxy applies them in a later issue (only `timeouts` is
//! compiled into the proxy config so far).

use std::time::Duration;

use super::decode::Decoder;
use super::names::{is_http_token, quoted};
/// A retry condition (Envoy's names): the proxy config's own type, which the compiler passes
/// through.
pub use crate::proxy::RetryOn;
use crate::validate::yaml::Node;

const FIELDS: &[&str] = &[
    "targetRef",
    "loadBalancer",
    "retries",
    "outlierDetection",
    "connectionLimits",
    "timeouts",
];
const TARGET_REF_FIELDS: &[&str] = &["group", "kind", "name"];
const LOAD_BALANCER_FIELDS: &[&str] = &["type", "hashOn"];
const HASH_ON_FIELDS: &[&str] = &["header", "cookie", "sourceIP"];
const RETRY_FIELDS: &[&str] = &["attempts", "on", "perTryTimeout", "backoff", "budget"];
const BACKOFF_FIELDS: &[&str] = &["baseInterval", "maxInterval"];
const BUDGET_FIELDS: &[&str] = &["percent", "minRetriesPerSecond", "ttl"];
const OUTLIER_FIELDS: &[&str] = &[
    "consecutive5xx",
    "interval",
    "baseEjectionTime",
    "maxEjectionPercent",
];
const LIMIT_FIELDS: &[&str] = &["maxConnections", "maxPendingRequests", "maxRequests"];
const TIMEOUT_FIELDS: &[&str] = &["connect", "request", "idle"];

const BALANCERS: &[(&str, LoadBalancerKind)] = &[
    ("roundRobin", LoadBalancerKind::RoundRobin),
    ("leastRequest", LoadBalancerKind::LeastRequest),
    ("ringHash", LoadBalancerKind::RingHash),
    ("maglev", LoadBalancerKind::Maglev),
];

/// Most retry attempts a policy may ask for: each one multiplies the load a failing Service sees.
const MAX_ATTEMPTS: u32 = 10;

/// How callers treat the endpoints of one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficPolicySpec {
    /// The Service (in the policy's namespace) this policy is for.
    pub target: String,
    pub load_balancer: Option<LoadBalancer>,
    pub retries: Option<Retries>,
    pub outlier_detection: Option<OutlierDetection>,
    pub connection_limits: Option<ConnectionLimits>,
    pub timeouts: Option<PolicyTimeouts>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    pub kind: LoadBalancerKind,
    /// What a consistent hash (`ringHash`, `maglev`) is computed over; only for those.
    pub hash_on: Option<HashOn>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LoadBalancerKind {
    RoundRobin,
    /// Power of two choices over peak-EWMA latency.
    #[default]
    LeastRequest,
    RingHash,
    Maglev,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(String),
    Cookie(String),
    SourceIp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retries {
    /// Retries after the first try (0 disables retries).
    pub attempts: u32,
    /// What is retried; default `connect-failure`, `refused-stream`, `unavailable`.
    pub on: Vec<RetryOn>,
    /// A limit on each try; absent, the request timeout is the only limit.
    pub per_try_timeout: Option<Duration>,
    /// The wait between tries; absent, 25 ms doubling up to 250 ms.
    pub backoff: Option<RetryBackoff>,
    pub budget: Option<RetryBudget>,
}

/// Envoy's `retry_back_off`: the wait before retry `n` is drawn at random below
/// `baseInterval × 2^(n-1)`, capped at `maxInterval` (full jitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    /// Above zero.
    pub base_interval: Duration,
    /// At least `base_interval`; absent, ten times it.
    pub max_interval: Option<Duration>,
}

/// Retries may add at most `percent` of the requests on top, plus `min_retries_per_second`,
/// counted over `ttl` (Linkerd's retry budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    pub percent: u32,
    pub min_retries_per_second: u32,
    pub ttl: Duration,
}

/// Passive health checking: eject an endpoint that fails repeatedly, for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

/// Limits per caller proxy; absent, unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
}

/// Overrides of the proxy-wide timeouts for this Service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyTimeouts {
    pub connect: Option<Duration>,
    pub request: Option<Duration>,
    pub idle: Option<Duration>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: 20,
            min_retries_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }
}

impl Decoder {
    pub(super) fn traffic_policy_spec(&mut self, node: &Node, path: &str) -> TrafficPolicySpec {
        let f = self.fields(node, path, FIELDS);
        let spec = TrafficPolicySpec {
            target: self
                .required(&f, "targetRef", Self::policy_target)
                .unwrap_or_default(),
            load_balancer: self.optional(&f, "loadBalancer", |d, n, p| Some(d.load_balancer(n, p))),
            retries: self.optional(&f, "retries", |d, n, p| Some(d.retries(n, p))),
            outlier_detection: self.optional(&f, "outlierDetection", |d, n, p| {
                Some(d.outlier_detection(n, p))
            }),
            connection_limits: self.optional(&f, "connectionLimits", |d, n, p| {
                Some(d.connection_limits(n, p))
            }),
            timeouts: self.optional(&f, "timeouts", |d, n, p| Some(d.policy_timeouts(n, p))),
        };
        // A try cannot outlast the whole request.
        let request = spec
            .timeouts
            .and_then(|t| t.request)
            .filter(|r| !r.is_zero());
        let per_try = spec.retries.as_ref().and_then(|r| r.per_try_timeout);
        if let (Some(request), Some(per_try)) = (request, per_try) {
            if per_try > request {
                let reason = format!(
                    "{} is longer than timeouts.request ({}): the first try would use up the \
                     whole request",
                    crate::format_duration(per_try),
                    crate::format_duration(request)
                );
                let request_path = format!("{path}.timeouts.request");
                self.report(
                    &format!("{path}.retries.perTryTimeout"),
                    &[&request_path],
                    reason,
                );
            }
        }
        spec
    }

    /// `{kind: Service, name}`; the group, if given, is the core group or `trellis.dev`.
    fn policy_target(&mut self, node: &Node, path: &str) -> Option<String> {
        let f = self.fields(node, path, TARGET_REF_FIELDS);
        let group = self.optional(&f, "group", Self::string);
        let kind = self.required(&f, "kind", Self::string);
        let name = self.required(&f, "name", Self::string);
        if let Some(group) = group.filter(|g| !g.is_empty() && g != "trellis.dev") {
            let reason = format!(
                "{} is not the group of a Service (write \"\" or leave it out)",
                quoted(&group)
            );
            self.report(&format!("{path}.group"), &[], reason);
        }
        if let Some(kind) = kind.filter(|k| k != "Service") {
            let reason = format!(
                "a TrafficPolicy applies to a Service, not {}",
                quoted(&kind)
            );
            self.report(&format!("{path}.kind"), &[], reason);
        }
        name
    }

    fn load_balancer(&mut self, node: &Node, path: &str) -> LoadBalancer {
        let f = self.fields(node, path, LOAD_BALANCER_FIELDS);
        let lb = LoadBalancer {
            kind: self
                .optional(&f, "type", |d, n, p| {
                    d.choice(n, p, "a load balancer", BALANCERS)
                })
                .unwrap_or_default(),
            hash_on: self.optional(&f, "hashOn", Self::hash_on),
        };
        let hashing = matches!(
            lb.kind,
            LoadBalancerKind::RingHash | LoadBalancerKind::Maglev
        );
        if hashing && !f.has("hashOn") && !self.failed(&format!("{path}.type")) {
            let reason = "a consistent hash needs hashOn: { header: NAME }, { cookie: NAME } or { sourceIP: true }";
            self.report(&format!("{path}.type"), &[], reason);
        } else if !hashing && f.has("hashOn") {
            let reason = "hashOn applies only to the ringHash and maglev load balancers";
            self.report(
                &format!("{path}.hashOn"),
                &[&format!("{path}.type")],
                reason,
            );
        }
        lb
    }

    fn hash_on(&mut self, node: &Node, path: &str) -> Option<HashOn> {
        let f = self.fields(node, path, HASH_ON_FIELDS);
        let token = |d: &mut Self, n: &Node, p: &str| {
            let name = d.string(n, p)?;
            if !is_http_token(&name) {
                d.fail(
                    n.mark,
                    p,
                    format!("{} is not a header or cookie name", quoted(&name)),
                );
            }
            Some(name)
        };
        let header = self.optional(&f, "header", token).map(HashOn::Header);
        let cookie = self.optional(&f, "cookie", token).map(HashOn::Cookie);
        let source_ip = self.optional(&f, "sourceIP", Self::boolean);
        if source_ip == Some(false) {
            let reason = "write sourceIP: true, or hash on a header or cookie";
            self.report(&format!("{path}.sourceIP"), &[], reason);
        }
        let present = f.present();
        if present.len() != 1 {
            let reason = format!(
                "give exactly one of header, cookie or sourceIP (found {})",
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
                }
            );
            self.report(path, &[], reason);
        }
        header
            .or(cookie)
            .or(source_ip.filter(|on| *on).map(|_| HashOn::SourceIp))
    }

    fn retries(&mut self, node: &Node, path: &str) -> Retries {
        let f = self.fields(node, path, RETRY_FIELDS);
        let on = self.optional(&f, "on", |d, n, p| {
            let items = d.nonempty_list(n, p, Self::retry_condition)?;
            Some(items.into_iter().flatten().collect::<Vec<_>>())
        });
        let retries = Retries {
            attempts: self
                .required(&f, "attempts", |d, n, p| d.number(n, p, MAX_ATTEMPTS))
                .unwrap_or(0),
            on: on.unwrap_or_else(|| {
                vec![
                    RetryOn::ConnectFailure,
                    RetryOn::RefusedStream,
                    RetryOn::Unavailable,
                ]
            }),
            per_try_timeout: self.optional(&f, "perTryTimeout", Self::duration),
            backoff: self.optional(&f, "backoff", |d, n, p| d.retry_backoff(n, p)),
            budget: self.optional(&f, "budget", |d, n, p| Some(d.retry_budget(n, p))),
        };
        if retries.per_try_timeout.is_some_and(|t| t.is_zero()) {
            self.report(
                &format!("{path}.perTryTimeout"),
                &[],
                "must be more than 0s",
            );
        }
        retries
    }

    fn retry_backoff(&mut self, node: &Node, path: &str) -> Option<RetryBackoff> {
        let f = self.fields(node, path, BACKOFF_FIELDS);
        let base = self.required(&f, "baseInterval", Self::duration);
        let max = self.optional(&f, "maxInterval", Self::duration);
        if base.is_some_and(|b| b.is_zero()) {
            self.report(&format!("{path}.baseInterval"), &[], "must be more than 0s");
        }
        if let (Some(base), Some(max)) = (base, max) {
            if max < base {
                let reason = format!(
                    "{} is shorter than baseInterval ({}): the longest wait cannot be below the \
                     first",
                    crate::format_duration(max),
                    crate::format_duration(base)
                );
                let base_path = format!("{path}.baseInterval");
                self.report(&format!("{path}.maxInterval"), &[&base_path], reason);
            }
        }
        Some(RetryBackoff {
            base_interval: base?,
            max_interval: max,
        })
    }

    fn retry_budget(&mut self, node: &Node, path: &str) -> RetryBudget {
        let f = self.fields(node, path, BUDGET_FIELDS);
        let default = RetryBudget::default();
        let budget = RetryBudget {
            percent: self
                .optional(&f, "percent", |d, n, p| d.number(n, p, 100))
                .unwrap_or(default.percent),
            min_retries_per_second: self
                .optional(&f, "minRetriesPerSecond", |d, n, p| {
                    d.number(n, p, u32::MAX)
                })
                .unwrap_or(default.min_retries_per_second),
            ttl: self
                .optional(&f, "ttl", Self::duration)
                .unwrap_or(default.ttl),
        };
        if budget.ttl.is_zero() {
            self.report(&format!("{path}.ttl"), &[], "must be more than 0s");
        }
        budget
    }

    fn outlier_detection(&mut self, node: &Node, path: &str) -> OutlierDetection {
        let f = self.fields(node, path, OUTLIER_FIELDS);
        let default = OutlierDetection::default();
        let od = OutlierDetection {
            consecutive_5xx: self
                .optional(&f, "consecutive5xx", |d, n, p| d.number(n, p, u32::MAX))
                .unwrap_or(default.consecutive_5xx),
            interval: self
                .optional(&f, "interval", Self::duration)
                .unwrap_or(default.interval),
            base_ejection_time: self
                .optional(&f, "baseEjectionTime", Self::duration)
                .unwrap_or(default.base_ejection_time),
            max_ejection_percent: self
                .optional(&f, "maxEjectionPercent", |d, n, p| d.number(n, p, 100))
                .unwrap_or(default.max_ejection_percent),
        };
        if od.consecutive_5xx == 0 {
            let reason = "must be at least 1 (remove outlierDetection to turn it off)";
            self.report(&format!("{path}.consecutive5xx"), &[], reason);
        }
        for (name, value) in [
            ("interval", od.interval),
            ("baseEjectionTime", od.base_ejection_time),
        ] {
            if value.is_zero() {
                self.report(&format!("{path}.{name}"), &[], "must be more than 0s");
            }
        }
        od
    }

    fn connection_limits(&mut self, node: &Node, path: &str) -> ConnectionLimits {
        let f = self.fields(node, path, LIMIT_FIELDS);
        let limit = |d: &mut Self, name: &str| {
            let value = d.optional(&f, name, |d, n, p| d.number(n, p, u32::MAX));
            if value == Some(0) {
                let reason = "must be at least 1 (leave it out for no limit)";
                d.report(&format!("{path}.{name}"), &[], reason);
            }
            value
        };
        ConnectionLimits {
            max_connections: limit(self, "maxConnections"),
            max_pending_requests: limit(self, "maxPendingRequests"),
            max_requests: limit(self, "maxRequests"),
        }
    }

    fn policy_timeouts(&mut self, node: &Node, path: &str) -> PolicyTimeouts {
        let f = self.fields(node, path, TIMEOUT_FIELDS);
        let timeouts = PolicyTimeouts {
            connect: self.optional(&f, "connect", Self::duration),
            request: self.optional(&f, "request", Self::duration),
            idle: self.optional(&f, "idle", Self::duration),
        };
        if timeouts.connect.is_some_and(|t| t.is_zero()) {
            self.report(&format!("{path}.connect"), &[], "must be more than 0s");
        }
        timeouts
    }
}
