//! What least request balances on: each endpoint's pending requests and its peak-EWMA
//! latency (Linkerd's and Finagle's load metric), kept in atomics that outlive config pushes.
//!
//! The latency estimate jumps up to any slower response at once (peak), moves down towards
//! faster ones by an exponentially weighted average with a 10 s time constant, and, read, it
//! decays towards zero with the time since the last response: an endpoint that was slow once
//! is tried again after a while instead of being starved forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::outlier::Outlier;

/// The decay time constant of the latency estimate.
const DECAY: Duration = Duration::from_secs(10);

/// The load and health of one endpoint.
#[derive(Debug)]
pub struct EndpointStats {
    /// Times below are nanoseconds since this.
    born: Instant,
    pending: AtomicU32,
    /// The latency estimate in nanoseconds, as `f64` bits.
    rtt: AtomicU64,
    /// When `rtt` was last updated.
    stamp: AtomicU64,
    pub(crate) outlier: Outlier,
}

/// A request in flight to an endpoint; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<EndpointStats>,
}

impl EndpointStats {
    /// A new endpoint whose latency is taken to be `initial` (the set's average: a neutral
    /// cost, neither favoured nor avoided).
    pub fn new(initial: Duration) -> Self {
        let born = Instant::now();
        Self {
            born,
            pending: AtomicU32::new(0),
            rtt: AtomicU64::new((initial.as_nanos() as f64).to_bits()),
            stamp: AtomicU64::new(0),
            outlier: Outlier::new(born),
        }
    }

    /// Nanoseconds from `born` to `now`.
    pub(crate) fn since_born(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.born).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Pending requests × latency estimate: what least request compares.
    pub fn cost(&self, now: Instant) -> f64 {
        let pending = self.pending.load(Ordering::Relaxed);
        self.rtt_ns(now) * f64::from(pending + 1)
    }

    /// The latency estimate at `now`, in nanoseconds (decayed since the last response).
    pub fn rtt_ns(&self, now: Instant) -> f64 {
        let rtt = f64::from_bits(self.rtt.load(Ordering::Relaxed));
        let elapsed = self
            .since_born(now)
            .saturating_sub(self.stamp.load(Ordering::Relaxed));
        rtt * decay(elapsed)
    }

    /// Requests in flight.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// A request starts.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: self.clone(),
        }
    }

    /// Start the estimate afresh from `rtt` (an endpoint back from ejection: its failures
    /// are history).
    pub fn reset(&self, rtt: Duration, now: Instant) {
        self.stamp.store(self.since_born(now), Ordering::Relaxed);
        self.rtt
            .store((rtt.as_nanos() as f64).to_bits(), Ordering::Relaxed);
    }

    /// A response took `rtt`. Concurrent updates may lose one another: an estimate, not a
    /// ledger.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let t = self.since_born(now);
        let sample = rtt.as_nanos() as f64;
        let last = self.stamp.swap(t, Ordering::Relaxed);
        let estimate = f64::from_bits(self.rtt.load(Ordering::Relaxed));
        let next = if sample > estimate {
            sample
        } else {
            let w = decay(t.saturating_sub(last));
            estimate * w + sample * (1.0 - w)
        };
        self.rtt.store(next.to_bits(), Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The weight an observation `elapsed_ns` old keeps.
fn decay(elapsed_ns: u64) -> f64 {
    (-(elapsed_ns as f64) / DECAY.as_nanos() as f64).exp()
}
