//! The HTTP/2 client against real servers (hyper's, and `h2`'s where the test needs to steer
//! the connection): streamed bodies and trailers, giving up, GOAWAY, `CONNECT` streams and
//! keep-alive pings.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::pool::{Body, BoxError, Connector, H2Pool, boxed, empty, full};

/// A hyper HTTP/2 server on loopback calling `handler` for each request.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handler = handler.clone();
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

async fn connect(addr: SocketAddr) -> H2Conn {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    handshake(tcp, addr).await.expect("handshake")
}

/// Send `req` on `conn` and wait for the response headers.
async fn send(conn: &H2Conn, req: Request<Body>) -> Response<RecvBody> {
    let ready = conn.ready().await.expect("ready");
    ready.send(req).await.expect("response")
}

/// A body fed frame by frame through the returned sender; it ends when the sender is dropped.
fn channel_body() -> (mpsc::Sender<Frame<Bytes>>, Body) {
    let (tx, rx) = mpsc::channel::<Frame<Bytes>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (Ok::<_, BoxError>(frame), rx))
    });
    (tx, boxed(StreamBody::new(stream)))
}

#[tokio::test]
async fn a_streamed_body_and_its_trailers_reach_the_server() {
    // The server answers with the body it read and the trailer it got.
    let addr = serve(|req: Request<Incoming>| async move {
        let collected = req.into_body().collect().await.expect("request body");
        let sum = collected
            .trailers()
            .and_then(|t| t.get("x-sum"))
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default();
        let text = format!("{}|{sum}", String::from_utf8_lossy(&collected.to_bytes()));
        Response::new(full(text))
    })
    .await;
    let conn = connect(addr).await;
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        // Later than the stream opens: the pipe is then a task of its own.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = tx.send(Frame::data(Bytes::from_static(b"hello "))).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = tx.send(Frame::data(Bytes::from_static(b"world"))).await;
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("2"));
        let _ = tx.send(Frame::trailers(trailers)).await;
    });
    let req = Request::post(format!("http://{addr}/upload"))
        .body(body)
        .expect("request");
    let resp = send(&conn, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(text, "hello world|2");
}

#[tokio::test]
async fn a_caller_that_gives_up_resets_the_stream() {
    // The server reports how the request body ended: an error is the reset.
    let (seen_tx, seen_rx) = oneshot::channel::<bool>();
    let seen_tx = Arc::new(Mutex::new(Some(seen_tx)));
    let addr = serve(move |req: Request<Incoming>| {
        let seen_tx = seen_tx.clone();
        async move {
            let reset = req.into_body().collect().await.is_err();
            if let Some(tx) = seen_tx.lock().ok().and_then(|mut t| t.take()) {
                let _ = tx.send(reset);
            }
            Response::new(empty())
        }
    })
    .await;
    let conn = connect(addr).await;
    let (tx, body) = channel_body();
    let _ = tx.send(Frame::data(Bytes::from_static(b"part"))).await;
    let req = Request::post(format!("http://{addr}/upload"))
        .body(body)
        .expect("request");
    let ready = conn.ready().await.expect("ready");
    // The body never ends and the server waits for it: the caller gives up first.
    let gave_up = tokio::time::timeout(Duration::from_millis(100), ready.send(req)).await;
    assert!(gave_up.is_err(), "no response without the whole body");
    let reset = tokio::time::timeout(Duration::from_secs(5), seen_rx)
        .await
        .expect("the server saw the request end")
        .expect("reported");
    assert!(reset, "the stream was reset, not ended cleanly");
    drop(tx);
}

#[tokio::test]
async fn a_connection_that_sent_goaway_is_replaced() {
    // Each connection answers with its own number. `/hold` gets headers and a body that never
    // ends, and makes the server say GOAWAY: the connection stays open for that stream but
    // takes no new ones.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(tcp).await.expect("server handshake");
                let mut held = Vec::new();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let hold = req.uri().path() == "/hold";
                    let mut send = respond
                        .send_response(Response::new(()), false)
                        .expect("respond");
                    if hold {
                        held.push(send);
                        conn.graceful_shutdown();
                    } else {
                        let _ = send.send_data(Bytes::from(format!("conn {n}")), true);
                    }
                }
            });
        }
    });
    let pool = H2Pool::new(Connector::default());
    let via_pool = |path: &'static str| {
        let pool = &pool;
        async move {
            let conn = pool
                .sender(addr, None, Duration::from_secs(1))
                .await
                .expect("connection");
            let ready = pool
                .ready(conn, addr, None, Duration::from_secs(1))
                .await
                .expect("ready");
            let req = Request::get(format!("http://{addr}{path}"))
                .body(empty())
                .expect("request");
            ready.send(req).await.expect("response")
        }
    };
    let held = via_pool("/hold").await;
    // Time for the GOAWAY to arrive; the held stream keeps the connection open.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = via_pool("/").await;
    let text = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(text, "conn 2", "sent on a new connection, not refused");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    drop(held);
}

#[tokio::test]
async fn a_connect_stream_carries_bytes_both_ways_and_half_closes() {
    // CONNECT answered 200, then an echo of everything read, closed after the client's end.
    let addr = serve(|mut req: Request<Incoming>| async move {
        assert_eq!(req.method(), Method::CONNECT);
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut all = Vec::new();
                if io.read_to_end(&mut all).await.is_ok() {
                    let _ = io.write_all(&all).await;
                    let _ = io.shutdown().await;
                }
            }
        });
        Response::new(empty())
    })
    .await;
    let conn = connect(addr).await;
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = "10.0.0.1:5432".parse().expect("authority");
    let (resp, mut io) = conn
        .ready()
        .await
        .expect("ready")
        .connect(req)
        .await
        .expect("stream");
    assert_eq!(resp.status(), StatusCode::OK);
    let big = vec![7u8; 300 * 1024];
    io.write_all(b"ping ").await.expect("write");
    io.write_all(&big).await.expect("write");
    io.shutdown().await.expect("half-close");
    let mut echoed = Vec::new();
    io.read_to_end(&mut echoed).await.expect("read");
    assert_eq!(echoed.len(), 5 + big.len());
    assert_eq!(&echoed[..5], b"ping ");
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_answering_pings_is_given_up() {
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    // One server keeps its connection going; the other does its handshake and then is never
    // polled again, so pings go unanswered.
    let (alive_io, alive_server) = tokio::io::duplex(64 * 1024);
    let (dead_io, dead_server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(alive_server)
            .await
            .expect("handshake");
        while let Some(Ok(_)) = conn.accept().await {}
    });
    let (held_tx, held_rx) = oneshot::channel();
    tokio::spawn(async move {
        let conn = h2::server::handshake(dead_server).await.expect("handshake");
        let _ = held_tx.send(conn);
    });
    let alive = handshake(alive_io, addr).await.expect("client");
    let dead = handshake(dead_io, addr).await.expect("client");
    let _held = held_rx.await.expect("dead server's connection");
    tokio::time::sleep(PING_INTERVAL + PING_TIMEOUT + Duration::from_secs(5)).await;
    assert!(dead.is_closed(), "no pong within the timeout: closed");
    assert!(!alive.is_closed(), "pongs come: still open");
}

#[tokio::test]
async fn a_response_header_block_as_large_as_a_request_may_send_is_accepted() {
    // 40 KiB of response headers: over hyper's client default (16 KiB), under the 64 KiB the
    // proxy accepts in requests.
    let addr = serve(|_req: Request<Incoming>| async move {
        let mut resp = Response::new(empty());
        let big = HeaderValue::from_str(&"a".repeat(40 * 1024)).expect("value");
        resp.headers_mut().insert("x-big", big);
        resp
    })
    .await;
    let conn = connect(addr).await;
    let req = Request::get(format!("http://{addr}/"))
        .body(empty())
        .expect("request");
    let resp = send(&conn, req).await;
    assert_eq!(resp.headers()["x-big"].len(), 40 * 1024);
}
