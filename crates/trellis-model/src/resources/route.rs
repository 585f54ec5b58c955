//! `gateway.networking.k8s.io/v1` `HTTPRoute` and `GRPCRoute` as the Gateway API mesh profile
//! (GAMMA) uses them: the parent is a Service, and the route applies to traffic addressed to
//! that Service.
//!
//! Defaults are filled in as the Gateway API CRDs fill them in (a rule with no matches matches
//! every path; a backend's weight is 1; a redirect is a 302), so the model holds what the API
//! server would store. Parsed and validated here; `compile/route.rs` turns them into the routes
//! of each proxy's Services.

use std::time::Duration;

mod decode;
mod filter;

/// Routes for HTTP/1.1 and HTTP/2 traffic to a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<ParentRef>,
    /// Host names the route applies to; GAMMA ignores them for Service parents.
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
}

/// Routes for gRPC traffic to a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcRouteSpec {
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<GrpcRouteRule>,
}

/// The Service a route attaches to (`group: ""`, `kind: Service`). In the route's namespace it
/// is a producer route (for every caller); in another namespace, a consumer route (for callers
/// in the route's namespace only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    pub name: String,
    /// Absent: the route's namespace.
    pub namespace: Option<String>,
    /// Narrows the route to one port of the Service.
    pub port: Option<u16>,
}

/// A Service (in the route's namespace) that requests are sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRef {
    pub name: String,
    /// Absent: the route's namespace (another one would need a ReferenceGrant).
    pub namespace: Option<String>,
    pub port: u16,
    /// Share of the rule's requests, relative to the other backends; 0 sends none.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRouteRule {
    /// A request matches the rule if it matches any of these (never empty: the default is a
    /// `PathPrefix` match on `/`).
    pub matches: Vec<HttpRouteMatch>,
    pub filters: Vec<HttpFilter>,
    pub backend_refs: Vec<BackendRef>,
    pub timeouts: RouteTimeouts,
}

/// Every condition given must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRouteMatch {
    pub path: PathMatch,
    pub headers: Vec<ValueMatch>,
    pub query_params: Vec<ValueMatch>,
    /// An HTTP method (`GET`, `POST`, ...).
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMatch {
    pub kind: PathMatchKind,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PathMatchKind {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

/// A header or query parameter `name` whose value matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueMatch {
    pub kind: MatchKind,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MatchKind {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpFilter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(Redirect),
    UrlRewrite(UrlRewrite),
    RequestMirror(Mirror),
    /// Trellis's one extension filter: a `FaultInjection` in the route's namespace.
    ExtensionRef(ExtensionRef),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcFilter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestMirror(Mirror),
    ExtensionRef(ExtensionRef),
}

/// `extensionRef: { group: trellis.dev, kind: FaultInjection, name }`: the group and kind are
/// checked when decoding, so only the name is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionRef {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    pub set: Vec<Header>,
    pub add: Vec<Header>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Answer with a redirect instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`; absent, the request's.
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// 301, 302 (the default), 303, 307 or 308.
    pub status_code: u16,
}

/// Rewrite the request before forwarding it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replace the part of the path that the rule's `PathPrefix` match matched.
    ReplacePrefixMatch(String),
}

/// Send a copy of each request to another Service, ignoring its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub name: String,
    pub namespace: Option<String>,
    pub port: u16,
    /// The share of requests mirrored (`percent`, or `fraction` as a percentage); absent,
    /// all of them.
    pub percent: Option<crate::Percent>,
}

/// Gateway API route timeouts: `request` for the whole exchange (retries included),
/// `backend_request` for each try. Zero disables one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteTimeouts {
    pub request: Option<Duration>,
    pub backend_request: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcRouteRule {
    /// Empty: every request.
    pub matches: Vec<GrpcRouteMatch>,
    pub filters: Vec<GrpcFilter>,
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcRouteMatch {
    pub method: Option<GrpcMethodMatch>,
    pub headers: Vec<ValueMatch>,
}

/// A gRPC service and/or method (`/<service>/<method>`); at least one is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMethodMatch {
    pub kind: MatchKind,
    pub service: Option<String>,
    pub method: Option<String>,
}

/// The parts of a route that the checks across documents look at, for both kinds.
pub(super) trait Route {
    fn parent_refs(&self) -> &[ParentRef];
    /// Each backend and mirror target with its path under `spec`: `(path, name, namespace,
    /// port)`.
    fn service_refs(&self) -> Vec<(String, &str, Option<&str>, u16)>;
    /// Each `extensionRef` (a FaultInjection's name) with its path under `spec`.
    fn extension_refs(&self) -> Vec<(String, &str)>;
}

impl Default for HttpRouteMatch {
    fn default() -> Self {
        Self {
            path: PathMatch {
                kind: PathMatchKind::PathPrefix,
                value: "/".to_string(),
            },
            headers: Vec::new(),
            query_params: Vec::new(),
            method: None,
        }
    }
}

impl Route for HttpRouteSpec {
    fn parent_refs(&self) -> &[ParentRef] {
        &self.parent_refs
    }

    fn service_refs(&self) -> Vec<(String, &str, Option<&str>, u16)> {
        let mut refs = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            for (j, b) in rule.backend_refs.iter().enumerate() {
                let path = format!("spec.rules[{i}].backendRefs[{j}]");
                refs.push((path, b.name.as_str(), b.namespace.as_deref(), b.port));
            }
            for (j, filter) in rule.filters.iter().enumerate() {
                if let HttpFilter::RequestMirror(m) = filter {
                    let path = format!("spec.rules[{i}].filters[{j}].requestMirror.backendRef");
                    refs.push((path, m.name.as_str(), m.namespace.as_deref(), m.port));
                }
            }
        }
        refs
    }
    fn extension_refs(&self) -> Vec<(String, &str)> {
        let mut refs = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            for (j, filter) in rule.filters.iter().enumerate() {
                if let HttpFilter::ExtensionRef(e) = filter {
                    let path = format!("spec.rules[{i}].filters[{j}].extensionRef.name");
                    refs.push((path, e.name.as_str()));
                }
            }
        }
        refs
    }
}

impl Route for GrpcRouteSpec {
    fn parent_refs(&self) -> &[ParentRef] {
        &self.parent_refs
    }

    fn service_refs(&self) -> Vec<(String, &str, Option<&str>, u16)> {
        let mut refs = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            for (j, b) in rule.backend_refs.iter().enumerate() {
                let path = format!("spec.rules[{i}].backendRefs[{j}]");
                refs.push((path, b.name.as_str(), b.namespace.as_deref(), b.port));
            }
            for (j, filter) in rule.filters.iter().enumerate() {
                if let GrpcFilter::RequestMirror(m) = filter {
                    let path = format!("spec.rules[{i}].filters[{j}].requestMirror.backendRef");
                    refs.push((path, m.name.as_str(), m.namespace.as_deref(), m.port));
                }
            }
        }
        refs
    }
    fn extension_refs(&self) -> Vec<(String, &str)> {
        let mut refs = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            for (j, filter) in rule.filters.iter().enumerate() {
                if let GrpcFilter::ExtensionRef(e) = filter {
                    let path = format!("spec.rules[{i}].filters[{j}].extensionRef.name");
                    refs.push((path, e.name.as_str()));
                }
            }
        }
        refs
    }
}
