//! Mutual TLS on the mesh transport, with certificates from `trellis ca`: both sides verified,
//! the peer's SPIFFE identity checked against what the config expects (secure naming) and
//! recorded in telemetry; STRICT refuses plaintext, PERMISSIVE takes both.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use trellis_test_support::{ControlProcess, Curl, DemoApp, ProxyProcess, TestDir, run};

use crate::{log_str, trellis};

const TD: &str = "cluster.local";

pub(crate) fn id(sa: &str) -> String {
    format!("spiffe://{TD}/ns/test/sa/{sa}")
}

/// A CA and certificates for `client`, `web` and `other`.
pub(crate) struct Pki {
    dir: TestDir,
}

impl Pki {
    pub(crate) fn new() -> Pki {
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
    pub(crate) fn identity(&self, sa: &str) -> String {
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
    mesh: SocketAddr,
    identity: Option<&str>,
    expect: Option<&str>,
) -> ProxyProcess {
    client_with(pki, app, mesh, identity, expect, "")
}

/// `client` with more top-level config (`extra`, YAML lines).
fn client_with(
    pki: &Pki,
    app: &DemoApp,
    mesh: SocketAddr,
    identity: Option<&str>,
    expect: Option<&str>,
    extra: &str,
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
{extra}
{identity}",
            port = app.http_port(),
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

/// `get` through A, which must answer 200; on failure, both proxies' logs.
fn get_ok(a: &ProxyProcess, b: &ProxyProcess) {
    let out = get(a);
    assert_eq!(
        out.code,
        200,
        "{}{}{}",
        out.describe(),
        a.diagnostics(),
        b.diagnostics()
    );
}

#[test]
fn mutual_tls_between_proxies_records_both_identities() {
    if !trellis_test_support::require_tool("curl") {
        return;
    }
    let pki = Pki::new();
    let app = DemoApp::start(&trellis(), "web");
    let b = server(&pki, &app, "strict");
    let a = client(&pki, &app, b.mesh(), Some("client"), Some("web"));
    get_ok(&a, &b);

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

/// A TCP relay to `to` that holds each connection's first bytes from the caller for `delay`
/// after it has connected onward: a peer on a busy node, slow to send its ClientHello.
fn slow_relay(to: SocketAddr, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("relay address");
    std::thread::spawn(move || {
        for caller in listener.incoming() {
            let Ok(caller) = caller else { return };
            std::thread::spawn(move || relay(caller, to, delay));
        }
    });
    addr
}

fn relay(caller: TcpStream, to: SocketAddr, delay: Duration) {
    let Ok(server) = TcpStream::connect(to) else {
        return;
    };
    let (Ok(mut caller_r), Ok(mut server_w)) = (caller.try_clone(), server.try_clone()) else {
        return;
    };
    let (mut server_r, mut caller_w) = (server, caller);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_r, &mut caller_w);
        let _ = caller_w.shutdown(Shutdown::Write);
    });
    let mut first = [0u8; 16 * 1024];
    let Ok(n) = caller_r.read(&mut first) else {
        return;
    };
    std::thread::sleep(delay);
    if server_w.write_all(&first[..n]).is_ok() {
        let _ = std::io::copy(&mut caller_r, &mut server_w);
    }
    let _ = server_w.shutdown(Shutdown::Write);
}

/// The mesh port waits for a slow peer's handshake as long as for any request's headers:
/// only proxies call it, and they speak first, so the app ports' short protocol-detection
/// timeout (200 ms) does not apply. It once did, and a peer on a loaded machine that took
/// longer than that to send its ClientHello was taken for opaque TCP and closed mid-handshake.
#[test]
fn a_peer_slow_to_send_its_client_hello_is_still_served() {
    if !trellis_test_support::require_tool("curl") {
        return;
    }
    let pki = Pki::new();
    let app = DemoApp::start(&trellis(), "web");
    let b = server(&pki, &app, "strict");
    let late = slow_relay(b.mesh(), Duration::from_millis(600));
    // A's connect timeout (1 s by default) covers the handshake: the held-back ClientHello
    // must not run into it on a loaded machine.
    let a = client_with(
        &pki,
        &app,
        late,
        Some("client"),
        Some("web"),
        "timeouts: { connect: 10s }",
    );
    get_ok(&a, &b);
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
    let a = client(&pki, &app, b.mesh(), Some("client"), Some("other"));
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
    let plain = client(&pki, &app, strict.mesh(), None, None);
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
    let plain = client(&pki, &app, permissive.mesh(), None, None);
    let out = get(&plain);
    assert_eq!(
        out.code,
        200,
        "{}{}",
        out.describe(),
        permissive.diagnostics()
    );
    let secure = client(&pki, &app, permissive.mesh(), Some("client"), Some("web"));
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
    get_ok(&a, &b);
    let line = b.wait_access_log("first GET", |l| log_str(l, "path") == "/headers");
    assert_eq!(log_str(&line, "source_principal"), id("client"), "{line}");

    // A steady stream of requests while, half of 12 s (± jitter) later, both proxies renew.
    let outbound = a.outbound();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = trellis_test_support::http_request(
                    outbound,
                    "GET",
                    "http://web.test/status/200",
                    &[],
                    b"",
                );
                if r.status == 200 {
                    ok += 1
                } else {
                    failed.push(r.status)
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
    };
    for p in [&a, &b] {
        let renewed = trellis_test_support::wait_until(Duration::from_secs(20), || {
            p.stderr().contains("certificate renewed").then_some(())
        });
        assert!(renewed.is_some(), "no renewal:\n{}", p.diagnostics());
    }
    // Keep going a moment past the renewals, then stop.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = stream.join().expect("request thread");
    assert!(
        failed.is_empty(),
        "{} requests failed during renewal: {failed:?}",
        failed.len()
    );
    assert!(ok > 50, "only {ok} requests ran during the renewal window");
    get_ok(&a, &b);
    // The key never left the proxies: the CA saw CSRs only, and nothing was written beside the token.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    assert!(!names.iter().any(|n| n.contains("key")), "{names:?}");
}

/// openssl, the tool operators trust, against a STRICT mesh port: without a client
/// certificate, with one from another CA, and with an expired one, the handshake fails and the
/// proxy logs why in plain words; with a good one it succeeds.
#[test]
fn openssl_s_client_against_a_strict_port() {
    if !trellis_test_support::require_tool("openssl") {
        return;
    }
    let pki = Pki::new();
    let t = trellis();
    let d = pki.dir.path().to_path_buf();
    // Another CA, and a certificate from ours that expires in 2 s.
    let mut init = t.command();
    init.args(["ca", "init", "--dir"]).arg(d.join("foreign-ca"));
    assert!(
        run("ca init", init, Duration::from_secs(30))
            .status
            .success()
    );
    let issue = |ca: &str, sa: &str, out: &str, ttl: &str| {
        let mut c = t.command();
        c.args(["ca", "issue", "--dir"])
            .arg(d.join(ca))
            .args(["--id", &id(sa), "--ttl", ttl, "--out"])
            .arg(d.join(out));
        assert!(run("ca issue", c, Duration::from_secs(30)).status.success());
    };
    issue("foreign-ca", "client", "foreign", "1h");
    issue("ca", "client", "short", "2s");
    let app = DemoApp::start(&t, "web");
    let b = server(&pki, &app, "strict");
    let mesh = b.mesh().to_string();

    let s_client = |cert: Option<&str>| -> String {
        let mut c = std::process::Command::new("openssl");
        c.args([
            "s_client", "-ign_eof", "-connect", &mesh, "-alpn", "h2", "-CAfile",
        ])
        .arg(d.join("ca/root-cert.pem"));
        if let Some(dir) = cert {
            c.arg("-cert")
                .arg(d.join(dir).join("cert.pem"))
                .arg("-cert_chain")
                .arg(d.join(dir).join("cert-chain.pem"))
                .arg("-key")
                .arg(d.join(dir).join("key.pem"));
        }
        let out = trellis_test_support::run_with_input(
            "openssl s_client",
            c,
            b"x".to_vec(),
            Duration::from_secs(20),
        );
        format!("{}{}", out.stdout_text(), out.stderr)
    };
    // The server's alert, or the reset that can overtake it when the client had sent data.
    let refused = |out: &str| out.contains("alert") || out.contains("unexpected eof");
    let logged = |reason: &str| {
        trellis_test_support::wait_until(Duration::from_secs(10), || {
            b.stderr().contains(reason).then_some(())
        })
        .is_some()
    };

    let out = s_client(None);
    assert!(refused(&out), "{out}");
    assert!(logged("peer sent no certificates"), "{}", b.diagnostics());

    let out = s_client(Some("foreign"));
    assert!(refused(&out), "{out}");
    assert!(
        logged("peer certificate signed by unknown authority"),
        "{}",
        b.diagnostics()
    );

    let out = s_client(Some("client"));
    assert!(
        out.contains("Verification: OK") && !out.contains("alert"),
        "{out}"
    );

    // Present the 2 s certificate until it has expired (certificate times have one-second
    // resolution, so openssl and the proxy may disagree for a moment at the boundary).
    let refused_expired = trellis_test_support::wait_until(Duration::from_secs(15), || {
        let out = s_client(Some("short"));
        (refused(&out) && b.stderr().contains("peer certificate expired")).then_some(out)
    });
    assert!(refused_expired.is_some(), "{}", b.diagnostics());
}

/// After `trellis ca rotate`, the bundle holds the old and the new root: a workload with a
/// certificate from the old chain and one with a certificate from the new chain still talk.
#[test]
fn root_rotation_keeps_traffic_flowing() {
    if !trellis_test_support::require_tool("curl") {
        return;
    }
    let pki = Pki::new(); // client, web, other: issued under the first root
    let t = trellis();
    let d = pki.dir.path();
    let mut rotate = t.command();
    rotate.args(["ca", "rotate", "--dir"]).arg(d.join("ca"));
    let out = run("ca rotate", rotate, Duration::from_secs(30));
    assert!(out.status.success(), "{out:?}");
    // web gets a certificate from the new chain.
    let mut issue = t.command();
    issue
        .args(["ca", "issue", "--force", "--dir"])
        .arg(d.join("ca"))
        .args(["--id", &id("web"), "--out"])
        .arg(d.join("web"));
    assert!(
        run("ca issue", issue, Duration::from_secs(30))
            .status
            .success()
    );
    let bundle = std::fs::read_to_string(d.join("ca/root-cert.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{bundle}");

    let app = DemoApp::start(&t, "web");
    let b = server(&pki, &app, "strict"); // new chain, both roots
    let a = client(&pki, &app, b.mesh(), Some("client"), Some("web")); // old chain, both roots
    get_ok(&a, &b);
}
