//! Checking a CSR before the CA signs it: the request must ask for exactly the identity the
//! caller has proven, with a workload key, and nothing more.

use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::{SpiffeId, x509};

/// Why the CA refuses a CSR, in words the requester can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrRefusal {
    #[error("the CSR is not valid PEM ({0})")]
    NotPem(String),
    #[error("the CSR is not a valid PKCS#10 request ({0})")]
    Malformed(String),
    #[error("the CSR's signature does not verify (it was altered, or signed with another key)")]
    BadSignature,
    #[error("the CSR's key is {0}; workload keys must be ECDSA P-256")]
    KeyType(String),
    #[error(
        "identity {expected} is in trust domain {}, but this CA signs for trust domain {ca_domain}",
        .expected.trust_domain()
    )]
    OtherTrustDomain {
        expected: SpiffeId,
        ca_domain: String,
    },
    #[error("the CSR asks for no identity; it must carry exactly one URI SAN, {expected}")]
    NoIdentity { expected: SpiffeId },
    #[error("the CSR asks for {requested}, but the requester is {expected}")]
    WrongIdentity {
        requested: String,
        expected: SpiffeId,
    },
    #[error(
        "the CSR asks for {} URI SANs ({}); a workload certificate carries exactly one, {expected}",
        .uris.len(), .uris.join(", ")
    )]
    SeveralIdentities {
        uris: Vec<String>,
        expected: SpiffeId,
    },
    #[error(
        "the CSR also asks for {}; a workload certificate carries only its SPIFFE ID",
        .names.join(", ")
    )]
    ExtraNames { names: Vec<String> },
    #[error("the CSR's extension request is invalid ({0})")]
    BadExtensions(String),
}

/// A CSR that passed every check: the DER SubjectPublicKeyInfo to certify.
#[derive(Debug)]
pub(crate) struct CheckedCsr {
    pub(crate) spki_der: Vec<u8>,
}

/// Checks that `csr_pem` asks for exactly `expected` (in trust domain `ca_domain`) with an
/// ECDSA P-256 key, and that its signature verifies. The CSR's subject and any other requested
/// extensions (key usage, basic constraints) are ignored: the CA decides those.
pub(crate) fn check(
    csr_pem: &[u8],
    expected: &SpiffeId,
    ca_domain: &str,
) -> Result<CheckedCsr, CsrRefusal> {
    if expected.trust_domain() != ca_domain {
        return Err(CsrRefusal::OtherTrustDomain {
            expected: expected.clone(),
            ca_domain: ca_domain.to_owned(),
        });
    }
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem)
        .map_err(|e| CsrRefusal::NotPem(e.to_string()))?;
    let csr = match X509CertificationRequest::from_der(der.as_ref()) {
        Ok(([], csr)) => csr,
        Ok((rest, _)) => {
            return Err(CsrRefusal::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        Err(e) => return Err(CsrRefusal::Malformed(e.to_string())),
    };
    csr.verify_signature()
        .map_err(|_| CsrRefusal::BadSignature)?;
    let spki = &csr.certification_request_info.subject_pki;
    if !x509::is_p256(spki) {
        return Err(CsrRefusal::KeyType(x509::key_type(spki)));
    }

    let mut uris = Vec::new();
    let mut others = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                        GeneralName::DNSName(dns) => others.push(format!("DNS:{dns}")),
                        GeneralName::IPAddress(ip) => {
                            others.push(format!("IP:{}", x509::ip_text(ip)))
                        }
                        GeneralName::RFC822Name(mail) => others.push(format!("email:{mail}")),
                        other => others.push(other.to_string()),
                    }
                }
            }
            ParsedExtension::ParseError { error } => {
                return Err(CsrRefusal::BadExtensions(error.to_string()));
            }
            _ => {}
        }
    }
    if !others.is_empty() {
        return Err(CsrRefusal::ExtraNames { names: others });
    }
    let expected_uri = expected.to_string();
    match uris.as_slice() {
        [] => Err(CsrRefusal::NoIdentity {
            expected: expected.clone(),
        }),
        [uri] if *uri == expected_uri => Ok(CheckedCsr {
            spki_der: spki.raw.to_vec(),
        }),
        [uri] => Err(CsrRefusal::WrongIdentity {
            requested: uri.clone(),
            expected: expected.clone(),
        }),
        _ => Err(CsrRefusal::SeveralIdentities {
            uris,
            expected: expected.clone(),
        }),
    }
}
