//! A WebSocket echo through the chain (HTTP/1.1 Upgrade carried as a CONNECT-style stream
//! between the proxies).

use std::time::Duration;

use trellis_test_support::{Chain, PyPeer, ServiceSpec, Target, require_python_module, run_python};

use crate::trellis;

const PEER: &str = "tests/peers/ws_peer.py";

/// Runs the echo client through the chain; `extra` are more client arguments.
fn websocket_echo(extra: &[&str]) {
    let server = PyPeer::start(PEER, &["server", "--port", "0"]);
    let chain = Chain::builder(&trellis())
        .service(ServiceSpec::new(
            "ws",
            80,
            "http",
            Target::Meshed(server.port),
        ))
        .start();
    let proxy = chain.proxy_url();
    let mut args = vec!["client", "--url", "ws://ws.test:80/ws", "--proxy", &proxy];
    args.extend_from_slice(extra);
    let out = run_python(PEER, &args, Duration::from_secs(60));
    assert!(
        out.status.success() && out.stdout_text().contains("OK"),
        "websocket client failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}{}",
        out.status,
        out.stdout_text(),
        out.stderr,
        chain.diagnostics(),
        server.diagnostics()
    );
}

#[test]
fn websocket_echo_through_chain() {
    // The upgrade in absolute form, as an HTTP_PROXY-aware client sends it.
    if require_python_module("websockets") {
        websocket_echo(&[]);
    }
}

#[test]
fn websocket_echo_with_origin_form_upgrade() {
    // `GET /ws` with `Host: ws.test:80`, routed by the Host header.
    if require_python_module("websockets") {
        websocket_echo(&["--request-target", "origin"]);
    }
}
