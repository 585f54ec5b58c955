//! A PEM file described in human terms, certificate by certificate: who it is, who signed it,
//! how long it is valid, what its key is; then whether the chain holds together, verifies
//! against a trust bundle and carries the expected identity. Every failed check is a problem
//! worded like the handshake's own errors.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;

use crate::error::CertError;
use crate::verify::{PeerRole, VerifyError, verify_chain};
use crate::{SpiffeId, TrustBundle, human, pem, x509};

/// What to check besides the certificates themselves.
#[derive(Debug, Clone, Copy)]
pub struct InspectOptions<'a> {
    /// Verify the chain against these roots.
    pub bundle: Option<&'a TrustBundle>,
    /// The identity the leaf must carry.
    pub expect_id: Option<&'a SpiffeId>,
    /// The time validity is judged at (normally now).
    pub now: SystemTime,
}

/// The description of one PEM input and the problems found. `Display` prints it.
#[derive(Debug, Clone)]
pub struct Inspection {
    text: String,
    problems: Vec<String>,
}

impl Inspection {
    /// Every failed check, in operator's words (empty when all is well).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if self.problems.is_empty() {
            writeln!(f, "result: ok")
        } else {
            for problem in &self.problems {
                writeln!(f, "problem: {problem}")?;
            }
            let n = self.problems.len();
            writeln!(f, "result: {n} problem{}", if n == 1 { "" } else { "s" })
        }
    }
}

/// Describes the certificates in `pem` (`what` names the input: usually the file). A file of
/// self-signed CA certificates only is read as a trust bundle; anything else as a chain, leaf
/// first. Input that is not PEM certificates at all is an error; failed checks are problems.
pub fn inspect(
    what: &str,
    pem: &[u8],
    options: InspectOptions<'_>,
) -> Result<Inspection, CertError> {
    let ders = pem::certs(what, pem)?;
    let certs = ders
        .iter()
        .enumerate()
        .map(|(i, der)| {
            x509::parse(der).map_err(|reason| CertError::Malformed {
                what: what.to_owned(),
                index: i + 1,
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut report = Report {
        text: String::new(),
        problems: Vec::new(),
    };
    let is_bundle = certs.iter().all(|c| c.is_ca() && x509::is_self_signed(c));
    let n = certs.len();
    let kind = if is_bundle {
        "trust bundle of"
    } else {
        "chain of"
    };
    report.line(format_args!(
        "{what}: {kind} {n} certificate{}",
        if n == 1 { "" } else { "s" }
    ));
    for (i, cert) in certs.iter().enumerate() {
        describe(&mut report, i, cert, &certs, is_bundle, &options);
    }
    if !is_bundle {
        if let Some(bundle) = options.bundle {
            check_bundle(&mut report, &ders, &certs, bundle, options.now);
        }
        if let Some(expected) = options.expect_id {
            check_identity(&mut report, &certs[0], expected);
        }
    } else if options.expect_id.is_some() {
        report.problem(
            "the file holds only CA certificates; there is no identity to check".to_owned(),
        );
    }
    Ok(Inspection {
        text: report.text,
        problems: report.problems,
    })
}

struct Report {
    text: String,
    problems: Vec<String>,
}

impl Report {
    fn line(&mut self, args: fmt::Arguments<'_>) {
        let _ = self.text.write_fmt(args);
        self.text.push('\n');
    }

    fn field(&mut self, name: &str, value: impl fmt::Display) {
        self.line(format_args!("    {name:<10} {value}"));
    }

    /// Records a problem once (the same failure can be found by two checks).
    fn problem(&mut self, problem: String) {
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }
}

fn describe(
    report: &mut Report,
    i: usize,
    cert: &X509Certificate<'_>,
    all: &[X509Certificate<'_>],
    is_bundle: bool,
    options: &InspectOptions<'_>,
) {
    let basic = cert.basic_constraints().ok().flatten().map(|b| b.value);
    let role = match basic {
        Some(b) if b.ca && x509::is_self_signed(cert) => "root CA".to_owned(),
        Some(b) if b.ca => match b.path_len_constraint {
            Some(n) => format!("intermediate CA (pathlen {n})"),
            None => "intermediate CA".to_owned(),
        },
        _ if x509::spiffe_uri(cert).is_ok() => "workload certificate".to_owned(),
        _ => "leaf certificate".to_owned(),
    };
    report.line(format_args!(
        "[{}] {role} {}",
        i + 1,
        x509::subject_label(cert)
    ));
    report.field("subject", x509::name(cert.subject()));
    let sans = x509::sans(cert);
    report.field(
        "SANs",
        if sans.is_empty() {
            "(none)".to_owned()
        } else {
            sans.join(", ")
        },
    );
    report.field("issuer", x509::name(cert.issuer()));

    let not_before = x509::not_before(cert);
    let not_after = x509::not_after(cert);
    let state = if options.now < not_before {
        let wait = not_before.duration_since(options.now).unwrap_or_default();
        report.problem(
            VerifyError::NotYetValid {
                subject: x509::subject_label(cert),
                not_before,
                wait,
            }
            .to_string(),
        );
        format!("not valid for another {}", human::duration(wait))
    } else {
        match human::until(options.now, not_after) {
            Ok(left) => format!("{} left", human::duration(left)),
            Err(ago) => {
                report.problem(
                    VerifyError::Expired {
                        subject: x509::subject_label(cert),
                        not_after,
                        ago,
                    }
                    .to_string(),
                );
                format!("EXPIRED {} ago", human::duration(ago))
            }
        }
    };
    report.field(
        "validity",
        format_args!(
            "{} to {} ({state})",
            human::time(not_before),
            human::time(not_after)
        ),
    );
    report.field("key", x509::key_type(cert.public_key()));
    report.field("serial", x509::serial(cert));
    report.field("usage", usage(cert));

    let signer = if x509::is_self_signed(cert) {
        "itself (self-signed)".to_owned()
    } else if is_bundle {
        format!("{} (not in this file)", x509::short_name(cert.issuer()))
    } else if let Some(next) = all.get(i + 1) {
        if x509::signed_by(cert, next) {
            format!("[{}] (signature verified)", i + 2)
        } else {
            report.problem(link_problem(i, cert, next));
            format!("NOT [{}]", i + 2)
        }
    } else {
        top_signer(cert, options.bundle)
    };
    report.field("signed by", signer);
}

/// Who signed the last certificate of a chain: a root of the bundle, or someone unknown.
fn top_signer(cert: &X509Certificate<'_>, bundle: Option<&TrustBundle>) -> String {
    let issuer = x509::short_name(cert.issuer());
    let Some(bundle) = bundle else {
        return format!("{issuer} (not in this file; pass a bundle to check it)");
    };
    let root = bundle.certs().iter().find_map(|der| {
        let root = x509::parse(der).ok()?;
        x509::signed_by(cert, &root).then(|| x509::short_name(root.subject()))
    });
    match root {
        Some(name) => format!("{name}, a root of the trust bundle (signature verified)"),
        None => format!("{issuer}, which is not in the trust bundle"),
    }
}

fn link_problem(i: usize, cert: &X509Certificate<'_>, next: &X509Certificate<'_>) -> String {
    if cert.issuer().as_raw() == next.subject().as_raw() {
        format!(
            "certificate [{}] names [{}] ({}) as its issuer, but [{}]'s key does not verify its \
             signature: the two come from different CAs that share a name",
            i + 1,
            i + 2,
            x509::short_name(next.subject()),
            i + 2
        )
    } else {
        format!(
            "certificate [{}] is not signed by the next one, [{}]: its issuer is {}, [{}] is {} \
             (the file is out of order or mixes chains)",
            i + 1,
            i + 2,
            x509::short_name(cert.issuer()),
            i + 2,
            x509::short_name(next.subject())
        )
    }
}

/// Key usage and extended key usage in words.
fn usage(cert: &X509Certificate<'_>) -> String {
    let mut parts = Vec::new();
    if let Ok(Some(ku)) = cert.key_usage() {
        parts.push(ku.value.to_string());
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        let eku = eku.value;
        let names: Vec<String> = [
            (eku.server_auth, "TLS server"),
            (eku.client_auth, "TLS client"),
            (eku.any, "any"),
            (eku.code_signing, "code signing"),
            (eku.email_protection, "email"),
            (eku.time_stamping, "time stamping"),
            (eku.ocsp_signing, "OCSP signing"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.to_owned())
        .chain(eku.other.iter().map(|oid| oid.to_id_string()))
        .collect();
        parts.push(names.join(", "));
    }
    if parts.is_empty() {
        "(unrestricted)".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Does the chain verify against `bundle`? A leaf chain goes through the same verification as
/// a handshake (for both server and client use); a chain of CA certificates is checked link by
/// link up to a root.
fn check_bundle(
    report: &mut Report,
    ders: &[CertificateDer<'static>],
    certs: &[X509Certificate<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
) {
    let n = bundle.len();
    let heading = format!(
        "trust bundle ({n} root{}: {bundle})",
        if n == 1 { "" } else { "s" }
    );
    let leaf = &certs[0];
    let outcome = if leaf.is_ca() {
        let top = &certs[certs.len() - 1];
        let trusted = bundle.contains(&ders[ders.len() - 1])
            || bundle
                .certs()
                .iter()
                .any(|der| x509::parse(der).is_ok_and(|root| x509::signed_by(top, &root)));
        if trusted {
            Ok(())
        } else {
            Err(vec![VerifyError::UnknownAuthority {
                issuer: x509::short_name(top.issuer()),
                bundle: bundle.names().to_vec(),
            }])
        }
    } else {
        let mut errors = Vec::new();
        for role in [PeerRole::Server, PeerRole::Client] {
            if let Err(e) = verify_chain(bundle, ders, now, role) {
                if !errors.contains(&e) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    };
    match outcome {
        Ok(()) => report.line(format_args!("{heading}: the chain verifies")),
        Err(errors) => {
            report.line(format_args!("{heading}: the chain does NOT verify"));
            for e in errors {
                report.problem(e.to_string());
            }
        }
    }
}

fn check_identity(report: &mut Report, leaf: &X509Certificate<'_>, expected: &SpiffeId) {
    match x509::spiffe_uri(leaf) {
        Ok(uri) if uri == expected.to_string() => {
            report.line(format_args!("identity {uri}: as expected"));
        }
        Ok(uri) => {
            report.line(format_args!("identity {uri}: NOT the expected {expected}"));
            report.problem(
                VerifyError::WrongIdentity {
                    presented: uri.to_owned(),
                    expected: expected.clone(),
                }
                .to_string(),
            );
        }
        Err(problem) => {
            report.line(format_args!("identity: none (expected {expected})"));
            report.problem(
                VerifyError::NoIdentity {
                    subject: x509::short_name(leaf.subject()),
                    reason: problem.to_string(),
                }
                .to_string(),
            );
        }
    }
}

#[cfg(test)]
mod tests;
