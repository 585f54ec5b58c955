//! Making a new root and intermediate, and random serial numbers.

use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::{BACKDATE, CA_LIFETIME, CaError, whole_seconds};

/// A new root and intermediate, as PEM.
pub(super) struct Generated {
    pub(super) root_pem: String,
    pub(super) intermediate_pem: String,
    pub(super) intermediate_key_pem: String,
}

pub(super) fn generate(trust_domain: &str, now: SystemTime) -> Result<Generated, CaError> {
    let generate = |action| {
        move |source| CaError::Generate {
            action,
            error: source,
        }
    };
    let now = whole_seconds(now);
    let ca_params = |kind: &str, pathlen: Option<u8>| -> Result<CertificateParams, CaError> {
        let serial = random_serial()?;
        let tag: String = serial.as_ref()[..3]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Trellis {kind} CA {tag}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .map_err(generate("name the CA"))?,
        )];
        params.is_ca = IsCa::Ca(match pathlen {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(serial);
        params.not_before = OffsetDateTime::from(now - BACKDATE);
        params.not_after = OffsetDateTime::from(now + CA_LIFETIME);
        Ok(params)
    };

    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(generate("generate the root key"))?;
    let root_params = ca_params("Root", None)?;
    let root = root_params
        .self_signed(&root_key)
        .map_err(generate("create the root certificate"))?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(generate("generate the intermediate key"))?;
    let mut params = ca_params("Intermediate", Some(0))?;
    params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_params(&root_params, &root_key);
    let intermediate = params
        .signed_by(&key, &issuer)
        .map_err(generate("create the intermediate certificate"))?;
    Ok(Generated {
        root_pem: root.pem(),
        intermediate_pem: intermediate.pem(),
        intermediate_key_pem: key.serialize_pem(),
    })
}

/// 16 random bytes, the first one positive and non-zero (RFC 5280: a positive serial of at
/// most 20 bytes).
pub(super) fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    crate::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}
