//! Wiring: one function that builds a whole proxy from its config.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use trellis_model::ProxyConfig;
use trellis_runtime::{
    Admin, DrainOutcome, DrainTrigger, LogHandle, Readiness, ShutdownKind, admin,
};

use crate::forward::Upstreams;
use crate::inbound::Inbound;
use crate::metrics::{self, Metrics};
use crate::outbound::{Entry, Outbound};
use crate::serve::accept_loop;
use crate::state::State;
use crate::xds::Discovery;

/// A running proxy: where it listens, and the handle that stops it.
#[derive(Debug)]
pub struct Bound {
    pub addrs: BoundAddrs,
    pub readiness: Readiness,
    trigger: DrainTrigger,
}

/// The addresses the listeners actually bound (port 0 resolved).
#[derive(Debug, Clone, Serialize)]
pub struct BoundAddrs {
    pub admin: SocketAddr,
    pub outbound: Option<SocketAddr>,
    pub outbound_transparent: Option<SocketAddr>,
    pub inbound: Option<SocketAddr>,
    pub mesh: Option<SocketAddr>,
    /// Each ingress listener, in the config's order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<SocketAddr>,
}

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("no identity: {0}")]
    Identity(Box<crate::identity::IdentityError>),
    #[error("cannot build the mesh TLS config: {0}")]
    Tls(#[from] trellis_identity::CertError),
    #[error(
        "`control` is set but there is no identity: the control plane knows proxies by their \
         certificate (add an `identity` section)"
    )]
    ControlWithoutIdentity,
    #[error("the discovery client stopped before the first config arrived")]
    Discovery,
    #[error("the config's routes cannot be used: {0}")]
    Routes(#[from] crate::route::RouteError),
    #[error(
        "cannot listen on {addr} for the {listener} listener: {source} (is another proxy running there?)"
    )]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Bind every listener, start every task, and report ready. With `control` set, this waits
/// (retrying) until the control plane's first config has been applied.
pub async fn build(config: ProxyConfig, log: LogHandle) -> Result<Bound, BuildError> {
    let listeners = config.listeners.clone();
    let connect_timeout = config.timeouts.connect;
    let identity = config.identity.clone();
    let control = config.control;
    let bootstrap = Arc::new(config.clone());
    let state = Arc::new(State::new(config)?);
    let (applied, _) = watch::channel(None::<u64>);
    let metrics = Metrics::new();
    let (trigger, drain) = trellis_runtime::drain::new();
    let readiness = Readiness::new();

    // Bind everything first, so that a port conflict fails the start before anything runs.
    let admin_listener = bind("admin", listeners.admin).await?;
    let outbound_listener = bind_opt("outbound", listeners.outbound).await?;
    let transparent_listener =
        bind_opt("outbound_transparent", listeners.outbound_transparent).await?;
    let inbound_listener = bind_opt("inbound", listeners.inbound).await?;
    let mesh_listener = bind_opt("mesh", listeners.mesh).await?;
    let mut ingress_listeners = Vec::with_capacity(listeners.ingress.len());
    for ingress in &listeners.ingress {
        let listener = bind("ingress", ingress.address).await?;
        let addr = local_addr(&listener, "ingress", ingress.address)?;
        ingress_listeners.push((listener, addr, Arc::<str>::from(ingress.to.as_str())));
    }
    let addrs = BoundAddrs {
        admin: local_addr(&admin_listener, "admin", listeners.admin)?,
        outbound: opt_addr(&outbound_listener, "outbound")?,
        outbound_transparent: opt_addr(&transparent_listener, "outbound_transparent")?,
        inbound: opt_addr(&inbound_listener, "inbound")?,
        mesh: opt_addr(&mesh_listener, "mesh")?,
        ingress: ingress_listeners.iter().map(|(_, addr, _)| *addr).collect(),
    };

    // Admin: health, metrics, the config in force (and its version from the control plane),
    // log level.
    let admin = {
        let metrics = metrics.clone();
        let state = state.clone();
        let bound = addrs.clone();
        Admin::new(readiness.clone(), log)
            .route("/metrics", move |_| {
                admin::response(StatusCode::OK, metrics::CONTENT_TYPE, metrics.encode())
            })
            .route("/config_dump", move |_| {
                // One snapshot: the config and its version always match.
                let snapshot = state.load();
                let dump = serde_json::json!({
                    "bound": bound,
                    "applied_version": snapshot.version,
                    "config": &*snapshot.config,
                });
                admin::response(StatusCode::OK, "application/json", dump.to_string())
            })
    };
    tokio::spawn(admin.serve(admin_listener, drain.clone()));

    // Identity: the proxy serves nothing on the mesh without its certificate, and is not ready
    // until it has one (the admin server above answers /ready with 503 meanwhile).
    let creds = match &identity {
        Some(identity) => Some(
            crate::identity::obtain(identity)
                .await
                .map_err(|e| BuildError::Identity(Box::new(e)))?,
        ),
        None => None,
    };
    let tls = match &creds {
        Some(creds) => Some(Arc::new(crate::mtls::MeshTls::new(creds.clone())?)),
        None => None,
    };

    // Config from the control plane, when the bootstrap names one: nothing is accepted and the
    // proxy is not ready until the first config has been applied (connections that arrive
    // meanwhile wait in the listeners' backlogs). The client retries until it gets one.
    if let Some(control) = control {
        let creds = creds.ok_or(BuildError::ControlWithoutIdentity)?;
        let control_id = crate::identity::control_identity(&creds.id())
            .map_err(|e| BuildError::Identity(Box::new(e)))?;
        let mut first = applied.subscribe();
        let discovery = Discovery {
            control,
            control_id,
            creds,
            bootstrap,
            state: state.clone(),
            admin: addrs.admin,
            applied,
        };
        tracing::info!(%control, "waiting for the first config from the control plane");
        tokio::spawn(discovery.run(drain.clone()));
        first
            .wait_for(Option::is_some)
            .await
            .map_err(|_| BuildError::Discovery)?;
    }

    // Connections upstream (peer proxies, apps, passthrough destinations), shared by both sides.
    let upstreams = Arc::new(Upstreams::new(connect_timeout, tls.clone()));
    let own = [addrs.admin]
        .into_iter()
        .chain(addrs.outbound)
        .chain(addrs.outbound_transparent)
        .chain(addrs.inbound)
        .chain(addrs.mesh)
        .chain(addrs.ingress.iter().copied())
        .collect();
    let outbound = Arc::new(Outbound::new(
        state.clone(),
        upstreams.clone(),
        metrics.clone(),
        own,
    ));
    let inbound = Arc::new(Inbound::new(state.clone(), upstreams, metrics.clone(), tls));

    // Outbound: the explicit proxy and the transparent capture listener.
    if let Some(listener) = outbound_listener {
        let outbound = outbound.clone();
        tokio::spawn(accept_loop(
            listener,
            "outbound",
            drain.clone(),
            move |s, c, d| outbound.clone().serve(s, c, d, Entry::Explicit),
        ));
    }
    if let Some(listener) = transparent_listener {
        let outbound = outbound.clone();
        tokio::spawn(accept_loop(
            listener,
            "outbound_transparent",
            drain.clone(),
            move |s, c, d| outbound.clone().serve(s, c, d, Entry::Transparent),
        ));
    }

    // Ingress: plain HTTP from outside the mesh, each listener to its one service.
    for (listener, _, to) in ingress_listeners {
        let outbound = outbound.clone();
        tokio::spawn(accept_loop(
            listener,
            "ingress",
            drain.clone(),
            move |s, c, d| outbound.clone().serve(s, c, d, Entry::Ingress(to.clone())),
        ));
    }

    // Inbound: the mesh transport from peer proxies, and captured plain clients.
    if let Some(listener) = mesh_listener {
        let inbound = inbound.clone();
        tokio::spawn(accept_loop(
            listener,
            "mesh",
            drain.clone(),
            move |s, c, d| inbound.clone().serve_mesh(s, c, d),
        ));
    }
    if let Some(listener) = inbound_listener {
        tokio::spawn(accept_loop(
            listener,
            "inbound",
            drain.clone(),
            move |s, c, d| inbound.clone().serve_captured(s, c, d),
        ));
    }

    tokio::spawn(heartbeat(drain.clone()));

    // Listeners bound, identity obtained, config applied: ready.
    readiness.set_ready();
    tracing::info!(
        admin = %addrs.admin,
        outbound = ?addrs.outbound,
        outbound_transparent = ?addrs.outbound_transparent,
        inbound = ?addrs.inbound,
        mesh = ?addrs.mesh,
        ingress = ?addrs.ingress,
        "proxy ready"
    );
    Ok(Bound {
        addrs,
        readiness,
        trigger,
    })
}

/// A timer that is never more than a second away, for the life of the proxy.
///
/// tokio's time driver wakes itself (an eventfd write, then an extra round of `epoll_wait`)
/// whenever a timer is set earlier than the earliest one it knew of when it last went to
/// sleep. With only long timers pending (the mesh connections' 30 s keep-alive pings), every
/// request's own timeout (15 s by default) was such a timer: about one wake-up per request on
/// each proxy, measured with strace. Behind a timer at most a second away, request timeouts
/// never are: the cost is one wake-up a second when idle.
async fn heartbeat(drain: trellis_runtime::DrainWatcher) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = drain.signaled() => return,
        }
    }
}

impl Bound {
    /// Stop: `Drain` stops accepting and lets in-flight work finish within `grace`; `Fast`
    /// stops at once.
    pub async fn shutdown(self, kind: ShutdownKind, grace: std::time::Duration) -> DrainOutcome {
        match kind {
            ShutdownKind::Drain => self.trigger.drain(grace).await,
            ShutdownKind::Fast => {
                let remaining = self.trigger.abort();
                DrainOutcome::TimedOut { remaining }
            }
        }
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

async fn bind_opt(
    listener: &'static str,
    addr: Option<SocketAddr>,
) -> Result<Option<TcpListener>, BuildError> {
    match addr {
        Some(addr) => bind(listener, addr).await.map(Some),
        None => Ok(None),
    }
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

fn opt_addr(
    l: &Option<TcpListener>,
    listener: &'static str,
) -> Result<Option<SocketAddr>, BuildError> {
    match l {
        Some(l) => {
            let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
            local_addr(l, listener, unspecified).map(Some)
        }
        None => Ok(None),
    }
}
