//! `trellis control`: the mesh CA's signing service over TLS gRPC, driven the way a proxy will
//! drive it. `trellis ca init` makes the CA, `trellis control` serves it, `trellis control
//! token` mints a join token, and a tonic client here (the reference for the proxy's side)
//! gets a certificate that openssl verifies against root-cert.pem, then renews it over mutual
//! TLS with no token.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use tonic::Code;
use tonic::transport::Endpoint;
use trellis_api::ca::v1::certificate_service_client::CertificateServiceClient;
use trellis_api::ca::v1::{CreateCertificateRequest, CreateCertificateResponse};
use trellis_identity::{
    Credentials, SpiffeId, TrustBundle, WorkloadCert, WorkloadKey, bootstrap_client_config,
    client_config,
};
use trellis_test_support::{CommandOutput, ControlProcess, TestDir, require_tool, run};

use crate::trellis;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";
const CONTROL: &str = "spiffe://cluster.local/ns/trellis-system/sa/trellis-control";
const DEADLINE: Duration = Duration::from_secs(30);

/// A workload's side of one request: its key (never sent) and what the CA answered.
struct Answer {
    key: WorkloadKey,
    response: CreateCertificateResponse,
}

fn trellis_ok(args: &[&str]) -> CommandOutput {
    let mut command = trellis().command();
    command.args(args);
    let out = run(&format!("trellis {}", args.join(" ")), command, DEADLINE);
    assert_eq!(
        out.status.code(),
        Some(0),
        "trellis {} failed ({})\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        out.stdout_text(),
        out.stderr
    );
    out
}

fn openssl(args: &[&str]) -> CommandOutput {
    let mut command = Command::new("openssl");
    command.args(args);
    run(&format!("openssl {}", args.join(" ")), command, DEADLINE)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn id(s: &str) -> SpiffeId {
    s.parse().expect("valid SPIFFE ID")
}

/// Asks the control plane at `addr` for a certificate for `csr_id`, over TLS configured by
/// `tls`, with a fresh key: what a proxy does at start (with a token) and at half life
/// (without one, presenting its current certificate).
fn ask(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    csr_id: &str,
    token: &str,
) -> Result<Answer, tonic::Status> {
    let key = WorkloadKey::generate().expect("key");
    let request = CreateCertificateRequest {
        csr: key.csr_pem(&id(csr_id)).expect("CSR"),
        requested_ttl_seconds: 0,
        join_token: token.to_owned(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let response = runtime.block_on(async move {
        let channel = Endpoint::from_static("http://trellis-control")
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(10))
            .connect_with_connector(Connect {
                addr,
                tls: TlsConnector::from(tls),
            })
            .await
            .map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e:?}")))?;
        CertificateServiceClient::new(channel)
            .create_certificate(request)
            .await
            .map(tonic::Response::into_inner)
    })?;
    Ok(Answer { key, response })
}

/// TCP, then rustls: tonic runs HTTP/2 over what this returns. The rustls config checks the
/// server's SPIFFE ID, so the server name passed here is not checked.
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

impl Answer {
    fn cert(&self) -> WorkloadCert {
        WorkloadCert::new(&self.key, self.response.cert_chain.concat().as_bytes())
            .expect("the chain goes with the key")
    }

    /// Writes the leaf and the intermediates as separate files, the way openssl takes them.
    fn write(&self, dir: &TestDir, name: &str) -> (PathBuf, PathBuf) {
        let (leaf, intermediates) = self
            .response
            .cert_chain
            .split_first()
            .expect("a non-empty chain");
        (
            dir.write(&format!("{name}-leaf.pem"), leaf),
            dir.write(&format!("{name}-chain.pem"), intermediates.concat()),
        )
    }
}

fn openssl_verifies(roots: &Path, leaf: &Path, chain: &Path) {
    for purpose in ["sslclient", "sslserver"] {
        let args = [
            "verify",
            "-purpose",
            purpose,
            "-CAfile",
            path(roots),
            "-untrusted",
            path(chain),
            path(leaf),
        ];
        let out = openssl(&args);
        assert!(
            out.status.success() && out.stdout_text().contains(": OK"),
            "openssl {}: {}\n{}",
            args.join(" "),
            out.stdout_text(),
            out.stderr
        );
    }
}

#[test]
fn join_token_then_renewal_gives_certificates_openssl_verifies() {
    if !require_tool("openssl") {
        return;
    }
    let dir = TestDir::new("ca-service");
    let ca = dir.join("ca");
    trellis_ok(&["ca", "init", "--dir", path(&ca)]);
    let control = ControlProcess::start(&trellis(), &ca, &[]);
    let roots = ca.join("root-cert.pem");
    let bundle = TrustBundle::from_pem_file(&roots).expect("root-cert.pem");

    // The join token: printed alone on stdout.
    let out = trellis_ok(&[
        "control",
        "token",
        "--ca-dir",
        path(&ca),
        "--id",
        WEB,
        "--ttl",
        "10m",
    ]);
    let token = out.stdout_text().trim().to_owned();
    assert!(
        !token.is_empty() && !token.contains(char::is_whitespace),
        "{token:?}"
    );

    // Bootstrap: no client certificate; the server must be the control plane.
    let bootstrap = bootstrap_client_config(bundle.clone(), &id(CONTROL)).expect("tls");
    let first = ask(control.grpc(), bootstrap.clone(), WEB, &token).unwrap_or_else(|status| {
        panic!(
            "bootstrap refused: {status:?}\n{}",
            control.process().stderr_tail(30)
        )
    });
    assert_eq!(first.cert().id(), &id(WEB));
    let returned_bundle = dir.write("bundle.pem", &first.response.trust_bundle);
    let (leaf, chain) = first.write(&dir, "first");
    openssl_verifies(&roots, &leaf, &chain);
    openssl_verifies(&returned_bundle, &leaf, &chain);
    let text = openssl(&["x509", "-in", path(&leaf), "-noout", "-text"]).stdout_text();
    assert!(text.contains(&format!("URI:{WEB}")), "{text}");
    assert!(!text.contains("DNS:"), "{text}");

    // A CSR for another identity than the token's is refused, saying so.
    let status = ask(control.grpc(), bootstrap.clone(), DB, &token)
        .err()
        .expect("a CSR for db with web's token must be refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        format!("CSR asks for {DB} but the join token is for {WEB}")
    );

    // No token and no certificate: told how to get a token.
    let status = ask(control.grpc(), bootstrap, WEB, "")
        .err()
        .expect("no credential must be refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("trellis control token"),
        "{}",
        status.message()
    );

    // Renewal: the current certificate over mutual TLS, no token.
    let creds = Credentials::new(first.cert(), bundle);
    let renewal = client_config(&creds, &id(CONTROL)).expect("tls");
    let renewed = ask(control.grpc(), renewal, WEB, "").unwrap_or_else(|status| {
        panic!(
            "renewal refused: {status:?}\n{}",
            control.process().stderr_tail(30)
        )
    });
    assert_eq!(renewed.cert().id(), &id(WEB));
    let (leaf, chain) = renewed.write(&dir, "renewed");
    openssl_verifies(&roots, &leaf, &chain);

    // The control plane logged each issuance and counted everything.
    let logged = control
        .process()
        .stderr_lines()
        .iter()
        .filter(|line| line.contains("certificate issued") && line.contains(WEB))
        .count();
    assert_eq!(logged, 2, "{}", control.process().stderr_tail(30));
    let metrics = control.metrics();
    let dump = metrics.dump("trellis_ca_");
    let issued = |credential: &str| {
        let labels = [("credential", credential)];
        metrics.sum("trellis_ca_certificates_issued_total", &labels)
    };
    let refused = |reason: &str| {
        let labels = [("reason", reason)];
        metrics.sum("trellis_ca_certificates_refused_total", &labels)
    };
    assert_eq!(issued("join_token"), 1.0, "{dump}");
    assert_eq!(issued("certificate"), 1.0, "{dump}");
    assert_eq!(refused("wrong_identity"), 1.0, "{dump}");
    assert_eq!(refused("no_credential"), 1.0, "{dump}");

    // SIGTERM drains and exits 0.
    let mut process = control.into_process();
    process.signal("TERM");
    let status = process.wait_exit(Duration::from_secs(15));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "after SIGTERM: {status:?}\n{}",
        process.stderr_tail(30)
    );
}

#[test]
fn token_for_another_trust_domain_is_refused_at_minting() {
    let dir = TestDir::new("ca-service-token");
    let ca = dir.join("ca");
    trellis_ok(&["ca", "init", "--dir", path(&ca)]);
    let mut command = trellis().command();
    command.args([
        "control",
        "token",
        "--ca-dir",
        path(&ca),
        "--id",
        "spiffe://elsewhere.example/ns/shop/sa/web",
    ]);
    let out = run("trellis control token", command, DEADLINE);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout_text());
    assert!(
        out.stderr.contains("signs for cluster.local"),
        "{}",
        out.stderr
    );
}
