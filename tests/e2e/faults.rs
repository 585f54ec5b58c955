//! Fault injection and request mirroring (route filters) through client → proxy A → proxy B
//! → the test backends of [`crate::traffic`]: what the caller sees, and what reaches the
//! backends.

use std::time::Duration;

use trellis_test_support::{PyPeer, require_python_module, run_python};

use crate::traffic::{FAIL, Mesh};
use crate::{Problems, log_str, trellis};

const GRPC_PEER: &str = "tests/peers/grpc_peer.py";

/// `api` over backend 0, its routes `routes` (YAML rules, indented for `rules:`).
fn routed(name: &str, rules: &str) -> String {
    format!(
        "  - name: {name}
    namespace: test
    ports: [ {{ name: http, port: 80, protocol: http }} ]
    endpoints: {{endpoint:0}}
    routes:
      - name: HTTPRoute test/{name}
        rules:
{rules}"
    )
}

/// Within `sigmas` standard deviations of a binomial's mean.
fn binomial_bounds(n: usize, p: f64, sigmas: f64) -> std::ops::RangeInclusive<usize> {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    let low = (mean - sigmas * sd).max(0.0).floor() as usize;
    let high = (mean + sigmas * sd).ceil() as usize;
    low..=high
}

#[tokio::test]
async fn an_abort_answers_its_share_of_requests_without_reaching_the_backend() {
    let rules = "          - filters: [ { fault: { abort: { status: 418, percent: 20 } } } ]
            backends: [ { service: api, port: 80 } ]
";
    let mesh = Mesh::start(1, &routed("api", rules));
    let mut s = mesh.session().await;
    let total = 4000;
    let mut aborted = 0;
    for i in 0..total {
        let reply = mesh.get(&mut s, "http://api.test/", &[]).await;
        match reply.status {
            200 => {}
            418 => {
                assert_eq!(reply.text(), "fault filter abort\n");
                aborted += 1;
            }
            other => panic!(
                "request {i}: {other} {}\n{}",
                reply.text(),
                mesh.diagnostics()
            ),
        }
    }
    let expected = binomial_bounds(total, 0.2, 5.0);
    eprintln!("aborted {aborted} of {total} (expected {expected:?})");
    let mut problems = Problems::default();
    problems.check(expected.contains(&aborted), || {
        format!("aborted {aborted} of {total}, expected {expected:?}")
    });
    problems.eq(
        mesh.backends[0].hits(),
        total - aborted,
        "requests that reached the backend",
    );
    // Telemetry flags each abort FI.
    let metrics = mesh.a.metrics_when(|m| {
        m.sum("trellis_requests_total", &[("reporter", "source")]) >= total as f64
    });
    let flagged = metrics.sum(
        "trellis_requests_total",
        &[("response_flags", "FI"), ("response_code", "418")],
    );
    problems.eq(flagged, aborted as f64, "requests flagged FI");
    problems.assert_none(&mesh.diagnostics());
}

#[tokio::test]
async fn a_delay_holds_its_share_of_requests_for_its_duration() {
    let rules = "          - filters: [ { fault: { delay: { duration: 200ms, percent: 10 } } } ]
            backends: [ { service: api, port: 80 } ]
";
    let mesh = Mesh::start(1, &routed("api", rules));
    let mut s = mesh.session().await;
    let total = 300;
    let mut slow = 0;
    for _ in 0..total {
        let started = tokio::time::Instant::now();
        let reply = mesh.get(&mut s, "http://api.test/", &[]).await;
        let took = started.elapsed();
        assert_eq!(
            reply.status,
            200,
            "{}\n{}",
            reply.text(),
            mesh.diagnostics()
        );
        if took >= Duration::from_millis(200) {
            slow += 1;
        }
    }
    let metrics = mesh.a.metrics_when(|m| {
        m.sum("trellis_requests_total", &[("reporter", "source")]) >= total as f64
    });
    let delayed = metrics.sum("trellis_requests_total", &[("response_flags", "DI")]) as usize;
    let expected = binomial_bounds(total, 0.1, 5.0);
    eprintln!("delayed {delayed} of {total}, {slow} took 200 ms or more (expected {expected:?})");
    let mut problems = Problems::default();
    problems.check(expected.contains(&delayed), || {
        format!("delayed {delayed} of {total}, expected {expected:?}")
    });
    // Every delayed request took the delay (others may be slow on a busy machine too).
    problems.check(slow >= delayed, || {
        format!("{delayed} flagged DI but only {slow} took 200 ms")
    });
    problems.eq(mesh.backends[0].hits(), total, "every request is served");
    problems.assert_none(&mesh.diagnostics());
}

#[test]
fn a_grpc_abort_answers_with_the_grpc_status() {
    if !require_python_module("grpc") {
        return;
    }
    let server = PyPeer::start(GRPC_PEER, &["server", "--port", "0"]);
    let trellis = trellis();
    let (a, b) = crate::one_service_pair(
        &trellis,
        server.port,
        "grpc",
        ("grpc", 50051),
        "    routes:
      - name: GRPCRoute test/echo
        rules:
          - matches: [ { path: { type: exact, value: /trellis.test.Echo/Fail } } ]
            filters: [ { fault: { abort: { status: 503, grpc_status: 8 } } } ]
            backends: [ { service: grpc, port: 50051 } ]
          - matches: [ { path: { type: exact, value: /trellis.test.Echo/Unary } } ]
            filters: [ { fault: { abort: { status: 503 } } } ]
            backends: [ { service: grpc, port: 50051 } ]
",
    );
    let proxy = a.outbound().to_string();
    let diagnostics = || {
        format!(
            "{}{}{}",
            a.diagnostics(),
            b.diagnostics(),
            server.diagnostics()
        )
    };
    let calls = |method: &str| {
        let out = run_python(
            GRPC_PEER,
            &[
                "calls",
                "--target",
                "grpc.test:50051",
                "--proxy",
                &proxy,
                "--method",
                method,
                "--count",
                "5",
            ],
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{}\n{}", out.stderr, diagnostics());
        serde_json::from_str::<serde_json::Value>(out.stdout_text().trim())
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout_text(), diagnostics()))
    };
    // The configured gRPC status (8, RESOURCE_EXHAUSTED) rather than Fail's NOT_FOUND.
    let fail = calls("Fail");
    assert_eq!(fail["RESOURCE_EXHAUSTED"], 5, "{fail}\n{}", diagnostics());
    assert_eq!(
        fail["first_error"], "RESOURCE_EXHAUSTED: fault filter abort",
        "{fail}"
    );
    // No gRPC status given: 503 maps to UNAVAILABLE.
    let unary = calls("Unary");
    assert_eq!(unary["UNAVAILABLE"], 5, "{unary}\n{}", diagnostics());
    let line = a.wait_access_log("an aborted gRPC call", |l| {
        log_str(l, "response_flags") == "FI"
    });
    assert_eq!(line["grpc_status"], 8, "{line}");
}

#[tokio::test]
async fn mirrors_copy_requests_to_a_slow_shadow_without_delaying_the_caller() {
    // be0 serves `web`; be1 is `shadow` (slow, failing); be2 is `sampled`, a quarter mirrored.
    let services = format!(
        "{}{}  - name: shadow
    namespace: test
    ports: [ {{ name: http, port: 80, protocol: http }} ]
    endpoints: {{endpoint:1}}
  - name: sampled
    namespace: test
    ports: [ {{ name: http, port: 80, protocol: http }} ]
    endpoints: {{endpoint:2}}
",
        routed(
            "web",
            "          - filters: [ { mirror: { service: shadow, port: 80 } } ]
            backends: [ { service: web, port: 80 } ]
"
        ),
        routed(
            "quarter",
            "          - filters: [ { mirror: { service: sampled, port: 80, percent: 25 } } ]
            backends: [ { service: quarter, port: 80 } ]
"
        ),
    );
    let mesh = Mesh::start(3, &services);
    let shadow = &mesh.backends[1];
    shadow.set_delay(Duration::from_secs(2));
    shadow.set_mode(FAIL);
    let mut s = mesh.session().await;

    // Every request is answered by web (be0) at once, while the shadow takes 2 s for each.
    let n = 20;
    let started = tokio::time::Instant::now();
    for i in 0..n {
        let reply = mesh.get(&mut s, "http://web.test/", &[]).await;
        assert_eq!(
            reply.status,
            200,
            "request {i}: {}\n{}",
            reply.text(),
            mesh.diagnostics()
        );
        assert_eq!(
            reply.text(),
            "be0\n",
            "the shadow's answer reached the caller"
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "{n} requests took {took:?}: the slow shadow delayed them\n{}",
        mesh.diagnostics()
    );
    // The copies arrive, each with the `-shadow` host.
    let arrived = tokio::time::timeout(Duration::from_secs(10), async {
        while shadow.hits() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        arrived.is_ok(),
        "{} of {n} copies arrived\n{}",
        shadow.hits(),
        mesh.diagnostics()
    );
    assert_eq!(shadow.last_host(), "web.test-shadow");
    assert_eq!(mesh.backends[0].hits(), n);

    // A quarter of the requests to `quarter` are copied.
    let total = 800;
    mesh.get_ok(&mut s, "http://quarter.test/", total).await;
    let metrics = mesh.a.metrics_when(|m| {
        m.sum(
            "trellis_mirror_requests_total",
            &[("destination_service", "shadow.test.svc.cluster.local")],
        ) >= n as f64
    });
    let sampled = mesh.backends[2].hits();
    let expected = binomial_bounds(total, 0.25, 5.0);
    eprintln!("mirrored {sampled} of {total} (expected {expected:?})");
    let mut problems = Problems::default();
    problems.check(expected.contains(&sampled), || {
        format!("mirrored {sampled} of {total}, expected {expected:?}")
    });
    problems.eq(
        metrics.sum(
            "trellis_mirror_requests_total",
            &[
                ("destination_service", "shadow.test.svc.cluster.local"),
                ("result", "sent"),
            ],
        ),
        n as f64,
        "mirrored requests counted as sent",
    );
    // The caller's requests are recorded as usual; the copies are not requests of the app's.
    problems.eq(
        metrics.sum(
            "trellis_requests_total",
            &[
                ("reporter", "source"),
                ("destination_service", "shadow.test.svc.cluster.local"),
            ],
        ),
        0.0,
        "copies in trellis_requests_total",
    );
    problems.assert_none(&format!(
        "{}{}",
        mesh.diagnostics(),
        metrics.dump("trellis_mirror")
    ));
}
