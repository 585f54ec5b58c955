//! HTTP routes in the proxy config: the proxy's form of Gateway API `HTTPRoute` and `GRPCRoute`
//! (the mesh profile, GAMMA), already scoped to one caller.
//!
//! A service with routes sends each HTTP request where its best-matching rule says (to other
//! services, by weight), answers a redirect itself, or answers 404 when no rule matches. A
//! service without routes balances over its own endpoints. The control plane has already
//! chosen which routes a proxy sees (producer routes, or its namespace's consumer routes) and
//! in which order ties are broken (the order of `routes`, then of `rules`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Percent;

/// One route on a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Where the route came from, for logs and config dumps (`HTTPRoute shop/reviews`).
    #[serde(default)]
    pub name: String,
    /// Only requests to this port of the service; absent: every port.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

/// What to do with requests that match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// A request matches the rule if it matches any of these; none: every request.
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    /// Applied in order before the request is forwarded (or answered, for a redirect).
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
    /// Where matching requests go, in proportion to their weights. With none (or every weight
    /// 0) and no redirect, the request is answered 500, as the Gateway API says.
    #[serde(default)]
    pub backends: Vec<RouteBackend>,
    /// The whole exchange (until the response headers), instead of the service's
    /// `timeouts.request`; `0s` for none.
    #[serde(default, with = "crate::duration::serde_option_duration")]
    pub timeout: Option<Duration>,
}

/// Every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Absent: any path (ranked below every path match).
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// An HTTP method (`GET`, `POST`, ...).
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
}

/// A condition on the request's path (the query string is not part of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub kind: PathMatchKind,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMatchKind {
    /// The whole path, byte for byte.
    Exact,
    /// Whole path segments: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not `/foobar`; a
    /// trailing `/` in the value is ignored.
    Prefix,
    /// A regular expression (RE2 syntax) that must match the whole path.
    Regex,
}

/// A condition on a header or query parameter `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    #[serde(rename = "type", default)]
    pub kind: ValueMatchKind,
    /// Header names are case-insensitive; query parameter names are not.
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueMatchKind {
    #[default]
    Exact,
    /// A regular expression (RE2 syntax) that must match the whole value.
    Regex,
}

/// A service port that requests are sent to; the request is then balanced over that
/// service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteBackend {
    /// A service of this config.
    pub service: String,
    /// Absent: the namespace of the service the route is on.
    #[serde(default)]
    pub namespace: Option<String>,
    /// A port of that service.
    pub port: u16,
    /// Share of the rule's requests relative to the other backends; 0 sends none.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// Something a rule does to a request or its response. Written as a one-key mapping:
/// `{ request_header_modifier: { set: [...] } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteFilter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    /// Answer with a redirect instead of forwarding (a rule with a redirect has no backends).
    RequestRedirect(RequestRedirect),
    UrlRewrite(UrlRewrite),
    /// Send a copy of a share of the requests to another service, ignoring its answers
    /// (Gateway API `RequestMirror`). A rule may have several.
    Mirror(RequestMirror),
    /// Delay or abort a share of the requests (a `FaultInjection` the route refers to); one per
    /// rule.
    Fault(FaultInjection),
}

/// Where copies of requests go, and how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMirror {
    /// A service of this config.
    pub service: String,
    /// Absent: the namespace of the service the route is on.
    #[serde(default)]
    pub namespace: Option<String>,
    /// A port of that service.
    pub port: u16,
    /// The share of the rule's requests copied (0 to 100, fractions allowed).
    #[serde(default)]
    pub percent: Percent,
}

/// Faults for testing how callers cope (Istio's `HTTPFaultInjection`): a delay before the
/// request is forwarded, and an abort that answers it without contacting the backend. Each
/// applies to its own share of the requests, drawn independently; a request may get both (the
/// delay first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(with = "crate::duration::serde_duration")]
    pub duration: Duration,
    #[serde(default)]
    pub percent: Percent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// The HTTP status of the answer (200 to 599).
    pub status: u16,
    /// For a gRPC request: answer HTTP 200 with this `grpc-status` (0 to 16) instead; absent,
    /// a gRPC request gets the status Envoy maps `status` to (503 → 14 UNAVAILABLE).
    #[serde(default)]
    pub grpc_status: Option<u8>,
    #[serde(default)]
    pub percent: Percent,
}

/// Header changes, applied as `set`, then `add`, then `remove`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    /// Replace any value the header has.
    #[serde(default)]
    pub set: Vec<Header>,
    /// Add a value, keeping those the header has.
    #[serde(default)]
    pub add: Vec<Header>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// The `Location` of a redirect: each part given replaces the request's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
    /// Absent: the scheme's well-known port when a scheme is given, else the port the
    /// request was addressed to (left out of `Location` when it is the scheme's default).
    #[serde(default)]
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status_code: u16,
}

/// Rewrite the request before forwarding it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRewrite {
    /// The new host (`Host`, `:authority`).
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// A new path. Written as a one-key mapping: `{ replace_prefix_match: /v2 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replace the part of the path that the rule's prefix match matched (the rule has one
    /// match, with a prefix path).
    ReplacePrefixMatch(String),
}

pub(crate) fn default_weight() -> u32 {
    1
}

pub(crate) fn default_redirect_status() -> u16 {
    302
}
