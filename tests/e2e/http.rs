//! HTTP/1.1 and HTTP/2 requests through the chain: routing, protocol preservation, bodies,
//! 100-continue, header hygiene, request ids, access log lines.

use std::time::Duration;

use trellis_test_support::client::sha256_hex;
use trellis_test_support::{Curl, DemoApp, RawConn, TestDir, http_request, require_tool};

use crate::{
    Problems, app_header, app_header_names, headers_of, log_code, log_number, log_str,
    random_bytes, web_chain,
};

/// Every field the access log promises on an HTTP line, on both sides. (`sni` belongs to TCP
/// lines of TLS tunnels; `tunnel.rs` checks it there.)
const ACCESS_LOG_FIELDS: [&str; 14] = [
    "kind",
    "reporter",
    "request_id",
    "method",
    "authority",
    "path",
    "protocol",
    "response_code",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "duration_ms",
    "upstream_host",
    "destination_service",
];

#[test]
fn http1_get_through_proxy_reaches_app_as_http1_and_is_logged_on_both_sides() {
    if !require_tool("curl") {
        return;
    }
    let web = web_chain();
    let chain = &web.chain;
    let out = Curl::new()
        .proxy(&chain.proxy_url())
        .arg("http://web.test/")
        .run();
    assert_eq!(out.code, 200, "{}{}", out.describe(), chain.diagnostics());
    let json = out.json();
    assert_eq!(json["service"], "web", "{}", out.describe());
    assert_eq!(
        json["protocol"],
        "HTTP/1.1",
        "the app must see the client's HTTP/1.1\n{}",
        out.describe()
    );
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/");
    let request_id = app_header(&json["headers"], "x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id at the app\n{}", out.describe()));

    let a = chain
        .a
        .wait_access_log("GET web.test/", |l| log_str(l, "path") == "/");
    let b = chain
        .b
        .wait_access_log("GET web.test/", |l| log_str(l, "path") == "/");
    let mut problems = Problems::default();
    for (side, line, reporter) in [("A", &a, "source"), ("B", &b, "destination")] {
        problems.eq(
            log_str(line, "reporter"),
            reporter,
            &format!("{side} reporter"),
        );
        problems.eq(log_str(line, "method"), "GET", &format!("{side} method"));
        problems.eq(log_code(line), Some(200), &format!("{side} response_code"));
        problems.eq(
            log_str(line, "request_id"),
            &request_id,
            &format!("{side} request_id (the one the app saw)"),
        );
        problems.eq(
            log_str(line, "authority"),
            "web.test",
            &format!("{side} authority"),
        );
        problems.eq(
            log_str(line, "destination_service"),
            "web.test.svc.cluster.local",
            &format!("{side} destination_service"),
        );
        problems.eq(
            log_str(line, "response_flags"),
            "-",
            &format!("{side} response_flags"),
        );
        // Envoy's meaning: body bytes.
        problems.eq(
            log_number(line, "bytes_sent"),
            Some(out.body.len() as u64),
            &format!("{side} bytes_sent (response body)"),
        );
        problems.eq(
            log_number(line, "bytes_received"),
            Some(0),
            &format!("{side} bytes_received (request body)"),
        );
    }
    problems.assert_none(&format!("A: {a}\nB: {b}"));
}

#[test]
fn access_log_lines_carry_every_documented_field() {
    if !require_tool("curl") {
        return;
    }
    // One stable schema for log pipelines: every documented HTTP field on every HTTP line.
    let web = web_chain();
    let chain = &web.chain;
    let out = Curl::new()
        .proxy(&chain.proxy_url())
        .arg("http://web.test/")
        .run();
    assert_eq!(out.code, 200, "{}{}", out.describe(), chain.diagnostics());
    let a = chain
        .a
        .wait_access_log("GET web.test/", |l| log_str(l, "path") == "/");
    let b = chain
        .b
        .wait_access_log("GET web.test/", |l| log_str(l, "path") == "/");
    let mut problems = Problems::default();
    for (side, line) in [("A", &a), ("B", &b)] {
        let missing: Vec<&str> = ACCESS_LOG_FIELDS
            .iter()
            .copied()
            .filter(|f| line.get(*f).is_none())
            .collect();
        problems.check(missing.is_empty(), || {
            format!("proxy {side} HTTP access log line lacks {missing:?}")
        });
    }
    problems.assert_none(&format!("A: {a}\nB: {b}"));
}

#[test]
fn every_service_name_and_extra_hostname_routes_to_the_service() {
    if !require_tool("curl") {
        return;
    }
    let web = web_chain();
    let proxy = web.chain.proxy_url();
    for host in [
        "web",
        "web.test",
        "web.test.svc",
        "web.test.svc.cluster.local",
        "www.web.example",
        "web.test:80",
    ] {
        let out = Curl::new()
            .proxy(&proxy)
            .arg(format!("http://{host}/"))
            .run();
        assert_eq!(
            out.code,
            200,
            "host {host}\n{}{}",
            out.describe(),
            web.chain.diagnostics()
        );
        assert_eq!(out.json()["service"], "web", "host {host}");
    }
}

#[test]
fn origin_form_request_is_routed_by_host_header() {
    let web = web_chain();
    let mut conn = RawConn::connect(web.chain.a.outbound());
    conn.send(b"GET /headers HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let response = conn.read_response(Duration::from_secs(20)).unwrap();
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        web.chain.diagnostics()
    );
    let json = response.json();
    assert_eq!(
        app_header(&headers_of(&json), "host").as_deref(),
        Some("web.test"),
        "{json}"
    );
}

#[test]
fn chunked_post_is_streamed_to_app_and_echoed_back() {
    if !require_tool("curl") {
        return;
    }
    let web = web_chain();
    let dir = TestDir::new("chunked");
    let body = random_bytes(300 * 1024 + 7, 1);
    let file = dir.write("body.bin", &body);
    let out = Curl::new()
        .proxy(&web.chain.proxy_url())
        .header("Transfer-Encoding", "chunked")
        .header("Content-Type", "application/octet-stream")
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg("http://web.test/echo")
        .run();
    assert_eq!(
        out.code,
        200,
        "{}{}",
        out.describe(),
        web.chain.diagnostics()
    );
    assert_eq!(out.body.len(), body.len(), "echoed length");
    assert!(out.body == body, "echoed body differs from what was sent");
    let a = web
        .chain
        .a
        .wait_access_log("POST /echo", |l| log_str(l, "path") == "/echo");
    assert_eq!(
        log_number(&a, "bytes_received"),
        Some(body.len() as u64),
        "bytes_received = request body bytes: {a}"
    );
    assert_eq!(
        log_number(&a, "bytes_sent"),
        Some(body.len() as u64),
        "bytes_sent = response body bytes: {a}"
    );
}

#[test]
fn expect_100_continue_upload_gets_continue_and_arrives_whole() {
    if !require_tool("curl") {
        return;
    }
    let web = web_chain();
    let dir = TestDir::new("expect");
    let body = random_bytes(2 * 1024 * 1024 + 3, 2);
    let file = dir.write("body.bin", &body);
    // curl waits up to --expect100-timeout for `100 Continue` before sending anyway; with 20 s
    // a quick answer proves the proxies relayed the 100.
    let out = Curl::new()
        .arg("-v")
        .proxy(&web.chain.proxy_url())
        .header("Expect", "100-continue")
        .args(["--expect100-timeout", "20"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg("http://web.test/sha256")
        .run();
    assert_eq!(
        out.code,
        200,
        "{}{}",
        out.describe(),
        web.chain.diagnostics()
    );
    assert!(
        out.stderr.contains("100 Continue"),
        "no 100 Continue reached curl\n{}",
        out.describe()
    );
    assert!(
        out.elapsed < Duration::from_secs(10),
        "upload took {:?}: 100 Continue was not relayed promptly",
        out.elapsed
    );
    let json = out.json();
    assert_eq!(json["bytes"], body.len(), "{json}");
    assert_eq!(json["sha256"], sha256_hex(&body), "{json}");
}

#[test]
fn h2_prior_knowledge_arrives_in_the_ports_declared_protocol() {
    if !require_tool("curl") {
        return;
    }
    let web = web_chain();
    let a = web.chain.a.outbound();
    let out = Curl::new()
        .arg("--http2-prior-knowledge")
        .args([
            "--connect-to",
            &format!("web.test:80:{}:{}", a.ip(), a.port()),
        ])
        .arg("http://web.test/")
        .run();
    assert_eq!(
        out.code,
        200,
        "{}{}",
        out.describe(),
        web.chain.diagnostics()
    );
    assert_eq!(
        out.http_version,
        "2",
        "curl spoke HTTP/2 with proxy A\n{}",
        out.describe()
    );
    // `web` declares its port `http`: the app gets HTTP/1.1 whatever the client spoke (an
    // HTTP/1.1-only app must work for HTTP/2 clients); `http2` and `grpc` ports get HTTP/2, and
    // so does an HTTP/2 request asking for trailers (streaming.rs, grpc.rs).
    let json = out.json();
    assert_eq!(
        json["protocol"],
        "HTTP/1.1",
        "an `http` port gets HTTP/1.1\n{}",
        out.describe()
    );
    assert_eq!(json["service"], "web");
    assert!(
        app_header(&json["headers"], "x-request-id").is_some(),
        "{json}"
    );
}

#[test]
fn h2_post_is_echoed() {
    if !require_tool("curl") {
        return;
    }
    let web = web_chain();
    let a = web.chain.a.outbound();
    let dir = TestDir::new("h2-echo");
    let body = random_bytes(512 * 1024 + 1, 3);
    let file = dir.write("body.bin", &body);
    let out = Curl::new()
        .arg("--http2-prior-knowledge")
        .args([
            "--connect-to",
            &format!("web.test:80:{}:{}", a.ip(), a.port()),
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg("http://web.test/echo")
        .run();
    assert_eq!(
        out.code,
        200,
        "{}{}",
        out.describe(),
        web.chain.diagnostics()
    );
    assert!(
        out.body == body,
        "echoed body differs ({} bytes back, {} sent)",
        out.body.len(),
        body.len()
    );
}

#[test]
fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    if !require_tool("curl") {
        return;
    }
    let web = web_chain();
    let out = Curl::new()
        .proxy(&web.chain.proxy_url())
        .header("Connection", "keep-alive, x-hop-named")
        .header("X-Hop-Named", "must go")
        .header("Keep-Alive", "timeout=5")
        .header("Proxy-Connection", "keep-alive")
        .header("TE", "gzip")
        .header("X-Custom", "Keep Me")
        .header("User-Agent", "trellis-e2e/1")
        .arg("http://web.test/headers")
        .run();
    assert_eq!(
        out.code,
        200,
        "{}{}",
        out.describe(),
        web.chain.diagnostics()
    );
    let json = out.json();
    let headers = headers_of(&json);
    let names = app_header_names(&headers);
    for gone in [
        "x-hop-named",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(
            !names.contains(&gone.to_owned()),
            "hop-by-hop header {gone} reached the app: {headers}"
        );
    }
    if let Some(connection) = app_header(&headers, "connection") {
        assert!(
            !connection.to_ascii_lowercase().contains("x-hop-named"),
            "client's Connection header reached the app: {headers}"
        );
    }
    let internal: Vec<&String> = names.iter().filter(|n| n.starts_with("trellis-")).collect();
    assert!(
        internal.is_empty(),
        "internal headers reached the app: {internal:?}"
    );
    assert_eq!(
        app_header(&headers, "x-custom").as_deref(),
        Some("Keep Me"),
        "{headers}"
    );
    assert_eq!(
        app_header(&headers, "user-agent").as_deref(),
        Some("trellis-e2e/1"),
        "{headers}"
    );
    assert_eq!(
        app_header(&headers, "host").as_deref(),
        Some("web.test"),
        "{headers}"
    );
    assert_eq!(
        app_header(&headers, "x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "{headers}"
    );
    assert_eq!(
        app_header(&headers, "x-forwarded-proto").as_deref(),
        Some("http"),
        "{headers}"
    );
    assert!(
        app_header(&headers, "x-request-id").is_some_and(|id| !id.is_empty()),
        "{headers}"
    );
}

#[test]
fn forged_internal_headers_change_nothing() {
    if !require_tool("curl") {
        return;
    }
    // A client that forges the kind of headers proxies use between themselves (caller
    // identity, destination, protocol) must not change where the request goes, what protocol
    // the app sees, or who the destination proxy thinks the caller is.
    let web = web_chain();
    let chain = &web.chain;
    let mut curl = Curl::new().proxy(&chain.proxy_url());
    for (name, value) in [
        ("trellis-peer", "evil.evil"),
        ("trellis-source", "evil.evil"),
        ("trellis-source-workload", "evil"),
        ("trellis-service", "evil.evil.svc.cluster.local"),
        ("trellis-dst", "127.0.0.1:1"),
        ("trellis-destination", "127.0.0.1:1"),
        ("trellis-proto", "h2"),
        ("trellis-protocol", "h2"),
    ] {
        curl = curl.header(name, value);
    }
    let out = curl.arg("http://web.test/").run();
    assert_eq!(out.code, 200, "{}{}", out.describe(), chain.diagnostics());
    let json = out.json();
    let mut problems = Problems::default();
    problems.eq(
        json["service"].as_str(),
        Some("web"),
        "service that answered",
    );
    problems.eq(
        json["protocol"].as_str(),
        Some("HTTP/1.1"),
        "protocol at the app",
    );
    let b = chain
        .b
        .wait_access_log("GET web.test/", |l| log_str(l, "path") == "/");
    problems.eq(
        log_str(&b, "destination_service"),
        "web.test.svc.cluster.local",
        "B's destination_service",
    );
    let metrics = chain
        .b
        .metrics_when(|m| m.sum("trellis_requests_total", &[("reporter", "destination")]) >= 1.0);
    for sample in metrics.select("trellis_requests_total", &[("reporter", "destination")]) {
        problems.eq(
            sample.labels.get("source_workload").map(String::as_str),
            Some("client"),
            "B's source_workload",
        );
        problems.eq(
            sample.labels.get("source_namespace").map(String::as_str),
            Some("test"),
            "B's source_namespace",
        );
        problems.eq(
            sample.labels.get("destination_service").map(String::as_str),
            Some("web.test.svc.cluster.local"),
            "B's destination_service label",
        );
    }
    problems.assert_none(&format!(
        "app saw: {json}\nB: {b}\n{}",
        metrics.dump("trellis_requests_total")
    ));
}

#[test]
fn x_request_id_from_client_is_kept_and_logged() {
    if !require_tool("curl") {
        return;
    }
    let web = web_chain();
    let out = Curl::new()
        .proxy(&web.chain.proxy_url())
        .header("x-request-id", "e2e-fixed-id-42")
        .arg("http://web.test/")
        .run();
    assert_eq!(
        out.code,
        200,
        "{}{}",
        out.describe(),
        web.chain.diagnostics()
    );
    assert_eq!(
        app_header(&out.json()["headers"], "x-request-id").as_deref(),
        Some("e2e-fixed-id-42")
    );
    web.chain
        .a
        .wait_access_log("request_id e2e-fixed-id-42 at A", |l| {
            log_str(l, "request_id") == "e2e-fixed-id-42"
        });
    web.chain
        .b
        .wait_access_log("request_id e2e-fixed-id-42 at B", |l| {
            log_str(l, "request_id") == "e2e-fixed-id-42"
        });
}

#[test]
fn app_status_codes_pass_through_unchanged() {
    if !require_tool("curl") {
        return;
    }
    let web = web_chain();
    for code in [201u16, 204, 404, 500, 503] {
        let out = Curl::new()
            .proxy(&web.chain.proxy_url())
            .arg(format!("http://web.test/status/{code}"))
            .run();
        assert_eq!(
            out.code,
            code,
            "{}{}",
            out.describe(),
            web.chain.diagnostics()
        );
    }
    // An error the app chose is not a proxy failure: no response flag.
    let line = web
        .chain
        .a
        .wait_access_log("/status/503", |l| log_str(l, "path") == "/status/503");
    assert!(
        matches!(log_str(&line, "response_flags"), "-" | ""),
        "app's own 503 flagged as a proxy failure: {line}"
    );
}

#[test]
fn keep_alive_connection_carries_several_requests() {
    let web = web_chain();
    let mut conn = RawConn::connect(web.chain.a.outbound());
    for i in 0..3 {
        conn.send(
            format!("GET http://web.test/status/20{i} HTTP/1.1\r\nHost: web.test\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let response = conn
            .read_response(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", web.chain.diagnostics()));
        assert_eq!(response.status, 200 + i, "request {i}");
    }
}

#[test]
fn app_using_the_proxy_as_http_proxy_reaches_its_backend() {
    // The demo app as a frontend calls `http://web.test/` with proxy A as its HTTP proxy, the
    // way an app with `HTTP_PROXY` set would.
    let web = web_chain();
    let frontend = DemoApp::options("frontend")
        .backend("http://web.test/")
        .proxy(&web.chain.proxy_url())
        .start(&crate::trellis());
    let response = http_request(frontend.http, "GET", "/", &[], b"");
    assert_eq!(response.status, 200, "{}", response.text());
    let json = response.json();
    let call = &json["calls"][0];
    assert_eq!(call["status"], 200, "{json}\n{}", web.chain.diagnostics());
    assert_eq!(call["reply"]["service"], "web", "{json}");
}
