//! gRPC through the chain with a real grpcio client and server: unary with trailers,
//! server streaming, bidirectional streaming, and an error status.

use std::time::Duration;

use trellis_test_support::{Chain, PyPeer, ServiceSpec, Target, require_python_module, run_python};

use crate::trellis;

const PEER: &str = "tests/peers/grpc_peer.py";

#[test]
fn grpc_unary_streaming_bidi_and_status_through_chain() {
    if !require_python_module("grpc") {
        return;
    }
    let server = PyPeer::start(PEER, &["server", "--port", "0"]);
    let chain = Chain::builder(&trellis())
        .service(ServiceSpec::new(
            "grpc",
            50051,
            "grpc",
            Target::Meshed(server.port),
        ))
        .start();
    let proxy = chain.a.outbound().to_string();
    let out = run_python(
        PEER,
        &["client", "--target", "grpc.test:50051", "--proxy", &proxy],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success() && out.stdout_text().contains("OK"),
        "grpc client failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}{}",
        out.status,
        out.stdout_text(),
        out.stderr,
        chain.diagnostics(),
        server.diagnostics()
    );

    // Telemetry sees gRPC as gRPC, with the statuses from the trailers: OK for the good calls,
    // NOT_FOUND (5) for the error check.
    let grpc = [("reporter", "source"), ("request_protocol", "grpc")];
    let metrics = chain.a.metrics_when(|m| {
        m.sum(
            "trellis_requests_total",
            &[grpc[0], grpc[1], ("grpc_response_status", "5")],
        ) >= 1.0
    });
    let ok = metrics.sum(
        "trellis_requests_total",
        &[grpc[0], grpc[1], ("grpc_response_status", "0")],
    );
    let not_found = metrics.sum(
        "trellis_requests_total",
        &[grpc[0], grpc[1], ("grpc_response_status", "5")],
    );
    assert!(
        ok >= 3.0,
        "expected ≥ 3 gRPC calls with status 0 (unary, server-streaming, bidi), got {ok}\n{}",
        metrics.dump("trellis_requests_total")
    );
    assert!(
        not_found >= 1.0,
        "expected the NOT_FOUND call with grpc_response_status 5, got {not_found}\n{}",
        metrics.dump("trellis_requests_total")
    );
    // gRPC errors travel in trailers with HTTP 200.
    assert!(
        metrics
            .select(
                "trellis_requests_total",
                &[grpc[0], grpc[1], ("grpc_response_status", "5")]
            )
            .iter()
            .all(|s| s.labels.get("response_code").is_some_and(|c| c == "200")),
        "{}",
        metrics.dump("trellis_requests_total")
    );
}

/// A server that fails calls with UNAVAILABLE in trailers after its response headers (not
/// trailers-only): proxy A, whose policy retries `unavailable`, looks at the first frame,
/// sees the status and retries; the caller sees the call succeed. Calls that fail every try
/// reach the caller with the server's status and message; streaming calls pass unharmed.
#[test]
fn grpc_errors_in_trailers_after_headers_are_retried() {
    if !require_python_module("grpc") {
        return;
    }
    let server = PyPeer::start(PEER, &["server", "--port", "0"]);
    let trellis = trellis();
    let (a, b) = crate::one_service_pair(
        &trellis,
        server.port,
        "grpc",
        ("grpc", 50051),
        "    policy:
      retries: { attempts: 3, on: [unavailable], backoff: 1ms }
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
    let calls = |payload: &str, count: &str| {
        let args = [
            "calls",
            "--target",
            "grpc.test:50051",
            "--proxy",
            &proxy,
            "--method",
            "Flaky",
            "--payload",
            payload,
            "--count",
            count,
        ];
        let out = run_python(PEER, &args, Duration::from_secs(60));
        assert!(out.status.success(), "{}\n{}", out.stderr, diagnostics());
        serde_json::from_str::<serde_json::Value>(out.stdout_text().trim())
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout_text(), diagnostics()))
    };
    // Two failures, then success: one call from the caller's side.
    let recovered = calls("twice:2", "1");
    assert_eq!(recovered["OK"], 1, "{recovered}\n{}", diagnostics());
    // Five failures outlast 1 + 3 tries: the fourth failure reaches the caller, intact.
    let failed = calls("five:5", "2");
    assert_eq!(
        failed["first_error"],
        "UNAVAILABLE: flaky: call 4 of five fails",
        "{failed}\n{}",
        diagnostics()
    );
    assert_eq!(
        failed["OK"], 1,
        "the fifth call's first try fails, its retry succeeds: {failed}"
    );
    // Messages, streams and trailers-only errors pass through the look at the first frame.
    let out = run_python(
        PEER,
        &["client", "--target", "grpc.test:50051", "--proxy", &proxy],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success() && out.stdout_text().contains("OK"),
        "{}\n{}\n{}",
        out.stdout_text(),
        out.stderr,
        diagnostics()
    );
}
