//! The demo's small shop, every app a real `trellis demo-app` behind real proxies:
//!
//! ```text
//! curl → frontend ─(its sidecar)─ HTTP ─→ reviews v2
//!                 └(its sidecar)─ gRPC ─→ catalog ─(its sidecar)─ TCP ─→ stock
//! ```
//!
//! Curling the frontend shows the whole call tree; the sidecars' metrics show that the HTTP,
//! gRPC and TCP calls crossed them. Two chains: `shop` (the frontend's sidecar A, and B in
//! front of reviews and catalog) and `stock_mesh` (catalog's sidecar A, and B in front of
//! stock), since catalog must know its sidecar's address before `shop` can list its port.

use serde_json::Value;
use trellis_test_support::{Chain, DemoApp, ServiceSpec, Target, http_request};

use crate::{Problems, trellis};

#[test]
fn frontend_shows_the_whole_call_tree_across_the_mesh() {
    let t = trellis();
    let stock = DemoApp::options("stock").tcp().start(&t);
    let stock_mesh = Chain::builder(&t)
        .service(ServiceSpec::new(
            "stock",
            7000,
            "tcp",
            Target::Meshed(stock.tcp_port()),
        ))
        .start();
    let catalog = DemoApp::options("catalog")
        .backend("tcp://stock.test:7000")
        .proxy(&stock_mesh.proxy_url())
        .start(&t);
    let reviews = DemoApp::options("reviews").version("v2").start(&t);
    let shop = Chain::builder(&t)
        .service(ServiceSpec::new(
            "reviews",
            9080,
            "http",
            Target::Meshed(reviews.http_port()),
        ))
        .service(ServiceSpec::new(
            "catalog",
            50051,
            "grpc",
            Target::Meshed(catalog.http_port()),
        ))
        .start();
    // Callers at the front wait longer than those behind them (see `--timeout`).
    let frontend = DemoApp::options("frontend")
        .backend("http://reviews.test:9080/")
        .backend("grpc://catalog.test:50051")
        .proxy(&shop.proxy_url())
        .timeout("5s")
        .start(&t);
    let diagnostics = || {
        format!(
            "--- shop chain ---\n{}--- stock chain ---\n{}--- frontend ---\n{}--- catalog ---\n{}",
            shop.diagnostics(),
            stock_mesh.diagnostics(),
            frontend.diagnostics(),
            catalog.diagnostics()
        )
    };

    // 1. The whole tree, every call ok.
    let response = http_request(frontend.http, "GET", "/", &[], b"");
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        diagnostics()
    );
    let json = response.json();
    let mut problems = Problems::default();
    let at = |path: &str| pointer(&json, path);
    problems.eq(at("/service"), "\"frontend\"".into(), "frontend name");
    problems.eq(at("/ok"), "true".into(), "frontend ok");
    problems.eq(
        at("/calls/0/target"),
        "\"http://reviews.test:9080/\"".into(),
        "reviews target",
    );
    problems.eq(at("/calls/0/ok"), "true".into(), "reviews call ok");
    problems.eq(at("/calls/0/status"), "200".into(), "reviews status");
    problems.eq(
        at("/calls/0/reply/service"),
        "\"reviews\"".into(),
        "reviews answered",
    );
    problems.eq(
        at("/calls/0/reply/version"),
        "\"v2\"".into(),
        "reviews version",
    );
    problems.eq(
        at("/calls/1/target"),
        "\"grpc://catalog.test:50051\"".into(),
        "catalog target",
    );
    problems.eq(at("/calls/1/ok"), "true".into(), "catalog call ok");
    problems.eq(at("/calls/1/status"), "0".into(), "catalog gRPC status");
    problems.eq(
        at("/calls/1/reply/service"),
        "\"catalog\"".into(),
        "catalog answered",
    );
    problems.eq(
        at("/calls/1/reply/calls/0/target"),
        "\"tcp://stock.test:7000\"".into(),
        "stock target",
    );
    problems.eq(
        at("/calls/1/reply/calls/0/ok"),
        "true".into(),
        "stock call ok",
    );
    problems.eq(
        at("/calls/1/reply/calls/0/banner"),
        "\"trellis-demo stock tcp\"".into(),
        "stock banner through the tunnel",
    );
    problems.assert_none(&format!("{json:#}\n{}", diagnostics()));

    // 2. The same tree as text.
    let response = http_request(frontend.http, "GET", "/?format=text", &[], b"");
    let text = response.text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() == 4
            && lines[0] == "frontend v1: ok"
            && lines[1].starts_with("├─ http://reviews.test:9080/ → reviews v2: ok (HTTP 200, ")
            && lines[2].starts_with("└─ grpc://catalog.test:50051 → catalog v1: ok (gRPC Ok, ")
            && lines[3].starts_with(
                "   └─ tcp://stock.test:7000: ok (banner \"trellis-demo stock tcp\", "
            ),
        "{text}"
    );

    // 3. The calls crossed the sidecars, each seen as its protocol.
    let source = ("reporter", "source");
    let grpc = [
        source,
        ("request_protocol", "grpc"),
        ("destination_service", "catalog.test.svc.cluster.local"),
        ("grpc_response_status", "0"),
    ];
    let http = [
        source,
        ("request_protocol", "http"),
        ("destination_service", "reviews.test.svc.cluster.local"),
        ("response_code", "200"),
    ];
    let metrics = shop.a.metrics_when(|m| {
        m.sum("trellis_requests_total", &grpc) >= 2.0
            && m.sum("trellis_requests_total", &http) >= 2.0
    });
    let mut problems = Problems::default();
    // Two GET / so far: two calls of each kind.
    problems.eq(
        metrics.sum("trellis_requests_total", &grpc),
        2.0,
        "gRPC calls at the frontend's sidecar",
    );
    problems.eq(
        metrics.sum("trellis_requests_total", &http),
        2.0,
        "HTTP calls at the frontend's sidecar",
    );
    let tcp = [
        source,
        ("destination_service", "stock.test.svc.cluster.local"),
    ];
    let stock_metrics = stock_mesh
        .a
        .metrics_when(|m| m.sum("trellis_tcp_connections_closed_total", &tcp) >= 2.0);
    problems.eq(
        stock_metrics.sum("trellis_tcp_connections_opened_total", &tcp),
        2.0,
        "TCP connections at catalog's sidecar",
    );
    problems.assert_none(&format!(
        "{}{}",
        metrics.dump("trellis_requests_total"),
        stock_metrics.dump("trellis_tcp")
    ));

    // 4. stock goes away: catalog reports it, the frontend answers 502 with the whole tree.
    drop(stock);
    let response = http_request(frontend.http, "GET", "/", &[], b"");
    let json = response.json();
    assert_eq!(response.status, 502, "{json:#}\n{}", diagnostics());
    let stock_call = &json["calls"][1]["reply"]["calls"][0];
    assert_eq!(json["calls"][0]["ok"], true, "{json:#}");
    assert_eq!(json["calls"][1]["ok"], false, "{json:#}");
    assert_eq!(stock_call["ok"], false, "{json:#}");
    let error = stock_call["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused CONNECT stock.test:7000"),
        "the sidecar's refusal, named: {json:#}"
    );
}

/// The JSON at `path` as text ("<absent>" when missing), for [`Problems::eq`].
fn pointer(json: &Value, path: &str) -> String {
    json.pointer(path)
        .map_or_else(|| "<absent>".to_owned(), Value::to_string)
}
