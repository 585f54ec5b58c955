//! The discovery service, `trellis.discovery.v1.Discovery`: one stream per proxy, over which
//! the proxy gets its config from the [`ConfigStore`] and answers ACK or NACK.
//!
//! A stream, top to bottom ([`DiscoveryService::stream`], then [`ProxyStream::run`]):
//! 1. The proxy is who its client certificate says (verified again now, against the current
//!    bundle): no certificate, UNAUTHENTICATED.
//! 2. Its first message is a Hello naming its node; the namespace must be the certificate's
//!    (PERMISSION_DENIED otherwise). The certificate proves the namespace and service account,
//!    not the node name: any workload of a namespace may claim any node name in it.
//! 3. From then on: whenever the published configs change (and at once), if this proxy's
//!    config differs from what it was last sent, send it as a Config with the version and a
//!    fresh nonce: as a delta of the Services that changed when the proxy has ACKed the last
//!    config sent and nothing but Services changed, else whole (and whole again at once if a
//!    delta is NACKed); record ACKs and NACKs ([`Tracker`]) on the [`StatusBoard`] and in the
//!    metrics.
//! 4. The stream ends when the proxy goes away, or at drain (the proxy then reconnects to
//!    whichever control plane answers next).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{Instrument as _, debug, info, info_span, warn};
use trellis_api::discovery::v1::discovery_server::{Discovery, DiscoveryServer};
use trellis_api::discovery::v1::{
    Ack, Config, ControlMessage, Delta, Hello, Nack, ProxyMessage, control_message, proxy_message,
};
use trellis_identity::{CertificateAuthority, PeerRole, SpiffeId, VerifyError};
use trellis_runtime::DrainWatcher;

use crate::metrics::Metrics;
use crate::push::{ConfigStore, Generation, NodeKey, Version, WireConfig};
use crate::status::{Answer, Nonce, ProxyStatus, StatusBoard, StreamId, Tracker};
use crate::tls::Peer;

/// How long a new stream has to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Configs queued for a proxy that is slow to read them.
const SEND_QUEUE: usize = 4;

/// The service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ca: Arc<CertificateAuthority>,
    store: ConfigStore,
    board: StatusBoard,
    metrics: Metrics,
    /// Held by the service for as long as the gRPC server runs (which holds a watcher
    /// already); each stream takes a clone and ends at drain.
    drain: DrainWatcher,
}

/// Why a stream is refused before it starts.
#[derive(Debug, thiserror::Error)]
pub enum StreamRefusal {
    #[error(
        "no client certificate: the discovery stream needs the proxy's workload certificate \
         (mutual TLS)"
    )]
    NoCertificate,
    #[error("client {0}")]
    Certificate(Box<VerifyError>),
    #[error("the stream ended before its Hello")]
    NoHello,
    #[error("no Hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("the first message must be a Hello")]
    NotHello,
    #[error("Hello.node_name is empty")]
    NoNodeName,
    #[error(
        "Hello says namespace {claimed:?}, but the certificate is for {identity} (namespace {})",
        identity.namespace()
    )]
    WrongNamespace { claimed: String, identity: SpiffeId },
}

/// The response stream tonic sends to the proxy.
type ConfigStream = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send>>;

/// One proxy's stream, after its Hello.
struct ProxyStream {
    service: Arc<Inner>,
    status: ProxyStatus,
    stream_id: StreamId,
    tracker: Tracker,
    /// The config last sent (a generation that leaves it as it is sends nothing), and whether
    /// it went as a delta.
    sent: Option<(Version, Arc<WireConfig>, bool)>,
    /// The config the proxy has ACKed on this stream: the base of a delta.
    acked: Option<Arc<WireConfig>>,
}

impl DiscoveryService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        store: ConfigStore,
        board: StatusBoard,
        metrics: Metrics,
        drain: DrainWatcher,
    ) -> DiscoveryService {
        DiscoveryService {
            inner: Arc::new(Inner {
                ca,
                store,
                board,
                metrics,
                drain,
            }),
        }
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> DiscoveryServer<DiscoveryService> {
        // A config may be large (every service a proxy may reach); the proxy bounds it too.
        DiscoveryServer::new(self).max_decoding_message_size(1 << 20)
    }

    /// Who the peer is, by its client certificate, verified now.
    pub fn authenticate(&self, peer: Option<&Peer>) -> Result<SpiffeId, StreamRefusal> {
        let chain = peer
            .and_then(|p| p.chain.as_deref())
            .ok_or(StreamRefusal::NoCertificate)?;
        let bundle = self.inner.ca.bundle();
        trellis_identity::verify_chain(bundle, chain, SystemTime::now(), PeerRole::Client)
            .map_err(|e| StreamRefusal::Certificate(Box::new(e)))
    }
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = ConfigStream;

    async fn stream(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<ConfigStream>, Status> {
        let peer = request.extensions().get::<Peer>().cloned();
        let addr = peer
            .as_ref()
            .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |p| p.addr);
        let refuse = |refusal: StreamRefusal| {
            warn!(src.addr = %addr, error = %refusal, "discovery stream refused");
            Status::new(refusal.code(), refusal.to_string())
        };
        let identity = self.authenticate(peer.as_ref()).map_err(refuse)?;
        let mut inbound = request.into_inner();
        let hello = first_hello(&mut inbound, &identity).await.map_err(refuse)?;

        let now = SystemTime::now();
        let status = ProxyStatus {
            node: NodeKey::new(&hello.namespace, &hello.node_name),
            identity,
            addr,
            admin: hello.admin_addr.parse().ok(),
            connected: true,
            connected_since: now,
            hello_version: hello.applied_version,
            sent: None,
            acked: None,
            last_nack: None,
            last_latency: None,
            waiting: true,
            last_seen: now,
        };
        let span = info_span!("discovery", proxy = %status.node, src.addr = %addr);
        let (stream_id, replaced) = self.inner.board.connect(status.clone());
        if let Some(old) = replaced {
            warn!(parent: &span, other.addr = %old.addr, "another proxy was connected under this node name; the newer stream wins");
        }
        info!(parent: &span, identity = %status.identity, applied_version = hello.applied_version, "proxy connected");
        self.inner.metrics.connected(1);

        let (tx, mut rx) = mpsc::channel(SEND_QUEUE);
        let stream = ProxyStream {
            service: self.inner.clone(),
            status,
            stream_id,
            tracker: Tracker::default(),
            sent: None,
            acked: None,
        };
        tokio::spawn(stream.run(inbound, tx).instrument(span));
        let out = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(out)))
    }
}

impl ProxyStream {
    /// Pushes and answers until the proxy goes away or drain starts.
    async fn run(
        mut self,
        mut inbound: Streaming<ProxyMessage>,
        tx: mpsc::Sender<Result<ControlMessage, Status>>,
    ) {
        let drain = self.service.drain.clone();
        let mut published = self.service.store.subscribe();
        let why = loop {
            tokio::select! {
                biased;
                _ = drain.signaled() => break "the control plane is shutting down",
                () = tx.closed() => break "the proxy went away",
                changed = published.changed() => {
                    if changed.is_err() {
                        break "the config store is gone";
                    }
                    let generation = published.borrow_and_update().clone();
                    let Some(config) = self.next_config(&generation) else { continue };
                    tokio::select! {
                        biased;
                        _ = drain.signaled() => break "the control plane is shutting down",
                        sent = tx.send(Ok(config)) => if sent.is_err() { break "the proxy went away" },
                    }
                }
                message = inbound.next() => match message {
                    Some(Ok(message)) => {
                        let Some(resend) = self.on_message(message) else { continue };
                        tokio::select! {
                            biased;
                            _ = drain.signaled() => break "the control plane is shutting down",
                            sent = tx.send(Ok(resend)) => if sent.is_err() { break "the proxy went away" },
                        }
                    }
                    Some(Err(status)) => {
                        debug!(code = ?status.code(), message = status.message(), "discovery stream error");
                        break "the stream failed";
                    }
                    None => break "the proxy closed the stream",
                },
            }
        };
        let now = SystemTime::now();
        self.status.connected = false;
        self.status.last_seen = now;
        self.service.board.update(self.stream_id, &self.status);
        self.service.metrics.connected(-1);
        info!(reason = why, acked = ?self.tracker.acked_version(), "proxy disconnected");
    }

    /// The Config to send for `generation`, if this proxy's config changed; records it as sent.
    fn next_config(&mut self, generation: &Generation) -> Option<ControlMessage> {
        let Some(config) = generation.get(&self.status.node) else {
            if !self.status.waiting {
                self.status.waiting = true;
                self.service.board.update(self.stream_id, &self.status);
            }
            if self.tracker.sent_version().is_none() {
                info!(version = %generation.version, "no config for this proxy yet; it waits");
            }
            return None;
        };
        self.status.waiting = false;
        if self
            .sent
            .as_ref()
            .is_some_and(|(_, sent, _)| sent.same_as(config))
        {
            self.service.board.update(self.stream_id, &self.status);
            return None;
        }
        Some(self.send(generation.version, config.clone(), true))
    }

    /// Records and builds the Config for `config` at `version`: a delta when `may_delta`, the
    /// proxy has ACKed the last config sent, and only Services changed; else the whole config.
    fn send(
        &mut self,
        version: Version,
        config: Arc<WireConfig>,
        may_delta: bool,
    ) -> ControlMessage {
        let in_force = self.acked.as_ref().filter(|acked| {
            may_delta
                && self
                    .sent
                    .as_ref()
                    .is_some_and(|(_, sent, _)| Arc::ptr_eq(sent, acked))
        });
        let base = self.tracker.acked_version();
        let delta = in_force
            .zip(base)
            .and_then(|(acked, base)| Some((config.delta_from(acked)?, base)));
        let nonce = Nonce::fresh();
        let (body, bytes, is_delta) = match delta {
            Some((delta, base)) => {
                let bytes = delta.len();
                debug!(%version, %nonce, base = %base, upserted = delta.upserted.len(), removed = delta.removed.len(), bytes, "sending config (delta)");
                let delta = Delta {
                    base_version: base.0,
                    services_json: delta.upserted.iter().map(|s| s.json.to_vec()).collect(),
                    removed_services: delta.removed.iter().map(|k| k.to_string()).collect(),
                };
                ((Vec::new(), Some(delta)), bytes, true)
            }
            None => {
                let json = config.full_json();
                let bytes = json.len();
                debug!(%version, %nonce, bytes, "sending config");
                ((json, None), bytes, false)
            }
        };
        let message = ControlMessage {
            message: Some(control_message::Message::Config(Config {
                version: version.0,
                nonce: nonce.as_str().to_owned(),
                config_json: body.0,
                delta: body.1,
            })),
        };
        self.tracker
            .sent(version, nonce, tokio::time::Instant::now());
        self.sent = Some((version, config, is_delta));
        self.status.record(&self.tracker);
        self.service.board.update(self.stream_id, &self.status);
        self.service.metrics.pushed(is_delta, bytes);
        message
    }

    /// Records an answer; a NACKed delta is answered at once with the whole config.
    fn on_message(&mut self, message: ProxyMessage) -> Option<ControlMessage> {
        self.status.last_seen = SystemTime::now();
        let mut resend = None;
        match message.message {
            Some(proxy_message::Message::Ack(Ack { version, nonce })) => {
                match self
                    .tracker
                    .ack(version, &nonce, tokio::time::Instant::now())
                {
                    Answer::Applied { version, latency } => {
                        self.service.metrics.applied(latency);
                        self.acked = self.sent.as_ref().map(|(_, config, _)| config.clone());
                        info!(%version, ?latency, "config applied (ACK)");
                    }
                    _ => debug!(version, %nonce, "stale ACK ignored"),
                }
            }
            Some(proxy_message::Message::Nack(Nack {
                version,
                nonce,
                reason,
            })) => match self
                .tracker
                .nack(version, &nonce, reason.clone(), SystemTime::now())
            {
                Answer::Refused { version } => {
                    self.service.metrics.nacked();
                    match self.sent.clone() {
                        Some((sent_version, config, true)) => {
                            warn!(%version, %reason, "delta refused by the proxy (NACK); sending the whole config");
                            resend = Some(self.send(sent_version, config, false));
                        }
                        _ => {
                            warn!(%version, %reason, "config refused by the proxy (NACK); it keeps its previous config")
                        }
                    }
                }
                _ => debug!(version, %nonce, "stale NACK ignored"),
            },
            Some(proxy_message::Message::Hello(_)) => {
                debug!("a second Hello on one stream is ignored");
            }
            None => debug!("an empty message is ignored"),
        }
        self.status.record(&self.tracker);
        self.service.board.update(self.stream_id, &self.status);
        resend
    }
}

impl StreamRefusal {
    /// The gRPC status code.
    pub fn code(&self) -> Code {
        match self {
            StreamRefusal::NoCertificate | StreamRefusal::Certificate(_) => Code::Unauthenticated,
            StreamRefusal::WrongNamespace { .. } => Code::PermissionDenied,
            StreamRefusal::HelloTimeout(_) => Code::DeadlineExceeded,
            StreamRefusal::NoHello | StreamRefusal::NotHello | StreamRefusal::NoNodeName => {
                Code::InvalidArgument
            }
        }
    }
}

/// Reads the stream's first message: a Hello whose namespace is `identity`'s.
async fn first_hello(
    inbound: &mut Streaming<ProxyMessage>,
    identity: &SpiffeId,
) -> Result<Hello, StreamRefusal> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
        .await
        .map_err(|_| StreamRefusal::HelloTimeout(HELLO_TIMEOUT))?;
    let hello = match first {
        Some(Ok(ProxyMessage {
            message: Some(proxy_message::Message::Hello(hello)),
        })) => hello,
        Some(Ok(_)) => return Err(StreamRefusal::NotHello),
        Some(Err(_)) | None => return Err(StreamRefusal::NoHello),
    };
    if hello.node_name.trim().is_empty() {
        return Err(StreamRefusal::NoNodeName);
    }
    if hello.namespace != identity.namespace() {
        return Err(StreamRefusal::WrongNamespace {
            claimed: hello.namespace,
            identity: identity.clone(),
        });
    }
    Ok(hello)
}

#[cfg(test)]
mod tests;
