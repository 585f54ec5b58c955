//! Picking an endpoint of a service, without a lock.
//!
//! A [`Balancer`] is built with each endpoint set (an immutable snapshot, rebuilt on every
//! config push) and picks an index into it:
//! - round robin;
//! - least request (the default): power of two choices over peak-EWMA latency × pending
//!   requests ([`EndpointStats`], atomics per endpoint that outlive config pushes);
//! - ring hash and Maglev: consistent hashing of a request key ([`hash`]); a request without
//!   the key is balanced by least request.
//!
//! Every pick skips endpoints that outlier detection ejected ([`outlier`]), lets one request
//! through to an endpoint whose ejection is over (the probe), and avoids the endpoints a
//! retried request already tried. When that leaves nothing, it relaxes first the retry's
//! preference, then ejection (a set that is all ejected still serves: Envoy's panic mode).

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::Instant;
use trellis_model::LoadBalancerKind;

mod hash;
mod load;
mod outlier;
#[cfg(test)]
mod tests;

pub use hash::{Maglev, Ring, hash_bytes};
pub use load::{EndpointStats, InFlight};
pub(crate) use outlier::Ejector;
pub use outlier::Outcome;

/// Virtual nodes a ring pick passes before it gives up on the key (its endpoint and the
/// next ones are all ejected or tried).
const RING_WALK: usize = 256;

/// Chooses endpoints for one endpoint set.
#[derive(Debug)]
pub struct Balancer {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    RoundRobin(AtomicUsize),
    LeastRequest,
    RingHash(Ring),
    Maglev(Maglev),
}

/// What one pick knows of the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pick<'a> {
    /// The request's hash key (consistent hashing); `None`: balance by least request.
    pub hash: Option<u64>,
    /// Endpoints already tried by this request (a retry prefers another one).
    pub avoid: &'a [usize],
}

impl Balancer {
    /// A balancer of `kind` over endpoints identified by their addresses (what consistent
    /// hashing hashes, so that an endpoint keeps its keys across config pushes).
    pub fn new(kind: LoadBalancerKind, addrs: &[SocketAddr]) -> Self {
        let kind = match kind {
            LoadBalancerKind::RoundRobin => Kind::RoundRobin(AtomicUsize::new(0)),
            LoadBalancerKind::LeastRequest => Kind::LeastRequest,
            LoadBalancerKind::RingHash => Kind::RingHash(Ring::new(addrs)),
            LoadBalancerKind::Maglev => Kind::Maglev(Maglev::new(addrs)),
        };
        Self { kind }
    }

    /// Whether picks use a request key.
    pub fn hashing(&self) -> bool {
        matches!(self.kind, Kind::RingHash(_) | Kind::Maglev(_))
    }

    /// The index of the endpoint to use, or `None` when there is none.
    pub fn pick<E: AsRef<EndpointStats>>(&self, endpoints: &[E], pick: Pick<'_>) -> Option<usize> {
        if endpoints.is_empty() {
            return None;
        }
        let now = Instant::now();
        let set = Set {
            endpoints,
            avoid: pick.avoid,
            now,
        };
        let found = match (&self.kind, pick.hash) {
            (Kind::RoundRobin(next), _) => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                set.first_from(start)
            }
            // The key's endpoint, else its next ones on the ring; only then by load.
            (Kind::RingHash(ring), Some(h)) => ring
                .walk(h)
                .take(RING_WALK)
                .find(|&i| set.take(i))
                .or_else(|| set.p2c()),
            (Kind::Maglev(table), Some(h)) => {
                table.probes(h).find(|&i| set.take(i)).or_else(|| set.p2c())
            }
            (Kind::LeastRequest | Kind::RingHash(_) | Kind::Maglev(_), _) => set.p2c(),
        };
        found.or_else(|| set.relaxed())
    }
}

/// One pick's view of the endpoints.
struct Set<'a, E> {
    endpoints: &'a [E],
    avoid: &'a [usize],
    now: Instant,
}

impl<E: AsRef<EndpointStats>> Set<'_, E> {
    fn stats(&self, i: usize) -> &EndpointStats {
        self.endpoints[i].as_ref()
    }

    /// May `i` be picked (cheap: claims nothing)?
    fn usable(&self, i: usize) -> bool {
        !self.avoid.contains(&i) && self.stats(i).outlier.usable(self.now)
    }

    /// Pick `i` if it is usable, claiming its probe if its ejection is over.
    fn take(&self, i: usize) -> bool {
        !self.avoid.contains(&i) && self.stats(i).outlier.take(self.now)
    }

    /// The first endpoint from `start` (wrapping) that can be taken.
    fn first_from(&self, start: usize) -> Option<usize> {
        let n = self.endpoints.len();
        (0..n)
            .map(|k| (start.wrapping_add(k)) % n)
            .find(|&i| self.take(i))
    }

    /// Power of two choices: of two distinct random endpoints, the one with the lower cost.
    fn p2c(&self) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 1 {
            return self.take(0).then_some(0);
        }
        for _ in 0..3 {
            let a = random_below(n);
            let mut b = random_below(n - 1);
            if b >= a {
                b += 1;
            }
            let choice = match (self.usable(a), self.usable(b)) {
                // Costs within 1 % are a tie, and `a` is as random as `b`.
                (true, true) => {
                    if self.stats(b).cost(self.now) < self.stats(a).cost(self.now) * 0.99 {
                        b
                    } else {
                        a
                    }
                }
                (true, false) => a,
                (false, true) => b,
                (false, false) => continue,
            };
            if self.take(choice) {
                return Some(choice);
            }
        }
        // Most endpoints are ejected or avoided: look at each once.
        self.first_from(random_below(n))
    }

    /// Nothing usable: an endpoint already tried, else any endpoint (ejected or not).
    fn relaxed(&self) -> Option<usize> {
        let n = self.endpoints.len();
        let start = random_below(n);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.stats(i).outlier.take(self.now))
            .or(Some(start))
    }
}

/// A random number below `n` (> 0), from a per-thread xorshift generator: no lock, no
/// shared cache line.
pub(crate) fn random_below(n: usize) -> usize {
    // Lemire's multiply-shift: unbiased enough for balancing, and no division.
    ((u128::from(random_u64()) * n as u128) >> 64) as usize
}

/// A random `u64`.
pub(crate) fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        // xorshift64*
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState has fresh keys (random per thread, then counted up).
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9E37_79B9_7F4A_7C15);
    h.finish() | 1
}
