//! HTTPRoute and GRPCRoute to the routes of the Services they attach to, following the Gateway
//! API mesh profile (GAMMA):
//! - a *producer* route (in its Service's namespace) applies to every caller;
//! - a *consumer* route (in another namespace, its parentRef naming the Service's) applies to
//!   callers in the route's namespace only, and for them replaces the producer routes of that
//!   Service (port by port, when the consumer route is narrowed to a port);
//! - a parentRef `port` narrows a route to that port of the Service;
//! - backends are Services (the route's namespace unless given), balanced over their own
//!   endpoints by the proxy.
//!
//! Routes are listed in the order ties are broken: by namespace, then name (the model keeps
//! no creation time, so "oldest first" cannot apply), an HTTPRoute before a GRPCRoute of the
//! same name.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::super::{
    BackendRef, ExtensionRef, GrpcFilter, GrpcRouteMatch, GrpcRouteRule, HeaderModifier,
    HttpFilter, HttpRouteMatch, HttpRouteRule, MatchKind, Mirror, ParentRef, PathMatchKind,
    PathModifier, Resource, Resources, RouteTimeouts, ValueMatch,
};
use crate::proxy;

/// The routes of every Service, as every caller and as each namespace's callers see them.
#[derive(Debug, Default)]
pub(super) struct Routes {
    /// Producer routes by Service (namespace, name).
    pub(super) producer: HashMap<(String, String), Vec<proxy::Route>>,
    /// Consumer routes by caller namespace, then Service (namespace, name).
    pub(super) consumer: HashMap<String, HashMap<(String, String), Vec<proxy::Route>>>,
}

/// One route resource, either kind, compiled once for all of its parents.
struct Compiled<'r> {
    namespace: &'r str,
    name: &'r str,
    /// 0 for an HTTPRoute, 1 for a GRPCRoute: the order between two of the same name.
    kind: u8,
    label: String,
    parents: &'r [ParentRef],
    rules: Vec<proxy::RouteRule>,
}

impl Routes {
    pub(super) fn compile(resources: &Resources) -> Routes {
        let http = resources.http_routes.iter().map(|r| {
            let rules = r
                .spec
                .rules
                .iter()
                .map(|rule| http_rule(resources, ns(r), rule));
            compiled(r, 0, "HTTPRoute", &r.spec.parent_refs, rules.collect())
        });
        let grpc = resources.grpc_routes.iter().map(|r| {
            let rules = r
                .spec
                .rules
                .iter()
                .map(|rule| grpc_rule(resources, ns(r), rule));
            compiled(r, 1, "GRPCRoute", &r.spec.parent_refs, rules.collect())
        });
        let mut all: Vec<Compiled<'_>> = http.chain(grpc).collect();
        all.sort_by_key(|c| (c.namespace, c.name, c.kind));

        let mut routes = Routes::default();
        for c in all {
            let mut attached: Vec<(&str, &str, Option<u16>)> = Vec::new();
            for parent in c.parents {
                let parent_ns = parent.namespace.as_deref().unwrap_or(c.namespace);
                let key = (parent_ns, parent.name.as_str(), parent.port);
                if attached.contains(&key) {
                    continue;
                }
                attached.push(key);
                let route = proxy::Route {
                    name: c.label.clone(),
                    port: parent.port,
                    rules: c.rules.clone(),
                };
                let service = (parent_ns.to_string(), parent.name.clone());
                let list = if parent_ns == c.namespace {
                    routes.producer.entry(service).or_default()
                } else {
                    let callers = routes.consumer.entry(c.namespace.to_string());
                    callers.or_default().entry(service).or_default()
                };
                list.push(route);
            }
        }
        routes
    }
}

/// Give `service` a namespace's consumer routes: they replace its producer routes on the ports
/// they cover (every port, for a consumer route without one).
pub(super) fn apply_consumer_routes(service: &mut proxy::Service, consumer: &[proxy::Route]) {
    let covered: Option<BTreeSet<u16>> = consumer.iter().map(|r| r.port).collect();
    let Some(covered) = covered else {
        service.routes = consumer.to_vec();
        return;
    };
    let mut routes = Vec::new();
    for route in &service.routes {
        match route.port {
            Some(port) if covered.contains(&port) => {}
            Some(_) => routes.push(route.clone()),
            // A producer route for every port stays on the ports the consumer leaves alone.
            None => {
                for port in service.ports.iter().filter(|p| !covered.contains(&p.port)) {
                    routes.push(proxy::Route {
                        port: Some(port.port),
                        ..route.clone()
                    });
                }
            }
        }
    }
    routes.extend(consumer.iter().cloned());
    service.routes = routes;
}

fn compiled<'r, S>(
    r: &'r Resource<S>,
    kind: u8,
    kind_name: &str,
    parents: &'r [ParentRef],
    rules: Vec<proxy::RouteRule>,
) -> Compiled<'r> {
    Compiled {
        namespace: ns(r),
        name: &r.metadata.name,
        kind,
        label: format!("{kind_name} {}/{}", r.metadata.namespace, r.metadata.name),
        parents,
        rules,
    }
}

fn ns<S>(r: &Resource<S>) -> &str {
    &r.metadata.namespace
}

// HTTPRoute.

fn http_rule(resources: &Resources, namespace: &str, rule: &HttpRouteRule) -> proxy::RouteRule {
    let filter = |f| http_filter(resources, namespace, f);
    proxy::RouteRule {
        matches: rule.matches.iter().map(http_match).collect(),
        filters: rule.filters.iter().filter_map(filter).collect(),
        backends: backends(namespace, &rule.backend_refs),
        timeout: timeout(&rule.timeouts),
    }
}

fn http_match(m: &HttpRouteMatch) -> proxy::RouteMatch {
    let kind = match m.path.kind {
        PathMatchKind::Exact => proxy::PathMatchKind::Exact,
        PathMatchKind::PathPrefix => proxy::PathMatchKind::Prefix,
        PathMatchKind::RegularExpression => proxy::PathMatchKind::Regex,
    };
    proxy::RouteMatch {
        path: Some(proxy::PathMatch {
            kind,
            value: m.path.value.clone(),
        }),
        method: m.method.clone(),
        headers: m.headers.iter().map(value_match).collect(),
        query_params: m.query_params.iter().map(value_match).collect(),
    }
}

fn http_filter(
    resources: &Resources,
    namespace: &str,
    filter: &HttpFilter,
) -> Option<proxy::RouteFilter> {
    Some(match filter {
        HttpFilter::RequestHeaderModifier(m) => {
            proxy::RouteFilter::RequestHeaderModifier(header_modifier(m))
        }
        HttpFilter::ResponseHeaderModifier(m) => {
            proxy::RouteFilter::ResponseHeaderModifier(header_modifier(m))
        }
        HttpFilter::RequestRedirect(r) => {
            proxy::RouteFilter::RequestRedirect(proxy::RequestRedirect {
                scheme: r.scheme.clone(),
                hostname: r.hostname.clone(),
                path: r.path.as_ref().map(path_modifier),
                port: r.port,
                status_code: r.status_code,
            })
        }
        HttpFilter::UrlRewrite(r) => proxy::RouteFilter::UrlRewrite(proxy::UrlRewrite {
            hostname: r.hostname.clone(),
            path: r.path.as_ref().map(path_modifier),
        }),
        HttpFilter::RequestMirror(m) => mirror(namespace, m),
        HttpFilter::ExtensionRef(e) => fault(resources, namespace, e)?,
    })
}

/// The Gateway API's `request` timeout covers the whole exchange, `backendRequest` each try.
/// The proxy makes one try, so the shorter of the two bounds the request; zero disables one.
fn timeout(t: &RouteTimeouts) -> Option<Duration> {
    let backend = t.backend_request.filter(|b| !b.is_zero());
    match (t.request, backend) {
        (request, None) => request,
        (Some(request), Some(backend)) if !request.is_zero() => Some(request.min(backend)),
        (_, Some(backend)) => Some(backend),
    }
}

// GRPCRoute.

fn grpc_rule(resources: &Resources, namespace: &str, rule: &GrpcRouteRule) -> proxy::RouteRule {
    let filter = |f| grpc_filter(resources, namespace, f);
    proxy::RouteRule {
        matches: rule.matches.iter().map(grpc_match).collect(),
        filters: rule.filters.iter().filter_map(filter).collect(),
        backends: backends(namespace, &rule.backend_refs),
        timeout: None,
    }
}

/// A gRPC method is the path `/<service>/<method>`: both exact is an exact path, a service
/// alone a prefix (whole segments), a method alone or regular expressions a regular
/// expression over the whole path. No method: any path.
fn grpc_match(m: &GrpcRouteMatch) -> proxy::RouteMatch {
    let path = m.method.as_ref().map(|method| {
        let (service, name) = (method.service.as_deref(), method.method.as_deref());
        match (method.kind, service, name) {
            (MatchKind::Exact, Some(s), Some(n)) => {
                path(proxy::PathMatchKind::Exact, format!("/{s}/{n}"))
            }
            (MatchKind::Exact, Some(s), None) => {
                path(proxy::PathMatchKind::Prefix, format!("/{s}"))
            }
            (MatchKind::Exact, None, n) => {
                let n = n.map_or_else(|| "[^/]+".to_string(), regex_syntax::escape);
                path(proxy::PathMatchKind::Regex, format!("/[^/]+/{n}"))
            }
            (MatchKind::RegularExpression, s, n) => {
                let s = s.unwrap_or("[^/]+");
                let n = n.unwrap_or("[^/]+");
                path(proxy::PathMatchKind::Regex, format!("/(?:{s})/(?:{n})"))
            }
        }
    });
    proxy::RouteMatch {
        path,
        method: None,
        headers: m.headers.iter().map(value_match).collect(),
        query_params: Vec::new(),
    }
}

fn grpc_filter(
    resources: &Resources,
    namespace: &str,
    filter: &GrpcFilter,
) -> Option<proxy::RouteFilter> {
    Some(match filter {
        GrpcFilter::RequestHeaderModifier(m) => {
            proxy::RouteFilter::RequestHeaderModifier(header_modifier(m))
        }
        GrpcFilter::ResponseHeaderModifier(m) => {
            proxy::RouteFilter::ResponseHeaderModifier(header_modifier(m))
        }
        GrpcFilter::RequestMirror(m) => mirror(namespace, m),
        GrpcFilter::ExtensionRef(e) => fault(resources, namespace, e)?,
    })
}

// Both kinds.

/// A mirror's Service, with its namespace written out (as for backends).
fn mirror(namespace: &str, m: &Mirror) -> proxy::RouteFilter {
    proxy::RouteFilter::Mirror(proxy::RequestMirror {
        service: m.name.clone(),
        namespace: Some(m.namespace.clone().unwrap_or_else(|| namespace.to_string())),
        port: m.port,
        percent: m.percent.unwrap_or(crate::Percent::ALL),
    })
}

/// The FaultInjection an `extensionRef` names, in the route's namespace; `None` if there is
/// none (validation reported it).
fn fault(resources: &Resources, namespace: &str, e: &ExtensionRef) -> Option<proxy::RouteFilter> {
    let spec = &resources
        .fault_injections
        .iter()
        .find(|f| f.metadata.namespace == namespace && f.metadata.name == e.name)?
        .spec;
    Some(proxy::RouteFilter::Fault(proxy::FaultInjection {
        delay: spec.delay.map(|d| proxy::FaultDelay {
            duration: d.fixed_delay,
            percent: d.percentage,
        }),
        abort: spec.abort.map(|a| proxy::FaultAbort {
            status: a.http_status,
            grpc_status: a.grpc_status,
            percent: a.percentage,
        }),
    }))
}

fn path(kind: proxy::PathMatchKind, value: String) -> proxy::PathMatch {
    proxy::PathMatch { kind, value }
}

fn value_match(m: &ValueMatch) -> proxy::ValueMatch {
    proxy::ValueMatch {
        kind: match m.kind {
            MatchKind::Exact => proxy::ValueMatchKind::Exact,
            MatchKind::RegularExpression => proxy::ValueMatchKind::Regex,
        },
        name: m.name.clone(),
        value: m.value.clone(),
    }
}

fn header_modifier(m: &HeaderModifier) -> proxy::HeaderModifier {
    let headers = |list: &[super::super::Header]| {
        list.iter()
            .map(|h| proxy::Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    proxy::HeaderModifier {
        set: headers(&m.set),
        add: headers(&m.add),
        remove: m.remove.clone(),
    }
}

fn path_modifier(m: &PathModifier) -> proxy::PathModifier {
    match m {
        PathModifier::ReplaceFullPath(p) => proxy::PathModifier::ReplaceFullPath(p.clone()),
        PathModifier::ReplacePrefixMatch(p) => proxy::PathModifier::ReplacePrefixMatch(p.clone()),
    }
}

/// Backends with their namespace written out: the proxy would otherwise take the namespace of
/// the Service the route is on, which a consumer route's is not.
fn backends(namespace: &str, refs: &[BackendRef]) -> Vec<proxy::RouteBackend> {
    refs.iter()
        .map(|b| proxy::RouteBackend {
            service: b.name.clone(),
            namespace: Some(b.namespace.clone().unwrap_or_else(|| namespace.to_string())),
            port: b.port,
            weight: b.weight,
        })
        .collect()
}
