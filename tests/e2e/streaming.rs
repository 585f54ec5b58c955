//! Bodies stream in both directions and trailers survive the chain, over HTTP/1.1 (chunked)
//! and HTTP/2 between the client and proxy A.

use std::time::Duration;

use trellis_test_support::RawConn;
use trellis_test_support::client::{Version, echo_ping_pong, echo_with_trailers};

use crate::web_chain;

async fn trailers_round_trip(version: Version) {
    let web = web_chain();
    let chain = &web.chain;
    let exchange = echo_with_trailers(
        chain.a.outbound(),
        "http://web.test/echo",
        version,
        &[b"hello ", b"trailers"],
        &[("x-checksum", "abc123")],
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{version:?} echo with trailers: {e:#}\n{}",
            chain.diagnostics()
        )
    });
    assert_eq!(exchange.status, 200, "{}", chain.diagnostics());
    assert_eq!(&exchange.body[..], b"hello trailers");
    let checksum = exchange
        .trailers
        .iter()
        .find(|(n, _)| n == "x-checksum")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        checksum,
        Some("abc123"),
        "{version:?}: request trailers must reach the app and come back as response trailers; got {:?}\n{}",
        exchange.trailers,
        chain.diagnostics()
    );
}

#[tokio::test]
async fn http2_trailers_round_trip() {
    trailers_round_trip(Version::Http2).await;
}

#[tokio::test]
async fn http1_chunked_trailers_round_trip() {
    trailers_round_trip(Version::Http1).await;
}

#[test]
fn http1_trailers_in_raw_bytes_round_trip() {
    // The same by hand, so the wire format is exactly what an HTTP/1.1 client writes.
    let web = web_chain();
    let mut conn = RawConn::connect(web.chain.a.outbound());
    conn.send(
        b"POST http://web.test/echo HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\
TE: trailers\r\nTrailer: x-checksum\r\nConnection: close\r\n\r\n\
5\r\nhello\r\n0\r\nx-checksum: abc123\r\n\r\n",
    )
    .unwrap();
    let response = conn.read_response(Duration::from_secs(20)).unwrap();
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        web.chain.diagnostics()
    );
    assert_eq!(response.text(), "hello");
    assert_eq!(
        response.trailer("x-checksum"),
        Some("abc123"),
        "response headers {:?}, trailers {:?}\n{}",
        response.headers,
        response.trailers,
        web.chain.diagnostics()
    );
}

#[tokio::test]
async fn http1_body_streams_both_ways_without_buffering() {
    let web = web_chain();
    echo_ping_pong(
        web.chain.a.outbound(),
        "http://web.test/echo",
        Version::Http1,
        5,
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", web.chain.diagnostics()));
}

#[tokio::test]
async fn http2_body_streams_both_ways_without_buffering() {
    let web = web_chain();
    echo_ping_pong(
        web.chain.a.outbound(),
        "http://web.test/echo",
        Version::Http2,
        5,
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", web.chain.diagnostics()));
}
