//! Decoding a service's `routes`: each value checked on its own (regular expressions compile,
//! paths start with `/`, header names are tokens). The checks that need the rest of the config
//! (backends that name real services, one redirect per rule) are in `validate/route.rs`.

use super::Decoder;
use crate::Percent;
use crate::decoder::{Fields, join};
use crate::proxy::{
    FaultAbort, FaultDelay, FaultInjection, Header, HeaderModifier, PathMatch, PathMatchKind,
    PathModifier, RequestMirror, RequestRedirect, Route, RouteBackend, RouteFilter, RouteMatch,
    RouteRule, UrlRewrite, ValueMatch, ValueMatchKind,
};
use crate::resources::names::{is_http_token, regex_error};
use crate::validate::quoted;
use crate::validate::yaml::{Mark, Node, Value};

pub(in crate::validate) const ROUTE_FIELDS: &[&str] = &["name", "port", "rules"];
pub(in crate::validate) const RULE_FIELDS: &[&str] = &["matches", "filters", "backends", "timeout"];
pub(in crate::validate) const MATCH_FIELDS: &[&str] =
    &["path", "method", "headers", "query_params"];
pub(in crate::validate) const PATH_MATCH_FIELDS: &[&str] = &["type", "value"];
pub(in crate::validate) const VALUE_MATCH_FIELDS: &[&str] = &["type", "name", "value"];
pub(in crate::validate) const BACKEND_FIELDS: &[&str] = &["service", "namespace", "port", "weight"];
pub(in crate::validate) const HEADER_MODIFIER_FIELDS: &[&str] = &["set", "add", "remove"];
pub(in crate::validate) const HEADER_FIELDS: &[&str] = &["name", "value"];
pub(in crate::validate) const REDIRECT_FIELDS: &[&str] =
    &["scheme", "hostname", "path", "port", "status_code"];
pub(in crate::validate) const REWRITE_FIELDS: &[&str] = &["hostname", "path"];
pub(in crate::validate) const MIRROR_FIELDS: &[&str] = &["service", "namespace", "port", "percent"];
pub(in crate::validate) const FAULT_FIELDS: &[&str] = &["delay", "abort"];
pub(in crate::validate) const FAULT_DELAY_FIELDS: &[&str] = &["duration", "percent"];
pub(in crate::validate) const FAULT_ABORT_FIELDS: &[&str] = &["status", "grpc_status", "percent"];
/// The one key of a filter mapping.
pub(in crate::validate) const FILTER_KINDS: &[&str] = &[
    "request_header_modifier",
    "response_header_modifier",
    "request_redirect",
    "url_rewrite",
    "mirror",
    "fault",
];
/// The one key of a path modifier mapping.
pub(in crate::validate) const PATH_MODIFIER_KINDS: &[&str] =
    &["replace_full_path", "replace_prefix_match"];
pub(in crate::validate) const PATH_MATCH_KINDS: &[(&str, PathMatchKind)] = &[
    ("exact", PathMatchKind::Exact),
    ("prefix", PathMatchKind::Prefix),
    ("regex", PathMatchKind::Regex),
];
pub(in crate::validate) const VALUE_MATCH_KINDS: &[(&str, ValueMatchKind)] = &[
    ("exact", ValueMatchKind::Exact),
    ("regex", ValueMatchKind::Regex),
];
const SCHEMES: &[(&str, &str)] = &[("http", "http"), ("https", "https")];
const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];
/// The Gateway API's largest weight; it keeps a rule's total far from overflowing.
const MAX_WEIGHT: u64 = 1_000_000;

impl Decoder {
    pub(super) fn route(&mut self, node: &Node, path: &str) -> Route {
        let f = self.fields(node, path, ROUTE_FIELDS);
        Route {
            name: self.optional(&f, "name", Self::string).unwrap_or_default(),
            port: self.optional(&f, "port", Self::port),
            rules: self
                .optional(&f, "rules", |d, n, p| d.list(n, p, Self::rule))
                .unwrap_or_default(),
        }
    }

    fn rule(&mut self, node: &Node, path: &str) -> RouteRule {
        let f = self.fields(node, path, RULE_FIELDS);
        RouteRule {
            matches: self
                .optional(&f, "matches", |d, n, p| d.list(n, p, Self::route_match))
                .unwrap_or_default(),
            filters: self
                .optional(&f, "filters", |d, n, p| {
                    let filters = d.list(n, p, Self::filter)?;
                    // A filter that could not be read (reported) is left out, so the indexes
                    // of the others no longer hold: the whole list counts as failed, and the
                    // checks across filters skip it.
                    if filters.iter().any(Option::is_none) {
                        d.failed.insert(p.to_string());
                    }
                    Some(filters.into_iter().flatten().collect())
                })
                .unwrap_or_default(),
            backends: self
                .optional(&f, "backends", |d, n, p| d.list(n, p, Self::backend))
                .unwrap_or_default(),
            timeout: self.optional(&f, "timeout", Self::duration),
        }
    }

    fn route_match(&mut self, node: &Node, path: &str) -> RouteMatch {
        let f = self.fields(node, path, MATCH_FIELDS);
        RouteMatch {
            path: self.optional(&f, "path", |d, n, p| Some(d.path_match(n, p))),
            method: self.optional(&f, "method", |d, n, p| {
                let method = d.string(n, p)?;
                if !is_http_token(&method) {
                    let reason =
                        format!("{} is not an HTTP method (e.g. GET, POST)", quoted(&method));
                    d.fail(n.mark, p, reason);
                }
                Some(method)
            }),
            headers: self
                .optional(&f, "headers", |d, n, p| {
                    d.list(n, p, |d, n, p| d.value_match(n, p, "header"))
                })
                .unwrap_or_default(),
            query_params: self
                .optional(&f, "query_params", |d, n, p| {
                    d.list(n, p, |d, n, p| d.value_match(n, p, "query parameter"))
                })
                .unwrap_or_default(),
        }
    }

    fn path_match(&mut self, node: &Node, path: &str) -> PathMatch {
        let f = self.fields(node, path, PATH_MATCH_FIELDS);
        let kind = self.required(&f, "type", |d, n, p| {
            d.choice(n, p, "a path match type", PATH_MATCH_KINDS)
        });
        let value = self.required(&f, "value", Self::string);
        if let (Some(kind), Some(value)) = (kind, &value) {
            let reason = match kind {
                PathMatchKind::Regex => regex_error(value),
                PathMatchKind::Exact | PathMatchKind::Prefix => path_error(value),
            };
            if let Some(reason) = reason {
                self.invalid(&f, "value", reason);
            }
        }
        PathMatch {
            kind: kind.unwrap_or(PathMatchKind::Prefix),
            value: value.unwrap_or_else(|| "/".to_string()),
        }
    }

    fn value_match(&mut self, node: &Node, path: &str, what: &str) -> ValueMatch {
        let f = self.fields(node, path, VALUE_MATCH_FIELDS);
        let kind = self
            .optional(&f, "type", |d, n, p| {
                d.choice(n, p, "a match type", VALUE_MATCH_KINDS)
            })
            .unwrap_or_default();
        let name = self.required(&f, "name", Self::string);
        let value = self.required(&f, "value", Self::string);
        if let Some(name) = name.as_deref().filter(|n| !is_http_token(n)) {
            self.invalid(&f, "name", format!("{} is not a {what} name", quoted(name)));
        }
        if let Some(value) = &value {
            let reason = match kind {
                ValueMatchKind::Regex => regex_error(value),
                ValueMatchKind::Exact => header_value_error(value),
            };
            if let Some(reason) = reason {
                self.invalid(&f, "value", reason);
            }
        }
        ValueMatch {
            kind,
            name: name.unwrap_or_default(),
            value: value.unwrap_or_default(),
        }
    }

    fn backend(&mut self, node: &Node, path: &str) -> RouteBackend {
        let f = self.fields(node, path, BACKEND_FIELDS);
        RouteBackend {
            service: self
                .required(&f, "service", Self::string)
                .unwrap_or_default(),
            namespace: self.optional(&f, "namespace", Self::string),
            port: self.required(&f, "port", Self::port).unwrap_or(0),
            weight: self
                .optional(&f, "weight", Self::weight)
                .unwrap_or(crate::proxy::route::default_weight()),
        }
    }

    fn weight(&mut self, node: &Node, path: &str) -> Option<u32> {
        let what = format!("a weight (a whole number from 0 to {MAX_WEIGHT})");
        let text = self.scalar(node, path, &what)?;
        let weight = text
            .parse::<u64>()
            .ok()
            .filter(|w| *w <= MAX_WEIGHT)
            .and_then(|w| u32::try_from(w).ok());
        if weight.is_none() {
            self.fail(node.mark, path, format!("{text} is not {what}"));
        }
        weight
    }

    /// A filter: a mapping with one key, its kind.
    fn filter(&mut self, node: &Node, path: &str) -> Option<RouteFilter> {
        let (kind, value, p) = self.one_key(node, path, "filter", FILTER_KINDS)?;
        Some(match kind {
            "request_header_modifier" => {
                RouteFilter::RequestHeaderModifier(self.header_modifier(value, &p))
            }
            "response_header_modifier" => {
                RouteFilter::ResponseHeaderModifier(self.header_modifier(value, &p))
            }
            "request_redirect" => RouteFilter::RequestRedirect(self.redirect(value, &p)),
            "url_rewrite" => RouteFilter::UrlRewrite(self.rewrite(value, &p)),
            "mirror" => RouteFilter::Mirror(self.mirror(value, &p)),
            _ => RouteFilter::Fault(self.fault(value, &p)),
        })
    }

    fn mirror(&mut self, node: &Node, path: &str) -> RequestMirror {
        let f = self.fields(node, path, MIRROR_FIELDS);
        RequestMirror {
            service: self
                .required(&f, "service", Self::string)
                .unwrap_or_default(),
            namespace: self.optional(&f, "namespace", Self::string),
            port: self.required(&f, "port", Self::port).unwrap_or(0),
            percent: self
                .optional(&f, "percent", Self::percent)
                .unwrap_or(Percent::ALL),
        }
    }

    fn fault(&mut self, node: &Node, path: &str) -> FaultInjection {
        let f = self.fields(node, path, FAULT_FIELDS);
        let fault = FaultInjection {
            delay: self.optional(&f, "delay", |d, n, p| {
                let f = d.fields(n, p, FAULT_DELAY_FIELDS);
                Some(FaultDelay {
                    duration: d
                        .required(&f, "duration", Self::duration)
                        .unwrap_or_default(),
                    percent: d
                        .optional(&f, "percent", Self::percent)
                        .unwrap_or(Percent::ALL),
                })
            }),
            abort: self.optional(&f, "abort", |d, n, p| {
                let f = d.fields(n, p, FAULT_ABORT_FIELDS);
                Some(FaultAbort {
                    status: d
                        .required(&f, "status", |d, n, p| {
                            d.bounded(n, p, "an HTTP status", 200, 599)
                        })
                        .unwrap_or(503),
                    grpc_status: d.optional(&f, "grpc_status", |d, n, p| {
                        d.bounded(n, p, "a gRPC status code", 0, 16)
                            .and_then(|c| u8::try_from(c).ok())
                    }),
                    percent: d
                        .optional(&f, "percent", Self::percent)
                        .unwrap_or(Percent::ALL),
                })
            }),
        };
        if fault.delay.is_none() && fault.abort.is_none() && !f.broken {
            let reason = "a fault needs a delay, an abort or both".to_string();
            self.fail(f.mark, path, reason);
        }
        fault
    }

    /// A whole number from `min` to `max`.
    fn bounded(&mut self, node: &Node, path: &str, what: &str, min: u16, max: u16) -> Option<u16> {
        let what = format!("{what} ({min} to {max})");
        let text = self.scalar(node, path, &what)?;
        let value = text.parse::<u16>().ok().filter(|v| (min..=max).contains(v));
        if value.is_none() {
            self.fail(node.mark, path, format!("{text} is not {what}"));
        }
        value
    }

    fn header_modifier(&mut self, node: &Node, path: &str) -> HeaderModifier {
        let f = self.fields(node, path, HEADER_MODIFIER_FIELDS);
        HeaderModifier {
            set: self
                .optional(&f, "set", |d, n, p| d.list(n, p, Self::header))
                .unwrap_or_default(),
            add: self
                .optional(&f, "add", |d, n, p| d.list(n, p, Self::header))
                .unwrap_or_default(),
            remove: self
                .optional(&f, "remove", |d, n, p| {
                    d.list(n, p, |d, n, p| {
                        let name = d.string(n, p).unwrap_or_default();
                        if !d.failed.contains(p) && !is_http_token(&name) {
                            d.fail(n.mark, p, format!("{} is not a header name", quoted(&name)));
                        }
                        name
                    })
                })
                .unwrap_or_default(),
        }
    }

    fn header(&mut self, node: &Node, path: &str) -> Header {
        let f = self.fields(node, path, HEADER_FIELDS);
        let name = self.required(&f, "name", Self::string);
        let value = self.required(&f, "value", Self::string);
        if let Some(name) = name.as_deref().filter(|n| !is_http_token(n)) {
            self.invalid(&f, "name", format!("{} is not a header name", quoted(name)));
        }
        if let Some(reason) = value.as_deref().and_then(header_value_error) {
            self.invalid(&f, "value", reason);
        }
        Header {
            name: name.unwrap_or_default(),
            value: value.unwrap_or_default(),
        }
    }

    fn redirect(&mut self, node: &Node, path: &str) -> RequestRedirect {
        let f = self.fields(node, path, REDIRECT_FIELDS);
        let redirect = RequestRedirect {
            scheme: self.optional(&f, "scheme", |d, n, p| {
                d.choice(n, p, "a scheme", SCHEMES).map(str::to_string)
            }),
            hostname: self.optional(&f, "hostname", Self::string),
            path: self.optional(&f, "path", Self::path_modifier),
            port: self.optional(&f, "port", Self::port),
            status_code: self
                .optional(&f, "status_code", |d, n, p| {
                    let text = d.scalar(n, p, "a redirect status")?;
                    let code = text.parse().ok().filter(|c| REDIRECT_CODES.contains(c));
                    if code.is_none() {
                        let reason =
                            format!("{text} is not a redirect status (301, 302, 303, 307 or 308)");
                        d.fail(n.mark, p, reason);
                    }
                    code
                })
                .unwrap_or(crate::proxy::route::default_redirect_status()),
        };
        if let Some(reason) = redirect.hostname.as_deref().and_then(hostname_error) {
            self.invalid(&f, "hostname", reason);
        }
        redirect
    }

    fn rewrite(&mut self, node: &Node, path: &str) -> UrlRewrite {
        let f = self.fields(node, path, REWRITE_FIELDS);
        let rewrite = UrlRewrite {
            hostname: self.optional(&f, "hostname", Self::string),
            path: self.optional(&f, "path", Self::path_modifier),
        };
        if let Some(reason) = rewrite.hostname.as_deref().and_then(hostname_error) {
            self.invalid(&f, "hostname", reason);
        }
        rewrite
    }

    /// `{ replace_full_path: /x }` or `{ replace_prefix_match: /x }`.
    fn path_modifier(&mut self, node: &Node, path: &str) -> Option<PathModifier> {
        let (kind, value, p) = self.one_key(node, path, "path modifier", PATH_MODIFIER_KINDS)?;
        let new_path = self.string(value, &p)?;
        if let Some(reason) = path_error(&new_path) {
            self.fail(value.mark, &p, reason);
            return None;
        }
        Some(match kind {
            "replace_full_path" => PathModifier::ReplaceFullPath(new_path),
            _ => PathModifier::ReplacePrefixMatch(new_path),
        })
    }

    // Helpers.

    /// A mapping with exactly one key, one of `kinds` (the serde form of an enum with data):
    /// the kind, its value and its path.
    fn one_key<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
        kinds: &[&'static str],
    ) -> Option<(&'static str, &'n Node, String)> {
        let expected = format!("a {what}: a mapping with one of {}", kinds.join(", "));
        let Value::Map(entries) = &node.value else {
            let reason = format!("expected {expected}, found {}", node.describe());
            self.fail(node.mark, path, reason);
            return None;
        };
        let [(key, value)] = entries.as_slice() else {
            let reason = if entries.is_empty() {
                format!("expected {expected}, found an empty mapping")
            } else {
                let keys: Vec<&str> = entries
                    .iter()
                    .map(|(k, _)| k.text().unwrap_or_default())
                    .collect();
                format!(
                    "give one of {} in each item, not {} together",
                    kinds.join(", "),
                    keys.join(" and ")
                )
            };
            self.fail(node.mark, path, reason);
            return None;
        };
        let name = key.text().unwrap_or_default();
        let p = join(path, name);
        let Some(kind) = kinds.iter().copied().find(|k| *k == name) else {
            let reason = format!(
                "unknown {what} {} (expected one of: {})",
                quoted(name),
                kinds.join(", ")
            );
            self.fail(key.mark, path, reason);
            return None;
        };
        let mark = match value.value {
            Value::Scalar { .. } => value.mark,
            _ => key.mark,
        };
        self.marks.insert(p.clone(), mark);
        if value.is_null() {
            self.fail(key.mark, &p, format!("{} needs a value", quoted(name)));
            return None;
        }
        Some((kind, value, p))
    }

    /// Report an invalid value of field `name` of `f`, which becomes a placeholder.
    fn invalid(&mut self, f: &Fields<'_>, name: &str, reason: String) {
        let path = join(&f.path, name);
        let mark: Mark = self.marks.get(&path).copied().unwrap_or(f.mark);
        self.fail(mark, &path, reason);
    }
}

/// Exact and prefix paths, and new paths: absolute, without spaces or control characters.
fn path_error(value: &str) -> Option<String> {
    if !value.starts_with('/') {
        return Some(format!("{} must start with \"/\"", quoted(value)));
    }
    if let Some(c) = value.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Some(format!("{} must not contain {c:?}", quoted(value)));
    }
    if value.contains('?') || value.contains('#') {
        return Some(format!(
            "{} is a path: it cannot hold a query (?) or fragment (#)",
            quoted(value)
        ));
    }
    None
}

/// A header value: no control characters but tab.
fn header_value_error(value: &str) -> Option<String> {
    let bad = value.chars().find(|&c| c != '\t' && c.is_control())?;
    Some(format!(
        "{} is not a header value: it contains {bad:?}",
        quoted(value)
    ))
}

fn hostname_error(host: &str) -> Option<String> {
    super::super::dns_name(host).err()
}
