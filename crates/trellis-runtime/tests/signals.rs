//! Sends real signals to this test process, so it runs in its own test process.
#![cfg(unix)]

use std::time::Duration;

use trellis_runtime::{ShutdownKind, ShutdownSignals};

const DEADLINE: Duration = Duration::from_secs(10);

/// Sends `signal` to this process with the `kill` tool; `false` if the tool is missing.
fn kill(signal: &str) -> bool {
    let pid = std::process::id().to_string();
    match std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
    {
        Ok(status) => {
            assert!(status.success(), "kill {signal} {pid}: {status}");
            true
        }
        Err(error) => {
            let message = format!("skipped: cannot run `kill` ({error})");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
            eprintln!("{message}");
            false
        }
    }
}

#[tokio::test]
async fn sigterm_drains_and_sigint_stops_fast() {
    let mut signals = ShutdownSignals::install().unwrap();

    if !kill("-TERM") {
        return;
    }
    let kind = tokio::time::timeout(DEADLINE, signals.recv())
        .await
        .unwrap();
    assert_eq!(kind, ShutdownKind::Drain);

    assert!(kill("-INT"));
    let kind = tokio::time::timeout(DEADLINE, signals.recv())
        .await
        .unwrap();
    assert_eq!(kind, ShutdownKind::Fast);
}
