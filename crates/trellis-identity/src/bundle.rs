//! The trust bundle: the roots a workload trusts. Usually one; two while a root is rotated.

use std::fmt;
use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::TrustAnchor;

use crate::error::CertError;
use crate::{pem, x509};

/// The roots a workload trusts, each with the short name messages use (`CN=…`).
#[derive(Clone)]
pub struct TrustBundle {
    certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    names: Vec<String>,
}

impl TrustBundle {
    /// The roots in `pem` (one or more certificates). `what` names the input in errors.
    pub fn from_pem(what: &str, pem: &[u8]) -> Result<Self, CertError> {
        Self::from_der(what, pem::certs(what, pem)?)
    }

    /// The roots in the PEM file at `path`.
    pub fn from_pem_file(path: &Path) -> Result<Self, CertError> {
        let what = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| CertError::Pem {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        Self::from_pem(&what, &bytes)
    }

    /// The roots given as DER certificates. Duplicates are dropped.
    pub fn from_der(what: &str, roots: Vec<CertificateDer<'static>>) -> Result<Self, CertError> {
        if roots.is_empty() {
            return Err(CertError::NoCertificates {
                what: what.to_owned(),
            });
        }
        let mut bundle = TrustBundle {
            certs: Vec::with_capacity(roots.len()),
            anchors: Vec::with_capacity(roots.len()),
            names: Vec::with_capacity(roots.len()),
        };
        for (index, der) in roots.into_iter().enumerate() {
            bundle.push(what, index, der)?;
        }
        Ok(bundle)
    }

    /// This bundle plus the roots of `other` it does not hold yet.
    pub fn merged(&self, other: &TrustBundle) -> TrustBundle {
        let mut merged = self.clone();
        for (i, cert) in other.certs.iter().enumerate() {
            if !merged.contains(cert) {
                merged.certs.push(cert.clone());
                merged.anchors.push(other.anchors[i].clone());
                merged.names.push(other.names[i].clone());
            }
        }
        merged
    }

    /// The bundle as PEM, roots in order.
    pub fn to_pem(&self) -> String {
        pem::encode_certs(&self.certs)
    }

    /// The roots' short names (`CN=…`), in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// True when `cert` (DER) is one of the roots.
    pub fn contains(&self, cert: &CertificateDer<'_>) -> bool {
        self.certs.iter().any(|c| c.as_ref() == cert.as_ref())
    }

    /// The roots as webpki trust anchors, for chain verification.
    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    fn push(
        &mut self,
        what: &str,
        index: usize,
        der: CertificateDer<'static>,
    ) -> Result<(), CertError> {
        if self.contains(&der) {
            return Ok(());
        }
        let malformed = |reason: String| CertError::Malformed {
            what: what.to_owned(),
            index: index + 1,
            reason,
        };
        let parsed = x509::parse(&der).map_err(malformed)?;
        let name = x509::short_name(parsed.subject());
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| malformed(format!("{e:?}")))?
            .to_owned();
        self.anchors.push(anchor);
        self.names.push(name);
        self.certs.push(der);
        Ok(())
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("roots", &self.names)
            .finish()
    }
}

/// The roots' names joined for a message: `CN=A, CN=B`.
impl fmt::Display for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names.join(", "))
    }
}
