//! The mesh transport's HTTP/2 server against `h2`'s client: bodies both ways with trailers,
//! the size of a known body, a reset before the answer, `CONNECT` tunnels opened and refused,
//! and drain (GOAWAY while a stream is open).

use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Method, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::pool::{BoxError, boxed, empty, full};

/// `serve` on one end of an in-memory pipe, the `h2` client on the other; the returned task
/// ends when `serve` does.
async fn start<H, F>(
    drain: DrainWatcher,
    handler: H,
) -> (SendRequest<Bytes>, tokio::task::JoinHandle<()>)
where
    H: Fn(Request<RecvBody>) -> F + Send + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let (client_io, server_io): (DuplexStream, DuplexStream) = tokio::io::duplex(256 * 1024);
    let server = tokio::spawn(async move { serve(server_io, &drain, handler).await });
    let (send, conn) = h2::client::handshake(client_io).await.expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, server)
}

fn get(path: &str) -> Request<()> {
    let mut req = Request::new(());
    *req.uri_mut() = format!("http://app.test{path}").parse().expect("uri");
    req
}

/// Every frame of a response body: the data joined, and the trailers.
async fn read_all(body: &mut h2::RecvStream) -> (Vec<u8>, Option<HeaderMap>) {
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.expect("trailers");
    (data, trailers)
}

#[tokio::test]
async fn a_request_body_and_its_trailers_reach_the_handler_and_the_answer_gets_its_length() {
    let (_trigger, drain) = trellis_runtime::drain::new();
    let (mut client, _server) = start(drain, |req: Request<RecvBody>| async move {
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().path(), "/upload");
        let collected = req.into_body().collect().await.expect("request body");
        let sum = collected
            .trailers()
            .and_then(|t| t.get("x-sum"))
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default();
        Response::new(full(format!("{}|{sum}", collected.to_bytes().len())))
    })
    .await;
    let mut req = get("/upload");
    *req.method_mut() = Method::POST;
    let (response, mut stream) = client.send_request(req, false).expect("send");
    let big = Bytes::from(vec![b'x'; 200 * 1024]);
    stream.reserve_capacity(big.len());
    stream.send_data(big, false).expect("data");
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", HeaderValue::from_static("42"));
    stream.send_trailers(trailers).expect("trailers");
    let resp = response.await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, mut body) = resp.into_parts();
    let (data, _) = read_all(&mut body).await;
    assert_eq!(data, format!("{}|42", 200 * 1024).as_bytes());
}

#[tokio::test]
async fn a_known_body_gets_its_content_length_and_a_streamed_one_its_trailers() {
    let (_trigger, drain) = trellis_runtime::drain::new();
    let (mut client, _server) = start(drain, |req: Request<RecvBody>| async move {
        if req.uri().path() == "/known" {
            return Response::new(full("twelve bytes"));
        }
        let (tx, rx) = mpsc::channel::<Frame<Bytes>>(4);
        tokio::spawn(async move {
            let _ = tx
                .send(Frame::data(Bytes::from_static(b"part one, ")))
                .await;
            let _ = tx.send(Frame::data(Bytes::from_static(b"part two"))).await;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let _ = tx.send(Frame::trailers(trailers)).await;
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (Ok::<_, BoxError>(frame), rx))
        });
        Response::new(boxed(StreamBody::new(stream)))
    })
    .await;

    let (response, _) = client.send_request(get("/known"), true).expect("send");
    let resp = response.await.expect("response");
    assert_eq!(
        resp.headers()
            .get(header::CONTENT_LENGTH)
            .map(|v| v.as_bytes()),
        Some(&b"12"[..])
    );
    let (_, mut body) = resp.into_parts();
    assert_eq!(read_all(&mut body).await.0, b"twelve bytes");

    let (response, _) = client.send_request(get("/streamed"), true).expect("send");
    let resp = response.await.expect("response");
    assert!(resp.headers().get(header::CONTENT_LENGTH).is_none());
    let (_, mut body) = resp.into_parts();
    let (data, trailers) = read_all(&mut body).await;
    assert_eq!(data, b"part one, part two");
    let trailers = trailers.expect("trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
}

#[tokio::test]
async fn a_stream_reset_before_the_answer_drops_the_handler() {
    let (_trigger, drain) = trellis_runtime::drain::new();
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
    let (mut client, _server) = start(drain, move |_req: Request<RecvBody>| {
        // Sends when the handler is dropped, never answers.
        let guard = dropped_tx.lock().expect("lock").take();
        async move {
            let _guard = guard;
            std::future::pending::<Response<Body>>().await
        }
    })
    .await;
    let (response, mut stream) = client.send_request(get("/slow"), true).expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.send_reset(h2::Reason::CANCEL);
    drop(response);
    let dropped = tokio::time::timeout(Duration::from_secs(5), dropped_rx).await;
    assert!(
        matches!(dropped, Ok(Err(_))),
        "the handler was dropped when the client reset the stream"
    );
}

#[tokio::test]
async fn a_connect_answered_200_is_a_tunnel_both_ways() {
    let (_trigger, drain) = trellis_runtime::drain::new();
    let (mut client, _server) = start(drain, |mut req: Request<RecvBody>| async move {
        assert_eq!(req.method(), Method::CONNECT);
        let tunnel = req.extensions_mut().remove::<Tunnel>().expect("a tunnel");
        tokio::spawn(async move {
            let mut io = tunnel.opened().await.expect("opened");
            let mut all = Vec::new();
            if io.read_to_end(&mut all).await.is_ok() {
                let _ = io.write_all(b"echo: ").await;
                let _ = io.write_all(&all).await;
                let _ = io.shutdown().await;
            }
        });
        Response::new(empty())
    })
    .await;
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = "10.0.0.1:5432".parse().expect("authority");
    let (response, stream) = client.send_request(req, false).expect("send");
    let resp = response.await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut io = H2Io::new(stream, resp.into_body());
    let big = vec![7u8; 300 * 1024];
    io.write_all(&big).await.expect("write");
    io.shutdown().await.expect("half-close");
    let mut echoed = Vec::new();
    io.read_to_end(&mut echoed).await.expect("read");
    assert_eq!(&echoed[..6], b"echo: ");
    assert_eq!(echoed.len(), 6 + big.len());
}

#[tokio::test]
async fn a_connect_refused_gets_its_status_and_no_tunnel() {
    let (_trigger, drain) = trellis_runtime::drain::new();
    let (opened_tx, opened_rx) = oneshot::channel::<bool>();
    let opened_tx = Arc::new(Mutex::new(Some(opened_tx)));
    let (mut client, _server) = start(drain, move |mut req: Request<RecvBody>| {
        let opened_tx = opened_tx.lock().expect("lock").take();
        async move {
            let tunnel = req.extensions_mut().remove::<Tunnel>().expect("a tunnel");
            tokio::spawn(async move {
                let opened = tunnel.opened().await.is_some();
                if let Some(tx) = opened_tx {
                    let _ = tx.send(opened);
                }
            });
            let mut resp = Response::new(full("denied"));
            *resp.status_mut() = StatusCode::FORBIDDEN;
            resp
        }
    })
    .await;
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = "10.0.0.1:5432".parse().expect("authority");
    let (response, _stream) = client.send_request(req, false).expect("send");
    let resp = response.await.expect("response");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let (_, mut body) = resp.into_parts();
    assert_eq!(read_all(&mut body).await.0, b"denied");
    assert_eq!(opened_rx.await, Ok(false), "no tunnel after a refusal");
}

#[tokio::test]
async fn drain_sends_goaway_and_the_open_stream_still_finishes() {
    let (trigger, drain) = trellis_runtime::drain::new();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(Mutex::new(Some(release_rx)));
    let (mut client, server) = start(drain, move |_req: Request<RecvBody>| {
        let release = release_rx.lock().expect("lock").take();
        async move {
            if let Some(release) = release {
                let _ = release.await;
            }
            Response::new(full("finished"))
        }
    })
    .await;
    let (in_flight, _) = client.send_request(get("/slow"), true).expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let draining = tokio::spawn(trigger.drain(Duration::from_secs(10)));
    // GOAWAY arrives: the client may open no new stream.
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let ready = std::future::poll_fn(|cx| client.poll_ready(cx)).await;
            if ready.is_err() {
                return;
            }
            if let Ok((response, _)) = client.send_request(get("/late"), true) {
                if let Err(error) = response.await {
                    if error.is_go_away() || error.is_remote() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(refused.is_ok(), "no new stream after GOAWAY");
    let _ = release_tx.send(());
    let resp = in_flight.await.expect("the open stream is answered");
    let (_, mut body) = resp.into_parts();
    assert_eq!(read_all(&mut body).await.0, b"finished");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns once the last stream is done")
        .expect("serve");
    drop(draining);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_answering_pings_is_given_up() {
    let (_trigger, drain) = trellis_runtime::drain::new();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        serve(server_io, &drain, |_req: Request<RecvBody>| async {
            Response::new(empty())
        })
        .await;
    });
    // The client's connection does its handshake and is never polled again: no pongs.
    let (_send, _conn) = h2::client::handshake(client_io).await.expect("handshake");
    let ended = tokio::time::timeout(
        crate::serve::PING_INTERVAL + crate::serve::PING_TIMEOUT + Duration::from_secs(5),
        server,
    )
    .await;
    assert!(
        ended.is_ok(),
        "no pong within the timeout: the connection is closed"
    );
}
