//! The signing service end to end inside one process: a real control plane (`app::build`) on
//! 127.0.0.1:0 over TLS, and real tonic clients that connect with rustls the way a proxy does.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use trellis_api::ca::v1::certificate_service_client::CertificateServiceClient;
use trellis_identity::{
    Credentials, Existing, TrustBundle, WorkloadCert, WorkloadKey, bootstrap_client_config,
    client_config,
};
use trellis_runtime::{LogHandle, ShutdownKind};

use super::*;
use crate::app::{self, Bound};
use crate::tls::control_identity;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A CA directory, a control plane serving it, and what a client is handed out of band.
struct Mesh {
    dir: PathBuf,
    bound: Option<Bound>,
    grpc: SocketAddr,
    admin: SocketAddr,
    tokens: JoinTokenKey,
    bundle: TrustBundle,
    control: SpiffeId,
}

/// What a workload holds after asking: its key, and the answer.
struct Answer {
    key: WorkloadKey,
    response: CreateCertificateResponse,
}

impl Mesh {
    async fn start(label: &str) -> Mesh {
        Self::start_with(label, |_| {}).await
    }

    async fn start_with(label: &str, configure: impl FnOnce(&mut app::Config)) -> Mesh {
        let dir =
            std::env::temp_dir().join(format!("trellis-control-ca-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        CertificateAuthority::init(&dir, "cluster.local", Existing::Refuse).unwrap();
        let mut config = app::Config::new(&dir);
        config.listen.grpc = "127.0.0.1:0".parse().unwrap();
        config.listen.admin = "127.0.0.1:0".parse().unwrap();
        configure(&mut config);
        let bound = app::build(config, LogHandle::disabled()).await.unwrap();
        let tokens = JoinTokenKey::load(&dir).unwrap();
        let bundle = TrustBundle::from_pem_file(&dir.join("root-cert.pem")).unwrap();
        Mesh {
            grpc: bound.addrs.grpc,
            admin: bound.addrs.admin,
            control: bound.identity.clone(),
            bound: Some(bound),
            dir,
            tokens,
            bundle,
        }
    }

    /// A bootstrap client's TLS: no client certificate; the server must chain to the bundle
    /// and be the control plane.
    fn bootstrap_tls(&self) -> Arc<ClientConfig> {
        bootstrap_client_config(self.bundle.clone(), &self.control).unwrap()
    }

    /// A renewing client's TLS: presents `cert`.
    fn renewal_tls(&self, cert: WorkloadCert) -> Arc<ClientConfig> {
        let creds = Credentials::new(cert, self.bundle.clone());
        client_config(&creds, &self.control).unwrap()
    }

    /// Asks for a certificate for `csr_id` with a fresh key.
    async fn ask(
        &self,
        tls: Arc<ClientConfig>,
        csr_id: &SpiffeId,
        token: &str,
        ttl_secs: i64,
    ) -> Result<Answer, Status> {
        let key = WorkloadKey::generate().unwrap();
        let request = CreateCertificateRequest {
            csr: key.csr_pem(csr_id).unwrap(),
            requested_ttl_seconds: ttl_secs,
            join_token: token.to_owned(),
        };
        let response = call(self.grpc, tls, request).await?;
        Ok(Answer { key, response })
    }

    async fn metrics(&self) -> String {
        let mut stream = TcpStream::connect(self.admin).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    }

    async fn stop(mut self) {
        if let Some(bound) = self.bound.take() {
            let outcome = bound
                .shutdown(ShutdownKind::Drain, Duration::from_secs(5))
                .await;
            assert!(outcome.is_complete(), "{outcome:?}");
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Answer {
    fn cert(&self) -> WorkloadCert {
        WorkloadCert::new(&self.key, self.response.cert_chain.concat().as_bytes()).unwrap()
    }

    fn chain_der(&self) -> Vec<CertificateDer<'static>> {
        self.cert().chain().to_vec()
    }
}

/// One request over a fresh TLS connection, the way a proxy makes it. A failed connection
/// comes back as UNAVAILABLE with the reason.
async fn call(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    request: CreateCertificateRequest,
) -> Result<CreateCertificateResponse, Status> {
    let channel = channel(addr, tls)
        .await
        .map_err(|e| Status::unavailable(format!("{e:?}")))?;
    CertificateServiceClient::new(channel)
        .create_certificate(request)
        .await
        .map(Response::into_inner)
}

pub(crate) async fn channel(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://trellis-control")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(Connect {
            addr,
            tls: TlsConnector::from(tls),
        })
        .await
}

/// Opens the TLS connection tonic runs HTTP/2 over: TCP to `addr`, then rustls with `tls`
/// (which checks the server's SPIFFE ID, not a host name).
#[derive(Clone)]
struct Connect {
    addr: SocketAddr,
    tls: TlsConnector,
}

impl tonic::codegen::Service<http::Uri> for Connect {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (addr, tls) = (self.addr, self.tls.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::IpAddress(addr.ip().into());
            Ok(TokioIo::new(tls.connect(name, tcp).await?))
        })
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", sa).unwrap()
}

fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn bootstrap_with_a_token_issues_exactly_that_identity() {
    let mesh = Mesh::start("bootstrap").await;
    let token = mesh.tokens.mint(&id("a"), HOUR);
    let before = SystemTime::now();
    let answer = mesh
        .ask(mesh.bootstrap_tls(), &id("a"), &token, 0)
        .await
        .unwrap();

    // Leaf then the intermediate; the bundle is the CA's root.
    assert_eq!(answer.response.cert_chain.len(), 2);
    for pem in &answer.response.cert_chain {
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
        assert!(pem.ends_with("-----END CERTIFICATE-----\n"), "{pem}");
    }
    let bundle = TrustBundle::from_pem("bundle", answer.response.trust_bundle.as_bytes()).unwrap();
    assert_eq!(bundle.certs(), mesh.bundle.certs());

    // The chain verifies against the bundle and carries exactly the identity, for 24 h.
    let cert = answer.cert();
    assert_eq!(cert.id(), &id("a"));
    let chain = answer.chain_der();
    for role in [PeerRole::Client, PeerRole::Server] {
        let verified = trellis_identity::verify_chain(&bundle, &chain, SystemTime::now(), role);
        assert_eq!(verified, Ok(id("a")), "{role}");
    }
    let lifetime = cert.not_after().duration_since(before).unwrap();
    assert!(
        lifetime > DAY - Duration::from_secs(5) && lifetime <= DAY + Duration::from_secs(1),
        "{lifetime:?}"
    );
    let metrics = mesh.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "trellis_ca_certificates_issued_total{credential=\"join_token\"}"
        ),
        Some(1),
        "{metrics}"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn csr_for_another_identity_than_the_token_is_permission_denied() {
    let mesh = Mesh::start("wrong-id").await;
    let token = mesh.tokens.mint(&id("a"), HOUR);
    let status = mesh
        .ask(mesh.bootstrap_tls(), &id("b"), &token, 0)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        "CSR asks for spiffe://cluster.local/ns/default/sa/b but the join token is for \
         spiffe://cluster.local/ns/default/sa/a"
    );
    let metrics = mesh.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "trellis_ca_certificates_refused_total{reason=\"wrong_identity\"}"
        ),
        Some(1),
        "{metrics}"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn expired_or_foreign_token_or_none_is_unauthenticated() {
    let mesh = Mesh::start("bad-token").await;
    let expired = mesh
        .tokens
        // Expired a little over an hour ago (expiries are rounded up to a whole second).
        .mint_at(
            &id("a"),
            HOUR,
            SystemTime::now() - 2 * HOUR - Duration::from_secs(1),
        );
    let status = mesh
        .ask(mesh.bootstrap_tls(), &id("a"), &expired, 0)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("join token for spiffe://cluster.local/ns/default/sa/a expired 1h ago"),
        "{}",
        status.message()
    );

    let foreign = JoinTokenKey::from_secret(&[9; 32]).mint(&id("a"), HOUR);
    let status = mesh
        .ask(mesh.bootstrap_tls(), &id("a"), &foreign, 0)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains("not minted by this control plane"),
        "{}",
        status.message()
    );

    let status = mesh
        .ask(mesh.bootstrap_tls(), &id("a"), "", 0)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("trellis control token"),
        "{}",
        status.message()
    );
    let metrics = mesh.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "trellis_ca_certificates_refused_total{reason=\"bad_token\"}"
        ),
        Some(2),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "trellis_ca_certificates_refused_total{reason=\"no_credential\"}"
        ),
        Some(1),
        "{metrics}"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn renewal_over_mutual_tls_needs_no_token() {
    let mesh = Mesh::start("renew").await;
    let token = mesh.tokens.mint(&id("a"), HOUR);
    let first = mesh
        .ask(mesh.bootstrap_tls(), &id("a"), &token, 0)
        .await
        .unwrap();

    let renewed = mesh
        .ask(mesh.renewal_tls(first.cert()), &id("a"), "", 600)
        .await
        .unwrap();
    let cert = renewed.cert();
    assert_eq!(cert.id(), &id("a"));
    assert_ne!(cert.chain()[0], first.cert().chain()[0]);
    let lifetime = cert.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(lifetime <= Duration::from_secs(600), "{lifetime:?}");
    let metrics = mesh.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "trellis_ca_certificates_issued_total{credential=\"certificate\"}"
        ),
        Some(1),
        "{metrics}"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn renewal_for_another_identity_is_refused() {
    let mesh = Mesh::start("renew-other").await;
    let token = mesh.tokens.mint(&id("a"), HOUR);
    let first = mesh
        .ask(mesh.bootstrap_tls(), &id("a"), &token, 0)
        .await
        .unwrap();
    let status = mesh
        .ask(mesh.renewal_tls(first.cert()), &id("b"), "", 0)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        "CSR asks for spiffe://cluster.local/ns/default/sa/b but the client certificate is for \
         spiffe://cluster.local/ns/default/sa/a"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn client_certificate_from_another_ca_fails_the_handshake() {
    let mesh = Mesh::start("foreign-cert").await;
    let other_dir = mesh.dir.join("other");
    let other = CertificateAuthority::init(&other_dir, "cluster.local", Existing::Refuse).unwrap();
    let (key, issued) = other.issue(&id("a"), HOUR).unwrap();
    let foreign = WorkloadCert::new(&key, issued.chain_pem.as_bytes()).unwrap();

    let result = mesh.ask(mesh.renewal_tls(foreign), &id("a"), "", 0).await;
    let status = result.err().expect("a foreign certificate must be refused");
    // The server refuses in the handshake: no gRPC status from the service, a broken
    // connection (or an alert) instead.
    assert!(
        format!("{status:?}").contains("alert"),
        "want a TLS alert, got {status:?}"
    );
    let metrics = mesh.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "trellis_ca_certificates_issued_total{credential=\"certificate\"}"
        ),
        Some(0),
        "{metrics}"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn plaintext_client_fails() {
    let mesh = Mesh::start("plaintext").await;
    let token = mesh.tokens.mint(&id("a"), HOUR);
    let key = WorkloadKey::generate().unwrap();
    let request = CreateCertificateRequest {
        csr: key.csr_pem(&id("a")).unwrap(),
        requested_ttl_seconds: 0,
        join_token: token,
    };
    // h2 with prior knowledge over plain TCP: the TCP connection opens, the server reads a
    // non-TLS first flight and closes it, so the request never reaches the service.
    let result = async {
        let channel = Endpoint::from_shared(format!("http://{}", mesh.grpc))
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("{e:?}")))?;
        CertificateServiceClient::new(channel)
            .create_certificate(request)
            .await
    }
    .await;
    let status = result.expect_err("plaintext must not reach the service");
    assert!(
        matches!(status.code(), Code::Unknown | Code::Unavailable),
        "{status:?}"
    );
    let metrics = mesh.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "trellis_ca_certificates_issued_total{credential=\"join_token\"}"
        ),
        Some(0),
        "{metrics}"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn server_is_verified_as_the_control_plane() {
    let mesh = Mesh::start("server-id").await;
    assert_eq!(mesh.control, control_identity("cluster.local").unwrap());
    // A client expecting someone else refuses the server.
    let tls = bootstrap_client_config(mesh.bundle.clone(), &id("impostor")).unwrap();
    let token = mesh.tokens.mint(&id("a"), HOUR);
    let status = mesh.ask(tls, &id("a"), &token, 0).await.err().unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("WrongIdentity"),
        "{}",
        status.message()
    );
    mesh.stop().await;
}

#[tokio::test]
async fn requested_lifetime_is_capped_by_config() {
    let mesh = Mesh::start_with("ttl", |config| {
        config.ca.default_ttl = HOUR;
        config.ca.max_ttl = 2 * HOUR;
    })
    .await;
    let token = mesh.tokens.mint(&id("a"), HOUR);
    for (asked, want) in [(0, HOUR), (60, Duration::from_secs(60)), (86_400, 2 * HOUR)] {
        let answer = mesh
            .ask(mesh.bootstrap_tls(), &id("a"), &token, asked)
            .await
            .unwrap();
        let life = answer
            .cert()
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap();
        assert!(
            life <= want && life + Duration::from_secs(5) > want,
            "asked {asked}s: {life:?}"
        );
    }
    mesh.stop().await;
}

/// The decision alone, without a network: what the handler turns into a gRPC status.
mod decide {
    use super::*;
    use crate::metrics::Metrics;
    use crate::tls::Peer;

    fn service(label: &str) -> (PathBuf, CaService, Arc<CertificateAuthority>) {
        let dir = std::env::temp_dir().join(format!(
            "trellis-control-decide-{label}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let ca =
            Arc::new(CertificateAuthority::init(&dir, "cluster.local", Existing::Refuse).unwrap());
        let tokens = JoinTokenKey::from_secret(&[1; 32]);
        let service = CaService::new(ca.clone(), tokens, Config::default(), Metrics::new());
        (dir, service, ca)
    }

    fn csr(sa: &str) -> String {
        WorkloadKey::generate().unwrap().csr_pem(&id(sa)).unwrap()
    }

    #[test]
    fn expired_client_certificate_cannot_renew() {
        let (dir, service, ca) = service("expired-cert");
        let key = WorkloadKey::generate().unwrap();
        let issued = ca
            .sign_csr_at(
                key.csr_pem(&id("a")).unwrap().as_bytes(),
                &id("a"),
                HOUR,
                SystemTime::now() - 2 * HOUR,
            )
            .unwrap();
        let cert = WorkloadCert::new(&key, issued.chain_pem.as_bytes()).unwrap();
        let peer = Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            chain: Some(cert.chain().to_vec().into()),
        };
        let request = CreateCertificateRequest {
            csr: csr("a"),
            ..Default::default()
        };
        let refusal = service
            .create(&request, Some(&peer), SystemTime::now())
            .unwrap_err();
        assert_eq!(refusal.code(), Code::Unauthenticated);
        assert!(
            refusal
                .to_string()
                .starts_with("client certificate expired 1h ago"),
            "{refusal}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_requests_are_invalid_arguments() {
        let (dir, service, _ca) = service("bad-request");
        let tokens = JoinTokenKey::from_secret(&[1; 32]);
        let token = tokens.mint(&id("a"), HOUR);
        let now = SystemTime::now();

        let negative = CreateCertificateRequest {
            csr: csr("a"),
            requested_ttl_seconds: -5,
            join_token: token.clone(),
        };
        let refusal = service.create(&negative, None, now).unwrap_err();
        assert_eq!(refusal.code(), Code::InvalidArgument, "{refusal}");
        assert_eq!(refusal.reason(), "bad_ttl");

        let garbage = CreateCertificateRequest {
            csr: "not a csr".to_owned(),
            requested_ttl_seconds: 0,
            join_token: token,
        };
        let refusal = service.create(&garbage, None, now).unwrap_err();
        assert_eq!(refusal.code(), Code::InvalidArgument, "{refusal}");
        assert!(
            refusal.to_string().starts_with("CSR refused: "),
            "{refusal}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn token_takes_precedence_over_a_presented_certificate() {
        let (dir, service, ca) = service("precedence");
        let (key, issued) = ca.issue(&id("b"), HOUR).unwrap();
        let cert = WorkloadCert::new(&key, issued.chain_pem.as_bytes()).unwrap();
        let peer = Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            chain: Some(cert.chain().to_vec().into()),
        };
        let request = CreateCertificateRequest {
            csr: csr("a"),
            requested_ttl_seconds: 0,
            join_token: JoinTokenKey::from_secret(&[1; 32]).mint(&id("a"), HOUR),
        };
        let issued = service
            .create(&request, Some(&peer), SystemTime::now())
            .unwrap();
        assert_eq!(issued.identity, id("a"));
        assert_eq!(issued.credential, Credential::JoinToken);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pem_chain_splits_into_certificates() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
                   -----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        assert_eq!(
            split_pem(pem),
            [
                "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n",
                "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n"
            ]
        );
    }
}
