//! This proxy's workload identity: the certificate it presents on the mesh transport and the
//! roots it trusts, from one of two sources:
//! - files (`identity.cert`, `identity.key`): for stand-alone use and tests;
//! - the CA's signing service (`identity.ca`): the key is generated here and never leaves the
//!   process; a CSR goes to the CA with the join token; the certificate is renewed at half
//!   life (with jitter), authenticated by the current one, and swapped in without dropping a
//!   connection. Failed renewals retry with backoff and warn long before expiry.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ClientConfig;
use trellis_api::ca::v1::certificate_service_client::CertificateServiceClient;
use trellis_api::ca::v1::{CreateCertificateRequest, CreateCertificateResponse};
use trellis_identity::{
    Credentials, SpiffeId, TrustBundle, WorkloadCert, WorkloadKey, bootstrap_client_config,
    client_config,
};
use trellis_model::Identity;

use crate::backoff::{Backoff, jitter};
use crate::grpc::{self, ChannelOptions};

/// Why the proxy has no identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity.id {id:?} is not a SPIFFE ID: {error}")]
    BadId {
        id: String,
        error: trellis_identity::SpiffeIdError,
    },
    #[error("cannot read {what} {path}: {error}")]
    Read {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("{0}")]
    Cert(#[from] trellis_identity::CertError),
    #[error("the certificate in {path} is for {presented}, but identity.id is {expected}")]
    WrongIdentity {
        path: String,
        presented: String,
        expected: String,
    },
    #[error("the join token file {path} is empty")]
    EmptyToken { path: String },
    #[error("cannot reach the CA at {ca}: {reason} (is `trellis control` running there?)")]
    Unreachable { ca: SocketAddr, reason: String },
    #[error("the CA at {ca} refused the CSR: {message} ({code:?})")]
    Refused {
        ca: SocketAddr,
        code: tonic::Code,
        message: String,
    },
    #[error("the CA at {ca} answered with no usable certificate: {reason}")]
    BadAnswer { ca: SocketAddr, reason: String },
}

impl IdentityError {
    /// Worth trying again (the CA may come up), as opposed to a mistake in the config.
    fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Refused { code, .. } => matches!(
                code,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ),
            _ => false,
        }
    }
}

/// Load or obtain the credentials `config` describes. From the CA, transient failures are
/// retried with backoff until the first certificate arrives.
pub(crate) async fn obtain(config: &Identity) -> Result<Arc<Credentials>, IdentityError> {
    let expected: SpiffeId = config.id.parse().map_err(|error| IdentityError::BadId {
        id: config.id.clone(),
        error,
    })?;
    let bundle_name = config.bundle.display().to_string();
    let bundle = TrustBundle::from_pem(&bundle_name, &read("trust bundle", &config.bundle)?)?;
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        return from_files(&expected, bundle, cert, key);
    }
    let Some(ca) = config.ca else {
        // The model refuses configs with no certificate source; this is its message.
        return Err(IdentityError::Read {
            what: "certificate",
            path: "(none configured)".into(),
            error: std::io::Error::new(std::io::ErrorKind::NotFound, "give cert and key, or ca"),
        });
    };
    let token = match &config.join_token_file {
        Some(path) => {
            let token = String::from_utf8_lossy(&read("join token", path)?)
                .trim()
                .to_owned();
            if token.is_empty() {
                return Err(IdentityError::EmptyToken {
                    path: path.display().to_string(),
                });
            }
            token
        }
        None => String::new(),
    };
    let client = CaClient {
        ca,
        control: control_identity(&expected)?,
        ttl: config.cert_ttl,
    };

    // The first certificate: the join token proves who we are.
    let bootstrap = bootstrap_client_config(bundle, &client.control)?;
    let mut backoff = Backoff::default();
    let (cert, bundle) = loop {
        match client
            .request(&expected, bootstrap.clone(), token.clone())
            .await
        {
            Ok(issued) => break issued,
            Err(error) if error.is_transient() => {
                let wait = backoff.next();
                tracing::warn!(%error, retry_in = ?wait, "no certificate yet; not ready");
                tokio::time::sleep(wait).await;
            }
            Err(error) => return Err(error),
        }
    };
    tracing::info!(id = %expected, not_after = ?cert.not_after(), ca = %ca, "certificate issued by the CA");
    let creds = Credentials::new(cert, bundle);
    tokio::spawn(renew_forever(client, expected, creds.clone()));
    Ok(creds)
}

fn from_files(
    expected: &SpiffeId,
    bundle: TrustBundle,
    cert: &Path,
    key: &Path,
) -> Result<Arc<Credentials>, IdentityError> {
    let chain = read("certificate chain", cert)?;
    let key_pem = read("private key", key)?;
    let cert_name = cert.display().to_string();
    let workload = WorkloadCert::from_pem(&cert_name, &chain, &key_pem)?;
    if workload.id() != expected {
        return Err(IdentityError::WrongIdentity {
            path: cert_name,
            presented: workload.id().to_string(),
            expected: expected.to_string(),
        });
    }
    tracing::info!(id = %expected, not_after = ?workload.not_after(), "identity loaded from files");
    Ok(Credentials::new(workload, bundle))
}

/// Renew at half life (± 10 % jitter), presenting the current certificate; on failure retry
/// with backoff, and warn once a quarter of the lifetime is left.
async fn renew_forever(client: CaClient, id: SpiffeId, creds: Arc<Credentials>) {
    loop {
        let current = creds.cert();
        // Never sooner than a second from now: a certificate that is already due must not turn
        // this into a busy loop against the CA.
        let wait = jitter(until(current.renew_at()), 0.1).max(Duration::from_secs(1));
        tracing::debug!(renew_in = ?wait, "next certificate renewal");
        tokio::time::sleep(wait).await;
        let mut backoff = Backoff::default();
        loop {
            let result = match client_config(&creds, &client.control) {
                Ok(tls) => client.request(&id, tls, String::new()).await,
                Err(error) => Err(error.into()),
            };
            match result {
                Ok((cert, bundle)) => {
                    tracing::info!(id = %id, not_after = ?cert.not_after(), "certificate renewed");
                    creds.set_bundle(bundle);
                    creds.set_cert(cert);
                    break;
                }
                Err(error) => {
                    let left = until(current.not_after());
                    let lifetime = current
                        .not_after()
                        .duration_since(current.not_before())
                        .unwrap_or_default();
                    let retry_in = backoff.next();
                    if left < lifetime / 4 {
                        tracing::warn!(%error, expires_in = ?left, ?retry_in, "certificate renewal failing; the certificate expires soon");
                    } else {
                        tracing::warn!(%error, expires_in = ?left, ?retry_in, "certificate renewal failed; retrying");
                    }
                    tokio::time::sleep(retry_in).await;
                }
            }
        }
    }
}

/// The CA's signing service.
#[derive(Debug)]
struct CaClient {
    ca: SocketAddr,
    /// The identity the CA (the control plane) must prove.
    control: SpiffeId,
    ttl: Duration,
}

impl CaClient {
    /// One CSR, with a fresh key: the key never leaves this process.
    async fn request(
        &self,
        id: &SpiffeId,
        tls: Arc<ClientConfig>,
        join_token: String,
    ) -> Result<(WorkloadCert, TrustBundle), IdentityError> {
        let key = WorkloadKey::generate()?;
        let csr = key.csr_pem(id)?;
        let answer = self
            .call(
                tls,
                CreateCertificateRequest {
                    csr,
                    requested_ttl_seconds: i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX),
                    join_token,
                },
            )
            .await?;
        let bad = |reason: String| IdentityError::BadAnswer {
            ca: self.ca,
            reason,
        };
        let cert = WorkloadCert::new(&key, answer.cert_chain.concat().as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        if cert.id() != id {
            return Err(bad(format!(
                "the certificate is for {}, not {id}",
                cert.id()
            )));
        }
        let bundle = TrustBundle::from_pem("the CA's trust bundle", answer.trust_bundle.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        Ok((cert, bundle))
    }

    async fn call(
        &self,
        tls: Arc<ClientConfig>,
        request: CreateCertificateRequest,
    ) -> Result<CreateCertificateResponse, IdentityError> {
        let ca = self.ca;
        let unreachable = |reason: String| IdentityError::Unreachable { ca, reason };
        let options = ChannelOptions {
            request_timeout: Some(Duration::from_secs(10)),
            keepalive: None,
        };
        let channel = grpc::connect(ca, tls, options).await.map_err(unreachable)?;
        match CertificateServiceClient::new(channel)
            .create_certificate(request)
            .await
        {
            Ok(response) => Ok(response.into_inner()),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                Err(unreachable(status.message().to_owned()))
            }
            Err(status) => Err(IdentityError::Refused {
                ca,
                code: status.code(),
                message: status.message().to_owned(),
            }),
        }
    }
}

/// The control plane's identity in our trust domain.
pub(crate) fn control_identity(me: &SpiffeId) -> Result<SpiffeId, IdentityError> {
    SpiffeId::new(me.trust_domain(), "trellis-system", "trellis-control").map_err(|error| {
        IdentityError::BadId {
            id: format!("control plane of {}", me.trust_domain()),
            error,
        }
    })
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|error| IdentityError::Read {
        what,
        path: path.display().to_string(),
        error,
    })
}

/// How long until `at` (zero if it has passed).
fn until(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now()).unwrap_or_default()
}
