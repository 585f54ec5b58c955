//! Wiring: one function that builds a whole control plane from its config.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{info, warn};
use trellis_identity::{CaError, CertError, CertificateAuthority, SpiffeId, SpiffeIdError, human};
use trellis_model::resources::{CompileOptions, WorkloadProxy};
use trellis_runtime::{
    Admin, DrainOutcome, DrainTrigger, LogHandle, Readiness, ShutdownKind, admin,
};

use crate::ca::{self, CaService};
use crate::discovery::DiscoveryService;
use crate::metrics::{self, Metrics};
use crate::push::{self, ConfigStore, NodeKey};
use crate::sources::{LoadError, ResourceDir, SourceStatus};
use crate::status::StatusBoard;
use crate::tls::{self, OwnCertError};
use crate::token::{JoinTokenKey, TokenKeyError};

/// Everything `trellis control` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The CA directory (`trellis ca init --dir`); `join-token.key` is kept there too.
    pub ca_dir: PathBuf,
    /// The trust domain of a plug-in CA whose certificate names none.
    pub trust_domain: Option<String>,
    pub listen: ListenConfig,
    pub ca: ca::Config,
    /// The directory of resources to compile and push (`--resources`); see
    /// [`crate::sources`]. None: the store starts empty and proxies wait.
    pub resources: Option<PathBuf>,
    /// Sidecar addresses for Workloads whose resource names none (`trellis up`).
    pub sidecars: BTreeMap<NodeKey, WorkloadProxy>,
    /// Resources of the caller's, read with the directory's as `(name, text)` (`trellis up`).
    pub extra_resources: Vec<(String, String)>,
    /// How pushes are batched.
    pub push: push::Config,
    /// How long SIGTERM waits for open connections.
    pub drain_grace: Duration,
}

/// Where the control plane listens.
#[derive(Debug, Clone, Copy)]
pub struct ListenConfig {
    /// gRPC over TLS: the signing service and discovery (config push). Istio's 15010.
    pub grpc: SocketAddr,
    /// Admin HTTP: `/ready`, `/live`, `/metrics`, `/logging`, `/debug/proxies`. Istio's 15014.
    pub admin: SocketAddr,
}

/// A running control plane: where it listens, who it is, and the handle that stops it.
#[derive(Debug)]
pub struct Bound {
    pub addrs: BoundAddrs,
    /// The identity the gRPC port presents.
    pub identity: SpiffeId,
    pub readiness: Readiness,
    /// The configs pushed to proxies: whoever compiles them `set`s them here.
    pub store: ConfigStore,
    /// Every proxy's sync state (`/debug/proxies`).
    pub board: StatusBoard,
    /// The resources in force and the last change refused.
    pub source: SourceStatus,
    trigger: DrainTrigger,
}

/// The addresses the listeners actually bound (port 0 resolved).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BoundAddrs {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

/// Config values that cannot work, all of them at once.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// One config value that cannot work.
#[derive(Debug)]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

/// Why a control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid configuration:\n{0}")]
    Config(ConfigErrors),
    #[error("cannot load the CA: {0}")]
    Ca(Box<CaError>),
    #[error("join token key: {0}")]
    TokenKey(#[from] TokenKeyError),
    #[error("the CA's trust domain gives no valid control plane identity: {0}")]
    Identity(SpiffeIdError),
    #[error("cannot issue the control plane's own certificate: {0}")]
    OwnCert(OwnCertError),
    #[error("cannot build the gRPC port's TLS configuration: {0}")]
    Tls(CertError),
    #[error("{}", .0.lines().join("\n"))]
    Resources(LoadError),
    #[error(
        "cannot listen on {addr} for the {listener} port: {source} (is another control plane running there?)"
    )]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Default for ListenConfig {
    fn default() -> ListenConfig {
        ListenConfig {
            grpc: SocketAddr::from(([127, 0, 0, 1], 15010)),
            admin: SocketAddr::from(([127, 0, 0, 1], 15014)),
        }
    }
}

impl Config {
    /// The defaults for a CA directory: ports 15010 and 15014 on loopback, 24 h certificates,
    /// 10 s drain.
    pub fn new(ca_dir: impl Into<PathBuf>) -> Config {
        Config {
            ca_dir: ca_dir.into(),
            trust_domain: None,
            listen: ListenConfig::default(),
            ca: ca::Config::default(),
            resources: None,
            sidecars: BTreeMap::new(),
            extra_resources: Vec::new(),
            push: push::Config::default(),
            drain_grace: Duration::from_secs(10),
        }
    }

    /// Every value that cannot work, or `Ok`.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, name, value: String, reason: &str| {
            if !ok {
                errors.push(ConfigError {
                    name,
                    value,
                    reason: reason.to_owned(),
                });
            }
        };
        let ttl = |d: Duration| human::duration(d);
        check(
            self.ca.default_ttl >= Duration::from_secs(1),
            "--cert-ttl",
            ttl(self.ca.default_ttl),
            "a certificate must live at least 1s",
        );
        check(
            self.ca.max_ttl >= self.ca.default_ttl,
            "--max-cert-ttl",
            ttl(self.ca.max_ttl),
            "the maximum lifetime cannot be shorter than the default (--cert-ttl)",
        );
        check(
            self.listen.grpc != self.listen.admin || self.listen.grpc.port() == 0,
            "--admin",
            self.listen.admin.to_string(),
            "the admin port cannot be the gRPC port",
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Load the CA, bind every listener, start every task, and report ready.
pub async fn build(config: Config, log: LogHandle) -> Result<Bound, BuildError> {
    config.validate().map_err(BuildError::Config)?;

    // The CA and the join token key (made on first start).
    let ca = match &config.trust_domain {
        Some(domain) => CertificateAuthority::load_for(&config.ca_dir, domain),
        None => CertificateAuthority::load(&config.ca_dir),
    }
    .map_err(|e| BuildError::Ca(Box::new(e)))?;
    let ca = Arc::new(ca);
    let (tokens, created) = JoinTokenKey::load_or_create(&config.ca_dir)?;
    if created {
        info!(path = ?tokens.path(), "created the join token key");
    }

    // Our own certificate, from our own CA, for the gRPC port.
    let identity = tls::control_identity(ca.trust_domain()).map_err(BuildError::Identity)?;
    let own_ttl = config.ca.default_ttl;
    let creds = tls::own_credentials(&ca, &identity, own_ttl).map_err(BuildError::OwnCert)?;
    let tls_config = tls::server_config(&creds).map_err(BuildError::Tls)?;

    // The resources, read, validated and compiled before anything runs.
    let resources = match &config.resources {
        Some(path) => {
            let options = CompileOptions {
                trust_domain: ca.trust_domain().to_owned(),
                ..CompileOptions::default()
            };
            let dir = ResourceDir::new(path, options)
                .with_sidecars(config.sidecars.clone())
                .with_extra(config.extra_resources.clone());
            let (seen, loaded) = dir.load();
            let compiled = loaded.map_err(BuildError::Resources)?;
            Some((dir, seen, compiled))
        }
        None => None,
    };

    // Bind everything first, so that a port conflict fails the start before anything runs.
    let grpc_listener = bind("grpc", config.listen.grpc).await?;
    let admin_listener = bind("admin", config.listen.admin).await?;
    let addrs = BoundAddrs {
        grpc: local_addr(&grpc_listener, "grpc", config.listen.grpc)?,
        admin: local_addr(&admin_listener, "admin", config.listen.admin)?,
    };

    let metrics = Metrics::new();
    let (trigger, drain) = trellis_runtime::drain::new();
    let readiness = Readiness::new();

    // Config push: the store the streams read, fed by the resources directory (polled).
    let store = ConfigStore::new(config.push);
    let board = StatusBoard::new();
    let source = SourceStatus::default();
    if let Some((dir, seen, compiled)) = resources {
        dir.apply(compiled, &store, &source);
        tokio::spawn(dir.watch(
            store.clone(),
            metrics.clone(),
            source.clone(),
            seen,
            drain.clone(),
        ));
    }

    // Admin: health, metrics, log level, every proxy's sync state.
    let admin = {
        let metrics = metrics.clone();
        let (store, board, source) = (store.clone(), board.clone(), source.clone());
        Admin::new(readiness.clone(), log)
            .route("/metrics", move |_| {
                admin::response(StatusCode::OK, metrics::CONTENT_TYPE, metrics.encode())
            })
            .route("/debug/proxies", move |_| {
                let mut json = board.to_json(&store.published(), SystemTime::now());
                json["config"] = source.to_json();
                admin::response(StatusCode::OK, admin::JSON, json.to_string())
            })
    };
    tokio::spawn(admin.serve(admin_listener, drain.clone()));

    // gRPC over TLS: handshakes off the accept loop, then tonic: the signing service and
    // discovery. The task holds a watcher until tonic has finished its open connections, so
    // drain waits for them; discovery streams end at drain (the proxies reconnect elsewhere).
    // HTTP/2 PINGs find proxies that vanished without closing their streams.
    let service = CaService::new(ca.clone(), tokens, config.ca, metrics.clone());
    let discovery = DiscoveryService::new(
        ca.clone(),
        store.clone(),
        board.clone(),
        metrics.clone(),
        drain.clone(),
    );
    let incoming = tls::incoming(grpc_listener, tls_config, drain.clone());
    let server_drain = drain.clone();
    tokio::spawn(async move {
        let signal = server_drain.clone();
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(service.into_server())
            .add_service(discovery.into_server())
            .serve_with_incoming_shutdown(incoming, async move { signal.signaled().await })
            .await;
        if let Err(error) = served {
            warn!(%error, "the gRPC server stopped with an error");
        }
        drop(server_drain);
    });

    // Our own certificate, renewed at half life.
    tokio::spawn(tls::renew_own_cert(
        ca.clone(),
        creds.clone(),
        own_ttl,
        drain.clone(),
    ));

    readiness.set_ready();
    info!(
        grpc = %addrs.grpc,
        admin = %addrs.admin,
        identity = %identity,
        trust_domain = ca.trust_domain(),
        bundle = %ca.bundle(),
        signing = ca.signing_name(),
        cert_ttl = %human::duration(config.ca.default_ttl),
        max_cert_ttl = %human::duration(config.ca.max_ttl),
        "control plane ready"
    );
    Ok(Bound {
        addrs,
        identity,
        readiness,
        store,
        board,
        source,
        trigger,
    })
}

impl Bound {
    /// Stop: `Drain` stops accepting and lets open connections finish within `grace`;
    /// `Fast` stops at once.
    pub async fn shutdown(self, kind: ShutdownKind, grace: Duration) -> DrainOutcome {
        match kind {
            ShutdownKind::Drain => self.trigger.drain(grace).await,
            ShutdownKind::Fast => {
                let remaining = self.trigger.abort();
                DrainOutcome::TimedOut { remaining }
            }
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {} = {}: {}", e.name, e.value, e.reason)?;
        }
        Ok(())
    }
}

async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, BuildError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BuildError::Bind {
            listener,
            addr,
            source,
        })
}

fn local_addr(
    l: &TcpListener,
    listener: &'static str,
    addr: SocketAddr,
) -> Result<SocketAddr, BuildError> {
    l.local_addr().map_err(|source| BuildError::Bind {
        listener,
        addr,
        source,
    })
}
