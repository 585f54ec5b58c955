//! Bad input gets a clear answer, the failure is labelled in the access log, and the proxy
//! keeps serving everyone else. Requests are written byte by byte where curl would refuse to
//! send them.

use std::time::Duration;

use tokio::time::Instant;
use trellis_test_support::{RawConn, RawResponse, ServiceSpec, Target, free_port, http_request};

use crate::{Web, log_code, log_str, random_bytes, web_chain_with};

/// `web` plus services that fail in known ways, with short header and request timeouts at A:
/// - `refused.test`: an app port behind B where nothing listens;
/// - `refused-direct.test`: a port outside the mesh where nothing listens;
/// - `gone.test`: an app behind a peer proxy that is not running.
fn troubled_chain(outbound_policy: &str) -> Web {
    web_chain_with(|builder| {
        builder
            .service(ServiceSpec::new(
                "refused",
                80,
                "http",
                Target::Meshed(free_port()),
            ))
            .service(ServiceSpec::new(
                "refused-direct",
                80,
                "http",
                Target::Direct(free_port()),
            ))
            .service(ServiceSpec::new(
                "gone",
                80,
                "http",
                Target::DeadPeer(free_port()),
            ))
            .a_timeout("header", "1s")
            .a_timeout("request", "1s")
            .outbound_policy(outbound_policy)
    })
}

/// A good request still works.
fn assert_still_serves(web: &Web) {
    let response = http_request(
        web.chain.a.outbound(),
        "GET",
        "http://web.test/status/200",
        &[],
        b"",
    );
    assert_eq!(
        response.status,
        200,
        "the proxy stopped serving good requests\n{}",
        web.chain.diagnostics()
    );
}

fn send_and_read(web: &Web, bytes: &[u8]) -> (RawConn, RawResponse) {
    let mut conn = RawConn::connect(web.chain.a.outbound());
    // The proxy may answer (and close) before reading everything: a failed write is fine.
    let _ = conn.send(bytes);
    let response = conn
        .read_response(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no response: {e}\n{}", web.chain.diagnostics()));
    (conn, response)
}

/// A request with `count` headers of 1000-byte values: a header section of about `count` KB.
fn request_with_big_headers(count: usize) -> Vec<u8> {
    let mut request = String::from(
        "GET http://web.test/headers HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n",
    );
    let value = "v".repeat(1000);
    for i in 0..count {
        request.push_str(&format!("x-big-{i:03}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

#[test]
fn malformed_request_line_gets_400_and_proxy_keeps_serving() {
    let web = troubled_chain("allow_any");
    for bad in [
        &b"GET /a b c HTTP/1.1\r\nHost: web.test\r\n\r\n"[..],
        &b"GET http://web.test/ HTTP/1.1 trailing-junk\r\nHost: web.test\r\n\r\n"[..],
    ] {
        let (_, response) = send_and_read(&web, bad);
        assert_eq!(
            response.status,
            400,
            "for {:?}: {}\n{}",
            String::from_utf8_lossy(bad),
            response.text(),
            web.chain.diagnostics()
        );
    }
    assert_still_serves(&web);
}

#[test]
fn header_section_over_64kib_gets_431() {
    let web = troubled_chain("allow_any");
    let request = request_with_big_headers(70);
    assert!(request.len() > 64 * 1024);
    let (_, response) = send_and_read(&web, &request);
    assert_eq!(
        response.status,
        431,
        "{}\n{}",
        response.text(),
        web.chain.diagnostics()
    );
    assert_still_serves(&web);
}

#[test]
fn header_section_under_64kib_crosses_the_mesh() {
    // 48 headers of 1000 bytes: well under the 64 KiB limit, so it must reach the app, also
    // across the HTTP/2 hop between the proxies (whose header list limit must allow it).
    let web = troubled_chain("allow_any");
    let request = request_with_big_headers(48);
    assert!(request.len() < 60 * 1024);
    let (_, response) = send_and_read(&web, &request);
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        web.chain.diagnostics()
    );
    let json = response.json();
    let headers = crate::headers_of(&json);
    assert_eq!(
        crate::app_header(&headers, "x-big-047").map(|v| v.len()),
        Some(1000),
        "the last big header reached the app"
    );
}

#[test]
fn content_length_with_transfer_encoding_gets_400_and_close() {
    let web = troubled_chain("allow_any");
    // The classic smuggling shape: a second request hidden after the chunked body.
    let request = b"POST http://web.test/echo HTTP/1.1\r\nHost: web.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET http://web.test/status/418 HTTP/1.1\r\nHost: web.test\r\n\r\n";
    let (mut conn, response) = send_and_read(&web, request);
    assert_eq!(
        response.status,
        400,
        "{}\n{}",
        response.text(),
        web.chain.diagnostics()
    );
    // Then the connection ends, and the hidden request is never answered.
    let mut after = Vec::new();
    let closed = loop {
        match conn.read_some(Duration::from_secs(5)) {
            Ok(bytes) if bytes.is_empty() => break true,
            Ok(bytes) => after.extend(bytes),
            Err(e) => break !e.starts_with("timed out"),
        }
    };
    assert!(
        closed,
        "connection still open 5 s after the 400\n{}",
        web.chain.diagnostics()
    );
    let after = String::from_utf8_lossy(&after);
    assert!(
        !after.contains("418"),
        "the smuggled request was answered: {after}"
    );
    assert_still_serves(&web);
}

/// A client that connects ahead of its first request (a pool that pre-connects, a browser's
/// preconnect) is still an HTTP client: on the explicit proxy port, where only client-first
/// protocols arrive, detection waits up to the header timeout rather than the 200 ms after
/// which a captured connection is taken for server-first TCP. Silent past the header timeout,
/// the connection is closed without an answer.
#[test]
fn a_client_that_connects_early_is_served_and_a_silent_one_closed() {
    let web = troubled_chain("allow_any");
    let mut early = RawConn::connect(web.chain.a.outbound());
    let mut silent = RawConn::connect(web.chain.a.outbound());
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(600));
    early
        .send(b"GET http://web.test/status/200 HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let response = early
        .read_response(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no response: {e}\n{}", web.chain.diagnostics()));
    assert_eq!(
        response.status,
        200,
        "a request 600 ms after connecting (detection 200 ms, header timeout 1 s): {}\n{}",
        response.text(),
        web.chain.diagnostics()
    );

    let read = silent.read_some(Duration::from_secs(5));
    let closed_after = started.elapsed();
    assert!(
        matches!(&read, Ok(bytes) if bytes.is_empty())
            || read.as_ref().is_err_and(|e| !e.starts_with("timed out")),
        "a client silent past the header timeout is closed without an answer: {read:?}"
    );
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(5),
        "closed after {closed_after:?} (header timeout 1 s)"
    );
    assert_still_serves(&web);
}

#[test]
fn slowloris_connection_is_closed_after_header_timeout() {
    let web = troubled_chain("allow_any");
    let mut conn = RawConn::connect(web.chain.a.outbound());
    let started = Instant::now();
    conn.send(b"GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\n")
        .unwrap();
    // One more header line every 100 ms, never the blank line that ends the section. The
    // header timeout is 1 s: the proxy must hang up well before 5 s.
    let mut i = 0;
    let closed_after = loop {
        if started.elapsed() > Duration::from_secs(5) {
            break None;
        }
        if conn.send(format!("x-slow-{i}: y\r\n").as_bytes()).is_err() {
            break Some(started.elapsed());
        }
        i += 1;
        match conn.read_some(Duration::from_millis(100)) {
            // EOF, or an answer (408) before closing: either way it is hanging up.
            Ok(_) => break Some(started.elapsed()),
            Err(e) if e.starts_with("timed out") => {}
            Err(_) => break Some(started.elapsed()),
        }
    };
    let closed_after = closed_after.unwrap_or_else(|| {
        panic!(
            "slowloris connection still open after 5 s (header timeout 1 s)\n{}",
            web.chain.diagnostics()
        )
    });
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed after {closed_after:?}, before the 1 s header timeout"
    );
    assert_still_serves(&web);
}

#[test]
fn upstream_refused_behind_peer_gets_503_uf() {
    let web = troubled_chain("allow_any");
    let response = http_request(
        web.chain.a.outbound(),
        "GET",
        "http://refused.test/",
        &[],
        b"",
    );
    assert_eq!(
        response.status,
        503,
        "{}\n{}",
        response.text(),
        web.chain.diagnostics()
    );
    // B is the proxy whose upstream refused.
    let line = web
        .chain
        .b
        .wait_access_log("503 UF for refused.test", |l| log_code(l) == Some(503));
    assert!(
        log_str(&line, "response_flags").contains("UF"),
        "B flags the refused upstream UF: {line}"
    );
    assert_still_serves(&web);
}

#[test]
fn direct_upstream_refused_gets_503_uf() {
    let web = troubled_chain("allow_any");
    let response = http_request(
        web.chain.a.outbound(),
        "GET",
        "http://refused-direct.test/",
        &[],
        b"",
    );
    assert_eq!(
        response.status,
        503,
        "{}\n{}",
        response.text(),
        web.chain.diagnostics()
    );
    let line = web
        .chain
        .a
        .wait_access_log("503 for refused-direct.test", |l| log_code(l) == Some(503));
    assert!(
        log_str(&line, "response_flags").contains("UF"),
        "A flags the refused upstream UF: {line}"
    );
    assert_still_serves(&web);
}

#[test]
fn upstream_slower_than_request_timeout_gets_504_ut() {
    let web = troubled_chain("allow_any");
    let started = Instant::now();
    let response = http_request(
        web.chain.a.outbound(),
        "GET",
        "http://web.test/delay/4000",
        &[],
        b"",
    );
    let elapsed = started.elapsed();
    assert_eq!(
        response.status,
        504,
        "{}\n{}",
        response.text(),
        web.chain.diagnostics()
    );
    assert!(
        elapsed < Duration::from_millis(3500),
        "504 after {elapsed:?}: the 1 s request timeout did not cut it short"
    );
    let line = web
        .chain
        .a
        .wait_access_log("504 for /delay/4000", |l| log_code(l) == Some(504));
    assert!(
        log_str(&line, "response_flags").contains("UT"),
        "A flags the timeout UT: {line}"
    );
    assert_still_serves(&web);
}

#[test]
fn peer_proxy_down_gets_503_uf() {
    let web = troubled_chain("allow_any");
    let response = http_request(web.chain.a.outbound(), "GET", "http://gone.test/", &[], b"");
    assert_eq!(
        response.status,
        503,
        "{}\n{}",
        response.text(),
        web.chain.diagnostics()
    );
    let line = web
        .chain
        .a
        .wait_access_log("503 for gone.test", |l| log_code(l) == Some(503));
    assert!(
        log_str(&line, "response_flags").contains("UF"),
        "A flags the unreachable peer UF: {line}"
    );
    assert_still_serves(&web);
}

#[test]
fn unknown_host_with_registry_only_gets_502_nr() {
    let web = troubled_chain("registry_only");
    let response = http_request(
        web.chain.a.outbound(),
        "GET",
        "http://nowhere.example/",
        &[],
        b"",
    );
    assert_eq!(
        response.status,
        502,
        "{}\n{}",
        response.text(),
        web.chain.diagnostics()
    );
    let line = web
        .chain
        .a
        .wait_access_log("502 for nowhere.example", |l| log_code(l) == Some(502));
    assert!(
        log_str(&line, "response_flags").contains("NR"),
        "A flags no route NR: {line}"
    );
    assert_still_serves(&web);
}

#[test]
fn assorted_garbage_never_breaks_the_proxy() {
    let web = troubled_chain("allow_any");
    let mut inputs: Vec<Vec<u8>> = [
        &b"\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\nBad Header Line\r\n\r\n",
        b"GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\nContent-Length: -1\r\n\r\n",
        b"GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\nContent-Length: 1, 2\r\n\r\nab",
        b"POST http://web.test/echo HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST http://web.test/echo HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: gzip, chunked, identity\r\n\r\n",
        b"GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\nX: \xff\xfe\x00\r\n\r\n",
        b"GET http://[::1 HTTP/1.1\r\n\r\n",
        b"GET http://web.test:99999/ HTTP/1.1\r\nHost: web.test:99999\r\n\r\n",
        b"CONNECT\r\n\r\n",
        b"CONNECT :0 HTTP/1.1\r\n\r\n",
        b"CONNECT web.test HTTP/1.1\r\n\r\n",
        b"CONNECT web.test:99999 HTTP/1.1\r\nHost: web.test:99999\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",
        b"\x16\x03\x01\xff\xff\x01\x00\xff\xfb",
        &[0u8; 100],
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    // HTTP/2 preface, then a frame header announcing a huge HEADERS frame of junk.
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend_from_slice(&[0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00]);
    h2.extend_from_slice(&[0x00, 0x40, 0x00, 0x01, 0x05, 0x00, 0x00, 0x00, 0x01]);
    h2.extend(random_bytes(2048, 11));
    inputs.push(h2);
    inputs.push(random_bytes(4096, 12));
    inputs.push(
        [
            b"GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\n".as_slice(),
            &random_bytes(3000, 13),
        ]
        .concat(),
    );

    let proxy = web.chain.a.outbound();
    let clients: Vec<_> = inputs
        .into_iter()
        .map(|input| {
            std::thread::spawn(move || {
                let mut conn = RawConn::connect(proxy);
                let _ = conn.send(&input);
                conn.shutdown_write();
                // Whatever the answer, just let the connection end (or give up after 3 s).
                let _ = conn.wait_closed(Duration::from_secs(3));
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    assert_still_serves(&web);
    // (ProxyProcess fails the test on drop if either proxy panicked.)
}

#[test]
fn two_host_headers_get_400() {
    let web = troubled_chain("allow_any");
    // h2load with `-H "Host: x"` sends its own `host:` line and then ours: which one is meant?
    let (_, response) = send_and_read(
        &web,
        b"GET / HTTP/1.1\r\nHost: web.test\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        response.status,
        400,
        "{}\n{}",
        response.text(),
        web.chain.diagnostics()
    );
    assert!(
        response.text().contains("more than one Host header"),
        "{}",
        response.text()
    );
    assert_still_serves(&web);
}

#[test]
fn request_to_the_proxys_own_listener_gets_508_not_a_loop() {
    let web = troubled_chain("allow_any");
    // Passthrough to the proxy's own outbound listener would forward the request to itself
    // for ever (each hop adding to X-Forwarded-For): it is refused at once instead.
    for own in [web.chain.a.outbound(), web.chain.a.admin()] {
        let url = format!("http://127.0.0.1:{}/", own.port());
        let response = http_request(web.chain.a.outbound(), "GET", &url, &[], b"");
        assert_eq!(
            response.status,
            508,
            "for {url}: {}\n{}",
            response.text(),
            web.chain.diagnostics()
        );
        assert!(
            response.text().contains("own listener"),
            "{}",
            response.text()
        );
    }
    assert_still_serves(&web);
}
