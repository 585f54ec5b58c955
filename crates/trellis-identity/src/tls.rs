//! rustls configurations for the mesh transport: TLS 1.3 only, ALPN `h2`, both sides
//! authenticated by SPIFFE certificates, aws-lc-rs as the one crypto provider.
//!
//! Choices worth knowing:
//! - Key exchange prefers the X25519MLKEM768 hybrid (post-quantum), then X25519 and P-256.
//! - No session resumption (no tickets, no session cache): every connection verifies the
//!   peer's current certificate against the current bundle. The proxy pools one long-lived
//!   connection per peer, so full handshakes are rare.
//! - The client sends no SNI: the server's identity is checked against the expected SPIFFE
//!   ID, not a host name, and the name passed to `connect` is ignored (an IP address is fine).

use std::sync::{Arc, OnceLock};

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, CommonState, ServerConfig};

use crate::credentials::Credentials;
use crate::error::CertError;
use crate::verify::{ClientIdentityVerifier, Roots, ServerIdentityVerifier};
use crate::{SpiffeId, TrustBundle, x509};

/// The ALPN protocol of the mesh transport.
pub const ALPN_H2: &[u8] = b"h2";

/// A server config for the mesh port: presents `creds`' certificate, requires a client
/// certificate that chains to `creds`' bundle and carries a SPIFFE ID.
pub fn server_config(creds: &Arc<Credentials>) -> Result<Arc<ServerConfig>, CertError> {
    build_server_config(creds, true)
}

/// Like [`server_config`], for a server some of whose callers have no certificate yet (the
/// CA's signing service: a first CSR comes with a join token instead). A client certificate
/// that is presented must verify, or the handshake fails.
pub fn server_config_optional_client_auth(
    creds: &Arc<Credentials>,
) -> Result<Arc<ServerConfig>, CertError> {
    build_server_config(creds, false)
}

fn build_server_config(
    creds: &Arc<Credentials>,
    client_cert_required: bool,
) -> Result<Arc<ServerConfig>, CertError> {
    let provider = provider();
    let verifier = ClientIdentityVerifier::new(
        Arc::clone(creds),
        provider.signature_verification_algorithms,
        client_cert_required,
    );
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::clone(creds) as Arc<dyn rustls::server::ResolvesServerCert>);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client config for connections to a peer that must prove `expected_server` (secure
/// naming): presents `creds`' certificate, verifies the server's chain against `creds`'
/// bundle and its SPIFFE ID against `expected_server`. Build one per destination identity
/// and reuse it; all of them follow `creds` as it is renewed.
pub fn client_config(
    creds: &Arc<Credentials>,
    expected_server: &SpiffeId,
) -> Result<Arc<ClientConfig>, CertError> {
    let provider = provider();
    let verifier = ServerIdentityVerifier::new(
        Roots::Live(Arc::clone(creds)),
        expected_server.clone(),
        provider.signature_verification_algorithms,
    );
    let mut config =
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(
                Arc::clone(creds) as Arc<dyn rustls::client::ResolvesClientCert>
            );
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// A client config for a workload that has no certificate yet (its first CSR): presents none,
/// and verifies the server (the CA) against `bundle`, handed over out of band, and its SPIFFE
/// ID against `expected_server`.
pub fn bootstrap_client_config(
    bundle: TrustBundle,
    expected_server: &SpiffeId,
) -> Result<Arc<ClientConfig>, CertError> {
    let provider = provider();
    let verifier = ServerIdentityVerifier::new(
        Roots::Fixed(bundle),
        expected_server.clone(),
        provider.signature_verification_algorithms,
    );
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The verified SPIFFE ID of the peer of an established connection (a `ServerConnection`
/// or `ClientConnection` derefs to `CommonState`). `None` before the handshake completes or
/// when the peer presented no certificate.
pub fn peer_identity(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    let cert = x509::parse(leaf).ok()?;
    x509::spiffe_uri(&cert).ok()?.parse().ok()
}

/// The crypto provider of every mesh config: aws-lc-rs, TLS 1.3 suites, hybrid
/// post-quantum key exchange first.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| {
        let mut provider = aws_lc_rs::default_provider();
        provider.kx_groups = vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
        ];
        Arc::new(provider)
    }))
}

#[cfg(test)]
mod tests;
