//! A workload's certificate: the chain it presents, the key that proves it, and the SPIFFE ID
//! it carries, checked to belong together once, when it is built.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::CertError;
use crate::{SpiffeId, WorkloadKey, pem, x509};

/// A certificate chain (leaf first) with its private key, ready to present in handshakes.
#[derive(Clone)]
pub struct WorkloadCert {
    certified: Arc<CertifiedKey>,
    id: SpiffeId,
    not_before: SystemTime,
    not_after: SystemTime,
    /// When this process took the certificate in (the CA backdates `not_before` for clock
    /// skew, so the validity window alone overstates how much life was used).
    received: SystemTime,
}

impl WorkloadCert {
    /// `key` with the chain an issuer returned (PEM, leaf first; roots may be included but
    /// are not needed).
    pub fn new(key: &WorkloadKey, chain_pem: &[u8]) -> Result<Self, CertError> {
        let chain = pem::certs("the certificate chain", chain_pem)?;
        Self::from_der("the certificate chain", chain, key.private_key_der())
    }

    /// A chain and a key from PEM files' contents. `what` names them in errors.
    pub fn from_pem(what: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, CertError> {
        let chain = pem::certs(what, chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::Key {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
        Self::from_der(what, chain, key)
    }

    /// A chain (leaf first) and its key.
    pub fn from_der(
        what: &str,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, CertError> {
        let leaf = chain.first().ok_or_else(|| CertError::NoCertificates {
            what: what.to_owned(),
        })?;
        let parsed = x509::parse(leaf).map_err(|reason| CertError::Malformed {
            what: what.to_owned(),
            index: 1,
            reason,
        })?;
        let no_identity = |reason: String| CertError::NoIdentity {
            what: what.to_owned(),
            reason,
        };
        let id: SpiffeId = x509::spiffe_uri(&parsed)
            .map_err(|p| no_identity(p.to_string()))?
            .parse()
            .map_err(|e: crate::SpiffeIdError| no_identity(e.to_string()))?;
        let not_before = x509::not_before(&parsed);
        let not_after = x509::not_after(&parsed);
        let certified =
            CertifiedKey::from_der(chain, key, &crate::tls::provider()).map_err(|e| match e {
                TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                    CertError::KeyMismatch {
                        what: what.to_owned(),
                        cert: id.to_string(),
                    }
                }
                TlsError::General(reason) => CertError::Key {
                    what: what.to_owned(),
                    reason,
                },
                other => CertError::Tls(other),
            })?;
        Ok(WorkloadCert {
            certified: Arc::new(certified),
            id,
            not_before,
            not_after,
            received: SystemTime::now(),
        })
    }

    /// The identity the certificate proves.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Half-way through the life the certificate had left when this process received it
    /// (its validity window minus any backdating): when a workload should ask for its next
    /// certificate (add jitter so a fleet does not renew at once).
    pub fn renew_at(&self) -> SystemTime {
        let start = self.not_before.max(self.received);
        let left = self.not_after.duration_since(start).unwrap_or_default();
        start + left / 2
    }

    /// The chain presented in handshakes, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    pub(crate) fn certified(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("id", &self.id.to_string())
            .field("not_after", &crate::human::time(self.not_after))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use crate::testing::{id, new_ca};

    #[test]
    fn renewal_is_half_way_through_the_life_left_not_the_backdated_window() {
        let (_dir, ca) = new_ca("renew-at");
        let (key, issued) = ca.issue(&id("web"), Duration::from_secs(60)).unwrap();
        let cert = super::WorkloadCert::new(&key, issued.chain_pem.as_bytes()).unwrap();
        let wait = cert.renew_at().duration_since(SystemTime::now()).unwrap();
        // 60 s of life, backdated by minutes: renew in about 30 s, not at once.
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(31),
            "{wait:?}"
        );
    }
}
