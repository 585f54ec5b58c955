//! Certificates, keys and bundles that cannot be used as given.

/// Why certificate or key material cannot be used. `what` names the input (usually a file).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: String, reason: String },
    #[error("{what} holds no certificate (expected a -----BEGIN CERTIFICATE----- block)")]
    NoCertificates { what: String },
    #[error("{what}: certificate {index} is not a valid X.509 certificate ({reason})")]
    Malformed {
        what: String,
        index: usize,
        reason: String,
    },
    #[error("{what} is not a usable private key ({reason})")]
    Key { what: String, reason: String },
    #[error("{what}: the private key does not belong to the certificate (for {cert})")]
    KeyMismatch { what: String, cert: String },
    #[error("{what}: the certificate carries no usable SPIFFE ID ({reason})")]
    NoIdentity { what: String, reason: String },
    #[error("cannot {action}: {error}")]
    Generate {
        action: &'static str,
        error: rcgen::Error,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Tls(rustls::Error),
}

impl From<rustls::Error> for CertError {
    fn from(error: rustls::Error) -> Self {
        CertError::Tls(error)
    }
}
