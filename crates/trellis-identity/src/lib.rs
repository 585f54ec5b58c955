//! Workload identity for the mesh (DESIGN §3): SPIFFE IDs, workload keys and CSRs, the CA that
//! signs them, the trust bundle, the rustls configs of the mutual-TLS mesh transport, and a
//! human description of certificates for `trellis cert inspect`.
//!
//! - [`WorkloadKey`]: an ECDSA P-256 key made in memory, and the CSR for a [`SpiffeId`].
//! - [`CertificateAuthority`]: a CA directory in Istio's plug-in layout; `init`, `load`,
//!   `sign_csr` (checks the CSR asks for exactly the proven identity), `rotate`, `retire`.
//! - [`TrustBundle`]: the roots a workload trusts (several while a root is rotated).
//! - [`WorkloadCert`] and [`Credentials`]: what a proxy presents and trusts, swappable without
//!   dropping connections; [`server_config`], [`client_config`], [`peer_identity`].
//! - [`VerifyError`]: why a peer's certificate is refused, in the operator's words.
//! - [`inspect()`]: a PEM file described certificate by certificate.
//!
//! One crypto provider throughout: aws-lc-rs.

mod bundle;
pub mod ca;
mod credentials;
mod csr;
mod error;
pub mod human;
mod inspect;
mod key;
mod pem;
mod spiffe;
#[cfg(test)]
mod testing;
mod tls;
mod verify;
mod workload;
mod x509;

pub use bundle::TrustBundle;
pub use ca::{CaError, CertificateAuthority, Existing, IssuedCert};
pub use credentials::Credentials;
pub use csr::CsrRefusal;
pub use error::CertError;
pub use inspect::{InspectOptions, Inspection, inspect};
pub use key::WorkloadKey;
pub use spiffe::{SpiffeId, SpiffeIdError, check_trust_domain};
pub use tls::{
    ALPN_H2, bootstrap_client_config, client_config, peer_identity, provider, server_config,
    server_config_optional_client_auth,
};
pub use verify::{PeerRole, VerifyError, explain_handshake_error, verify_chain};
pub use workload::WorkloadCert;
