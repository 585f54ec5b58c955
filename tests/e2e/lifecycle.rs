//! Readiness, draining on SIGTERM, fast stop on SIGINT.

use std::net::TcpStream;
use std::time::Duration;

use tokio::time::Instant;
use trellis_test_support::{
    Chain, Curl, HeldUpstream, RawConn, ServiceSpec, Target, require_tool, thp_enabled, wait_until,
};

use crate::{trellis, web_chain};

/// `slow.test:80` → an upstream behind B that holds every request for `hold`.
fn held_chain(hold: Duration, drain: &str) -> (HeldUpstream, Chain) {
    let upstream = HeldUpstream::start(hold);
    let chain = Chain::builder(&trellis())
        .service(ServiceSpec::new(
            "slow",
            80,
            "http",
            Target::Meshed(upstream.port()),
        ))
        .a_timeout("drain", drain)
        .b_timeout("drain", drain)
        .start();
    (upstream, chain)
}

#[test]
fn ready_and_live_once_started() {
    let web = web_chain();
    for proxy in [&web.chain.a, &web.chain.b] {
        let ready = proxy.admin_get("/ready");
        assert_eq!(
            ready.status,
            200,
            "/ready at {}: {}\n{}",
            proxy.name(),
            ready.text(),
            proxy.diagnostics()
        );
        let live = proxy.admin_get("/live");
        assert_eq!(
            live.status,
            200,
            "/live at {}: {}",
            proxy.name(),
            live.text()
        );
    }
}

/// `allocator.rs` turns transparent huge pages off before anything allocates, so that a
/// proxy's memory does not depend on the node's THP setting (with `always`, mimalloc's arenas
/// would fault in 2 MiB pages: 13 MB idle instead of 8). That it happens before the first
/// allocation is measured by bench/README.md's ninth session, not here.
#[test]
fn proxies_run_with_transparent_huge_pages_off() {
    let web = web_chain();
    for proxy in [&web.chain.a, &web.chain.b] {
        assert_eq!(
            thp_enabled(proxy.pid()),
            Some(false),
            "THP_enabled of {} in /proc/PID/status",
            proxy.name()
        );
    }
}

/// A thread's time slice in ns, from `/proc/PID/task/TID/sched` (`se.slice`: Linux ≥ 6.12
/// with scheduler statistics); None where the kernel does not show it.
fn slice_ns(pid: u32, tid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/sched")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("se.slice"))
        .and_then(|rest| rest.trim_start_matches([' ', ':']).trim().parse().ok())
}

/// The threads of `pid` and their names.
fn threads(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .map(|tid: u32| {
            let comm =
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
            (tid, comm.trim().to_owned())
        })
        .collect()
}

/// A proxy asks the kernel for a 100 µs time slice for its threads (`--sched-slice-us`,
/// default 100): the main thread and every runtime worker carry it. `--sched-slice-us 0`
/// leaves the kernel's default.
#[test]
fn proxies_ask_for_a_short_cpu_time_slice() {
    let own = std::process::id();
    let Some(default) = slice_ns(own, own) else {
        eprintln!(
            "skipped: this kernel does not show a thread's time slice in /proc/PID/task/TID/sched \
             (no scheduler statistics), so there is nothing to read back"
        );
        return;
    };
    let chain = Chain::builder(&trellis())
        .service(ServiceSpec::new("web", 80, "http", Target::Meshed(1)))
        .a_arg("--sched-slice-us")
        .a_arg("0")
        .start();
    let (a, b) = (chain.a.pid(), chain.b.pid());
    if slice_ns(b, b) == Some(default)
        && chain
            .b
            .process()
            .stderr()
            .contains("ignores a thread's own time slice")
    {
        eprintln!(
            "skipped: this kernel ignores a thread's own time slice (Linux < 6.12), as proxy B logged"
        );
        return;
    }
    assert_eq!(slice_ns(b, b), Some(100_000), "proxy B's main thread");
    // The proxy (like tokio) takes its worker count from TOKIO_WORKER_THREADS, else one per
    // core; with one it is the current-thread runtime, the main thread alone.
    let workers = match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(n) => n.parse().unwrap_or(1),
        Err(_) => std::thread::available_parallelism().map_or(1, usize::from),
    };
    if workers > 1 {
        // Counted whatever their name: tokio's blocking-pool threads share the workers' name
        // (`tokio-rt-worker`) and, started later, keep the default. So: at least `workers`
        // threads besides the main one carry the slice.
        let others: Vec<_> = threads(b)
            .into_iter()
            .filter(|(tid, _)| *tid != b)
            .map(|(tid, name)| (name, slice_ns(b, tid)))
            .collect();
        let with_slice = others.iter().filter(|(_, s)| *s == Some(100_000)).count();
        assert!(
            with_slice >= workers,
            "{workers} workers, but {with_slice} other threads of proxy B with 100 µs: {others:?}"
        );
    }
    assert_eq!(
        slice_ns(a, a),
        Some(default),
        "proxy A (--sched-slice-us 0)"
    );
}

#[test]
fn sigterm_drains_in_flight_request_then_exits_0() {
    if !require_tool("curl") || !require_tool("kill") {
        return;
    }
    let (upstream, mut chain) = held_chain(Duration::from_millis(1500), "10s");
    let proxy = chain.proxy_url();
    let client =
        std::thread::spawn(move || Curl::new().proxy(&proxy).arg("http://slow.test/").run());
    upstream
        .wait_request(Duration::from_secs(15))
        .unwrap_or_else(|| {
            panic!(
                "the request never reached the upstream\n{}",
                chain.diagnostics()
            )
        });

    // The request is in flight at both proxies: drain both.
    let outbound = chain.a.outbound();
    let signalled = Instant::now();
    chain.a.sigterm();
    chain.b.sigterm();

    // A stops accepting while the request is still held.
    let refused = wait_until(Duration::from_secs(1), || {
        TcpStream::connect(outbound).is_err().then_some(())
    });

    let out = client.join().unwrap();
    assert_eq!(
        out.code,
        200,
        "the in-flight request must complete during the drain\n{}{}",
        out.describe(),
        chain.diagnostics()
    );
    assert_eq!(out.text(), "held");
    let a = chain.a.wait_exit(Duration::from_secs(12));
    let b = chain.b.wait_exit(Duration::from_secs(12));
    assert_eq!(
        a.and_then(|s| s.code()),
        Some(0),
        "proxy A after SIGTERM: {a:?}\n{}",
        chain.a.diagnostics()
    );
    assert_eq!(
        b.and_then(|s| s.code()),
        Some(0),
        "proxy B after SIGTERM: {b:?}\n{}",
        chain.b.diagnostics()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "drain took {:?} for a 1.5 s request",
        signalled.elapsed()
    );
    assert!(
        refused.is_some(),
        "A still accepted connections after SIGTERM"
    );
}

#[test]
fn sigterm_with_idle_keep_alive_connection_exits_promptly() {
    // An idle keep-alive client must not hold the drain for its whole grace period.
    if !require_tool("kill") {
        return;
    }
    let web = web_chain();
    let mut chain = web.chain;
    let mut conn = RawConn::connect(chain.a.outbound());
    conn.send(b"GET http://web.test/ HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .unwrap();
    let response = conn.read_response(Duration::from_secs(20)).unwrap();
    assert_eq!(response.status, 200);
    let signalled = Instant::now();
    chain.a.sigterm();
    let status = chain.a.wait_exit(Duration::from_secs(12));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{status:?}\n{}",
        chain.a.diagnostics()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "idle proxy took {:?} to drain (drain timeout 10 s)",
        signalled.elapsed()
    );
    drop(conn);
}

#[test]
fn sigterm_gives_up_on_requests_longer_than_drain_timeout() {
    if !require_tool("curl") || !require_tool("kill") {
        return;
    }
    let (upstream, mut chain) = held_chain(Duration::from_secs(20), "1s");
    let proxy = chain.proxy_url();
    let client = std::thread::spawn(move || {
        Curl::new()
            .proxy(&proxy)
            .arg("http://slow.test/")
            .timeout(Duration::from_secs(30))
            .run()
    });
    upstream
        .wait_request(Duration::from_secs(15))
        .unwrap_or_else(|| {
            panic!(
                "the request never reached the upstream\n{}",
                chain.diagnostics()
            )
        });
    let signalled = Instant::now();
    chain.a.sigterm();
    let status = chain.a.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some(),
        "A still running 10 s after SIGTERM with drain 1 s\n{}",
        chain.a.diagnostics()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(4),
        "A exited {:?} after SIGTERM with drain 1 s",
        signalled.elapsed()
    );
    let out = client.join().unwrap();
    assert_ne!(
        out.code,
        200,
        "the held request cannot have completed\n{}",
        out.describe()
    );
}

#[test]
fn sigint_stops_fast_even_with_request_in_flight() {
    if !require_tool("curl") || !require_tool("kill") {
        return;
    }
    let (upstream, mut chain) = held_chain(Duration::from_secs(20), "10s");
    let proxy = chain.proxy_url();
    let client = std::thread::spawn(move || {
        Curl::new()
            .proxy(&proxy)
            .arg("http://slow.test/")
            .timeout(Duration::from_secs(30))
            .run()
    });
    upstream
        .wait_request(Duration::from_secs(15))
        .unwrap_or_else(|| {
            panic!(
                "the request never reached the upstream\n{}",
                chain.diagnostics()
            )
        });
    let signalled = Instant::now();
    chain.a.sigint();
    let status = chain.a.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some(),
        "A still running 5 s after SIGINT\n{}",
        chain.a.diagnostics()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "SIGINT took {:?}",
        signalled.elapsed()
    );
    let _ = client.join();
}
