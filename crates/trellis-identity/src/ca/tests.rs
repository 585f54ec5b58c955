use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, SanType};
use rustls_pki_types::pem::PemObject;

use super::*;
use crate::testing::{TempDir, ders, id, new_ca};
use crate::{PeerRole, verify_chain};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn csr_with(sans: Vec<SanType>, key: &KeyPair) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
}

#[test]
fn init_writes_the_plug_in_layout_and_loads_back() {
    let (dir, ca) = new_ca("init");
    let ca_dir = dir.join("ca");
    for file in files::ALL {
        assert!(ca_dir.join(file).is_file(), "{file} missing");
    }
    assert_eq!(mode(&ca_dir.join(files::CA_KEY)), 0o600);
    assert_eq!(ca.trust_domain(), "cluster.local");
    assert_eq!(ca.bundle().len(), 1);
    assert!(
        ca.signing_name().starts_with("CN=Trellis Intermediate CA "),
        "{}",
        ca.signing_name()
    );
    assert!(
        ca.root_name().starts_with("CN=Trellis Root CA "),
        "{}",
        ca.root_name()
    );
    assert_eq!(ca.bundle().names(), [ca.root_name().to_owned()]);

    let loaded = CertificateAuthority::load(&ca_dir).unwrap();
    assert_eq!(loaded.signing_name(), ca.signing_name());
    assert_eq!(loaded.root_name(), ca.root_name());

    // The intermediate: CA with pathlen 0, signed by the self-signed root, ~10 years.
    let chain = ders(&std::fs::read_to_string(ca_dir.join(files::CERT_CHAIN)).unwrap());
    assert_eq!(chain.len(), 2);
    let intermediate = x509::parse(&chain[0]).unwrap();
    let root = x509::parse(&chain[1]).unwrap();
    let bc = intermediate.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    assert!(x509::signed_by(&intermediate, &root));
    assert!(x509::is_self_signed(&root));
    let life = x509::not_after(&root)
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(life > 9 * 365 * DAY && life <= 10 * 365 * DAY, "{life:?}");
}

#[test]
fn init_refuses_an_existing_ca_unless_told_to_replace_it() {
    let (dir, ca) = new_ca("init-twice");
    let ca_dir = dir.join("ca");
    let err = CertificateAuthority::init(&ca_dir, "cluster.local", Existing::Refuse).unwrap_err();
    assert!(err.to_string().contains("already holds a CA"), "{err}");
    let replaced = CertificateAuthority::init(&ca_dir, "cluster.local", Existing::Replace).unwrap();
    assert_ne!(replaced.root_name(), ca.root_name());
}

#[test]
fn init_refuses_an_invalid_trust_domain() {
    let dir = TempDir::new("bad-domain");
    let err = CertificateAuthority::init(dir.path(), "Bad Domain", Existing::Refuse).unwrap_err();
    assert!(matches!(err, CaError::TrustDomain(_)), "{err}");
}

#[test]
fn load_refuses_a_key_others_can_read_and_says_how_to_fix_it() {
    let (dir, _ca) = new_ca("mode");
    let key = dir.join("ca").join(files::CA_KEY);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = CertificateAuthority::load(&dir.join("ca")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "ca-key.pem is readable by others (mode 0644); run chmod 600 {}",
            key.display()
        )
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = CertificateAuthority::load(&dir.join("ca")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("ca-key.pem is readable by its group (mode 0640)"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    CertificateAuthority::load(&dir.join("ca")).unwrap();
}

#[test]
fn load_names_a_missing_file() {
    let (dir, _ca) = new_ca("missing");
    std::fs::remove_file(dir.join("ca").join(files::CERT_CHAIN)).unwrap();
    let err = CertificateAuthority::load(&dir.join("ca")).unwrap_err();
    assert!(matches!(err, CaError::Missing { .. }), "{err}");
    assert!(
        err.to_string().contains("cert-chain.pem is missing"),
        "{err}"
    );
}

#[test]
fn load_refuses_a_chain_that_leads_to_no_root_of_the_bundle() {
    let (dir, _ca) = new_ca("untrusted");
    let (other, other_ca) = new_ca("untrusted-other");
    let _ = other;
    std::fs::write(
        dir.join("ca").join(files::ROOT_CERT),
        other_ca.bundle().to_pem(),
    )
    .unwrap();
    let err = CertificateAuthority::load(&dir.join("ca")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("does not lead to a root of root-cert.pem"),
        "{text}"
    );
    assert!(
        text.contains("certificate signed by unknown authority"),
        "{text}"
    );
}

#[test]
fn a_plug_in_ca_for_another_trust_domain_is_refused_for_this_one() {
    let dir = TempDir::new("plugin");
    CertificateAuthority::init(dir.path(), "example.org", Existing::Refuse).unwrap();
    let ca = CertificateAuthority::load(dir.path()).unwrap();
    assert_eq!(ca.trust_domain(), "example.org");
    let err = CertificateAuthority::load_for(dir.path(), "cluster.local").unwrap_err();
    assert!(
        err.to_string()
            .contains("is for trust domain example.org, not cluster.local"),
        "{err}"
    );
}

#[test]
fn sign_csr_issues_a_spiffe_leaf_with_only_the_uri_san() {
    let (_dir, ca) = new_ca("sign");
    let key = WorkloadKey::generate().unwrap();
    let web = id("web");
    let csr = key.csr_pem(&web).unwrap();
    let before = SystemTime::now();
    let issued = ca.sign_csr(csr.as_bytes(), &web, DAY).unwrap();

    let chain = ders(&issued.chain_pem);
    assert_eq!(chain.len(), 2, "leaf + intermediate, no root");
    assert_eq!(ders(&issued.leaf_pem), chain[..1]);
    assert_eq!(ders(&issued.bundle_pem), ca.bundle().certs());

    let leaf = x509::parse(&chain[0]).unwrap();
    assert_eq!(
        x509::sans(&leaf),
        ["URI:spiffe://cluster.local/ns/default/sa/web"]
    );
    assert_eq!(x509::name(leaf.subject()), "(empty)");
    assert!(leaf.subject_alternative_name().unwrap().unwrap().critical);
    assert!(!leaf.is_ca());
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.any);
    assert_eq!(x509::key_type(leaf.public_key()), "ECDSA P-256");
    assert_eq!(leaf.public_key().raw, key.public_key_der().as_slice());

    let lifetime = x509::not_after(&leaf)
        .duration_since(x509::not_before(&leaf))
        .unwrap();
    assert_eq!(lifetime, DAY + BACKDATE);
    assert!(x509::not_before(&leaf) <= before - BACKDATE + Duration::from_secs(1));
    assert_eq!(issued.not_after, x509::not_after(&leaf));
    assert_eq!(issued.serial, x509::serial(&leaf));

    for role in [PeerRole::Server, PeerRole::Client] {
        assert_eq!(
            verify_chain(ca.bundle(), &chain, SystemTime::now(), role).unwrap(),
            web
        );
    }
    // Serials are random: a second certificate for the same key differs.
    let again = ca.sign_csr(csr.as_bytes(), &web, DAY).unwrap();
    assert_ne!(again.serial, issued.serial);
}

#[test]
fn sign_csr_refuses_another_identity() {
    let (_dir, ca) = new_ca("refuse-id");
    let csr = WorkloadKey::generate()
        .unwrap()
        .csr_pem(&id("web"))
        .unwrap();
    let err = ca.sign_csr(csr.as_bytes(), &id("db"), DAY).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR refused: the CSR asks for spiffe://cluster.local/ns/default/sa/web, but the \
         requester is spiffe://cluster.local/ns/default/sa/db"
    );
    assert!(matches!(
        err,
        CaError::Refused(CsrRefusal::WrongIdentity { .. })
    ));
}

#[test]
fn sign_csr_refuses_extra_dns_and_ip_names() {
    let (_dir, ca) = new_ca("refuse-dns");
    let web = id("web");
    let csr = csr_with(
        vec![
            uri(&web.to_string()),
            SanType::DnsName("web.default.svc".try_into().unwrap()),
            SanType::IpAddress("10.0.0.7".parse().unwrap()),
        ],
        &p256(),
    );
    let err = ca.sign_csr(csr.as_bytes(), &web, DAY).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR refused: the CSR also asks for DNS:web.default.svc, IP:10.0.0.7; a workload \
         certificate carries only its SPIFFE ID"
    );
}

#[test]
fn sign_csr_refuses_another_trust_domain() {
    let (_dir, ca) = new_ca("refuse-domain");
    let foreign = SpiffeId::new("example.org", "default", "web").unwrap();
    let csr = WorkloadKey::generate().unwrap().csr_pem(&foreign).unwrap();
    let err = ca.sign_csr(csr.as_bytes(), &foreign, DAY).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR refused: identity spiffe://example.org/ns/default/sa/web is in trust domain \
         example.org, but this CA signs for trust domain cluster.local"
    );
}

#[test]
fn sign_csr_refuses_a_bad_signature() {
    let (_dir, ca) = new_ca("refuse-sig");
    let web = id("web");
    let csr = WorkloadKey::generate().unwrap().csr_pem(&web).unwrap();
    let mut der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    // The last byte is inside the ECDSA signature's `s`: the DER stays valid.
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let tampered = pem::encode("CERTIFICATE REQUEST", &der);
    let err = ca.sign_csr(tampered.as_bytes(), &web, DAY).unwrap_err();
    assert!(
        matches!(err, CaError::Refused(CsrRefusal::BadSignature)),
        "{err}"
    );
}

#[test]
fn sign_csr_refuses_no_identity_several_identities_and_other_keys() {
    let (_dir, ca) = new_ca("refuse-more");
    let web = id("web");
    let none = csr_with(vec![], &p256());
    let err = ca.sign_csr(none.as_bytes(), &web, DAY).unwrap_err();
    assert!(
        matches!(err, CaError::Refused(CsrRefusal::NoIdentity { .. })),
        "{err}"
    );

    let two = csr_with(
        vec![uri(&web.to_string()), uri(&id("db").to_string())],
        &p256(),
    );
    let err = ca.sign_csr(two.as_bytes(), &web, DAY).unwrap_err();
    assert!(err.to_string().contains("asks for 2 URI SANs"), "{err}");

    let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let csr = csr_with(vec![uri(&web.to_string())], &p384);
    let err = ca.sign_csr(csr.as_bytes(), &web, DAY).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR refused: the CSR's key is ECDSA P-384; workload keys must be ECDSA P-256"
    );

    let err = ca.sign_csr(b"not a csr", &web, DAY).unwrap_err();
    assert!(
        matches!(err, CaError::Refused(CsrRefusal::NotPem(_))),
        "{err}"
    );

    let csr = WorkloadKey::generate().unwrap().csr_pem(&web).unwrap();
    let err = ca
        .sign_csr(csr.as_bytes(), &web, Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, CaError::TtlTooShort(_)), "{err}");
}

#[test]
fn rotation_keeps_both_roots_until_the_old_one_is_retired() {
    let (dir, old_ca) = new_ca("rotate");
    let ca_dir = dir.join("ca");
    let (_, before) = old_ca.issue(&id("web"), DAY).unwrap();
    let old_bundle = old_ca.bundle().clone();

    let new_ca = CertificateAuthority::rotate(&ca_dir).unwrap();
    assert_ne!(new_ca.root_name(), old_ca.root_name());
    assert_ne!(new_ca.signing_name(), old_ca.signing_name());
    assert_eq!(
        new_ca.bundle().names(),
        [old_ca.root_name().to_owned(), new_ca.root_name().to_owned()]
    );
    assert_eq!(mode(&ca_dir.join(files::CA_KEY)), 0o600);
    let (_, after) = new_ca.issue(&id("db"), DAY).unwrap();
    assert_eq!(ders(&after.bundle_pem).len(), 2);

    // Both chains verify against the two-root bundle; the new one not against the old bundle.
    let now = SystemTime::now();
    let bundle = new_ca.bundle();
    verify_chain(bundle, &ders(&before.chain_pem), now, PeerRole::Server).unwrap();
    verify_chain(bundle, &ders(&after.chain_pem), now, PeerRole::Client).unwrap();
    let err =
        verify_chain(&old_bundle, &ders(&after.chain_pem), now, PeerRole::Server).unwrap_err();
    assert!(matches!(err, VerifyError::UnknownAuthority { .. }), "{err}");

    // Retiring drops the old root: the old chain is then from an unknown authority.
    let (retired_ca, retired) = CertificateAuthority::retire(&ca_dir).unwrap();
    assert_eq!(retired, [old_ca.root_name().to_owned()]);
    assert_eq!(retired_ca.bundle().names(), [new_ca.root_name().to_owned()]);
    let err = verify_chain(
        retired_ca.bundle(),
        &ders(&before.chain_pem),
        now,
        PeerRole::Server,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "certificate signed by unknown authority (issuer {}; the trust bundle holds {})",
            old_ca.root_name(),
            new_ca.root_name()
        )
    );
    let err = CertificateAuthority::retire(&ca_dir).unwrap_err();
    assert!(matches!(err, CaError::NothingToRetire { .. }), "{err}");
}

#[test]
fn issued_files_are_written_with_a_private_key_file() {
    let (dir, ca) = new_ca("write");
    let (key, issued) = ca.issue(&id("web"), DAY).unwrap();
    let out = dir.join("out");
    issued.write(&out, &key).unwrap();
    assert_eq!(mode(&out.join("key.pem")), 0o600);
    for file in ["cert.pem", "cert-chain.pem", "root-cert.pem"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let cert = crate::WorkloadCert::from_pem(
        "out",
        &std::fs::read(out.join("cert-chain.pem")).unwrap(),
        &std::fs::read(out.join("key.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(cert.id(), &id("web"));
}
