//! The demo app's HTTP routes, the same over HTTP/1.1 and h2c, and the door to its gRPC
//! service:
//!
//! | route | answer |
//! |---|---|
//! | `content-type: application/grpc*` | `trellis.demo.v1.Demo` ([`super::grpc`]), any path |
//! | `/` | JSON: who we are, the outcome of every `--backend` call (the call tree), the request as we saw it; 200 when every call is ok, 502 when one failed (the body says which) |
//! | `/?format=text` (or `Accept: text/plain`) | the same call tree as indented text |
//! | `/headers` | JSON: the request headers only |
//! | `/echo` | the request body streamed back (content-type and trailers too) |
//! | `/status/{code}` | that status |
//! | `/delay/{ms}` | 200 after that many milliseconds (at most 60 s) |
//! | `POST /sha256` | JSON: `{"bytes", "sha256"}` of the request body |
//! | `GET /bytes/{n}` | n bytes (at most 8 GiB), byte i = i % 251 |

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_lc_rs::digest;
use bytes::Bytes;
use http::header::{ACCEPT, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, TRAILER};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{Value, json};

use super::report::Report;
use super::{Service, grpc};

/// Every route's response body.
pub(super) type Body = UnsyncBoxBody<Bytes, BoxError>;
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `/delay/{ms}` never sleeps longer than this.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// `/bytes/{n}` serves at most this many bytes.
const MAX_BYTES: u64 = 8 << 30;
/// `/bytes/{n}` sends chunks of this size.
const CHUNK: usize = 64 << 10;
/// Byte i of `/bytes/{n}` is `i % PATTERN_PERIOD` (a prime, so it never lines up with chunks).
const PATTERN_PERIOD: usize = 251;

/// The JSON of `GET /`: the call tree first (what a person curling the app reads), then the
/// request as we saw it (what tests of the proxies check).
#[derive(Serialize)]
struct RootAnswer<'a> {
    #[serde(flatten)]
    report: &'a Report,
    protocol: &'static str,
    method: &'a str,
    path: &'a str,
    authority: Option<String>,
    headers: BTreeMap<String, String>,
}

/// The body of `/bytes/{n}`: generated as it is sent, never held whole.
struct PatternBody {
    sent: u64,
    len: u64,
}

/// Route one request. Never fails: every problem is an HTTP answer.
pub(super) async fn handle(
    service: Arc<Service>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let version = req.version();
    let path = uri.path();

    let response = if grpc::is_grpc(&req) {
        grpc::serve(service.clone(), req).await
    } else if path == "/" {
        info(&service, &req).await
    } else if path == "/headers" {
        json_response(
            StatusCode::OK,
            &json!({ "headers": headers_json(req.headers()) }),
        )
    } else if path == "/echo" {
        echo(req)
    } else if path == "/sha256" {
        match method {
            Method::POST => sha256(req.into_body()).await,
            _ => method_not_allowed("POST"),
        }
    } else if let Some(code) = path.strip_prefix("/status/") {
        status(code)
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        delay(ms).await
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        match method {
            Method::GET => bytes(n),
            _ => method_not_allowed("GET"),
        }
    } else {
        text(StatusCode::NOT_FOUND, format!("not found: {path}\n"))
    };

    tracing::debug!(
        target: "access",
        service = %service.name,
        http.method = %method,
        http.path = uri.path_and_query().map_or("/", |pq| pq.as_str()),
        http.version = protocol(version),
        http.status = response.status().as_u16(),
        "demo app request"
    );
    Ok(response)
}

/// `GET /`: who we are and what each backend answered (JSON, or text when asked for), then
/// the request as we saw it. 502 when any call failed, so that `curl -f` and the mesh's
/// metrics see it; the body still holds the whole tree.
async fn info(service: &Service, req: &Request<Incoming>) -> Response<Body> {
    let report = service.report().await;
    let status = if report.ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    if wants_text(req) {
        return text(status, report.to_text());
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            let host = req.headers().get(http::header::HOST)?;
            Some(String::from_utf8_lossy(host.as_bytes()).into_owned())
        });
    let answer = RootAnswer {
        report: &report,
        protocol: protocol(req.version()),
        method: req.method().as_str(),
        path: req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
        authority,
        headers: headers_json(req.headers()),
    };
    // Pretty: people read this one. Serialising a struct keeps the fields in order.
    match serde_json::to_string_pretty(&answer) {
        Ok(mut body) => {
            body.push('\n');
            let mut response = Response::new(full(body.into()));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer failed: {e}\n"),
        ),
    }
}

/// `?format=text`, or an `Accept` that names `text/plain` (and no `?format=json`).
fn wants_text<B>(req: &Request<B>) -> bool {
    let format = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("format="));
    match format {
        Some(format) => format == "text",
        None => req
            .headers()
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("text/plain")),
    }
}

/// `/echo`: the request body goes back as the response body frame by frame, trailers
/// included. For HTTP/1.1 response trailers, the client sends `TE: trailers` and declares them
/// in a `Trailer` header, which we copy.
fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut response = Response::new(body.map_err(BoxError::from).boxed_unsync());
    for name in [CONTENT_TYPE, TRAILER] {
        for value in parts.headers.get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
}

/// `POST /sha256`: hash the body as it arrives.
async fn sha256(mut body: Incoming) -> Response<Body> {
    let mut context = digest::Context::new(&digest::SHA256);
    let mut bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    context.update(data);
                    bytes += data.len() as u64;
                }
            }
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body failed after {bytes} bytes: {e}\n"),
                );
            }
        }
    }
    let hex: String = context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    json_response(StatusCode::OK, &json!({ "bytes": bytes, "sha256": hex }))
}

/// `/status/{code}`: answer with that status.
fn status(code: &str) -> Response<Body> {
    let Some(status) = code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
    else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("status code must be an integer in 200..=599, got {code:?}\n"),
        );
    };
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        // These never carry a body.
        let mut response = Response::new(empty());
        *response.status_mut() = status;
        return response;
    }
    text(status, format!("status {}\n", status.as_u16()))
}

/// `/delay/{ms}`: sleep, then 200.
async fn delay(ms: &str) -> Response<Body> {
    let Ok(ms) = ms.parse::<u64>() else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("delay must be a whole number of milliseconds, got {ms:?}\n"),
        );
    };
    let ms = ms.min(MAX_DELAY.as_millis() as u64);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    text(StatusCode::OK, format!("delayed {ms}ms\n"))
}

/// `GET /bytes/{n}`: n generated bytes with a content-length.
fn bytes(n: &str) -> Response<Body> {
    let Some(len) = n.parse::<u64>().ok().filter(|n| *n <= MAX_BYTES) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("byte count must be an integer in 0..={MAX_BYTES}, got {n:?}\n"),
        );
    };
    let mut response = Response::new(PatternBody { sent: 0, len }.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed (use {allow})\n"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// Header names are already lower case in `http`; repeated values are joined with ", ".
fn headers_json(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut map = BTreeMap::<String, String>::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        map.entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    map
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "unknown",
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(full(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut body = value.to_string();
    body.push('\n');
    let mut response = Response::new(full(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    full(Bytes::new())
}

impl PatternBody {
    /// `CHUNK + PATTERN_PERIOD` bytes of the pattern: every chunk is a zero-copy slice of it.
    fn pattern() -> &'static Bytes {
        static PATTERN: OnceLock<Bytes> = OnceLock::new();
        PATTERN.get_or_init(|| {
            (0..CHUNK + PATTERN_PERIOD)
                .map(|i| (i % PATTERN_PERIOD) as u8)
                .collect::<Vec<u8>>()
                .into()
        })
    }
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let remaining = self.len - self.sent;
        if remaining == 0 {
            return Poll::Ready(None);
        }
        let chunk = remaining.min(CHUNK as u64) as usize;
        let start = (self.sent % PATTERN_PERIOD as u64) as usize;
        let data = Self::pattern().slice(start..start + chunk);
        self.sent += chunk as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}
