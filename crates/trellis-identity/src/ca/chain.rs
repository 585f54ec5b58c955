//! Checking that a CA's chain holds together and leads to a root of its bundle.

use std::path::Path;

use rustls_pki_types::CertificateDer;

use super::{CaError, files};
use crate::error::CertError;
use crate::verify::VerifyError;
use crate::{TrustBundle, x509};

/// Checks that each certificate of `chain` is signed by the next and that the last one is, or
/// is signed by, a root of `bundle`. Returns the certificates to present above a leaf (the
/// chain without roots) and the root's short name.
pub(super) fn chain_to_root(
    path: &Path,
    chain: &[CertificateDer<'static>],
    bundle: &TrustBundle,
) -> Result<(Vec<CertificateDer<'static>>, String), CaError> {
    let parsed = chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            x509::parse(der).map_err(|reason| CaError::Cert {
                path: path.to_owned(),
                error: CertError::Malformed {
                    what: files::CERT_CHAIN.to_owned(),
                    index: i + 1,
                    reason,
                },
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (i, pair) in parsed.windows(2).enumerate() {
        if !x509::signed_by(&pair[0], &pair[1]) {
            return Err(CaError::BadChain {
                path: path.to_owned(),
                reason: format!(
                    "certificate {} ({}) is not signed by certificate {} ({})",
                    i + 1,
                    x509::short_name(pair[0].subject()),
                    i + 2,
                    x509::short_name(pair[1].subject())
                ),
            });
        }
    }
    // The path ends at the first certificate that is itself a root of the bundle, or at the
    // bundle root that signed the last certificate.
    let in_bundle = chain.iter().position(|c| bundle.contains(c));
    let (presented_len, root_name) = match in_bundle {
        Some(i) => (i, x509::short_name(parsed[i].subject())),
        None => {
            let top = parsed.last().ok_or_else(|| CaError::BadChain {
                path: path.to_owned(),
                reason: "it is empty".to_owned(),
            })?;
            let root = bundle.certs().iter().find_map(|der| {
                let root = x509::parse(der).ok()?;
                x509::signed_by(top, &root).then(|| x509::short_name(root.subject()))
            });
            match root {
                Some(name) => (chain.len(), name),
                None => {
                    return Err(CaError::Untrusted {
                        path: path.to_owned(),
                        error: VerifyError::UnknownAuthority {
                            issuer: x509::short_name(top.issuer()),
                            bundle: bundle.names().to_vec(),
                        },
                    });
                }
            }
        }
    };
    let presented = chain[..presented_len]
        .iter()
        .zip(&parsed)
        .filter(|(_, c)| !x509::is_self_signed(c))
        .map(|(der, _)| der.clone())
        .collect();
    Ok((presented, root_name))
}
