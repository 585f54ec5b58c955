//! Traffic policy through client → proxy A → proxy B → several backends: load balancing
//! (P2C over peak EWMA, consistent hashing), retries and their budget, outlier detection and
//! request limits, as a service's `policy` in proxy A's config.
//!
//! The backends are tiny HTTP/1.1 servers in the test ([`Backend`]), each its own app port
//! behind proxy B, whose behaviour the test switches while it runs: answer at once, after a
//! delay, 503 every other request or always, or refuse connections (dead); each counts the
//! requests that reach it and names itself in its answer.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trellis_test_support::ProxyProcess;
use trellis_test_support::client::{Reply, Session, Version};

use crate::{Problems, log_str, trellis};

/// What a backend does with a request.
const ALTERNATE: u8 = 1;
pub(crate) const FAIL: u8 = 2;

/// A test backend; see the module docs.
pub(crate) struct Backend {
    name: String,
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
    hits: Arc<AtomicUsize>,
    /// Set: the listener is closed and open connections end (connections are refused).
    dead: Arc<AtomicBool>,
    /// The `Host` of the last request.
    last_host: Arc<Mutex<String>>,
}

impl Backend {
    fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let backend = Backend {
            name: name.to_string(),
            addr,
            mode: Arc::default(),
            delay_ms: Arc::default(),
            hits: Arc::default(),
            dead: Arc::default(),
            last_host: Arc::default(),
        };
        backend.serve(listener);
        backend
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The `Host` header of the last request that reached it.
    pub(crate) fn last_host(&self) -> String {
        self.last_host.lock().map(|h| h.clone()).unwrap_or_default()
    }

    pub(crate) fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    pub(crate) fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Stop listening: connections are refused until [`Backend::revive`].
    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag and drops the listener.
        let _ = TcpStream::connect(self.addr);
        let gone = trellis_test_support::wait::wait_until(Duration::from_secs(5), || {
            TcpStream::connect(self.addr).is_err().then_some(())
        });
        assert!(gone.is_some(), "{} still accepts connections", self.name);
    }

    /// Listen again on the same port.
    fn revive(&self) {
        self.dead.store(false, Ordering::SeqCst);
        let listener = trellis_test_support::wait::wait_until(Duration::from_secs(5), || {
            TcpListener::bind(self.addr).ok()
        })
        .unwrap_or_else(|| panic!("{} cannot listen on {} again", self.name, self.addr));
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let (name, mode, delay, hits, dead, host) = (
            self.name.clone(),
            self.mode.clone(),
            self.delay_ms.clone(),
            self.hits.clone(),
            self.dead.clone(),
            self.last_host.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if dead.load(Ordering::SeqCst) {
                    return; // drops the listener
                }
                let Ok(stream) = stream else { continue };
                let (name, mode, delay, hits, dead, host) = (
                    name.clone(),
                    mode.clone(),
                    delay.clone(),
                    hits.clone(),
                    dead.clone(),
                    host.clone(),
                );
                std::thread::spawn(move || {
                    let _ = serve_connection(stream, &name, &mode, &delay, &hits, &dead, &host);
                });
            }
        });
    }
}

/// Keep-alive HTTP/1.1 without request bodies (the tests send GETs).
fn serve_connection(
    stream: TcpStream,
    name: &str,
    mode: &AtomicU8,
    delay_ms: &AtomicU64,
    hits: &AtomicUsize,
    dead: &AtomicBool,
    last_host: &Mutex<String>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        // The request head, up to its blank line.
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("host") {
                    if let Ok(mut host) = last_host.lock() {
                        *host = value.trim().to_string();
                    }
                }
            }
        }
        if dead.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
        let delay = delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let status = match mode.load(Ordering::SeqCst) {
            ALTERNATE if n % 2 == 1 => "503 Service Unavailable",
            FAIL => "503 Service Unavailable",
            _ => "200 OK",
        };
        let body = format!("{name}\n");
        // One write: a response in pieces meets Nagle and delayed ACKs (40 ms a request).
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
            body.len()
        );
        writer.write_all(response.as_bytes())?;
        writer.flush()?;
    }
}

pub(crate) struct Mesh {
    pub(crate) a: ProxyProcess,
    pub(crate) b: ProxyProcess,
    pub(crate) backends: Vec<Backend>,
}

impl Mesh {
    /// `n` backends behind proxy B; proxy A knows the services `services` gives (YAML list
    /// items, with `{endpoints}` standing for all the backends as endpoints, `{endpoint:I}`
    /// for backend I alone).
    pub(crate) fn start(n: usize, services: &str) -> Mesh {
        let trellis = trellis();
        let backends: Vec<Backend> = (0..n).map(|i| Backend::start(&format!("be{i}"))).collect();
        let ports: Vec<String> = backends
            .iter()
            .map(|b| format!("{{ port: {}, protocol: http }}", b.port()))
            .collect();
        let b = trellis.proxy(
            "proxy-b",
            &format!(
                "\
node: {{ name: proxy-b, namespace: test, workload: backends }}
listeners: {{ admin: \"127.0.0.1:0\", mesh: \"127.0.0.1:0\" }}
app: {{ address: 127.0.0.1, ports: [ {} ] }}
",
                ports.join(", ")
            ),
        );
        let mesh = b.mesh();
        let endpoints: Vec<String> = backends
            .iter()
            .map(|be| {
                format!(
                    "{{ address: 127.0.0.1, ports: {{ http: {} }}, mesh: \"{mesh}\", workload: {} }}",
                    be.port(),
                    be.name
                )
            })
            .collect();
        let mut services =
            services.replace("{endpoints}", &format!("[ {} ]", endpoints.join(", ")));
        for (i, endpoint) in endpoints.iter().enumerate() {
            services = services.replace(&format!("{{endpoint:{i}}}"), &format!("[ {endpoint} ]"));
        }
        let a = trellis.proxy(
            "proxy-a",
            &format!(
                "\
node: {{ name: proxy-a, namespace: test, workload: client }}
listeners: {{ admin: \"127.0.0.1:0\", outbound: \"127.0.0.1:0\" }}
timeouts: {{ detect: 100ms, request: 10s }}
outbound_policy: registry_only
services:
{services}"
            ),
        );
        Mesh { a, b, backends }
    }

    pub(crate) fn diagnostics(&self) -> String {
        let hits: Vec<String> = self
            .backends
            .iter()
            .map(|b| format!("{}: {} hits", b.name, b.hits()))
            .collect();
        format!(
            "{}{}backends: {}\n",
            self.a.diagnostics(),
            self.b.diagnostics(),
            hits.join(", ")
        )
    }

    pub(crate) async fn session(&self) -> Session {
        Session::connect(self.a.outbound(), Version::Http1)
            .await
            .unwrap_or_else(|e| panic!("connect: {e:#}\n{}", self.diagnostics()))
    }

    pub(crate) async fn get(&self, s: &mut Session, url: &str, headers: &[(&str, &str)]) -> Reply {
        s.get(url, headers)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e:#}\n{}", self.diagnostics()))
    }

    /// `times` GETs of `url`, each of which must answer 200.
    pub(crate) async fn get_ok(&self, s: &mut Session, url: &str, times: usize) {
        for i in 0..times {
            let reply = self.get(s, url, &[]).await;
            assert_eq!(
                reply.status,
                200,
                "GET {url} ({i} of {times}): {}\n{}",
                reply.text(),
                self.diagnostics()
            );
        }
    }
}

/// A service of proxy A over every backend, with `policy` (YAML, indented for the service).
fn service(name: &str, policy: &str) -> String {
    format!(
        "  - name: {name}
    namespace: test
    ports: [ {{ name: http, port: 80, protocol: http }} ]
    endpoints: {{endpoints}}
    policy:
{policy}"
    )
}

#[tokio::test]
async fn least_request_sends_most_traffic_away_from_a_slow_backend() {
    // The default balancer: a policy that sets nothing else.
    let mesh = Mesh::start(
        3,
        &service("api", "      load_balancer: { type: least_request }\n"),
    );
    mesh.backends[2].set_delay(Duration::from_millis(150));
    let mut s = mesh.session().await;
    let total = 200;
    mesh.get_ok(&mut s, "http://api.test/", total).await;
    let slow = mesh.backends[2].hits();
    eprintln!("slow backend: {slow} of {total}; {}", mesh.diagnostics());
    // Round robin would send it a third (66); P2C-EWMA learns after a try or two.
    assert!(
        slow <= total / 20,
        "the slow backend got {slow} of {total}\n{}",
        mesh.diagnostics()
    );
    assert!(mesh.backends[0].hits() > 50 && mesh.backends[1].hits() > 50);
}

#[tokio::test]
async fn consistent_hashing_sends_the_same_key_to_the_same_backend() {
    let services = format!(
        "{}{}",
        service(
            "ring",
            "      load_balancer: { type: ring_hash, hash_on: { header: x-user } }\n"
        ),
        service(
            "maglev",
            "      load_balancer: { type: maglev, hash_on: { cookie: session } }\n"
        )
    );
    let mesh = Mesh::start(4, &services);
    let mut s = mesh.session().await;
    let mut problems = Problems::default();
    for (host, header) in [("ring", "x-user"), ("maglev", "cookie")] {
        let mut used = std::collections::BTreeSet::new();
        for user in 0..24 {
            let value = if header == "cookie" {
                format!("theme=dark; session=user-{user}")
            } else {
                format!("user-{user}")
            };
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..5 {
                let reply = mesh
                    .get(&mut s, &format!("http://{host}.test/"), &[(header, &value)])
                    .await;
                problems.eq(reply.status, 200, &format!("{host} {value} status"));
                seen.insert(reply.text());
            }
            problems.check(seen.len() == 1, || {
                format!("{host}: key {value} went to {seen:?}")
            });
            used.extend(seen);
        }
        problems.check(used.len() >= 3, || {
            format!("{host}: 24 keys used only {used:?} of 4 backends")
        });
    }
    problems.assert_none(&mesh.diagnostics());
}

#[tokio::test]
async fn retries_turn_a_flaky_backends_503s_into_successes() {
    let policy = "      retries: { attempts: 2, on: [\"503\"], backoff: 1ms }\n";
    let mesh = Mesh::start(1, &service("flaky", policy));
    mesh.backends[0].set_mode(ALTERNATE);
    let mut s = mesh.session().await;
    for i in 0..100 {
        let reply = mesh.get(&mut s, "http://flaky.test/", &[]).await;
        assert_eq!(
            reply.status,
            200,
            "request {i}: {}\n{}",
            reply.text(),
            mesh.diagnostics()
        );
    }
    // Every request took a 503 and a retry.
    assert_eq!(mesh.backends[0].hits(), 200, "{}", mesh.diagnostics());
}

#[tokio::test]
async fn the_retry_budget_caps_the_extra_load_of_a_full_outage() {
    // Without the budget, 3 retries would make 400 tries of 100 requests.
    let policy = "      retries:
        attempts: 3
        on: [\"503\"]
        backoff: 1ms
        budget: { percent: 20, min_retries_per_second: 1, ttl: 10s }
";
    let mesh = Mesh::start(1, &service("down", policy));
    mesh.backends[0].set_mode(FAIL);
    let mut s = mesh.session().await;
    for _ in 0..100 {
        let reply = mesh.get(&mut s, "http://down.test/", &[]).await;
        assert_eq!(reply.status, 503, "{}", mesh.diagnostics());
    }
    let hits = mesh.backends[0].hits();
    eprintln!("100 requests in a full outage: {hits} tries");
    // 100 requests + 20 % + 1/s over 10 s, and the floor's retries came first.
    assert!(
        (120..=131).contains(&hits),
        "{hits} tries\n{}",
        mesh.diagnostics()
    );
}

#[tokio::test]
async fn outlier_detection_stops_sending_to_a_dead_backend_and_sends_again_once_it_recovers() {
    let policy = "      outlier_detection:
        consecutive_5xx: 3
        interval: 1s
        base_ejection_time: 300ms
        max_ejection_time: 1s
        max_ejection_percent: 50
";
    let mesh = Mesh::start(2, &service("api", policy));
    let (dead, alive) = (&mesh.backends[0], &mesh.backends[1]);
    let mut s = mesh.session().await;
    mesh.get_ok(&mut s, "http://api.test/", 20).await;
    assert!(
        dead.hits() > 0,
        "both serve at first\n{}",
        mesh.diagnostics()
    );

    // Dead: B answers 503 for it; after 3 of those it is ejected.
    dead.kill();
    let mut failed = 0;
    for _ in 0..60 {
        let reply = mesh.get(&mut s, "http://api.test/", &[]).await;
        if reply.status != 200 {
            failed += 1;
        }
    }
    // Three to eject it, then one per probe (after 300 ms, 600 ms, then every 1 s): without
    // ejection, about half of the 60 would fail.
    assert!(
        failed <= 8,
        "{failed} of 60 requests failed after the backend died\n{}",
        mesh.diagnostics()
    );
    eprintln!("failed while it was detected: {failed}");

    // Recovered: once its ejection is over, a probe brings it back and it serves again.
    dead.revive();
    let before = dead.hits();
    let back = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let reply = mesh.get(&mut s, "http://api.test/", &[]).await;
            assert_eq!(reply.status, 200, "{}", mesh.diagnostics());
            if dead.hits() > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "never sent to again\n{}", mesh.diagnostics());
    let (d0, a0) = (dead.hits(), alive.hits());
    mesh.get_ok(&mut s, "http://api.test/", 60).await;
    let (d, a) = (dead.hits() - d0, alive.hits() - a0);
    assert!(
        d >= 12,
        "after recovery: {d} to the recovered backend, {a} to the other\n{}",
        mesh.diagnostics()
    );
}

#[tokio::test]
async fn a_limit_answers_503_uo_rather_than_queueing() {
    let mesh = Mesh::start(1, &service("busy", "      limits: { max_requests: 1 }\n"));
    mesh.backends[0].set_delay(Duration::from_millis(1500));
    let mut first = mesh.session().await;
    let mut second = mesh.session().await;
    let held = tokio::spawn(async move { first.get("http://busy.test/held", &[]).await });
    // The first request is in flight once it has reached the backend.
    let arrived = tokio::time::timeout(Duration::from_secs(5), async {
        while mesh.backends[0].hits() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(arrived.is_ok(), "{}", mesh.diagnostics());
    let started = tokio::time::Instant::now();
    let reply = mesh.get(&mut second, "http://busy.test/over", &[]).await;
    let took = started.elapsed();
    assert_eq!(
        reply.status,
        503,
        "{}\n{}",
        reply.text(),
        mesh.diagnostics()
    );
    assert!(
        took < Duration::from_millis(500),
        "answered after {took:?}: it waited for the first"
    );
    let line = mesh
        .a
        .wait_access_log("GET /over", |l| log_str(l, "path") == "/over");
    assert_eq!(log_str(&line, "response_flags"), "UO", "{line}");
    let first = held.await.expect("task").expect("the held request");
    assert_eq!(first.status, 200, "the request within the limit is served");
    assert_eq!(
        mesh.backends[0].hits(),
        1,
        "the refused one never reached it"
    );
}

#[test]
fn max_connections_refuses_a_tunnel_over_the_limit_at_once() {
    use trellis_test_support::{DemoApp, RawConn};

    let trellis = trellis();
    let app = DemoApp::options("echo").tcp().start(&trellis);
    let (a, b) = crate::one_service_pair(
        &trellis,
        app.tcp_port(),
        "tcp",
        ("echo", 9000),
        "    policy:
      limits: { max_connections: 2 }
",
    );
    let diagnostics = || {
        format!(
            "{}{}{}",
            a.diagnostics(),
            b.diagnostics(),
            app.diagnostics()
        )
    };
    let banner = "trellis-demo echo tcp\r\n";
    let open = || {
        let mut conn = RawConn::connect_tunnel(a.outbound(), "echo.test:9000");
        let got = conn
            .read_exact(banner.len(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("banner: {e}\n{}", diagnostics()));
        assert_eq!(String::from_utf8_lossy(&got), banner);
        conn
    };
    let first = open();
    let _second = open();

    // The third is answered 503 at once, and never reaches the app.
    let started = tokio::time::Instant::now();
    let mut third = RawConn::connect(a.outbound());
    third
        .send(b"CONNECT echo.test:9000 HTTP/1.1\r\nHost: echo.test:9000\r\n\r\n")
        .expect("send CONNECT");
    let head = third
        .read_head(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics()));
    assert_eq!(head.status, 503, "{}", diagnostics());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused after {:?}",
        started.elapsed()
    );
    let refused = a.wait_access_log("the refused tunnel", |l| {
        log_str(l, "method") == "CONNECT" && log_str(l, "response_flags") == "UO"
    });
    assert_eq!(refused["response_code"], 503, "{refused}");

    // Once one closes, a new tunnel is let through.
    drop(first);
    let reopened = trellis_test_support::wait::wait_until(Duration::from_secs(10), || {
        let mut conn = RawConn::connect(a.outbound());
        conn.send(b"CONNECT echo.test:9000 HTTP/1.1\r\nHost: echo.test:9000\r\n\r\n")
            .ok()?;
        let head = conn.read_head(Duration::from_secs(5)).ok()?;
        (head.status == 200).then_some(conn)
    });
    assert!(
        reopened.is_some(),
        "no tunnel after one closed\n{}",
        diagnostics()
    );
    let metrics = a.metrics();
    let uo = [
        ("response_flags", "UO"),
        ("destination_service", "echo.test.svc.cluster.local"),
    ];
    assert!(
        metrics.sum("trellis_requests_total", &uo) >= 1.0,
        "{}",
        metrics.dump("trellis_requests_total")
    );
}
