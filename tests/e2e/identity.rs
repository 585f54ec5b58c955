//! `trellis ca init|issue|rotate|retire` and `trellis cert inspect`: the mesh CA on disk, the
//! certificates it issues checked by openssl (the tool operators already trust), and the
//! human description with its exit codes (0 all good, 1 a check failed, 2 bad input).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use trellis_test_support::{CommandOutput, TestDir, require_tool, run, wait_until};

use crate::trellis;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";
const DEADLINE: Duration = Duration::from_secs(30);

/// Runs `trellis ARGS...`.
fn trellis_run(args: &[&str]) -> CommandOutput {
    let mut command = trellis().command();
    command.args(args);
    run(&format!("trellis {}", args.join(" ")), command, DEADLINE)
}

/// Runs `trellis ARGS...` and requires exit status 0.
fn trellis_ok(args: &[&str]) -> CommandOutput {
    let out = trellis_run(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "trellis {} failed ({})\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        out.stdout_text(),
        out.stderr
    );
    out
}

fn openssl(args: &[&str]) -> CommandOutput {
    let mut command = Command::new("openssl");
    command.args(args);
    run(&format!("openssl {}", args.join(" ")), command, DEADLINE)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A CA in `dir/ca` and a certificate for `id` in `dir/<name>` (with `ttl`).
struct Issued {
    ca: PathBuf,
    out: PathBuf,
}

fn init_ca(dir: &TestDir) -> PathBuf {
    let ca = dir.join("ca");
    trellis_ok(&["ca", "init", "--dir", path(&ca)]);
    ca
}

fn issue(dir: &TestDir, ca: &Path, id: &str, name: &str, ttl: &str) -> Issued {
    let out = dir.join(name);
    trellis_ok(&[
        "ca",
        "issue",
        "--dir",
        path(ca),
        "--id",
        id,
        "--out",
        path(&out),
        "--ttl",
        ttl,
    ]);
    Issued {
        ca: ca.to_owned(),
        out,
    }
}

impl Issued {
    fn file(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    fn chain(&self) -> String {
        path(&self.file("cert-chain.pem")).to_owned()
    }
}

#[test]
fn issued_certificates_verify_with_openssl_and_carry_only_the_uri_san() {
    if !require_tool("openssl") {
        return;
    }
    let dir = TestDir::new("identity-openssl");
    let ca = init_ca(&dir);
    assert_eq!(mode(&ca.join("ca-key.pem")), 0o600, "ca-key.pem mode");
    let web = issue(&dir, &ca, WEB, "web", "24h");
    assert_eq!(mode(&web.file("key.pem")), 0o600, "key.pem mode");

    // openssl verify -CAfile root-cert.pem -untrusted <CA chain> cert.pem, for both uses.
    let roots = web.file("root-cert.pem");
    let leaf = web.file("cert.pem");
    let untrusted = web.ca.join("cert-chain.pem");
    for purpose in [None, Some("sslserver"), Some("sslclient")] {
        let mut args = vec!["verify"];
        if let Some(purpose) = purpose {
            args.extend(["-purpose", purpose]);
        }
        args.extend([
            "-CAfile",
            path(&roots),
            "-untrusted",
            path(&untrusted),
            path(&leaf),
        ]);
        let out = openssl(&args);
        assert!(
            out.status.success() && out.stdout_text().contains(": OK"),
            "openssl {}: {}\n{}",
            args.join(" "),
            out.stdout_text(),
            out.stderr
        );
    }

    // The text form: the URI SAN and nothing else, not a CA.
    let text = openssl(&["x509", "-in", path(&leaf), "-noout", "-text"]).stdout_text();
    assert!(text.contains(&format!("URI:{WEB}")), "{text}");
    for absent in ["DNS:", "IP Address:", "email:"] {
        assert!(!text.contains(absent), "{absent} in\n{text}");
    }
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("NIST CURVE: P-256"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );

    // Valid for 24 h from now: still valid in 23h53m, no longer in 24h05m.
    let valid_in = |secs: &str| {
        openssl(&["x509", "-in", path(&leaf), "-noout", "-checkend", secs])
            .status
            .success()
    };
    assert!(valid_in("85980"), "the certificate ends before 24 h");
    assert!(!valid_in("86700"), "the certificate lasts beyond 24 h");

    // key.pem is the key of cert.pem.
    let from_key = openssl(&["pkey", "-in", path(&web.file("key.pem")), "-pubout"]);
    let from_cert = openssl(&["x509", "-in", path(&leaf), "-noout", "-pubkey"]);
    assert!(from_key.status.success(), "{}", from_key.stderr);
    assert_eq!(from_key.stdout_text(), from_cert.stdout_text());
}

#[test]
fn ca_init_refuses_to_overwrite_a_ca_without_force() {
    let dir = TestDir::new("identity-init");
    let ca = init_ca(&dir);
    let root = std::fs::read_to_string(ca.join("root-cert.pem")).expect("root-cert.pem");

    let again = trellis_run(&["ca", "init", "--dir", path(&ca)]);
    assert_eq!(again.status.code(), Some(1), "{}", again.stderr);
    assert!(
        again.stderr.contains("already holds a CA"),
        "{}",
        again.stderr
    );
    assert_eq!(
        std::fs::read_to_string(ca.join("root-cert.pem")).expect("root-cert.pem"),
        root,
        "a refused init must leave the CA alone"
    );

    trellis_ok(&["ca", "init", "--dir", path(&ca), "--force"]);
    assert_ne!(
        std::fs::read_to_string(ca.join("root-cert.pem")).expect("root-cert.pem"),
        root
    );
}

#[test]
fn a_ca_key_readable_by_others_is_refused_with_the_fix() {
    let dir = TestDir::new("identity-mode");
    let ca = init_ca(&dir);
    let key = ca.join("ca-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = trellis_run(&[
        "ca",
        "issue",
        "--dir",
        path(&ca),
        "--id",
        WEB,
        "--out",
        path(&dir.join("web")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "ca-key.pem is readable by others (mode 0644); run chmod 600 {}",
            key.display()
        )),
        "{}",
        out.stderr
    );
    assert!(!dir.join("web").join("key.pem").exists());
}

#[test]
fn cert_inspect_describes_a_good_chain_and_exits_0() {
    let dir = TestDir::new("identity-inspect");
    let ca = init_ca(&dir);
    let web = issue(&dir, &ca, WEB, "web", "24h");
    let bundle = web.file("root-cert.pem");
    let out = trellis_ok(&[
        "cert",
        "inspect",
        &web.chain(),
        "--bundle",
        path(&bundle),
        "--expect-id",
        WEB,
    ]);
    let text = out.stdout_text();
    for want in [
        "chain of 2 certificates",
        &format!("[1] workload certificate {WEB}"),
        &format!("SANs       URI:{WEB}"),
        "key        ECDSA P-256",
        "m left)\n",
        "signed by  [2] (signature verified)",
        "[2] intermediate CA (pathlen 0) CN=Trellis Intermediate CA",
        "a root of the trust bundle (signature verified)",
        "the chain verifies",
        &format!("identity {WEB}: as expected"),
        "result: ok",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn cert_inspect_exits_1_for_an_unknown_authority_or_a_wrong_identity() {
    let dir = TestDir::new("identity-inspect-fail");
    let ca = init_ca(&dir);
    let web = issue(&dir, &ca, WEB, "web", "24h");
    let other = dir.join("other");
    trellis_ok(&["ca", "init", "--dir", path(&other)]);
    let other_bundle = other.join("root-cert.pem");

    let out = trellis_run(&[
        "cert",
        "inspect",
        &web.chain(),
        "--bundle",
        path(&other_bundle),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("certificate signed by unknown authority (issuer CN=Trellis Root CA "),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("; the trust bundle holds CN=Trellis Root CA "),
        "{}",
        out.stderr
    );
    assert!(out.stdout_text().contains("the chain does NOT verify"));

    let out = trellis_run(&["cert", "inspect", &web.chain(), "--expect-id", DB]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("identity {WEB} is not the expected {DB}")),
        "{}",
        out.stderr
    );
}

#[test]
fn cert_inspect_exits_1_once_a_certificate_has_expired() {
    let dir = TestDir::new("identity-expired");
    let ca = init_ca(&dir);
    let web = issue(&dir, &ca, WEB, "web", "1s");
    let chain = web.chain();
    let expired = wait_until(Duration::from_secs(15), || {
        let out = trellis_run(&["cert", "inspect", &chain]);
        (out.status.code() == Some(1)).then_some(out)
    })
    .expect("a 1 s certificate is reported expired within 15 s");
    assert!(
        expired.stderr.contains("certificate expired ") && expired.stderr.contains(" ago (at "),
        "{}",
        expired.stderr
    );
    assert!(
        expired.stdout_text().contains("(EXPIRED "),
        "{}",
        expired.stdout_text()
    );
}

#[test]
fn cert_inspect_exits_2_for_input_that_is_not_certificates() {
    let dir = TestDir::new("identity-bad-input");
    let ca = init_ca(&dir);
    let junk = dir.write(
        "junk.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let missing = dir.join("missing.pem");
    for (file, want) in [
        (ca.join("ca-key.pem"), "holds no certificate"),
        (junk, "is not a valid X.509 certificate"),
        (missing, "cannot read"),
    ] {
        let out = trellis_run(&["cert", "inspect", path(&file)]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            file.display(),
            out.stderr
        );
        assert!(
            out.stderr.contains(want),
            "{}: {}",
            file.display(),
            out.stderr
        );
    }
}

#[test]
fn rotation_keeps_old_and_new_certificates_valid_until_the_old_root_is_retired() {
    let dir = TestDir::new("identity-rotate");
    let ca = init_ca(&dir);
    let before = issue(&dir, &ca, WEB, "before", "24h");
    let rotated = trellis_ok(&["ca", "rotate", "--dir", path(&ca)]);
    assert!(
        rotated
            .stdout_text()
            .contains("root-cert.pem now holds 2 roots"),
        "{}",
        rotated.stdout_text()
    );
    let after = issue(&dir, &ca, DB, "after", "24h");

    let roots = ca.join("root-cert.pem");
    let bundle = trellis_ok(&["cert", "inspect", path(&roots)]).stdout_text();
    assert!(
        bundle.contains("trust bundle of 2 certificates"),
        "{bundle}"
    );
    for issued in [&before, &after] {
        trellis_ok(&["cert", "inspect", &issued.chain(), "--bundle", path(&roots)]);
    }
    if require_tool("openssl") {
        for issued in [&before, &after] {
            let out = openssl(&[
                "verify",
                "-CAfile",
                path(&roots),
                "-untrusted",
                &issued.chain(),
                path(&issued.file("cert.pem")),
            ]);
            assert!(out.status.success(), "{}{}", out.stdout_text(), out.stderr);
        }
    }

    trellis_ok(&["ca", "retire", "--dir", path(&ca)]);
    trellis_ok(&["cert", "inspect", &after.chain(), "--bundle", path(&roots)]);
    let out = trellis_run(&["cert", "inspect", &before.chain(), "--bundle", path(&roots)]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("certificate signed by unknown authority"),
        "{}",
        out.stderr
    );
}
