//! The backend calls of `GET /`: one HTTP/1.1 GET per `--backend`, straight to the backend or
//! through an explicit HTTP proxy. Through a proxy the request goes to the proxy's address with
//! the absolute-form target (`GET http://backend:8080/path HTTP/1.1`) and the backend's `Host`,
//! as a forward proxy expects; no CONNECT tunnel.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::uri::Authority;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// Budget for one whole backend call: connect, request, response body.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A backend's response body beyond this is an error, not a memory problem.
const MAX_BODY: usize = 1 << 20;

/// One `--backend` URL, checked and split into what a request needs.
#[derive(Debug, Clone)]
pub(super) struct Backend {
    /// The URL as the user wrote it, reported back in `GET /`.
    url: Arc<str>,
    /// `Host` header value: the URL's authority as written.
    authority: Authority,
    /// Where to connect without a proxy: host and port (80 by default).
    connect_to: String,
    /// The request target without a proxy (origin-form).
    origin_form: String,
    /// The request target through a proxy (absolute-form).
    absolute_form: String,
}

/// An explicit HTTP proxy's address, `host:port`.
#[derive(Debug, Clone)]
pub(super) struct ProxyAddr(String);

impl Backend {
    /// Accepts `http://HOST[:PORT][/PATH][?QUERY]`.
    pub(super) fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().context("not a valid URL")?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                anyhow::bail!("scheme {other}:// is not supported (backends are plain http://)")
            }
            None => anyhow::bail!("missing the http:// scheme"),
        }
        let authority = uri.authority().context("missing a host")?.clone();
        let origin_form = uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .filter(|pq| !pq.is_empty())
            .unwrap_or("/")
            .to_owned();
        Ok(Self {
            url: url.into(),
            connect_to: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
            absolute_form: format!("http://{authority}{origin_form}"),
            origin_form,
            authority,
        })
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// GET the backend and describe the outcome as `{"url", "status", "body"}` (the body parsed
    /// as JSON when it is JSON, else a string) or `{"url", "error"}`.
    pub(super) async fn call(&self, proxy: Option<&ProxyAddr>, user_agent: &str) -> Value {
        match tokio::time::timeout(TIMEOUT, self.fetch(proxy, user_agent)).await {
            Ok(Ok((status, body))) => json!({
                "url": self.url(),
                "status": status.as_u16(),
                "body": serde_json::from_slice::<Value>(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned())),
            }),
            Ok(Err(e)) => {
                tracing::debug!(backend.url = %self.url, error = %format!("{e:#}"), "backend call failed");
                json!({ "url": self.url(), "error": format!("{e:#}") })
            }
            Err(_) => {
                tracing::debug!(backend.url = %self.url, "backend call timed out");
                json!({ "url": self.url(), "error": format!("timed out after {TIMEOUT:?}") })
            }
        }
    }

    async fn fetch(
        &self,
        proxy: Option<&ProxyAddr>,
        user_agent: &str,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let (connect_to, target) = match proxy {
            Some(proxy) => (proxy.as_str(), self.absolute_form.as_str()),
            None => (self.connect_to.as_str(), self.origin_form.as_str()),
        };
        let stream = TcpStream::connect(connect_to)
            .await
            .with_context(|| match proxy {
                Some(_) => format!("connecting to the proxy {connect_to} (is it running?)"),
                None => format!("connecting to {connect_to}"),
            })?;
        stream.set_nodelay(true).ok();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("starting HTTP/1.1")?;
        // The connection ends once `sender` and the response body are dropped (also on timeout).
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        let request = Request::get(target)
            .header(HOST, self.authority.as_str())
            .header(USER_AGENT, user_agent)
            .body(Empty::<Bytes>::new())
            .context("building the request")?;
        let response = sender
            .send_request(request)
            .await
            .context("sending the request")?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the response body: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

impl ProxyAddr {
    /// Accepts `HOST:PORT` or `http://HOST[:PORT][/]` (the usual `HTTP_PROXY` spelling).
    pub(super) fn parse(value: &str) -> anyhow::Result<Self> {
        let value = value.trim();
        let authority = if value.contains("://") {
            let uri: Uri = value.parse().context("not a valid URL")?;
            if uri.scheme_str() != Some("http") {
                anyhow::bail!("only http:// proxies are supported");
            }
            uri.authority().context("missing a host")?.clone()
        } else {
            value
                .parse::<Authority>()
                .context("expected HOST:PORT or http://HOST:PORT")?
        };
        Ok(Self(format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        )))
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}
