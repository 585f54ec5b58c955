//! Graceful shutdown: one trigger, many watchers.
//!
//! [`new`] returns a [`DrainTrigger`], kept by whoever decides when the process stops, and a
//! [`DrainWatcher`], cloned into every listener and every connection.
//!
//! A watcher plays two roles:
//! - it tells its holder that drain has started ([`DrainWatcher::signaled`],
//!   [`DrainWatcher::is_draining`]): an accept loop stops accepting, a connection asks the
//!   peer to go away (hyper's `graceful_shutdown`);
//! - holding it marks the holder as *in flight*: [`DrainTrigger::drain`] waits until every
//!   watcher has been dropped. There is no separate guard type: a task that must finish
//!   before the process exits keeps a clone of the watcher for as long as it runs.
//!
//! So do not park a watcher somewhere long-lived (a struct that outlives the tasks, the
//! `Bound` handle of an app): drain would wait for it until the grace period runs out.
//!
//! ```
//! # async fn example(listener: tokio::net::TcpListener) {
//! use std::time::Duration;
//! let (trigger, watcher) = trellis_runtime::drain::new();
//! tokio::spawn(async move {
//!     loop {
//!         tokio::select! {
//!             _ = watcher.signaled() => break,
//!             Ok((stream, _)) = listener.accept() => {
//!                 let conn_watcher = watcher.clone(); // in flight until dropped
//!                 tokio::spawn(async move { /* serve, watching conn_watcher */ drop((stream, conn_watcher)) });
//!             }
//!         }
//!     }
//! });
//! let outcome = trigger.drain(Duration::from_secs(5)).await;
//! # let _ = outcome;
//! # }
//! ```

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{info, warn};

/// Starts the drain. Dropping it without calling [`drain`](Self::drain) or
/// [`abort`](Self::abort) also signals every watcher, so tasks never outlive a forgotten
/// trigger.
#[derive(Debug)]
pub struct DrainTrigger {
    signal: CancellationToken,
    in_flight: TaskTracker,
}

/// Watches for drain and, while held, keeps the drain waiting. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DrainWatcher {
    signal: CancellationToken,
    _in_flight: TaskTrackerToken,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every watcher was dropped within the grace period.
    Complete,
    /// The grace period expired with `remaining` watchers still held.
    TimedOut { remaining: usize },
}

/// A new trigger and its first watcher.
pub fn new() -> (DrainTrigger, DrainWatcher) {
    let signal = CancellationToken::new();
    let in_flight = TaskTracker::new();
    let watcher = DrainWatcher {
        signal: signal.clone(),
        _in_flight: in_flight.token(),
    };
    (DrainTrigger { signal, in_flight }, watcher)
}

impl DrainTrigger {
    /// Signals every watcher, then waits until all of them are dropped or `grace` has passed.
    pub async fn drain(self, grace: Duration) -> DrainOutcome {
        self.signal.cancel();
        self.in_flight.close();
        info!(
            grace = ?grace,
            in_flight = self.in_flight.len(),
            "draining"
        );
        match tokio::time::timeout(grace, self.in_flight.wait()).await {
            Ok(()) => {
                info!("drain complete");
                DrainOutcome::Complete
            }
            Err(_elapsed) => {
                let remaining = self.in_flight.len();
                warn!(
                    grace = ?grace,
                    remaining,
                    "drain timed out; cutting off the remaining connections"
                );
                DrainOutcome::TimedOut { remaining }
            }
        }
    }

    /// Fast stop (SIGINT): signals every watcher and returns at once with the number still
    /// in flight. The caller then exits; whatever is in flight is cut off.
    pub fn abort(self) -> usize {
        self.signal.cancel();
        let remaining = self.in_flight.len();
        info!(remaining, "fast stop; not waiting for connections");
        remaining
    }
}

impl Drop for DrainTrigger {
    fn drop(&mut self) {
        self.signal.cancel();
    }
}

impl DrainWatcher {
    /// Resolves once drain has started (at once if it already has). Cancel-safe: use it as
    /// a branch of `tokio::select!` in a loop.
    pub async fn signaled(&self) {
        self.signal.cancelled().await;
    }

    /// Whether drain has started.
    pub fn is_draining(&self) -> bool {
        self.signal.is_cancelled()
    }
}

impl DrainOutcome {
    /// Whether every watcher finished within the grace period.
    pub fn is_complete(&self) -> bool {
        matches!(self, DrainOutcome::Complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const GRACE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn completes_when_every_watcher_is_dropped() {
        let (trigger, watcher) = new();
        // A "connection" that notices the drain and needs 3 s to finish its request.
        let conn = watcher.clone();
        tokio::spawn(async move {
            conn.signaled().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(conn);
        });
        // An "accept loop" that stops as soon as the drain starts.
        tokio::spawn(async move {
            watcher.signaled().await;
            assert!(watcher.is_draining());
        });

        let start = Instant::now();
        let outcome = trigger.drain(GRACE).await;
        assert_eq!(outcome, DrainOutcome::Complete);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_with_the_count_of_stuck_watchers() {
        let (trigger, watcher) = new();
        for _ in 0..2 {
            let stuck = watcher.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(stuck);
            });
        }
        drop(watcher);

        let start = Instant::now();
        let outcome = trigger.drain(GRACE).await;
        assert_eq!(outcome, DrainOutcome::TimedOut { remaining: 2 });
        assert!(!outcome.is_complete());
        assert_eq!(start.elapsed(), GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn completes_at_once_with_no_watchers() {
        let (trigger, watcher) = new();
        drop(watcher);
        let start = Instant::now();
        assert!(trigger.drain(GRACE).await.is_complete());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn signaled_is_cancel_safe_in_select() {
        let (trigger, watcher) = new();
        // Polling and abandoning signaled() many times must neither consume the signal nor
        // keep the drain waiting.
        for _ in 0..3 {
            tokio::select! {
                _ = watcher.signaled() => panic!("not drained yet"),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        let task = tokio::spawn(async move { watcher.signaled().await });
        assert!(trigger.drain(GRACE).await.is_complete());
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn abort_signals_and_reports_in_flight() {
        let (trigger, watcher) = new();
        let held = watcher.clone();
        assert_eq!(trigger.abort(), 2);
        assert!(held.is_draining());
        held.signaled().await;
        drop(watcher);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_trigger_signals() {
        let (trigger, watcher) = new();
        drop(trigger);
        assert!(watcher.is_draining());
        watcher.signaled().await;
    }
}
