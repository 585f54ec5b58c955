//! The proxy's view of the mesh: an immutable snapshot built from the config, swapped whole
//! when a new config arrives. Readers on the hot path load it without locking.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request};
use tokio::time::Instant;
use trellis_identity::SpiffeId;
use trellis_model::{
    HashOn, MtlsMode, OutboundPolicy, OutlierDetection, Protocol, ProxyConfig, Route, Timeouts,
};

use crate::balance::{Balancer, Ejector, EndpointStats, Outcome, Pick, hash_bytes};
use crate::fast_map::FastMap;
use crate::headers::meta_value;
use crate::limit::Limiter;
use crate::retry::{Budget, RetryPolicy};
use crate::route::{RouteError, RouteTable};

/// The latency a first endpoint set starts from (all equal, so only its scale matters).
const INITIAL_RTT: Duration = Duration::from_millis(10);

/// A service port: namespace, name, port.
type PortKey = (String, String, u16);

/// Shared, swappable state.
#[derive(Debug)]
pub(crate) struct State {
    current: ArcSwap<Snapshot>,
}

/// Everything derived from one config, indexed for the request path.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) config: Arc<ProxyConfig>,
    /// The control plane's version of this config (None: the config file's), kept with the
    /// config so that `/config_dump` never shows one with the other's version.
    pub(crate) version: Option<u64>,
    /// This proxy's own workload, for telemetry.
    pub(crate) node: NodeInfo,
    /// Services by lower-case host name, then port.
    by_host: FastMap<String, Vec<(u16, Arc<Frontend>)>>,
    /// Services by virtual address and port (transparent capture).
    by_addr: FastMap<SocketAddr, Arc<Frontend>>,
    /// The local app's ports: their protocols and mTLS modes (inbound side).
    app_ports: FastMap<u16, (Protocol, MtlsMode)>,
    /// True when some port takes plaintext from peers (the mode is not STRICT everywhere).
    plaintext_allowed: bool,
    pub(crate) app_address: IpAddr,
    pub(crate) outbound_policy: OutboundPolicy,
    pub(crate) timeouts: Timeouts,
    /// The inbound authorization policies, compiled.
    pub(crate) authz: crate::authz::Authorizer,
    /// Every service port's destination, for the next config to take over their load,
    /// health, budgets and limits.
    destinations: HashMap<PortKey, Arc<Destination>>,
}

/// Who this proxy is.
#[derive(Debug, Clone)]
pub(crate) struct NodeInfo {
    pub(crate) workload: Arc<str>,
    pub(crate) namespace: Arc<str>,
    /// `trellis-meta` for a tunnel to an address outside the services (names this proxy only).
    pub(crate) tunnel_meta: HeaderValue,
    /// This proxy's SPIFFE ID as a metrics label (`unknown` without an identity).
    pub(crate) principal: Arc<str>,
}

/// One port of one service as callers address it (its name or virtual address: GAMMA's
/// frontend): its routes, or its own endpoints when it has none.
#[derive(Debug)]
pub(crate) struct Frontend {
    /// The service port itself: where requests go without routes (and TCP always).
    pub(crate) own: Arc<Destination>,
    /// HTTP routes (HTTPRoute, GRPCRoute) for this port; with them, every HTTP request goes
    /// where its rule says, and one that matches no rule is answered 404.
    pub(crate) routes: Option<RouteTable<Arc<Destination>>>,
}

/// One port of one service and its endpoints (GAMMA's backend): what a request is sent to,
/// addressed directly or chosen by a route.
#[derive(Debug)]
pub(crate) struct Destination {
    /// `name.namespace.svc.cluster.local`, the `destination_service` label.
    pub(crate) fqdn: Arc<str>,
    /// `trellis-meta` for a tunnel to one of its endpoints (this proxy, the service).
    pub(crate) tunnel_meta: HeaderValue,
    pub(crate) protocol: Protocol,
    pub(crate) endpoints: Vec<EndpointInfo>,
    pub(crate) timeouts: Timeouts,
    balancer: Balancer,
    hash_on: Option<HashOn>,
    /// Retries (TrafficPolicy), with the service's budget.
    pub(crate) retries: Option<(RetryPolicy, Arc<Budget>)>,
    outlier: Option<OutlierDetection>,
    ejector: Ejector,
    pub(crate) limiter: Option<Arc<Limiter>>,
}

/// One endpoint of a destination.
#[derive(Debug, Clone)]
pub(crate) struct EndpointInfo {
    /// Where the endpoint's app listens for this port.
    pub(crate) target: SocketAddr,
    /// `trellis-meta` for a request to it across the mesh (`target`, this proxy, the service),
    /// from an HTTP/1.1 client and from an HTTP/2 one; made once per config.
    pub(crate) meta: [HeaderValue; 2],
    /// The endpoint's proxy (mesh transport); `None` for endpoints outside the mesh.
    pub(crate) mesh: Option<SocketAddr>,
    pub(crate) workload: Arc<str>,
    pub(crate) namespace: Arc<str>,
    /// The SPIFFE ID its proxy must prove (secure naming); `None` outside the mesh.
    pub(crate) identity: Option<Arc<SpiffeId>>,
    /// `identity` as a metrics label.
    pub(crate) principal: Arc<str>,
    /// Load and health, kept across config pushes while the endpoint stays.
    pub(crate) stats: Arc<EndpointStats>,
}

impl State {
    /// The state of a first config; it fails only when the config's routes cannot be used.
    pub(crate) fn new(config: ProxyConfig) -> Result<Self, RouteError> {
        Ok(Self {
            current: ArcSwap::from_pointee(Snapshot::build(config, None)?),
        })
    }

    /// The config in force.
    pub(crate) fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replace the config in force (the control-plane client calls this on a push). Route
    /// tables are built here, once per config; a config whose routes cannot be used is refused
    /// and the one in force stays.
    pub(crate) fn store(
        &self,
        config: ProxyConfig,
        version: Option<u64>,
    ) -> Result<(), RouteError> {
        let previous = self.current.load();
        let mut snapshot = Snapshot::build(config, Some(&previous))?;
        snapshot.version = version;
        self.current.store(Arc::new(snapshot));
        Ok(())
    }
}

impl Snapshot {
    fn build(config: ProxyConfig, previous: Option<&Snapshot>) -> Result<Self, RouteError> {
        // Every service port with its endpoints first: routes send requests to them.
        let mut destinations: HashMap<(&str, &str, u16), Arc<Destination>> = HashMap::new();
        let now = Instant::now();
        // This proxy, as `trellis-meta` names it to peers.
        let me = (config.workload(), config.node.namespace.as_str());
        for svc in &config.services {
            let fqdn: Arc<str> = format!("{}.{}.svc.cluster.local", svc.name, svc.namespace).into();
            let timeouts = svc.timeouts.unwrap_or(config.timeouts);
            let policy = svc.policy.clone().unwrap_or_default();
            for port in &svc.ports {
                let before = previous.and_then(|p| {
                    p.destinations
                        .get(&(svc.namespace.clone(), svc.name.clone(), port.port))
                });
                // Endpoints that stay keep their load and health; new ones start at the
                // average latency of the set, a neutral cost.
                let kept: HashMap<SocketAddr, &Arc<EndpointStats>> = before
                    .map(|d| d.endpoints.iter().map(|e| (e.target, &e.stats)).collect())
                    .unwrap_or_default();
                let staying: Vec<f64> = svc
                    .endpoints
                    .iter()
                    .filter_map(|ep| kept.get(&ep.target(port)))
                    .map(|s| s.rtt_ns(now))
                    .collect();
                let neutral = if staying.is_empty() {
                    INITIAL_RTT
                } else {
                    let mean = staying.iter().sum::<f64>() / staying.len() as f64;
                    Duration::from_nanos(mean as u64)
                };
                let endpoints: Vec<EndpointInfo> = svc
                    .endpoints
                    .iter()
                    .map(|ep| EndpointInfo {
                        target: ep.target(port),
                        meta: [true, false].map(|http1| {
                            meta_value(Some(ep.target(port)), Some(http1), me, Some(&fqdn))
                        }),
                        mesh: ep.mesh,
                        workload: ep.workload.as_deref().unwrap_or("unknown").into(),
                        namespace: ep.namespace.as_deref().unwrap_or(&svc.namespace).into(),
                        identity: ep
                            .identity
                            .as_deref()
                            .and_then(parse_identity)
                            .map(Arc::new),
                        principal: ep.identity.as_deref().unwrap_or("unknown").into(),
                        stats: kept.get(&ep.target(port)).map_or_else(
                            || Arc::new(EndpointStats::new(neutral)),
                            |s| Arc::clone(s),
                        ),
                    })
                    .collect();
                let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.target).collect();
                let lb = &policy.load_balancer;
                // The budget and limits carry over while their settings stay the same.
                let retries = policy.retries.as_ref().map(|r| {
                    let budget = before
                        .and_then(|d| d.retries.as_ref())
                        .map(|(_, b)| b)
                        .filter(|b| *b.config() == r.budget)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Budget::new(r.budget)));
                    (RetryPolicy::new(r), budget)
                });
                let limiter = policy.limits.map(|limits| {
                    before
                        .and_then(|d| d.limiter.as_ref())
                        .filter(|l| *l.limits() == limits)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(Limiter::new(limits)))
                });
                let dest = Arc::new(Destination {
                    fqdn: fqdn.clone(),
                    tunnel_meta: meta_value(None, None, me, Some(&fqdn)),
                    protocol: port.protocol,
                    balancer: Balancer::new(lb.kind, &addrs),
                    hash_on: lb.hash_on.clone(),
                    endpoints,
                    timeouts,
                    retries,
                    outlier: policy.outlier_detection,
                    ejector: Ejector::default(),
                    limiter,
                });
                destinations.insert((&svc.namespace, &svc.name, port.port), dest);
            }
        }

        // Then what callers address: each service port with its routes.
        let mut by_host: FastMap<String, Vec<(u16, Arc<Frontend>)>> = FastMap::default();
        let mut by_addr = FastMap::default();
        for svc in &config.services {
            for port in &svc.ports {
                let Some(own) = destinations.get(&(&svc.namespace, &svc.name, port.port)) else {
                    continue;
                };
                let routes: Vec<&Route> = svc
                    .routes
                    .iter()
                    .filter(|r| r.port.is_none_or(|p| p == port.port))
                    .collect();
                let routes = if routes.is_empty() {
                    None
                } else {
                    let table = RouteTable::build(&svc.namespace, &routes, |ns, name, port| {
                        destinations.get(&(ns, name, port)).cloned()
                    })?;
                    tracing::debug!(
                        dst.service = %own.fqdn,
                        dst.port = port.port,
                        routes = routes.len(),
                        rules = table.len(),
                        "route table built"
                    );
                    Some(table)
                };
                let frontend = Arc::new(Frontend {
                    own: own.clone(),
                    routes,
                });
                for host in svc.all_hostnames() {
                    by_host
                        .entry(host.to_ascii_lowercase())
                        .or_default()
                        .push((port.port, frontend.clone()));
                }
                for addr in &svc.addresses {
                    by_addr.insert(SocketAddr::new(*addr, port.port), frontend.clone());
                }
            }
        }
        let app_ports: FastMap<u16, (Protocol, MtlsMode)> = config
            .app
            .ports
            .iter()
            .map(|p| (p.port, (p.protocol, p.mtls.unwrap_or(config.mtls))))
            .collect();
        let plaintext_allowed = config.mtls != MtlsMode::Strict
            || app_ports
                .values()
                .any(|(_, mode)| *mode != MtlsMode::Strict);
        Ok(Self {
            node: NodeInfo {
                workload: config.workload().into(),
                namespace: config.node.namespace.as_str().into(),
                tunnel_meta: meta_value(None, None, me, None),
                principal: config
                    .identity
                    .as_ref()
                    .map_or("unknown", |i| i.id.as_str())
                    .into(),
            },
            by_host,
            by_addr,
            app_ports,
            plaintext_allowed,
            app_address: config.app.address,
            outbound_policy: config.outbound_policy,
            timeouts: config.timeouts,
            authz: crate::authz::Authorizer::new(&config.authorization),
            destinations: destinations
                .into_iter()
                .map(|((ns, name, port), d)| ((ns.to_string(), name.to_string(), port), d))
                .collect(),
            config: Arc::new(config),
            version: None,
        })
    }

    /// The service port addressed by a host name (any of a service's names) and port.
    pub(crate) fn by_host(&self, host: &str, port: u16) -> Option<&Arc<Frontend>> {
        let host = host.trim_end_matches('.');
        let ports = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_host.get(&host.to_ascii_lowercase())
        } else {
            self.by_host.get(host)
        }?;
        ports.iter().find(|(p, _)| *p == port).map(|(_, d)| d)
    }

    /// The service port behind a virtual address (transparent capture).
    pub(crate) fn by_addr(&self, addr: SocketAddr) -> Option<&Arc<Frontend>> {
        self.by_addr.get(&addr)
    }

    /// The protocol of a local app port, if the app serves it. Inbound traffic to any other
    /// address or port is refused: the inbound side is not an open relay.
    pub(crate) fn app_port(&self, target: SocketAddr) -> Option<Protocol> {
        let ip = target.ip();
        let local = ip == self.app_address || ip.is_loopback() && self.app_address.is_loopback();
        if !local {
            return None;
        }
        self.app_ports
            .get(&target.port())
            .map(|(protocol, _)| *protocol)
    }

    /// The mTLS mode of a local app port (the workload's, unless the port has its own).
    pub(crate) fn mtls_mode(&self, port: u16) -> MtlsMode {
        self.app_ports
            .get(&port)
            .map_or(self.config.mtls, |(_, mode)| *mode)
    }

    /// Does any port take plaintext from peers?
    pub(crate) fn plaintext_allowed(&self) -> bool {
        self.plaintext_allowed
    }
}

impl Destination {
    /// Pick an endpoint for a request with this hash key (see [`Destination::hash_key`]),
    /// preferring one not in `avoid` (those a retried request already tried).
    pub(crate) fn pick(
        &self,
        hash: Option<u64>,
        avoid: &[usize],
    ) -> Option<(usize, &EndpointInfo)> {
        let i = self.balancer.pick(&self.endpoints, Pick { hash, avoid })?;
        Some((i, self.endpoints.get(i)?))
    }

    /// The request's consistent-hash key, when the balancer hashes and the request has one.
    pub(crate) fn hash_key<B>(&self, req: &Request<B>, client: IpAddr) -> Option<u64> {
        if !self.balancer.hashing() {
            return None;
        }
        match self.hash_on.as_ref()? {
            HashOn::Header(name) => {
                let value = req.headers().get(name.as_str())?;
                Some(hash_bytes(0, value.as_bytes()))
            }
            HashOn::Cookie(name) => {
                let value = req
                    .headers()
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|pair| {
                        let (k, v) = pair.trim().split_once('=')?;
                        (k == name).then_some(v)
                    })?;
                Some(hash_bytes(0, value.as_bytes()))
            }
            HashOn::SourceIp => Some(source_hash(client)),
        }
    }

    /// A TCP connection's hash key: only the source IP can be had from a connection.
    pub(crate) fn connection_hash(&self, client: IpAddr) -> Option<u64> {
        match self.hash_on {
            Some(HashOn::SourceIp) if self.balancer.hashing() => Some(source_hash(client)),
            _ => None,
        }
    }

    /// How a try to endpoint `i` went, and how long it took: its latency estimate, and
    /// outlier detection when the service has it. A failure never lowers the estimate, so
    /// that an endpoint failing fast does not look fast and draw the traffic it fails; nor
    /// does it raise it beyond what it took, so that it is not starved once it recovers.
    pub(crate) fn record(&self, i: usize, outcome: Outcome, took: Duration) {
        let Some(ep) = self.endpoints.get(i) else {
            return;
        };
        let now = Instant::now();
        let returned = self.outlier.as_ref().is_some_and(|config| {
            self.ejector
                .record(&self.endpoints, i, outcome, config, now)
        });
        match outcome {
            // Back from ejection: the penalties of its failures are history.
            Outcome::Success if returned => ep.stats.reset(took, now),
            Outcome::Success => ep.stats.observe(took, now),
            Outcome::Failure => {
                let estimate = Duration::from_nanos(ep.stats.rtt_ns(now) as u64);
                ep.stats.observe(took.max(estimate), now);
            }
        }
    }
}

impl AsRef<EndpointStats> for EndpointInfo {
    fn as_ref(&self) -> &EndpointStats {
        &self.stats
    }
}

fn source_hash(client: IpAddr) -> u64 {
    match client {
        IpAddr::V4(ip) => hash_bytes(0, &ip.octets()),
        IpAddr::V6(ip) => hash_bytes(0, &ip.octets()),
    }
}

/// A SPIFFE ID from the config (validated in shape by the model; a full parse failure means the
/// endpoint is treated as outside the mesh, with a warning).
fn parse_identity(id: &str) -> Option<SpiffeId> {
    match id.parse() {
        Ok(id) => Some(id),
        Err(error) => {
            tracing::warn!(%error, "endpoint identity ignored; the endpoint is reached in plaintext");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ports: &[u16], policy: &str) -> ProxyConfig {
        let endpoints: Vec<String> = ports
            .iter()
            .map(|p| format!("{{ address: 127.0.0.1, ports: {{ http: {p} }} }}"))
            .collect();
        let yaml = format!(
            "node: {{ name: a }}\nservices:\n  - name: web\n    ports: [ {{ name: http, port: 80, protocol: http }} ]\n    endpoints: [ {} ]\n{policy}",
            endpoints.join(", ")
        );
        ProxyConfig::from_yaml("test.yaml", &yaml).unwrap()
    }

    fn web(state: &State) -> Arc<Destination> {
        state.load().by_host("web", 80).unwrap().own.clone()
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_that_stay_keep_their_load_across_a_push() {
        let state = State::new(config(&[1, 2, 3], "")).unwrap();
        let before = web(&state);
        before.endpoints[0]
            .stats
            .observe(Duration::from_millis(300), Instant::now());
        let budgeted = "    policy: { retries: { attempts: 1 }, limits: { max_requests: 5 } }\n";
        state.store(config(&[1, 3, 4], budgeted), None).unwrap();
        let after = web(&state);
        assert!(Arc::ptr_eq(
            &before.endpoints[0].stats,
            &after.endpoints[0].stats
        ));
        assert!(Arc::ptr_eq(
            &before.endpoints[2].stats,
            &after.endpoints[1].stats
        ));
        // The new endpoint starts at the set's average: neither favoured nor avoided.
        let now = Instant::now();
        let mean =
            (before.endpoints[0].stats.rtt_ns(now) + before.endpoints[2].stats.rtt_ns(now)) / 2.0;
        assert!((after.endpoints[2].stats.rtt_ns(now) - mean).abs() < 1.0);

        // The budget and limiter stay while their settings do.
        state.store(config(&[1, 3, 4], budgeted), None).unwrap();
        let again = web(&state);
        let budget = |d: &Destination| d.retries.as_ref().map(|(_, b)| b.clone()).unwrap();
        assert!(Arc::ptr_eq(&budget(&after), &budget(&again)));
        assert!(Arc::ptr_eq(
            after.limiter.as_ref().unwrap(),
            again.limiter.as_ref().unwrap()
        ));
    }
}
