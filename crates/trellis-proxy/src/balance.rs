//! Picking an endpoint of a service.
//!
//! The traffic-management issue brings least-request (P2C over peak EWMA) and consistent
//! hashing; they plug in here as further [`Balancer`] implementations. Endpoint sets are
//! immutable snapshots (see `state`), so a pick takes no lock.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Chooses one endpoint index out of `len` candidates.
pub(crate) trait Balancer: Send + Sync + std::fmt::Debug {
    /// The index of the endpoint to use, or `None` when there is none.
    fn pick(&self, len: usize) -> Option<usize>;
}

/// Round robin over the endpoint list.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn pick(&self, len: usize) -> Option<usize> {
        if len == 0 {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_and_handles_empty() {
        let rr = RoundRobin::default();
        assert_eq!(rr.pick(0), None);
        let picks: Vec<_> = (0..6).map(|_| rr.pick(3).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }
}
