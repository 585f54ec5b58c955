//! Transparent capture: an unmodified client inside a network namespace calls a service's
//! virtual address; iptables REDIRECTs the connection to the proxy, which reads the original
//! destination (`SO_ORIGINAL_DST`) and routes by it. Root only (CI runs as root); elsewhere the
//! tests say they skipped.
//!
//! Virtual addresses are in 127.0.0.0/8 (inside the namespace's own loopback), so nothing
//! here can reach any other host.

use std::time::Duration;

use serde_json::Value;
use trellis_test_support::{DemoApp, NetNs, ProxyProcess, run};

use crate::{log_str, trellis};

const WEB_VIP: &str = "127.0.10.10";
const APP_VIP: &str = "127.0.20.20";

/// App, proxy B (mesh + inbound capture) and proxy A (transparent outbound) in one namespace,
/// with iptables sending the service VIP to A and the app VIP to B's inbound capture.
struct Pod {
    app: DemoApp,
    b: ProxyProcess,
    a: ProxyProcess,
    ns: NetNs,
}

fn pod(label: &str) -> Option<Pod> {
    let ns = NetNs::create(label)?;
    let t = trellis().in_netns(&ns);
    let app = DemoApp::options("web").tcp().start(&t);
    let (http, tcp) = (app.http_port(), app.tcp_port());
    let b = t.proxy(
        "b",
        &format!(
            "node: {{ name: web-0, namespace: test, workload: web }}
listeners: {{ admin: 127.0.0.1:0, mesh: 127.0.0.1:0, inbound: 127.0.0.1:0 }}
app:
  address: 127.0.0.1
  ports: [ {{ port: {http}, protocol: http }}, {{ port: {tcp}, protocol: tcp }} ]
"
        ),
    );
    let mesh = b.mesh();
    let a = t.proxy(
        "a",
        &format!(
            "node: {{ name: client-0, namespace: test, workload: client }}
listeners: {{ admin: 127.0.0.1:0, outbound_transparent: 127.0.0.1:0 }}
timeouts: {{ detect: 300ms }}
services:
  - name: web
    namespace: test
    addresses: [ {WEB_VIP} ]
    ports:
      - {{ name: http, port: 80, protocol: http }}
      - {{ name: echo, port: 9000, protocol: tcp }}
      - {{ name: banner, port: 9001, protocol: http }}
    endpoints:
      - address: 127.0.0.1
        ports: {{ http: {http}, echo: {tcp}, banner: {tcp} }}
        mesh: {mesh}
        workload: web
"
        ),
    );
    let capture = |p: &ProxyProcess, listener: Option<std::net::SocketAddr>| {
        listener
            .unwrap_or_else(|| panic!("{} has no capture listener", p.name()))
            .port()
            .to_string()
    };
    let a_port = capture(&a, a.addrs().outbound_transparent);
    let b_port = capture(&b, b.addrs().inbound);
    ns.iptables(&[
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        WEB_VIP,
        "-j",
        "REDIRECT",
        "--to-ports",
        &a_port,
    ]);
    ns.iptables(&[
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        APP_VIP,
        "-j",
        "REDIRECT",
        "--to-ports",
        &b_port,
    ]);
    Some(Pod { app, b, a, ns })
}

impl Pod {
    fn diagnostics(&self) -> String {
        format!(
            "{}{}{}",
            self.a.diagnostics(),
            self.b.diagnostics(),
            self.app.diagnostics()
        )
    }
}

/// Connect to `addr` inside the namespace, optionally send `send`, and return what the server
/// said within `wait` (a tiny Python client: the test process itself is outside the namespace).
fn tcp_exchange(
    ns: &NetNs,
    addr: &str,
    port: u16,
    send: &str,
    wait: Duration,
) -> (String, Duration) {
    let script = format!(
        "import socket,sys,time\n\
         s=socket.create_connection(('{addr}',{port}),timeout=5)\n\
         t=time.monotonic()\n\
         out=b''\n\
         s.settimeout({wait})\n\
         try:\n  out+=s.recv(4096)\nexcept socket.timeout: pass\n\
         first=time.monotonic()-t\n\
         data={send:?}.encode()\n\
         if data:\n  s.sendall(data)\n  s.settimeout(2)\n  got=b''\n  \
         while len(got)<len(data):\n    c=s.recv(4096)\n    if not c: break\n    got+=c\n  out+=got\n\
         sys.stdout.write(repr(first)+'\\n'+out.decode(errors='replace'))\n",
        wait = wait.as_secs_f64()
    );
    let out = run(
        "python3 client",
        ns.exec("python3", &["-c", &script]),
        Duration::from_secs(15),
    );
    let text = out.stdout_text();
    let (first, rest) = text.split_once('\n').unwrap_or(("0", ""));
    let first: f64 = first.trim().parse().unwrap_or(f64::NAN);
    (rest.to_owned(), Duration::from_secs_f64(first.max(0.0)))
}

#[test]
fn unmodified_http_client_is_captured_and_routed_by_original_destination() {
    let Some(pod) = pod("http") else { return };
    if !trellis_test_support::require_tool("curl") {
        return;
    }
    let out = run(
        "curl",
        pod.ns
            .exec("curl", &["-s", "-m", "10", &format!("http://{WEB_VIP}/")]),
        Duration::from_secs(15),
    );
    let body: Value = serde_json::from_str(&out.stdout_text())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}\n{}", pod.diagnostics()));
    assert_eq!(body["service"], "web", "{}", pod.diagnostics());
    assert_eq!(body["protocol"], "HTTP/1.1", "{}", pod.diagnostics());
    let line = pod
        .a
        .wait_access_log("captured GET /", |l| log_str(l, "path") == "/");
    assert_eq!(
        log_str(&line, "destination_service"),
        "web.test.svc.cluster.local"
    );
    assert_eq!(log_str(&line, "upstream_host"), pod.b.mesh().to_string());
}

#[test]
fn captured_tcp_port_skips_detection_and_server_first_protocol_is_not_stalled() {
    let Some(pod) = pod("tcp") else { return };
    if !trellis_test_support::require_tool("python3") {
        return;
    }
    // Declared `tcp`: no detection, the banner arrives at once; then echo.
    let (said, first) = tcp_exchange(&pod.ns, WEB_VIP, 9000, "ping\n", Duration::from_secs(3));
    assert!(
        said.starts_with("trellis-demo web tcp\r\n"),
        "{said:?}\n{}",
        pod.diagnostics()
    );
    assert!(said.ends_with("ping\n"), "{said:?}");
    assert!(
        first < Duration::from_millis(250),
        "banner took {first:?} on a tcp port"
    );

    // Declared `http` but the client waits for the server (MySQL, SMTP): detection gives up
    // after `timeouts.detect` (300ms) and relays, so the banner still arrives.
    let (said, first) = tcp_exchange(&pod.ns, WEB_VIP, 9001, "", Duration::from_secs(3));
    assert!(
        said.starts_with("trellis-demo web tcp\r\n"),
        "{said:?}\n{}",
        pod.diagnostics()
    );
    assert!(first < Duration::from_secs(2), "banner took {first:?}");
}

#[test]
fn inbound_capture_serves_http_from_clients_outside_the_mesh() {
    let Some(pod) = pod("inbound") else { return };
    if !trellis_test_support::require_tool("curl") {
        return;
    }
    let url = format!("http://{APP_VIP}:{}/headers", pod.app.http_port());
    let out = run(
        "curl",
        pod.ns.exec("curl", &["-s", "-m", "10", &url]),
        Duration::from_secs(15),
    );
    let body: Value = serde_json::from_str(&out.stdout_text())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}\n{}", pod.diagnostics()));
    let headers = &body["headers"];
    assert!(headers["x-request-id"].is_string(), "{body}");
    assert_eq!(headers["x-forwarded-proto"], "http", "{body}");
    let line = pod.b.wait_access_log("captured inbound GET", |l| {
        log_str(l, "path") == "/headers" && log_str(l, "kind") == "http"
    });
    assert_eq!(log_str(&line, "reporter"), "destination");
    // TCP to the app's declared tcp port is relayed.
    let (said, _) = tcp_exchange(
        &pod.ns,
        APP_VIP,
        pod.app.tcp_port(),
        "hi\n",
        Duration::from_secs(3),
    );
    assert!(
        said.starts_with("trellis-demo web tcp\r\n") && said.ends_with("hi\n"),
        "{said:?}"
    );
}
