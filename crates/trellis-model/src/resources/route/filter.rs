//! Route filters: decoding each kind, and the Gateway API's rules on how a rule combines them.

use super::decode::{header_value_error, path_error};
use super::{
    ExtensionRef, GrpcFilter, Header, HeaderModifier, HttpFilter, HttpRouteMatch, Mirror,
    PathMatchKind, PathModifier, Redirect, UrlRewrite,
};
use crate::Percent;
use crate::resources::decode::{Decoder, Fields};
use crate::resources::fault::{EXTENSION_GROUP, EXTENSION_KIND};
use crate::resources::names::{dns_subdomain_error, is_http_token, quoted};
use crate::validate::yaml::Node;

const HTTP_FILTER_FIELDS: &[&str] = &[
    "type",
    "requestHeaderModifier",
    "responseHeaderModifier",
    "requestRedirect",
    "urlRewrite",
    "requestMirror",
    "extensionRef",
];
const GRPC_FILTER_FIELDS: &[&str] = &[
    "type",
    "requestHeaderModifier",
    "responseHeaderModifier",
    "requestMirror",
    "extensionRef",
];
const HEADER_MODIFIER_FIELDS: &[&str] = &["set", "add", "remove"];
const HEADER_FIELDS: &[&str] = &["name", "value"];
const REDIRECT_FIELDS: &[&str] = &["scheme", "hostname", "path", "port", "statusCode"];
const REWRITE_FIELDS: &[&str] = &["hostname", "path"];
const PATH_MODIFIER_FIELDS: &[&str] = &["type", "replaceFullPath", "replacePrefixMatch"];
const MIRROR_FIELDS: &[&str] = &["backendRef", "percent", "fraction"];
const FRACTION_FIELDS: &[&str] = &["numerator", "denominator"];
const EXTENSION_REF_FIELDS: &[&str] = &["group", "kind", "name"];
const MIRROR_BACKEND_FIELDS: &[&str] = &["group", "kind", "name", "namespace", "port"];
const SCHEMES: &[(&str, &str)] = &[("http", "http"), ("https", "https")];
const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];
/// Filter types and the field that configures each; `extensionRef` names a FaultInjection.
const HTTP_FILTERS: &[(&str, &str)] = &[
    ("RequestHeaderModifier", "requestHeaderModifier"),
    ("ResponseHeaderModifier", "responseHeaderModifier"),
    ("RequestRedirect", "requestRedirect"),
    ("URLRewrite", "urlRewrite"),
    ("RequestMirror", "requestMirror"),
    ("ExtensionRef", "extensionRef"),
];
const GRPC_FILTERS: &[(&str, &str)] = &[
    ("RequestHeaderModifier", "requestHeaderModifier"),
    ("ResponseHeaderModifier", "responseHeaderModifier"),
    ("RequestMirror", "requestMirror"),
    ("ExtensionRef", "extensionRef"),
];

impl Decoder {
    /// The Gateway API's rules on a rule's filters.
    pub(super) fn http_rule_filters(
        &mut self,
        path: &str,
        filters: &[Option<HttpFilter>],
        matches: &[HttpRouteMatch],
        has_backends: bool,
    ) {
        let filter_path = |j: usize| format!("{path}.filters[{j}]");
        let kind = |f: &HttpFilter| match f {
            HttpFilter::RequestHeaderModifier(_) => "RequestHeaderModifier",
            HttpFilter::ResponseHeaderModifier(_) => "ResponseHeaderModifier",
            HttpFilter::RequestRedirect(_) => "RequestRedirect",
            HttpFilter::UrlRewrite(_) => "URLRewrite",
            HttpFilter::RequestMirror(_) => "RequestMirror",
            HttpFilter::ExtensionRef(_) => "ExtensionRef",
        };
        let mut seen: Vec<(&str, usize)> = Vec::new();
        let read = filters.iter().enumerate();
        for (j, filter) in read.filter_map(|(j, f)| Some((j, f.as_ref()?))) {
            let this = kind(filter);
            let type_path = format!("{}.type", filter_path(j));
            if this != "RequestMirror" {
                if let Some((_, first)) = seen.iter().find(|(k, _)| *k == this) {
                    let reason = format!(
                        "a rule may have one {this} filter (the first is filters[{first}])"
                    );
                    self.report(&type_path, &[], reason);
                }
            }
            let clash = match this {
                "RequestRedirect" => Some("URLRewrite"),
                "URLRewrite" => Some("RequestRedirect"),
                _ => None,
            };
            if let Some((other, first)) = seen.iter().find(|(k, _)| Some(*k) == clash) {
                let reason = format!(
                    "a rule may not have both {other} (filters[{first}]) and {this}: a redirect \
                     answers the request, a rewrite forwards it"
                );
                self.report(&type_path, &[], reason);
            }
            seen.push((this, j));
            let (field, modifier) = match filter {
                HttpFilter::RequestRedirect(r) => ("requestRedirect", r.path.as_ref()),
                HttpFilter::UrlRewrite(r) => ("urlRewrite", r.path.as_ref()),
                _ => ("", None),
            };
            if let Some(PathModifier::ReplacePrefixMatch(_)) = modifier {
                let one_prefix =
                    matches.len() == 1 && matches[0].path.kind == PathMatchKind::PathPrefix;
                if !one_prefix {
                    let reason = "replacePrefixMatch needs the rule to have exactly one match, \
                                  with a PathPrefix path";
                    let at = format!("{}.{field}.path.type", filter_path(j));
                    self.report(&at, &[], reason);
                }
            }
            if this == "RequestRedirect" && has_backends {
                let reason = "a RequestRedirect filter answers the request itself: it cannot be \
                              used together with backendRefs";
                self.report(&type_path, &[], reason);
            }
        }
    }

    /// A gRPC rule modifies request and response headers once each, and has one fault.
    pub(super) fn grpc_rule_filters(&mut self, path: &str, filters: &[Option<GrpcFilter>]) {
        let mut seen: Vec<(Option<bool>, usize)> = Vec::new();
        let read = filters.iter().enumerate();
        for (j, filter) in read.filter_map(|(j, f)| Some((j, f.as_ref()?))) {
            let request = match filter {
                GrpcFilter::RequestHeaderModifier(_) => Some(true),
                GrpcFilter::ResponseHeaderModifier(_) => Some(false),
                GrpcFilter::RequestMirror(_) => continue,
                GrpcFilter::ExtensionRef(_) => None,
            };
            if let Some((_, first)) = seen.iter().find(|(r, _)| *r == request) {
                let which = match request {
                    Some(true) => "RequestHeaderModifier",
                    Some(false) => "ResponseHeaderModifier",
                    None => "ExtensionRef",
                };
                let reason =
                    format!("a rule may have one {which} filter (the first is filters[{first}])");
                self.report(&format!("{path}.filters[{j}].type"), &[], reason);
            }
            seen.push((request, j));
        }
    }

    pub(super) fn http_filter(&mut self, node: &Node, path: &str) -> Option<HttpFilter> {
        let f = self.fields(node, path, HTTP_FILTER_FIELDS);
        let kind = self.filter_kind(&f, path, HTTP_FILTERS)?;
        let field = |name: &str| {
            HTTP_FILTERS
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, f)| *f)
        };
        let field = field(kind).unwrap_or_default();
        match kind {
            "RequestHeaderModifier" => self
                .required(&f, field, |d, n, p| Some(d.header_modifier(n, p)))
                .map(HttpFilter::RequestHeaderModifier),
            "ResponseHeaderModifier" => self
                .required(&f, field, |d, n, p| Some(d.header_modifier(n, p)))
                .map(HttpFilter::ResponseHeaderModifier),
            "RequestRedirect" => self
                .required(&f, field, |d, n, p| Some(d.redirect(n, p)))
                .map(HttpFilter::RequestRedirect),
            "URLRewrite" => self
                .required(&f, field, |d, n, p| Some(d.url_rewrite(n, p)))
                .map(HttpFilter::UrlRewrite),
            "RequestMirror" => self
                .required(&f, field, Self::mirror)
                .map(HttpFilter::RequestMirror),
            "ExtensionRef" => self
                .required(&f, field, Self::extension_ref)
                .map(HttpFilter::ExtensionRef),
            _ => None,
        }
    }

    pub(super) fn grpc_filter(&mut self, node: &Node, path: &str) -> Option<GrpcFilter> {
        let f = self.fields(node, path, GRPC_FILTER_FIELDS);
        let kind = self.filter_kind(&f, path, GRPC_FILTERS)?;
        match kind {
            "RequestHeaderModifier" => self
                .required(&f, "requestHeaderModifier", |d, n, p| {
                    Some(d.header_modifier(n, p))
                })
                .map(GrpcFilter::RequestHeaderModifier),
            "ResponseHeaderModifier" => self
                .required(&f, "responseHeaderModifier", |d, n, p| {
                    Some(d.header_modifier(n, p))
                })
                .map(GrpcFilter::ResponseHeaderModifier),
            "RequestMirror" => self
                .required(&f, "requestMirror", Self::mirror)
                .map(GrpcFilter::RequestMirror),
            "ExtensionRef" => self
                .required(&f, "extensionRef", Self::extension_ref)
                .map(GrpcFilter::ExtensionRef),
            _ => None,
        }
    }

    /// `{ group: trellis.dev, kind: FaultInjection, name }`: the one extension Trellis has.
    fn extension_ref(&mut self, node: &Node, path: &str) -> Option<ExtensionRef> {
        let f = self.fields(node, path, EXTENSION_REF_FIELDS);
        let group = self.required(&f, "group", Self::string);
        let kind = self.required(&f, "kind", Self::string);
        let name = self.required(&f, "name", Self::string);
        let known = format!(
            "Trellis's one extension filter is group {EXTENSION_GROUP}, kind {EXTENSION_KIND}"
        );
        let mut known_ref = true;
        if let Some(group) = group.as_deref().filter(|g| *g != EXTENSION_GROUP) {
            let reason = format!(
                "{} is not an extension group Trellis knows ({known})",
                quoted(group)
            );
            self.reject(&format!("{path}.group"), reason);
            known_ref = false;
        }
        if let Some(kind) = kind.as_deref().filter(|k| *k != EXTENSION_KIND) {
            let reason = format!(
                "{} is not an extension filter Trellis knows ({known})",
                quoted(kind)
            );
            self.reject(&format!("{path}.kind"), reason);
            known_ref = false;
        }
        let name = name.filter(|_| known_ref)?;
        self.object_name(&format!("{path}.name"), &name);
        Some(ExtensionRef { name })
    }

    /// A filter's `type`, checking that exactly the field for that type is given. `None` if
    /// the filter cannot be used (already reported).
    fn filter_kind(
        &mut self,
        f: &Fields<'_>,
        path: &str,
        kinds: &[(&'static str, &'static str)],
    ) -> Option<&'static str> {
        let options: Vec<(&str, &'static str)> = kinds.iter().map(|(k, _)| (*k, *k)).collect();
        let kind = self.required(f, "type", |d, n, p| {
            d.choice(n, p, "a filter type", &options)
        })?;
        let own = kinds
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, field)| *field)?;
        for other in f.present() {
            if other != "type" && other != own {
                let reason = format!(
                    "{other} does not go with type {kind} (a filter does one thing: give \
                     {own} only)"
                );
                if let Some(mark) = f.key_mark(other) {
                    self.error(mark, &format!("{path}.{other}"), reason);
                }
            }
        }
        Some(kind)
    }

    fn header_modifier(&mut self, node: &Node, path: &str) -> HeaderModifier {
        let f = self.fields(node, path, HEADER_MODIFIER_FIELDS);
        let modifier = HeaderModifier {
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
                        if !d.failed(p) && !is_http_token(&name) {
                            d.fail(n.mark, p, format!("{} is not a header name", quoted(&name)));
                        }
                        name
                    })
                })
                .unwrap_or_default(),
        };
        // Each list names a header once (the CRDs key them by name); header names are
        // case-insensitive.
        let lists = [
            (
                "set",
                modifier.set.iter().map(|h| &h.name).collect::<Vec<_>>(),
            ),
            ("add", modifier.add.iter().map(|h| &h.name).collect()),
            ("remove", modifier.remove.iter().collect()),
        ];
        for (list, names) in lists {
            let suffix = if list == "remove" { "" } else { ".name" };
            let names = names.into_iter().enumerate().map(|(i, name)| {
                let field = format!("{path}.{list}[{i}]{suffix}");
                (field, name.to_ascii_lowercase())
            });
            self.unique(names, |name| format!("header {}", quoted(name)));
        }
        modifier
    }

    fn header(&mut self, node: &Node, path: &str) -> Header {
        let f = self.fields(node, path, HEADER_FIELDS);
        let header = Header {
            name: self.required(&f, "name", Self::string).unwrap_or_default(),
            value: self.required(&f, "value", Self::string).unwrap_or_default(),
        };
        if !is_http_token(&header.name) {
            let reason = format!("{} is not a header name", quoted(&header.name));
            self.report(&format!("{path}.name"), &[], reason);
        }
        if let Some(reason) = header_value_error(&header.value) {
            self.report(&format!("{path}.value"), &[], reason);
        }
        header
    }

    fn redirect(&mut self, node: &Node, path: &str) -> Redirect {
        let f = self.fields(node, path, REDIRECT_FIELDS);
        let redirect = Redirect {
            scheme: self.optional(&f, "scheme", |d, n, p| {
                d.choice(n, p, "a scheme", SCHEMES).map(str::to_string)
            }),
            hostname: self.optional(&f, "hostname", Self::string),
            path: self.optional(&f, "path", Self::path_modifier),
            port: self.optional(&f, "port", Self::port),
            status_code: self
                .optional(&f, "statusCode", |d, n, p| {
                    let code = d.number(n, p, 999)?;
                    let code = u16::try_from(code)
                        .ok()
                        .filter(|c| REDIRECT_CODES.contains(c));
                    if code.is_none() {
                        d.fail(
                            n.mark,
                            p,
                            "a redirect's status is 301, 302, 303, 307 or 308".to_string(),
                        );
                    }
                    code
                })
                .unwrap_or(302),
        };
        if let Some(reason) = redirect.hostname.as_deref().and_then(dns_subdomain_error) {
            self.report(&format!("{path}.hostname"), &[], reason);
        }
        redirect
    }

    fn url_rewrite(&mut self, node: &Node, path: &str) -> UrlRewrite {
        let f = self.fields(node, path, REWRITE_FIELDS);
        let rewrite = UrlRewrite {
            hostname: self.optional(&f, "hostname", Self::string),
            path: self.optional(&f, "path", Self::path_modifier),
        };
        if let Some(reason) = rewrite.hostname.as_deref().and_then(dns_subdomain_error) {
            self.report(&format!("{path}.hostname"), &[], reason);
        }
        rewrite
    }

    fn path_modifier(&mut self, node: &Node, path: &str) -> Option<PathModifier> {
        let f = self.fields(node, path, PATH_MODIFIER_FIELDS);
        let options = [("ReplaceFullPath", true), ("ReplacePrefixMatch", false)];
        let full = self.required(&f, "type", |d, n, p| {
            d.choice(n, p, "a path modifier type", &options)
        })?;
        let (own, other) = if full {
            ("replaceFullPath", "replacePrefixMatch")
        } else {
            ("replacePrefixMatch", "replaceFullPath")
        };
        if f.has(other) {
            let reason = format!(
                "{other} does not go with type {} (give {own})",
                if full {
                    "ReplaceFullPath"
                } else {
                    "ReplacePrefixMatch"
                }
            );
            self.report(&format!("{path}.{other}"), &[], reason);
        }
        let value = self.required(&f, own, Self::string)?;
        if let Some(reason) = path_error(&value) {
            self.report(&format!("{path}.{own}"), &[], reason);
        }
        Some(if full {
            PathModifier::ReplaceFullPath(value)
        } else {
            PathModifier::ReplacePrefixMatch(value)
        })
    }

    fn mirror(&mut self, node: &Node, path: &str) -> Option<Mirror> {
        let f = self.fields(node, path, MIRROR_FIELDS);
        let backend = self.required(&f, "backendRef", |d, n, p| {
            let f = d.fields(n, p, MIRROR_BACKEND_FIELDS);
            d.service_kind(&f, p);
            let name = d.required(&f, "name", Self::string).unwrap_or_default();
            d.object_name(&format!("{p}.name"), &name);
            Some((
                name,
                d.optional(&f, "namespace", Self::string),
                d.required(&f, "port", Self::port).unwrap_or(0),
            ))
        });
        let percent = self.optional(&f, "percent", |d, n, p| {
            d.number(n, p, 100).and_then(|n| Percent::new(f64::from(n)))
        });
        let fraction = self.optional(&f, "fraction", |d, n, p| {
            let f = d.fields(n, p, FRACTION_FIELDS);
            let numerator = d.required(&f, "numerator", |d, n, p| d.number(n, p, u32::MAX))?;
            let denominator = d
                .optional(&f, "denominator", |d, n, p| d.number(n, p, u32::MAX))
                .unwrap_or(100);
            let share = Percent::fraction(numerator, denominator);
            if share.is_none() {
                let reason = format!(
                    "{numerator}/{denominator} is not a fraction of the requests (the \
                     denominator is above 0 and at least the numerator)"
                );
                d.report(p, &[], reason);
            }
            share
        });
        if f.has("percent") && f.has("fraction") {
            let reason = "give percent or fraction, not both";
            self.report(
                &format!("{path}.fraction"),
                &[&format!("{path}.percent")],
                reason,
            );
        }
        let (name, namespace, port) = backend?;
        let percent = percent.or(fraction);
        Some(Mirror {
            name,
            namespace,
            port,
            percent,
        })
    }
}
