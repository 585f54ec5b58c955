use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use rustls::client::danger::ServerCertVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::testing::{id, new_ca, workload};
use crate::verify::{ClientIdentityVerifier, Roots, ServerIdentityVerifier};
use crate::{CertificateAuthority, Credentials, VerifyError, WorkloadCert};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn creds(ca: &CertificateAuthority, sa: &str) -> Arc<Credentials> {
    Credentials::new(workload(ca, sa), ca.bundle().clone())
}

/// A certificate from `ca` that expired a day ago.
fn expired(ca: &CertificateAuthority, sa: &str) -> WorkloadCert {
    let key = crate::WorkloadKey::generate().unwrap();
    let csr = key.csr_pem(&id(sa)).unwrap();
    let two_days_ago = SystemTime::now() - 2 * DAY;
    let issued = ca
        .sign_csr_at(csr.as_bytes(), &id(sa), DAY, two_days_ago)
        .unwrap();
    WorkloadCert::new(&key, issued.chain_pem.as_bytes()).unwrap()
}

fn split(cert: &WorkloadCert) -> (&CertificateDer<'static>, &[CertificateDer<'static>]) {
    cert.chain().split_first().unwrap()
}

fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
}

/// The operator message of a verifier's refusal.
fn refusal(err: rustls::Error) -> VerifyError {
    VerifyError::from_tls(&err)
        .unwrap_or_else(|| panic!("not a VerifyError: {err}"))
        .clone()
}

fn verify_as_client(
    trusting: &Arc<Credentials>,
    expected: &SpiffeId,
    presented: &WorkloadCert,
) -> Result<(), rustls::Error> {
    let verifier = ServerIdentityVerifier::new(
        Roots::Live(Arc::clone(trusting)),
        expected.clone(),
        provider().signature_verification_algorithms,
    );
    let (leaf, rest) = split(presented);
    verifier
        .verify_server_cert(leaf, rest, &server_name(), &[], UnixTime::now())
        .map(|_| ())
}

fn verify_as_server(
    trusting: &Arc<Credentials>,
    presented: &WorkloadCert,
) -> Result<(), rustls::Error> {
    let verifier = ClientIdentityVerifier::new(
        Arc::clone(trusting),
        provider().signature_verification_algorithms,
        true,
    );
    let (leaf, rest) = split(presented);
    verifier
        .verify_client_cert(leaf, rest, UnixTime::now())
        .map(|_| ())
}

#[test]
fn verifiers_accept_a_good_chain_with_the_expected_identity() {
    let (_dir, ca) = new_ca("verify-ok");
    let me = creds(&ca, "client");
    let web = workload(&ca, "web");
    verify_as_client(&me, &id("web"), &web).unwrap();
    verify_as_server(&me, &web).unwrap();
}

#[test]
fn verifiers_refuse_an_unknown_authority_naming_both_sides() {
    let (_dir, ca) = new_ca("verify-unknown");
    let (_other_dir, other) = new_ca("verify-unknown-other");
    let me = creds(&ca, "client");
    let stranger = workload(&other, "web");
    let expected = format!(
        "certificate signed by unknown authority (issuer {}; the trust bundle holds {})",
        other.root_name(),
        ca.root_name()
    );
    let err = refusal(verify_as_client(&me, &id("web"), &stranger).unwrap_err());
    assert_eq!(err.to_string(), expected);
    let err = refusal(verify_as_server(&me, &stranger).unwrap_err());
    assert_eq!(err.to_string(), expected);

    // A leaf of our own CA sent without its intermediate: that is the missing authority.
    let web = workload(&ca, "web");
    let verifier = ServerIdentityVerifier::new(
        Roots::Live(Arc::clone(&me)),
        id("web"),
        provider().signature_verification_algorithms,
    );
    let err = verifier
        .verify_server_cert(&web.chain()[0], &[], &server_name(), &[], UnixTime::now())
        .unwrap_err();
    assert_eq!(
        refusal(err).to_string(),
        format!(
            "certificate signed by unknown authority (issuer {}; the trust bundle holds {})",
            ca.signing_name(),
            ca.root_name()
        )
    );
}

#[test]
fn verifiers_refuse_an_expired_certificate_saying_when() {
    let (_dir, ca) = new_ca("verify-expired");
    let me = creds(&ca, "client");
    let old = expired(&ca, "web");
    let err = refusal(verify_as_client(&me, &id("web"), &old).unwrap_err());
    let text = err.to_string();
    assert!(
        text.starts_with("certificate expired 1d ago (at "),
        "{text}"
    );
    assert!(
        text.ends_with("UTC; spiffe://cluster.local/ns/default/sa/web)"),
        "{text}"
    );
    let err = refusal(verify_as_server(&me, &old).unwrap_err());
    assert!(matches!(err, VerifyError::Expired { .. }), "{err}");
    // What the proxy logs for a failed handshake.
    let tls = verify_as_server(&me, &old).unwrap_err();
    let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
    let logged = crate::explain_handshake_error(&io);
    assert!(
        logged.starts_with("peer certificate expired 1d ago (at "),
        "{logged}"
    );
}

#[test]
fn the_client_refuses_a_server_with_another_identity() {
    let (_dir, ca) = new_ca("verify-identity");
    let me = creds(&ca, "client");
    let db = workload(&ca, "db");
    let err = refusal(verify_as_client(&me, &id("web"), &db).unwrap_err());
    assert_eq!(
        err.to_string(),
        "identity spiffe://cluster.local/ns/default/sa/db is not the expected \
         spiffe://cluster.local/ns/default/sa/web"
    );
}

/// Runs a handshake over an in-memory pipe and returns both ends (or the errors).
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (
    std::io::Result<tokio_rustls::server::TlsStream<DuplexStream>>,
    std::io::Result<tokio_rustls::client::TlsStream<DuplexStream>>,
) {
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server);
    let connector = TlsConnector::from(client);
    tokio::join!(
        acceptor.accept(server_io),
        connector.connect(server_name(), client_io)
    )
}

#[tokio::test]
async fn a_mutual_tls_1_3_handshake_with_h2_and_both_identities() {
    let (_dir, ca) = new_ca("handshake");
    let server_creds = creds(&ca, "web");
    let client_creds = creds(&ca, "client");
    let (server, client) = handshake(
        server_config(&server_creds).unwrap(),
        client_config(&client_creds, &id("web")).unwrap(),
    )
    .await;
    let mut server = server.unwrap();
    let mut client = client.unwrap();

    let (_, server_conn) = server.get_ref();
    let (_, client_conn) = client.get_ref();
    assert_eq!(
        server_conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(server_conn.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(client_conn.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(peer_identity(server_conn), Some(id("client")));
    assert_eq!(peer_identity(client_conn), Some(id("web")));
    assert_eq!(
        client_conn
            .negotiated_key_exchange_group()
            .map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );

    client.write_all(b"ping").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn a_handshake_fails_on_the_wrong_server_identity_with_the_reason() {
    let (_dir, ca) = new_ca("handshake-identity");
    let (server, client) = handshake(
        server_config(&creds(&ca, "db")).unwrap(),
        client_config(&creds(&ca, "client"), &id("web")).unwrap(),
    )
    .await;
    let err = client.unwrap_err();
    let found = VerifyError::find(&err).unwrap_or_else(|| panic!("no VerifyError in {err}"));
    assert!(
        matches!(found, VerifyError::WrongIdentity { .. }),
        "{found}"
    );
    assert_eq!(
        crate::explain_handshake_error(&err),
        "peer identity spiffe://cluster.local/ns/default/sa/db is not the expected \
         spiffe://cluster.local/ns/default/sa/web"
    );
    assert!(server.is_err(), "the server sees the client's alert");
}

#[tokio::test]
async fn a_server_refuses_a_client_from_another_ca() {
    let (_dir, ca) = new_ca("handshake-stranger");
    let (_other_dir, other) = new_ca("handshake-stranger-other");
    // The client trusts both CAs (so its side succeeds); the server trusts only its own.
    let client_creds = Credentials::new(
        workload(&other, "client"),
        ca.bundle().merged(other.bundle()),
    );
    let (server, client) = handshake(
        server_config(&creds(&ca, "web")).unwrap(),
        client_config(&client_creds, &id("web")).unwrap(),
    )
    .await;
    let err = match server {
        Ok(_) => panic!("the server accepted a client from another CA"),
        Err(e) => e,
    };
    let found = VerifyError::find(&err).unwrap_or_else(|| panic!("no VerifyError in {err}"));
    assert!(
        matches!(found, VerifyError::UnknownAuthority { .. }),
        "{found}"
    );
    // In TLS 1.3 the client finishes before the server checks its certificate; its first
    // read then sees the server's alert.
    if let Ok(mut client) = client {
        let mut buf = [0u8; 1];
        assert!(client.read(&mut buf).await.is_err() || buf == [0]);
    }
}

#[tokio::test]
async fn set_cert_changes_the_certificate_of_new_handshakes_only() {
    let (_dir, ca) = new_ca("swap");
    let server_creds = creds(&ca, "web");
    let client_creds = creds(&ca, "client");
    let server_config = server_config(&server_creds).unwrap();
    let client_config = client_config(&client_creds, &id("web")).unwrap();
    let presented = |client: &tokio_rustls::client::TlsStream<DuplexStream>| {
        client.get_ref().1.peer_certificates().unwrap()[0].clone()
    };

    let first_cert = server_creds.cert().chain()[0].clone();
    let (server1, client1) =
        handshake(Arc::clone(&server_config), Arc::clone(&client_config)).await;
    let (mut server1, mut client1) = (server1.unwrap(), client1.unwrap());
    assert_eq!(presented(&client1), first_cert);

    let renewed = workload(&ca, "web");
    let renewed_cert = renewed.chain()[0].clone();
    assert_ne!(renewed_cert, first_cert);
    server_creds.set_cert(renewed);

    let (_server2, client2) =
        handshake(Arc::clone(&server_config), Arc::clone(&client_config)).await;
    assert_eq!(presented(&client2.unwrap()), renewed_cert);

    // The first connection is untouched by the swap.
    client1.write_all(b"still here").await.unwrap();
    client1.flush().await.unwrap();
    let mut buf = [0u8; 10];
    server1.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
}

#[tokio::test]
async fn set_bundle_lets_new_handshakes_trust_a_new_root() {
    let (_dir, ca) = new_ca("bundle-swap");
    let (_other_dir, other) = new_ca("bundle-swap-other");
    let client_creds = creds(&ca, "client");
    let server_creds =
        Credentials::new(workload(&other, "web"), ca.bundle().merged(other.bundle()));
    let client_config = client_config(&client_creds, &id("web")).unwrap();
    let server_config = server_config(&server_creds).unwrap();

    let (_s, client) = handshake(Arc::clone(&server_config), Arc::clone(&client_config)).await;
    assert!(
        client.is_err(),
        "the client does not trust the other CA yet"
    );
    client_creds.set_bundle(ca.bundle().merged(other.bundle()));
    let (server, client) = handshake(server_config, client_config).await;
    server.unwrap();
    client.unwrap();
}
