//! What a rule does to a request before it is forwarded, or instead of forwarding it: header
//! modifiers, URL rewrites and redirects (Gateway API filters). Names, values and paths are
//! parsed into `http` types when the table is built, so applying a filter cannot fail.

use std::fmt::Write as _;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, StatusCode, Uri};
use trellis_model::{HeaderModifier, PathModifier, RouteFilter};

use super::{RouteError, Rule};
use crate::fault::Fault;

/// A rule's filters, ready to apply.
#[derive(Debug, Default)]
pub(crate) struct Filters {
    request_headers: Vec<HeaderEdit>,
    response_headers: Vec<HeaderEdit>,
    redirect: Option<Redirect>,
    rewrite: Option<Rewrite>,
    /// Delays and aborts (`FaultInjection`); mirrors are the rule's, beside its backends.
    pub(crate) fault: Option<Fault>,
}

/// Header changes: set, then add, then remove.
#[derive(Debug)]
struct HeaderEdit {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

#[derive(Debug)]
struct Redirect {
    scheme: Option<&'static str>,
    hostname: Option<Box<str>>,
    path: Option<PathRewrite>,
    port: Option<u16>,
    status: StatusCode,
}

#[derive(Debug)]
struct Rewrite {
    /// The new `:authority` and `Host`.
    host: Option<(Authority, HeaderValue)>,
    path: Option<PathRewrite>,
}

#[derive(Debug)]
enum PathRewrite {
    Full(Box<str>),
    /// Replaces the prefix the rule matched.
    Prefix(Box<str>),
}

impl Filters {
    pub(super) fn build(route: &str, filters: &[&RouteFilter]) -> Result<Self, RouteError> {
        let mut built = Filters::default();
        for filter in filters {
            match filter {
                RouteFilter::RequestHeaderModifier(m) => {
                    built.request_headers.push(HeaderEdit::build(route, m)?);
                }
                RouteFilter::ResponseHeaderModifier(m) => {
                    built.response_headers.push(HeaderEdit::build(route, m)?);
                }
                RouteFilter::RequestRedirect(r) => {
                    built.redirect = Some(Redirect {
                        scheme: match r.scheme.as_deref() {
                            None => None,
                            Some("https") => Some("https"),
                            Some("http") => Some("http"),
                            Some(other) => return Err(invalid(route, "redirect scheme", other)),
                        },
                        hostname: r.hostname.as_deref().map(Into::into),
                        path: r
                            .path
                            .as_ref()
                            .map(|p| PathRewrite::build(route, p))
                            .transpose()?,
                        port: r.port,
                        status: StatusCode::from_u16(r.status_code)
                            .ok()
                            .filter(StatusCode::is_redirection)
                            .ok_or_else(|| {
                                invalid(route, "redirect status", &r.status_code.to_string())
                            })?,
                    });
                }
                RouteFilter::Fault(f) => {
                    let fault = Fault::build(f);
                    let status = f.abort.map_or(0, |a| a.status);
                    built.fault = Some(
                        fault.ok_or_else(|| invalid(route, "abort status", &status.to_string()))?,
                    );
                }
                // Built with the rule's backends (it needs their destinations).
                RouteFilter::Mirror(_) => {}
                RouteFilter::UrlRewrite(r) => {
                    let host = match r.hostname.as_deref() {
                        None => None,
                        Some(h) => Some((
                            Authority::try_from(h)
                                .map_err(|_| invalid(route, "rewrite hostname", h))?,
                            HeaderValue::from_str(h)
                                .map_err(|_| invalid(route, "rewrite hostname", h))?,
                        )),
                    };
                    built.rewrite = Some(Rewrite {
                        host,
                        path: r
                            .path
                            .as_ref()
                            .map(|p| PathRewrite::build(route, p))
                            .transpose()?,
                    });
                }
            }
        }
        Ok(built)
    }
}

impl<B> Rule<B> {
    /// The redirect this rule answers with, if it has one: its status and `Location`. `host`
    /// and `port` are where the request was addressed (its authority).
    pub(crate) fn redirect(
        &self,
        uri: &Uri,
        host: &str,
        port: u16,
    ) -> Option<(StatusCode, HeaderValue)> {
        let r = self.filters.redirect.as_ref()?;
        // Inside the mesh the app speaks plain HTTP to its proxy.
        let scheme = r.scheme.unwrap_or("http");
        let port = match (r.port, r.scheme) {
            (Some(port), _) => port,
            (None, Some("https")) => 443,
            (None, Some(_)) => 80,
            (None, None) => port,
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let host = r.hostname.as_deref().unwrap_or(host);
        let mut location = format!("{scheme}://");
        if host.contains(':') {
            let _ = write!(location, "[{host}]");
        } else {
            location.push_str(host);
        }
        if port != default_port {
            let _ = write!(location, ":{port}");
        }
        match &r.path {
            Some(p) => location.push_str(&p.apply(uri.path(), self.prefix.as_deref())),
            None => location.push_str(uri.path()),
        }
        if let Some(query) = uri.query() {
            let _ = write!(location, "?{query}");
        }
        // Every part is a checked host name, a URI's path and query, or a path checked when
        // the table was built: always a valid header value.
        let location =
            HeaderValue::from_str(&location).unwrap_or_else(|_| HeaderValue::from_static("/"));
        Some((r.status, location))
    }

    /// Apply the rule's URL rewrite and request header modifiers.
    pub(crate) fn edit_request<T>(&self, req: &mut Request<T>) {
        if let Some(rewrite) = &self.filters.rewrite {
            rewrite.apply(self.prefix.as_deref(), req);
        }
        for edit in &self.filters.request_headers {
            edit.apply(req.headers_mut());
        }
    }

    /// Apply the rule's response header modifiers.
    pub(crate) fn edit_response(&self, headers: &mut HeaderMap) {
        for edit in &self.filters.response_headers {
            edit.apply(headers);
        }
    }
}

impl HeaderEdit {
    fn build(route: &str, m: &HeaderModifier) -> Result<Self, RouteError> {
        let pairs = |list: &[trellis_model::Header]| {
            list.iter()
                .map(|h| {
                    let name = header_name(route, &h.name)?;
                    let value = HeaderValue::from_str(&h.value)
                        .map_err(|_| invalid(route, "header value", &h.value))?;
                    Ok((name, value))
                })
                .collect::<Result<Vec<_>, RouteError>>()
        };
        Ok(Self {
            set: pairs(&m.set)?,
            add: pairs(&m.add)?,
            remove: m
                .remove
                .iter()
                .map(|n| header_name(route, n))
                .collect::<Result<_, _>>()?,
        })
    }

    fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

impl Rewrite {
    fn apply<T>(&self, prefix: Option<&str>, req: &mut Request<T>) {
        let mut parts = req.uri().clone().into_parts();
        if let Some(path) = &self.path {
            let new = path.apply(req.uri().path(), prefix);
            let new = match req.uri().query() {
                Some(query) => format!("{new}?{query}"),
                None => new,
            };
            // The new path was checked when the table was built, and the query is the
            // request's own: the parse does not fail.
            if let Ok(pq) = PathAndQuery::try_from(new) {
                parts.path_and_query = Some(pq);
            }
        }
        if let Some((authority, value)) = &self.host {
            if parts.authority.is_some() {
                parts.authority = Some(authority.clone());
            }
            if req.headers().contains_key(header::HOST) || parts.authority.is_none() {
                req.headers_mut().insert(header::HOST, value.clone());
            }
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

impl PathRewrite {
    fn build(route: &str, m: &PathModifier) -> Result<Self, RouteError> {
        let (value, full) = match m {
            PathModifier::ReplaceFullPath(p) => (p, true),
            PathModifier::ReplacePrefixMatch(p) => (p, false),
        };
        let ok = value.starts_with('/')
            && PathAndQuery::try_from(value.as_str()).is_ok_and(|pq| pq.query().is_none());
        if !ok {
            return Err(invalid(route, "path", value));
        }
        let value = value.as_str().into();
        Ok(if full {
            PathRewrite::Full(value)
        } else {
            PathRewrite::Prefix(value)
        })
    }

    /// The new path for `path`, whose prefix `prefix` (without its trailing `/`) the rule
    /// matched. The Gateway API's table: `/foo/bar` with prefix `/foo` and replacement `/xyz`
    /// (or `/xyz/`) is `/xyz/bar`; with replacement `/` (or empty) it is `/bar`; `/foo` itself
    /// becomes `/xyz` (or `/`).
    fn apply(&self, path: &str, prefix: Option<&str>) -> String {
        match self {
            PathRewrite::Full(p) => p.to_string(),
            PathRewrite::Prefix(replacement) => {
                let rest = path.strip_prefix(prefix.unwrap_or("")).unwrap_or(path);
                let replacement = replacement.trim_end_matches('/');
                match (replacement.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_string(),
                    (false, true) => replacement.to_string(),
                    (_, false) => format!("{replacement}{rest}"),
                }
            }
        }
    }
}

fn header_name(route: &str, name: &str) -> Result<HeaderName, RouteError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid(route, "header name", name))
}

fn invalid(route: &str, what: &'static str, value: &str) -> RouteError {
    RouteError::Invalid {
        route: route.to_string(),
        what,
        value: value.to_string(),
    }
}
