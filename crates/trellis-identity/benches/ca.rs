//! Micro-benchmarks of workload identity: what a certificate costs to make, and what a
//! mutual-TLS connection costs to set up compared with a request over it (issue 4).
//!
//! - `workload/*`: the workload's side of issuance: `generate_key` (ECDSA P-256) and `csr`
//!   (build and sign the CSR for a SPIFFE ID, PEM-encode it).
//! - `ca/sign_csr`: the CA's whole cost per CSR (parse and check it, sign the leaf with the
//!   intermediate, PEM-encode the chain and bundle); its throughput is the CA's CSRs per second
//!   on one core. No file I/O: the CA is loaded once, in a temp directory.
//! - `mtls/handshake`: one full TLS 1.3 handshake over an in-memory pipe, client and server
//!   configs as the proxy builds them (X25519MLKEM768, no resumption), both chains and both
//!   SPIFFE IDs verified, and the server reading the peer's identity as the inbound proxy does.
//!   Both ends run on one current-thread runtime, so the figure is the CPU of both ends
//!   together, without any network round trip.
//! - `mtls/record_16k_round_trip`: on an established connection, 16 KiB (one full record)
//!   from client to server and back: the per-request cost to set the handshake against.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use trellis_identity::{
    ALPN_H2, CertificateAuthority, Credentials, Existing, SpiffeId, WorkloadCert, WorkloadKey,
    client_config, peer_identity, server_config,
};

const TRUST_DOMAIN: &str = "cluster.local";
const TTL: Duration = Duration::from_secs(24 * 3600);
/// The largest TLS record's plaintext.
const RECORD: usize = 16 * 1024;
/// The in-memory pipe holds a whole flight or record, so neither side waits on the other's
/// reads more than the protocol requires.
const PIPE: usize = 64 * 1024;

/// A CA in a fresh directory under the system temp dir, removed on drop.
struct Fixture {
    dir: PathBuf,
    ca: CertificateAuthority,
}

impl Fixture {
    fn new() -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("trellis-identity-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = CertificateAuthority::init(&dir.join("ca"), TRUST_DOMAIN, Existing::Refuse)
            .expect("ca init");
        Fixture { dir, ca }
    }

    /// Credentials for `sa`, issued by the CA through the public CSR path.
    fn credentials(&self, sa: &str) -> Arc<Credentials> {
        let id = id(sa);
        let key = WorkloadKey::generate().expect("key");
        let csr = key.csr_pem(&id).expect("csr");
        let issued = self.ca.sign_csr(csr.as_bytes(), &id, TTL).expect("sign");
        let cert = WorkloadCert::new(&key, issued.chain_pem.as_bytes()).expect("workload cert");
        Credentials::new(cert, self.ca.bundle().clone())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, "default", sa).expect("valid id")
}

fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
}

/// One handshake over a fresh pipe: both streams, and the client's identity as the server
/// sees it.
async fn handshake(
    acceptor: &TlsAcceptor,
    connector: &TlsConnector,
) -> (
    server::TlsStream<DuplexStream>,
    client::TlsStream<DuplexStream>,
    Option<SpiffeId>,
) {
    let (server_io, client_io) = tokio::io::duplex(PIPE);
    let (server, client) = tokio::join!(
        acceptor.accept(server_io),
        connector.connect(server_name(), client_io)
    );
    let server = server.expect("server handshake");
    let client = client.expect("client handshake");
    let peer = peer_identity(server.get_ref().1);
    (server, client, peer)
}

/// `RECORD` bytes from the client to the server and back.
async fn round_trip(
    server: &mut server::TlsStream<DuplexStream>,
    client: &mut client::TlsStream<DuplexStream>,
    payload: &[u8],
    at_server: &mut [u8],
    at_client: &mut [u8],
) {
    let client_side = async {
        client.write_all(payload).await.expect("client write");
        client.flush().await.expect("client flush");
        client.read_exact(at_client).await.expect("client read");
    };
    let server_side = async {
        server.read_exact(at_server).await.expect("server read");
        server.write_all(at_server).await.expect("server write");
        server.flush().await.expect("server flush");
    };
    tokio::join!(client_side, server_side);
}

fn bench_workload(c: &mut Criterion) {
    let id = id("web");
    let key = WorkloadKey::generate().expect("key");

    let mut group = c.benchmark_group("workload");
    group.throughput(Throughput::Elements(1));
    group.bench_function("generate_key", |b| {
        b.iter(|| WorkloadKey::generate().expect("key"))
    });
    group.bench_function("csr", |b| {
        b.iter(|| key.csr_pem(black_box(&id)).expect("csr"))
    });
    group.finish();
}

fn bench_ca(c: &mut Criterion, fixture: &Fixture) {
    let id = id("web");
    let key = WorkloadKey::generate().expect("key");
    let csr = key.csr_pem(&id).expect("csr");
    let issued = fixture.ca.sign_csr(csr.as_bytes(), &id, TTL).expect("sign");
    WorkloadCert::new(&key, issued.chain_pem.as_bytes()).expect("the signed chain fits the key");

    let mut group = c.benchmark_group("ca");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign_csr", |b| {
        b.iter(|| {
            fixture
                .ca
                .sign_csr(black_box(csr.as_bytes()), black_box(&id), TTL)
                .expect("sign")
        })
    });
    group.finish();
}

fn bench_mtls(c: &mut Criterion, fixture: &Fixture, rt: &Runtime) {
    let server_creds = fixture.credentials("web");
    let client_creds = fixture.credentials("client");
    let acceptor = TlsAcceptor::from(server_config(&server_creds).expect("server config"));
    let connector =
        TlsConnector::from(client_config(&client_creds, &id("web")).expect("client config"));

    // What is measured below is the handshake the mesh does: check it once, untimed.
    let (mut server, mut client, peer) = rt.block_on(handshake(&acceptor, &connector));
    let (_, client_conn) = client.get_ref();
    assert_eq!(peer, Some(id("client")));
    assert_eq!(peer_identity(client_conn), Some(id("web")));
    assert_eq!(
        client_conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(client_conn.alpn_protocol(), Some(ALPN_H2));
    assert_eq!(
        client_conn
            .negotiated_key_exchange_group()
            .map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );

    let payload: Vec<u8> = (0..RECORD).map(|i| i as u8).collect();
    let mut at_server = vec![0; RECORD];
    let mut at_client = vec![0; RECORD];
    rt.block_on(round_trip(
        &mut server,
        &mut client,
        &payload,
        &mut at_server,
        &mut at_client,
    ));
    assert_eq!(at_client, payload);

    let mut group = c.benchmark_group("mtls");
    group.throughput(Throughput::Elements(1));
    group.bench_function("handshake", |b| {
        b.iter(|| rt.block_on(handshake(&acceptor, &connector)))
    });
    group.bench_function("record_16k_round_trip", |b| {
        b.iter(|| {
            rt.block_on(round_trip(
                &mut server,
                &mut client,
                black_box(&payload),
                &mut at_server,
                &mut at_client,
            ))
        })
    });
    group.finish();
}

/// One entry point so the CA directory lives exactly as long as the benchmarks using it.
fn bench_identity(c: &mut Criterion) {
    let fixture = Fixture::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    bench_workload(c);
    bench_ca(c, &fixture);
    bench_mtls(c, &fixture, &rt);
}

criterion_group!(benches, bench_identity);
criterion_main!(benches);
