//! The admin server: liveness, readiness and log level built in; the application adds its own
//! pages (`/metrics`, `/config_dump`) as routes.
//!
//! | path       | method      | answer                                                        |
//! |------------|-------------|---------------------------------------------------------------|
//! | `/live`    | GET, HEAD   | 200 `live`                                                    |
//! | `/ready`   | GET, HEAD   | 200 `ready`; 503 `not ready` before [`Readiness::set_ready`], 503 `draining` once drain started |
//! | `/logging` | GET         | 200 and the current log level                                 |
//! | `/logging` | POST, PUT   | `?level=debug` or `?level=info,trellis_proxy=debug`: 200 and the new level; 400 and the reason if invalid |
//! | a route    | any         | whatever its handler answers                                  |
//! | other      | any         | 404 and the list of known paths                               |
//!
//! HTTP/1.1 only. The accept loop stops when drain starts; open connections finish the request
//! in progress and close.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, debug_span, info, warn};

use crate::drain::DrainWatcher;
use crate::telemetry::LogHandle;

/// `text/plain; charset=utf-8`
pub const TEXT: &str = "text/plain; charset=utf-8";
/// `application/json`
pub const JSON: &str = "application/json";
/// The OpenMetrics text format, for `/metrics`.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for `/metrics`.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// An application page: gets the request head, returns the whole response.
pub type Handler = Arc<dyn Fn(&Parts) -> Response<Full<Bytes>> + Send + Sync>;

/// Whether the process is ready for traffic. Starts not ready; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
}

/// The admin server's routes and state. Build with [`Admin::new`], add pages with
/// [`Admin::route`], run with [`Admin::serve`].
#[derive(Clone)]
pub struct Admin {
    readiness: Readiness,
    log: LogHandle,
    routes: Vec<(&'static str, Handler)>,
}

const BUILT_IN: [&str; 3] = ["/live", "/ready", "/logging"];

impl Readiness {
    /// Not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the process ready; `/ready` answers 200 from now on (until drain).
    pub fn set_ready(&self) {
        if !self.ready.swap(true, Ordering::Release) {
            info!("ready");
        }
    }

    /// Whether [`set_ready`](Self::set_ready) has been called.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

impl Admin {
    /// An admin server with only the built-in pages.
    pub fn new(readiness: Readiness, log: LogHandle) -> Self {
        Self {
            readiness,
            log,
            routes: Vec::new(),
        }
    }

    /// Serves `path` (exact match, any method) with `handler`. A later route for the same path
    /// replaces an earlier one; the built-in paths cannot be replaced.
    pub fn route(
        mut self,
        path: &'static str,
        handler: impl Fn(&Parts) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        self.routes.retain(|(existing, _)| *existing != path);
        self.routes.push((path, Arc::new(handler)));
        self
    }

    /// Accepts connections on `listener` until `drain` is signaled. Errors on one connection
    /// are logged and never stop the server. Each connection holds a clone of `drain`, so the
    /// drain waits for it (idle keep-alive connections close at once).
    pub async fn serve(self, listener: TcpListener, drain: DrainWatcher) {
        match listener.local_addr() {
            Ok(addr) => info!(admin.addr = %addr, "admin server listening"),
            Err(error) => warn!(%error, "admin server listening on an unknown address"),
        }
        let admin = Arc::new(self);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = drain.signaled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let span = debug_span!("admin", src.addr = %peer);
                    let conn = serve_connection(admin.clone(), stream, drain.clone());
                    tokio::spawn(conn.instrument(span));
                }
                Err(error) => {
                    warn!(%error, "admin server failed to accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
        debug!("admin server stopped accepting");
    }

    fn handle(&self, parts: &Parts, drain: &DrainWatcher) -> Response<Full<Bytes>> {
        let path = parts.uri.path();
        let method = &parts.method;
        let read_only = *method == Method::GET || *method == Method::HEAD;
        match path {
            "/live" if read_only => text(StatusCode::OK, "live"),
            "/ready" if read_only => {
                if drain.is_draining() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining")
                } else if self.readiness.is_ready() {
                    text(StatusCode::OK, "ready")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }
            "/live" | "/ready" => method_not_allowed("GET, HEAD"),
            "/logging" if read_only => text(StatusCode::OK, self.log.level()),
            "/logging" if *method == Method::POST || *method == Method::PUT => {
                self.set_level(parts.uri.query())
            }
            "/logging" => method_not_allowed("GET, HEAD, POST, PUT"),
            _ => match self.routes.iter().find(|(route, _)| *route == path) {
                Some((_, handler)) => handler(parts),
                None => self.not_found(path),
            },
        }
    }

    fn set_level(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        let Some(level) = query_param(query.unwrap_or(""), "level") else {
            return text(
                StatusCode::BAD_REQUEST,
                "missing level: use /logging?level=debug or /logging?level=info,trellis_proxy=debug",
            );
        };
        match self.log.set_level(&level) {
            Ok(()) => text(StatusCode::OK, self.log.level()),
            Err(error) => text(StatusCode::BAD_REQUEST, error.to_string()),
        }
    }

    fn not_found(&self, path: &str) -> Response<Full<Bytes>> {
        let known: Vec<&str> = BUILT_IN
            .iter()
            .copied()
            .chain(self.routes.iter().map(|(route, _)| *route))
            .collect();
        text(
            StatusCode::NOT_FOUND,
            format!("no page at {path}; known paths: {}", known.join(" ")),
        )
    }
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("readiness", &self.readiness)
            .field("log", &self.log)
            .field(
                "routes",
                &self
                    .routes
                    .iter()
                    .map(|(path, _)| *path)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A response with `body` and its content type.
pub fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A plain text response; a final newline is added so `curl` output ends cleanly.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut body = body.into();
    body.push('\n');
    response(status, TEXT, body)
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// Serves one HTTP/1.1 connection until the client closes it or drain asks it to close.
async fn serve_connection(admin: Arc<Admin>, stream: TcpStream, drain: DrainWatcher) {
    let service = {
        let drain = drain.clone();
        service_fn(move |request: Request<Incoming>| {
            // The body is never read: no admin page takes one.
            let (parts, _body) = request.into_parts();
            let response = admin.handle(&parts, &drain);
            debug!(
                method = %parts.method,
                path = parts.uri.path(),
                status = response.status().as_u16(),
                "admin request"
            );
            std::future::ready(Ok::<_, Infallible>(response))
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        debug!(%error, "admin connection failed");
    }
}

/// The percent-decoded value of `name` in a query string (`a=1&level=info,x=debug`). The value
/// is everything after the first `=`, so directive strings need no escaping.
fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| percent_decode(value))
}

/// Decodes `%XX` escapes and `+` (space); a malformed escape is kept as written, and then
/// fails level validation with the text the operator sent.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
