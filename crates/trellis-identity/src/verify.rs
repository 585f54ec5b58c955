//! Verifying a peer's certificate the SPIFFE way: the chain must lead to a root of the trust
//! bundle (webpki does the path building and signature checks), and the leaf's single URI SAN
//! is its identity. There is no host name check: SPIFFE certificates carry no DNS name, so
//! rustls's standard verifiers are replaced by the two here, which check the identity instead
//! (secure naming). Failures are [`VerifyError`]s, worded for an operator.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::DistinguishedName;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::certificate::X509Certificate;

use crate::credentials::Credentials;
use crate::{SpiffeId, TrustBundle, human, x509};

/// Why a certificate is not accepted, in the operator's words. Every message starts with
/// "certificate" or "identity", so "peer " reads well in front of it. In a TLS handshake it
/// travels inside `rustls::Error::InvalidCertificate(CertificateError::Other(..))`, which
/// rustls prints with `Debug`: log [`explain_handshake_error`] instead, and use
/// [`VerifyError::from_tls`] or [`VerifyError::find`] to act on the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("certificate is missing (none was presented)")]
    NoCertificate,
    #[error(
        "certificate signed by unknown authority (issuer {issuer}; the trust bundle holds {})",
        .bundle.join(", ")
    )]
    UnknownAuthority { issuer: String, bundle: Vec<String> },
    #[error(
        "certificate expired {} ago (at {}; {subject})",
        human::duration(*.ago), human::time(*.not_after)
    )]
    Expired {
        subject: String,
        not_after: SystemTime,
        ago: Duration,
    },
    #[error(
        "certificate is not valid yet: it starts at {}, in {} (is a clock wrong?) ({subject})",
        human::time(*.not_before), human::duration(*.wait)
    )]
    NotYetValid {
        subject: String,
        not_before: SystemTime,
        wait: Duration,
    },
    #[error("identity {presented} is not the expected {expected}")]
    WrongIdentity {
        presented: String,
        expected: SpiffeId,
    },
    #[error("certificate carries no usable SPIFFE identity: {reason} ({subject})")]
    NoIdentity { subject: String, reason: String },
    #[error("certificate {subject} is a CA certificate, not a workload certificate")]
    CaAsLeaf { subject: String },
    #[error("certificate {subject} is not allowed for {role} authentication (extended key usage)")]
    WrongPurpose { subject: String, role: PeerRole },
    #[error(
        "certificate chain has a signature that does not verify (issuer {issuer}; the trust \
         bundle holds {}): a CA with the same name but another key signed it, or the chain \
         was altered",
        .bundle.join(", ")
    )]
    BadSignature { issuer: String, bundle: Vec<String> },
    #[error("certificate is not a valid X.509 certificate ({0})")]
    Malformed(String),
    #[error("certificate rejected by path validation: {0}")]
    Rejected(webpki::Error),
}

/// The role a certificate's holder plays in the connection, which decides the extended key
/// usage it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    Server,
    Client,
}

/// The verifier a client uses: the server's chain against the bundle, then its identity
/// against the one expected for the destination.
pub(crate) struct ServerIdentityVerifier {
    roots: Roots,
    expected: SpiffeId,
    expected_uri: String,
    algs: WebPkiSupportedAlgorithms,
}

/// The verifier a server uses: a client certificate is required, must chain to the bundle and
/// must carry a SPIFFE ID (which identity may do what is the authorization policy's business).
pub(crate) struct ClientIdentityVerifier {
    creds: Arc<Credentials>,
    algs: WebPkiSupportedAlgorithms,
    /// False for a server that also serves callers without a certificate yet (the CA's
    /// bootstrap); a certificate that is presented is verified all the same.
    mandatory: bool,
}

impl VerifyError {
    /// The verification error inside a rustls error, if that is what failed the handshake.
    pub fn from_tls(error: &rustls::Error) -> Option<&VerifyError> {
        match error {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<VerifyError>()
            }
            _ => None,
        }
    }

    /// The verification error anywhere in `error`'s chain of causes, looking inside
    /// `io::Error`s (tokio-rustls reports handshake failures as `io::Error`).
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a VerifyError> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<VerifyError>() {
                return Some(found);
            }
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return VerifyError::from_tls(tls);
            }
            current = match e.downcast_ref::<std::io::Error>() {
                Some(io) => match io.get_ref() {
                    Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                    None => None,
                },
                None => e.source(),
            };
        }
        None
    }

    fn into_tls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

impl fmt::Display for PeerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerRole::Server => "server",
            PeerRole::Client => "client",
        })
    }
}

/// Where a server verifier finds the roots it trusts.
pub(crate) enum Roots {
    /// The workload's live bundle (follows rotations).
    Live(Arc<Credentials>),
    /// A fixed bundle: a workload bootstrapping, before it has credentials of its own.
    Fixed(TrustBundle),
}

impl ServerIdentityVerifier {
    pub(crate) fn new(roots: Roots, expected: SpiffeId, algs: WebPkiSupportedAlgorithms) -> Self {
        let expected_uri = expected.to_string();
        ServerIdentityVerifier {
            roots,
            expected,
            expected_uri,
            algs,
        }
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    /// `server_name` is not checked: the identity is (SPIFFE certificates carry no DNS name).
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let live;
        let bundle: &TrustBundle = match &self.roots {
            Roots::Live(creds) => {
                live = creds.bundle();
                &live
            }
            Roots::Fixed(bundle) => bundle,
        };
        check_path(
            bundle,
            self.algs,
            end_entity,
            intermediates,
            now,
            PeerRole::Server,
        )
        .map_err(VerifyError::into_tls)?;
        let uri = identity_uri(end_entity).map_err(VerifyError::into_tls)?;
        if uri != self.expected_uri {
            return Err(VerifyError::WrongIdentity {
                presented: uri.to_owned(),
                expected: self.expected.clone(),
            }
            .into_tls());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl fmt::Debug for ServerIdentityVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentityVerifier")
            .field("expected", &self.expected_uri)
            .finish_non_exhaustive()
    }
}

impl ClientIdentityVerifier {
    pub(crate) fn new(
        creds: Arc<Credentials>,
        algs: WebPkiSupportedAlgorithms,
        mandatory: bool,
    ) -> Self {
        ClientIdentityVerifier {
            creds,
            algs,
            mandatory,
        }
    }
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    /// No hints: our clients have one certificate and present it whatever the hints say.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bundle = self.creds.bundle();
        check_path(
            &bundle,
            self.algs,
            end_entity,
            intermediates,
            now,
            PeerRole::Client,
        )
        .map_err(VerifyError::into_tls)?;
        let uri = identity_uri(end_entity).map_err(VerifyError::into_tls)?;
        if let Err(e) = uri.parse::<SpiffeId>() {
            return Err(VerifyError::NoIdentity {
                subject: uri.to_owned(),
                reason: e.to_string(),
            }
            .into_tls());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl fmt::Debug for ClientIdentityVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentityVerifier")
            .finish_non_exhaustive()
    }
}

/// A failed handshake in the operator's words: `peer certificate expired 3h ago (at …)` when
/// our verifier refused the peer, else the error's own message (an I/O error, a TLS alert
/// from the peer such as `received fatal alert: CertificateUnknown`).
pub fn explain_handshake_error(error: &(dyn std::error::Error + 'static)) -> String {
    match VerifyError::find(error) {
        Some(refusal) => format!("peer {refusal}"),
        None => error.to_string(),
    }
}

/// Verifies `chain` (leaf first, then intermediates) against `bundle` at `now` for `role`,
/// and returns the leaf's SPIFFE ID. The same checks the mesh handshake makes; for tools
/// (`trellis cert inspect`) and for a CA authenticating a renewal by the current certificate.
pub fn verify_chain(
    bundle: &TrustBundle,
    chain: &[CertificateDer<'_>],
    now: SystemTime,
    role: PeerRole,
) -> Result<SpiffeId, VerifyError> {
    let (end_entity, intermediates) = chain.split_first().ok_or(VerifyError::NoCertificate)?;
    let now = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let algs = crate::tls::provider().signature_verification_algorithms;
    check_path(bundle, algs, end_entity, intermediates, now, role)?;
    let uri = identity_uri(end_entity)?;
    uri.parse()
        .map_err(|e: crate::SpiffeIdError| VerifyError::NoIdentity {
            subject: uri.to_owned(),
            reason: e.to_string(),
        })
}

/// Path validation with webpki; a failure is explained from the certificates themselves.
fn check_path(
    bundle: &TrustBundle,
    algs: WebPkiSupportedAlgorithms,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
) -> Result<(), VerifyError> {
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| VerifyError::Malformed(format!("{e:?}")))?;
    let usage = match role {
        PeerRole::Server => webpki::KeyUsage::server_auth(),
        PeerRole::Client => webpki::KeyUsage::client_auth(),
    };
    match cert.verify_for_usage(
        algs.all,
        bundle.anchors(),
        intermediates,
        now,
        usage,
        None,
        None,
    ) {
        Ok(_) => Ok(()),
        Err(e) => Err(explain(e, bundle, end_entity, intermediates, role)),
    }
}

/// The leaf's one `spiffe://` URI SAN, borrowed from the DER.
fn identity_uri<'a>(end_entity: &'a CertificateDer<'_>) -> Result<&'a str, VerifyError> {
    let cert = x509::parse(end_entity).map_err(VerifyError::Malformed)?;
    x509::spiffe_uri(&cert).map_err(|problem| VerifyError::NoIdentity {
        subject: x509::short_name(cert.subject()),
        reason: problem.to_string(),
    })
}

/// Turns webpki's verdict into words, naming the certificates involved.
fn explain(
    error: webpki::Error,
    bundle: &TrustBundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    role: PeerRole,
) -> VerifyError {
    let parsed: Vec<X509Certificate<'_>> = std::iter::once(end_entity)
        .chain(intermediates)
        .filter_map(|der| x509::parse(der).ok())
        .collect();
    let Some(leaf) = parsed.first() else {
        return VerifyError::Malformed(format!("{error:?}"));
    };
    // The certificate whose validity window webpki found wrong: the one with that bound.
    let subject_with = |secs: u64, pick: fn(&X509Certificate<'_>) -> SystemTime| {
        parsed
            .iter()
            .find(|c| unix_secs(pick(c)) == secs)
            .map_or_else(|| x509::subject_label(leaf), x509::subject_label)
    };
    match error {
        webpki::Error::UnknownIssuer => VerifyError::UnknownAuthority {
            issuer: top_issuer(&parsed),
            bundle: bundle.names().to_vec(),
        },
        webpki::Error::InvalidSignatureForPublicKey | webpki::Error::SignatureAlgorithmMismatch => {
            VerifyError::BadSignature {
                issuer: top_issuer(&parsed),
                bundle: bundle.names().to_vec(),
            }
        }
        webpki::Error::CertExpired { time, not_after } => VerifyError::Expired {
            subject: subject_with(not_after.as_secs(), x509::not_after),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.as_secs()),
            ago: Duration::from_secs(time.as_secs().saturating_sub(not_after.as_secs())),
        },
        webpki::Error::CertNotValidYet { time, not_before } => VerifyError::NotYetValid {
            subject: subject_with(not_before.as_secs(), x509::not_before),
            not_before: SystemTime::UNIX_EPOCH + Duration::from_secs(not_before.as_secs()),
            wait: Duration::from_secs(not_before.as_secs().saturating_sub(time.as_secs())),
        },
        webpki::Error::CaUsedAsEndEntity => VerifyError::CaAsLeaf {
            subject: x509::short_name(leaf.subject()),
        },
        webpki::Error::RequiredEkuNotFoundContext(_) => VerifyError::WrongPurpose {
            subject: x509::subject_label(leaf),
            role,
        },
        other => VerifyError::Rejected(other),
    }
}

/// The issuer of the last certificate reached by following issuer links from the leaf through
/// the presented certificates: the authority the bundle would have to hold.
fn top_issuer(parsed: &[X509Certificate<'_>]) -> String {
    let mut current = 0;
    let mut seen = vec![false; parsed.len()];
    seen[0] = true;
    while let Some(next) = parsed
        .iter()
        .enumerate()
        .position(|(i, c)| !seen[i] && c.subject().as_raw() == parsed[current].issuer().as_raw())
    {
        seen[next] = true;
        current = next;
    }
    x509::short_name(parsed[current].issuer())
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
