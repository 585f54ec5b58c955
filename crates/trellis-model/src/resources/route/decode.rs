//! Decoding HTTPRoute and GRPCRoute, with the checks the Gateway API CRDs make (their CEL
//! rules and patterns), so that a route Trellis accepts is one Kubernetes would accept too.

use std::time::Duration;

use super::{
    BackendRef, GrpcMethodMatch, GrpcRouteMatch, GrpcRouteRule, GrpcRouteSpec, HttpRouteMatch,
    HttpRouteRule, HttpRouteSpec, MatchKind, ParentRef, PathMatch, PathMatchKind, RouteTimeouts,
    ValueMatch,
};
use crate::resources::decode::{Decoder, Fields};
use crate::resources::names::{is_dns_subdomain, is_http_token, quoted, regex_error};
use crate::validate::yaml::Node;

const HTTP_ROUTE_FIELDS: &[&str] = &["parentRefs", "hostnames", "rules"];
const PARENT_REF_FIELDS: &[&str] = &["group", "kind", "name", "namespace", "port"];
const BACKEND_REF_FIELDS: &[&str] = &["group", "kind", "name", "namespace", "port", "weight"];
const HTTP_RULE_FIELDS: &[&str] = &["matches", "filters", "backendRefs", "timeouts"];
const GRPC_RULE_FIELDS: &[&str] = &["matches", "filters", "backendRefs"];
const HTTP_MATCH_FIELDS: &[&str] = &["path", "headers", "queryParams", "method"];
const GRPC_MATCH_FIELDS: &[&str] = &["method", "headers"];
const PATH_MATCH_FIELDS: &[&str] = &["type", "value"];
const VALUE_MATCH_FIELDS: &[&str] = &["type", "name", "value"];
const GRPC_METHOD_FIELDS: &[&str] = &["type", "service", "method"];
const TIMEOUT_FIELDS: &[&str] = &["request", "backendRequest"];

const PATH_MATCH_KINDS: &[(&str, PathMatchKind)] = &[
    ("Exact", PathMatchKind::Exact),
    ("PathPrefix", PathMatchKind::PathPrefix),
    ("RegularExpression", PathMatchKind::RegularExpression),
];
const MATCH_KINDS: &[(&str, MatchKind)] = &[
    ("Exact", MatchKind::Exact),
    ("RegularExpression", MatchKind::RegularExpression),
];
const METHODS: &[(&str, &str)] = &[
    ("GET", "GET"),
    ("HEAD", "HEAD"),
    ("POST", "POST"),
    ("PUT", "PUT"),
    ("DELETE", "DELETE"),
    ("CONNECT", "CONNECT"),
    ("OPTIONS", "OPTIONS"),
    ("TRACE", "TRACE"),
    ("PATCH", "PATCH"),
];

/// Longest path or header value the Gateway API accepts.
const MAX_PATH: usize = 1024;
const MAX_HEADER_VALUE: usize = 4096;
const MAX_WEIGHT: u32 = 1_000_000;

impl Decoder {
    pub(in crate::resources) fn http_route_spec(
        &mut self,
        node: &Node,
        path: &str,
    ) -> HttpRouteSpec {
        let f = self.fields(node, path, HTTP_ROUTE_FIELDS);
        HttpRouteSpec {
            parent_refs: self
                .required(&f, "parentRefs", Self::parent_refs)
                .unwrap_or_default(),
            hostnames: self
                .optional(&f, "hostnames", Self::route_hostnames)
                .unwrap_or_default(),
            rules: self
                .optional(&f, "rules", |d, n, p| d.list(n, p, Self::http_rule))
                .unwrap_or_else(|| {
                    vec![HttpRouteRule {
                        matches: vec![HttpRouteMatch::default()],
                        filters: Vec::new(),
                        backend_refs: Vec::new(),
                        timeouts: RouteTimeouts::default(),
                    }]
                }),
        }
    }

    pub(in crate::resources) fn grpc_route_spec(
        &mut self,
        node: &Node,
        path: &str,
    ) -> GrpcRouteSpec {
        let f = self.fields(node, path, HTTP_ROUTE_FIELDS);
        GrpcRouteSpec {
            parent_refs: self
                .required(&f, "parentRefs", Self::parent_refs)
                .unwrap_or_default(),
            hostnames: self
                .optional(&f, "hostnames", Self::route_hostnames)
                .unwrap_or_default(),
            rules: self
                .optional(&f, "rules", |d, n, p| d.list(n, p, Self::grpc_rule))
                .unwrap_or_else(|| {
                    vec![GrpcRouteRule {
                        matches: Vec::new(),
                        filters: Vec::new(),
                        backend_refs: Vec::new(),
                    }]
                }),
        }
    }

    // Parents and backends.

    fn parent_refs(&mut self, node: &Node, path: &str) -> Option<Vec<ParentRef>> {
        let refs = self.list(node, path, Self::parent_ref)?;
        if refs.is_empty() {
            let reason = "a mesh route needs a parentRef: the Service it applies to";
            self.fail(node.mark, path, reason.to_string());
        }
        Some(refs)
    }

    fn parent_ref(&mut self, node: &Node, path: &str) -> ParentRef {
        let f = self.fields(node, path, PARENT_REF_FIELDS);
        let group = self.optional(&f, "group", Self::string);
        let kind = self.optional(&f, "kind", Self::string);
        let parent = ParentRef {
            name: self.required(&f, "name", Self::string).unwrap_or_default(),
            namespace: self.optional(&f, "namespace", Self::string),
            port: self.optional(&f, "port", Self::port),
        };
        match kind.as_deref() {
            Some("Service") => {}
            Some(other) => {
                let reason = format!(
                    "{} is not a parent Trellis knows: a mesh route's parent is a Service \
                     (kind: Service, group: \"\")",
                    quoted(other)
                );
                self.report(&format!("{path}.kind"), &[], reason);
            }
            None if !self.failed(path) => {
                let reason = "kind defaults to Gateway, and Trellis has no Gateways: a mesh \
                              route's parent is a Service (add kind: Service and group: \"\")";
                self.report(path, &[], reason);
            }
            None => {}
        }
        if kind.as_deref() == Some("Service") {
            match group.as_deref() {
                Some("") => {}
                Some(other) => {
                    let reason = format!(
                        "a Service is in the core group: write group: \"\", not {}",
                        quoted(other)
                    );
                    self.report(&format!("{path}.group"), &[], reason);
                }
                None => {
                    let reason = "group defaults to gateway.networking.k8s.io, which has no \
                                  Service: add group: \"\" (the core group)";
                    self.report(&format!("{path}.kind"), &[], reason);
                }
            }
        }
        self.object_name(&format!("{path}.name"), &parent.name);
        if let Some(ns) = &parent.namespace {
            self.object_name(&format!("{path}.namespace"), ns);
        }
        parent
    }

    fn backend_ref(&mut self, node: &Node, path: &str) -> BackendRef {
        let f = self.fields(node, path, BACKEND_REF_FIELDS);
        self.service_kind(&f, path);
        let backend = BackendRef {
            name: self.required(&f, "name", Self::string).unwrap_or_default(),
            namespace: self.optional(&f, "namespace", Self::string),
            port: self.required(&f, "port", Self::port).unwrap_or(0),
            weight: self
                .optional(&f, "weight", |d, n, p| d.number(n, p, MAX_WEIGHT))
                .unwrap_or(1),
        };
        self.object_name(&format!("{path}.name"), &backend.name);
        backend
    }

    /// A backend's `group` and `kind`, if given, name a Service.
    pub(super) fn service_kind(&mut self, f: &Fields<'_>, path: &str) {
        let group = self.optional(f, "group", Self::string);
        let kind = self.optional(f, "kind", Self::string);
        if let Some(group) = group.filter(|g| !g.is_empty()) {
            let reason = format!(
                "a backend is a Service, in the core group \"\", not {}",
                quoted(&group)
            );
            self.report(&format!("{path}.group"), &[], reason);
        }
        if let Some(kind) = kind.filter(|k| k != "Service") {
            let reason = format!("a backend is a Service, not {}", quoted(&kind));
            self.report(&format!("{path}.kind"), &[], reason);
        }
    }

    fn route_hostnames(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        self.list(node, path, |d, n, p| {
            let name = d.string(n, p).unwrap_or_default();
            let bare = name.strip_prefix("*.").unwrap_or(&name);
            if !d.failed(p) && !is_dns_subdomain(bare) {
                let reason = format!(
                    "{} is not a host name (a DNS name, optionally starting with \"*.\")",
                    quoted(&name)
                );
                d.fail(n.mark, p, reason);
            }
            name
        })
    }

    // HTTPRoute rules.

    fn http_rule(&mut self, node: &Node, path: &str) -> HttpRouteRule {
        let f = self.fields(node, path, HTTP_RULE_FIELDS);
        let mut matches = self
            .optional(&f, "matches", |d, n, p| d.list(n, p, Self::http_match))
            .unwrap_or_default();
        if matches.is_empty() {
            matches.push(HttpRouteMatch::default());
        }
        // Filters that could not be read are `None`, so that indexes hold for the checks.
        let filters = self
            .optional(&f, "filters", |d, n, p| d.list(n, p, Self::http_filter))
            .unwrap_or_default();
        let backend_refs = self
            .optional(&f, "backendRefs", |d, n, p| d.list(n, p, Self::backend_ref))
            .unwrap_or_default();
        self.http_rule_filters(path, &filters, &matches, !backend_refs.is_empty());
        HttpRouteRule {
            matches,
            filters: filters.into_iter().flatten().collect(),
            backend_refs,
            timeouts: self
                .optional(&f, "timeouts", |d, n, p| Some(d.route_timeouts(n, p)))
                .unwrap_or_default(),
        }
    }

    fn http_match(&mut self, node: &Node, path: &str) -> HttpRouteMatch {
        let f = self.fields(node, path, HTTP_MATCH_FIELDS);
        HttpRouteMatch {
            path: self
                .optional(&f, "path", |d, n, p| Some(d.path_match(n, p)))
                .unwrap_or_else(|| HttpRouteMatch::default().path),
            headers: self
                .optional(&f, "headers", |d, n, p| d.value_matches(n, p, "header"))
                .unwrap_or_default(),
            query_params: self
                .optional(&f, "queryParams", |d, n, p| {
                    d.value_matches(n, p, "query parameter")
                })
                .unwrap_or_default(),
            method: self.optional(&f, "method", |d, n, p| {
                d.choice(n, p, "an HTTP method", METHODS)
                    .map(str::to_string)
            }),
        }
    }

    fn path_match(&mut self, node: &Node, path: &str) -> PathMatch {
        let f = self.fields(node, path, PATH_MATCH_FIELDS);
        let m = PathMatch {
            kind: self
                .optional(&f, "type", |d, n, p| {
                    d.choice(n, p, "a path match type", PATH_MATCH_KINDS)
                })
                .unwrap_or_default(),
            value: self
                .optional(&f, "value", Self::string)
                .unwrap_or_else(|| "/".to_string()),
        };
        let reason = match m.kind {
            _ if m.value.len() > MAX_PATH => Some(format!("longer than {MAX_PATH} characters")),
            PathMatchKind::RegularExpression => regex_error(&m.value),
            PathMatchKind::Exact | PathMatchKind::PathPrefix => path_error(&m.value),
        };
        if let Some(reason) = reason {
            self.report(&format!("{path}.value"), &[&format!("{path}.type")], reason);
        }
        m
    }

    /// Header or query parameter matches; a name may appear once per match.
    fn value_matches(&mut self, node: &Node, path: &str, what: &str) -> Option<Vec<ValueMatch>> {
        let matches = self.list(node, path, |d, n, p| d.value_match(n, p, what))?;
        let names = matches.iter().enumerate();
        // Header names are case-insensitive; query parameter names are not.
        let fold = what == "header";
        self.unique(
            names.map(|(i, m)| {
                let name = if fold {
                    m.name.to_ascii_lowercase()
                } else {
                    m.name.clone()
                };
                (format!("{path}[{i}].name"), name)
            }),
            |name| format!("{what} {}", quoted(name)),
        );
        Some(matches)
    }

    fn value_match(&mut self, node: &Node, path: &str, what: &str) -> ValueMatch {
        let f = self.fields(node, path, VALUE_MATCH_FIELDS);
        let m = ValueMatch {
            kind: self
                .optional(&f, "type", |d, n, p| {
                    d.choice(n, p, "a match type", MATCH_KINDS)
                })
                .unwrap_or_default(),
            name: self.required(&f, "name", Self::string).unwrap_or_default(),
            value: self.required(&f, "value", Self::string).unwrap_or_default(),
        };
        if !is_http_token(&m.name) {
            let reason = format!("{} is not a {what} name", quoted(&m.name));
            self.report(&format!("{path}.name"), &[], reason);
        }
        let reason = match m.kind {
            _ if m.value.len() > MAX_HEADER_VALUE => {
                Some(format!("longer than {MAX_HEADER_VALUE} characters"))
            }
            MatchKind::RegularExpression => regex_error(&m.value),
            MatchKind::Exact => header_value_error(&m.value),
        };
        if let Some(reason) = reason {
            self.report(&format!("{path}.value"), &[&format!("{path}.type")], reason);
        }
        m
    }

    fn route_timeouts(&mut self, node: &Node, path: &str) -> RouteTimeouts {
        let f = self.fields(node, path, TIMEOUT_FIELDS);
        let timeouts = RouteTimeouts {
            request: self.optional(&f, "request", Self::gateway_duration),
            backend_request: self.optional(&f, "backendRequest", Self::gateway_duration),
        };
        if let (Some(request), Some(backend)) = (timeouts.request, timeouts.backend_request) {
            if !request.is_zero() && backend > request {
                let reason = format!(
                    "{} is longer than the request timeout ({}), which covers every try",
                    crate::format_duration(backend),
                    crate::format_duration(request)
                );
                let request_path = format!("{path}.request");
                self.report(&format!("{path}.backendRequest"), &[&request_path], reason);
            }
        }
        timeouts
    }

    /// A Gateway API duration (GEP-2257): up to four `<1-5 digits><h|m|s|ms>` parts.
    fn gateway_duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let text = self.scalar(node, path, "a duration (e.g. 10s, 500ms, 1m30s)")?;
        if !is_gateway_duration(text) {
            let reason = format!(
                "{} is not a Gateway API duration (whole numbers with h, m, s or ms, e.g. 10s, \
                 500ms, 1m30s)",
                node.describe()
            );
            self.fail(node.mark, path, reason);
            return None;
        }
        self.duration(node, path)
    }

    // GRPCRoute rules.

    fn grpc_rule(&mut self, node: &Node, path: &str) -> GrpcRouteRule {
        let f = self.fields(node, path, GRPC_RULE_FIELDS);
        let matches = self
            .optional(&f, "matches", |d, n, p| d.list(n, p, Self::grpc_match))
            .unwrap_or_default();
        let filters = self
            .optional(&f, "filters", |d, n, p| d.list(n, p, Self::grpc_filter))
            .unwrap_or_default();
        self.grpc_rule_filters(path, &filters);
        GrpcRouteRule {
            matches,
            filters: filters.into_iter().flatten().collect(),
            backend_refs: self
                .optional(&f, "backendRefs", |d, n, p| d.list(n, p, Self::backend_ref))
                .unwrap_or_default(),
        }
    }

    fn grpc_match(&mut self, node: &Node, path: &str) -> GrpcRouteMatch {
        let f = self.fields(node, path, GRPC_MATCH_FIELDS);
        GrpcRouteMatch {
            method: self.optional(&f, "method", |d, n, p| Some(d.grpc_method(n, p))),
            headers: self
                .optional(&f, "headers", |d, n, p| d.value_matches(n, p, "header"))
                .unwrap_or_default(),
        }
    }

    fn grpc_method(&mut self, node: &Node, path: &str) -> GrpcMethodMatch {
        let f = self.fields(node, path, GRPC_METHOD_FIELDS);
        let m = GrpcMethodMatch {
            kind: self
                .optional(&f, "type", |d, n, p| {
                    d.choice(n, p, "a match type", MATCH_KINDS)
                })
                .unwrap_or_default(),
            service: self.optional(&f, "service", Self::string),
            method: self.optional(&f, "method", Self::string),
        };
        if !f.has("service") && !f.has("method") && !self.failed(path) {
            self.report(path, &[], "give service, method or both");
        }
        let kind_path = format!("{path}.type");
        for (name, value, exact_ok, shape) in [
            (
                "service",
                &m.service,
                is_grpc_service as fn(&str) -> bool,
                "a gRPC service name (e.g. shop.v1.Catalog)",
            ),
            (
                "method",
                &m.method,
                is_grpc_method,
                "a gRPC method name (e.g. GetItem)",
            ),
        ] {
            let Some(value) = value else { continue };
            let reason = match m.kind {
                _ if value.len() > MAX_PATH => Some(format!("longer than {MAX_PATH} characters")),
                MatchKind::RegularExpression => regex_error(value),
                MatchKind::Exact => {
                    (!exact_ok(value)).then(|| format!("{} is not {shape}", quoted(value)))
                }
            };
            if let Some(reason) = reason {
                self.report(&format!("{path}.{name}"), &[&kind_path], reason);
            }
        }
        m
    }

    /// A referenced object's name (a DNS label for a Service or namespace).
    pub(super) fn object_name(&mut self, path: &str, name: &str) {
        if let Some(reason) = crate::resources::names::dns_label_error(name) {
            self.report(path, &[], reason);
        }
    }
}

/// The Gateway API's rules for `Exact` and `PathPrefix` values and path replacements.
pub(super) fn path_error(value: &str) -> Option<String> {
    if !value.starts_with('/') {
        return Some(format!("{} must start with \"/\"", quoted(value)));
    }
    let bad = ["//", "/./", "/../", "%2f", "%2F", "#"];
    if let Some(b) = bad.iter().find(|b| value.contains(**b)) {
        return Some(format!("{} must not contain {}", quoted(value), quoted(b)));
    }
    if value.ends_with("/..") || value.ends_with("/.") {
        return Some(format!(
            "{} must not end with \"/.\" or \"/..\"",
            quoted(value)
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Some(format!("{} must not contain {:?}", quoted(value), c));
    }
    None
}

pub(super) fn header_value_error(value: &str) -> Option<String> {
    value.contains(['\r', '\n', '\0']).then(|| {
        format!(
            "{} has a line break or NUL, which a header value cannot carry",
            quoted(value)
        )
    })
}

/// GEP-2257: `^([0-9]{1,5}(h|m|s|ms)){1,4}$`.
fn is_gateway_duration(text: &str) -> bool {
    let mut rest = text;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=5).contains(&digits) {
            return false;
        }
        rest = &rest[digits..];
        let unit = if rest.starts_with("ms") {
            2
        } else if rest.starts_with(['h', 'm', 's']) {
            1
        } else {
            return false;
        };
        rest = &rest[unit..];
        parts += 1;
    }
    (1..=4).contains(&parts)
}

/// `^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`: a package-qualified gRPC service.
fn is_grpc_service(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty() && s.split('.').all(is_grpc_method)
}

/// `^[A-Za-z_][A-Za-z_0-9]*$`.
fn is_grpc_method(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_durations_follow_gep_2257() {
        for ok in ["10s", "500ms", "1h", "1m30s", "1h2m3s4ms", "0s", "99999ms"] {
            assert!(is_gateway_duration(ok), "{ok}");
        }
        for bad in [
            "",
            "10",
            "1.5s",
            "100000s",
            "1h2m3s4ms5ms",
            "10us",
            "s",
            "-1s",
            "1d",
        ] {
            assert!(!is_gateway_duration(bad), "{bad}");
        }
    }

    #[test]
    fn paths_follow_the_gateway_api_rules() {
        assert_eq!(path_error("/"), None);
        assert_eq!(path_error("/api/v1"), None);
        for bad in [
            "api", "/a//b", "/a/./b", "/a/../b", "/a%2fb", "/a#b", "/a/..", "/a/.", "/a b",
        ] {
            assert!(path_error(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn grpc_names() {
        assert!(is_grpc_service("shop.v1.Catalog"));
        assert!(is_grpc_service(".shop.Catalog"));
        assert!(!is_grpc_service("shop..Catalog"));
        assert!(!is_grpc_service("shop/Catalog"));
        assert!(is_grpc_method("GetItem"));
        assert!(!is_grpc_method("1Get"));
        assert!(!is_grpc_method(""));
    }
}
