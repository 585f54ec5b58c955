//! The signing service, `trellis.ca.v1.CertificateService`: a CSR and a credential in, a
//! certificate chain and the trust bundle out.
//!
//! The credential proves an identity, and the CSR must ask for exactly that identity:
//! - bootstrap: a join token ([`crate::token`]) minted by this control plane;
//! - renewal: no token, and the certificate the client presented in the TLS handshake, which
//!   is checked again here (unexpired now, chaining to the bundle now: a connection may have
//!   been open since before it expired).
//!
//! A request with a token is judged by the token alone. Every refusal is a [`Refusal`] whose
//! message says what to fix; [`Refusal::code`] picks the gRPC status.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};
use trellis_api::ca::v1::certificate_service_server::{
    CertificateService, CertificateServiceServer,
};
use trellis_api::ca::v1::{CreateCertificateRequest, CreateCertificateResponse};
use trellis_identity::ca::DEFAULT_WORKLOAD_TTL;
use trellis_identity::{
    CaError, CertificateAuthority, CsrRefusal, IssuedCert, PeerRole, SpiffeId, VerifyError, human,
};

use crate::metrics::Metrics;
use crate::tls::Peer;
use crate::token::{JoinTokenKey, TokenError};

/// How long the certificates the service signs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// When the request asks for none (`requested_ttl_seconds` = 0). 24 h by default.
    pub default_ttl: Duration,
    /// The most a request may ask for. Defaults to `default_ttl`.
    pub max_ttl: Duration,
}

/// The service: the CA, the join token key, the lifetimes, the metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CaService {
    inner: Arc<Inner>,
}

/// A certificate the service signed, and for whom.
#[derive(Debug)]
pub struct Issued {
    pub identity: SpiffeId,
    pub credential: Credential,
    pub cert: IssuedCert,
}

/// What authenticated a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A join token (bootstrap).
    JoinToken,
    /// The client's current certificate, presented over mutual TLS (renewal).
    Certificate,
}

/// Why a request is refused, in words the requester can act on.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "no credential: a first certificate needs a join token (mint one with `trellis control \
         token --ca-dir <CA dir> --id <your SPIFFE ID>` and send it as join_token); a renewal \
         needs the current certificate presented over mutual TLS"
    )]
    NoCredential,
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("client {0}; get a new certificate with a join token")]
    Certificate(Box<VerifyError>),
    #[error("CSR asks for {requested} but {} is for {proven}", .credential.describe())]
    WrongIdentity {
        requested: String,
        proven: SpiffeId,
        credential: Credential,
    },
    #[error("CSR refused: {0}")]
    Csr(CsrRefusal),
    #[error(
        "requested_ttl_seconds is {0}; send 0 for the CA's default or a positive number of seconds"
    )]
    NegativeTtl(i64),
    #[error("the CA cannot sign: {0}")]
    Sign(Box<CaError>),
}

struct Inner {
    ca: Arc<CertificateAuthority>,
    tokens: JoinTokenKey,
    config: Config,
    metrics: Metrics,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            default_ttl: DEFAULT_WORKLOAD_TTL,
            max_ttl: DEFAULT_WORKLOAD_TTL,
        }
    }
}

impl Config {
    /// The lifetime to issue for a request asking for `requested` seconds (0: the default).
    pub fn ttl_for(&self, requested: i64) -> Result<Duration, Refusal> {
        match requested {
            0 => Ok(self.default_ttl.min(self.max_ttl)),
            n if n < 0 => Err(Refusal::NegativeTtl(n)),
            n => Ok(Duration::from_secs(n.unsigned_abs()).min(self.max_ttl)),
        }
    }
}

impl CaService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        tokens: JoinTokenKey,
        config: Config,
        metrics: Metrics,
    ) -> CaService {
        CaService {
            inner: Arc::new(Inner {
                ca,
                tokens,
                config,
                metrics,
            }),
        }
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> CertificateServiceServer<CaService> {
        CertificateServiceServer::new(self)
    }

    /// Decides a request from `peer` at `now`: authenticates it, checks the CSR against the
    /// proven identity, and signs. No I/O, no logging, no metrics (the gRPC handler does those).
    pub fn create(
        &self,
        request: &CreateCertificateRequest,
        peer: Option<&Peer>,
        now: SystemTime,
    ) -> Result<Issued, Refusal> {
        let (identity, credential) = self.authenticate(request, peer, now)?;
        let ttl = self.inner.config.ttl_for(request.requested_ttl_seconds)?;
        let cert = self
            .inner
            .ca
            .sign_csr_at(request.csr.as_bytes(), &identity, ttl, now)
            .map_err(|error| Refusal::from_ca(error, credential))?;
        Ok(Issued {
            identity,
            credential,
            cert,
        })
    }

    fn authenticate(
        &self,
        request: &CreateCertificateRequest,
        peer: Option<&Peer>,
        now: SystemTime,
    ) -> Result<(SpiffeId, Credential), Refusal> {
        if !request.join_token.trim().is_empty() {
            let id = self.inner.tokens.verify(&request.join_token, now)?;
            return Ok((id, Credential::JoinToken));
        }
        let chain = peer
            .and_then(|p| p.chain.as_deref())
            .ok_or(Refusal::NoCredential)?;
        let id =
            trellis_identity::verify_chain(self.inner.ca.bundle(), chain, now, PeerRole::Client)
                .map_err(|e| Refusal::Certificate(Box::new(e)))?;
        Ok((id, Credential::Certificate))
    }
}

#[tonic::async_trait]
impl CertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let peer = request.extensions().get::<Peer>().cloned();
        let src = peer
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |p| p.addr.to_string());
        let request = request.into_inner();
        match self.create(&request, peer.as_ref(), SystemTime::now()) {
            Ok(issued) => {
                self.inner.metrics.issued(issued.credential);
                info!(
                    identity = %issued.identity,
                    credential = issued.credential.label(),
                    not_after = %human::time(issued.cert.not_after),
                    serial = %issued.cert.serial,
                    src.addr = %src,
                    "certificate issued"
                );
                Ok(Response::new(CreateCertificateResponse {
                    cert_chain: split_pem(&issued.cert.chain_pem),
                    trust_bundle: issued.cert.bundle_pem,
                }))
            }
            Err(refusal) => {
                self.inner.metrics.refused(&refusal);
                warn!(
                    reason = refusal.reason(),
                    error = %refusal,
                    src.addr = %src,
                    "certificate request refused"
                );
                Err(Status::new(refusal.code(), refusal.to_string()))
            }
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaService")
            .field("ca", &self.ca)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// The metric label and log field value.
    pub fn label(self) -> &'static str {
        match self {
            Credential::JoinToken => "join_token",
            Credential::Certificate => "certificate",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Credential::JoinToken => "the join token",
            Credential::Certificate => "the client certificate",
        }
    }
}

impl Refusal {
    /// Every value [`reason`](Self::reason) returns.
    pub const REASONS: [&'static str; 7] = [
        "no_credential",
        "bad_token",
        "bad_certificate",
        "wrong_identity",
        "bad_csr",
        "bad_ttl",
        "internal",
    ];

    /// The gRPC status code: UNAUTHENTICATED when the credential is missing or invalid,
    /// PERMISSION_DENIED when the CSR asks for more or other than the credential proves,
    /// INVALID_ARGUMENT for a malformed request, INTERNAL when the CA itself fails.
    pub fn code(&self) -> Code {
        match self {
            Refusal::NoCredential | Refusal::Token(_) | Refusal::Certificate(_) => {
                Code::Unauthenticated
            }
            Refusal::WrongIdentity { .. } => Code::PermissionDenied,
            Refusal::Csr(refusal) => match refusal {
                CsrRefusal::SeveralIdentities { .. }
                | CsrRefusal::ExtraNames { .. }
                | CsrRefusal::OtherTrustDomain { .. }
                | CsrRefusal::WrongIdentity { .. } => Code::PermissionDenied,
                _ => Code::InvalidArgument,
            },
            Refusal::NegativeTtl(_) => Code::InvalidArgument,
            Refusal::Sign(_) => Code::Internal,
        }
    }

    /// A short, stable name for metrics and logs (one of [`REASONS`](Self::REASONS)).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoCredential => "no_credential",
            Refusal::Token(_) => "bad_token",
            Refusal::Certificate(_) => "bad_certificate",
            Refusal::WrongIdentity { .. } => "wrong_identity",
            Refusal::Csr(_) if self.code() == Code::PermissionDenied => "wrong_identity",
            Refusal::Csr(_) => "bad_csr",
            Refusal::NegativeTtl(_) => "bad_ttl",
            Refusal::Sign(_) => "internal",
        }
    }

    fn from_ca(error: CaError, credential: Credential) -> Refusal {
        match error {
            CaError::Refused(CsrRefusal::WrongIdentity {
                requested,
                expected,
            }) => Refusal::WrongIdentity {
                requested,
                proven: expected,
                credential,
            },
            CaError::Refused(refusal) => Refusal::Csr(refusal),
            other => Refusal::Sign(Box::new(other)),
        }
    }
}

/// The PEM blocks of `pem`, each with its END line and a newline.
fn split_pem(pem: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(i) = rest.find(END) {
        let (block, tail) = rest.split_at(i + END.len());
        blocks.push(format!("{}\n", block.trim_start()));
        rest = tail;
    }
    blocks
}

#[cfg(test)]
pub(crate) mod tests;
