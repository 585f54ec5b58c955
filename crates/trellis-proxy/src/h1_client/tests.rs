use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::pool::empty;

/// What the test server answers to one request head (given as text); `None` closes the
/// connection without answering.
type Script = fn(&str) -> Option<Vec<u8>>;

struct Server {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

/// A server that answers each request head by `script`, on keep-alive connections.
async fn server(script: Script) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (accepted.clone(), heads.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = Vec::new();
                loop {
                    let Ok(n) = conn.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    read.extend_from_slice(&buf[..n]);
                    while let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&read[..end + 4]).into_owned();
                        read.drain(..end + 4);
                        seen.lock().unwrap().push(head.clone());
                        let Some(reply) = script(&head) else {
                            return;
                        };
                        if conn.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Server {
        addr,
        accepted,
        heads,
    }
}

/// A server that answers each connection's first request with `reply`, then closes it.
async fn one_shot(reply: &'static [u8]) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(reply).await;
            });
        }
    });
    Server {
        addr,
        accepted,
        heads: Arc::default(),
    }
}

/// Send `method path` to `server` through `idle`, as the pool does.
async fn call(
    idle: &Arc<Idle>,
    server: &Server,
    method: Method,
    path: &str,
) -> Result<Response<RecvH1>, SendError> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "app.test")
        .header("x-custom", "1")
        .body(empty())
        .unwrap();
    send_to(idle, server, req).await
}

/// Send `req` to `server` through `idle`, as the pool does.
async fn send_to(
    idle: &Arc<Idle>,
    server: &Server,
    req: Request<Body>,
) -> Result<Response<RecvH1>, SendError> {
    assert!(handles(&req));
    let addr = server.addr;
    let open = || async move {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Ok(Conn::new(tcp))
    };
    let (conn, reused) = match idle.take(addr) {
        Some(conn) => (conn, true),
        None => (open().await.unwrap(), false),
    };
    send(idle, addr, req, conn, reused, open).await
}

async fn text(resp: Response<RecvH1>) -> String {
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn requests_reuse_a_connection_once_its_body_has_ended() {
    let server = server(|head| {
        let reply = if head.starts_with("HEAD") {
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
        } else {
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: yes\r\n\r\nhello"
        };
        Some(reply.as_bytes().to_vec())
    })
    .await;
    let idle = Arc::default();
    for _ in 0..3 {
        let resp = call(&idle, &server, Method::GET, "/a?b=c").await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-app"], "yes");
        assert_eq!(resp.body().size_hint().exact(), Some(5));
        assert_eq!(text(resp).await, "hello");
    }
    // A HEAD response has no body whatever its length says.
    let resp = call(&idle, &server, Method::HEAD, "/").await.unwrap();
    assert!(resp.body().is_end_stream());
    assert_eq!(text(resp).await, "");
    assert!(call(&idle, &server, Method::GET, "/").await.is_ok());
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);

    let heads = server.heads.lock().unwrap();
    assert!(
        heads[0].starts_with("GET /a?b=c HTTP/1.1\r\nhost: app.test\r\nx-custom: 1\r\n\r\n"),
        "{heads:?}"
    );
}

#[tokio::test]
async fn an_absolute_target_without_host_goes_in_origin_form_with_its_authority_as_host() {
    // What a request that came as HTTP/2 looks like: `:authority` in the URI, no `Host`.
    let server = server(|_| Some(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec())).await;
    let req = Request::get("http://app.test:8080/a?b=c")
        .header("x-custom", "1")
        .body(empty())
        .unwrap();
    let resp = send_to(&Arc::default(), &server, req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let heads = server.heads.lock().unwrap();
    assert!(
        heads[0].starts_with("GET /a?b=c HTTP/1.1\r\nhost: app.test:8080\r\nx-custom: 1\r\n\r\n"),
        "{heads:?}"
    );
}

#[tokio::test]
async fn a_body_method_without_a_body_says_so() {
    let server = server(|_| Some(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec())).await;
    let idle = Arc::default();
    let resp = call(&idle, &server, Method::POST, "/p").await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(text(resp).await, "");
    let heads = server.heads.lock().unwrap();
    assert!(heads[0].contains("\r\ncontent-length: 0\r\n"), "{heads:?}");
}

#[tokio::test]
async fn chunked_bodies_are_decoded_and_the_connection_kept() {
    let server = server(|_| {
        Some(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let idle = Arc::default();
    for _ in 0..3 {
        let resp = call(&idle, &server, Method::GET, "/").await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "the 100 is skipped");
        assert_eq!(text(resp).await, "Wikipedia");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_to_the_end_of_the_connection_is_read_and_the_connection_not_reused() {
    let server = one_shot(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await;
    let idle = Arc::default();
    for _ in 0..2 {
        let resp = call(&idle, &server, Method::GET, "/").await.unwrap();
        assert_eq!(text(resp).await, "until the end");
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_closes_its_connection() {
    let server =
        server(|_| Some(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial".to_vec()))
            .await;
    let idle = Arc::default();
    for _ in 0..2 {
        let resp = call(&idle, &server, Method::GET, "/").await.unwrap();
        drop(resp);
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_truncated_body_is_an_error_not_an_end() {
    let server = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").await;
    let resp = call(&Arc::default(), &server, Method::GET, "/")
        .await
        .unwrap();
    let error = resp.into_body().collect().await.expect_err("truncated");
    assert!(error.to_string().contains("closed"), "{error}");
}

#[tokio::test]
async fn malformed_responses_are_errors() {
    let scripts: [Script; 4] = [
        |_| Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok".to_vec()),
        |_| Some(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n".to_vec()),
        |_| Some(b"NOT HTTP AT ALL\r\n\r\n".to_vec()),
        |_| Some(b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec()),
    ];
    for script in scripts {
        let server = server(script).await;
        let idle = Arc::default();
        let error = call(&idle, &server, Method::GET, "/")
            .await
            .expect_err("invalid");
        assert!(
            matches!(error, SendError::Exchange(H1Error::Invalid(_))),
            "{error:?}"
        );
    }
    // A bad chunk size is an error in the body.
    let server =
        server(|_| Some(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec()))
            .await;
    let resp = call(&Arc::default(), &server, Method::GET, "/")
        .await
        .unwrap();
    assert!(resp.into_body().collect().await.is_err());
}

#[tokio::test]
async fn a_kept_alive_connection_the_app_closed_is_retried_only_when_idempotent() {
    // Answers, then closes the connection on the next request without a word.
    let server = server(|head| {
        head.contains("x-custom")
            .then(|| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
    })
    .await;
    let idle: Arc<Idle> = Arc::default();
    let resp = call(&idle, &server, Method::GET, "/").await.unwrap();
    assert_eq!(text(resp).await, "ok");
    // The connection is idle and open: the server will close it on the next request, which
    // can only be noticed after writing. Send one that the server closes on.
    let addr = server.addr;
    let conn = idle.take(addr).expect("pooled");
    let req = Request::builder()
        .method(Method::DELETE)
        .uri("/")
        .header(HOST, "app.test")
        .body(empty())
        .unwrap();
    let reconnects = Arc::new(AtomicUsize::new(0));
    let counted = reconnects.clone();
    let open = move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(Conn::new(TcpStream::connect(addr).await.expect("connect")))
        }
    };
    // Without x-custom the server closes: DELETE is idempotent, so it is tried once more on a
    // new connection (where the server closes again: an error, after one retry).
    let error = send(&idle, addr, req, conn, true, open)
        .await
        .expect_err("closed");
    assert!(
        matches!(error, SendError::Exchange(H1Error::Closed)),
        "{error:?}"
    );
    assert_eq!(reconnects.load(Ordering::SeqCst), 1);

    // A POST is not retried.
    let resp = call(&idle, &server, Method::GET, "/").await.unwrap();
    assert_eq!(text(resp).await, "ok");
    let conn = idle.take(addr).expect("pooled");
    let req = Request::builder()
        .method(Method::POST)
        .uri("/")
        .header(HOST, "app.test")
        .body(empty())
        .unwrap();
    let counted = reconnects.clone();
    let open = move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(Conn::new(TcpStream::connect(addr).await.expect("connect")))
        }
    };
    let error = send(&idle, addr, req, conn, true, open)
        .await
        .expect_err("closed");
    assert!(
        matches!(error, SendError::Exchange(H1Error::Closed)),
        "{error:?}"
    );
    assert_eq!(reconnects.load(Ordering::SeqCst), 1, "POST retried");
}

#[tokio::test]
async fn an_idle_connection_the_app_closed_is_not_reused() {
    let server = server(|_| Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())).await;
    let idle: Arc<Idle> = Arc::default();
    let resp = call(&idle, &server, Method::GET, "/").await.unwrap();
    assert_eq!(text(resp).await, "ok");
    let mut conn = idle.take(server.addr).expect("pooled");
    // Make the app close it: the test server closes a connection once its client has (as an
    // app's keep-alive timeout would, unprompted).
    conn.io.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    idle.put(server.addr, conn);
    assert!(
        idle.take(server.addr).is_none(),
        "a closed connection was handed out"
    );
}

#[test]
fn requests_with_bodies_or_upgrades_are_left_to_hyper() {
    let with =
        |name: &str, value: &str| Request::get("/").header(name, value).body(empty()).unwrap();
    assert!(handles(&with("accept", "*/*")));
    assert!(!handles(&with("upgrade", "websocket")));
    assert!(!handles(&with("connection", "upgrade")));
    assert!(!handles(&with("expect", "100-continue")));
    assert!(!handles(&with("transfer-encoding", "chunked")));
    let post = |body| Request::post("/").body(body).unwrap();
    assert!(handles(&post(crate::pool::full("short"))));
    let long = Bytes::from(vec![b'x'; MAX_BODY + 1]);
    assert!(!handles(&post(crate::pool::full(long))));
    let unsized_body = http_body_util::StreamBody::new(futures_util::stream::empty::<
        Result<Frame<Bytes>, BoxError>,
    >());
    let unsized_body = crate::pool::boxed(unsized_body);
    assert!(!handles(&post(unsized_body)));
}

#[tokio::test]
async fn a_short_body_goes_with_its_length() {
    // Answers once the whole body (by its Content-Length) is there, echoing it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let (head, body) = loop {
            let n = conn.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&got[..end + 4]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            if got.len() >= end + 4 + len {
                break (head, got[end + 4..end + 4 + len].to_vec());
            }
        };
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            head.len() + body.len()
        );
        conn.write_all(reply.as_bytes()).await.unwrap();
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&body).await.unwrap();
    });
    let req = Request::post("/upload")
        .header(HOST, "app.test")
        // A stale length from the client side is not what goes on the wire.
        .header(CONTENT_LENGTH, "99")
        .body(crate::pool::full("a short body"))
        .unwrap();
    assert!(handles(&req));
    let conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    let never = || async { unreachable!("not reused, not retried") };
    let resp = send(&Arc::default(), addr, req, conn, false, never)
        .await
        .unwrap();
    let echoed = text(resp).await;
    assert!(
        echoed.starts_with("POST /upload HTTP/1.1\r\nhost: app.test\r\n"),
        "{echoed}"
    );
    assert!(
        echoed.contains("\r\ncontent-length: 12\r\n\r\na short body"),
        "{echoed}"
    );
    assert!(!echoed.contains("99"), "{echoed}");
}

#[tokio::test(start_paused = true)]
async fn returning_a_connection_sweeps_out_closed_and_expired_ones() {
    let ok: Script = |_| Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec());
    let (a, b) = (server(ok).await, server(ok).await);
    let idle: Arc<Idle> = Arc::default();
    for server in [&a, &b] {
        let resp = call(&idle, server, Method::GET, "/").await.unwrap();
        assert_eq!(text(resp).await, "ok");
    }
    // The app behind `a` closes its idle connection.
    let mut conn = idle.take(a.addr).expect("pooled");
    conn.io.shutdown().await.unwrap();
    idle.put(a.addr, conn);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The next return after the sweep interval closes it; `b`'s live one stays.
    tokio::time::advance(SWEEP).await;
    let resp = call(&idle, &b, Method::GET, "/").await.unwrap();
    assert_eq!(text(resp).await, "ok");
    let inner = idle.inner.lock().unwrap();
    assert!(!inner.conns.contains_key(&a.addr), "closed connection kept");
    assert_eq!(inner.conns.get(&b.addr).map(Vec::len), Some(1));
}

#[tokio::test]
async fn framing_and_keep_alive_headers_stay_out_of_the_response_but_named_ones_wait_for_the_strip()
{
    let server = server(|_| {
        Some(
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nX-App: 1\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let idle = Arc::default();
    let resp = call(&idle, &server, Method::GET, "/").await.unwrap();
    assert_eq!(resp.headers().len(), 1, "{:?}", resp.headers());
    assert_eq!(resp.headers()["x-app"], "1");
    assert_eq!(text(resp).await, "ok");

    let server = one_shot(b"HTTP/1.1 200 OK\r\nConnection: close, x-secret\r\nX-Secret: 1\r\nContent-Length: 2\r\n\r\nok").await;
    let resp = call(&Arc::default(), &server, Method::GET, "/")
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["connection"],
        "close, x-secret",
        "a Connection that names other headers is left for strip_hop_by_hop"
    );
    assert_eq!(resp.headers()["content-length"], "2");
    assert_eq!(text(resp).await, "ok");

    // Chunked wins over Content-Length, which is not passed on with the decoded body.
    let server = one_shot(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\nX-App: 1\r\n\r\n2\r\nok\r\n0\r\n\r\n").await;
    let resp = call(&Arc::default(), &server, Method::GET, "/")
        .await
        .unwrap();
    assert_eq!(resp.headers().get("content-length"), None);
    assert_eq!(resp.headers().len(), 1, "{:?}", resp.headers());
    assert_eq!(text(resp).await, "ok");
}
