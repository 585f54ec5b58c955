//! HTTP routes (HTTPRoute/GRPCRoute as the proxy config carries them) through client →
//! proxy A → proxy B → two demo apps, `reviews` v1 and v2, each its own service
//! (`reviews-v1`, `reviews-v2`). Two services carry routes:
//! - `reviews`: a header pins v2; `/headers` exactly goes to v1 with header modifiers both
//!   ways; everything else splits 90/10 between v1 and v2;
//! - `ratings` (no endpoints of its own): `/version` by prefix (rewritten to `/`) to v1 and
//!   exactly (listed second) to v2, `/old` redirects to `/new`, `/empty` has only a backend of
//!   weight 0, and nothing else matches.
//!
//! And gRPC through a route as a GRPCRoute compiles, with a real grpcio client and server.

use std::time::Duration;

use serde_json::Value;
use trellis_test_support::client::{Reply, Session, Version};
use trellis_test_support::{DemoApp, ProxyProcess, PyPeer, require_python_module, run_python};

use crate::{Problems, app_header, headers_of, log_code, log_str, trellis};

/// The requests of the weighted split, and the share of v2 they must show (90/10).
const SPLIT_REQUESTS: usize = 2000;
const V2_SHARE: std::ops::RangeInclusive<f64> = 0.07..=0.13;

const GRPC_PEER: &str = "tests/peers/grpc_peer.py";

struct Mesh {
    a: ProxyProcess,
    b: ProxyProcess,
    v1: DemoApp,
    v2: DemoApp,
}

impl Mesh {
    fn start() -> Mesh {
        let trellis = trellis();
        let v1 = DemoApp::options("reviews").version("v1").start(&trellis);
        let v2 = DemoApp::options("reviews").version("v2").start(&trellis);
        let (p1, p2) = (v1.http_port(), v2.http_port());
        let b = trellis.proxy(
            "proxy-b",
            &format!(
                "\
node: {{ name: proxy-b, namespace: test, workload: reviews }}
listeners: {{ admin: \"127.0.0.1:0\", mesh: \"127.0.0.1:0\" }}
app:
  address: 127.0.0.1
  ports: [ {{ port: {p1}, protocol: http }}, {{ port: {p2}, protocol: http }} ]
"
            ),
        );
        let mesh = b.mesh();
        let endpoint = |port: u16, workload: &str| {
            format!(
                "[ {{ address: 127.0.0.1, ports: {{ http: {port} }}, mesh: \"{mesh}\", workload: {workload} }} ]"
            )
        };
        let a_yaml = format!(
            "\
node: {{ name: proxy-a, namespace: test, workload: client }}
listeners: {{ admin: \"127.0.0.1:0\", outbound: \"127.0.0.1:0\" }}
timeouts: {{ detect: 100ms, request: 15s }}
outbound_policy: registry_only
services:
  - name: reviews-v1
    namespace: test
    ports: [ {{ name: http, port: 80, protocol: http }} ]
    endpoints: {v1}
  - name: reviews-v2
    namespace: test
    ports: [ {{ name: http, port: 80, protocol: http }} ]
    endpoints: {v2}
  - name: reviews
    namespace: test
    ports: [ {{ name: http, port: 80, protocol: http }} ]
    endpoints: {v1}
    routes:
      - name: HTTPRoute test/reviews
        rules:
          - matches: [ {{ headers: [ {{ name: x-canary, value: always }} ] }} ]
            backends: [ {{ service: reviews-v2, port: 80 }} ]
          - matches: [ {{ path: {{ type: exact, value: /headers }} }} ]
            filters:
              - request_header_modifier:
                  set: [ {{ name: x-route, value: headers-rule }} ]
                  add: [ {{ name: x-added, value: by-route }} ]
                  remove: [ x-drop ]
              - response_header_modifier:
                  set: [ {{ name: x-served-by, value: trellis-route }} ]
            backends: [ {{ service: reviews-v1, port: 80 }} ]
          - backends:
              - {{ service: reviews-v1, port: 80, weight: 90 }}
              - {{ service: reviews-v2, port: 80, weight: 10 }}
  - name: ratings
    namespace: test
    ports: [ {{ name: http, port: 80, protocol: http }} ]
    routes:
      - name: HTTPRoute test/ratings
        rules:
          - matches: [ {{ path: {{ type: prefix, value: /version }} }} ]
            filters: [ {{ url_rewrite: {{ path: {{ replace_prefix_match: / }} }} }} ]
            backends: [ {{ service: reviews-v1, port: 80 }} ]
          - matches: [ {{ path: {{ type: exact, value: /version }} }} ]
            filters: [ {{ url_rewrite: {{ path: {{ replace_full_path: / }} }} }} ]
            backends: [ {{ service: reviews-v2, port: 80 }} ]
          - matches: [ {{ path: {{ type: prefix, value: /old }} }} ]
            filters:
              - request_redirect: {{ path: {{ replace_prefix_match: /new }}, status_code: 301 }}
          - matches: [ {{ path: {{ type: exact, value: /empty }} }} ]
            backends: [ {{ service: reviews-v1, port: 80, weight: 0 }} ]
",
            v1 = endpoint(p1, "reviews-v1"),
            v2 = endpoint(p2, "reviews-v2"),
        );
        let a = trellis.proxy("proxy-a", &a_yaml);
        Mesh { a, b, v1, v2 }
    }

    fn diagnostics(&self) -> String {
        format!(
            "{}{}{}{}",
            self.a.diagnostics(),
            self.b.diagnostics(),
            self.v1.diagnostics(),
            self.v2.diagnostics()
        )
    }

    async fn session(&self, version: Version) -> Session {
        Session::connect(self.a.outbound(), version)
            .await
            .unwrap_or_else(|e| panic!("connect: {e:#}\n{}", self.diagnostics()))
    }
}

async fn get(mesh: &Mesh, s: &mut Session, url: &str, headers: &[(&str, &str)]) -> Reply {
    s.get(url, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:#}\n{}", mesh.diagnostics()))
}

/// The demo app's `version` in a reply to `/`.
fn version_of(mesh: &Mesh, reply: &Reply) -> String {
    let json: Value = reply
        .json()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.diagnostics()));
    json["version"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_weighted_split_sends_a_tenth_to_v2() {
    let mesh = Mesh::start();
    let mut s = mesh.session(Version::Http1).await;
    let mut v2 = 0;
    for i in 0..SPLIT_REQUESTS {
        let reply = get(&mesh, &mut s, "http://reviews.test/", &[]).await;
        assert_eq!(
            reply.status,
            200,
            "request {i}: {}\n{}",
            reply.text(),
            mesh.diagnostics()
        );
        match version_of(&mesh, &reply).as_str() {
            "v2" => v2 += 1,
            "v1" => {}
            other => panic!("request {i}: version {other:?}: {}", reply.text()),
        }
    }
    let share = v2 as f64 / SPLIT_REQUESTS as f64;
    eprintln!("v2 answered {v2} of {SPLIT_REQUESTS} ({share:.3})");
    assert!(
        V2_SHARE.contains(&share),
        "v2 answered {v2} of {SPLIT_REQUESTS} ({share:.3}), expected a share in {V2_SHARE:?}"
    );

    // Telemetry names the backend service each request went to.
    let metrics = mesh.a.metrics_when(|m| {
        m.sum("trellis_requests_total", &[("reporter", "source")]) >= SPLIT_REQUESTS as f64
    });
    let to = |service: &str| {
        metrics.sum(
            "trellis_requests_total",
            &[("reporter", "source"), ("destination_service", service)],
        )
    };
    assert_eq!(
        to("reviews-v2.test.svc.cluster.local"),
        v2 as f64,
        "{}",
        metrics.dump("trellis_requests_total")
    );
    assert_eq!(
        to("reviews-v1.test.svc.cluster.local"),
        (SPLIT_REQUESTS - v2) as f64
    );
    assert_eq!(
        to("reviews.test.svc.cluster.local"),
        0.0,
        "the addressed service is not a backend here"
    );
}

#[tokio::test]
async fn a_header_pins_v2_and_a_rule_modifies_headers_both_ways() {
    let mesh = Mesh::start();
    let mut problems = Problems::default();
    for version in [Version::Http1, Version::Http2] {
        let mut s = mesh.session(version).await;
        for _ in 0..20 {
            let reply = get(
                &mesh,
                &mut s,
                "http://reviews.test/",
                &[("x-canary", "always")],
            )
            .await;
            problems.eq(
                version_of(&mesh, &reply),
                "v2".to_string(),
                &format!("{version:?} x-canary: always"),
            );
        }
        // An exact path beats the header rule (a prefix `/` with a header).
        let reply = get(
            &mesh,
            &mut s,
            "http://reviews.test/headers",
            &[
                ("x-canary", "always"),
                ("x-drop", "secret"),
                ("x-added", "mine"),
            ],
        )
        .await;
        problems.eq(reply.status, 200, &format!("{version:?} /headers status"));
        problems.eq(
            reply.header("x-served-by"),
            Some("trellis-route"),
            &format!("{version:?} response header set by the route"),
        );
        let json = reply.json().unwrap_or_else(|e| panic!("{e:#}"));
        let headers = headers_of(&json);
        problems.eq(
            app_header(&headers, "x-route").as_deref(),
            Some("headers-rule"),
            &format!("{version:?} x-route at the app"),
        );
        problems.eq(
            app_header(&headers, "x-added").as_deref(),
            Some("mine, by-route"),
            &format!("{version:?} x-added at the app (added to the client's)"),
        );
        problems.eq(
            app_header(&headers, "x-drop"),
            None,
            &format!("{version:?} x-drop at the app (removed)"),
        );
    }

    // Both proxies name the backend service in their telemetry; A records the routed request.
    let line = mesh
        .a
        .wait_access_log("GET /headers", |l| log_str(l, "path") == "/headers");
    problems.eq(
        log_str(&line, "destination_service"),
        "reviews-v1.test.svc.cluster.local",
        "A destination_service",
    );
    problems.eq(
        log_str(&line, "authority"),
        "reviews.test",
        "A authority (as the client sent it)",
    );
    let line = mesh
        .b
        .wait_access_log("GET /headers", |l| log_str(l, "path") == "/headers");
    problems.eq(
        log_str(&line, "destination_service"),
        "reviews-v1.test.svc.cluster.local",
        "B destination_service",
    );
    let line = mesh.a.wait_access_log("x-canary", |l| {
        log_str(l, "path") == "/" && log_str(l, "destination_service").starts_with("reviews-v2")
    });
    problems.eq(log_code(&line), Some(200), "A canary response code");
    problems.assert_none(&mesh.diagnostics());
}

#[tokio::test]
async fn exact_beats_prefix_a_redirect_answers_at_once_and_no_match_is_404() {
    let mesh = Mesh::start();
    let mut s = mesh.session(Version::Http1).await;
    let mut problems = Problems::default();

    // /version exactly: v2 (its rule is listed after the prefix rule, and still wins).
    let reply = get(&mesh, &mut s, "http://ratings.test/version", &[]).await;
    problems.eq(reply.status, 200, "/version status");
    problems.eq(
        version_of(&mesh, &reply),
        "v2".to_string(),
        "/version (exact)",
    );
    // /version/ and below: the prefix, rewritten to `/` for v1.
    for (path, at_app) in [("/version/", "/"), ("/version/?q=1", "/?q=1")] {
        let reply = get(&mesh, &mut s, &format!("http://ratings.test{path}"), &[]).await;
        problems.eq(reply.status, 200, &format!("{path} status"));
        let json = reply.json().unwrap_or_else(|e| panic!("{e:#}"));
        problems.eq(
            json["version"].as_str(),
            Some("v1"),
            &format!("{path} (prefix)"),
        );
        problems.eq(
            json["path"].as_str(),
            Some(at_app),
            &format!("{path} as the app saw it"),
        );
    }

    // A redirect, answered by the proxy with the query kept; the app never sees it.
    let reply = get(&mesh, &mut s, "http://ratings.test/old/page?x=1", &[]).await;
    problems.eq(reply.status, 301, "/old/page status");
    problems.eq(
        reply.header("location"),
        Some("http://ratings.test/new/page?x=1"),
        "/old/page location",
    );

    // No rule matches: 404, whole path segments only.
    for path in ["/versionx", "/nothing", "/"] {
        let reply = get(&mesh, &mut s, &format!("http://ratings.test{path}"), &[]).await;
        problems.eq(reply.status, 404, &format!("{path} status"));
        problems.check(
            reply
                .text()
                .contains("no route of service ratings.test.svc.cluster.local matches GET"),
            || format!("{path}: body {:?}", reply.text()),
        );
    }
    // Every weight 0: the Gateway API's 500.
    let reply = get(&mesh, &mut s, "http://ratings.test/empty", &[]).await;
    problems.eq(reply.status, 500, "/empty status");

    let line = mesh
        .a
        .wait_access_log("GET /nothing", |l| log_str(l, "path") == "/nothing");
    problems.eq(log_code(&line), Some(404), "404 logged");
    problems.eq(log_str(&line, "response_flags"), "NR", "404 flags");
    problems.eq(
        log_str(&line, "destination_service"),
        "ratings.test.svc.cluster.local",
        "404 destination_service",
    );
    let line = mesh
        .a
        .wait_access_log("GET /old/page", |l| log_str(l, "path").starts_with("/old/"));
    problems.eq(log_code(&line), Some(301), "redirect logged");
    problems.eq(log_str(&line, "response_flags"), "-", "redirect flags");
    let line = mesh
        .a
        .wait_access_log("GET /empty", |l| log_str(l, "path") == "/empty");
    problems.eq(log_str(&line, "response_flags"), "NC", "500 flags");
    // The redirect, the 404s and the 500 never reached B: once a later request is in B's log
    // (one connection, one request at a time), theirs would be too.
    get(&mesh, &mut s, "http://reviews.test/headers?last", &[]).await;
    mesh.b.wait_access_log("GET /headers?last", |l| {
        log_str(l, "path") == "/headers?last"
    });
    // (B does see `/`: the rewritten `/version`.)
    let answered_by_a = ["/old/page?x=1", "/versionx", "/nothing", "/empty"];
    for line in mesh.b.access_log() {
        let path = log_str(&line, "path");
        problems.check(!answered_by_a.contains(&path), || {
            format!("B saw {path}: {line}")
        });
    }
    problems.assert_none(&mesh.diagnostics());
}

/// gRPC (a real grpcio client and server) through routes as a GRPCRoute compiles: the
/// service `grpc` has no endpoints of its own; its route sends `trellis.test.Echo` (by
/// service, a path prefix) to `grpc-backend`, so every call that works went through it.
#[test]
fn grpc_calls_follow_a_grpc_route_to_their_backend() {
    if !require_python_module("grpc") {
        return;
    }
    let trellis = trellis();
    let server = PyPeer::start(GRPC_PEER, &["server", "--port", "0"]);
    let b = trellis.proxy(
        "proxy-b",
        &format!(
            "\
node: {{ name: proxy-b, namespace: test, workload: echo }}
listeners: {{ admin: \"127.0.0.1:0\", mesh: \"127.0.0.1:0\" }}
app: {{ address: 127.0.0.1, ports: [ {{ port: {port}, protocol: grpc }} ] }}
",
            port = server.port
        ),
    );
    let a = trellis.proxy(
        "proxy-a",
        &format!(
            "\
node: {{ name: proxy-a, namespace: test, workload: client }}
listeners: {{ admin: \"127.0.0.1:0\", outbound: \"127.0.0.1:0\" }}
outbound_policy: registry_only
services:
  - name: grpc-backend
    namespace: test
    ports: [ {{ name: grpc, port: 50051, protocol: grpc }} ]
    endpoints:
      - {{ address: 127.0.0.1, ports: {{ grpc: {port} }}, mesh: \"{mesh}\", workload: echo }}
  - name: grpc
    namespace: test
    ports: [ {{ name: grpc, port: 50051, protocol: grpc }} ]
    routes:
      - name: GRPCRoute test/echo
        port: 50051
        rules:
          - matches: [ {{ path: {{ type: prefix, value: /trellis.test.Echo }} }} ]
            filters:
              - response_header_modifier: {{ add: [ {{ name: x-routed, value: echo }} ] }}
            backends: [ {{ service: grpc-backend, port: 50051 }} ]
",
            port = server.port,
            mesh = b.mesh()
        ),
    );
    let proxy = a.outbound().to_string();
    let out = run_python(
        GRPC_PEER,
        &["client", "--target", "grpc.test:50051", "--proxy", &proxy],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success() && out.stdout_text().contains("OK"),
        "grpc client failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}{}{}",
        out.status,
        out.stdout_text(),
        out.stderr,
        a.diagnostics(),
        b.diagnostics(),
        server.diagnostics()
    );
    let grpc = [("reporter", "source"), ("request_protocol", "grpc")];
    let metrics = a.metrics_when(|m| m.sum("trellis_requests_total", &grpc) >= 4.0);
    let backend = metrics.sum(
        "trellis_requests_total",
        &[
            grpc[0],
            grpc[1],
            ("destination_service", "grpc-backend.test.svc.cluster.local"),
        ],
    );
    assert_eq!(
        backend,
        metrics.sum("trellis_requests_total", &grpc),
        "every call went to the route's backend\n{}",
        metrics.dump("trellis_requests_total")
    );
}
