//! Process plumbing shared by `trellis proxy` and `trellis control`.
//!
//! - [`drain`]: graceful shutdown; one [`DrainTrigger`], a [`DrainWatcher`] in every listener
//!   and connection.
//! - [`signal`]: SIGTERM means drain, SIGINT (Ctrl-C) means fast stop.
//! - [`sched`]: a short CPU time slice for the proxy's threads (Linux ≥ 6.12).
//! - [`telemetry`]: the stderr log with a run-time adjustable level, and the JSON access log on
//!   stdout.
//! - [`admin`]: the admin HTTP server: `/live`, `/ready`, `/logging`, plus the application's
//!   own pages (`/metrics`, `/config_dump`).
//!
//! Wiring, in an app's `build`:
//!
//! ```no_run
//! # async fn build() -> Result<(), Box<dyn std::error::Error>> {
//! use trellis_runtime::{Admin, Readiness, TracingOptions, admin};
//!
//! let log = trellis_runtime::init_tracing(TracingOptions::default())?;
//! let (trigger, watcher) = trellis_runtime::drain::new();
//! let readiness = Readiness::new();
//! let admin = Admin::new(readiness.clone(), log)
//!     .route("/metrics", |_req| admin::response(http::StatusCode::OK, admin::OPENMETRICS, "# EOF\n"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:15000").await?;
//! tokio::spawn(admin.serve(listener, watcher));
//! readiness.set_ready();
//!
//! match trellis_runtime::shutdown_signal().await {
//!     trellis_runtime::ShutdownKind::Drain => {
//!         trigger.drain(std::time::Duration::from_secs(5)).await;
//!     }
//!     trellis_runtime::ShutdownKind::Fast => {
//!         trigger.abort();
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod drain;
pub mod sched;
pub mod signal;
pub mod telemetry;

pub use admin::{Admin, Handler, Readiness};
pub use drain::{DrainOutcome, DrainTrigger, DrainWatcher};
pub use signal::{ShutdownKind, ShutdownSignals, SignalError, shutdown_signal};
pub use telemetry::{LogHandle, TracingError, TracingOptions, init_tracing};

/// One worker thread (`TOKIO_WORKER_THREADS=1`) runs the current-thread scheduler: the whole
/// process on one thread, no work stealing and no cross-thread wake-ups. As linkerd2-proxy does
/// with one core, and what a sidecar given one CPU wants.
pub fn runtime_builder() -> tokio::runtime::Builder {
    match std::env::var("TOKIO_WORKER_THREADS").as_deref() {
        Ok("1") => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
}
