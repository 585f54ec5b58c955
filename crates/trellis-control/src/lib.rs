//! The Trellis control plane (DESIGN §5, §3): the mesh CA's signing service,
//! `trellis.ca.v1.CertificateService`, with join tokens for bootstrap, and config push,
//! `trellis.discovery.v1.Discovery`, both on one TLS gRPC port. The configs pushed are
//! compiled from a directory of resources (`--resources`), watched for changes.
//!
//! - [`app`]: [`build`] wires a whole control plane from a [`Config`] and returns [`Bound`].
//! - [`ca`]: the signing service; who may have which certificate, and why not.
//! - [`token`]: join tokens, minted by `trellis control token` and checked by the service.
//! - [`tls`]: the gRPC port's TLS (optional, verified client certificates) and the control
//!   plane's own certificate.
//! - [`push`]: the [`ConfigStore`] of every proxy's config, versioned and debounced.
//! - [`discovery`]: the stream per proxy: identity, Hello, Config, ACK/NACK.
//! - [`status`]: each proxy's sync state, served at `/debug/proxies`.
//! - [`sources`]: the `--resources` directory: read, validated, compiled, polled for changes.
//! - [`metrics`]: certificates issued and refused; pushes, their latency, NACKs, streams.

pub mod app;
pub mod ca;
pub mod discovery;
pub mod metrics;
pub mod push;
pub mod sources;
pub mod status;
pub mod tls;
pub mod token;

pub use app::{Bound, BoundAddrs, BuildError, Config, ListenConfig, build};
pub use ca::{CaService, Credential, Refusal};
pub use discovery::DiscoveryService;
pub use push::{ConfigStore, NodeKey, Version};
pub use status::StatusBoard;
pub use tls::{Peer, control_identity};
pub use token::{JoinTokenKey, TokenError, TokenKeyError};
