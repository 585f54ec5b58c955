//! The Trellis configuration model: the resources users write, their validation, and the
//! compiled per-proxy configuration that the control plane pushes (and that
//! `trellis proxy --config FILE` reads from disk). No I/O lives here: callers hand in text.

mod decoder;
mod delta;
mod duration;
mod percent;
mod proxy;
pub mod resources;
mod validate;

pub use delta::apply_services_delta;
pub use duration::{format_duration, parse_duration};
pub use percent::Percent;
pub use proxy::{
    App, AppPort, Authorization, AuthorizationPolicy, ConditionKey, ConditionKeyError, Endpoint,
    FaultAbort, FaultDelay, FaultInjection, HashOn, Header, HeaderModifier, Identity, Ingress,
    IpBlock, Limits, Listeners, LoadBalancer, LoadBalancerKind, MtlsMode, Node, OutboundPolicy,
    OutlierDetection, PathMatch, PathMatchKind, PathModifier, PolicyAction, PolicyCondition,
    PolicyOperation, PolicyRule, PolicySource, Protocol, ProxyConfig, RequestMirror,
    RequestRedirect, Retries, RetryBudget, RetryOn, Route, RouteBackend, RouteFilter, RouteMatch,
    RouteRule, Service, ServicePolicy, ServicePort, Timeouts, UrlRewrite, ValueMatch,
    ValueMatchKind,
};
pub use resources::{CompileOptions, Resources, compile};
pub use validate::{ConfigError, ConfigErrors};
