//! Mutual TLS on the mesh transport, with certificates from `trellis ca`: both sides verified,
//! the peer's SPIFFE identity checked against what the config expects (secure naming) and
//! recorded in telemetry; STRICT refuses plaintext, PERMISSIVE takes both.

use std::time::Duration;

use trellis_test_support::{ControlProcess, Curl, DemoApp, ProxyProcess, TestDir, run};

use crate::{log_str, trellis};

const TD: &str = "cluster.local";

fn id(sa: &str) -> String {
    format!("spiffe://{TD}/ns/test/sa/{sa}")
}

/// A CA and certificates for `client` and `web`.
struct Pki {
    dir: TestDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = TestDir::new("pki");
        let t = trellis();
        let ca = dir.join("ca");
        let mut init = t.command();
        init.args(["ca", "init", "--dir"])
            .arg(&ca)
            .args(["--trust-domain", TD]);
        let out = run("ca init", init, Duration::from_secs(30));
        assert!(out.status.success(), "ca init failed: {out:?}");
        for sa in ["client", "web", "other"] {
            let mut issue = t.command();
            issue
                .args(["ca", "issue", "--dir"])
                .arg(&ca)
                .args(["--id", &id(sa), "--out"])
                .arg(dir.join(sa));
            let out = run("ca issue", issue, Duration::from_secs(30));
            assert!(out.status.success(), "ca issue {sa} failed: {out:?}");
        }
        Pki { dir }
    }

    /// The `identity:` section for workload `sa`.
    fn identity(&self, sa: &str) -> String {
        let d = self.dir.path().display();
        format!(
            "identity:
  id: {id}
  bundle: {d}/ca/root-cert.pem
  cert: {d}/{sa}/cert-chain.pem
  key: {d}/{sa}/key.pem
",
            id = id(sa)
        )
    }
}

/// Proxy B beside the app, with an identity and the given mTLS mode.
fn server(pki: &Pki, app: &DemoApp, mode: &str) -> ProxyProcess {
    trellis().proxy(
        "b",
        &format!(
            "node: {{ name: web-0, namespace: test, workload: web }}
listeners: {{ admin: 127.0.0.1:0, mesh: 127.0.0.1:0 }}
mtls: {mode}
app: {{ ports: [ {{ port: {port}, protocol: http }} ] }}
{identity}",
            port = app.http_port(),
            identity = pki.identity("web"),
        ),
    )
}

/// Proxy A beside the client; `identity` is its own (or none), `expect` the identity it
/// requires of B (or none: plaintext).
fn client(
    pki: &Pki,
    app: &DemoApp,
    b: &ProxyProcess,
    identity: Option<&str>,
    expect: Option<&str>,
) -> ProxyProcess {
    let expect = expect
        .map(|sa| format!("\n        identity: {}", id(sa)))
        .unwrap_or_default();
    trellis().proxy(
        "a",
        &format!(
            "node: {{ name: client-0, namespace: test, workload: client }}
listeners: {{ admin: 127.0.0.1:0, outbound: 127.0.0.1:0 }}
services:
  - name: web
    namespace: test
    ports: [ {{ name: http, port: 80, protocol: http }} ]
    endpoints:
      - address: 127.0.0.1
        ports: {{ http: {port} }}
        mesh: {mesh}
        workload: web{expect}
{identity}",
            port = app.http_port(),
            mesh = b.mesh(),
            identity = identity.map(|sa| pki.identity(sa)).unwrap_or_default(),
        ),
    )
}

fn get(a: &ProxyProcess) -> trellis_test_support::CurlOutput {
    Curl::new()
        .proxy(&a.proxy_url())
        .arg("http://web.test/headers")
        .run()
}

#[test]
fn mutual_tls_between_proxies_records_both_identities() {
    if !trellis_test_support::require_tool("curl") {
        return;
    }
    let pki = Pki::new();
    let app = DemoApp::start(&trellis(), "web");
    let b = server(&pki, &app, "strict");
    let a = client(&pki, &app, &b, Some("client"), Some("web"));
    let out = get(&a);
    assert_eq!(
        out.code,
        200,
        "{}{}{}",
        out.describe(),
        a.diagnostics(),
        b.diagnostics()
    );

    // The far side knows who called, from the certificate.
    let line = b.wait_access_log("GET /headers", |l| log_str(l, "path") == "/headers");
    assert_eq!(log_str(&line, "source_principal"), id("client"), "{line}");
    assert_eq!(log_str(&line, "destination_principal"), id("web"), "{line}");
    let line = a.wait_access_log("GET /headers", |l| log_str(l, "path") == "/headers");
    assert_eq!(log_str(&line, "source_principal"), id("client"), "{line}");
    assert_eq!(log_str(&line, "destination_principal"), id("web"), "{line}");

    for (side, p) in [("A", &a), ("B", &b)] {
        let m = p.metrics();
        let n = m.sum(
            "trellis_requests_total",
            &[
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", &id("client")),
            ],
        );
        assert_eq!(
            n,
            1.0,
            "proxy {side}:\n{}",
            m.dump("trellis_requests_total")
        );
    }
}

#[test]
fn a_peer_with_the_wrong_identity_is_refused() {
    if !trellis_test_support::require_tool("curl") {
        return;
    }
    let pki = Pki::new();
    let app = DemoApp::start(&trellis(), "web");
    let b = server(&pki, &app, "strict");
    // A expects `other` behind that address: B's certificate says `web`.
    let a = client(&pki, &app, &b, Some("client"), Some("other"));
    let out = get(&a);
    assert_eq!(out.code, 503, "{}{}", out.describe(), a.diagnostics());
    assert!(
        out.text().contains(&format!(
            "identity {} is not the expected {}",
            id("web"),
            id("other")
        )),
        "{}",
        out.describe()
    );
    let line = a.wait_access_log("refused", |l| log_str(l, "path") == "/headers");
    assert_eq!(log_str(&line, "response_flags"), "UF", "{line}");
}

#[test]
fn strict_refuses_plaintext_and_permissive_takes_both() {
    if !trellis_test_support::require_tool("curl") {
        return;
    }
    let pki = Pki::new();
    let app = DemoApp::start(&trellis(), "web");

    // STRICT: a caller without mTLS gets nothing through.
    let strict = server(&pki, &app, "strict");
    let plain = client(&pki, &app, &strict, None, None);
    let out = get(&plain);
    assert_ne!(out.code, 200, "{}", out.describe());
    let refused = trellis_test_support::wait_until(Duration::from_secs(10), || {
        strict
            .stderr()
            .contains("plaintext from a peer refused")
            .then_some(())
    });
    assert!(refused.is_some(), "{}", strict.diagnostics());

    // PERMISSIVE: plaintext and mTLS callers both reach the app.
    let permissive = server(&pki, &app, "permissive");
    let plain = client(&pki, &app, &permissive, None, None);
    let out = get(&plain);
    assert_eq!(
        out.code,
        200,
        "{}{}",
        out.describe(),
        permissive.diagnostics()
    );
    let secure = client(&pki, &app, &permissive, Some("client"), Some("web"));
    let out = get(&secure);
    assert_eq!(
        out.code,
        200,
        "{}{}",
        out.describe(),
        permissive.diagnostics()
    );
    let m = permissive.metrics();
    assert_eq!(
        m.sum(
            "trellis_requests_total",
            &[("connection_security_policy", "mutual_tls")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "trellis_requests_total",
            &[("connection_security_policy", "none")]
        ),
        1.0
    );
}

/// Proxies that get their certificates from `trellis control`: the key stays in the proxy, the
/// join token proves the first CSR, and the certificate is renewed at half life over mutual
/// TLS while traffic keeps flowing.
#[test]
fn proxies_obtain_and_renew_certificates_from_the_ca() {
    if !trellis_test_support::require_tool("curl") {
        return;
    }
    let t = trellis();
    let dir = TestDir::new("ca-proxies");
    let ca = dir.join("ca");
    let mut init = t.command();
    init.args(["ca", "init", "--dir"])
        .arg(&ca)
        .args(["--trust-domain", TD]);
    assert!(
        run("ca init", init, Duration::from_secs(30))
            .status
            .success()
    );
    let control = ControlProcess::start(&t, &ca, &["--cert-ttl", "12s", "--max-cert-ttl", "1h"]);
    let bundle = ca.join("root-cert.pem");
    let identity = |sa: &str| {
        let token = dir.write(
            &format!("{sa}.token"),
            ControlProcess::token(&t, &ca, &id(sa), "10m"),
        );
        format!(
            "identity:
  id: {id}
  bundle: {bundle}
  ca: {grpc}
  join_token_file: {token}
  cert_ttl: 12s
",
            id = id(sa),
            bundle = bundle.display(),
            grpc = control.grpc(),
            token = token.display(),
        )
    };
    let app = DemoApp::start(&t, "web");
    let b = t.proxy(
        "b",
        &format!(
            "node: {{ name: web-0, namespace: test, workload: web }}
listeners: {{ admin: 127.0.0.1:0, mesh: 127.0.0.1:0 }}
mtls: strict
app: {{ ports: [ {{ port: {port}, protocol: http }} ] }}
{identity}",
            port = app.http_port(),
            identity = identity("web"),
        ),
    );
    let a = t.proxy(
        "a",
        &format!(
            "node: {{ name: client-0, namespace: test, workload: client }}
listeners: {{ admin: 127.0.0.1:0, outbound: 127.0.0.1:0 }}
services:
  - name: web
    namespace: test
    ports: [ {{ name: http, port: 80, protocol: http }} ]
    endpoints:
      - address: 127.0.0.1
        ports: {{ http: {port} }}
        mesh: {mesh}
        workload: web
        identity: {web}
{identity}",
            port = app.http_port(),
            mesh = b.mesh(),
            web = id("web"),
            identity = identity("client"),
        ),
    );
    let out = get(&a);
    assert_eq!(
        out.code,
        200,
        "{}{}{}",
        out.describe(),
        a.diagnostics(),
        b.diagnostics()
    );
    let line = b.wait_access_log("first GET", |l| log_str(l, "path") == "/headers");
    assert_eq!(log_str(&line, "source_principal"), id("client"), "{line}");

    // Half of 12 s (± jitter) later both proxies have renewed; traffic keeps flowing.
    for p in [&a, &b] {
        let renewed = trellis_test_support::wait_until(Duration::from_secs(20), || {
            p.stderr().contains("certificate renewed").then_some(())
        });
        assert!(renewed.is_some(), "no renewal:\n{}", p.diagnostics());
    }
    let out = get(&a);
    assert_eq!(
        out.code,
        200,
        "{}{}{}",
        out.describe(),
        a.diagnostics(),
        b.diagnostics()
    );
    // The key never left the proxies: the CA saw CSRs only, and nothing was written beside the token.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    assert!(!names.iter().any(|n| n.contains("key")), "{names:?}");
}
