use std::time::{Duration, SystemTime};

use super::*;
use crate::testing::{id, new_ca};
use crate::{CertificateAuthority, WorkloadKey};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn options<'a>(
    bundle: Option<&'a TrustBundle>,
    expect_id: Option<&'a SpiffeId>,
) -> InspectOptions<'a> {
    InspectOptions {
        bundle,
        expect_id,
        now: SystemTime::now(),
    }
}

fn chain(ca: &CertificateAuthority, sa: &str) -> String {
    ca.issue(&id(sa), DAY).unwrap().1.chain_pem
}

#[test]
fn a_good_chain_is_described_and_passes_every_check() {
    let (_dir, ca) = new_ca("inspect-good");
    let pem = chain(&ca, "web");
    let web = id("web");
    let report = inspect(
        "cert-chain.pem",
        pem.as_bytes(),
        options(Some(ca.bundle()), Some(&web)),
    )
    .unwrap();
    let text = report.to_string();
    assert!(report.is_ok(), "{text}");
    for want in [
        "cert-chain.pem: chain of 2 certificates\n",
        "[1] workload certificate spiffe://cluster.local/ns/default/sa/web\n",
        "    subject    (empty)\n",
        "    SANs       URI:spiffe://cluster.local/ns/default/sa/web\n",
        "    key        ECDSA P-256\n",
        "    usage      Digital Signature; TLS server, TLS client\n",
        "    signed by  [2] (signature verified)\n",
        "[2] intermediate CA (pathlen 0) CN=Trellis Intermediate CA",
        "(23h 59m left)",
        "(9y 364d left)",
        ", a root of the trust bundle (signature verified)\n",
        "): the chain verifies\n",
        "identity spiffe://cluster.local/ns/default/sa/web: as expected\n",
        "result: ok\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn an_expired_leaf_is_a_problem_said_once() {
    let (_dir, ca) = new_ca("inspect-expired");
    let key = WorkloadKey::generate().unwrap();
    let csr = key.csr_pem(&id("web")).unwrap();
    let issued = ca
        .sign_csr_at(
            csr.as_bytes(),
            &id("web"),
            Duration::from_secs(3600),
            SystemTime::now() - 4 * 3600 * Duration::from_secs(1),
        )
        .unwrap();
    let report = inspect(
        "old.pem",
        issued.chain_pem.as_bytes(),
        options(Some(ca.bundle()), None),
    )
    .unwrap();
    let text = report.to_string();
    assert_eq!(report.problems().len(), 1, "{text}");
    assert!(
        report.problems()[0].starts_with("certificate expired 3h ago (at "),
        "{text}"
    );
    assert!(text.contains("(EXPIRED 3h ago)"), "{text}");
    assert!(text.contains("the chain does NOT verify"), "{text}");
    assert!(text.ends_with("result: 1 problem\n"), "{text}");
}

#[test]
fn an_unknown_authority_and_a_wrong_identity_are_problems() {
    let (_dir, ca) = new_ca("inspect-unknown");
    let (_other_dir, other) = new_ca("inspect-unknown-other");
    let pem = chain(&other, "web");
    let db = id("db");
    let report = inspect(
        "web.pem",
        pem.as_bytes(),
        options(Some(ca.bundle()), Some(&db)),
    )
    .unwrap();
    let text = report.to_string();
    assert_eq!(
        report.problems(),
        [
            format!(
                "certificate signed by unknown authority (issuer {}; the trust bundle holds {})",
                other.root_name(),
                ca.root_name()
            ),
            "identity spiffe://cluster.local/ns/default/sa/web is not the expected \
             spiffe://cluster.local/ns/default/sa/db"
                .to_owned(),
        ],
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{}, which is not in the trust bundle",
            other.root_name()
        )),
        "{text}"
    );
}

#[test]
fn a_bundle_file_is_read_as_roots_and_a_shuffled_chain_as_broken() {
    let (dir, ca) = new_ca("inspect-bundle");
    let rotated = CertificateAuthority::rotate(&dir.join("ca")).unwrap();
    let report = inspect(
        "root-cert.pem",
        rotated.bundle().to_pem().as_bytes(),
        options(None, None),
    )
    .unwrap();
    let text = report.to_string();
    assert!(report.is_ok(), "{text}");
    assert!(
        text.starts_with("root-cert.pem: trust bundle of 2 certificates\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("[1] root CA {}", ca.root_name())),
        "{text}"
    );
    assert!(text.contains("signed by  itself (self-signed)"), "{text}");

    // Intermediate first, then a leaf: out of order.
    let pem = chain(&rotated, "web");
    let certs: Vec<&str> = pem.split_inclusive("-----END CERTIFICATE-----\n").collect();
    let shuffled = format!("{}{}", certs[1], certs[0]);
    let report = inspect("shuffled.pem", shuffled.as_bytes(), options(None, None)).unwrap();
    assert!(
        report.problems()[0].starts_with("certificate [1] is not signed by the next one, [2]"),
        "{report}"
    );
}

#[test]
fn input_that_is_not_certificates_is_an_error() {
    let err = inspect(
        "key.pem",
        WorkloadKey::generate().unwrap().to_pem().as_bytes(),
        options(None, None),
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("key.pem holds no certificate"),
        "{err}"
    );
    let err = inspect(
        "junk.pem",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        options(None, None),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("junk.pem: certificate 1 is not a valid X.509"),
        "{err}"
    );
}
