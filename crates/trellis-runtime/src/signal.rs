//! Process signals that stop the process: SIGTERM drains, SIGINT (Ctrl-C) stops fast.
//!
//! Handlers are installed when [`ShutdownSignals::install`] is called (for
//! [`shutdown_signal`], when its future is first polled). Until then the default action
//! applies and a signal kills the process without draining, so install early: before the
//! process reports ready.

use tracing::{info, warn};

/// What kind of stop the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    /// SIGTERM: stop accepting, let connections finish within the grace period, exit.
    Drain,
    /// SIGINT or Ctrl-C: exit now.
    Fast,
}

/// Installed handlers for SIGTERM and SIGINT; [`recv`](Self::recv) can be called again, e.g.
/// to turn a drain in progress into a fast stop on a second Ctrl-C.
#[derive(Debug)]
pub struct ShutdownSignals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

/// The shutdown signals could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {signal}: {source}")]
pub struct SignalError {
    signal: &'static str,
    #[source]
    source: std::io::Error,
}

/// Waits for SIGTERM ([`ShutdownKind::Drain`]) or SIGINT ([`ShutdownKind::Fast`]).
///
/// If the handlers cannot be installed this logs a warning and never resolves: the signals
/// keep their default action and stop the process without draining.
pub async fn shutdown_signal() -> ShutdownKind {
    match ShutdownSignals::install() {
        Ok(mut signals) => signals.recv().await,
        Err(error) => {
            warn!(
                %error,
                "SIGTERM and SIGINT will stop the process without draining"
            );
            std::future::pending().await
        }
    }
}

impl ShutdownSignals {
    /// Installs the handlers now. Must be called inside a tokio runtime.
    #[cfg(unix)]
    pub fn install() -> Result<Self, SignalError> {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate()).map_err(|source| SignalError {
            signal: "SIGTERM",
            source,
        })?;
        let interrupt = signal(SignalKind::interrupt()).map_err(|source| SignalError {
            signal: "SIGINT",
            source,
        })?;
        Ok(Self {
            terminate,
            interrupt,
        })
    }

    /// Installs the handlers now (Ctrl-C only on this platform).
    #[cfg(not(unix))]
    pub fn install() -> Result<Self, SignalError> {
        Ok(Self {})
    }

    /// Waits for the next shutdown signal.
    #[cfg(unix)]
    pub async fn recv(&mut self) -> ShutdownKind {
        let kind = tokio::select! {
            _ = self.terminate.recv() => ShutdownKind::Drain,
            _ = self.interrupt.recv() => ShutdownKind::Fast,
        };
        info!(?kind, "shutdown signal received");
        kind
    }

    /// Waits for the next shutdown signal.
    #[cfg(not(unix))]
    pub async fn recv(&mut self) -> ShutdownKind {
        if let Err(error) = tokio::signal::ctrl_c().await {
            warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        info!(kind = ?ShutdownKind::Fast, "shutdown signal received");
        ShutdownKind::Fast
    }
}
