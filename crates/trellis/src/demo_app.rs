//! `trellis demo-app`: the small service the demo and the end-to-end tests run behind proxies.
//!
//! It speaks the three kinds of traffic a mesh carries, as a server and as a client:
//!
//! - **HTTP** on one port, HTTP/1.1 and HTTP/2 with prior knowledge (h2c); the routes are in
//!   [`routes`].
//! - **gRPC** on that same port: `trellis.demo.v1.Demo` (`Info`, `Echo`; see [`grpc`]) for
//!   requests with `content-type: application/grpc*`.
//! - **TCP** on an optional port (`--tcp`): a server-first protocol, a banner line
//!   (`trellis-demo NAME tcp`), then an echo of every byte until EOF.
//!
//! `GET /` (and `Demo/Info`) calls every `--backend` at once, each within `--timeout`, and
//! reports who answered and the outcome of each call, with the backend's own report nested
//! inside when it is a demo app too: curl the front of a chain of demo apps and you see the
//! whole call tree ([`report`]). Backends by scheme ([`backend`]): `http://HOST[:PORT]/PATH`
//! (a GET), `grpc://HOST:PORT` (`Demo/Info`), `tcp://HOST:PORT` (banner, then a line echoed).
//! With an explicit proxy (`--proxy`, else `HTTP_PROXY`), every call goes through it
//! ([`dial`]): HTTP in absolute form, gRPC as h2c to the proxy with the backend as
//! `:authority`, TCP through `CONNECT host:port`; without one, straight to the backend.
//!
//! ```text
//! $ trellis demo-app --name frontend --http 127.0.0.1:8080 \
//!     --backend http://reviews.test:9080/ --backend grpc://catalog.test:50051 \
//!     --proxy 127.0.0.1:15001
//! $ curl -s 127.0.0.1:8080/              # JSON; 200 when every call is ok, else 502
//! $ curl -s '127.0.0.1:8080/?format=text'
//! frontend v1: ok
//! ├─ http://reviews.test:9080/ → reviews v2: ok (HTTP 200, 1.9 ms)
//! └─ grpc://catalog.test:50051 → catalog v1: ok (gRPC Ok, 3.1 ms)
//!    └─ tcp://stock.test:7000: ok (banner "trellis-demo stock tcp", 1.2 ms)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod backend;
mod dial;
mod grpc;
mod report;
mod routes;

use backend::{Backend, Backends, ProxyAddr};
use report::Report;

/// How long SIGTERM waits for in-flight requests before the process exits anyway.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Flags of `trellis demo-app`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct DemoAppArgs {
    /// Service name, reported by `GET /` and in the TCP banner.
    #[arg(long)]
    pub(crate) name: String,
    /// Version label, reported by `GET /`.
    #[arg(long, default_value = "v1")]
    pub(crate) version: String,
    /// HTTP listen address (HTTP/1.1 and h2c on the same port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub(crate) http: SocketAddr,
    /// TCP listen address of the banner-then-echo service (off when absent).
    #[arg(long, value_name = "ADDR")]
    pub(crate) tcp: Option<SocketAddr>,
    /// Once bound, write `{"http": ADDR, "tcp": ADDR|null}` here (atomically).
    #[arg(long, value_name = "PATH")]
    pub(crate) ready_file: Option<PathBuf>,
    /// A service that `GET /` and `Demo/Info` call and report on (repeatable):
    /// `http://HOST[:PORT][/PATH]` (GET), `grpc://HOST:PORT` (`trellis.demo.v1.Demo/Info`) or
    /// `tcp://HOST:PORT` (read the banner line, send a line, expect it echoed).
    #[arg(long = "backend", value_name = "URL")]
    pub(crate) backends: Vec<String>,
    /// Time allowed for each backend call, connecting included. In a chain of demo apps, give
    /// the callers at the front longer than those behind them, so that a timeout deep down is
    /// reported by the app that saw it.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = trellis_model::parse_duration)]
    pub(crate) timeout: Duration,
    /// Explicit HTTP proxy for backend calls, `HOST:PORT` or `http://HOST:PORT`
    /// (default: the `HTTP_PROXY` or `http_proxy` environment variable).
    #[arg(long, value_name = "ADDR")]
    pub(crate) proxy: Option<String>,
}

/// Everything the demo app needs, already validated. Built from the flags and the proxy
/// environment variable in [`run`]; tests build it directly so they never touch process env.
#[derive(Debug, Clone)]
struct Config {
    name: Arc<str>,
    version: Arc<str>,
    http: SocketAddr,
    tcp: Option<SocketAddr>,
    backends: Vec<Backend>,
    proxy: Option<ProxyAddr>,
    /// Per backend call.
    timeout: Duration,
}

/// A running demo app: its bound addresses and the handle that stops it.
struct Bound {
    http: SocketAddr,
    tcp: Option<SocketAddr>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// What the HTTP routes and the gRPC service share: who we are and whom `GET /` calls.
#[derive(Debug)]
struct Service {
    name: Arc<str>,
    version: Arc<str>,
    backends: Backends,
}

/// Run the demo app until SIGTERM (drain, then exit) or SIGINT (stop now).
pub(crate) async fn run(args: DemoAppArgs) -> anyhow::Result<()> {
    let proxy_env = ["HTTP_PROXY", "http_proxy"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()));
    let config = Config::from_args(&args, proxy_env)?;
    tracing::info!(
        service.name = %config.name,
        service.version = %config.version,
        backends = ?config.backends.iter().map(|b| b.url()).collect::<Vec<_>>(),
        proxy = ?config.proxy.as_ref().map(|p| p.as_str()),
        timeout = ?config.timeout,
        "demo app starting"
    );

    let bound = Bound::bind(config).await?;
    if let Some(path) = &args.ready_file {
        write_ready_file(path, bound.http, bound.tcp)?;
    }
    tracing::info!(http.addr = %bound.http, tcp.addr = ?bound.tcp, "demo app listening");

    let grace = wait_for_signal().await?;
    bound.shutdown(grace).await;
    tracing::info!("demo app stopped");
    Ok(())
}

impl Config {
    /// Validate the flags; `proxy_env` is the proxy environment variable, used when `--proxy`
    /// is absent. Every invalid value is reported, not just the first.
    fn from_args(args: &DemoAppArgs, proxy_env: Option<String>) -> anyhow::Result<Self> {
        let mut errors = Vec::new();
        let mut backends = Vec::new();
        for url in &args.backends {
            match Backend::parse(url) {
                Ok(backend) => backends.push(backend),
                Err(e) => errors.push(format!("--backend {url:?}: {e}")),
            }
        }
        let (proxy_source, proxy_value) = match (&args.proxy, proxy_env) {
            (Some(flag), _) => ("--proxy", Some(flag.clone())),
            (None, env) => ("HTTP_PROXY", env),
        };
        let proxy = match proxy_value.map(|v| ProxyAddr::parse(&v).map_err(|e| (v, e))) {
            None => None,
            Some(Ok(proxy)) => Some(proxy),
            Some(Err((value, e))) => {
                errors.push(format!("{proxy_source} {value:?}: {e}"));
                None
            }
        };
        if !errors.is_empty() {
            anyhow::bail!("invalid demo-app configuration:\n  {}", errors.join("\n  "));
        }
        Ok(Self {
            name: args.name.as_str().into(),
            version: args.version.as_str().into(),
            http: args.http,
            tcp: args.tcp,
            backends,
            proxy,
            timeout: args.timeout,
        })
    }
}

impl Bound {
    /// Bind every listener (port 0 works) and start serving.
    async fn bind(config: Config) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();

        // HTTP: HTTP/1.1 and h2c on one port.
        let http_listener = TcpListener::bind(config.http)
            .await
            .with_context(|| format!("binding the HTTP port {} (is it in use?)", config.http))?;
        let http = http_listener.local_addr()?;

        // TCP: banner, then echo.
        let tcp_listener = match config.tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the TCP port {addr} (is it in use?)"))?,
            ),
            None => None,
        };
        let tcp = tcp_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;

        // Backend clients: connections are made on first use and kept.
        let user_agent = format!("trellis-demo/{} ({})", config.name, config.version);
        let backends = Backends::new(config.backends, config.proxy, config.timeout, user_agent);
        let service = Arc::new(Service {
            name: config.name,
            version: config.version,
            backends,
        });
        if let Some(listener) = tcp_listener {
            tasks.spawn(serve_tcp(
                listener,
                service.name.clone(),
                stop.clone(),
                tasks.clone(),
            ));
        }
        tasks.spawn(serve_http(
            http_listener,
            service,
            stop.clone(),
            tasks.clone(),
        ));
        Ok(Self {
            http,
            tcp,
            stop,
            tasks,
        })
    }

    /// Stop accepting, let in-flight HTTP requests finish for up to `grace`, close the rest.
    async fn shutdown(self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
            && !grace.is_zero()
        {
            tracing::warn!(grace = ?grace, "demo app: connections still open after the grace period; closing them");
        }
    }
}

impl Service {
    /// Call every backend (at once) and report.
    async fn report(&self) -> Report {
        Report::new(&self.name, &self.version, self.backends.call_all().await)
    }
}

/// Accept HTTP connections until `stop`; each connection drains gracefully on `stop`.
async fn serve_http(
    listener: TcpListener,
    service: Arc<Service>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually EMFILE or a connection reset before accept: keep serving.
                    tracing::warn!(error = %e, "demo app: accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let builder = builder.clone();
        let service = service.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let handler = service_fn(move |req| routes::handle(service.clone(), req));
            let conn = builder.serve_connection(TokioIo::new(stream), handler);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(src.addr = %peer, error = %e, "demo app: HTTP connection ended with an error");
            }
        });
    }
}

/// Accept TCP connections until `stop`: banner first, then echo until EOF.
async fn serve_tcp(
    listener: TcpListener,
    name: Arc<str>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "demo app: accepting a TCP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let banner = format!("trellis-demo {name} tcp\r\n");
        let stop = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                result = echo(stream, banner) => match result {
                    Ok(bytes) => tracing::debug!(src.addr = %peer, bytes, "demo app: TCP echo done"),
                    Err(e) => tracing::debug!(src.addr = %peer, error = %e, "demo app: TCP echo failed"),
                },
            }
        });
    }
}

/// Write the banner, echo every byte until the client's EOF, then close our side.
async fn echo(mut stream: TcpStream, banner: String) -> std::io::Result<u64> {
    stream.write_all(banner.as_bytes()).await?;
    let (mut rd, mut wr) = stream.split();
    let bytes = tokio::io::copy(&mut rd, &mut wr).await?;
    wr.shutdown().await?;
    Ok(bytes)
}

/// Write `{"http": ..., "tcp": ...}` to `path.tmp`, then rename it to `path`, so a reader never
/// sees a half-written file.
fn write_ready_file(path: &Path, http: SocketAddr, tcp: Option<SocketAddr>) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "http": http.to_string(),
        "tcp": tcp.map(|a| a.to_string()),
    });
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{body}\n"))
        .with_context(|| format!("writing the ready file {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Wait for SIGTERM or SIGINT; returns how long to let in-flight requests finish.
async fn wait_for_signal() -> anyhow::Result<Duration> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {
            tracing::info!(grace = ?DRAIN_GRACE, "SIGTERM: draining");
            Ok(DRAIN_GRACE)
        }
        _ = int.recv() => {
            tracing::info!("SIGINT: stopping");
            Ok(Duration::ZERO)
        }
    }
}

#[cfg(test)]
mod tests;
