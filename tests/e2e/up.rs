//! `trellis up` as a newcomer runs it: the demo shop starts (control plane, CA, a sidecar per
//! workload, an ingress), a curl of the ingress crosses the mesh, the sidecars' `/metrics`
//! show the traffic, a change to the resources on disk reaches the proxies, and Ctrl-C stops
//! everything with no process left behind.
//!
//! The demo's files are copied from `examples/demo/` with the fixed ports (apps, ingress)
//! replaced by free ones, so that the test never collides with a `trellis up` a developer is
//! running, and the control plane takes free ports too.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use trellis_test_support::discovery::fixed_port;
use trellis_test_support::{Metrics, Process, TestDir, http_request, thp_enabled};

use crate::trellis;

/// Generous for a debug build on two busy cores: six proxies and five apps start.
const UP: Duration = Duration::from_secs(120);

/// The demo's fixed ports, each to be replaced by a free one.
const DEMO_PORTS: &[&str] = &["18080", "19080", "19081", "19090", "17070", "\"8080\""];

struct Up {
    process: Process,
    state: TestDir,
    resources: TestDir,
    ingress: SocketAddr,
    /// Each workload's sidecar admin address, by workload (`frontend.shop`).
    admins: Vec<(String, SocketAddr)>,
}

/// `trellis up` starts each process in a group of its own and stops them on SIGTERM; the
/// SIGKILL a dropped `Process` gets would leave them all running (a failed test used to leave
/// eleven processes behind).
impl Drop for Up {
    fn drop(&mut self) {
        stop(&mut self.process);
    }
}

fn stop(up: &mut Process) {
    up.signal("TERM");
    if up.wait_exit(Duration::from_secs(20)).is_none() {
        up.kill();
    }
}

impl Up {
    fn start() -> Up {
        let resources = TestDir::new("up-resources");
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
        let ports: Vec<(String, String)> = DEMO_PORTS
            .iter()
            .map(|p| {
                let free = fixed_port().to_string();
                let free = if p.starts_with('"') {
                    format!("\"{free}\"")
                } else {
                    free
                };
                (p.to_string(), free)
            })
            .collect();
        for entry in std::fs::read_dir(&demo).expect("examples/demo") {
            let path = entry.expect("a directory entry").path();
            let mut text = std::fs::read_to_string(&path).expect("a demo file");
            for (from, to) in &ports {
                text = text.replace(from.as_str(), to);
            }
            let name = path.file_name().expect("a file name").to_string_lossy();
            resources.write(&name, text);
        }
        let state = TestDir::new("up-state");
        let mut command = trellis().command();
        command
            .args(["up", "-f"])
            .arg(resources.path())
            .arg("--state-dir")
            .arg(state.path())
            .args(["--control", "127.0.0.1:0", "--control-admin", "127.0.0.1:0"]);
        let mut process = Process::spawn("up", command);
        if process
            .wait_for_stdout(UP, |l| l.contains("Ctrl-C stops everything"))
            .is_none()
        {
            stop(&mut process);
            panic!(
                "trellis up did not come up\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
                process.stdout_lines().join("\n"),
                process.stderr_tail(60),
                logs(state.path())
            );
        }
        let stdout = process.stdout_lines();
        let ingress = stdout
            .iter()
            .find_map(|l| {
                let rest = l.trim().strip_prefix("ingress")?.trim();
                rest.strip_prefix("http://")?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no ingress line:\n{}", stdout.join("\n")));
        let admins = stdout
            .iter()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let name = words.next()?.to_owned();
                let admin = words
                    .find_map(|w| w.strip_prefix("http://"))?
                    .trim_end_matches('/')
                    .parse()
                    .ok()?;
                name.ends_with(".shop").then_some((name, admin))
            })
            .collect();
        Up {
            process,
            state,
            resources,
            ingress,
            admins,
        }
    }

    fn admin(&self, workload: &str) -> SocketAddr {
        self.admins
            .iter()
            .find(|(name, _)| name == workload)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {workload} in {:?}", self.admins))
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- up stdout ---\n{}\n--- up stderr ---\n{}\n{}",
            self.process.stdout_lines().join("\n"),
            self.process.stderr_tail(40),
            logs(self.state.path())
        )
    }
}

/// The version of reviews that answered one request through the ingress.
fn reviews_version(up: &Up) -> String {
    let response = http_request(up.ingress, "GET", "/", &[], b"");
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        up.diagnostics()
    );
    let tree = response.json();
    tree["calls"]
        .as_array()
        .and_then(|calls| {
            calls
                .iter()
                .find(|c| c["target"] == "http://reviews.shop:9080/")
        })
        .and_then(|c| c["reply"]["version"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// The tail of every log under the state directory.
fn logs(state: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(state.join("logs")) else {
        return out;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(12)..];
        out.push_str(&format!(
            "--- {} ---\n{}\n",
            entry.path().display(),
            tail.join("\n")
        ));
    }
    out
}

/// Processes whose command line or environment names `state` (every proxy's config is
/// there; every app gets `TRELLIS_UP_STATE`).
fn left_running(state: &Path) -> Vec<String> {
    let needle = state.display().to_string();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let read = |f: &str| {
            std::fs::read(entry.path().join(f))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default()
        };
        let cmdline = read("cmdline");
        let environ = read("environ");
        if (cmdline.contains(&needle) && !cmdline.contains(" up ")) || environ.contains(&needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

#[test]
fn the_demo_comes_up_serves_the_ingress_and_stops_cleanly() {
    a_killed_up_leaves_nothing_running();
    // `up` gives back the THP setting it was started with before it starts workloads' own
    // commands, which inherit it; its proxies turn THP off for themselves. Started with THP
    // allowed (whatever the test runner had), so that keeping the proxy's setting (off) shows.
    rustix::thread::disable_transparent_huge_pages(false).expect("prctl(PR_SET_THP_DISABLE, 0)");
    assert_eq!(
        thp_enabled(std::process::id()),
        Some(true),
        "THP_enabled of this test"
    );
    let mut up = Up::start();
    assert_eq!(
        thp_enabled(up.process.pid()),
        Some(true),
        "THP_enabled of trellis up: the workloads it starts would inherit the proxy's setting"
    );

    // The ingress answers with the whole call tree, across the mesh.
    let response = http_request(up.ingress, "GET", "/", &[], b"");
    assert_eq!(
        response.status,
        200,
        "{}\n{}",
        response.text(),
        up.diagnostics()
    );
    let tree = response.json();
    assert_eq!(tree["service"], "frontend", "{tree}");
    assert_eq!(tree["ok"], true, "{tree}");
    let reply = |target: &str| -> serde_json::Value {
        tree["calls"]
            .as_array()
            .and_then(|calls| calls.iter().find(|c| c["target"] == target))
            .map(|c| c["reply"].clone())
            .unwrap_or_else(|| panic!("no call to {target} in {tree}"))
    };
    assert_eq!(reply("http://reviews.shop:9080/")["service"], "reviews");
    let catalog = reply("grpc://catalog.shop:9090");
    assert_eq!(catalog["service"], "catalog", "{tree}");
    assert_eq!(
        catalog["calls"][0]["target"], "tcp://stock.shop:7070",
        "{tree}"
    );
    assert_eq!(catalog["calls"][0]["ok"], true, "{tree}");

    // The frontend's sidecar saw it: inbound from the ingress, outbound to reviews.
    let metrics = http_request(up.admin("frontend.shop"), "GET", "/metrics", &[], b"");
    let m = Metrics::parse(&metrics.text());
    let inbound = m.sum(
        "trellis_requests_total",
        &[
            ("reporter", "destination"),
            ("destination_service", "frontend.shop.svc.cluster.local"),
        ],
    );
    assert!(
        inbound >= 1.0,
        "{}\n{}",
        m.dump("trellis_requests"),
        up.diagnostics()
    );
    assert!(
        m.sum(
            "trellis_requests_total",
            &[
                ("reporter", "source"),
                ("connection_security_policy", "mutual_tls")
            ]
        ) >= 1.0,
        "{}",
        m.dump("trellis_requests")
    );

    // The HTTPRoute splits reviews 90/10; a change on disk to 0/100 reaches the frontend's
    // sidecar and every request then goes to v2. The push time is measured and printed.
    let versions = |n: usize| -> (usize, usize) {
        let mut counts = (0, 0);
        for _ in 0..n {
            match reviews_version(&up).as_str() {
                "v1" => counts.0 += 1,
                "v2" => counts.1 += 1,
                other => panic!("reviews answered {other:?}\n{}", up.diagnostics()),
            }
        }
        counts
    };
    let (v1, v2) = versions(100);
    assert!(v1 >= 80 && v2 >= 5, "a 90/10 split gave {v1}/{v2}");
    let file = up.resources.join("reviews.yaml");
    let text = std::fs::read_to_string(&file).expect("reviews.yaml");
    let changed = text
        .replace("weight: 90", "weight: 0")
        .replace("weight: 10", "weight: 100");
    assert_ne!(changed, text, "the demo's weights moved");
    let start = tokio::time::Instant::now();
    let tmp = up.resources.write("reviews.yaml.tmp", changed);
    std::fs::rename(&tmp, &file).expect("rename");
    let mut in_a_row = 0;
    while in_a_row < 20 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the route change never took effect\n{}",
            up.diagnostics()
        );
        if reviews_version(&up) == "v2" {
            in_a_row += 1;
        } else {
            in_a_row = 0;
        }
    }
    println!(
        "route change: {:.0} ms from the file's rename to 20 requests in a row on v2 \
         (directory polled every 250 ms, 50 ms debounce)",
        start.elapsed().as_secs_f64() * 1000.0
    );
    let (v1, v2) = versions(50);
    assert_eq!((v1, v2), (0, 50));

    // An invalid edit is refused with its file and line; the mesh keeps serving.
    std::fs::write(&file, "apiVersion: trellis.dev/v1alpha1\nkind: Service\nmetadata: { name: x }\nspec: { ports: nope }\n")
        .expect("write");
    let seen = trellis_test_support::wait_until(Duration::from_secs(30), || {
        let stderr = up.process.stderr();
        stderr.contains("change refused").then_some(stderr)
    })
    .unwrap_or_else(|| panic!("the invalid edit was not refused\n{}", up.diagnostics()));
    assert!(seen.contains("reviews.yaml:4:"), "{seen}");
    assert_eq!(reviews_version(&up), "v2");

    // Ctrl-C: apps, then proxies, then the control plane; nothing left.
    up.process.signal("INT");
    let status = up.process.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        up.diagnostics()
    );
    let stdout = up.process.stdout_lines().join("\n");
    assert!(
        stdout.contains("stopped 5 apps, 6 proxies and the control plane"),
        "{stdout}"
    );
    let left = left_running(up.state.path());
    assert!(left.is_empty(), "still running: {left:#?}");
    drop(up);
}

/// `up` killed with SIGKILL cannot stop its children; each `trellis` child notices that `up` is
/// no longer its parent (checked once a second) and stops by itself. Run at the start of the
/// demo's test, not as a test of its own: two demos at once race for free ports (a catalog app
/// found its port taken by the other demo's sidecar).
fn a_killed_up_leaves_nothing_running() {
    let mut up = Up::start();
    up.process.kill();
    let stopped = trellis_test_support::wait_until(Duration::from_secs(20), || {
        left_running(up.state.path()).is_empty().then_some(())
    });
    assert!(
        stopped.is_some(),
        "still running 20 s after up was killed: {:#?}",
        left_running(up.state.path())
    );
}
