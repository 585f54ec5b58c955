//! The benchmark at a tiny scale against the real `trellis` binary (a few seconds in debug):
//! every proxy syncs over mTLS, and every change reaches exactly the proxies it should.

use std::path::PathBuf;

use clap::Parser as _;
use trellis_control_scale::{Args, run};

/// The `trellis` binary beside this test's (`cargo test --workspace` builds it, for the
/// end-to-end tests), or `$TRELLIS_BIN`.
fn trellis_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TRELLIS_BIN") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("trellis");
    path.is_file().then_some(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_run_syncs_every_proxy_and_times_every_change() {
    let Some(trellis) = trellis_binary() else {
        let why =
            "no trellis binary beside the test (run `cargo test --workspace`, or set TRELLIS_BIN)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
        eprintln!("skipped: {why}");
        return;
    };
    let trellis = trellis.display().to_string();
    let args = Args::try_parse_from([
        "trellis-control-scale",
        "--quick",
        "--proxies=10",
        "--services=20",
        "--endpoints=60",
        "--namespaces=3",
        "--shared=2",
        "--sidecars=all",
        "--rounds=4",
        "--quiet=300",
        "--timeout=60",
        "--no-write",
        "--trellis",
        &trellis,
    ])
    .unwrap();
    let report = run(args).await.unwrap().report;

    assert_eq!(report.parameters.sidecars, 60);
    assert_eq!(report.startup.compiled_proxies, 60);
    assert_eq!(report.sync.nack_reason, None);
    assert_eq!((report.sync.proxies, report.sync.nacks), (10, 0));
    assert_eq!(report.sync.first_config_ms.count, 10);
    assert!(report.sync.bytes > 0);
    assert_eq!(report.changes.len(), 4);
    for round in &report.changes {
        // An endpoint or a new service in one namespace reaches that namespace's proxies (3
        // or 4); a shared service's endpoint reaches all 10.
        assert!(round.expected >= 3, "{round:?}");
        assert_eq!(round.received, round.expected, "{round:?}");
        assert_eq!((round.nacks, round.versions.len()), (0, 1), "{round:?}");
        let compiled = round.compiled_ms.unwrap();
        assert!(compiled <= round.published_ms.unwrap() && compiled <= round.ack_ms.max);
    }
    assert_eq!(report.changes[2].expected, 10);
    let table = report.markdown();
    assert!(table.contains("| 4 | new service"), "{table}");
}
