//! Why a request or connection failed, and what the client is told.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

use crate::metrics::ResponseFlags;

/// A failure on the request path. Each variant names the side that failed and carries the
/// value that explains it; [`ProxyError::status`] and [`ProxyError::flags`] say what the client
/// sees and what telemetry records.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "no route to {authority}: not a known service and the outbound policy is registry_only"
    )]
    NoRoute { authority: String },
    #[error("request has no destination: neither an absolute URI, :authority nor Host")]
    NoAuthority,
    #[error("service {service} has no endpoints")]
    NoEndpoints { service: String },
    #[error("could not resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("connection to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connection to {addr} timed out after {timeout:?} (is the peer's proxy running?)")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("mutual TLS with {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: crate::pool::BoxError,
    },
    #[error("upstream {addr} failed: {source}")]
    Upstream {
        addr: SocketAddr,
        source: crate::pool::BoxError,
    },
    #[error("upstream {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("peer proxy {addr} refused the tunnel to {target}: {status}")]
    TunnelRefused {
        addr: SocketAddr,
        target: SocketAddr,
        status: StatusCode,
    },
    #[error("plaintext to {target} refused: the port's mTLS mode is STRICT")]
    MtlsRequired { target: SocketAddr },
    #[error("inbound target {target} is not a port of the local app")]
    NotAnAppPort { target: SocketAddr },
    #[error("bad request: {reason}")]
    BadRequest { reason: &'static str },
    #[error("no route of service {service} matches {method} {path}")]
    NoRouteMatch {
        service: String,
        method: http::Method,
        path: String,
    },
    #[error("{route} of service {service}: the matching rule has no backend with a weight above 0")]
    NoBackend { service: String, route: String },
    #[error("RBAC: access denied ({denial})")]
    Denied { denial: crate::authz::Denial },
    #[error("{addr} is this proxy's own listener: forwarding there would loop")]
    Loop { addr: SocketAddr },
    #[error("service {service} is over its limit of {limit} (its traffic policy's limits)")]
    Overflow {
        service: String,
        limit: &'static str,
    },
}

/// How a try failed without a response, for retry conditions and outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection: refused, timed out, or its handshake failed.
    Connect,
    /// The upstream refused the HTTP/2 stream before processing it (always safe to retry).
    RefusedStream,
    /// The connection or stream broke before a response.
    Reset,
    /// No response within the (per-try) timeout.
    Timeout,
}

impl ProxyError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::BAD_GATEWAY,
            Self::Loop { .. } => StatusCode::LOOP_DETECTED,
            // The Gateway API's answers: no rule matches, or the rule has nowhere to send it.
            Self::NoRouteMatch { .. } => StatusCode::NOT_FOUND,
            Self::NoBackend { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NoAuthority | Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotAnAppPort { .. } | Self::MtlsRequired { .. } | Self::Denied { .. } => {
                StatusCode::FORBIDDEN
            }
            Self::NoEndpoints { .. }
            | Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::Handshake { .. }
            | Self::Tls { .. }
            | Self::Resolve { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::TunnelRefused { status, .. } => *status,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Overflow { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// How a try to an upstream failed; `None` for failures that are not the upstream's.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::Handshake { .. }
            | Self::Tls { .. } => Some(Failure::Connect),
            Self::Upstream { source, .. } => Some(if refused_stream(source.as_ref()) {
                Failure::RefusedStream
            } else {
                Failure::Reset
            }),
            Self::Timeout { .. } => Some(Failure::Timeout),
            _ => None,
        }
    }

    /// The Envoy-style response flag recorded in metrics and the access log.
    pub fn flags(&self) -> ResponseFlags {
        match self {
            Self::NoRoute { .. }
            | Self::Loop { .. }
            | Self::NoRouteMatch { .. }
            | Self::NotAnAppPort { .. }
            | Self::MtlsRequired { .. } => ResponseFlags::NoRouteFound,
            Self::NoBackend { .. } => ResponseFlags::NoClusterFound,
            Self::NoAuthority | Self::BadRequest { .. } => ResponseFlags::DownstreamProtocolError,
            Self::NoEndpoints { .. } => ResponseFlags::NoHealthyUpstream,
            Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::Handshake { .. }
            | Self::Tls { .. }
            | Self::Resolve { .. }
            | Self::TunnelRefused { .. } => ResponseFlags::UpstreamConnectionFailure,
            Self::Upstream { .. } => ResponseFlags::UpstreamConnectionTermination,
            Self::Timeout { .. } => ResponseFlags::UpstreamRequestTimeout,
            Self::Denied { .. } => ResponseFlags::AccessDenied,
            Self::Overflow { .. } => ResponseFlags::UpstreamOverflow,
        }
    }
}

/// Did the peer refuse the HTTP/2 stream (`REFUSED_STREAM`): anywhere in the error's causes.
fn refused_stream(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cause = e.source();
    }
    false
}
