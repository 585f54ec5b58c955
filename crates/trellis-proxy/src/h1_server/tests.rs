use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::serve;
use crate::pool::{Body, BoxError, boxed, empty, full};

/// What `serve` returned: `Some(bytes)` when it handed the connection over with those bytes.
type Outcome = Option<Bytes>;

/// A handler that answers `200` with "METHOD PATH BODY" and records each request's headers.
fn echo(
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
) -> impl Fn(Request<Body>) -> std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
    move |req: Request<Body>| {
        let seen = seen.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            seen.lock().unwrap().push(parts.headers.clone());
            let body = body.collect().await.unwrap().to_bytes();
            let text = format!(
                "{} {} {}",
                parts.method,
                parts.uri,
                String::from_utf8_lossy(&body)
            );
            Response::new(full(text))
        })
    }
}

/// Serve one end of an in-memory connection with `handler`; the other end is the client.
fn start<H, F>(handler: H, timeout: Duration) -> (DuplexStream, JoinHandle<Outcome>, Drain)
where
    H: Fn(Request<Body>) -> F + Send + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let (client, server) = tokio::io::duplex(256 * 1024);
    let (trigger, watcher) = trellis_runtime::drain::new();
    let task = tokio::spawn(async move {
        serve(server, Bytes::new(), timeout, &watcher, handler)
            .await
            .map(|(rest, _io)| rest)
    });
    (client, task, Drain(Some(trigger)))
}

/// Holds the drain trigger for the test's length (dropping it would not drain).
struct Drain(Option<trellis_runtime::DrainTrigger>);

/// Read from `client` until `n` complete responses (head and body by Content-Length or
/// chunked) have arrived, and return them as text.
async fn read_responses(client: &mut DuplexStream, n: usize) -> Vec<String> {
    read_responses_to(client, n, false).await
}

/// As [`read_responses`]; `head` for responses to `HEAD` (no body whatever their length).
async fn read_responses_to(client: &mut DuplexStream, n: usize, head: bool) -> Vec<String> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let mut chunk = [0u8; 4096];
        let got = tokio::time::timeout(Duration::from_secs(5), client.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            got > 0,
            "connection closed after {out:?} and {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..got]);
        while let Some(len) = complete_response(&buf, head) {
            out.push(String::from_utf8_lossy(&buf[..len]).into_owned());
            buf.drain(..len);
        }
    }
    out
}

/// The length of the first complete response in `buf`, if there is one.
fn complete_response(buf: &[u8], head_request: bool) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = resp.parse(buf).ok()? else {
        return None;
    };
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().unwrap();
        let code = resp.code.unwrap();
        let body = if code == 204 || code == 304 || head_request {
            0
        } else {
            len
        };
        return (buf.len() >= head + body).then_some(head + body);
    }
    if header("transfer-encoding").is_some() {
        let end = buf[head..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(head + end + 5);
    }
    Some(head)
}

async fn eof(client: &mut DuplexStream) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest)).await,
        Ok(Ok(0))
    )
}

#[tokio::test]
async fn ordinary_requests_share_one_connection() {
    let seen = Arc::default();
    let (mut client, task, _drain) = start(echo(Arc::clone(&seen)), Duration::from_secs(10));
    client
        .write_all(b"GET /one?x=1 HTTP/1.1\r\nHost: a.example\r\nX-Two: 2\r\nX-Two: 3\r\n\r\n")
        .await
        .unwrap();
    let first = read_responses(&mut client, 1).await;
    client
        .write_all(b"DELETE /two HTTP/1.1\r\nhost: a.example\r\n\r\n")
        .await
        .unwrap();
    let second = read_responses(&mut client, 1).await;

    assert!(first[0].starts_with("HTTP/1.1 200 OK\r\n"), "{first:?}");
    assert!(first[0].contains("content-length: 13\r\n"), "{first:?}");
    assert!(first[0].contains("\r\ndate: "), "{first:?}");
    assert!(first[0].ends_with("\r\n\r\nGET /one?x=1 "), "{first:?}");
    assert!(second[0].ends_with("DELETE /two "), "{second:?}");
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let values: Vec<_> = seen[0].get_all("x-two").iter().collect();
    assert_eq!(values, ["2", "3"]);
    assert_eq!(seen[1]["host"], "a.example");
    drop(client);
    assert_eq!(
        task.await.unwrap(),
        None,
        "served to the end, not handed over"
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (mut client, _task, _drain) = start(echo(Arc::default()), Duration::from_secs(10));
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let got = read_responses(&mut client, 3).await;
    assert!(got[0].ends_with("GET /a "), "{got:?}");
    assert!(got[1].ends_with("POST /b hi"), "{got:?}");
    assert!(got[2].ends_with("GET /c "), "{got:?}");
}

#[tokio::test]
async fn a_body_in_pieces_reaches_the_handler_whole() {
    let (mut client, _task, _drain) = start(echo(Arc::default()), Duration::from_secs(10));
    client
        .write_all(b"PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.write_all(b" world").await.unwrap();
    let got = read_responses(&mut client, 1).await;
    assert!(got[0].ends_with("PUT /p hello world"), "{got:?}");
}

/// Chunked bodies, upgrades, `Expect`, HTTP/1.0 and malformed heads are hyper's: the
/// connection is handed over with the request's bytes untouched, after the requests served.
#[tokio::test]
async fn other_requests_hand_the_connection_to_hyper_with_their_bytes() {
    let others: [&[u8]; 8] = [
        b"GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
        b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    ];
    for other in others {
        let (mut client, task, _drain) = start(echo(Arc::default()), Duration::from_secs(10));
        client
            .write_all(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        read_responses(&mut client, 1).await;
        client.write_all(other).await.unwrap();
        let rest = task.await.unwrap();
        assert_eq!(
            rest.as_deref(),
            Some(other),
            "{}",
            String::from_utf8_lossy(other)
        );
    }
    // A body over the limit is streamed by hyper too (no need to send it for the handover).
    let (mut client, task, _drain) = start(echo(Arc::default()), Duration::from_secs(10));
    let big = format!(
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        super::MAX_BODY + 1
    );
    client.write_all(big.as_bytes()).await.unwrap();
    assert_eq!(task.await.unwrap().as_deref(), Some(big.as_bytes()));
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_on_any_request() {
    let (mut client, task, _drain) = start(echo(Arc::default()), Duration::from_secs(10));
    client
        .write_all(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    read_responses(&mut client, 1).await;
    client
        .write_all(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .await
        .unwrap();
    let got = read_responses(&mut client, 1).await;
    assert!(
        got[0].starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{got:?}"
    );
    assert!(
        eof(&mut client).await,
        "connection left open after a smuggling attempt"
    );
    assert_eq!(task.await.unwrap(), None);
}

#[tokio::test]
async fn responses_are_framed_as_their_bodies_and_methods_require() {
    let handler = |req: Request<Body>| async move {
        match req.uri().path() {
            // Size unknown in advance: chunked.
            "/stream" => {
                let chunks = futures_util::stream::iter(["ab", "cde"].map(|s| {
                    Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(s.as_bytes())))
                }));
                Response::new(boxed(http_body_util::StreamBody::new(chunks)))
            }
            // A HEAD keeps the length a GET would have, and sends no body.
            "/head" => Response::builder()
                .header("content-length", "1234")
                .body(empty())
                .unwrap(),
            // No body and no length for a 204, whatever the upstream said.
            _ => Response::builder()
                .status(StatusCode::NO_CONTENT)
                .header("content-length", "0")
                .header("transfer-encoding", "chunked")
                .body(empty())
                .unwrap(),
        }
    };
    let (mut client, _task, _drain) = start(handler, Duration::from_secs(10));
    client
        .write_all(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let stream = read_responses(&mut client, 1).await;
    client
        .write_all(b"HEAD /head HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let head = read_responses_to(&mut client, 1, true).await;
    client
        .write_all(b"GET /none HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let none = read_responses(&mut client, 1).await;

    assert!(
        stream[0].contains("\r\ntransfer-encoding: chunked\r\n"),
        "{stream:?}"
    );
    assert!(
        stream[0].ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
        "{stream:?}"
    );
    assert!(head[0].contains("\r\ncontent-length: 1234\r\n"), "{head:?}");
    assert!(head[0].ends_with("\r\n\r\n"), "{head:?}");
    assert!(
        none[0].starts_with("HTTP/1.1 204 No Content\r\n"),
        "{none:?}"
    );
    assert!(!none[0].contains("content-length"), "{none:?}");
    assert!(!none[0].contains("transfer-encoding"), "{none:?}");
    // The connection is still in step: one more request works.
    client
        .write_all(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert!(read_responses(&mut client, 1).await[0].ends_with("0\r\n\r\n"));
}

#[tokio::test]
async fn connection_close_is_answered_then_the_connection_closes() {
    let (mut client, task, _drain) = start(echo(Arc::default()), Duration::from_secs(10));
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = read_responses(&mut client, 1).await;
    assert!(got[0].contains("\r\nconnection: close\r\n"), "{got:?}");
    assert!(eof(&mut client).await);
    assert_eq!(task.await.unwrap(), None);
}

#[tokio::test]
async fn a_response_body_longer_than_its_length_closes_the_connection() {
    let handler = |_req: Request<Body>| async {
        Response::builder()
            .header("content-length", "2")
            .body(full("too long"))
            .unwrap()
    };
    let (mut client, task, _drain) = start(handler, Duration::from_secs(10));
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    client.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("too long"), "{text}");
    assert_eq!(task.await.unwrap(), None);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_request() {
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    let guard = Arc::new(Mutex::new(Some(dropped_tx)));
    let handler = move |_req: Request<Body>| {
        // Held by the request's future: dropped with it.
        let held = guard.lock().unwrap().take();
        async move {
            let _held = held;
            std::future::pending::<()>().await;
            Response::new(empty())
        }
    };
    let (mut client, task, _drain) = start(handler, Duration::from_secs(10));
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), dropped_rx)
        .await
        .expect("the request was dropped")
        .unwrap_err();
    assert_eq!(task.await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_head_that_does_not_complete_in_time_closes_the_connection() {
    let (mut client, task, _drain) = start(echo(Arc::default()), Duration::from_secs(10));
    // A served request first: the timeout counts from the start of each head.
    tokio::time::sleep(Duration::from_secs(8)).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    read_responses(&mut client, 1).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!task.is_finished(), "closed before its timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(task.await.unwrap(), None);
}

#[tokio::test]
async fn drain_closes_an_idle_connection() {
    let (mut client, task, mut drain) = start(echo(Arc::default()), Duration::from_secs(10));
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    read_responses(&mut client, 1).await;
    let trigger = drain.0.take().unwrap();
    let draining = tokio::spawn(trigger.drain(Duration::from_secs(5)));
    assert_eq!(task.await.unwrap(), None);
    assert!(eof(&mut client).await);
    assert!(draining.await.unwrap().is_complete());
}
