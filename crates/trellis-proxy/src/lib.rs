//! The Trellis data plane: the sidecar proxy.
//!
//! [`app::build`] wires a whole proxy from a [`trellis_model::ProxyConfig`]: it binds the
//! listeners, starts their accept loops and returns the bound addresses with a shutdown handle.
//! The request path is read top to bottom in [`outbound`] (app → mesh) and [`inbound`]
//! (mesh → app); the rest are the pieces they call. With `control` in the config, `xds`
//! streams the rest of the config from the control plane and swaps it in.

pub mod access_log;
pub mod app;
mod authz;
mod backoff;
pub mod balance;
pub mod detect;
mod error;
mod fast_map;
mod fault;
mod forward;
mod grpc;
mod h1;
mod h1_client;
mod h1_server;
mod h2_client;
mod h2_server;
mod headers;
mod identity;
mod inbound;
mod limit;
pub mod metrics;
mod mtls;
mod observe;
mod orig_dst;
mod outbound;
mod pool;
mod prefixed;
mod retry;
pub mod route;
mod serve;
mod state;
mod tls_io;
mod tunnel;
mod xds;

pub use app::{Bound, BoundAddrs, BuildError, build};
pub use authz::Denial;
pub use error::ProxyError;
pub use identity::IdentityError;
