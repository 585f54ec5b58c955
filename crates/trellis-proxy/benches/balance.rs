//! Micro-benchmarks of picking an endpoint, the per-request cost of balancing.
//!
//! - `pick/{round_robin,least_request,ring_hash,maglev}/{10,100}`: one pick over 10 and 100
//!   endpoints with no ejections (the hashing balancers get a precomputed key hash; the key
//!   itself costs `hash/header`).
//! - `hash/header`: hashing a 36-byte header value (a UUID-sized key).
//! - `build/{ring_hash,maglev}/100`: building the ring or table, once per config push.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use trellis_model::LoadBalancerKind;
use trellis_proxy::balance::{Balancer, EndpointStats, Maglev, Pick, Ring, hash_bytes};

fn addrs(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080)))
        .collect()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    for n in [10, 100] {
        let set = addrs(n);
        let eps: Vec<Arc<EndpointStats>> = (0..n)
            .map(|i| Arc::new(EndpointStats::new(Duration::from_micros(500 + i as u64))))
            .collect();
        for (name, kind) in [
            ("round_robin", LoadBalancerKind::RoundRobin),
            ("least_request", LoadBalancerKind::LeastRequest),
            ("ring_hash", LoadBalancerKind::RingHash),
            ("maglev", LoadBalancerKind::Maglev),
        ] {
            let b = Balancer::new(kind, &set);
            let mut k = 0u64;
            c.bench_function(&format!("pick/{name}/{n}"), |bench| {
                bench.iter(|| {
                    k = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let hash = b.hashing().then_some(k);
                    black_box(b.pick(&eps, Pick { hash, avoid: &[] }))
                })
            });
        }
    }
    let key = b"6f1c3a52-8d4e-4b7a-9c2f-1e5d7a9b3c4d";
    c.bench_function("hash/header", |b| b.iter(|| hash_bytes(0, black_box(key))));
    let set = addrs(100);
    c.bench_function("build/ring_hash/100", |b| {
        b.iter(|| Ring::new(black_box(&set)))
    });
    c.bench_function("build/maglev/100", |b| {
        b.iter(|| Maglev::new(black_box(&set)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
