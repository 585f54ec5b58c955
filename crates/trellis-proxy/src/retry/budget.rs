//! The retry budget (Linkerd's and Finagle's): over the last `ttl`, retries may number at
//! most `percent` % of the requests plus `min_retries_per_second × ttl`. In a full outage
//! every try fails, and the budget, not the retry policy, sets the extra load: at most
//! `percent` % more, plus the floor.
//!
//! Counted in ten buckets of `ttl / 10` each, with atomics: a bucket is reset by the first
//! request of its new round (a count lost in that race shifts the budget by one, harmlessly).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;
use trellis_model::RetryBudget;

const BUCKETS: usize = 10;

/// One service's retry budget.
#[derive(Debug)]
pub(crate) struct Budget {
    config: RetryBudget,
    born: Instant,
    slot_ns: u64,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug)]
struct Bucket {
    /// The slot number this bucket counts (ns since born / slot); `u64::MAX` before use.
    slot: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Budget {
    pub(crate) fn new(config: RetryBudget) -> Self {
        let slot_ns = u64::try_from(config.ttl.as_nanos() / BUCKETS as u128)
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            config,
            born: Instant::now(),
            slot_ns,
            buckets: Default::default(),
        }
    }

    pub(crate) fn config(&self) -> &RetryBudget {
        &self.config
    }

    /// A request (first try) was sent.
    pub(crate) fn deposit(&self) {
        self.bucket(Instant::now())
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// May a retry be sent now? If so, it is counted.
    pub(crate) fn withdraw(&self) -> bool {
        let now = Instant::now();
        let (requests, retries) = self.window(now);
        let ttl_secs = self.config.ttl.as_secs_f64();
        let floor = f64::from(self.config.min_retries_per_second) * ttl_secs;
        let allowed = floor + requests as f64 * f64::from(self.config.percent) / 100.0;
        if (retries as f64) < allowed.floor() {
            self.bucket(now).retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Requests and retries in the window that ends now.
    fn window(&self, now: Instant) -> (u64, u64) {
        let current = self.slot(now);
        self.buckets
            .iter()
            .filter(|b| {
                let slot = b.slot.load(Ordering::Relaxed);
                slot != u64::MAX && slot <= current && current - slot < BUCKETS as u64
            })
            .fold((0, 0), |(req, ret), b| {
                (
                    req + b.requests.load(Ordering::Relaxed),
                    ret + b.retries.load(Ordering::Relaxed),
                )
            })
    }

    fn slot(&self, now: Instant) -> u64 {
        let ns =
            u64::try_from(now.saturating_duration_since(self.born).as_nanos()).unwrap_or(u64::MAX);
        ns / self.slot_ns
    }

    fn bucket(&self, now: Instant) -> &Bucket {
        let slot = self.slot(now);
        let bucket = &self.buckets[(slot % BUCKETS as u64) as usize];
        let seen = bucket.slot.load(Ordering::Relaxed);
        if seen != slot
            && bucket
                .slot
                .compare_exchange(seen, slot, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.retries.store(0, Ordering::Relaxed);
        }
        bucket
    }
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            slot: AtomicU64::new(u64::MAX),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }
}

#[cfg(test)]
impl Budget {
    /// How long the window is.
    fn window_len(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.slot_ns * BUCKETS as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn budget(percent: u32, floor: u32) -> Budget {
        Budget::new(RetryBudget {
            percent,
            min_retries_per_second: floor,
            ttl: Duration::from_secs(10),
        })
    }

    fn retries_allowed(b: &Budget) -> usize {
        (0..100_000).take_while(|_| b.withdraw()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn twenty_percent_of_requests_plus_the_floor() {
        let b = budget(20, 1);
        assert_eq!(b.window_len(), Duration::from_secs(10));
        for _ in 0..100 {
            b.deposit();
        }
        // 20 % of 100, plus 1/s over 10 s.
        assert_eq!(retries_allowed(&b), 30);
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(retries_allowed(&b), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_alone_without_requests() {
        let b = budget(20, 10);
        assert_eq!(retries_allowed(&b), 100);
        let b = budget(50, 0);
        assert_eq!(retries_allowed(&b), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn old_requests_and_retries_leave_the_window() {
        let b = budget(20, 0);
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(retries_allowed(&b), 20);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(retries_allowed(&b), 0, "still in the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(retries_allowed(&b), 2, "only the new requests count");
    }
}
