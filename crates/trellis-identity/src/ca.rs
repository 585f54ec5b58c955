//! The mesh CA: a directory in Istio's plug-in CA layout (`ca-cert.pem`, `ca-key.pem`,
//! `cert-chain.pem`, `root-cert.pem`), either created here (`init`: a root and an intermediate
//! that signs workloads) or supplied by the operator; and the signing of workload CSRs.
//!
//! Root rotation (`rotate`) makes a new root and a new intermediate under it and appends the
//! new root to `root-cert.pem`, so the bundle holds both: certificates issued before and after
//! the rotation verify everywhere the new bundle has arrived. Once every workload has renewed
//! (24 h by default) and holds the new bundle, `retire` drops the old root from the bundle.
//! A workload that still holds only the old bundle does not trust certificates issued after
//! the rotation until its next renewal brings the new bundle: push the new bundle (renewals
//! carry it) before relying on new certificates, or rotate ahead of need.
//!
//! The root's private key is not kept: nothing here needs it again (rotation makes a new
//! root). An operator who wants a long-lived offline root builds the plug-in layout instead.

mod chain;
pub mod files;
mod generate;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use self::chain::chain_to_root;
use self::generate::{generate, random_serial};
use crate::csr::{self, CsrRefusal};
use crate::error::CertError;
use crate::verify::VerifyError;
use crate::{SpiffeId, SpiffeIdError, TrustBundle, WorkloadKey, human, pem, x509};

/// The trust domain when neither the operator nor the CA certificate names one.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Workload certificates live this long unless asked otherwise.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Root and intermediate lifetime for a CA made by `init` or `rotate`.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// notBefore is set this far in the past, so a peer whose clock is a little behind accepts a
/// certificate issued a moment ago.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A CA loaded from its directory, ready to sign.
pub struct CertificateAuthority {
    dir: PathBuf,
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    signing_name: String,
    signing_not_after: SystemTime,
    /// Certificates a workload presents above its leaf: the signing certificate and any
    /// intermediates up to (not including) the root.
    presented: Vec<CertificateDer<'static>>,
    root_name: String,
    bundle: TrustBundle,
}

/// What `init` does when the directory already holds CA files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Refuse,
    Replace,
}

/// A signed workload certificate, with what the workload needs next to it.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The leaf alone.
    pub leaf_pem: String,
    /// The leaf and the intermediates to present with it (no root).
    pub chain_pem: String,
    /// The trust bundle (every root the mesh trusts now).
    pub bundle_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Colon-separated hex, as openssl prints it.
    pub serial: String,
}

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(
        "{} is missing (a CA directory holds {}, {}, {} and {}; create one with `trellis ca init`)",
        .path.display(), files::CA_CERT, files::CA_KEY, files::CERT_CHAIN, files::ROOT_CERT
    )]
    Missing { path: PathBuf },
    #[error("cannot {action} {}: {error}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} already holds a CA ({}); replace it only on purpose (--force)", .dir.display(), .file)]
    Exists { dir: PathBuf, file: &'static str },
    #[error(
        "{} is {who} (mode {mode:04o}); run chmod 600 {}",
        .path.file_name().unwrap_or_default().to_string_lossy(), .path.display()
    )]
    KeyPermissions {
        path: PathBuf,
        mode: u32,
        who: &'static str,
    },
    #[error("{}: {error}", .path.display())]
    Cert { path: PathBuf, error: CertError },
    #[error("{}: {subject} is not a CA certificate (it lacks basicConstraints CA:TRUE)", .path.display())]
    NotCa { path: PathBuf, subject: String },
    #[error("{}: {reason}", .path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("{key} does not belong to {cert} (their public keys differ)")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{}: {reason}", .path.display())]
    BadChain { path: PathBuf, reason: String },
    #[error("{}: the chain does not lead to a root of {}: {error}", .path.display(), files::ROOT_CERT)]
    Untrusted { path: PathBuf, error: VerifyError },
    #[error("the signing certificate {}: {error}; run `trellis ca rotate`", .path.display())]
    SigningCertInvalid { path: PathBuf, error: VerifyError },
    #[error("trust domain: {0}")]
    TrustDomain(SpiffeIdError),
    #[error(
        "{} is for trust domain {found}, not {wanted}",
        .path.display()
    )]
    OtherTrustDomain {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("CSR refused: {0}")]
    Refused(CsrRefusal),
    #[error("a certificate lifetime of {} is too short (at least 1s)", human::duration(*.0))]
    TtlTooShort(Duration),
    #[error("cannot {action}: {error}")]
    Generate {
        action: &'static str,
        error: rcgen::Error,
    },
    #[error("the system's secure random number generator failed")]
    Random,
    #[error(
        "{} holds only the root in use ({root}); there is no old root to retire",
        files::ROOT_CERT
    )]
    NothingToRetire { root: String },
}

impl From<CsrRefusal> for CaError {
    fn from(refusal: CsrRefusal) -> Self {
        CaError::Refused(refusal)
    }
}

impl From<SpiffeIdError> for CaError {
    fn from(error: SpiffeIdError) -> Self {
        CaError::TrustDomain(error)
    }
}

impl CertificateAuthority {
    /// Creates a CA in `dir` for `trust_domain`: a self-signed root (10 years) and an
    /// intermediate under it (CA, pathlen 0) that signs workloads. Refuses to touch a
    /// directory that already holds CA files unless told to replace them.
    pub fn init(dir: &Path, trust_domain: &str, existing: Existing) -> Result<Self, CaError> {
        crate::spiffe::check_trust_domain(trust_domain)?;
        let present = files::ALL.into_iter().find(|f| dir.join(f).exists());
        if let (Existing::Refuse, Some(file)) = (existing, present) {
            return Err(CaError::Exists {
                dir: dir.to_owned(),
                file,
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
            action: "create",
            path: dir.to_owned(),
            error: source,
        })?;
        let now = SystemTime::now();
        let generated = generate(trust_domain, now)?;
        let chain = format!("{}{}", generated.intermediate_pem, generated.root_pem);
        files::write_all(
            dir,
            &[
                (files::ROOT_CERT, generated.root_pem.as_bytes(), false),
                (files::CERT_CHAIN, chain.as_bytes(), false),
                (
                    files::CA_KEY,
                    generated.intermediate_key_pem.as_bytes(),
                    true,
                ),
                (files::CA_CERT, generated.intermediate_pem.as_bytes(), false),
            ],
        )?;
        Self::load(dir)
    }

    /// Loads the CA in `dir`. The trust domain is the one the signing certificate names in a
    /// `spiffe://<trust-domain>` URI SAN (as `init` writes it), else `cluster.local`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        Self::load_inner(dir, None)
    }

    /// Loads the CA in `dir` for `trust_domain` (for a plug-in CA whose certificate names none;
    /// refused if it names another).
    pub fn load_for(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        crate::spiffe::check_trust_domain(trust_domain)?;
        Self::load_inner(dir, Some(trust_domain))
    }

    /// Makes a new root and a new intermediate under it for the CA in `dir`, keeps the old
    /// roots in the bundle, and returns the CA that now signs. See the module docs for the
    /// order of a rotation.
    pub fn rotate(dir: &Path) -> Result<Self, CaError> {
        let old = Self::load(dir)?;
        let generated = generate(&old.trust_domain, SystemTime::now())?;
        let new_root = TrustBundle::from_pem("the new root", generated.root_pem.as_bytes())
            .map_err(|source| CaError::Cert {
                path: dir.join(files::ROOT_CERT),
                error: source,
            })?;
        let bundle = old.bundle.merged(&new_root);
        let chain = format!("{}{}", generated.intermediate_pem, generated.root_pem);
        let bundle_pem = bundle.to_pem();
        // The bundle first: if anything fails after it, the old CA still works.
        files::write_all(dir, &[(files::ROOT_CERT, bundle_pem.as_bytes(), false)])?;
        files::write_all(
            dir,
            &[
                (files::CERT_CHAIN, chain.as_bytes(), false),
                (
                    files::CA_KEY,
                    generated.intermediate_key_pem.as_bytes(),
                    true,
                ),
                (files::CA_CERT, generated.intermediate_pem.as_bytes(), false),
            ],
        )?;
        Self::load_for(dir, &old.trust_domain)
    }

    /// Drops from `root-cert.pem` every root other than the one the current chain leads to,
    /// once workloads no longer hold certificates under the old ones. Returns the CA and the
    /// names of the roots dropped.
    pub fn retire(dir: &Path) -> Result<(Self, Vec<String>), CaError> {
        let ca = Self::load(dir)?;
        if ca.bundle.len() < 2 {
            return Err(CaError::NothingToRetire {
                root: ca.root_name.clone(),
            });
        }
        let mut kept = Vec::new();
        let mut retired = Vec::new();
        for (cert, name) in ca.bundle.certs().iter().zip(ca.bundle.names()) {
            if *name == ca.root_name {
                kept.push(cert.clone());
            } else {
                retired.push(name.clone());
            }
        }
        let path = dir.join(files::ROOT_CERT);
        let bundle =
            TrustBundle::from_der("the kept root", kept).map_err(|source| CaError::Cert {
                path: path.clone(),
                error: source,
            })?;
        files::write(&path, bundle.to_pem().as_bytes(), false)?;
        Ok((Self::load_for(dir, &ca.trust_domain)?, retired))
    }

    /// Signs `csr_pem` for `expected`, the identity the requester has proven, valid for `ttl`
    /// (clamped to the signing certificate's own expiry). Refuses, with the reason, a CSR that
    /// asks for anything but exactly `expected` in this CA's trust domain.
    pub fn sign_csr(
        &self,
        csr_pem: &[u8],
        expected: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        self.sign_csr_at(csr_pem, expected, ttl, SystemTime::now())
    }

    /// [`sign_csr`](Self::sign_csr) as if the time were `now` (tests, and tools that need
    /// certificates valid in the past or future).
    pub fn sign_csr_at(
        &self,
        csr_pem: &[u8],
        expected: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, CaError> {
        let checked = csr::check(csr_pem, expected, &self.trust_domain)?;
        if ttl < Duration::from_secs(1) {
            return Err(CaError::TtlTooShort(ttl));
        }
        let generate = |source| CaError::Generate {
            action: "sign the workload certificate",
            error: source,
        };
        let public_key =
            rcgen::SubjectPublicKeyInfo::from_der(&checked.spki_der).map_err(generate)?;
        let now = whole_seconds(now);
        let not_before = now - BACKDATE;
        let not_after = (now + ttl).min(self.signing_not_after);

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            expected.to_string().try_into().map_err(generate)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = OffsetDateTime::from(not_before);
        params.not_after = OffsetDateTime::from(not_after);
        let leaf = params
            .signed_by(&public_key, &self.issuer)
            .map_err(generate)?;

        let leaf_pem = leaf.pem();
        let chain_pem = format!("{leaf_pem}{}", pem::encode_certs(&self.presented));
        let serial = x509::parse(leaf.der())
            .map(|c| x509::serial(&c))
            .unwrap_or_default();
        Ok(IssuedCert {
            leaf_pem,
            chain_pem,
            bundle_pem: self.bundle.to_pem(),
            not_before,
            not_after,
            serial,
        })
    }

    /// Generates a key for `id`, makes its CSR and signs it: a certificate issued by hand.
    pub fn issue(
        &self,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<(WorkloadKey, IssuedCert), CaError> {
        let cert_err = |source| CaError::Cert {
            path: self.dir.clone(),
            error: source,
        };
        let key = WorkloadKey::generate().map_err(cert_err)?;
        let csr = key.csr_pem(id).map_err(cert_err)?;
        let issued = self.sign_csr(csr.as_bytes(), id, ttl)?;
        Ok((key, issued))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Every root workloads trust now.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The signing certificate's short name (`CN=…`).
    pub fn signing_name(&self) -> &str {
        &self.signing_name
    }

    pub fn signing_not_after(&self) -> SystemTime {
        self.signing_not_after
    }

    /// The short name of the root the signing certificate leads to.
    pub fn root_name(&self) -> &str {
        &self.root_name
    }

    fn load_inner(dir: &Path, trust_domain: Option<&str>) -> Result<Self, CaError> {
        let cert_path = dir.join(files::CA_CERT);
        let key_path = dir.join(files::CA_KEY);
        let chain_path = dir.join(files::CERT_CHAIN);
        let root_path = dir.join(files::ROOT_CERT);
        let cert_err = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Cert {
                path,
                error: source,
            }
        };

        // The signing certificate and its key.
        let signing_der = pem::certs(files::CA_CERT, &files::read(dir, files::CA_CERT)?)
            .map_err(cert_err(&cert_path))?
            .swap_remove(0);
        let signing = x509::parse(&signing_der).map_err(|reason| CaError::Cert {
            path: cert_path.clone(),
            error: CertError::Malformed {
                what: files::CA_CERT.to_owned(),
                index: 1,
                reason,
            },
        })?;
        if !signing.is_ca() {
            return Err(CaError::NotCa {
                path: cert_path,
                subject: x509::name(signing.subject()),
            });
        }
        let key_pem = files::read_key(dir, files::CA_KEY)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::BadKey {
            path: key_path.clone(),
            reason: format!("not a usable private key ({e})"),
        })?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != signing.public_key().raw {
            return Err(CaError::KeyMismatch {
                key: key_path,
                cert: cert_path,
            });
        }
        let now = SystemTime::now();
        let signing_not_after = x509::not_after(&signing);
        if let Err(ago) = human::until(now, signing_not_after) {
            return Err(CaError::SigningCertInvalid {
                path: cert_path,
                error: VerifyError::Expired {
                    subject: x509::short_name(signing.subject()),
                    not_after: signing_not_after,
                    ago,
                },
            });
        }

        // The trust domain.
        let named = x509::spiffe_uri(&signing)
            .ok()
            .and_then(|uri| uri.strip_prefix("spiffe://"))
            .map(|d| d.trim_end_matches('/').to_owned());
        let trust_domain = match (named, trust_domain) {
            (Some(found), Some(wanted)) if found != wanted => {
                return Err(CaError::OtherTrustDomain {
                    path: cert_path,
                    found,
                    wanted: wanted.to_owned(),
                });
            }
            (Some(found), _) => found,
            (None, Some(wanted)) => wanted.to_owned(),
            (None, None) => DEFAULT_TRUST_DOMAIN.to_owned(),
        };
        crate::spiffe::check_trust_domain(&trust_domain)?;

        // The bundle, and the chain from the signing certificate to one of its roots.
        let bundle = TrustBundle::from_pem(files::ROOT_CERT, &files::read(dir, files::ROOT_CERT)?)
            .map_err(cert_err(&root_path))?;
        let chain = pem::certs(files::CERT_CHAIN, &files::read(dir, files::CERT_CHAIN)?)
            .map_err(cert_err(&chain_path))?;
        if chain[0].as_ref() != signing_der.as_ref() {
            return Err(CaError::BadChain {
                path: chain_path,
                reason: format!(
                    "it must start with the signing certificate {}",
                    files::CA_CERT
                ),
            });
        }
        let (presented, root_name) = chain_to_root(&chain_path, &chain, &bundle)?;

        let issuer = Issuer::from_ca_cert_der(&signing_der, key).map_err(|e| CaError::BadKey {
            path: cert_path.clone(),
            reason: format!("cannot sign with this certificate ({e})"),
        })?;
        Ok(CertificateAuthority {
            dir: dir.to_owned(),
            trust_domain,
            issuer,
            signing_name: x509::short_name(signing.subject()),
            signing_not_after,
            presented,
            root_name,
            bundle,
        })
    }
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.dir)
            .field("trust_domain", &self.trust_domain)
            .field("signing", &self.signing_name)
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// Writes `key.pem` (mode 0600), `cert.pem`, `cert-chain.pem` and `root-cert.pem` into
    /// `dir` (created if needed).
    pub fn write(&self, dir: &Path, key: &WorkloadKey) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
            action: "create",
            path: dir.to_owned(),
            error: source,
        })?;
        let key_pem = key.to_pem();
        files::write_all(
            dir,
            &[
                ("key.pem", key_pem.as_bytes(), true),
                ("cert.pem", self.leaf_pem.as_bytes(), false),
                ("cert-chain.pem", self.chain_pem.as_bytes(), false),
                ("root-cert.pem", self.bundle_pem.as_bytes(), false),
            ],
        )
    }
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests;
