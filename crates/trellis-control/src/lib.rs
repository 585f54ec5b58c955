//! The Trellis control plane (DESIGN §5, §3). Today: the mesh CA's signing service,
//! `trellis.ca.v1.CertificateService`, on a TLS gRPC port, with join tokens for bootstrap.
//! Still to come: sources (a config directory, later Kubernetes) → model → per-proxy compile
//! → push over `trellis.discovery.v1` on the same port.
//!
//! - [`app`]: [`build`] wires a whole control plane from a [`Config`] and returns [`Bound`].
//! - [`ca`]: the signing service; who may have which certificate, and why not.
//! - [`token`]: join tokens, minted by `trellis control token` and checked by the service.
//! - [`tls`]: the gRPC port's TLS (optional, verified client certificates) and the control
//!   plane's own certificate.
//! - [`metrics`]: certificates issued and refused.

pub mod app;
pub mod ca;
pub mod metrics;
pub mod tls;
pub mod token;

pub use app::{Bound, BoundAddrs, BuildError, Config, ListenConfig, build};
pub use ca::{CaService, Credential, Refusal};
pub use tls::{Peer, control_identity};
pub use token::{JoinTokenKey, TokenError, TokenKeyError};
