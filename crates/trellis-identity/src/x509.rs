//! Reading X.509 certificates in our terms: names, SPIFFE IDs, key types, validity.

use std::time::{Duration, SystemTime};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name};

/// Why a certificate carries no usable SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdProblem {
    NoUri,
    SeveralUris(usize),
    NotSpiffe(String),
    BadSan(String),
}

impl std::fmt::Display for IdProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdProblem::NoUri => write!(f, "it has no URI SAN"),
            IdProblem::SeveralUris(n) => write!(f, "it has {n} URI SANs; a workload has one"),
            IdProblem::NotSpiffe(uri) => write!(f, "its URI SAN {uri} is not a SPIFFE ID"),
            IdProblem::BadSan(reason) => write!(f, "its SAN extension is invalid: {reason}"),
        }
    }
}

/// Parses one DER certificate (trailing bytes are an error).
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(format!("{} trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// The certificate's single `spiffe://` URI SAN, borrowed from the DER.
pub(crate) fn spiffe_uri<'a>(cert: &X509Certificate<'a>) -> Result<&'a str, IdProblem> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdProblem::BadSan(e.to_string()))?;
    let mut uris = san.iter().flat_map(|ext| {
        ext.value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
    });
    let first = uris.next().ok_or(IdProblem::NoUri)?;
    let more = uris.count();
    if more > 0 {
        return Err(IdProblem::SeveralUris(more + 1));
    }
    if !first.starts_with("spiffe://") {
        return Err(IdProblem::NotSpiffe(first.to_owned()));
    }
    Ok(first)
}

/// Every SAN as `URI:…`, `DNS:…`, `IP:…`, `email:…`.
pub(crate) fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::URI(uri) => format!("URI:{uri}"),
            GeneralName::DNSName(dns) => format!("DNS:{dns}"),
            GeneralName::RFC822Name(mail) => format!("email:{mail}"),
            GeneralName::IPAddress(bytes) => format!("IP:{}", ip_text(bytes)),
            other => format!("{other}"),
        })
        .collect()
}

pub(crate) fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => {
            let b: [u8; 4] = bytes.try_into().unwrap_or_default();
            std::net::Ipv4Addr::from(b).to_string()
        }
        16 => {
            let b: [u8; 16] = bytes.try_into().unwrap_or_default();
            std::net::Ipv6Addr::from(b).to_string()
        }
        _ => format!("{bytes:02x?}"),
    }
}

/// A name as `CN=…, O=…`, or `(empty)`.
pub(crate) fn name(name: &X509Name<'_>) -> String {
    let text = name.to_string();
    if text.is_empty() {
        "(empty)".to_owned()
    } else {
        text
    }
}

/// The shortest name that tells certificates apart in a message: `CN=…` when there is a
/// common name, the whole name otherwise.
pub(crate) fn short_name(name: &X509Name<'_>) -> String {
    match name
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        Some(cn) => format!("CN={cn}"),
        None => self::name(name),
    }
}

/// What a leaf is called in messages: its SPIFFE ID, else its subject.
pub(crate) fn subject_label(cert: &X509Certificate<'_>) -> String {
    match spiffe_uri(cert) {
        Ok(uri) if !cert.is_ca() => uri.to_owned(),
        _ => short_name(cert.subject()),
    }
}

pub(crate) fn not_before(cert: &X509Certificate<'_>) -> SystemTime {
    unix(cert.validity().not_before.timestamp())
}

pub(crate) fn not_after(cert: &X509Certificate<'_>) -> SystemTime {
    unix(cert.validity().not_after.timestamp())
}

fn unix(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

/// The key type in words: `ECDSA P-256`, `RSA 2048`, `Ed25519`.
pub(crate) fn key_type(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => "ECDSA P-256".to_owned(),
            Some(c) if c == OID_NIST_EC_P384 => "ECDSA P-384".to_owned(),
            Some(c) if c == OID_NIST_EC_P521 => "ECDSA P-521".to_owned(),
            Some(c) => format!("ECDSA (curve {c})"),
            None => "ECDSA (unknown curve)".to_owned(),
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        return match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
            _ => "RSA".to_owned(),
        };
    }
    if *alg == OID_SIG_ED25519 {
        return "Ed25519".to_owned();
    }
    format!("key algorithm {alg}")
}

/// True when `spki` is an ECDSA P-256 key, the only kind workloads get.
pub(crate) fn is_p256(spki: &SubjectPublicKeyInfo<'_>) -> bool {
    spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|c| c == OID_EC_P256)
}

/// True when the certificate names itself as issuer and its own key verifies its signature.
pub(crate) fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok()
}

/// True when `child` names `parent` as issuer and `parent`'s key verifies `child`'s signature.
pub(crate) fn signed_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == parent.subject().as_raw()
        && child.verify_signature(Some(parent.public_key())).is_ok()
}

/// The serial number as colon-separated hex, the way openssl prints it.
pub(crate) fn serial(cert: &X509Certificate<'_>) -> String {
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
