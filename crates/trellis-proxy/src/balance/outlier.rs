//! Outlier detection (passive health checking): an endpoint that fails `consecutive_5xx`
//! times in a row is ejected for `base × 2^(n-1)` (its `n`th ejection, capped), never taking
//! the set's ejected share above `max_ejection_percent`. When its time is up, the next pick
//! that lands on it claims it as a probe (other picks still pass it by): the probe's outcome
//! brings it back, or ejects it again for twice as long. Each `interval` it then stays
//! healthy takes one off `n`.
//!
//! The state is atomics per endpoint, read by every pick without a lock; the decision to
//! eject (rare) takes the set's [`Ejector`] lock so that two concurrent ejections cannot
//! both pass the share check.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;
use trellis_model::OutlierDetection;

use super::EndpointStats;

/// How one try went, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Any response below 500.
    Success,
    /// A 5xx response, a failed connection, a reset or a timeout.
    Failure,
}

/// One endpoint's ejection state.
#[derive(Debug)]
pub(crate) struct Outlier {
    born: Instant,
    /// Failures in a row.
    failures: AtomicU32,
    /// Ejected until this (ns since `born`); 0: in service.
    until: AtomicU64,
    /// A probe is in flight (the ejection is over, its outcome pending).
    probing: AtomicBool,
    /// Ejections so far, less one per healthy interval since the last return.
    ejections: AtomicU32,
    /// When it last returned (ns since `born`).
    returned: AtomicU64,
}

/// Serializes ejection decisions for one endpoint set.
#[derive(Debug, Default)]
pub(crate) struct Ejector {
    lock: Mutex<()>,
}

impl Outlier {
    pub(crate) fn new(born: Instant) -> Self {
        Self {
            born,
            failures: AtomicU32::new(0),
            until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            ejections: AtomicU32::new(0),
            returned: AtomicU64::new(0),
        }
    }

    fn ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.born).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the endpoint is ejected now (or waiting for its probe's outcome).
    pub(crate) fn ejected(&self) -> bool {
        self.until.load(Ordering::Relaxed) != 0
    }

    /// Could a pick take it: in service, or its ejection over and no probe in flight.
    pub(crate) fn usable(&self, now: Instant) -> bool {
        let until = self.until.load(Ordering::Relaxed);
        until == 0 || self.ns(now) >= until && !self.probing.load(Ordering::Relaxed)
    }

    /// Take it for a request: in service, or as the probe once its ejection is over.
    pub(crate) fn take(&self, now: Instant) -> bool {
        let until = self.until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        self.ns(now) >= until
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

impl Ejector {
    /// Record how a try to `endpoints[i]` went, ejecting it if it has now failed too often;
    /// true when it brought an ejected endpoint back.
    pub(crate) fn record<E: AsRef<EndpointStats>>(
        &self,
        endpoints: &[E],
        i: usize,
        outcome: Outcome,
        config: &OutlierDetection,
        now: Instant,
    ) -> bool {
        let Some(ep) = endpoints.get(i) else {
            return false;
        };
        let o = &ep.as_ref().outlier;
        let t = o.ns(now);
        match outcome {
            Outcome::Success => {
                o.failures.store(0, Ordering::Relaxed);
                if o.until.load(Ordering::Relaxed) != 0 && t >= o.until.load(Ordering::Relaxed) {
                    // The probe (or a request that raced it) succeeded: back in service.
                    o.until.store(0, Ordering::Relaxed);
                    o.probing.store(false, Ordering::Release);
                    o.returned.store(t.max(1), Ordering::Relaxed);
                    tracing::info!("endpoint returns after its ejection (probe succeeded)");
                    return true;
                }
                false
            }
            Outcome::Failure => {
                let until = o.until.load(Ordering::Relaxed);
                if until != 0 {
                    if t >= until && o.probing.load(Ordering::Relaxed) {
                        // The probe failed: out again, for longer.
                        let n = o.ejections.fetch_add(1, Ordering::Relaxed) + 1;
                        o.until.store(t + ejection_ns(config, n), Ordering::Relaxed);
                        o.probing.store(false, Ordering::Release);
                        tracing::warn!(ejections = n, "endpoint ejected again (probe failed)");
                    }
                    return false;
                }
                let failures = o.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures < config.consecutive_5xx {
                    return false;
                }
                let _decide = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
                if o.until.load(Ordering::Relaxed) != 0 {
                    return false;
                }
                let ejected = endpoints
                    .iter()
                    .filter(|e| e.as_ref().outlier.ejected())
                    .count();
                let allowed = endpoints.len() * config.max_ejection_percent as usize / 100;
                if ejected + 1 > allowed {
                    tracing::debug!(
                        ejected,
                        allowed,
                        "endpoint not ejected: max_ejection_percent reached"
                    );
                    return false;
                }
                // Healthy intervals since it last returned forgive earlier ejections.
                let returned = o.returned.load(Ordering::Relaxed);
                let interval = u64::try_from(config.interval.as_nanos())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let forgiven = if returned == 0 {
                    0
                } else {
                    u32::try_from(t.saturating_sub(returned) / interval).unwrap_or(u32::MAX)
                };
                let n = o.ejections.load(Ordering::Relaxed).saturating_sub(forgiven) + 1;
                o.ejections.store(n, Ordering::Relaxed);
                o.failures.store(0, Ordering::Relaxed);
                o.until.store(t + ejection_ns(config, n), Ordering::Relaxed);
                tracing::warn!(
                    failures,
                    ejections = n,
                    "endpoint ejected (outlier detection)"
                );
                false
            }
        }
    }
}

/// `base × 2^(n-1)`, at most `max_ejection_time`, in nanoseconds (at least 1).
fn ejection_ns(config: &OutlierDetection, n: u32) -> u64 {
    let factor = 1u32 << n.saturating_sub(1).min(20);
    let time = config
        .base_ejection_time
        .saturating_mul(factor)
        .min(config.max_ejection_time.max(config.base_ejection_time));
    u64::try_from(time.as_nanos()).unwrap_or(u64::MAX).max(1)
}
