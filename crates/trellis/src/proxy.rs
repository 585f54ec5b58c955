//! `trellis proxy --config FILE`: one sidecar driven by a static config file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use trellis_model::ProxyConfig;
use trellis_runtime::{DrainOutcome, ShutdownSignals, TracingOptions};

#[derive(Debug, clap::Args)]
pub(crate) struct ProxyArgs {
    /// The proxy's config (YAML): listeners, the local app, the services it may reach.
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Once ready, write the bound listener addresses here as JSON (for tests and scripts).
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Log level or directives for the stderr log (`info`, `debug`, `info,trellis_proxy=debug`).
    /// Release builds compile `trace` events out (they cost every request a check); a debug build
    /// has them.
    #[arg(long, env = "TRELLIS_LOG", default_value = "info")]
    log_level: String,
    /// Do not write the JSON access log to stdout.
    #[arg(long)]
    no_access_log: bool,
    /// The CPU time slice the proxy's threads ask the kernel for, in microseconds: 100 to
    /// 100000, or 0 for the kernel's default (Linux ≥ 6.12; older kernels ignore it). A short
    /// slice takes no more CPU; a woken proxy gets a busy core sooner (bench/README.md,
    /// "twelfth session").
    #[arg(long, env = "TRELLIS_SCHED_SLICE_US", default_value_t = 100, value_parser = parse_slice)]
    sched_slice_us: u64,
}

fn parse_slice(text: &str) -> Result<u64, String> {
    let micros: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of microseconds"))?;
    let (min, max) = (
        trellis_runtime::sched::MIN_SLICE.as_micros(),
        trellis_runtime::sched::MAX_SLICE.as_micros(),
    );
    if micros != 0 && !(min..=max).contains(&u128::from(micros)) {
        return Err(format!(
            "{micros} µs is outside the kernel's range ({min} to {max}; 0 for its default)"
        ));
    }
    Ok(micros)
}

/// Asks for the configured slice for every thread the runtime has started; a failure costs
/// latency under CPU contention, not correctness, so it is logged and the proxy goes on.
fn apply_slice(micros: u64) {
    if micros == 0 {
        return;
    }
    match trellis_runtime::sched::set_slice(std::time::Duration::from_micros(micros)) {
        Ok(outcome) if outcome.honoured => {
            tracing::debug!(
                micros,
                threads = outcome.threads,
                skipped = outcome.skipped,
                "CPU time slice set"
            )
        }
        Ok(_) => tracing::info!(
            micros,
            "this kernel ignores a thread's own time slice (Linux < 6.12): running with its default"
        ),
        Err(error) => {
            tracing::warn!(micros, %error, "cannot set the CPU time slice: running with the kernel's default")
        }
    }
}

pub(crate) async fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let file = args.config.display().to_string();
    let text = match std::fs::read_to_string(&args.config) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("trellis: cannot read config file {file}: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    let config = match ProxyConfig::from_yaml(&file, &text) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!(
                "trellis: {file} is not a valid proxy config ({} errors):",
                errors.0.len()
            );
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    // Install signal handlers before anything else so an early SIGTERM is not lost.
    let mut signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    let log = trellis_runtime::init_tracing(TracingOptions {
        level: args.log_level.clone(),
        access_log: !args.no_access_log,
    })?;
    tracing::info!(config = %file, node = %config.node.name, services = config.services.len(), "starting proxy");
    apply_slice(args.sched_slice_us);
    tracing::debug!(config = ?config, "effective config");
    let grace = config.timeouts.drain;

    // Building waits for the certificate and, with a control plane, the first config: a
    // signal meanwhile stops the proxy instead of being ignored until then.
    let bound = tokio::select! {
        bound = trellis_proxy::build(config, log) => bound?,
        kind = signals.recv() => {
            tracing::info!(?kind, "stopped before the proxy was ready");
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Some(path) = &args.ready_file {
        write_atomically(path, &serde_json::to_vec(&bound.addrs)?)
            .with_context(|| format!("cannot write ready file {}", path.display()))?;
    }

    let kind = signals.recv().await;
    tracing::info!(?kind, "shutting down");
    match bound.shutdown(kind, grace).await {
        DrainOutcome::Complete => tracing::info!("drained"),
        DrainOutcome::TimedOut { remaining } => {
            tracing::info!(remaining, "stopped with connections still open")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Write `bytes` to `path` so that a reader never sees a partial file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
