//! The compiled per-proxy configuration: everything one proxy needs to serve, nothing more.
//!
//! This is the shape the control plane will push over `trellis.discovery.v1` and the shape
//! `trellis proxy --config FILE` reads. Field names in YAML are snake_case.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) mod authorization;
pub(crate) mod policy;
pub(crate) mod route;

pub use authorization::{
    Authorization, AuthorizationPolicy, ConditionKey, ConditionKeyError, IpBlock, PolicyAction,
    PolicyCondition, PolicyOperation, PolicyRule, PolicySource,
};
pub(crate) use policy::RETRY_CONDITIONS;
pub use policy::{
    HashOn, Limits, LoadBalancer, LoadBalancerKind, OutlierDetection, Retries, RetryBudget,
    RetryOn, ServicePolicy,
};
pub use route::{
    FaultAbort, FaultDelay, FaultInjection, Header, HeaderModifier, PathMatch, PathMatchKind,
    PathModifier, RequestMirror, RequestRedirect, Route, RouteBackend, RouteFilter, RouteMatch,
    RouteRule, UrlRewrite, ValueMatch, ValueMatchKind,
};

/// One proxy's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Who this proxy is (labels for telemetry; the identity comes with mTLS later).
    pub node: Node,
    /// Where the proxy listens.
    #[serde(default)]
    pub listeners: Listeners,
    /// The local application behind this proxy (the inbound side forwards to it).
    #[serde(default)]
    pub app: App,
    /// Services this proxy may reach, with their endpoints.
    #[serde(default)]
    pub services: Vec<Service>,
    /// What to do with outbound traffic to a destination that is not a known service.
    #[serde(default)]
    pub outbound_policy: OutboundPolicy,
    /// Timeouts that apply to every connection and request unless a service overrides them.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// This workload's identity for mutual TLS. Absent: the proxy has no identity, and its mesh
    /// transport is plaintext both ways.
    #[serde(default)]
    pub identity: Option<Identity>,
    /// What the mesh listener accepts from peers (Istio's PeerAuthentication mode); an app
    /// port's own `mtls` wins for traffic to that port.
    #[serde(default)]
    pub mtls: MtlsMode,
    /// Who may call the app (Istio's AuthorizationPolicy): checked on every request and
    /// connection from the mesh and from captured clients. Absent: everyone may.
    #[serde(default, skip_serializing_if = "Authorization::is_empty")]
    pub authorization: Authorization,
    /// The control plane's discovery service. With it, everything but `node`, `listeners`,
    /// `identity` and `control` comes from the control plane (this file is the bootstrap), and
    /// the proxy is ready once the first config has been applied.
    #[serde(default)]
    pub control: Option<SocketAddr>,
}

/// Where this proxy's certificate comes from, and what it trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The SPIFFE ID this workload runs as: `spiffe://<trust-domain>/ns/<ns>/sa/<account>`.
    pub id: String,
    /// The trust bundle (PEM, one or more roots) peers' certificates must chain to.
    pub bundle: PathBuf,
    /// A certificate chain (PEM, leaf first) issued to `id`, with `key`: for stand-alone use.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The private key for `cert` (PEM); must not be readable by others.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The CA's signing service: the proxy generates its key in memory, sends a CSR, and
    /// renews at half life. Excludes `cert`/`key`.
    #[serde(default)]
    pub ca: Option<SocketAddr>,
    /// A join token for the first CSR (read once at start; renewals use the current cert).
    #[serde(default)]
    pub join_token_file: Option<PathBuf>,
    /// How long a certificate from the CA should live.
    #[serde(default = "default_cert_ttl", with = "crate::duration::serde_duration")]
    pub cert_ttl: Duration,
}

/// Whether inbound mesh traffic must be mutual TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Only mutual TLS is accepted.
    Strict,
    /// Mutual TLS and plaintext are both accepted (moving a workload into the mesh).
    #[default]
    Permissive,
    /// Only plaintext.
    Disable,
}

/// The workload this proxy stands beside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique name of this proxy instance (e.g. `reviews-v1-0`).
    pub name: String,
    /// Namespace of the workload.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Workload name used in metrics (`source_workload`); defaults to `name`.
    #[serde(default)]
    pub workload: Option<String>,
}

/// Listening addresses. A listener that is absent is not started. Port 0 picks a free port
/// (the bound address is reported by the admin `/config_dump` and the startup log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// Admin server: `/ready`, `/live`, `/metrics`, `/config_dump`, `/logging`.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Explicit outbound proxy (`HTTP_PROXY`/`HTTPS_PROXY`): absolute-form HTTP/1.1 requests,
    /// `CONNECT` tunnels, and HTTP/2 prior-knowledge requests routed by `:authority`.
    #[serde(default)]
    pub outbound: Option<SocketAddr>,
    /// Transparent outbound capture (iptables REDIRECT): the destination comes from
    /// `SO_ORIGINAL_DST`.
    #[serde(default)]
    pub outbound_transparent: Option<SocketAddr>,
    /// Transparent inbound capture: connections redirected to the app's ports from clients
    /// outside the mesh (the destination comes from `SO_ORIGINAL_DST`).
    #[serde(default)]
    pub inbound: Option<SocketAddr>,
    /// Mesh transport: HTTP/2 from peer proxies (mTLS arrives with the identity work).
    #[serde(default)]
    pub mesh: Option<SocketAddr>,
    /// Ingress: plain HTTP (1.1 or h2c) from outside the mesh, every request sent to one
    /// service whatever its Host says (the front door `trellis up` prints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Ingress>,
}

/// One ingress listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    pub address: SocketAddr,
    /// The service every request goes to, as `host:port` (`frontend.shop:8080`); routed like
    /// a request the app sent to that authority.
    pub to: String,
}

/// The application beside the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The address the app listens on; the inbound side forwards here.
    #[serde(default = "default_app_address")]
    pub address: IpAddr,
    /// Ports the app serves. Inbound traffic to any other port is refused.
    #[serde(default)]
    pub ports: Vec<AppPort>,
}

/// One port of the local app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppPort {
    pub port: u16,
    /// How the app speaks on this port. `http` covers HTTP/1.1 and upgrades; `http2` and `grpc`
    /// are HTTP/2 (prior knowledge); `tcp` and `tls` are relayed as bytes.
    pub protocol: Protocol,
    /// This port's mTLS mode, when it differs from the workload's.
    #[serde(default)]
    pub mtls: Option<MtlsMode>,
}

/// A protocol declared on a port. Declaring `tcp` (or `tls`) skips protocol detection, which is
/// what server-first protocols (MySQL, SMTP) need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    Tls,
}

/// A service the proxy can reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Extra host names that address this service. `name`, `name.namespace`,
    /// `name.namespace.svc` and `name.namespace.svc.cluster.local` always do.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Virtual addresses of the service (what transparent capture sees as the destination).
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Overrides of the proxy-wide timeouts for this service (connect, request, idle).
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    /// HTTP routes for requests addressed to this service (HTTPRoute, GRPCRoute). With none,
    /// requests are balanced over `endpoints`; with some, a request that matches no rule is
    /// answered 404.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// How this proxy balances, retries, ejects and limits requests to the service
    /// (TrafficPolicy); absent, the defaults of [`ServicePolicy`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ServicePolicy>,
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The port on the endpoints; defaults to `port`. An endpoint's own `ports` map wins.
    #[serde(default)]
    pub target_port: Option<u16>,
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// The workload's address (where its app listens).
    pub address: IpAddr,
    /// Per-endpoint target ports by service port name (local mode, where every workload shares
    /// loopback and so has its own port numbers).
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// The mesh transport address of the endpoint's proxy. Absent: the endpoint is outside the
    /// mesh and is reached directly, in plaintext.
    #[serde(default)]
    pub mesh: Option<SocketAddr>,
    /// Workload name for telemetry (`destination_workload`).
    #[serde(default)]
    pub workload: Option<String>,
    /// Namespace of the endpoint's workload; defaults to the service's.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The SPIFFE ID the endpoint's proxy must present (secure naming). With it, and an
    /// identity of our own, the mesh connection is mutual TLS; without it, plaintext.
    #[serde(default)]
    pub identity: Option<String>,
}

/// What the outbound side does with traffic to a destination that is not a known service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboundPolicy {
    /// Pass it through directly (Istio's `ALLOW_ANY`).
    #[default]
    AllowAny,
    /// Refuse it: 502 for HTTP, connection closed for TCP (Istio's `REGISTRY_ONLY`).
    RegistryOnly,
}

/// Timeouts, written as durations (`250ms`, `10s`, `1m`, `1h`). `0s` disables one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// How long protocol detection waits for the client's first bytes before the connection is
    /// treated as opaque TCP (server-first protocols send nothing).
    #[serde(default = "default_detect", with = "crate::duration::serde_duration")]
    pub detect: Duration,
    /// A client must complete a request's header section within this time (slowloris).
    #[serde(default = "default_header", with = "crate::duration::serde_duration")]
    pub header: Duration,
    /// Establishing a connection to an upstream.
    #[serde(default = "default_connect", with = "crate::duration::serde_duration")]
    pub connect: Duration,
    /// A whole request/response exchange (until the response headers); `0s` for none.
    #[serde(default = "default_request", with = "crate::duration::serde_duration")]
    pub request: Duration,
    /// A connection or stream with no traffic in either direction is closed after this.
    #[serde(default = "default_idle", with = "crate::duration::serde_duration")]
    pub idle: Duration,
    /// On SIGTERM, how long in-flight work may take before the proxy exits anyway.
    #[serde(default = "default_drain", with = "crate::duration::serde_duration")]
    pub drain: Duration,
}

impl ProxyConfig {
    /// Parse and validate a configuration. `file` names the source in error messages.
    /// Every problem in the file is reported at once.
    pub fn from_yaml(file: &str, text: &str) -> Result<Self, crate::ConfigErrors> {
        crate::validate::load(file, text)
    }

    /// The workload name used in telemetry.
    pub fn workload(&self) -> &str {
        self.node.workload.as_deref().unwrap_or(&self.node.name)
    }
}

impl Service {
    /// Host names that address this service, including the implicit Kubernetes-style ones.
    pub fn all_hostnames(&self) -> Vec<String> {
        let mut names = vec![
            self.name.clone(),
            format!("{}.{}", self.name, self.namespace),
            format!("{}.{}.svc", self.name, self.namespace),
            format!("{}.{}.svc.cluster.local", self.name, self.namespace),
        ];
        names.extend(self.hostnames.iter().cloned());
        names
    }
}

impl Endpoint {
    /// The socket address of this endpoint's app for the given service port.
    pub fn target(&self, port: &ServicePort) -> SocketAddr {
        let p = self
            .ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.port);
        SocketAddr::new(self.address, p)
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            admin: default_admin(),
            outbound: None,
            outbound_transparent: None,
            inbound: None,
            mesh: None,
            ingress: Vec::new(),
        }
    }
}

impl Default for App {
    fn default() -> Self {
        Self {
            address: default_app_address(),
            ports: Vec::new(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            detect: default_detect(),
            header: default_header(),
            connect: default_connect(),
            request: default_request(),
            idle: default_idle(),
            drain: default_drain(),
        }
    }
}

fn default_namespace() -> String {
    "default".to_string()
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}
fn default_app_address() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
fn default_detect() -> Duration {
    Duration::from_millis(200)
}
fn default_header() -> Duration {
    Duration::from_secs(10)
}
fn default_connect() -> Duration {
    Duration::from_secs(1)
}
fn default_request() -> Duration {
    Duration::from_secs(15)
}
fn default_idle() -> Duration {
    Duration::from_secs(3600)
}
fn default_cert_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}
