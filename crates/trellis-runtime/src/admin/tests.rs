use std::net::SocketAddr;

use http::header::HOST;
use http_body_util::{BodyExt, Empty};
use tokio::task::JoinHandle;

use super::*;
use crate::drain::{self, DrainOutcome, DrainTrigger};

/// Every wait in these tests is bounded by this, so a bug fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    readiness: Readiness,
    log: LogHandle,
    trigger: DrainTrigger,
    task: JoinHandle<()>,
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: String,
}

async fn start() -> Server {
    let readiness = Readiness::new();
    let log = LogHandle::disabled();
    let admin = Admin::new(readiness.clone(), log.clone())
        .route("/metrics", |_parts: &Parts| {
            response(StatusCode::OK, OPENMETRICS, "trellis_up 1\n# EOF\n")
        })
        .route("/config_dump", |parts: &Parts| {
            let body = format!(r#"{{"query":{:?}}}"#, parts.uri.query().unwrap_or(""));
            response(StatusCode::OK, JSON, body)
        })
        .route("/boom", |_parts: &Parts| panic!("handler bug"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, watcher) = drain::new();
    let task = tokio::spawn(admin.serve(listener, watcher));
    Server {
        addr,
        readiness,
        log,
        trigger,
        task,
    }
}

/// A keep-alive HTTP/1.1 client connection.
async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    method: Method,
    uri: &str,
) -> Result<Answer, hyper::Error> {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(HOST, "admin")
        .body(Empty::new())
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("admin server answers in time")?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        content_type,
        body: String::from_utf8(body.to_vec()).unwrap(),
    })
}

/// One request on a fresh connection.
async fn request(addr: SocketAddr, method: Method, uri: &str) -> Answer {
    send(&mut connect(addr).await, method, uri).await.unwrap()
}

#[tokio::test]
async fn live_and_ready() {
    let server = start().await;

    let live = request(server.addr, Method::GET, "/live").await;
    assert_eq!(
        (live.status, live.body.as_str()),
        (StatusCode::OK, "live\n")
    );
    assert_eq!(live.content_type, TEXT);

    let ready = request(server.addr, Method::GET, "/ready").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    );

    server.readiness.set_ready();
    assert!(server.readiness.is_ready());
    let ready = request(server.addr, Method::GET, "/ready").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (StatusCode::OK, "ready\n")
    );

    let head = request(server.addr, Method::HEAD, "/ready").await;
    assert_eq!((head.status, head.body.as_str()), (StatusCode::OK, ""));

    let post = request(server.addr, Method::POST, "/live").await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn logging_get_set_and_invalid() {
    let server = start().await;
    let mut conn = connect(server.addr).await;

    let get = send(&mut conn, Method::GET, "/logging").await.unwrap();
    assert_eq!((get.status, get.body.as_str()), (StatusCode::OK, "info\n"));

    let set = send(&mut conn, Method::POST, "/logging?level=debug")
        .await
        .unwrap();
    assert_eq!((set.status, set.body.as_str()), (StatusCode::OK, "debug\n"));
    assert_eq!(server.log.level(), "debug");

    let directives = "/logging?level=info,trellis_proxy=debug";
    let set = send(&mut conn, Method::PUT, directives).await.unwrap();
    assert_eq!(
        (set.status, set.body.as_str()),
        (StatusCode::OK, "info,trellis_proxy=debug\n")
    );

    // The same, percent-encoded as a form would send it.
    let encoded = "/logging?x=1&level=warn%2Ctrellis_proxy%3Dtrace";
    let set = send(&mut conn, Method::POST, encoded).await.unwrap();
    assert_eq!(
        (set.status, set.body.as_str()),
        (StatusCode::OK, "warn,trellis_proxy=trace\n")
    );

    let bad = send(&mut conn, Method::POST, "/logging?level=verbose")
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.body.contains("`verbose` is not a log level"),
        "{}",
        bad.body
    );
    let bad = send(&mut conn, Method::POST, "/logging?level=info,x=loud")
        .await
        .unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    let missing = send(&mut conn, Method::POST, "/logging").await.unwrap();
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(missing.body.contains("?level="), "{}", missing.body);
    assert_eq!(server.log.level(), "warn,trellis_proxy=trace");

    let delete = send(&mut conn, Method::DELETE, "/logging").await.unwrap();
    assert_eq!(delete.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn app_routes_and_not_found() {
    let server = start().await;

    let metrics = request(server.addr, Method::GET, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(metrics.content_type, OPENMETRICS);
    assert_eq!(metrics.body, "trellis_up 1\n# EOF\n");

    let dump = request(server.addr, Method::GET, "/config_dump?resource=routes").await;
    assert_eq!(dump.status, StatusCode::OK);
    assert_eq!(dump.content_type, JSON);
    assert_eq!(dump.body, r#"{"query":"resource=routes"}"#);

    let missing = request(server.addr, Method::GET, "/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    for path in ["/live", "/ready", "/logging", "/metrics", "/config_dump"] {
        assert!(missing.body.contains(path), "{}", missing.body);
    }
}

#[tokio::test]
async fn a_failing_connection_does_not_stop_the_server() {
    let server = start().await;

    // Garbage instead of HTTP.
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut garbage, b"\x00\x01 not http\r\n\r\n")
        .await
        .unwrap();
    drop(garbage);

    // A handler that panics takes down only its own connection.
    let boom = send(&mut connect(server.addr).await, Method::GET, "/boom").await;
    assert!(boom.is_err());

    let live = request(server.addr, Method::GET, "/live").await;
    assert_eq!(live.status, StatusCode::OK);
}

#[tokio::test]
async fn drain_stops_accepting_and_closes_idle_connections() {
    let server = start().await;
    server.readiness.set_ready();
    let mut idle = connect(server.addr).await;
    assert_eq!(
        send(&mut idle, Method::GET, "/live").await.unwrap().status,
        StatusCode::OK
    );

    let outcome = server.trigger.drain(DEADLINE).await;
    assert_eq!(outcome, DrainOutcome::Complete);
    tokio::time::timeout(DEADLINE, server.task)
        .await
        .expect("serve returns after drain")
        .unwrap();

    // The keep-alive connection was closed by the server, and nobody accepts any more.
    assert!(send(&mut idle, Method::GET, "/live").await.is_err());
    let refused = TcpStream::connect(server.addr).await;
    assert!(refused.is_err(), "listener is closed");
}

#[test]
fn query_params_are_found_and_decoded() {
    assert_eq!(
        query_param("level=debug", "level").as_deref(),
        Some("debug")
    );
    assert_eq!(
        query_param("a=b&level=info,x=debug", "level").as_deref(),
        Some("info,x=debug")
    );
    assert_eq!(query_param("levels=debug", "level"), None);
    assert_eq!(query_param("", "level"), None);
    assert_eq!(percent_decode("a%2Cb%3dc+d"), "a,b=c d");
    assert_eq!(percent_decode("100%"), "100%");
    assert_eq!(
        percent_decode("%zz%+1"),
        "%zz% 1",
        "no `+` sign read as hex"
    );
}
