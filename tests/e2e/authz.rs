//! Authorization policies on the inbound side, with real proxies and mutual TLS: the peer's
//! SPIFFE ID from its certificate decides; a denied request is answered 403
//! `RBAC: access denied` and recorded so, a denied tunnel never reaches the app.

use std::time::Duration;

use trellis_test_support::{Curl, CurlOutput, DemoApp, ProxyProcess, RawConn, require_tool};

use crate::mtls::{Pki, id};
use crate::{log_code, log_str, trellis};

/// Proxy B beside `app` (its HTTP port, and its TCP echo when it has one), running as `web`
/// with the given `authorization` section.
fn server(pki: &Pki, app: &DemoApp, tcp: Option<u16>, authorization: &str) -> ProxyProcess {
    let tcp_port = tcp
        .map(|port| format!(", {{ port: {port}, protocol: tcp }}"))
        .unwrap_or_default();
    trellis().proxy(
        "b",
        &format!(
            "node: {{ name: web-0, namespace: test, workload: web }}
listeners: {{ admin: 127.0.0.1:0, mesh: 127.0.0.1:0 }}
app: {{ ports: [ {{ port: {http}, protocol: http }}{tcp_port} ] }}
{identity}{authorization}",
            http = app.http_port(),
            identity = pki.identity("web"),
        ),
    )
}

/// Proxy A running as `sa`, calling `web.test:80` (HTTP) and `echo.test:9000` (TCP, when
/// the app has one) on B over mutual TLS.
fn client(pki: &Pki, app: &DemoApp, b: &ProxyProcess, tcp: Option<u16>, sa: &str) -> ProxyProcess {
    let echo = tcp
        .map(|port| {
            format!(
                "  - name: echo
    namespace: test
    ports: [ {{ name: tcp, port: 9000, protocol: tcp }} ]
    endpoints:
      - {{ address: 127.0.0.1, ports: {{ tcp: {port} }}, mesh: {mesh}, workload: web, identity: {web} }}
",
                mesh = b.mesh(),
                web = id("web"),
            )
        })
        .unwrap_or_default();
    trellis().proxy(
        &format!("a-{sa}"),
        &format!(
            "node: {{ name: {sa}-0, namespace: test, workload: {sa} }}
listeners: {{ admin: 127.0.0.1:0, outbound: 127.0.0.1:0 }}
services:
  - name: web
    namespace: test
    ports: [ {{ name: http, port: 80, protocol: http }} ]
    endpoints:
      - {{ address: 127.0.0.1, ports: {{ http: {http} }}, mesh: {mesh}, workload: web, identity: {web} }}
{echo}{identity}",
            http = app.http_port(),
            mesh = b.mesh(),
            web = id("web"),
            identity = pki.identity(sa),
        ),
    )
}

fn get(a: &ProxyProcess, path: &str) -> CurlOutput {
    Curl::new()
        .proxy(&a.proxy_url())
        .arg(format!("http://web.test{path}"))
        .run()
}

#[test]
fn an_allow_by_principal_and_a_deny_by_path() {
    if !require_tool("curl") {
        return;
    }
    let pki = Pki::new();
    let app = DemoApp::start(&trellis(), "web");
    let b = server(
        &pki,
        &app,
        None,
        &format!(
            "authorization:
  policies:
    - name: test/allow-client
      action: allow
      rules: [ {{ from: [ {{ principals: [ \"{client}\" ] }} ] }} ]
    - name: test/deny-admin
      action: deny
      rules: [ {{ to: [ {{ paths: [ /admin, \"/admin/*\" ] }} ] }} ]
",
            client = id("client"),
        ),
    );
    let allowed = client(&pki, &app, &b, None, "client");
    let other = client(&pki, &app, &b, None, "other");
    let context = || format!("{}{}", b.diagnostics(), allowed.diagnostics());

    // The allowed principal reaches the app, but for the denied path.
    let out = get(&allowed, "/headers");
    assert_eq!(out.code, 200, "{}{}", out.describe(), context());
    let out = get(&allowed, "/admin/users");
    assert_eq!(out.code, 403, "{}{}", out.describe(), context());
    assert_eq!(out.text(), "RBAC: access denied", "{}", out.describe());

    // Another identity is refused everywhere.
    let out = get(&other, "/headers");
    assert_eq!(out.code, 403, "{}{}", out.describe(), other.diagnostics());
    assert_eq!(out.text(), "RBAC: access denied", "{}", out.describe());

    // B's access log and metrics say who was refused, and why.
    let line = b.wait_access_log("the denied /admin/users", |l| {
        log_str(l, "path") == "/admin/users"
    });
    assert_eq!(log_code(&line), Some(403), "{line}");
    assert_eq!(log_str(&line, "response_flags"), "RBAC", "{line}");
    assert_eq!(log_str(&line, "source_principal"), id("client"), "{line}");
    let line = b.wait_access_log("other's /headers", |l| {
        log_str(l, "source_principal") == id("other")
    });
    assert_eq!(log_code(&line), Some(403), "{line}");
    assert_eq!(log_str(&line, "response_flags"), "RBAC", "{line}");
    let m = b.metrics();
    let denied = |principal: &str| {
        m.sum(
            "trellis_requests_total",
            &[
                ("response_code", "403"),
                ("response_flags", "RBAC"),
                ("source_principal", principal),
            ],
        )
    };
    assert_eq!(
        (denied(&id("client")), denied(&id("other"))),
        (1.0, 1.0),
        "{}",
        m.dump("trellis_requests_total")
    );
    assert_eq!(
        m.sum(
            "trellis_requests_total",
            &[
                ("response_code", "200"),
                ("source_principal", &id("client"))
            ]
        ),
        1.0,
        "{}",
        m.dump("trellis_requests_total")
    );
}

#[test]
fn a_tcp_port_relays_for_the_allowed_peer_only() {
    let pki = Pki::new();
    let app = DemoApp::options("web").tcp().start(&trellis());
    let tcp = app.tcp_port();
    let b = server(
        &pki,
        &app,
        Some(tcp),
        &format!(
            "authorization:
  policies:
    - name: test/allow-client-tcp
      action: allow
      rules: [ {{ from: [ {{ principals: [ \"{client}\" ] }} ], to: [ {{ ports: [ {tcp} ] }} ] }} ]
",
            client = id("client"),
        ),
    );
    let allowed = client(&pki, &app, &b, Some(tcp), "client");
    let other = client(&pki, &app, &b, Some(tcp), "other");

    // The allowed peer: a tunnel, the server-first banner, an echo.
    let mut conn = RawConn::connect_tunnel(allowed.outbound(), "echo.test:9000");
    let banner = "trellis-demo web tcp\r\n";
    let got = conn
        .read_exact(banner.len(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("banner: {e}\n{}{}", b.diagnostics(), allowed.diagnostics()));
    assert_eq!(String::from_utf8_lossy(&got), banner);
    conn.send(b"hello").expect("send");
    let echoed = conn.read_exact(5, Duration::from_secs(10)).expect("echo");
    assert_eq!(echoed, b"hello");
    drop(conn);

    // The other peer: B refuses the tunnel before connecting to the app, so A refuses the
    // CONNECT and no byte of the app's ever arrives.
    let mut conn = RawConn::connect(other.outbound());
    conn.send(b"CONNECT echo.test:9000 HTTP/1.1\r\nHost: echo.test:9000\r\n\r\n")
        .expect("send CONNECT");
    let head = conn
        .read_head(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("CONNECT answer: {e}\n{}", other.diagnostics()));
    assert_eq!(head.status, 403, "{head:?}\n{}", other.diagnostics());
    let line = b.wait_access_log("the denied tunnel", |l| {
        log_str(l, "source_principal") == id("other")
    });
    assert_eq!(log_str(&line, "method"), "CONNECT", "{line}");
    assert_eq!(log_code(&line), Some(403), "{line}");
    assert_eq!(log_str(&line, "response_flags"), "RBAC", "{line}");
    assert_eq!(
        log_str(&line, "upstream_host"),
        "",
        "never connected: {line}"
    );

    // The allowed tunnel was relayed and counted as TCP; the denied one as a refused request.
    let m = b.metrics_when(|m| m.sum("trellis_tcp_connections_closed_total", &[]) >= 1.0);
    assert_eq!(
        m.sum(
            "trellis_tcp_connections_opened_total",
            &[("source_principal", &id("client"))]
        ),
        1.0,
        "{}",
        m.dump("trellis_tcp")
    );
    assert_eq!(
        m.sum(
            "trellis_tcp_connections_opened_total",
            &[("source_principal", &id("other"))]
        ),
        0.0,
        "{}",
        m.dump("trellis_tcp")
    );
    assert_eq!(
        m.sum(
            "trellis_requests_total",
            &[
                ("response_flags", "RBAC"),
                ("source_principal", &id("other"))
            ]
        ),
        1.0,
        "{}",
        m.dump("trellis_requests_total")
    );
}
