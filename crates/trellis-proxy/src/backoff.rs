//! Waiting between attempts to reach the control plane: exponential backoff with jitter, so
//! that proxies started (or cut off) together do not retry together. Certificate renewal
//! ([`crate::identity`]) and the discovery stream ([`crate::xds`]) both use it.

use std::time::Duration;

/// Exponential backoff from 200 ms to 30 s, each wait moved by up to ± 20 %.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(200),
        }
    }
}

impl Backoff {
    /// The next wait; each is twice the last, up to the cap.
    pub(crate) fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(30));
        jitter(now, 0.2)
    }

    /// Start again from the shortest wait (after a success).
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

/// `d` moved by up to `fraction` of itself either way, so that proxies started together do
/// not act together.
pub(crate) fn jitter(d: Duration, fraction: f64) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(d.as_nanos() as u64);
    let unit = (h.finish() % 10_000) as f64 / 10_000.0; // [0, 1)
    d.mul_f64(1.0 + fraction * (2.0 * unit - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_fraction() {
        let d = Duration::from_secs(100);
        for _ in 0..100 {
            let j = jitter(d, 0.1);
            assert!(
                j >= Duration::from_secs(90) && j <= Duration::from_secs(110),
                "{j:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..12).map(|_| b.next()).collect();
        assert!(waits[0] <= Duration::from_millis(240));
        assert!(waits[11] <= Duration::from_secs(36) && waits[11] >= Duration::from_secs(24));
        b.reset();
        assert!(b.next() <= Duration::from_millis(240));
    }
}
