//! HTTP routing: a service's routes (Gateway API `HTTPRoute` and `GRPCRoute`, as the control
//! plane compiled them for this proxy) as an immutable table, built once when a config is
//! stored and shared by every request that addresses the service.
//!
//! Precedence follows the Gateway API (in the order Istio gives the parts it leaves open):
//! among every match of every rule of the service's routes, the request takes the first it
//! satisfies in this order:
//! 1. an exact path, then prefixes from the longest, then regular expressions, then matches
//!    with no path condition;
//! 2. a method condition before none;
//! 3. more header conditions before fewer;
//! 4. more query parameter conditions before fewer;
//! 5. the order of the routes (the control plane lists them in tie-break order), then of
//!    their rules, then of the rule's matches.
//!
//! The matches are sorted in that order when the table is built, and indexed so that a
//! request only looks at those its path can satisfy: exact paths by path; prefixes by prefix,
//! looked up for each of the request path's segment boundaries from the longest (two prefixes
//! of one length cannot both match); then the regular expressions and the matches without a
//! path, in order. The first match wins: no lock, and no allocation unless a query parameter
//! is percent-encoded or a header repeated. What a rule then does (filters, the weighted pick
//! of a backend) is in [`filter`] and [`weighted`].
//!
//! The table is generic over its backends `B` (the proxy's destinations; anything in tests and
//! benchmarks), so that routing knows nothing of endpoints.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName};
use http::{Method, Uri};
use regex::Regex;
use trellis_model::{
    PathMatchKind, Percent, Route, RouteBackend, RouteFilter, RouteMatch, RouteRule, ValueMatch,
    ValueMatchKind,
};

use crate::fast_map::FastMap;

pub(crate) use filter::Filters;
pub(crate) use weighted::Weighted;

mod filter;
#[cfg(test)]
mod tests;
mod weighted;

/// The routes of one port of one service.
#[derive(Debug)]
pub struct RouteTable<B> {
    /// Matches with an exact path, by path; each list in precedence order.
    exact: FastMap<Box<str>, Vec<Entry>>,
    /// Matches with a path prefix, by prefix (without its trailing `/`); each list in
    /// precedence order.
    prefix: FastMap<Box<str>, Vec<Entry>>,
    /// Matches with a regular expression, then without a path condition, in precedence order.
    rest: Vec<Entry>,
    rules: Vec<Rule<B>>,
}

/// What a matching request gets: the rule's filters, backends and timeout.
#[derive(Debug)]
pub struct Rule<B> {
    /// The route it belongs to, for logs (`HTTPRoute shop/reviews`).
    pub(crate) route: Arc<str>,
    /// The prefix of the rule's one prefix match, as matched (without a trailing `/`), which
    /// `replace_prefix_match` replaces.
    pub(crate) prefix: Option<Box<str>>,
    pub(crate) filters: Filters,
    backends: Weighted<B>,
    /// Instead of the service's request timeout; zero for none.
    pub(crate) timeout: Option<Duration>,
    /// Where copies of a share of the requests go (`mirror` filters); empty for most rules.
    pub(crate) mirrors: Box<[(B, Percent)]>,
}

/// A table that cannot be built: the model's validation accepts what it can check without a
/// regex engine or the proxy's header types, so a few mistakes are only found here.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("{route}: {what} {value:?} is not a regular expression the proxy can use: {source}")]
    Regex {
        route: String,
        what: &'static str,
        value: String,
        source: Box<regex::Error>,
    },
    #[error("{route}: {what} {value:?} is not valid here")]
    Invalid {
        route: String,
        what: &'static str,
        value: String,
    },
    #[error(
        "{route}: backend {service} in namespace {namespace}, port {port}, is not a service of \
         this config"
    )]
    UnknownBackend {
        route: String,
        service: String,
        namespace: String,
        port: u16,
    },
}

/// One match of one rule.
#[derive(Debug)]
struct Entry {
    path: PathCond,
    method: Option<Method>,
    headers: Vec<(HeaderName, ValueCond)>,
    query: Vec<(Box<str>, ValueCond)>,
    /// Index into `RouteTable::rules`.
    rule: usize,
}

#[derive(Debug)]
enum PathCond {
    Exact(Box<str>),
    /// Without its trailing `/` (`""` for `/`): the path is the prefix, or continues with `/`.
    Prefix(Box<str>),
    Regex(Regex),
    Any,
}

#[derive(Debug)]
enum ValueCond {
    Exact(Box<[u8]>),
    Regex(Regex),
}

impl<B> RouteTable<B> {
    /// The table of `routes` (those of one port of a service in `namespace`). `backend` finds
    /// the destination of a backend's (namespace, service, port).
    pub fn build(
        namespace: &str,
        routes: &[&Route],
        mut backend: impl FnMut(&str, &str, u16) -> Option<B>,
    ) -> Result<Self, RouteError> {
        let mut entries = Vec::new();
        let mut rules = Vec::new();
        for route in routes {
            let name: Arc<str> = route.name.as_str().into();
            for rule in &route.rules {
                let index = rules.len();
                rules.push(Rule::build(&name, namespace, rule, &mut backend)?);
                // A rule without matches matches every request.
                let default = [RouteMatch::default()];
                let matches = if rule.matches.is_empty() {
                    &default[..]
                } else {
                    &rule.matches[..]
                };
                for m in matches {
                    entries.push(Entry::build(&name, m, index)?);
                }
            }
        }
        // Stable: equal keys keep route, rule and match order.
        entries.sort_by_key(Entry::precedence);
        let mut table = Self {
            exact: FastMap::default(),
            prefix: FastMap::default(),
            rest: Vec::new(),
            rules,
        };
        for entry in entries {
            match &entry.path {
                PathCond::Exact(p) => table.exact.entry(p.clone()).or_default().push(entry),
                PathCond::Prefix(p) => table.prefix.entry(p.clone()).or_default().push(entry),
                PathCond::Regex(_) | PathCond::Any => table.rest.push(entry),
            }
        }
        Ok(table)
    }

    /// The rule for a request, or `None` when no rule matches (the service answers 404).
    pub fn find<'t>(
        &'t self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Option<&'t Rule<B>> {
        let path = uri.path();
        let query = uri.query();
        let first = |entries: &'t [Entry]| first_match(entries, method, path, query, headers);
        let found = self
            .exact
            .get(path)
            .and_then(|entries| first(entries))
            .or_else(|| {
                // The path itself, then each shorter end at a `/`: `/a/b` looks up `/a/b`,
                // `/a` and `` (the prefix `/`).
                let mut end = Some(path.len());
                std::iter::from_fn(|| {
                    let candidate = &path[..end?];
                    end = candidate.rfind('/');
                    Some(candidate)
                })
                .filter_map(|candidate| self.prefix.get(candidate))
                .find_map(|entries| first(entries))
            })
            .or_else(|| first(&self.rest))?;
        self.rules.get(found.rule)
    }

    /// How many rules the table has.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl<B> Rule<B> {
    fn build(
        route: &Arc<str>,
        namespace: &str,
        rule: &RouteRule,
        backend: &mut impl FnMut(&str, &str, u16) -> Option<B>,
    ) -> Result<Self, RouteError> {
        let mut backends = Vec::with_capacity(rule.backends.len());
        for b in &rule.backends {
            backends.push((b.weight, resolve(route, namespace, b, backend)?));
        }
        let prefix = match rule.matches.as_slice() {
            [m] => m
                .path
                .as_ref()
                .filter(|p| p.kind == PathMatchKind::Prefix)
                .map(|p| normalized_prefix(&p.value).into()),
            _ => None,
        };
        let filters: Vec<&RouteFilter> = rule.filters.iter().collect();
        let mut mirrors = Vec::new();
        for filter in &filters {
            if let RouteFilter::Mirror(m) = filter {
                let target = RouteBackend {
                    service: m.service.clone(),
                    namespace: m.namespace.clone(),
                    port: m.port,
                    weight: 1,
                };
                mirrors.push((resolve(route, namespace, &target, backend)?, m.percent));
            }
        }
        Ok(Self {
            route: route.clone(),
            prefix,
            filters: Filters::build(route, &filters)?,
            backends: Weighted::new(backends),
            timeout: rule.timeout,
            mirrors: mirrors.into(),
        })
    }

    /// The backend for this request, by weight; `None` when every weight is 0 (or there are
    /// no backends): the Gateway API answers 500.
    pub fn pick(&self) -> Option<&B> {
        self.backends.pick()
    }

    /// The name of the route this rule belongs to.
    pub fn route(&self) -> &str {
        &self.route
    }
}

impl Entry {
    fn build(route: &str, m: &RouteMatch, rule: usize) -> Result<Self, RouteError> {
        let path = match &m.path {
            None => PathCond::Any,
            Some(p) => match p.kind {
                PathMatchKind::Exact => PathCond::Exact(p.value.as_str().into()),
                PathMatchKind::Prefix => PathCond::Prefix(normalized_prefix(&p.value).into()),
                PathMatchKind::Regex => PathCond::Regex(regex(route, "path", &p.value)?),
            },
        };
        let method =
            match &m.method {
                None => None,
                Some(method) => Some(Method::from_bytes(method.as_bytes()).map_err(|_| {
                    RouteError::Invalid {
                        route: route.to_string(),
                        what: "method",
                        value: method.clone(),
                    }
                })?),
            };
        let mut headers = Vec::with_capacity(m.headers.len());
        for h in &m.headers {
            let name =
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| RouteError::Invalid {
                    route: route.to_string(),
                    what: "header name",
                    value: h.name.clone(),
                })?;
            headers.push((name, ValueCond::build(route, "header value", h)?));
        }
        let mut query = Vec::with_capacity(m.query_params.len());
        for q in &m.query_params {
            let cond = ValueCond::build(route, "query parameter value", q)?;
            query.push((q.name.as_str().into(), cond));
        }
        Ok(Self {
            path,
            method,
            headers,
            query,
            rule,
        })
    }

    /// Sorts most specific first (see the module docs).
    fn precedence(&self) -> (u8, Reverse<usize>, bool, Reverse<usize>, Reverse<usize>) {
        let (rank, len) = match &self.path {
            PathCond::Exact(_) => (0, 0),
            PathCond::Prefix(p) => (1, p.len()),
            PathCond::Regex(_) => (2, 0),
            PathCond::Any => (3, 0),
        };
        (
            rank,
            Reverse(len),
            self.method.is_none(),
            Reverse(self.headers.len()),
            Reverse(self.query.len()),
        )
    }

    fn matches(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> bool {
        let path_ok = match &self.path {
            PathCond::Exact(p) => path == &**p,
            PathCond::Prefix(p) => {
                path.starts_with(&**p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathCond::Regex(r) => r.is_match(path),
            PathCond::Any => true,
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == method)
            && self
                .headers
                .iter()
                .all(|(name, cond)| header_matches(headers, name, cond))
            && self.query.iter().all(|(name, cond)| {
                query
                    .and_then(|q| query_value(q, name))
                    .is_some_and(|v| cond.matches(v.as_bytes()))
            })
    }
}

impl ValueCond {
    fn build(route: &str, what: &'static str, m: &ValueMatch) -> Result<Self, RouteError> {
        Ok(match m.kind {
            ValueMatchKind::Exact => ValueCond::Exact(m.value.as_bytes().into()),
            ValueMatchKind::Regex => ValueCond::Regex(regex(route, what, &m.value)?),
        })
    }

    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueCond::Exact(v) => value == &**v,
            ValueCond::Regex(r) => std::str::from_utf8(value).is_ok_and(|v| r.is_match(v)),
        }
    }
}

/// The first of `entries` (in precedence order) that the request satisfies.
fn first_match<'e>(
    entries: &'e [Entry],
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Option<&'e Entry> {
    entries
        .iter()
        .find(|e| e.matches(method, path, query, headers))
}

/// A header condition: the header's value, its values joined with `,` when it is repeated
/// (RFC 9110 §5.3); an absent header never matches.
fn header_matches(headers: &HeaderMap, name: &HeaderName, cond: &ValueCond) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    match values.next() {
        None => cond.matches(first.as_bytes()),
        Some(second) => {
            let mut joined = first.as_bytes().to_vec();
            for v in std::iter::once(second).chain(values) {
                joined.push(b',');
                joined.extend_from_slice(v.as_bytes());
            }
            cond.matches(&joined)
        }
    }
}

/// The value of the first `name=value` pair of a query string, percent-decoded (`+` is left
/// as is: the URI's query is not a form).
fn query_value<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits make a byte.
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// A prefix without its trailing `/`: the Gateway API ignores it (`/foo/` matches `/foo`).
fn normalized_prefix(value: &str) -> &str {
    value.trim_end_matches('/')
}

/// A regular expression that must match the whole value, as Envoy and Istio take them.
fn regex(route: &str, what: &'static str, pattern: &str) -> Result<Regex, RouteError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|source| RouteError::Regex {
        route: route.to_string(),
        what,
        value: pattern.to_string(),
        source: Box::new(source),
    })
}

fn resolve<B>(
    route: &str,
    namespace: &str,
    b: &RouteBackend,
    backend: &mut impl FnMut(&str, &str, u16) -> Option<B>,
) -> Result<B, RouteError> {
    let ns = b.namespace.as_deref().unwrap_or(namespace);
    backend(ns, &b.service, b.port).ok_or_else(|| RouteError::UnknownBackend {
        route: route.to_string(),
        service: b.service.clone(),
        namespace: ns.to_string(),
        port: b.port,
    })
}
