//! A workload's live credentials: the certificate it presents and the bundle it trusts, each
//! swapped whole when renewed (`ArcSwap`). Handshakes read the current value without locking;
//! a swap affects new handshakes only, so established connections carry on untouched.

use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{SpiffeId, TrustBundle, WorkloadCert};

/// The certificate a workload presents and the roots it trusts. Shared (`Arc`) by every TLS
/// config built from it, so one [`set_cert`](Credentials::set_cert) reaches them all. It is
/// the certificate resolver of those configs, for both the server and the client side.
pub struct Credentials {
    cert: ArcSwap<WorkloadCert>,
    bundle: ArcSwap<TrustBundle>,
}

impl Credentials {
    pub fn new(cert: WorkloadCert, bundle: TrustBundle) -> Arc<Self> {
        Arc::new(Credentials {
            cert: ArcSwap::from_pointee(cert),
            bundle: ArcSwap::from_pointee(bundle),
        })
    }

    /// Present `cert` from the next handshake on (a renewal). Connections already established
    /// keep the certificate they were set up with.
    pub fn set_cert(&self, cert: WorkloadCert) {
        self.cert.store(Arc::new(cert));
    }

    /// Trust `bundle` from the next handshake on (a root was added or retired).
    pub fn set_bundle(&self, bundle: TrustBundle) {
        self.bundle.store(Arc::new(bundle));
    }

    /// The certificate presented now.
    pub fn cert(&self) -> Arc<WorkloadCert> {
        self.cert.load_full()
    }

    /// The identity presented now.
    pub fn id(&self) -> SpiffeId {
        self.cert.load().id().clone()
    }

    /// The bundle trusted now (a cheap guard; do not hold it across `.await`).
    pub fn bundle(&self) -> Guard<Arc<TrustBundle>> {
        self.bundle.load()
    }

    fn certified(&self) -> Arc<CertifiedKey> {
        Arc::clone(self.cert.load().certified())
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified())
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.certified())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("cert", &**self.cert.load())
            .field("bundle", &**self.bundle.load())
            .finish()
    }
}
