//! What both binaries' `main` do around their command: build the runtime
//! (`trellis_runtime::runtime_builder`), run the command on it, and turn an error into one
//! line on stderr and exit code 1.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use rustix::process::Pid;

/// Set by `trellis up` in every process it starts, to its own pid. A `trellis` process that
/// finds it stops once `up` is no longer its parent: `up` killed with SIGKILL (which it cannot
/// catch to stop its children) leaves no proxies, control plane or demo apps behind.
pub(crate) const UP_PARENT_ENV: &str = "TRELLIS_UP_PARENT";

pub(crate) fn run(name: &str, command: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match trellis_runtime::runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("{name}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let up = std::env::var(UP_PARENT_ENV)
        .ok()
        .and_then(|pid| pid.parse().ok())
        .and_then(Pid::from_raw);
    let outcome = runtime.block_on(async {
        let Some(up) = up else {
            return command.await;
        };
        tokio::select! {
            result = command => result,
            () = parent_gone(up) => Err(anyhow::anyhow!(
                "trellis up (pid {}) is gone; stopping", up.as_raw_nonzero()
            )),
        }
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("{name}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Returns once `up` is no longer this process's parent (the kernel gave it a new one when `up`
/// died). Checked once a second.
async fn parent_gone(up: Pid) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if rustix::process::getppid() != Some(up) {
            return;
        }
    }
}
