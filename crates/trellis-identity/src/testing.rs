//! Helpers shared by this crate's unit tests: temporary directories, a fresh CA, workloads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::{CertificateAuthority, Existing, SpiffeId, WorkloadCert, pem};

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "trellis-identity-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `spiffe://cluster.local/ns/default/sa/<sa>`.
pub(crate) fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "default", sa).expect("valid id")
}

/// A CA made by `init` in a fresh directory (kept alive by the returned `TempDir`).
pub(crate) fn new_ca(label: &str) -> (TempDir, CertificateAuthority) {
    let dir = TempDir::new(label);
    let ca = CertificateAuthority::init(&dir.join("ca"), "cluster.local", Existing::Refuse)
        .expect("ca init");
    (dir, ca)
}

/// A 24 h workload certificate for `sa` issued by `ca`.
pub(crate) fn workload(ca: &CertificateAuthority, sa: &str) -> WorkloadCert {
    let (key, issued) = ca
        .issue(&id(sa), Duration::from_secs(24 * 3600))
        .expect("issue");
    WorkloadCert::new(&key, issued.chain_pem.as_bytes()).expect("workload cert")
}

/// The certificates of a PEM text.
pub(crate) fn ders(pem_text: &str) -> Vec<CertificateDer<'static>> {
    pem::certs("test", pem_text.as_bytes()).expect("pem")
}
