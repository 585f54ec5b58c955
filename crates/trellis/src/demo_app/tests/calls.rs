//! The demo app as a client: `http://`, `grpc://` and `tcp://` backends called directly and
//! through a forward proxy, nested reports, the text tree, failures and timeouts; and its
//! gRPC service called by a real tonic client.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::header::ACCEPT;
use hyper::service::service_fn;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use trellis_api::demo::v1::demo_client::DemoClient;
use trellis_api::demo::v1::{EchoRequest, InfoRequest};

use super::*;
use crate::demo_app::routes;

/// The small shop of the demo, every app in this process: `stock` serves TCP, `catalog`
/// calls it, `reviews` (v2) calls nothing.
struct Shop {
    stock: Bound,
    catalog: Bound,
    reviews: Bound,
}

impl Shop {
    async fn start() -> Shop {
        let stock = start("stock").await;
        let mut catalog = config("catalog");
        catalog.backends = vec![backend(&format!("tcp://{}", stock.tcp.unwrap()))];
        let catalog = Bound::bind(catalog).await.unwrap();
        let mut reviews = config("reviews");
        reviews.version = "v2".into();
        let reviews = Bound::bind(reviews).await.unwrap();
        Shop {
            stock,
            catalog,
            reviews,
        }
    }

    /// `frontend`, calling reviews over HTTP and catalog over gRPC, plus `more`.
    async fn frontend(&self, more: &[String]) -> Bound {
        let mut cfg = config("frontend");
        cfg.backends = [
            format!("http://{}/", self.reviews.http),
            format!("grpc://{}", self.catalog.http),
        ]
        .iter()
        .chain(more)
        .map(|url| backend(url))
        .collect();
        Bound::bind(cfg).await.unwrap()
    }

    async fn stop(self) {
        for app in [self.stock, self.catalog, self.reviews] {
            app.shutdown(Duration::from_secs(1)).await;
        }
    }
}

/// A forward proxy for the tests. Whatever the request names, HTTP/1.1 (absolute form) and
/// h2c requests, gRPC included, are answered by a demo app service of its own called `proxy`;
/// `CONNECT host:port` opens a real tunnel. Records each request as
/// `METHOD AUTHORITY VERSION`, and counts connections.
struct TestProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl TestProxy {
    async fn start() -> TestProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = Arc::new(Service {
            name: "proxy".into(),
            version: "v1".into(),
            backends: Backends::new(Vec::new(), None, Duration::from_secs(2), String::new()),
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen2, connections2) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                connections2.fetch_add(1, Ordering::SeqCst);
                let (service, seen) = (service.clone(), seen2.clone());
                let handler =
                    service_fn(move |req| proxy_request(service.clone(), seen.clone(), req));
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), handler)
                        .await;
                });
            }
        });
        TestProxy {
            addr,
            seen,
            connections,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn proxy_addr(&self) -> ProxyAddr {
        ProxyAddr::parse(&format!("http://{}", self.addr)).unwrap()
    }
}

async fn proxy_request(
    service: Arc<Service>,
    seen: Arc<Mutex<Vec<String>>>,
    mut req: Request<Incoming>,
) -> Result<Response<routes::Body>, Infallible> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    seen.lock()
        .unwrap()
        .push(format!("{} {authority} {:?}", req.method(), req.version()));
    if req.method() != Method::CONNECT {
        return routes::handle(service, req).await;
    }
    let mut response = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    match TcpStream::connect(&authority).await {
        Ok(mut server) => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut client = TokioIo::new(upgrade.await.unwrap());
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_GATEWAY,
    }
    Ok(response)
}

fn backend(url: &str) -> Backend {
    Backend::parse(url).unwrap()
}

/// `GET path` over HTTP/1.1 with extra headers; the status and the body as JSON.
async fn get_json(addr: SocketAddr, path: &str) -> (StatusCode, Value) {
    let (status, _, bytes) = get(addr, Proto::H1, path).await;
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    (status, json)
}

async fn grpc_client(addr: SocketAddr) -> DemoClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    DemoClient::new(channel)
}

/// A listener that accepts connections and never says a word (nor closes them).
async fn silent_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test]
async fn grpc_info_and_echo_are_served_beside_http() {
    let shop = Shop::start().await;
    let mut client = grpc_client(shop.catalog.http).await;

    let info = client.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (info.service.as_str(), info.version.as_str()),
        ("catalog", "v1")
    );
    assert!(info.ok, "{info:?}");
    let [call] = &info.calls[..] else {
        panic!("one call expected: {info:?}")
    };
    assert_eq!(call.target, format!("tcp://{}", shop.stock.tcp.unwrap()));
    assert_eq!(call.protocol, "tcp");
    assert!(call.ok && call.error.is_empty(), "{call:?}");
    assert_eq!(call.banner, "trellis-demo stock tcp");
    assert_eq!(call.status, None);
    assert!(call.latency_ms > 0.0, "{call:?}");

    let echo = client
        .echo(EchoRequest {
            message: "hello".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            echo.message.as_str(),
            echo.service.as_str(),
            echo.version.as_str()
        ),
        ("hello", "catalog", "v1")
    );

    // The HTTP routes are still there, on the same port.
    let (status, json) = get_json(shop.catalog.http, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["calls"][0]["banner"], "trellis-demo stock tcp");
    shop.stop().await;
}

#[tokio::test]
async fn http_grpc_and_tcp_backends_called_directly_make_a_nested_tree() {
    let shop = Shop::start().await;
    // A JSON answer that is not a demo app's report comes back as `body`.
    let headers = format!("http://{}/headers", shop.reviews.http);
    let frontend = shop.frontend(std::slice::from_ref(&headers)).await;

    for proto in BOTH {
        let (status, _, bytes) = get(frontend.http, proto, "/").await;
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(status, StatusCode::OK, "{json:#}");
        assert_eq!(json["service"], "frontend");
        assert_eq!(json["ok"], true, "{json:#}");
        let calls = json["calls"].as_array().unwrap();
        assert_eq!(calls.len(), 3, "{json:#}");

        let reviews = &calls[0];
        assert_eq!(reviews["target"], format!("http://{}/", shop.reviews.http));
        assert_eq!(reviews["protocol"], "http");
        assert_eq!(reviews["ok"], true);
        assert_eq!(reviews["status"], 200);
        assert!(reviews["latency_ms"].as_f64().unwrap() > 0.0, "{reviews}");
        assert_eq!(reviews["reply"]["service"], "reviews");
        assert_eq!(reviews["reply"]["version"], "v2");
        // A nested report is the tree only, not the backend's view of our request.
        assert!(reviews["reply"].get("headers").is_none(), "{reviews}");

        let catalog = &calls[1];
        assert_eq!(catalog["protocol"], "grpc");
        assert_eq!(catalog["ok"], true, "{catalog}");
        assert_eq!(catalog["status"], 0);
        assert_eq!(catalog["reply"]["service"], "catalog");
        let stock = &catalog["reply"]["calls"][0];
        assert_eq!(stock["protocol"], "tcp");
        assert_eq!(stock["ok"], true, "{stock}");
        assert_eq!(stock["banner"], "trellis-demo stock tcp");

        let headers_call = &calls[2];
        assert_eq!(headers_call["target"], headers.as_str());
        assert!(headers_call.get("reply").is_none(), "{headers_call}");
        assert_eq!(
            headers_call["body"]["headers"]["user-agent"],
            "trellis-demo/frontend (v1)"
        );
        assert_eq!(
            headers_call["body"]["headers"]["host"],
            shop.reviews.http.to_string()
        );
    }
    frontend.shutdown(Duration::from_secs(1)).await;
    shop.stop().await;
}

#[tokio::test]
async fn text_format_draws_the_call_tree() {
    let shop = Shop::start().await;
    let frontend = shop.frontend(&[]).await;
    let expected = [
        "frontend v1: ok".to_owned(),
        format!(
            "├─ http://{}/ → reviews v2: ok (HTTP 200, ",
            shop.reviews.http
        ),
        format!(
            "└─ grpc://{} → catalog v1: ok (gRPC Ok, ",
            shop.catalog.http
        ),
        format!(
            "   └─ tcp://{}: ok (banner \"trellis-demo stock tcp\", ",
            shop.stock.tcp.unwrap()
        ),
    ];
    for accept in [None, Some("text/plain")] {
        let mut client = Client::connect(frontend.http, Proto::H1).await;
        let path = if accept.is_some() {
            "/"
        } else {
            "/?format=text"
        };
        let mut req = client.request(frontend.http, Method::GET, path);
        if let Some(accept) = accept {
            req = req.header(ACCEPT, accept);
        }
        let response = client.send(req.body(body("")).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), expected.len(), "{text}");
        for (line, prefix) in lines.iter().zip(&expected) {
            assert!(
                line.starts_with(prefix.as_str()),
                "{line:?} vs {prefix:?}\n{text}"
            );
            assert!(line.ends_with(" ms)") || !prefix.contains('('), "{text}");
        }
    }
    // `?format=json` wins over the Accept header.
    let mut client = Client::connect(frontend.http, Proto::H1).await;
    let req = client
        .request(frontend.http, Method::GET, "/?format=json")
        .header(ACCEPT, "text/plain")
        .body(body(""))
        .unwrap();
    let response = client.send(req).await;
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    frontend.shutdown(Duration::from_secs(1)).await;
    shop.stop().await;
}

#[tokio::test]
async fn backends_are_called_through_the_proxy_and_connections_are_kept() {
    let shop = Shop::start().await;
    let proxy = TestProxy::start().await;
    let mut cfg = config("frontend");
    cfg.backends = vec![
        backend("http://reviews.mesh:9080/?who=me"),
        backend("grpc://catalog.mesh:50051"),
        backend(&format!("tcp://{}", shop.stock.tcp.unwrap())),
    ];
    cfg.proxy = Some(proxy.proxy_addr());
    let frontend = Bound::bind(cfg).await.unwrap();

    for round in 1..=3 {
        let (status, json) = get_json(frontend.http, "/").await;
        assert_eq!(status, StatusCode::OK, "{json:#}");
        let calls = &json["calls"];
        // HTTP and gRPC were answered by the proxy itself: it got them, named for the
        // backend (absolute form; `:authority`).
        assert_eq!(calls[0]["reply"]["service"], "proxy", "{json:#}");
        assert_eq!(calls[1]["reply"]["service"], "proxy", "{json:#}");
        // TCP went through its CONNECT tunnel to the real stock.
        assert_eq!(calls[2]["banner"], "trellis-demo stock tcp", "{json:#}");
        // One HTTP/1.1 connection and one HTTP/2 connection for every round; a new TCP
        // connection each round.
        assert_eq!(
            proxy.connections.load(Ordering::SeqCst),
            2 + round,
            "round {round}: {:?}",
            proxy.seen()
        );
    }
    let mut seen = proxy.seen();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            format!("CONNECT {} HTTP/1.1", shop.stock.tcp.unwrap()),
            "GET reviews.mesh:9080 HTTP/1.1".to_owned(),
            "POST catalog.mesh:50051 HTTP/2.0".to_owned(),
        ]
    );
    frontend.shutdown(Duration::from_secs(1)).await;
    shop.stop().await;
}

#[tokio::test]
async fn failures_and_timeouts_are_reported_not_fatal() {
    let shop = Shop::start().await;
    let closed = closed_port().await;
    let silent = silent_port().await;
    // catalog2 calls a TCP backend that is down: its own report fails.
    let mut broken = config("catalog2");
    broken.backends = vec![backend(&format!("tcp://{closed}"))];
    let broken = Bound::bind(broken).await.unwrap();

    let mut cfg = config("frontend");
    cfg.timeout = Duration::from_millis(300);
    let urls = [
        format!("http://{closed}/"),
        format!("grpc://{closed}"),
        format!("tcp://{closed}"),
        format!("http://{silent}/"),
        format!("grpc://{silent}"),
        format!("tcp://{silent}"),
        format!("http://{}/status/503", shop.reviews.http),
        format!("grpc://{}", broken.http),
        format!("http://{}/", broken.http),
        format!("http://{}/", shop.reviews.http),
    ];
    cfg.backends = urls.iter().map(|url| backend(url)).collect();
    let frontend = Bound::bind(cfg).await.unwrap();

    let started = tokio::time::Instant::now();
    let (status, json) = get_json(frontend.http, "/").await;
    // Every call at once: one timeout's worth, not six.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{json:#}");
    assert_eq!(json["ok"], false);
    let calls = json["calls"].as_array().unwrap();
    assert_eq!(calls.len(), urls.len());
    for (call, url) in calls.iter().zip(&urls) {
        assert_eq!(call["target"], url.as_str());
    }
    let error = |i: usize| calls[i]["error"].as_str().unwrap_or_default().to_owned();
    let error_of = |call: &Value| call["error"].as_str().unwrap_or_default().to_owned();
    for refused in &calls[0..3] {
        assert_eq!(refused["ok"], false, "{refused}");
        assert!(
            error_of(refused).contains("Connection refused"),
            "{refused}"
        );
    }
    for silent in &calls[3..6] {
        assert_eq!(silent["ok"], false, "{silent}");
        assert_eq!(error_of(silent), "timed out after 300ms", "{silent}");
        assert!(silent.get("status").is_none(), "{silent}");
    }
    // An HTTP error status is this call's failure, the body shown.
    assert_eq!(calls[6]["ok"], false);
    assert_eq!(calls[6]["status"], 503);
    assert_eq!(error(6), "answered 503 Service Unavailable");
    assert_eq!(calls[6]["body"], "status 503\n");
    // A failure further down: the call itself went fine (gRPC OK; HTTP 502 with a report),
    // the reply says what failed.
    for i in [7, 8] {
        assert_eq!(calls[i]["ok"], false, "{}", calls[i]);
        assert!(calls[i].get("error").is_none(), "{}", calls[i]);
        assert_eq!(calls[i]["reply"]["service"], "catalog2");
        assert_eq!(calls[i]["reply"]["ok"], false);
        let below = calls[i]["reply"]["calls"][0]["error"].as_str().unwrap();
        assert!(below.contains("Connection refused"), "{below}");
    }
    assert_eq!(calls[7]["status"], 0);
    assert_eq!(calls[8]["status"], 502);
    assert_eq!(calls[9]["ok"], true);

    let (status, _, text) = get(frontend.http, Proto::H1, "/?format=text").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("frontend v1: FAILED\n"), "{text}");
    assert!(text.contains(": FAILED: timed out after 300ms ("), "{text}");
    assert!(
        text.contains(&format!(
            "grpc://{} → catalog2 v1: FAILED below (gRPC Ok",
            broken.http
        )),
        "{text}"
    );
    frontend.shutdown(Duration::from_secs(1)).await;
    broken.shutdown(Duration::from_secs(1)).await;
    shop.stop().await;
}

#[tokio::test]
async fn a_refused_connect_is_reported() {
    // A proxy that refuses every CONNECT, and says why.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 22\r\n\r\nstock.mesh is private\n",
                )
                .await;
        }
    });
    let mut cfg = config("frontend");
    cfg.backends = vec![backend("tcp://stock.mesh:7000")];
    cfg.proxy = Some(ProxyAddr::parse(&addr.to_string()).unwrap());
    let frontend = Bound::bind(cfg).await.unwrap();
    let (status, json) = get_json(frontend.http, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        json["calls"][0]["error"],
        format!(
            "the proxy {addr} refused CONNECT stock.mesh:7000: \"HTTP/1.1 403 Forbidden\": \
             stock.mesh is private"
        )
    );
    frontend.shutdown(Duration::from_secs(1)).await;
}
