//! Decoding a service's `policy` (load balancing, retries, outlier detection, limits), each
//! value checked on its own: a consistent hash names its key, durations are above zero,
//! shares are percentages, limits are at least 1.

use super::Decoder;
use crate::decoder::{Fields, join};
use crate::proxy::{
    HashOn, Limits, LoadBalancer, LoadBalancerKind, OutlierDetection, Retries, RetryBudget,
    ServicePolicy,
};
use crate::proxy::{policy::default_backoff, policy::default_retry_on};
use crate::resources::names::is_http_token;
use crate::validate::quoted;
use crate::validate::yaml::{Node, Value};

pub(in crate::validate) const POLICY_FIELDS: &[&str] =
    &["load_balancer", "retries", "outlier_detection", "limits"];
pub(in crate::validate) const LOAD_BALANCER_FIELDS: &[&str] = &["type", "hash_on"];
pub(in crate::validate) const HASH_ON_FIELDS: &[&str] = &["header", "cookie"];
pub(in crate::validate) const RETRY_FIELDS: &[&str] = &[
    "attempts",
    "on",
    "per_try_timeout",
    "backoff",
    "max_backoff",
    "budget",
];
pub(in crate::validate) const BUDGET_FIELDS: &[&str] =
    &["percent", "min_retries_per_second", "ttl"];
pub(in crate::validate) const OUTLIER_FIELDS: &[&str] = &[
    "consecutive_5xx",
    "interval",
    "base_ejection_time",
    "max_ejection_time",
    "max_ejection_percent",
];
pub(in crate::validate) const LIMIT_FIELDS: &[&str] =
    &["max_connections", "max_pending_requests", "max_requests"];
const BALANCERS: &[(&str, LoadBalancerKind)] = &[
    ("round_robin", LoadBalancerKind::RoundRobin),
    ("least_request", LoadBalancerKind::LeastRequest),
    ("ring_hash", LoadBalancerKind::RingHash),
    ("maglev", LoadBalancerKind::Maglev),
];
/// Each retry multiplies the load a failing service sees.
const MAX_ATTEMPTS: u32 = 10;

impl Decoder {
    pub(super) fn service_policy(&mut self, node: &Node, path: &str) -> ServicePolicy {
        let f = self.fields(node, path, POLICY_FIELDS);
        ServicePolicy {
            load_balancer: self
                .optional(&f, "load_balancer", |d, n, p| Some(d.load_balancer(n, p)))
                .unwrap_or_default(),
            retries: self.optional(&f, "retries", |d, n, p| Some(d.retries(n, p))),
            outlier_detection: self.optional(&f, "outlier_detection", |d, n, p| {
                Some(d.outlier_detection(n, p))
            }),
            limits: self.optional(&f, "limits", |d, n, p| Some(d.limits(n, p))),
        }
    }

    fn load_balancer(&mut self, node: &Node, path: &str) -> LoadBalancer {
        let f = self.fields(node, path, LOAD_BALANCER_FIELDS);
        let lb = LoadBalancer {
            kind: self
                .optional(&f, "type", |d, n, p| {
                    d.choice(n, p, "a load balancer", BALANCERS)
                })
                .unwrap_or_default(),
            hash_on: self.optional(&f, "hash_on", Self::hash_on),
        };
        let type_path = join(path, "type");
        let hash_path = join(path, "hash_on");
        let hashing = matches!(
            lb.kind,
            LoadBalancerKind::RingHash | LoadBalancerKind::Maglev
        );
        let has_key = self.marks.contains_key(&hash_path);
        if hashing && !has_key && !self.failed.contains(&type_path) {
            let reason = "a consistent hash needs hash_on: { header: NAME }, { cookie: NAME } or \
                          source_ip"
                .to_string();
            let mark = self.marks.get(&type_path).copied().unwrap_or(f.mark);
            self.error(mark, &type_path, reason);
        } else if !hashing && has_key {
            let reason = "hash_on applies only to the ring_hash and maglev load balancers";
            let mark = self.marks.get(&hash_path).copied().unwrap_or(f.mark);
            self.error(mark, &hash_path, reason.to_string());
        }
        lb
    }

    /// `source_ip`, `{ header: NAME }` or `{ cookie: NAME }`.
    fn hash_on(&mut self, node: &Node, path: &str) -> Option<HashOn> {
        if let Value::Scalar { .. } = node.value {
            if node.text() == Some("source_ip") {
                return Some(HashOn::SourceIp);
            }
            let reason = format!(
                "{} is not a hash key (write source_ip, {{ header: NAME }} or {{ cookie: NAME }})",
                node.describe()
            );
            self.fail(node.mark, path, reason);
            return None;
        }
        let f = self.fields(node, path, HASH_ON_FIELDS);
        let token = |d: &mut Self, n: &Node, p: &str| {
            let name = d.string(n, p)?;
            if !is_http_token(&name) {
                d.fail(
                    n.mark,
                    p,
                    format!("{} is not a header or cookie name", quoted(&name)),
                );
                return None;
            }
            Some(name)
        };
        let header = self.optional(&f, "header", token);
        let cookie = self.optional(&f, "cookie", token);
        if f.entries.len() != 1 && !f.broken {
            let reason = "give exactly one of header or cookie (or write source_ip)".to_string();
            self.fail(f.mark, path, reason);
        }
        header.map(HashOn::Header).or(cookie.map(HashOn::Cookie))
    }

    fn retries(&mut self, node: &Node, path: &str) -> Retries {
        let f = self.fields(node, path, RETRY_FIELDS);
        let retries = Retries {
            attempts: self
                .required(&f, "attempts", |d, n, p| d.number(n, p, MAX_ATTEMPTS))
                .unwrap_or(0),
            on: self
                .optional(&f, "on", |d, n, p| {
                    let items = d.list(n, p, Self::retry_condition)?;
                    Some(items.into_iter().flatten().collect())
                })
                .unwrap_or_else(default_retry_on),
            per_try_timeout: self.positive(&f, "per_try_timeout"),
            backoff: self.positive(&f, "backoff").unwrap_or_else(default_backoff),
            max_backoff: self.positive(&f, "max_backoff"),
            budget: self
                .optional(&f, "budget", |d, n, p| Some(d.retry_budget(n, p)))
                .unwrap_or_default(),
        };
        let backoff_path = join(path, "backoff");
        if let Some(max) = retries.max_backoff {
            if max < retries.backoff && !self.failed.contains(&backoff_path) {
                let at = join(path, "max_backoff");
                let reason = format!(
                    "is shorter than backoff ({}): the longest wait cannot be below the first",
                    crate::format_duration(retries.backoff)
                );
                let mark = self.marks.get(&at).copied().unwrap_or(f.mark);
                self.error(mark, &at, reason);
            }
        }
        retries
    }

    fn retry_budget(&mut self, node: &Node, path: &str) -> RetryBudget {
        let f = self.fields(node, path, BUDGET_FIELDS);
        let default = RetryBudget::default();
        RetryBudget {
            percent: self
                .optional(&f, "percent", |d, n, p| d.number(n, p, 1000))
                .unwrap_or(default.percent),
            min_retries_per_second: self
                .optional(&f, "min_retries_per_second", |d, n, p| {
                    d.number(n, p, 1_000_000)
                })
                .unwrap_or(default.min_retries_per_second),
            ttl: self.positive(&f, "ttl").unwrap_or(default.ttl),
        }
    }

    fn outlier_detection(&mut self, node: &Node, path: &str) -> OutlierDetection {
        let f = self.fields(node, path, OUTLIER_FIELDS);
        let default = OutlierDetection::default();
        let od = OutlierDetection {
            consecutive_5xx: self
                .optional(&f, "consecutive_5xx", |d, n, p| d.number(n, p, u32::MAX))
                .unwrap_or(default.consecutive_5xx),
            interval: self.positive(&f, "interval").unwrap_or(default.interval),
            base_ejection_time: self
                .positive(&f, "base_ejection_time")
                .unwrap_or(default.base_ejection_time),
            max_ejection_time: self
                .positive(&f, "max_ejection_time")
                .unwrap_or(default.max_ejection_time),
            max_ejection_percent: self
                .optional(&f, "max_ejection_percent", |d, n, p| d.number(n, p, 100))
                .unwrap_or(default.max_ejection_percent),
        };
        if od.consecutive_5xx == 0 {
            let at = join(path, "consecutive_5xx");
            let reason = "must be at least 1 (remove outlier_detection to turn it off)";
            let mark = self.marks.get(&at).copied().unwrap_or(f.mark);
            self.error(mark, &at, reason.to_string());
        }
        if od.max_ejection_time < od.base_ejection_time {
            let at = join(path, "max_ejection_time");
            let reason = format!(
                "is shorter than base_ejection_time ({})",
                crate::format_duration(od.base_ejection_time)
            );
            let mark = self.marks.get(&at).copied().unwrap_or(f.mark);
            self.error(mark, &at, reason);
        }
        od
    }

    fn limits(&mut self, node: &Node, path: &str) -> Limits {
        let f = self.fields(node, path, LIMIT_FIELDS);
        let limit = |d: &mut Self, name: &str| {
            let value = d.optional(&f, name, |d, n, p| d.number(n, p, u32::MAX));
            if value == Some(0) {
                let reason = "must be at least 1 (leave it out for no limit)".to_string();
                let at = join(path, name);
                let mark = d.marks.get(&at).copied().unwrap_or(f.mark);
                d.error(mark, &at, reason);
            }
            value
        };
        Limits {
            max_connections: limit(self, "max_connections"),
            max_pending_requests: limit(self, "max_pending_requests"),
            max_requests: limit(self, "max_requests"),
        }
    }

    /// An optional duration that must be above zero.
    fn positive(&mut self, f: &Fields<'_>, name: &str) -> Option<std::time::Duration> {
        let value = self.optional(f, name, Self::duration)?;
        if value.is_zero() {
            let at = join(&f.path, name);
            let mark = self.marks.get(&at).copied().unwrap_or(f.mark);
            self.fail(mark, &at, "must be more than 0s".to_string());
            return None;
        }
        Some(value)
    }
}
