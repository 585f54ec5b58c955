//! Inbound authorization: the config's `authorization` (Istio's AuthorizationPolicy, scoped to
//! this workload by the control plane), compiled once per config into [`Authorizer`] and
//! checked on every request and connection that reaches the app.
//!
//! The decision is Istio's: if any DENY policy matches, deny; else, with no ALLOW policy,
//! allow; else allow if any ALLOW policy matches, and deny otherwise. A policy matches if any
//! rule does; a rule if any source, any operation and every condition does (an empty list
//! matches everything); within a source or operation, every field given must hold.
//!
//! What the attributes are:
//! - the principal is the peer's SPIFFE ID, proven by mutual TLS (a plaintext peer has none,
//!   so `principals` never match it and `not_principals` always do); the namespace is the
//!   one in that ID (never the unauthenticated `trellis-peer` header);
//! - the source IP (`ip_blocks`, `source.ip`, `remote.ip`) is the address the connection came
//!   from: for mesh traffic the peer proxy's, which in a sidecar deployment is the calling
//!   workload's (Istio's `ipBlocks`; its `remoteIpBlocks`, by `X-Forwarded-For`, is not
//!   supported);
//! - the destination (`ports`, `destination.*`) is the app address and port;
//! - paths are matched without the query, after removing dot segments and decoding
//!   percent-encoded unreserved characters (Istio's default `BASE` normalization; the app
//!   still receives the path as sent).
//!
//! TCP (opaque connections, `CONNECT` tunnels, and so WebSocket upgrades, which travel in
//! one) has no method, path or headers: an ALLOW rule that needs one never matches, and those
//! fields are dropped from a DENY rule, which then matches more (Istio does the same). Both
//! forms are built when the config is stored, so a check is a walk over small vectors, and
//! no walk at all when no policy applies.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{HeaderMap, HeaderName, Method, Response, StatusCode};
use trellis_model::{
    Authorization, AuthorizationPolicy, ConditionKey, IpBlock, PolicyAction, PolicyCondition,
    PolicyOperation, PolicyRule, PolicySource,
};

use crate::pool::{Body, full};

#[cfg(test)]
mod tests;

/// What a denied HTTP request receives, as Envoy's RBAC filter answers it.
const DENIED_BODY: &str = "RBAC: access denied";

/// The policies in force, in the two forms a check needs.
#[derive(Debug, Default)]
pub(crate) struct Authorizer {
    http: Policies,
    tcp: Policies,
}

/// What is known of one request or connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attributes<'a> {
    /// The peer's SPIFFE ID, when it proved one by mutual TLS.
    pub(crate) principal: Option<&'a str>,
    /// The address the connection came from.
    pub(crate) source: IpAddr,
    /// The app address and port the request or connection is for.
    pub(crate) destination: SocketAddr,
    /// The request, for HTTP; `None` for TCP.
    pub(crate) http: Option<HttpAttributes<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpAttributes<'a> {
    pub(crate) method: &'a Method,
    /// The path without the query.
    pub(crate) path: &'a str,
    pub(crate) headers: &'a HeaderMap,
}

/// Why a request or connection was denied (for logs; the client is told nothing more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// A DENY policy matched.
    DenyMatched { policy: Arc<str> },
    /// ALLOW policies apply and none matched.
    NoAllowMatched,
}

/// The DENY and ALLOW policies for one kind of traffic.
#[derive(Debug, Default)]
struct Policies {
    deny: Vec<Policy>,
    /// Kept even when no rule is left: an ALLOW policy that matches nothing still denies
    /// whatever no other ALLOW policy allows.
    allow: Vec<Policy>,
}

#[derive(Debug)]
struct Policy {
    name: Arc<str>,
    rules: Vec<Rule>,
}

#[derive(Debug, Default)]
struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
}

#[derive(Debug, Default)]
struct Source {
    principals: Vec<StringMatch>,
    not_principals: Vec<StringMatch>,
    namespaces: Vec<StringMatch>,
    not_namespaces: Vec<StringMatch>,
    ip_blocks: Vec<IpBlock>,
    not_ip_blocks: Vec<IpBlock>,
}

#[derive(Debug, Default)]
struct Operation {
    methods: Vec<StringMatch>,
    not_methods: Vec<StringMatch>,
    paths: Vec<StringMatch>,
    not_paths: Vec<StringMatch>,
    ports: Vec<u16>,
    not_ports: Vec<u16>,
}

/// A `when` condition, by the kind of value its attribute has.
#[derive(Debug)]
enum Condition {
    Ip {
        destination: bool,
        values: Vec<IpBlock>,
        not_values: Vec<IpBlock>,
    },
    Port {
        values: Vec<u16>,
        not_values: Vec<u16>,
    },
    Text {
        attribute: TextAttribute,
        values: Vec<StringMatch>,
        not_values: Vec<StringMatch>,
    },
}

#[derive(Debug)]
enum TextAttribute {
    Principal,
    Namespace,
    Header(HeaderName),
    /// `request.auth.*`: no JWT is validated, so never present.
    Absent,
}

/// Istio's string match: `abc` exactly, `abc*` by prefix, `*abc` by suffix, `*` if present.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StringMatch {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Present,
}

/// The attributes a check derives once, whatever the number of rules.
struct Request<'a> {
    attrs: &'a Attributes<'a>,
    namespace: Option<&'a str>,
    path: Cow<'a, str>,
}

/// HTTP or TCP: which form of the policies is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Traffic {
    Http,
    Tcp,
}

impl Authorizer {
    pub(crate) fn new(config: &Authorization) -> Self {
        Self {
            http: Policies::build(&config.policies, Traffic::Http),
            tcp: Policies::build(&config.policies, Traffic::Tcp),
        }
    }

    /// May this request or connection reach the app?
    pub(crate) fn check(&self, attrs: &Attributes<'_>) -> Result<(), Denial> {
        let policies = match attrs.http {
            Some(_) => &self.http,
            None => &self.tcp,
        };
        if policies.is_empty() {
            return Ok(());
        }
        let request = Request {
            attrs,
            namespace: attrs.principal.and_then(namespace_of),
            path: attrs
                .http
                .map_or(Cow::Borrowed(""), |h| normalize_path(h.path)),
        };
        if let Some(policy) = policies.deny.iter().find(|p| p.matches(&request)) {
            return Err(Denial::DenyMatched {
                policy: policy.name.clone(),
            });
        }
        if policies.allow.is_empty() || policies.allow.iter().any(|p| p.matches(&request)) {
            Ok(())
        } else {
            Err(Denial::NoAllowMatched)
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::DenyMatched { policy } => write!(f, "DENY policy {policy} matched"),
            Denial::NoAllowMatched => f.write_str("no ALLOW policy matched"),
        }
    }
}

impl Policies {
    fn build(config: &[AuthorizationPolicy], traffic: Traffic) -> Self {
        let mut policies = Policies::default();
        for p in config {
            let rules = p
                .rules
                .iter()
                .filter_map(|r| Rule::build(r, p.action, traffic))
                .collect();
            let policy = Policy {
                name: p.name.as_str().into(),
                rules,
            };
            match p.action {
                PolicyAction::Deny => policies.deny.push(policy),
                PolicyAction::Allow => policies.allow.push(policy),
            }
        }
        policies
    }

    fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }
}

impl Policy {
    fn matches(&self, request: &Request<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(request))
    }
}

impl Rule {
    /// The rule as evaluated on `traffic`. A field that cannot be evaluated there (an HTTP
    /// field on TCP, or a condition the proxy cannot read) makes an ALLOW rule match nothing
    /// (`None`) and is left out of a DENY rule.
    fn build(rule: &PolicyRule, action: PolicyAction, traffic: Traffic) -> Option<Rule> {
        // `Some(true)`: keep the field; `Some(false)`: drop it (DENY); `None`: drop the rule.
        let keep = |usable: bool| match (usable, action) {
            (true, _) => Some(true),
            (false, PolicyAction::Deny) => Some(false),
            (false, PolicyAction::Allow) => None,
        };
        let http = traffic == Traffic::Http;
        let mut to = Vec::with_capacity(rule.to.len());
        for op in &rule.to {
            let has_http = !(op.methods.is_empty()
                && op.not_methods.is_empty()
                && op.paths.is_empty()
                && op.not_paths.is_empty());
            let with_http = keep(http || !has_http)?;
            to.push(Operation::build(op, with_http));
        }
        let mut when = Vec::with_capacity(rule.when.len());
        for condition in &rule.when {
            let built = Condition::build(condition).filter(|(_, http_only)| http || !http_only);
            if keep(built.is_some())? {
                when.extend(built.map(|(c, _)| c));
            }
        }
        Some(Rule {
            from: rule.from.iter().map(Source::build).collect(),
            to,
            when,
        })
    }

    fn matches(&self, request: &Request<'_>) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(request)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(request)))
            && self.when.iter().all(|c| c.holds(request))
    }
}

impl Source {
    fn build(source: &PolicySource) -> Source {
        Source {
            principals: strings(&source.principals),
            not_principals: strings(&source.not_principals),
            namespaces: strings(&source.namespaces),
            not_namespaces: strings(&source.not_namespaces),
            ip_blocks: source.ip_blocks.clone(),
            not_ip_blocks: source.not_ip_blocks.clone(),
        }
    }

    fn matches(&self, r: &Request<'_>) -> bool {
        let principal = r.attrs.principal;
        let source = r.attrs.source;
        field(&self.principals, &self.not_principals, |m| {
            m.matches(principal)
        }) && field(&self.namespaces, &self.not_namespaces, |m| {
            m.matches(r.namespace)
        }) && field(&self.ip_blocks, &self.not_ip_blocks, |b| b.contains(source))
    }
}

impl Operation {
    /// `with_http`: false to leave out methods and paths (a DENY rule on TCP).
    fn build(op: &PolicyOperation, with_http: bool) -> Operation {
        let http = |list: &[String]| if with_http { strings(list) } else { Vec::new() };
        Operation {
            methods: http(&op.methods),
            not_methods: http(&op.not_methods),
            paths: http(&op.paths),
            not_paths: http(&op.not_paths),
            ports: op.ports.clone(),
            not_ports: op.not_ports.clone(),
        }
    }

    fn matches(&self, r: &Request<'_>) -> bool {
        let method = r.attrs.http.map(|h| h.method.as_str());
        let path = r.attrs.http.map(|_| &*r.path);
        let port = r.attrs.destination.port();
        field(&self.methods, &self.not_methods, |m| m.matches(method))
            && field(&self.paths, &self.not_paths, |m| m.matches(path))
            && field(&self.ports, &self.not_ports, |p| *p == port)
    }
}

impl Condition {
    /// The condition, and whether only HTTP requests have its attribute; `None` if the proxy
    /// cannot evaluate it (the config's validation refuses such keys and values).
    fn build(condition: &PolicyCondition) -> Option<(Condition, bool)> {
        let key = ConditionKey::parse(&condition.key).ok()?;
        let http_only = key.http_only();
        let (values, not_values) = (&condition.values, &condition.not_values);
        let ips = |list: &[String]| -> Option<Vec<IpBlock>> {
            list.iter().map(|v| IpBlock::parse(v)).collect()
        };
        let ports =
            |list: &[String]| -> Option<Vec<u16>> { list.iter().map(|v| v.parse().ok()).collect() };
        let text = |attribute| Condition::Text {
            attribute,
            values: strings(values),
            not_values: strings(not_values),
        };
        let built = match key {
            ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
                Condition::Ip {
                    destination: key == ConditionKey::DestinationIp,
                    values: ips(values)?,
                    not_values: ips(not_values)?,
                }
            }
            ConditionKey::DestinationPort => Condition::Port {
                values: ports(values)?,
                not_values: ports(not_values)?,
            },
            ConditionKey::SourcePrincipal => text(TextAttribute::Principal),
            ConditionKey::SourceNamespace => text(TextAttribute::Namespace),
            ConditionKey::RequestHeader(name) => text(TextAttribute::Header(
                HeaderName::from_bytes(name.as_bytes()).ok()?,
            )),
            ConditionKey::RequestAuth => text(TextAttribute::Absent),
        };
        Some((built, http_only))
    }

    fn holds(&self, r: &Request<'_>) -> bool {
        match self {
            Condition::Ip {
                destination,
                values,
                not_values,
            } => {
                let ip = if *destination {
                    r.attrs.destination.ip()
                } else {
                    r.attrs.source
                };
                field(values, not_values, |b| b.contains(ip))
            }
            Condition::Port { values, not_values } => {
                let port = r.attrs.destination.port();
                field(values, not_values, |p| *p == port)
            }
            Condition::Text {
                attribute,
                values,
                not_values,
            } => {
                let header;
                let value = match attribute {
                    TextAttribute::Principal => r.attrs.principal,
                    TextAttribute::Namespace => r.namespace,
                    TextAttribute::Header(name) => {
                        header = r.attrs.http.and_then(|h| header_value(h.headers, name));
                        header.as_deref()
                    }
                    TextAttribute::Absent => None,
                };
                field(values, not_values, |m| m.matches(value))
            }
        }
    }
}

impl StringMatch {
    fn new(pattern: &str) -> StringMatch {
        if pattern == "*" {
            StringMatch::Present
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            StringMatch::Suffix(suffix.into())
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            StringMatch::Prefix(prefix.into())
        } else {
            StringMatch::Exact(pattern.into())
        }
    }

    /// Whether the attribute, if present, matches.
    fn matches(&self, value: Option<&str>) -> bool {
        let Some(value) = value else {
            return false;
        };
        match self {
            StringMatch::Exact(s) => value == &**s,
            StringMatch::Prefix(s) => value.starts_with(&**s),
            StringMatch::Suffix(s) => value.ends_with(&**s),
            StringMatch::Present => true,
        }
    }
}

/// The answer to a denied HTTP request: 403 with Envoy's body.
pub(crate) fn denied_response() -> Response<Body> {
    let mut resp = Response::new(full(DENIED_BODY));
    *resp.status_mut() = StatusCode::FORBIDDEN;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// One field of a source, operation or condition: any of `values` (if given) and none of
/// `not_values`. An absent attribute matches no value, so it fails `values` and passes
/// `not_values`.
fn field<T>(values: &[T], not_values: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (values.is_empty() || values.iter().any(&matches)) && !not_values.iter().any(matches)
}

fn strings(patterns: &[String]) -> Vec<StringMatch> {
    patterns.iter().map(|p| StringMatch::new(p)).collect()
}

/// The namespace of `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.
fn namespace_of(principal: &str) -> Option<&str> {
    let rest = principal.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

/// A request header's value; several are joined with `,`, as Envoy joins them.
fn header_value<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<Cow<'h, str>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let text = |v: &'h HeaderValue| String::from_utf8_lossy(v.as_bytes());
    let mut joined = text(first);
    for more in values {
        let joined = joined.to_mut();
        joined.push(',');
        joined.push_str(&text(more));
    }
    Some(joined)
}

/// The path as policies see it: percent-encoded unreserved characters decoded (so `%2e` is a
/// dot) and dot segments removed (RFC 3986, 5.2.4). Borrowed when there is nothing to do.
fn normalize_path(path: &str) -> Cow<'_, str> {
    let decoded = decode_unreserved(path);
    let has_dots = decoded
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    if !has_dots {
        return decoded;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." && out.len() > 1 {
                    out.pop();
                }
                // A dot segment at the end leaves a directory: `/a/b/..` is `/a/`.
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    // The leading empty segment of an absolute path is never popped, so it stays absolute.
    Cow::Owned(out.join("/"))
}

/// `%41` → `A`, for letters, digits and `-._~` only (decoding others would change meaning).
fn decode_unreserved(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| path.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        match decoded {
            Some(b) => {
                out.push(char::from(b));
                i += 3;
            }
            None => {
                // Copy up to the next `%` as it is (a `%` is never inside a UTF-8 sequence).
                let next = bytes[i + 1..]
                    .iter()
                    .position(|&b| b == b'%')
                    .map_or(bytes.len(), |n| i + 1 + n);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Cow::Owned(out)
}
