//! The simulated proxies: each one a real discovery stream (`trellis.discovery.v1.Discovery/
//! Stream`) over its own mutual-TLS connection, opened as `trellis proxy` opens it
//! (`crates/trellis-proxy/src/grpc.rs` and `xds.rs`):
//!
//! - its own workload certificate, issued by the mesh CA for its SPIFFE ID; the control plane
//!   must prove `spiffe://<td>/ns/trellis-system/sa/trellis-control`; TLS 1.3, ALPN h2, no
//!   resumption, HTTP/2 PINGs every 15 s;
//! - one TCP+TLS connection per proxy, as a real proxy has (so the control plane pays for
//!   1,000 connections, their handshakes and their HTTP/2 state, not for a few multiplexed
//!   ones);
//! - Hello first; then every Config is checked and parsed as the proxy does it (UTF-8, a JSON
//!   object, the bootstrap's `identity` and `control` sections added, then the whole document
//!   through `ProxyConfig::from_yaml`, the validator of config files) and answered with an
//!   ACK (or a NACK with the reason) echoing its version and nonce.
//!
//! 1,000 real proxies parse on 1,000 machines' CPUs; here they share this machine's with the
//! control plane. So that a proxy busy parsing does not keep the others from reading their
//! streams (which would make the control plane look slow), parsing runs on blocking threads,
//! as many at once as there are cores, and each Config records when it arrived and how long
//! its parse took, beside when it was answered.
//!
//! What a real proxy does and these do not: swap the config into its routing state, and keep
//! it (each one here is dropped once parsed, to keep 1,000 configs out of this process).
//! Every Config, with when it arrived and when it was answered, goes to the [`Fleet`]'s
//! events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Endpoint;
use trellis_api::discovery::v1::discovery_client::DiscoveryClient;
use trellis_api::discovery::v1::{
    Ack, Config, Hello, Nack, ProxyMessage, control_message, proxy_message,
};
use trellis_model::ProxyConfig;

/// PINGs on the stream, as the proxy's.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// The largest Config taken off the wire, as the proxy's.
const MAX_MESSAGE: usize = 16 << 20;

/// One simulated proxy.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub index: usize,
    pub name: String,
    pub namespace: String,
    /// The SPIFFE ID of its certificate (added to each config as its `identity.id`).
    pub id: String,
    /// Its client TLS config: its certificate, and the control plane's identity to verify.
    pub tls: Arc<ClientConfig>,
}

/// What the proxies report.
#[derive(Debug)]
pub enum Event {
    /// The stream is open (TLS handshake done, Hello sent, response headers received).
    Connected {
        proxy: usize,
        at: Instant,
    },
    Config(Received),
    /// The stream ended or could not be opened.
    Ended {
        proxy: usize,
        error: String,
    },
}

/// One Config as a proxy received and answered it.
#[derive(Debug, Clone)]
pub struct Received {
    pub proxy: usize,
    pub version: u64,
    /// The size of `config_json`.
    pub bytes: usize,
    /// When the message was off the wire (decoded).
    pub received: Instant,
    /// How long checking and parsing it took (not the wait for a core).
    pub parse: Duration,
    /// When the ACK (or NACK) was handed to the stream.
    pub answered: Instant,
    /// The NACK's reason, if the config was refused.
    pub nack: Option<String>,
}

/// The running proxies.
#[derive(Debug)]
pub struct Fleet {
    events: mpsc::UnboundedReceiver<Event>,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Starts every proxy against the control plane at `control`, at most `concurrency`
    /// connecting at once.
    pub fn start(proxies: Vec<ProxySpec>, control: SocketAddr, concurrency: usize) -> Fleet {
        let (events_tx, events) = mpsc::unbounded_channel();
        let limits = Limits {
            connect: Semaphore::new(concurrency.max(1)),
            parse: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, usize::from),
            )),
        };
        let limits = Arc::new(limits);
        let mut tasks = JoinSet::new();
        for spec in proxies {
            tasks.spawn(run(
                Arc::new(spec),
                control,
                limits.clone(),
                events_tx.clone(),
            ));
        }
        Fleet { events, tasks }
    }

    /// The next event; None once every proxy has stopped.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Closes every stream.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// How many proxies connect at once, and parse at once.
#[derive(Debug)]
struct Limits {
    connect: Semaphore,
    parse: Arc<Semaphore>,
}

/// One proxy, until its stream ends.
async fn run(
    spec: Arc<ProxySpec>,
    control: SocketAddr,
    limits: Arc<Limits>,
    events: mpsc::UnboundedSender<Event>,
) {
    let proxy = spec.index;
    let error = match stream(spec, control, &limits, &events).await {
        Ok(()) => "the control plane closed the stream".to_owned(),
        Err(error) => format!("{error:#}"),
    };
    let _ = events.send(Event::Ended { proxy, error });
}

async fn stream(
    spec: Arc<ProxySpec>,
    control: SocketAddr,
    limits: &Limits,
    events: &mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let channel = {
        let _permit = limits.connect.acquire().await?;
        connect(control, spec.tls.clone())
            .await
            .with_context(|| format!("cannot connect to the control plane at {control}"))?
    };
    let (tx, mut rx) = mpsc::channel::<ProxyMessage>(4);
    let hello = Hello {
        node_name: spec.name.clone(),
        namespace: spec.namespace.clone(),
        applied_version: 0,
        admin_addr: String::new(),
    };
    tx.try_send(message(proxy_message::Message::Hello(hello)))?;
    let outbound = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut client = DiscoveryClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let mut inbound = client
        .stream(outbound)
        .await
        .context("the control plane refused the stream")?
        .into_inner();
    let _ = events.send(Event::Connected {
        proxy: spec.index,
        at: Instant::now(),
    });
    // The bootstrap's sections a push leaves out, as the proxy adds them before validating.
    let owned: Arc<str> = Arc::from(format!(
        r#""identity":{{"id":{},"bundle":"/etc/trellis/root-cert.pem","ca":"{control}","join_token_file":"/etc/trellis/token"}},"control":"{control}""#,
        Value::from(spec.id.as_str())
    ));
    // The config in force and its version: the base of a delta.
    let mut in_force: Option<(u64, Arc<ProxyConfig>)> = None;
    while let Some(pushed) = inbound.message().await? {
        let Some(control_message::Message::Config(config)) = pushed.message else {
            continue;
        };
        let received = Instant::now();
        let Config {
            version,
            nonce,
            config_json,
            delta,
        } = config;
        let bytes = match &delta {
            Some(d) => {
                d.services_json.iter().map(Vec::len).sum::<usize>()
                    + d.removed_services.iter().map(String::len).sum::<usize>()
            }
            None => config_json.len(),
        };
        let permit = limits.parse.clone().acquire_owned().await?;
        let (for_parse, owned_sections) = (spec.clone(), owned.clone());
        let base = in_force.clone();
        let (parse, applied) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = Instant::now();
            // A delta applies to the config in force, and the result is validated whole, as
            // the proxy does (`xds::with_delta`, then `merge`).
            let json = match delta {
                None => Ok(config_json),
                Some(delta) => match base {
                    Some((v, current)) if v == delta.base_version => {
                        trellis_model::apply_services_delta(
                            &current,
                            &delta.services_json,
                            &delta.removed_services,
                        )
                        .map_err(|e| e.to_string())
                    }
                    _ => Err(format!(
                        "a delta on v{}, but not in force",
                        delta.base_version
                    )),
                },
            };
            let applied = json.and_then(|json| apply(&for_parse, &owned_sections, version, &json));
            (started.elapsed(), applied)
        })
        .await?;
        let nack = match applied {
            Ok(config) => {
                in_force = Some((version, Arc::new(config)));
                None
            }
            Err(reason) => Some(reason),
        };
        let answer = match &nack {
            None => proxy_message::Message::Ack(Ack { version, nonce }),
            Some(reason) => proxy_message::Message::Nack(Nack {
                version,
                nonce,
                reason: reason.clone(),
            }),
        };
        tx.send(message(answer))
            .await
            .context("the stream closed before the answer")?;
        let _ = events.send(Event::Config(Received {
            proxy: spec.index,
            version,
            bytes,
            received,
            parse,
            answered: Instant::now(),
            nack,
        }));
    }
    Ok(())
}

/// Checks and parses a pushed config as the proxy does (`xds::merge`): the config, or the
/// reason to NACK.
fn apply(spec: &ProxySpec, owned: &str, version: u64, json: &[u8]) -> Result<ProxyConfig, String> {
    let text = std::str::from_utf8(json).map_err(|e| format!("config_json is not UTF-8: {e}"))?;
    let object: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|e| format!("config_json is not a JSON object: {e}"))?;
    let has = |section| object.contains_key(section);
    let document = if has("identity") || has("control") {
        text.to_owned()
    } else {
        let body = text.trim_end();
        let open = body.strip_suffix('}').unwrap_or(body);
        let comma = if object.is_empty() { "" } else { "," };
        format!("{open}{comma}{owned}}}")
    };
    let name = format!("control plane push v{version}");
    let config = ProxyConfig::from_yaml(&name, &document)
        .map_err(|errors| format!("invalid config:\n{errors}"))?;
    if config.node.name != spec.name || config.node.namespace != spec.namespace {
        return Err(format!(
            "the config is for node {}.{}, but this proxy is {}.{}",
            config.node.name, config.node.namespace, spec.name, spec.namespace
        ));
    }
    Ok(config)
}

/// A gRPC channel over our own TLS, as the proxy's `grpc::connect`.
async fn connect(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let connector = tower::service_fn(move |_: http::Uri| {
        let tls = tokio_rustls::TlsConnector::from(tls.clone());
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tls
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Endpoint::from_static("http://trellis-control")
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true)
        .connect_with_connector(connector)
        .await
}

fn message(message: proxy_message::Message) -> ProxyMessage {
    ProxyMessage {
        message: Some(message),
    }
}
