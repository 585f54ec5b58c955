//! The backend calls of `GET /` and `Demo/Info`: one call per `--backend`, all at once, each
//! within the timeout, each reported as a [`Call`] (a failure is an answer, never an error).
//!
//! | `--backend` | the call | ok when |
//! |---|---|---|
//! | `http://host[:port][/path]` | `GET` (HTTP/1.1) | 2xx |
//! | `grpc://host:port` | `trellis.demo.v1.Demo/Info` (h2c) | status OK |
//! | `tcp://host:port` | read the banner line, send a line, read it back | the echo matches |
//!
//! and, when the backend is itself a demo app (a `GET /` report or an `Info` reply), its report
//! says ok too. Connections are kept: one HTTP/1.1 client with a connection pool, one gRPC
//! channel per backend (connected on first use, reconnected after a failure); a TCP check
//! opens a connection each time, as a TCP client would. The route through the explicit proxy
//! is in [`super::dial`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::USER_AGENT;
use http::uri::Authority;
use http::{Request, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use trellis_api::demo::v1::InfoRequest;
use trellis_api::demo::v1::demo_client::DemoClient;

use super::dial::{self, Dialer};
use super::report::{Call, Protocol, Report, latency_ms};

/// An HTTP backend's response body beyond this is an error, not a memory problem.
const MAX_BODY: usize = 1 << 20;
/// Idle pooled HTTP connections close after this long.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// One `--backend` URL, checked and split into what a call needs.
#[derive(Debug, Clone)]
pub(super) struct Backend {
    /// The URL as the user wrote it, reported back in every [`Call`].
    url: Arc<str>,
    target: Target,
}

/// Where a backend is and how to call it.
#[derive(Debug, Clone)]
enum Target {
    /// The absolute URL to GET (`http://host:port/path`).
    Http(Uri),
    /// `http://host:port`: the gRPC channel's origin, hence the requests' `:authority`.
    Grpc(Uri),
    /// `host:port`.
    Tcp(Authority),
}

/// An explicit HTTP proxy's address, `host:port`.
#[derive(Debug, Clone)]
pub(super) struct ProxyAddr(String);

/// The `--backend`s with the clients that reach them, kept across requests.
#[derive(Debug)]
pub(super) struct Backends {
    calls: Vec<(Backend, Caller)>,
    proxy: Option<ProxyAddr>,
    timeout: Duration,
    /// `trellis-demo/NAME (VERSION)`, sent with HTTP requests and gRPC calls, and the line
    /// a TCP check sends.
    user_agent: String,
}

/// The client for one backend.
#[derive(Debug)]
enum Caller {
    Http(Client<Dialer, Empty<Bytes>>),
    Grpc(DemoClient<Channel>),
    Tcp,
}

impl Backend {
    /// Accepts `http://HOST[:PORT][/PATH][?QUERY]`, `grpc://HOST:PORT` and `tcp://HOST:PORT`.
    pub(super) fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url.parse().context("not a valid URL")?;
        let authority = || uri.authority().cloned().context("missing a host");
        let with_port = || {
            let authority = authority()?;
            if authority.port_u16().is_none() {
                anyhow::bail!(
                    "missing the port (write {}://HOST:PORT)",
                    uri.scheme_str().unwrap_or_default()
                );
            }
            if uri
                .path_and_query()
                .is_some_and(|pq| !matches!(pq.as_str(), "" | "/"))
            {
                anyhow::bail!(
                    "a {}:// backend has no path",
                    uri.scheme_str().unwrap_or_default()
                );
            }
            Ok(authority)
        };
        let target = match uri.scheme_str() {
            Some("http") => {
                let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
                let path = if path.is_empty() { "/" } else { path };
                Target::Http(
                    format!("http://{}{path}", authority()?)
                        .parse()
                        .context("not a valid URL")?,
                )
            }
            Some("grpc") => Target::Grpc(
                format!("http://{}", with_port()?)
                    .parse()
                    .context("not a valid URL")?,
            ),
            Some("tcp") => Target::Tcp(with_port()?),
            Some(other) => {
                anyhow::bail!("scheme {other}:// is not supported (use http://, grpc:// or tcp://)")
            }
            None => anyhow::bail!("missing the scheme (http://, grpc:// or tcp://)"),
        };
        Ok(Self {
            url: url.into(),
            target,
        })
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    fn protocol(&self) -> Protocol {
        match self.target {
            Target::Http(_) => Protocol::Http,
            Target::Grpc(_) => Protocol::Grpc,
            Target::Tcp(_) => Protocol::Tcp,
        }
    }
}

impl Backends {
    /// The clients for `backends`. Connects nothing yet (gRPC channels connect on first use),
    /// but needs a Tokio runtime.
    pub(super) fn new(
        backends: Vec<Backend>,
        proxy: Option<ProxyAddr>,
        timeout: Duration,
        user_agent: String,
    ) -> Self {
        let dialer = Dialer::new(proxy.clone());
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(dialer.clone());
        let calls = backends
            .into_iter()
            .map(|backend| {
                let caller = match &backend.target {
                    Target::Http(_) => Caller::Http(http.clone()),
                    Target::Grpc(origin) => {
                        let endpoint = Endpoint::from(origin.clone());
                        // A user agent the header accepts; the name came from the command line.
                        let endpoint = endpoint
                            .clone()
                            .user_agent(user_agent.clone())
                            .unwrap_or(endpoint);
                        Caller::Grpc(DemoClient::new(
                            endpoint.connect_with_connector_lazy(dialer.clone()),
                        ))
                    }
                    Target::Tcp(_) => Caller::Tcp,
                };
                (backend, caller)
            })
            .collect();
        Self {
            calls,
            proxy,
            timeout,
            user_agent,
        }
    }

    /// Call every backend at once; the outcomes in `--backend` order.
    pub(super) async fn call_all(&self) -> Vec<Call> {
        let calls = self
            .calls
            .iter()
            .map(|(backend, caller)| self.call(backend, caller));
        futures_util::future::join_all(calls).await
    }

    /// One call within the timeout, its outcome whatever happens.
    async fn call(&self, backend: &Backend, caller: &Caller) -> Call {
        let start = Instant::now();
        let result = tokio::time::timeout(self.timeout, async {
            match (caller, &backend.target) {
                (Caller::Http(client), Target::Http(uri)) => {
                    self.http(client, backend, uri.clone()).await
                }
                (Caller::Grpc(client), Target::Grpc(_)) => self.grpc(client.clone(), backend).await,
                (Caller::Tcp, Target::Tcp(authority)) => self.tcp(backend, authority).await,
                _ => Err(anyhow::anyhow!("no client for this backend (a bug)")),
            }
        })
        .await;
        let latency = start.elapsed();
        let mut call = match result {
            Ok(Ok(call)) => call,
            Ok(Err(e)) => {
                Call::failed(backend.url(), backend.protocol(), latency, format!("{e:#}"))
            }
            Err(_) => Call::failed(
                backend.url(),
                backend.protocol(),
                latency,
                format!("timed out after {:?}", self.timeout),
            ),
        };
        call.latency_ms = latency_ms(latency);
        if let Some(error) = &call.error {
            tracing::debug!(backend.url = %backend.url, error = %error, "backend call failed");
        }
        call
    }

    /// `GET` the URL; parse the answer as a demo app's report when it is one.
    async fn http(
        &self,
        client: &Client<Dialer, Empty<Bytes>>,
        backend: &Backend,
        uri: Uri,
    ) -> anyhow::Result<Call> {
        let request = Request::get(uri)
            .header(USER_AGENT, &self.user_agent)
            .body(Empty::new())
            .context("building the request")?;
        let response = client.request(request).await.map_err(anyhow::Error::new)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the response body: {e}"))?
            .to_bytes();
        let json = serde_json::from_slice::<Value>(&body).ok();
        let reply = json
            .as_ref()
            .and_then(|json| serde_json::from_value::<Report>(json.clone()).ok());
        let body = match (&reply, json) {
            (Some(_), _) => None,
            (None, Some(json)) => Some(json),
            (None, None) => Some(Value::String(String::from_utf8_lossy(&body).into_owned())),
        };
        let success = status.is_success();
        Ok(Call {
            target: backend.url().to_owned(),
            protocol: Protocol::Http,
            ok: success && reply.as_ref().is_none_or(|r| r.ok),
            status: Some(u32::from(status.as_u16())),
            latency_ms: 0.0,
            // A failure below explains a demo app's 502; anything else is this call's own.
            error: (!success && reply.is_none()).then(|| format!("answered {status}")),
            banner: None,
            reply: reply.map(Box::new),
            body,
        })
    }

    /// `Demo/Info` on the backend.
    async fn grpc(
        &self,
        mut client: DemoClient<Channel>,
        backend: &Backend,
    ) -> anyhow::Result<Call> {
        let (status, reply, error) = match client.info(InfoRequest {}).await {
            Ok(response) => (
                tonic::Code::Ok,
                Some(Report::from(response.into_inner())),
                None,
            ),
            Err(status) => {
                // tonic puts the transport's error (refused, reset) in the message; the
                // source chain repeats it, so it is only the fallback.
                let detail = match status.message() {
                    "" => std::error::Error::source(&status)
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    message => message.to_owned(),
                };
                let error = format!("{:?}: {detail}", status.code());
                (status.code(), None, Some(error))
            }
        };
        Ok(Call {
            target: backend.url().to_owned(),
            protocol: Protocol::Grpc,
            ok: status == tonic::Code::Ok && reply.as_ref().is_none_or(|r| r.ok),
            status: Some(status as u32),
            latency_ms: 0.0,
            error,
            banner: None,
            reply: reply.map(Box::new),
            body: None,
        })
    }

    /// Read the banner, send a line, expect it back.
    async fn tcp(&self, backend: &Backend, authority: &Authority) -> anyhow::Result<Call> {
        let mut conn = dial::tcp(self.proxy.as_ref(), authority.as_str()).await?;
        let banner = dial::read_line(&mut conn)
            .await
            .context("reading the banner")?;
        let ping = format!("ping from {}", self.user_agent);
        conn.get_mut()
            .write_all(format!("{ping}\n").as_bytes())
            .await
            .context("sending a line")?;
        let echoed = dial::read_line(&mut conn)
            .await
            .context("reading the echo")?;
        if echoed != ping {
            anyhow::bail!("sent {ping:?} but got back {echoed:?} (banner {banner:?})");
        }
        // Polite close: our FIN, the echo server's FIN back. Best effort.
        conn.get_mut().shutdown().await.ok();
        Ok(Call {
            target: backend.url().to_owned(),
            protocol: Protocol::Tcp,
            ok: true,
            status: None,
            latency_ms: 0.0,
            error: None,
            banner: Some(banner),
            reply: None,
            body: None,
        })
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
