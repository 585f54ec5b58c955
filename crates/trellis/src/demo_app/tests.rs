//! The demo app driven by real hyper clients over HTTP/1.1 and h2c, and a real TCP client.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, TE, TRAILER};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::*;

/// The backend calls: gRPC, TCP, through a proxy, failures.
mod calls;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body fed from the test, frame by frame.
struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

type TestBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

fn body(bytes: impl Into<Bytes>) -> TestBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    H1,
    H2,
}

const BOTH: [Proto; 2] = [Proto::H1, Proto::H2];

/// One client connection, HTTP/1.1 or h2c with prior knowledge.
enum Client {
    H1(hyper::client::conn::http1::SendRequest<TestBody>),
    H2(hyper::client::conn::http2::SendRequest<TestBody>),
}

impl Client {
    async fn connect(addr: SocketAddr, proto: Proto) -> Self {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        match proto {
            Proto::H1 => {
                let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                Client::H1(send)
            }
            Proto::H2 => {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                Client::H2(send)
            }
        }
    }

    /// Origin-form plus `Host` for HTTP/1.1, absolute URI (`:authority`) for h2.
    fn request(&self, addr: SocketAddr, method: Method, path: &str) -> http::request::Builder {
        match self {
            Client::H1(_) => Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, addr.to_string()),
            Client::H2(_) => Request::builder()
                .method(method)
                .uri(format!("http://{addr}{path}")),
        }
    }

    async fn send(&mut self, req: Request<TestBody>) -> Response<Incoming> {
        match self {
            Client::H1(send) => send.send_request(req).await.unwrap(),
            Client::H2(send) => send.send_request(req).await.unwrap(),
        }
    }
}

/// One request on a fresh connection; the whole response body.
async fn get(addr: SocketAddr, proto: Proto, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    let mut client = Client::connect(addr, proto).await;
    let req = client
        .request(addr, Method::GET, path)
        .body(body(""))
        .unwrap();
    let response = client.send(req).await;
    let (parts, incoming) = response.into_parts();
    let bytes = incoming.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, bytes)
}

fn config(name: &str) -> Config {
    Config {
        name: name.into(),
        version: "v1".into(),
        http: "127.0.0.1:0".parse().unwrap(),
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        backends: Vec::new(),
        proxy: None,
        timeout: Duration::from_secs(2),
    }
}

async fn start(name: &str) -> Bound {
    Bound::bind(config(name)).await.unwrap()
}

fn args(name: &str) -> DemoAppArgs {
    DemoAppArgs {
        name: name.to_owned(),
        version: "v2".to_owned(),
        http: "127.0.0.1:0".parse().unwrap(),
        tcp: None,
        ready_file: None,
        backends: Vec::new(),
        proxy: None,
        timeout: Duration::from_secs(2),
    }
}

fn pattern_byte(i: usize) -> u8 {
    (i % 251) as u8
}

#[tokio::test]
async fn root_reports_who_answered_and_the_request_as_seen() {
    let mut cfg = config("productpage");
    cfg.version = "v3".into();
    let app = Bound::bind(cfg).await.unwrap();

    for proto in BOTH {
        let mut client = Client::connect(app.http, proto).await;
        let req = client
            .request(app.http, Method::GET, "/?q=1&r=2")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .header("X-Upper", "v")
            .body(body(""))
            .unwrap();
        let response = client.send(req).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        // The call tree comes first, for people reading it.
        assert!(
            bytes.starts_with(b"{\n  \"service\": \"productpage\",\n  \"version\": \"v3\""),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["service"], "productpage");
        assert_eq!(json["version"], "v3");
        assert_eq!(json["ok"], true);
        assert_eq!(json["calls"], serde_json::json!([]));
        let expected_protocol = match proto {
            Proto::H1 => "HTTP/1.1",
            Proto::H2 => "HTTP/2.0",
        };
        assert_eq!(json["protocol"], expected_protocol);
        assert_eq!(json["method"], "GET");
        assert_eq!(json["path"], "/?q=1&r=2");
        assert_eq!(json["authority"], app.http.to_string());
        assert_eq!(json["headers"]["x-multi"], "a, b");
        assert_eq!(json["headers"]["x-upper"], "v");
    }
    app.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn headers_route_reports_only_headers() {
    let app = start("a").await;
    for proto in BOTH {
        let mut client = Client::connect(app.http, proto).await;
        let req = client
            .request(app.http, Method::GET, "/headers")
            .header("x-a", "1")
            .body(body(""))
            .unwrap();
        let response = client.send(req).await;
        assert_eq!(response.status(), StatusCode::OK);
        let json: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(json["headers"]["x-a"], "1");
        assert_eq!(json.as_object().unwrap().len(), 1, "{json:#}");
    }
    app.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn echo_streams_body_and_trailers_back() {
    let app = start("a").await;
    for proto in BOTH {
        let mut client = Client::connect(app.http, proto).await;
        let (tx, rx) = mpsc::channel(1);
        let req = client
            .request(app.http, Method::POST, "/echo")
            .header(CONTENT_TYPE, "application/x-test")
            // HTTP/1.1 response trailers need both of these.
            .header(TE, "trailers")
            .header(TRAILER, "x-checksum")
            .body(ChannelBody(rx).boxed_unsync())
            .unwrap();
        tx.send(Frame::data(Bytes::from_static(b"first")))
            .await
            .unwrap();
        let response = client.send(req).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/x-test");
        let mut incoming = response.into_body();

        // Each chunk comes back before the next is sent: nothing waits for the whole body.
        let frame = incoming.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap(), &Bytes::from_static(b"first"));
        tx.send(Frame::data(Bytes::from_static(b"second")))
            .await
            .unwrap();
        let frame = incoming.frame().await.unwrap().unwrap();
        assert_eq!(frame.data_ref().unwrap(), &Bytes::from_static(b"second"));

        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
        tx.send(Frame::trailers(trailers)).await.unwrap();
        drop(tx);
        let frame = incoming.frame().await.unwrap().unwrap();
        let trailers = frame
            .into_trailers()
            .unwrap_or_else(|_| panic!("{proto:?}: expected trailers"));
        assert_eq!(trailers["x-checksum"], "abc", "{proto:?}");
        assert!(incoming.frame().await.is_none());
    }
    app.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn echo_of_a_sized_body_keeps_its_length() {
    let app = start("a").await;
    for proto in BOTH {
        let mut client = Client::connect(app.http, proto).await;
        let req = client
            .request(app.http, Method::PUT, "/echo")
            .body(body("hello"))
            .unwrap();
        let response = client.send(req).await;
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
    }
    app.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn status_delay_and_not_found() {
    let app = start("a").await;
    for proto in BOTH {
        let (status, _, bytes) = get(app.http, proto, "/status/418").await;
        assert_eq!(
            (status, &bytes[..]),
            (StatusCode::IM_A_TEAPOT, &b"status 418\n"[..])
        );
        let (status, _, bytes) = get(app.http, proto, "/status/204").await;
        assert_eq!((status, bytes.len()), (StatusCode::NO_CONTENT, 0));
        let (status, _, _) = get(app.http, proto, "/status/abc").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = get(app.http, proto, "/status/99").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, _, bytes) = get(app.http, proto, "/delay/20").await;
        assert_eq!(
            (status, &bytes[..]),
            (StatusCode::OK, &b"delayed 20ms\n"[..])
        );
        let (status, _, _) = get(app.http, proto, "/delay/soon").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, _, bytes) = get(app.http, proto, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(bytes, "not found: /nope\n");
    }
    app.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn sha256_hashes_a_streamed_body() {
    let app = start("a").await;
    for proto in BOTH {
        let mut client = Client::connect(app.http, proto).await;
        let (tx, rx) = mpsc::channel(1);
        let req = client
            .request(app.http, Method::POST, "/sha256")
            .body(ChannelBody(rx).boxed_unsync())
            .unwrap();
        tokio::spawn(async move {
            for part in ["a", "b", "c"] {
                tx.send(Frame::data(Bytes::from_static(part.as_bytes())))
                    .await
                    .unwrap();
            }
        });
        let response = client.send(req).await;
        assert_eq!(response.status(), StatusCode::OK);
        let json: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        assert_eq!(json["bytes"], 3);
        assert_eq!(
            json["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );

        let (status, headers, _) = get(app.http, proto, "/sha256").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers["allow"], "POST");
    }
    app.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn bytes_streams_the_pattern_with_a_length() {
    let app = start("a").await;
    for proto in BOTH {
        // Several chunks, the last one partial.
        let n = 3 * 65536 + 1000;
        let (status, headers, bytes) = get(app.http, proto, &format!("/bytes/{n}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_LENGTH], n.to_string());
        assert_eq!(bytes.len(), n);
        assert!(bytes.iter().enumerate().all(|(i, b)| *b == pattern_byte(i)));

        let (status, headers, bytes) = get(app.http, proto, "/bytes/0").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_LENGTH], "0");
        assert!(bytes.is_empty());

        let (status, _, _) = get(app.http, proto, "/bytes/8589934593").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    app.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn tcp_sends_banner_then_echoes_until_eof() {
    let app = start("db").await;
    let mut stream = TcpStream::connect(app.tcp.unwrap()).await.unwrap();
    // Server first: the banner arrives before we send anything.
    let banner = b"trellis-demo db tcp\r\n";
    let mut got = vec![0; banner.len()];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(got, banner);

    stream.write_all(b"ping").await.unwrap();
    let mut got = [0; 4];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");

    stream.write_all(b" and more").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b" and more");
    app.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let app = start("a").await;
    let addr = app.http;
    let mut client = Client::connect(addr, Proto::H1).await;
    let (tx, rx) = mpsc::channel(1);
    let req = client
        .request(addr, Method::POST, "/echo")
        .body(ChannelBody(rx).boxed_unsync())
        .unwrap();
    tx.send(Frame::data(Bytes::from_static(b"before ")))
        .await
        .unwrap();
    // Response headers are back: the request is in flight.
    let response = client.send(req).await;
    let shutdown = tokio::spawn(app.shutdown(Duration::from_secs(5)));
    // New connections are refused once the listener is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tx.send(Frame::data(Bytes::from_static(b"after")))
        .await
        .unwrap();
    drop(tx);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, "before after");
    shutdown.await.unwrap();
}

#[test]
fn ready_file_is_written_whole() {
    let dir = std::env::temp_dir().join(format!("trellis-demo-ready-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ready.json");
    let http: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    write_ready_file(&path, http, None).unwrap();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"http": "127.0.0.1:8080", "tcp": null})
    );
    write_ready_file(&path, http, Some("127.0.0.1:9".parse().unwrap())).unwrap();
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["tcp"], "127.0.0.1:9");
    assert!(!dir.join("ready.json.tmp").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn backends_parse_by_scheme() {
    for ok in [
        "http://reviews:9080/x?y=1",
        "http://reviews",
        "grpc://catalog:50051",
        "grpc://catalog:50051/",
        "tcp://stock:7000",
        "tcp://[::1]:7000",
    ] {
        Backend::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e:#}"));
    }
    for (bad, why) in [
        ("https://x/", "not supported"),
        ("grpc://catalog", "missing the port"),
        ("tcp://stock", "missing the port"),
        ("grpc://catalog:50051/Demo/Info", "no path"),
        ("stock:7000", "scheme"),
        ("/no-host", "scheme"),
    ] {
        let error = format!("{:#}", Backend::parse(bad).unwrap_err());
        assert!(error.contains(why), "{bad}: {error}");
    }
}

#[test]
fn config_takes_the_flag_over_the_environment_and_reports_every_error() {
    let mut a = args("a");
    let cfg = Config::from_args(&a, Some("http://10.0.0.1:3128".to_owned())).unwrap();
    assert_eq!(cfg.proxy.unwrap().as_str(), "10.0.0.1:3128");
    assert_eq!(&*cfg.version, "v2");

    a.proxy = Some("127.0.0.1:15001".to_owned());
    let cfg = Config::from_args(&a, Some("http://10.0.0.1:3128".to_owned())).unwrap();
    assert_eq!(cfg.proxy.unwrap().as_str(), "127.0.0.1:15001");

    a.backends = vec![
        "https://x/".to_owned(),
        "http://ok:81".to_owned(),
        "grpc://ok:82".to_owned(),
        "tcp://ok:83".to_owned(),
        "/no-host".to_owned(),
    ];
    a.proxy = Some("socks5://p:1080".to_owned());
    let error = Config::from_args(&a, None).unwrap_err().to_string();
    assert!(error.contains("\"https://x/\""), "{error}");
    assert!(error.contains("\"/no-host\""), "{error}");
    assert!(error.contains("--proxy \"socks5://p:1080\""), "{error}");
    assert!(!error.contains("ok:8"), "{error}");
}

/// An address nothing listens on (a port we bound and released).
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}
