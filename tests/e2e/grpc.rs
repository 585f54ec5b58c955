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
