//! `trellis.dev/v1alpha1` `FaultInjection`: delays and aborts for a share of a route rule's
//! requests, with Istio's `HTTPFaultInjection` semantics. The Gateway API has no fault filter;
//! a rule uses one through its extension point:
//!
//! ```yaml
//! filters:
//!   - type: ExtensionRef
//!     extensionRef: { group: trellis.dev, kind: FaultInjection, name: slow-reviews }
//! ```
//!
//! The FaultInjection is in the route's namespace (an `extensionRef` is a local reference).

use std::time::Duration;

use super::decode::Decoder;
use super::names::quoted;
use crate::Percent;
use crate::validate::yaml::{Node, Value};

const FIELDS: &[&str] = &["delay", "abort"];
const DELAY_FIELDS: &[&str] = &["fixedDelay", "percentage"];
const ABORT_FIELDS: &[&str] = &["httpStatus", "grpcStatus", "percentage"];
/// Istio's `Percent` message: `percentage: { value: 10 }`.
const PERCENTAGE_FIELDS: &[&str] = &["value"];

/// gRPC status codes by name.
pub(super) const GRPC_CODES: &[(&str, u8)] = &[
    ("OK", 0),
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
];

/// The group and kind a route's `extensionRef` names a FaultInjection by.
pub(super) const EXTENSION_GROUP: &str = "trellis.dev";
pub(super) const EXTENSION_KIND: &str = "FaultInjection";

/// Faults for a share of the requests of the rules that refer to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultInjectionSpec {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

/// Wait before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultDelay {
    pub fixed_delay: Duration,
    /// Absent: every request.
    pub percentage: Percent,
}

/// Answer at once, without contacting the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultAbort {
    /// 200 to 599.
    pub http_status: u16,
    /// What a gRPC request gets instead (HTTP 200 with this `grpc-status`).
    pub grpc_status: Option<u8>,
    /// Absent: every request.
    pub percentage: Percent,
}

impl Decoder {
    pub(super) fn fault_injection_spec(&mut self, node: &Node, path: &str) -> FaultInjectionSpec {
        let f = self.fields(node, path, FIELDS);
        let spec = FaultInjectionSpec {
            delay: self.optional(&f, "delay", Self::fault_delay),
            abort: self.optional(&f, "abort", Self::fault_abort),
        };
        if f.present().is_empty() {
            let reason = "a FaultInjection needs a delay, an abort or both";
            self.report(path, &[], reason);
        }
        spec
    }

    fn fault_delay(&mut self, node: &Node, path: &str) -> Option<FaultDelay> {
        let f = self.fields(node, path, DELAY_FIELDS);
        let delay = self.required(&f, "fixedDelay", Self::duration);
        let percentage = self.optional(&f, "percentage", Self::percentage);
        if delay.is_some_and(|d| d.is_zero()) {
            self.report(&format!("{path}.fixedDelay"), &[], "must be more than 0s");
        }
        Some(FaultDelay {
            fixed_delay: delay?,
            percentage: percentage.unwrap_or(Percent::ALL),
        })
    }

    fn fault_abort(&mut self, node: &Node, path: &str) -> Option<FaultAbort> {
        let f = self.fields(node, path, ABORT_FIELDS);
        let status = self.required(&f, "httpStatus", |d, n, p| {
            let code = d.number(n, p, 999)?;
            let status = u16::try_from(code).ok().filter(|c| (200..=599).contains(c));
            if status.is_none() {
                let reason = format!("{code} is not an HTTP status for an abort (200 to 599)");
                d.fail(n.mark, p, reason);
            }
            status
        });
        let grpc_status = self.optional(&f, "grpcStatus", Self::grpc_code);
        let percentage = self.optional(&f, "percentage", Self::percentage);
        Some(FaultAbort {
            http_status: status?,
            grpc_status,
            percentage: percentage.unwrap_or(Percent::ALL),
        })
    }

    /// A gRPC status by name (`UNAVAILABLE`) or number (`14`).
    fn grpc_code(&mut self, node: &Node, path: &str) -> Option<u8> {
        let text = self.scalar(node, path, "a gRPC status")?;
        let by_name = GRPC_CODES.iter().find(|(name, _)| *name == text);
        let code = by_name
            .map(|(_, code)| *code)
            .or_else(|| text.parse::<u8>().ok().filter(|c| *c <= 16));
        if code.is_none() {
            let names: Vec<&str> = GRPC_CODES.iter().map(|(name, _)| *name).collect();
            let reason = format!(
                "{} is not a gRPC status (a number from 0 to 16, or one of: {})",
                quoted(text),
                names.join(", ")
            );
            self.fail(node.mark, path, reason);
        }
        code
    }

    /// A percentage from 0 to 100, fractions allowed: a number, or Istio's `{ value: N }`.
    pub(super) fn percentage(&mut self, node: &Node, path: &str) -> Option<Percent> {
        if let Value::Map(_) = node.value {
            let f = self.fields(node, path, PERCENTAGE_FIELDS);
            return self.required(&f, "value", Self::percentage);
        }
        self.percent(node, path)
    }
}
