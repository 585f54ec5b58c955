//! Consistent hashing: a ring of virtual nodes, and Google's Maglev lookup table.
//!
//! Endpoints are placed by a hash of their address, so an endpoint that stays in the set keeps
//! its place whatever else changes: removing one of N endpoints moves only the keys it had
//! (≈ 1/N). The ring takes O(log V) per pick over V virtual nodes; Maglev is one table lookup
//! and spreads keys more evenly, at the cost of a 65537-entry table per endpoint set.
//!
//! The hash is FNV-1a finished with MurmurHash3's 64-bit mixer: fast on short keys (header
//! values, addresses) and well spread; it need not resist an adversary, since an attacker
//! choosing keys can only choose which endpoint serves them.

use std::net::SocketAddr;

/// Maglev's table size: a prime, so every skip visits every slot; ≥ 100 × the endpoints
/// keeps the spread within about 1 %.
const MAGLEV_SIZE: usize = 65537;
/// The ring holds about this many virtual nodes in all, with 16 to 256 per endpoint.
const RING_TARGET: usize = 65536;

/// A hash ring of virtual nodes.
#[derive(Debug)]
pub struct Ring {
    /// (hash, endpoint index), sorted by hash.
    points: Vec<(u64, u32)>,
}

/// A Maglev lookup table.
#[derive(Debug)]
pub struct Maglev {
    table: Vec<u32>,
}

/// A 64-bit hash of `bytes` with `seed`.
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

/// MurmurHash3's finalizer: every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// An address as bytes: IP octets then port.
fn addr_bytes(addr: &SocketAddr) -> Vec<u8> {
    let mut bytes = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    bytes.extend_from_slice(&addr.port().to_be_bytes());
    bytes
}

impl Ring {
    pub fn new(addrs: &[SocketAddr]) -> Self {
        let per = (RING_TARGET / addrs.len().max(1)).clamp(16, 256);
        let mut points = Vec::with_capacity(addrs.len() * per);
        for (i, addr) in addrs.iter().enumerate() {
            let key = addr_bytes(addr);
            let Ok(i) = u32::try_from(i) else { break };
            for v in 0..per {
                points.push((hash_bytes(v as u64, &key), i));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The endpoints from the key's place on the ring onwards (with repeats): the first is
    /// the key's endpoint, the next ones its fallbacks.
    pub fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(h, _)| *h < hash);
        let n = self.points.len();
        (0..n).map(move |k| self.points[(start + k) % n].1 as usize)
    }
}

impl Maglev {
    pub fn new(addrs: &[SocketAddr]) -> Self {
        let m = MAGLEV_SIZE;
        let mut table = vec![u32::MAX; m];
        if addrs.is_empty() {
            return Self { table: Vec::new() };
        }
        // Each endpoint's permutation of the slots: offset + j × skip (mod m).
        let perms: Vec<(usize, usize)> = addrs
            .iter()
            .map(|a| {
                let key = addr_bytes(a);
                let offset = (hash_bytes(0x6d61_676c, &key) % m as u64) as usize;
                let skip = (hash_bytes(0x736b_6970, &key) % (m as u64 - 1)) as usize + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0usize; addrs.len()];
        let mut filled = 0;
        'fill: loop {
            for (i, &(offset, skip)) in perms.iter().enumerate() {
                let mut slot = (offset + next[i] * skip) % m;
                while table[slot] != u32::MAX {
                    next[i] += 1;
                    slot = (offset + next[i] * skip) % m;
                }
                table[slot] = u32::try_from(i).unwrap_or(0);
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Self { table }
    }

    /// The key's endpoint, then fallbacks for when it is ejected: the slots of rehashed keys
    /// (still the same for the same key, so a key's fallback is stable too).
    pub fn probes(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let m = self.table.len() as u64;
        (0..8u64).filter(move |_| m > 0).map(move |k| {
            let h = if k == 0 { hash } else { fmix64(hash ^ k) };
            self.table[(h % m) as usize] as usize
        })
    }

    /// How many slots each endpoint owns (for tests and benchmarks).
    pub fn shares(&self, endpoints: usize) -> Vec<usize> {
        let mut shares = vec![0; endpoints];
        for &i in &self.table {
            if let Some(s) = shares.get_mut(i as usize) {
                *s += 1;
            }
        }
        shares
    }
}
