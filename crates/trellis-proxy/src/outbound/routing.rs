//! Step 2 of an outbound HTTP request: the routes of the service it addressed (GAMMA) decide
//! where it goes, or answer it.

use std::sync::Arc;

use http::header::HeaderValue;
use http::{Method, Request, StatusCode};

use crate::error::ProxyError;
use crate::route::Rule;
use crate::state::{Destination, Frontend};

/// What the routes decide for one request.
pub(super) enum Decision<'f> {
    /// Send it to `dest` (`None`: outside the mesh), with `rule`'s filters and timeout.
    Forward {
        dest: Option<Arc<Destination>>,
        rule: Option<&'f Rule<Arc<Destination>>>,
    },
    /// Answer with a redirect.
    Redirect {
        status: StatusCode,
        location: HeaderValue,
    },
    /// Answer with this error: 404 when no rule matches, 500 when the rule has no backend.
    Refuse(ProxyError),
}

/// The rule of `frontend`'s routes that `req` (addressed to `host:port`) matches, and the
/// backend service its weights pick; without routes the service itself. `CONNECT` opens a
/// tunnel to the service as addressed: routes are for HTTP requests.
pub(super) fn decide<'f, B>(
    frontend: Option<&'f Frontend>,
    req: &Request<B>,
    host: &str,
    port: u16,
) -> Decision<'f> {
    let Some(frontend) = frontend else {
        return Decision::Forward {
            dest: None,
            rule: None,
        };
    };
    let table = frontend.routes.as_ref();
    let Some(table) = table.filter(|_| req.method() != Method::CONNECT) else {
        return Decision::Forward {
            dest: Some(frontend.own.clone()),
            rule: None,
        };
    };
    let Some(rule) = table.find(req.method(), req.uri(), req.headers()) else {
        return Decision::Refuse(ProxyError::NoRouteMatch {
            service: frontend.own.fqdn.to_string(),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
        });
    };
    if let Some((status, location)) = rule.redirect(req.uri(), host, port) {
        return Decision::Redirect { status, location };
    }
    match rule.pick() {
        Some(backend) => Decision::Forward {
            dest: Some(backend.clone()),
            rule: Some(rule),
        },
        None => Decision::Refuse(ProxyError::NoBackend {
            service: frontend.own.fqdn.to_string(),
            route: rule.route().to_string(),
        }),
    }
}
