//! `CONNECT` tunnels through the chain: to a server-first TCP echo, and to a TLS server whose
//! handshake passes through untouched.

use std::io::{Read, Write};
use std::time::Duration;

use trellis_test_support::{
    Chain, Curl, DemoApp, RawConn, ServiceSpec, Target, TlsServer, require_tool,
};

use crate::{log_number, log_str, random_bytes, trellis};

/// The demo app's TCP echo, as service `echo.test:9000` (protocol tcp).
pub(crate) fn echo_chain() -> (DemoApp, Chain) {
    let trellis = trellis();
    let app = DemoApp::options("echo").tcp().start(&trellis);
    let chain = Chain::builder(&trellis)
        .service(ServiceSpec::new(
            "echo",
            9000,
            "tcp",
            Target::Meshed(app.tcp_port()),
        ))
        .start();
    (app, chain)
}

/// Opens `CONNECT echo.test:9000`, reads the banner, echoes `payload` (written from another
/// thread while reading, so large payloads cannot deadlock), closes. Returns the banner.
pub(crate) fn echo_through_tunnel(chain: &Chain, payload: &[u8]) -> String {
    let mut conn = RawConn::connect_tunnel(chain.a.outbound(), "echo.test:9000");
    let banner_len = "trellis-demo echo tcp\r\n".len();
    let banner = conn
        .read_exact(banner_len, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("reading the banner: {e}\n{}", chain.diagnostics()));
    let banner = String::from_utf8_lossy(&banner).into_owned();
    assert_eq!(
        banner, "trellis-demo echo tcp\r\n",
        "server-first banner through the tunnel"
    );

    let mut writer = conn.stream().try_clone().expect("clone the tunnel socket");
    let outgoing = payload.to_vec();
    let sender = std::thread::spawn(move || writer.write_all(&outgoing));
    let echoed = conn
        .read_exact(payload.len(), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("reading the echo: {e}\n{}", chain.diagnostics()));
    sender
        .join()
        .expect("writer thread")
        .expect("writing the payload");
    assert!(
        echoed == payload,
        "echo differs from what was sent ({} bytes)",
        payload.len()
    );
    banner
}

#[test]
fn connect_tunnel_to_server_first_tcp_echo() {
    let (_app, chain) = echo_chain();
    let payload = random_bytes(256 * 1024, 7);
    echo_through_tunnel(&chain, &payload);

    // The connection's access log line, once it has closed.
    let a = chain.a.wait_access_log("the echo.test connection", |l| {
        log_str(l, "destination_service").starts_with("echo.test")
    });
    let banner = "trellis-demo echo tcp\r\n".len() as u64;
    assert_eq!(
        log_number(&a, "bytes_received"),
        Some(payload.len() as u64),
        "bytes from the client: {a}"
    );
    assert_eq!(
        log_number(&a, "bytes_sent"),
        Some(banner + payload.len() as u64),
        "bytes to the client: {a}"
    );
}

#[test]
fn tcp_tunnel_half_close_reaches_the_server() {
    // A client that finishes sending (FIN) still gets everything the server writes after.
    let (_app, chain) = echo_chain();
    let mut conn = RawConn::connect_tunnel(chain.a.outbound(), "echo.test:9000");
    conn.read_exact("trellis-demo echo tcp\r\n".len(), Duration::from_secs(10))
        .unwrap();
    conn.send(b"last words").unwrap();
    conn.shutdown_write();
    let mut got = Vec::new();
    let stream = conn.stream();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let ended = stream.read_to_end(&mut got);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "last words",
        "echo after half-close\n{}",
        chain.diagnostics()
    );
    // The FIN went A → B → app, the app closed, and that came back: the tunnel ended cleanly.
    assert!(
        ended.is_ok(),
        "tunnel still open 10 s after the client's FIN ({ended:?})\n{}",
        chain.diagnostics()
    );
}

#[test]
fn connect_tunnel_passes_tls_through_and_logs_sni() {
    if !require_tool("curl") || !require_tool("openssl") {
        return;
    }
    let trellis = trellis();
    let server = TlsServer::start("tls.test");
    let chain = Chain::builder(&trellis)
        .service(ServiceSpec::new(
            "tls",
            443,
            "tls",
            Target::Meshed(server.port),
        ))
        .start();
    // curl checks the certificate against cert.pem: the proxies must not touch the TLS.
    let out = Curl::new()
        .arg("-p")
        .proxy(&chain.proxy_url())
        .arg("--cacert")
        .arg(&server.cert)
        .arg("https://tls.test:443/")
        .run();
    assert_eq!(
        out.code,
        200,
        "{}{}{}",
        out.describe(),
        chain.diagnostics(),
        server.diagnostics()
    );
    assert!(
        out.text().contains("s_server"),
        "not the s_server page\n{}",
        out.describe()
    );
    let line = chain.a.wait_access_log("the tls.test connection", |l| {
        log_str(l, "destination_service").starts_with("tls.test")
    });
    assert_eq!(
        log_str(&line, "sni"),
        "tls.test",
        "A records the ClientHello's SNI: {line}"
    );
}
