//! Workload keys and CSRs. A key is generated in memory and stays there: nothing here writes it
//! anywhere unless the caller asks for its PEM explicitly (`trellis ca issue` does, for an
//! operator who wants files).

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::SpiffeId;
use crate::error::CertError;

/// An ECDSA P-256 private key, the kind every workload certificate carries.
pub struct WorkloadKey {
    pair: KeyPair,
}

impl WorkloadKey {
    /// A fresh key from the system's secure random source.
    pub fn generate() -> Result<Self, CertError> {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CertError::Generate {
                action: "generate an ECDSA P-256 key",
                error: source,
            }
        })?;
        Ok(WorkloadKey { pair })
    }

    /// A key from PEM (PKCS#8 or SEC1). Only ECDSA P-256 keys are workload keys.
    pub fn from_pem(what: &str, pem: &str) -> Result<Self, CertError> {
        let pair = KeyPair::from_pem(pem).map_err(|e| CertError::Key {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
        if pair.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(CertError::Key {
                what: what.to_owned(),
                reason: "a workload key must be ECDSA P-256".to_owned(),
            });
        }
        Ok(WorkloadKey { pair })
    }

    /// A PEM CSR (`CERTIFICATE REQUEST`) for `id`: the URI SAN and nothing else, an empty
    /// subject, signed by this key.
    pub fn csr_pem(&self, id: &SpiffeId) -> Result<String, CertError> {
        let generate = |source| CertError::Generate {
            action: "create the CSR",
            error: source,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().map_err(generate)?)];
        params
            .serialize_request(&self.pair)
            .and_then(|csr| csr.pem())
            .map_err(generate)
    }

    /// The key as PKCS#8 PEM. Only for an operator who asked for a key file.
    pub fn to_pem(&self) -> String {
        self.pair.serialize_pem()
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.pair)
    }

    pub(crate) fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pair.serialize_der()))
    }
}

/// Never prints the key itself.
impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkloadKey(ECDSA P-256)")
    }
}
