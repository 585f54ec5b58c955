//! The checks on routes that need the rest of the config: backends and ports that exist, and
//! the Gateway API's rules on a rule's filters.

use super::{Checker, quoted};
use crate::proxy::{PathMatchKind, PathModifier, Route, RouteFilter, RouteRule, Service};

impl Checker<'_> {
    /// Every route of every service.
    pub(super) fn routes(&mut self, services: &[Service]) {
        for (i, service) in services.iter().enumerate() {
            for (j, route) in service.routes.iter().enumerate() {
                self.route(
                    &format!("services[{i}].routes[{j}]"),
                    service,
                    route,
                    services,
                );
            }
        }
    }

    fn route(&mut self, path: &str, service: &Service, route: &Route, services: &[Service]) {
        if let Some(port) = route.port {
            if !service.ports.iter().any(|p| p.port == port) {
                let reason = format!(
                    "{port} is not a port of service {} (its ports: {})",
                    quoted(&service.name),
                    ports(service)
                );
                self.report(&format!("{path}.port"), &[], reason);
            }
        }
        for (k, rule) in route.rules.iter().enumerate() {
            let rule_path = format!("{path}.rules[{k}]");
            self.rule_filters(&rule_path, rule);
            let mirrors = rule
                .filters
                .iter()
                .enumerate()
                .filter_map(|(m, f)| match f {
                    RouteFilter::Mirror(mirror) => Some((
                        format!("{rule_path}.filters[{m}].mirror"),
                        &mirror.service,
                        mirror.namespace.as_deref(),
                        mirror.port,
                    )),
                    _ => None,
                });
            let backends = rule.backends.iter().enumerate().map(|(b, backend)| {
                (
                    format!("{rule_path}.backends[{b}]"),
                    &backend.service,
                    backend.namespace.as_deref(),
                    backend.port,
                )
            });
            let targets: Vec<_> = backends.chain(mirrors).collect();
            for (at, backend_service, backend_namespace, backend_port) in targets {
                let backend = crate::proxy::RouteBackend {
                    service: backend_service.clone(),
                    namespace: backend_namespace.map(str::to_string),
                    port: backend_port,
                    weight: 1,
                };
                let namespace = backend.namespace.as_deref().unwrap_or(&service.namespace);
                let found = services
                    .iter()
                    .find(|s| s.name == backend.service && s.namespace == namespace);
                let Some(target) = found else {
                    let mut there: Vec<&str> = services
                        .iter()
                        .filter(|s| s.namespace == namespace)
                        .map(|s| s.name.as_str())
                        .collect();
                    there.sort_unstable();
                    let there = if there.is_empty() {
                        "none".to_string()
                    } else {
                        there.join(", ")
                    };
                    let reason = format!(
                        "no service {} in namespace {} in this config (services there: {there})",
                        quoted(&backend.service),
                        quoted(namespace),
                    );
                    let related = format!("{at}.namespace");
                    self.report(&format!("{at}.service"), &[&related], reason);
                    continue;
                };
                if !target.ports.iter().any(|p| p.port == backend.port) {
                    let reason = format!(
                        "{} is not a port of service {} (its ports: {})",
                        backend.port,
                        quoted(&target.name),
                        ports(target)
                    );
                    self.report(&format!("{at}.port"), &[], reason);
                }
            }
        }
    }

    /// One filter of each kind; a redirect answers by itself (no rewrite, no backends); a
    /// prefix replacement needs the prefix the rule matched.
    fn rule_filters(&mut self, path: &str, rule: &RouteRule) {
        let mut seen: Vec<(&str, usize)> = Vec::new();
        for (m, filter) in rule.filters.iter().enumerate() {
            let (kind, modifier) = match filter {
                RouteFilter::RequestHeaderModifier(_) => ("request_header_modifier", None),
                RouteFilter::ResponseHeaderModifier(_) => ("response_header_modifier", None),
                RouteFilter::RequestRedirect(r) => ("request_redirect", r.path.as_ref()),
                RouteFilter::UrlRewrite(r) => ("url_rewrite", r.path.as_ref()),
                // A rule may copy its requests to several services.
                RouteFilter::Mirror(_) => continue,
                RouteFilter::Fault(_) => ("fault", None),
            };
            let at = format!("{path}.filters[{m}].{kind}");
            let repeated = seen
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, first)| *first);
            if let Some(first) = repeated {
                let reason = format!("a rule may have one {kind} (the first is filters[{first}])");
                self.report(&at, &[], reason);
            }
            let clash = match kind {
                "request_redirect" => Some("url_rewrite"),
                "url_rewrite" => Some("request_redirect"),
                _ => None,
            };
            if let Some((other, first)) = seen.iter().find(|(k, _)| Some(*k) == clash) {
                let reason = format!(
                    "a rule may not have both {other} (filters[{first}]) and {kind}: a redirect \
                     answers the request, a rewrite forwards it"
                );
                self.report(&at, &[], reason);
            }
            seen.push((kind, m));
            if kind == "request_redirect" && repeated.is_none() && !rule.backends.is_empty() {
                let reason = "a redirect answers the request itself: a rule with \
                              request_redirect has no backends";
                self.report(&at, &[&format!("{path}.backends")], reason);
            }
            if let Some(PathModifier::ReplacePrefixMatch(_)) = modifier {
                let one_prefix = matches!(
                    rule.matches.as_slice(),
                    [m] if m.path.as_ref().is_some_and(|p| p.kind == PathMatchKind::Prefix)
                );
                if !one_prefix {
                    let reason = "replace_prefix_match needs the rule to have exactly one match, \
                                  with a prefix path";
                    self.report(&format!("{at}.path"), &[&format!("{path}.matches")], reason);
                }
            }
        }
    }
}

fn ports(service: &Service) -> String {
    let ports: Vec<String> = service.ports.iter().map(|p| p.port.to_string()).collect();
    if ports.is_empty() {
        "none".to_string()
    } else {
        ports.join(", ")
    }
}
