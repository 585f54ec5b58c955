//! The Trellis configuration model: the resources users write, their validation, and the
//! compiled per-proxy configuration that the control plane pushes (and that
//! `trellis proxy --config FILE` reads from disk). No I/O lives here: callers hand in text.

mod duration;
mod proxy;
pub mod resources;
mod validate;

pub use duration::{format_duration, parse_duration};
pub use proxy::{
    App, AppPort, Endpoint, HashOn, Header, HeaderModifier, Identity, Ingress, Limits, Listeners,
    LoadBalancer, LoadBalancerKind, MtlsMode, Node, OutboundPolicy, OutlierDetection, PathMatch,
    PathMatchKind, PathModifier, Protocol, ProxyConfig, RequestRedirect, Retries, RetryBudget,
    RetryOn, Route, RouteBackend, RouteFilter, RouteMatch, RouteRule, Service, ServicePolicy,
    ServicePort, Timeouts, UrlRewrite, ValueMatch, ValueMatchKind,
};
pub use resources::{CompileOptions, Resources, compile};
pub use validate::{ConfigError, ConfigErrors};
