//! PEM in and out: certificates, keys and CSRs as operators keep them in files. Decoding goes
//! through `rustls-pki-types` (`PemObject`); encoding is a few lines of base64.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::CertError;

/// Every certificate in `pem`, in order. `what` names the input in errors. Other PEM blocks
/// (keys, CSRs) are skipped; no certificate at all is an error.
pub(crate) fn certs(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificates {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// `der` as a PEM block with `label` (`CERTIFICATE`), lines of 64 characters.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Several certificates as one PEM text.
pub(crate) fn encode_certs<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    certs
        .into_iter()
        .map(|c| encode("CERTIFICATE", c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_through_the_decoder() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 500] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let pem = encode("CERTIFICATE", &der);
            if len == 0 {
                continue;
            }
            let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), der.as_slice(), "length {len}");
            assert!(pem.lines().all(|l| l.len() <= 64));
        }
    }

    #[test]
    fn no_certificate_is_an_error_naming_the_input() {
        let err = certs(
            "key.pem",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("key.pem holds no certificate"),
            "{err}"
        );
    }
}
