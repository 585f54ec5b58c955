//! Picking a rule's backend in proportion to the weights, without a lock.
//!
//! The weights (divided by their greatest common divisor) give each backend a share of
//! `0..total`. A shared counter numbers the picks, and pick `n` takes the backend whose share
//! holds `n * step mod total`, with `step` coprime to `total` and close to `total / φ`:
//! - every window of `total` consecutive picks visits each point of `0..total` exactly once,
//!   so the split is exact over every window, not only on average;
//! - a golden-ratio step spreads consecutive points over the whole range, so a backend's
//!   picks are evenly spaced (a 90/10 split sends every tenth request to the small side, not
//!   ten in a row).
//!
//! One relaxed `fetch_add` per pick; no table proportional to the weights.

use std::sync::atomic::{AtomicU64, Ordering};

/// Backends with their weights.
#[derive(Debug)]
pub(crate) struct Weighted<B> {
    /// Each backend with the end of its share of `0..total`, in order.
    shares: Vec<(u64, B)>,
    total: u64,
    step: u64,
    next: AtomicU64,
}

impl<B> Weighted<B> {
    /// Backends with weight 0 get nothing; with none left, [`Weighted::pick`] is `None`.
    pub(crate) fn new(backends: Vec<(u32, B)>) -> Self {
        let divisor = backends
            .iter()
            .map(|(w, _)| u64::from(*w))
            .fold(0, gcd)
            .max(1);
        let mut total = 0;
        let shares = backends
            .into_iter()
            .filter(|(w, _)| *w > 0)
            .map(|(w, b)| {
                total += u64::from(w) / divisor;
                (total, b)
            })
            .collect();
        Self {
            shares,
            total,
            step: golden_step(total),
            next: AtomicU64::new(0),
        }
    }

    /// The next backend, or `None` when no backend has a weight.
    pub(crate) fn pick(&self) -> Option<&B> {
        match self.shares.as_slice() {
            [] => None,
            [(_, only)] => Some(only),
            shares => {
                let n = self.next.fetch_add(1, Ordering::Relaxed) % self.total;
                // Below total², which fits: total is at most 2^32 backends of weight 10^6.
                let point = (u128::from(n) * u128::from(self.step) % u128::from(self.total)) as u64;
                let i = shares.partition_point(|(end, _)| *end <= point);
                shares.get(i).map(|(_, b)| b)
            }
        }
    }
}

/// The integer closest to `total / φ` that is coprime to `total` (at least 1).
fn golden_step(total: u64) -> u64 {
    // 1/φ ≈ 0.618034.
    let mut step = ((u128::from(total) * 618_034 + 500_000) / 1_000_000) as u64;
    step = step.max(1);
    while total > 1 && gcd(step, total) != 1 {
        step += 1;
    }
    step
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(weights: &[u32], n: usize) -> Vec<usize> {
        let w = Weighted::new(weights.iter().copied().zip(0..).collect());
        (0..n).map(|_| *w.pick().unwrap()).collect()
    }

    fn counts(picks: &[usize], backends: usize) -> Vec<usize> {
        (0..backends)
            .map(|b| picks.iter().filter(|&&p| p == b).count())
            .collect()
    }

    #[test]
    fn every_window_of_the_total_is_split_exactly() {
        for weights in [
            &[90, 10][..],
            &[1, 1],
            &[1, 2, 3],
            &[50, 30, 20],
            &[999_999, 1],
            &[7, 0, 5],
        ] {
            let reduced: Vec<u64> = {
                let g = weights.iter().map(|w| u64::from(*w)).fold(0, gcd);
                weights.iter().map(|w| u64::from(*w) / g).collect()
            };
            let total: u64 = reduced.iter().sum();
            let window = total.min(10_000) as usize;
            if window < total as usize {
                continue;
            }
            // Two windows, starting anywhere.
            let all = picks(weights, 3 * window);
            for start in [0, window / 3, window] {
                let got = counts(&all[start..start + window], weights.len());
                let want: Vec<usize> = reduced.iter().map(|w| *w as usize).collect();
                assert_eq!(got, want, "weights {weights:?} from pick {start}");
            }
        }
    }

    #[test]
    fn a_small_share_is_spread_out() {
        // 90/10: exactly one in every ten consecutive picks goes to the small side.
        let all = picks(&[90, 10], 1000);
        for window in all.windows(10) {
            assert_eq!(window.iter().filter(|&&p| p == 1).count(), 1, "{all:?}");
        }
        // 1/3 each: never the same backend twice in a row.
        let all = picks(&[1, 1, 1], 99);
        assert!(all.windows(2).all(|w| w[0] != w[1]), "{all:?}");
    }

    #[test]
    fn large_weights_keep_their_proportions() {
        let all = picks(&[999_999, 1], 2_000_000);
        let small = counts(&all, 2)[1];
        assert_eq!(small, 2, "once per million");
        let all = picks(&[700_001, 299_999], 100_000);
        let share = counts(&all, 2)[0] as f64 / all.len() as f64;
        assert!((share - 0.700_001).abs() < 0.001, "{share}");
    }

    #[test]
    fn zero_weights_get_nothing_and_all_zero_is_no_backend() {
        assert_eq!(counts(&picks(&[0, 3, 0], 30), 3), [0, 30, 0]);
        let none: Weighted<u8> = Weighted::new(vec![(0, 1), (0, 2)]);
        assert_eq!(none.pick(), None);
        let empty: Weighted<u8> = Weighted::new(Vec::new());
        assert_eq!(empty.pick(), None);
    }

    #[test]
    fn the_step_is_coprime_to_the_total() {
        for total in 1..2000 {
            let step = golden_step(total);
            assert_eq!(gcd(step, total).max(1), 1, "total {total} step {step}");
        }
        assert_eq!(golden_step(10), 7);
    }
}
