//! Config push (`trellis.discovery.v1`) with real processes: `trellis control --resources
//! DIR` compiles the resources and pushes each proxy its config over mutual TLS; the proxies start from
//! bootstraps (`identity.ca` + `control`), are ready only once their first config is applied,
//! answer every push with ACK or NACK, and keep serving with their last good config while the
//! control plane is away.
//!
//! The mesh: client → proxy A (`client-0`, explicit outbound) → proxy B (`web-0`) → the demo
//! app `web`, with mTLS between the proxies (certificates from the control plane's CA).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use trellis_test_support::discovery::{PushMesh, PushedProxy, proxy_row, spiffe_id};
use trellis_test_support::proxy::STARTUP;
use trellis_test_support::{DemoApp, Metrics, Process, RawResponse, http_request, wait_until};

use crate::{log_str, trellis};

/// How long a pushed change may take to show: the directory is polled every 250 ms, pushes
/// wait 50 ms of quiet; generous for a debug build on two busy cores.
const PUSH: Duration = Duration::from_secs(15);

/// The Service `web` and its one Workload `web-0` (whose sidecar is B).
fn web_resources(app: &DemoApp, web_mesh: SocketAddr) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: {{ name: web, namespace: test }}
spec:
  selector: {{ app: web }}
  ports: [ {{ name: http, port: 80, protocol: http }} ]
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: {{ name: web-0, namespace: test, labels: {{ app: web }} }}
spec:
  serviceAccount: web
  address: 127.0.0.1
  ports: {{ http: {port} }}
  proxy: {{ mesh: {web_mesh} }}
",
        port = app.http_port(),
    )
}

/// The Workload `client-0` (whose sidecar is A), and `extra` documents.
fn client_resources(client_mesh: SocketAddr, extra: &str) -> String {
    format!(
        "apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: {{ name: client-0, namespace: test, labels: {{ app: client }} }}
spec:
  serviceAccount: client
  address: 127.0.0.1
  proxy: {{ mesh: {client_mesh} }}
{extra}"
    )
}

/// A mesh with both proxies ready on their first push, and a request through it.
struct Running {
    mesh: PushMesh,
    control: Option<Process>,
    app: DemoApp,
    web: PushedProxy,
    client: PushedProxy,
}

impl Running {
    fn start() -> Running {
        let t = trellis();
        let mesh = PushMesh::new(&t);
        let control = mesh.start_control();
        let app = DemoApp::start(&t, "web");
        let mut web = mesh.start_proxy("web-0", "web", true, "");
        let mut client = mesh.start_proxy("client-0", "client", true, "outbound: 127.0.0.1:0");
        mesh.write_resources("web.yaml", &web_resources(&app, web.mesh()));
        mesh.write_resources("client.yaml", &client_resources(client.mesh(), ""));
        web.wait_ready(STARTUP);
        client.wait_ready(STARTUP);
        let running = Running {
            mesh,
            control: Some(control),
            app,
            web,
            client,
        };
        let response = running.get();
        assert_eq!(response.status, 200, "{}", running.diagnostics());
        running.synced(&["web-0", "client-0"]);
        running
    }

    /// GET http://web.test/headers through A.
    fn get(&self) -> RawResponse {
        http_request(
            self.client.outbound(),
            "GET",
            "http://web.test/headers",
            &[],
            b"",
        )
    }

    /// `/debug/proxies` once every proxy in `names` is connected and synced.
    fn synced(&self, names: &[&str]) -> Value {
        self.mesh
            .proxies_when(PUSH, |json| {
                names
                    .iter()
                    .all(|n| proxy_row(json, n)["state"] == "synced")
            })
            .unwrap_or_else(|| {
                panic!(
                    "not all of {names:?} synced: {:?}\n{}",
                    self.mesh.proxies(),
                    self.diagnostics()
                )
            })
    }

    fn control_stderr(&self) -> String {
        self.control
            .as_ref()
            .map(Process::stderr)
            .unwrap_or_default()
    }

    fn control_metrics(&self) -> Metrics {
        let response = http_request(self.mesh.admin(), "GET", "/metrics", &[], b"");
        assert_eq!(response.status, 200, "{}", response.text());
        Metrics::parse(&response.text())
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- control ---\n{}\n--- client-0 ---\n{}\n--- web-0 ---\n{}\n--- app ---\n{}",
            self.control
                .as_ref()
                .map(|c| c.stderr_tail(30))
                .unwrap_or_default(),
            self.client.diagnostics(),
            self.web.diagnostics(),
            self.app.diagnostics(),
        )
    }
}

/// (a) The proxies connect, get their certificates and wait, not ready, until the control
/// plane has a config for them; the first push makes them ready, and requests flow A → B over
/// mutual TLS with the pushed services.
#[test]
fn proxies_become_ready_with_the_first_push_and_traffic_flows() {
    let t = trellis();
    let mesh = PushMesh::new(&t);
    let control = mesh.start_control();
    let app = DemoApp::start(&t, "web");
    let mut web = mesh.start_proxy("web-0", "web", true, "");
    let mut client = mesh.start_proxy("client-0", "client", true, "outbound: 127.0.0.1:0");

    // Connected, identified by their certificates, and waiting: no config for them yet.
    let waiting = mesh.proxies_when(STARTUP, |json| {
        ["web-0", "client-0"]
            .iter()
            .all(|n| proxy_row(json, n)["state"] == "waiting")
    });
    let Some(waiting) = waiting else {
        panic!(
            "the proxies never connected: {:?}\n{}\n{}\n{}",
            mesh.proxies(),
            control.stderr_tail(30),
            client.diagnostics(),
            web.diagnostics()
        );
    };
    assert_eq!(
        proxy_row(&waiting, "web-0")["identity"],
        spiffe_id("web"),
        "{waiting}"
    );
    assert_eq!(
        proxy_row(&waiting, "client-0")["admin"],
        client.admin().to_string()
    );
    for proxy in [&web, &client] {
        assert_eq!(
            proxy.ready_status(),
            Some(503),
            "{} is ready before its first config",
            proxy.name()
        );
        assert_eq!(proxy.config_dump()["applied_version"], Value::Null);
    }
    let status = mesh.proxy_status(&[]);
    assert!(status.status.success(), "{}", status.stderr);
    let text = status.stdout_text();
    println!("{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("web-0.test") && l.contains("waiting")),
        "{text}"
    );

    // The first push: both become ready, and traffic flows.
    mesh.write_resources("web.yaml", &web_resources(&app, web.mesh()));
    mesh.write_resources("client.yaml", &client_resources(client.mesh(), ""));
    web.wait_ready(STARTUP);
    client.wait_ready(STARTUP);
    assert_eq!(web.ready_status(), Some(200));
    assert_eq!(client.ready_status(), Some(200));
    let response = http_request(
        client.outbound(),
        "GET",
        "http://web.test/headers",
        &[],
        b"",
    );
    assert_eq!(
        response.status,
        200,
        "{}\n{}\n{}",
        response.text(),
        client.diagnostics(),
        web.diagnostics()
    );
    // Mutual TLS: B knows the caller by its certificate.
    let line = wait_until(Duration::from_secs(10), || {
        web.process()
            .stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| log_str(l, "path") == "/headers")
    })
    .unwrap_or_else(|| panic!("no access log line at web-0\n{}", web.diagnostics()));
    assert_eq!(
        log_str(&line, "source_principal"),
        spiffe_id("client"),
        "{line}"
    );

    // Both synced, and `proxy-config` finds A's config by name.
    let json = mesh
        .proxies_when(PUSH, |json| {
            ["web-0", "client-0"]
                .iter()
                .all(|n| proxy_row(json, n)["state"] == "synced")
        })
        .unwrap_or_else(|| panic!("not synced: {:?}", mesh.proxies()));
    let version = &proxy_row(&json, "client-0")["acked_version"];
    assert_eq!(client.config_dump()["applied_version"], *version);
    let out = mesh.proxy_config("client-0");
    assert!(out.status.success(), "{}", out.stderr);
    let dump: Value = serde_json::from_slice(&out.stdout).expect("proxy-config prints JSON");
    assert_eq!(dump["config"]["services"][0]["name"], "web", "{dump}");
    assert_eq!(dump["applied_version"], *version);
}

/// (b) A change in the directory reaches the proxy (its `/config_dump` shows it) and
/// `proxy-status` shows the new version ACKed. The push time is measured and printed.
#[test]
fn a_change_on_disk_reaches_the_proxy_and_is_acked() {
    let r = Running::start();
    let before = r.client.config_dump()["applied_version"].as_u64();

    // A PeerAuthentication for the client alone: its config changes, web-0's does not.
    let changed = client_resources(
        r.client.mesh(),
        "---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: client-strict, namespace: test }
spec:
  selector: { matchLabels: { app: client } }
  mtls: { mode: STRICT }
",
    );
    // Polled every 2 ms (not wait_until's growing pauses), so that the time measured is the
    // push's, not the poll's.
    let start = Instant::now();
    r.mesh.write_resources("client.yaml", &changed);
    let dump = loop {
        let dump = r.client.config_dump();
        if dump["config"]["mtls"] == "strict" {
            break dump;
        }
        assert!(
            start.elapsed() < PUSH,
            "the change never reached client-0\n{}",
            r.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let push_time = start.elapsed();
    let services: Vec<&str> = dump["config"]["services"]
        .as_array()
        .map(|s| s.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(services, ["web"], "{dump}");
    let version = dump["applied_version"]
        .as_u64()
        .expect("an applied version");
    assert!(Some(version) > before, "{before:?} → {version}");
    // The bootstrap's sections stayed.
    assert_eq!(dump["config"]["control"], r.mesh.grpc().to_string());
    assert_eq!(
        dump["config"]["listeners"]["admin"],
        r.client.admin().to_string()
    );

    // The control plane has the ACK.
    let json = r
        .mesh
        .proxies_when(PUSH, |json| {
            let row = proxy_row(json, "client-0");
            row["acked_version"] == version && row["state"] == "synced"
        })
        .unwrap_or_else(|| panic!("no ACK of v{version}: {:?}", r.mesh.proxies()));
    let row = proxy_row(&json, "client-0");
    let ack_latency = row["last_push_latency_ms"].as_f64().unwrap_or(f64::NAN);
    let status = r.mesh.proxy_status(&[]);
    let text = status.stdout_text();
    println!("{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("client-0.test"))
        .unwrap_or_else(|| panic!("no client-0 line:\n{text}"));
    assert!(
        line.contains(&format!("v{version}")) && line.contains("synced"),
        "{text}"
    );
    // B's config did not change: it was sent nothing new.
    assert_eq!(
        proxy_row(&json, "web-0")["sent_version"].as_u64(),
        proxy_row(&json, "web-0")["acked_version"].as_u64()
    );
    assert!(
        proxy_row(&json, "web-0")["sent_version"].as_u64() < Some(version),
        "{json}"
    );
    println!(
        "push time: {:.0} ms from the file's rename to the proxy's /config_dump (directory polled \
         every 250 ms, 50 ms debounce); send → ACK {ack_latency:.1} ms",
        push_time.as_secs_f64() * 1000.0
    );
    let m = r.control_metrics();
    assert!(
        m.sum("trellis_discovery_push_latency_seconds_count", &[]) >= 3.0,
        "{}",
        m.dump("trellis_discovery")
    );
    assert_eq!(r.get().status, 200, "{}", r.diagnostics());
}

/// (c) An invalid file is refused whole, with its file and line, and nothing is pushed; a valid
/// config the proxy cannot apply (its app on its own admin port) is NACKed with the reason, the old
/// config stays in force, traffic still flows, and `proxy-status` shows the NACK.
#[test]
fn an_invalid_file_is_refused_and_a_config_the_proxy_cannot_apply_is_nacked() {
    let r = Running::start();
    let applied = r.client.config_dump()["applied_version"].clone();

    // Invalid: refused by the control plane with file:line, nothing sent.
    r.mesh.write_resources(
        "client.yaml",
        &client_resources(r.client.mesh(), "").replace("address: 127.0.0.1", "address: here"),
    );
    let refused = wait_until(PUSH, || {
        let stderr = r.control_stderr();
        stderr.contains("change refused").then_some(stderr)
    })
    .unwrap_or_else(|| panic!("the invalid file was not refused\n{}", r.diagnostics()));
    assert!(refused.contains("client.yaml:6:"), "{refused}");
    assert!(refused.contains("spec.address"), "{refused}");
    let m = r.control_metrics();
    assert_eq!(m.sum("trellis_discovery_config_errors_total", &[]), 1.0);
    let json = r.mesh.proxies().expect("the control plane answers");
    let errors = json["config"]["refused"]["errors"].to_string();
    assert!(errors.contains("client.yaml:6:"), "{json}");
    let text = r.mesh.proxy_status(&[]).stdout_text();
    assert!(
        text.contains("last change REFUSED") && text.contains("client.yaml:6:"),
        "{text}"
    );
    assert_eq!(r.client.config_dump()["applied_version"], applied);
    assert_eq!(r.get().status, 200, "{}", r.diagnostics());

    // Valid, but the client's app would be on its own admin port: the proxy refuses (NACK)
    // what would loop its traffic back into itself, and keeps the config it has. web-0 takes
    // the new Service `client`.
    let cannot = client_resources(
        r.client.mesh(),
        "---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: client, namespace: test }
spec:
  selector: { app: client }
  ports: [ { name: http, port: 80, protocol: http } ]
",
    )
    .replace(
        "  proxy:",
        &format!("  ports: {{ http: {} }}\n  proxy:", r.client.admin().port()),
    );
    r.mesh.write_resources("client.yaml", &cannot);
    let json = r
        .mesh
        .proxies_when(PUSH, |json| {
            !proxy_row(json, "client-0")["last_nack"].is_null()
        })
        .unwrap_or_else(|| panic!("no NACK: {:?}\n{}", r.mesh.proxies(), r.diagnostics()));
    let row = proxy_row(&json, "client-0");
    let reason = row["last_nack"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("loop back into the proxy"), "{json}");
    assert_eq!(row["state"], "stale", "{json}");
    assert_eq!(row["acked_version"], applied, "{json}");
    let dump = r.client.config_dump();
    assert_eq!(dump["applied_version"], applied);
    assert_eq!(
        dump["config"]["app"]["ports"],
        serde_json::json!([]),
        "{dump}"
    );
    assert!(
        r.client.stderr().contains("refused (NACK)"),
        "{}",
        r.client.diagnostics()
    );
    assert_eq!(r.get().status, 200, "{}", r.diagnostics());

    let status = r.mesh.proxy_status(&[]);
    let text = status.stdout_text();
    println!("{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("client-0.test"))
        .unwrap_or_else(|| panic!("no client-0 line:\n{text}"));
    assert!(
        line.contains("stale") && line.contains("app.ports[0].port: the app"),
        "{text}"
    );
    let m = r.control_metrics();
    assert_eq!(m.sum("trellis_discovery_nacks_total", &[]), 1.0);
}

/// (d) Killing the control plane under steady traffic fails no request (the proxies keep their
/// last good config); restarted, it has them back in sync.
#[test]
fn traffic_flows_while_the_control_plane_is_killed_and_restarted() {
    let mut r = Running::start();
    let outbound = r.client.outbound();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU32::new(0));
    let traffic = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let r = http_request(outbound, "GET", "http://web.test/status/200", &[], b"");
                done.fetch_add(1, Ordering::Relaxed);
                if r.status == 200 {
                    ok += 1;
                } else {
                    failed.push(r.status);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
    };

    let mut control = r.control.take().expect("a control plane");
    control.kill();
    for proxy in [&r.client, &r.web] {
        let noticed = wait_until(PUSH, || {
            proxy
                .stderr()
                .contains("serving with the last good config")
                .then_some(())
        });
        assert!(
            noticed.is_some(),
            "{} did not notice\n{}",
            proxy.name(),
            proxy.diagnostics()
        );
        assert_eq!(proxy.ready_status(), Some(200));
    }
    assert!(
        r.mesh.proxies().is_none(),
        "the control plane is still answering"
    );

    r.control = Some(r.mesh.start_control());
    let json = r.synced(&["web-0", "client-0"]);
    for name in ["web-0", "client-0"] {
        assert_eq!(proxy_row(&json, name)["connected"], true, "{json}");
    }
    // Keep going for 20 more requests after the reconnection, then stop.
    let more = r.client.config_dump();
    let after = done.load(Ordering::Relaxed) + 20;
    let kept_going = wait_until(PUSH, || {
        (done.load(Ordering::Relaxed) >= after).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    assert!(
        kept_going.is_some(),
        "the traffic stalled\n{}",
        r.diagnostics()
    );
    let (ok, failed) = traffic.join().expect("the traffic thread");
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:?}\n{}",
        failed.len(),
        r.diagnostics()
    );
    assert!(ok > 20, "only {ok} requests ran");
    assert_eq!(more["config"]["services"][0]["name"], "web");
}

/// (e) Proxies started before the control plane retry (their certificate, then their config)
/// and become ready once it is up.
#[test]
fn a_proxy_started_before_the_control_plane_becomes_ready_once_it_starts() {
    let t = trellis();
    let mesh = PushMesh::new(&t);
    let app = DemoApp::start(&t, "web");
    let mut web = mesh.start_proxy("web-0", "web", true, "");
    let mut client = mesh.start_proxy("client-0", "client", true, "outbound: 127.0.0.1:0");
    mesh.write_resources("web.yaml", &web_resources(&app, web.mesh()));
    mesh.write_resources("client.yaml", &client_resources(client.mesh(), ""));
    for proxy in [&web, &client] {
        let retrying = wait_until(STARTUP, || {
            proxy.stderr().contains("no certificate yet").then_some(())
        });
        assert!(
            retrying.is_some(),
            "{} is not retrying\n{}",
            proxy.name(),
            proxy.diagnostics()
        );
        assert_eq!(proxy.ready_status(), Some(503));
    }

    let control = mesh.start_control();
    web.wait_ready(STARTUP);
    client.wait_ready(STARTUP);
    let response = http_request(
        client.outbound(),
        "GET",
        "http://web.test/headers",
        &[],
        b"",
    );
    assert_eq!(
        response.status,
        200,
        "{}\n{}\n{}\n{}",
        response.text(),
        control.stderr_tail(30),
        client.diagnostics(),
        web.diagnostics()
    );
}

/// (f) A change to Services alone travels as a delta (the Services that changed, not the whole
/// config), is applied and ACKed; a Service removed is removed.
#[test]
fn a_change_to_services_alone_travels_as_a_delta() {
    let r = Running::start();
    let api = "---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: api, namespace: test }
spec:
  ports: [ { name: http, port: 8080, protocol: http } ]
";
    let names = |proxy: &PushedProxy| -> Vec<String> {
        proxy.config_dump()["config"]["services"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(|s| s["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let web = web_resources(&r.app, r.web.mesh());
    r.mesh.write_resources("web.yaml", &format!("{web}{api}"));
    for proxy in [&r.client, &r.web] {
        let added = wait_until(PUSH, || (names(proxy) == ["api", "web"]).then_some(()));
        assert!(
            added.is_some(),
            "{}: {:?}\n{}",
            proxy.name(),
            names(proxy),
            r.diagnostics()
        );
    }
    r.mesh.write_resources("web.yaml", &web);
    for proxy in [&r.client, &r.web] {
        let removed = wait_until(PUSH, || (names(proxy) == ["web"]).then_some(()));
        assert!(removed.is_some(), "{}: {:?}", proxy.name(), names(proxy));
    }
    r.synced(&["web-0", "client-0"]);
    let m = r.control_metrics();
    assert_eq!(
        m.sum("trellis_discovery_pushes_total", &[("kind", "delta")]),
        4.0,
        "{}",
        m.dump("trellis_discovery")
    );
    assert_eq!(m.sum("trellis_discovery_nacks_total", &[]), 0.0);
    assert_eq!(r.get().status, 200, "{}", r.diagnostics());
}
