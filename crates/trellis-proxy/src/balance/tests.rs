use std::sync::Arc;
use std::time::Duration;

use trellis_model::OutlierDetection;

use super::*;

fn addrs(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080)))
        .collect()
}

fn stats(n: usize) -> Vec<Arc<EndpointStats>> {
    (0..n)
        .map(|_| Arc::new(EndpointStats::new(Duration::from_millis(10))))
        .collect()
}

fn counts(b: &Balancer, eps: &[Arc<EndpointStats>], picks: usize) -> Vec<usize> {
    let mut counts = vec![0; eps.len()];
    for _ in 0..picks {
        counts[b.pick(eps, Pick::default()).unwrap()] += 1;
    }
    counts
}

fn key(k: u64) -> Pick<'static> {
    Pick {
        hash: Some(hash_bytes(0, &k.to_be_bytes())),
        avoid: &[],
    }
}

#[test]
fn round_robin_cycles_and_handles_empty() {
    let b = Balancer::new(LoadBalancerKind::RoundRobin, &addrs(3));
    let none: Vec<Arc<EndpointStats>> = Vec::new();
    assert_eq!(b.pick(&none, Pick::default()), None);
    let eps = stats(3);
    let picks: Vec<_> = (0..6)
        .map(|_| b.pick(&eps, Pick::default()).unwrap())
        .collect();
    assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn p2c_prefers_the_low_latency_endpoint() {
    let eps = stats(3);
    let now = Instant::now();
    eps[0].observe(Duration::from_millis(200), now);
    eps[1].observe(Duration::from_millis(1), now);
    eps[2].observe(Duration::from_millis(1), now);
    let b = Balancer::new(LoadBalancerKind::LeastRequest, &addrs(3));
    let c = counts(&b, &eps, 3000);
    // The slow one loses every comparison it is in.
    assert_eq!(c[0], 0, "{c:?}");
    assert!(c[1] > 1200 && c[2] > 1200, "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn p2c_prefers_fewer_pending_requests_and_a_slow_endpoint_is_tried_again_later() {
    let eps = stats(2);
    let busy: Vec<InFlight> = (0..5).map(|_| eps[0].start()).collect();
    let b = Balancer::new(LoadBalancerKind::LeastRequest, &addrs(2));
    assert_eq!(counts(&b, &eps, 100), vec![0, 100]);
    drop(busy);
    assert_eq!(eps[0].pending(), 0);

    // A peak decays: 100 ms once, 1 ms since; a minute later it is cheap again.
    let now = Instant::now();
    eps[0].observe(Duration::from_millis(100), now);
    eps[1].observe(Duration::from_millis(1), now);
    assert_eq!(counts(&b, &eps, 100), vec![0, 100]);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(eps[0].rtt_ns(Instant::now()) < 1e6, "decayed below 1 ms");
}

#[test]
fn least_request_spreads_equal_endpoints_evenly() {
    let eps = stats(4);
    let b = Balancer::new(LoadBalancerKind::LeastRequest, &addrs(4));
    let c = counts(&b, &eps, 4000);
    assert!(c.iter().all(|&n| (800..1200).contains(&n)), "{c:?}");
}

/// Which endpoint address each of `keys` goes to.
fn placement(kind: LoadBalancerKind, set: &[SocketAddr], keys: u64) -> Vec<SocketAddr> {
    let b = Balancer::new(kind, set);
    let eps = stats(set.len());
    (0..keys)
        .map(|k| set[b.pick(&eps, key(k)).unwrap()])
        .collect()
}

fn check_minimal_disruption(kind: LoadBalancerKind) {
    let n = 10;
    let all = addrs(n);
    let removed = all[3];
    let fewer: Vec<SocketAddr> = all.iter().copied().filter(|a| *a != removed).collect();
    let before = placement(kind, &all, 20_000);
    let after = placement(kind, &fewer, 20_000);
    // The same key goes to the same endpoint, pick after pick.
    assert_eq!(before, placement(kind, &all, 20_000));
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let had = before.iter().filter(|b| **b == removed).count();
    let share = moved as f64 / before.len() as f64;
    assert!(
        (0.07..0.14).contains(&share),
        "{kind:?}: {share} of keys moved, expected ≈ 1/{n}"
    );
    // Every key of the removed endpoint moved; few others did.
    assert!(moved >= had);
    assert!(
        (moved - had) as f64 / before.len() as f64 <= 0.02,
        "{kind:?}: {} keys of staying endpoints moved",
        moved - had
    );
}

#[test]
fn ring_hash_moves_about_one_nth_of_keys_when_one_of_n_goes() {
    check_minimal_disruption(LoadBalancerKind::RingHash);
}

#[test]
fn maglev_moves_about_one_nth_of_keys_when_one_of_n_goes() {
    check_minimal_disruption(LoadBalancerKind::Maglev);
}

#[test]
fn maglev_spreads_slots_evenly() {
    for n in [3, 10, 100] {
        let table = Maglev::new(&addrs(n));
        let shares = table.shares(n);
        let mean = 65537.0 / n as f64;
        for s in shares {
            assert!(
                (s as f64 - mean).abs() / mean < 0.02,
                "n = {n}: {s} slots, mean {mean}"
            );
        }
    }
}

#[test]
fn ring_hash_spreads_keys_within_bounds() {
    let set = addrs(5);
    let placed = placement(LoadBalancerKind::RingHash, &set, 50_000);
    for a in &set {
        let n = placed.iter().filter(|p| *p == a).count();
        assert!((8_000..12_000).contains(&n), "{a}: {n} of 50000");
    }
}

#[test]
fn a_request_without_a_key_is_balanced_by_load() {
    let eps = stats(3);
    let b = Balancer::new(LoadBalancerKind::Maglev, &addrs(3));
    let c = counts(&b, &eps, 3000);
    assert!(c.iter().all(|&n| n > 600), "{c:?}");
}

#[test]
fn a_retry_avoids_endpoints_already_tried_unless_none_is_left() {
    let eps = stats(3);
    for kind in [
        LoadBalancerKind::RoundRobin,
        LoadBalancerKind::LeastRequest,
        LoadBalancerKind::RingHash,
        LoadBalancerKind::Maglev,
    ] {
        let b = Balancer::new(kind, &addrs(3));
        for k in 0..50 {
            let first = b.pick(&eps, key(k)).unwrap();
            let avoid = [first];
            let pick = Pick {
                avoid: &avoid,
                ..key(k)
            };
            assert_ne!(b.pick(&eps, pick).unwrap(), first, "{kind:?}");
        }
        let all = [0, 1, 2];
        let pick = Pick {
            hash: None,
            avoid: &all,
        };
        assert!(b.pick(&eps, pick).is_some());
    }
}

fn outlier(consecutive: u32, percent: u32) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx: consecutive,
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: percent,
    }
}

fn fail(ejector: &Ejector, eps: &[Arc<EndpointStats>], i: usize, times: u32, c: &OutlierDetection) {
    for _ in 0..times {
        ejector.record(eps, i, Outcome::Failure, c, Instant::now());
    }
}

#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_is_probed_and_ejected_again_for_longer() {
    let config = outlier(3, 50);
    let eps = stats(2);
    let ejector = Ejector::default();
    let b = Balancer::new(LoadBalancerKind::RoundRobin, &addrs(2));
    let never_0 = |b: &Balancer| (0..10).all(|_| b.pick(&eps, Pick::default()) == Some(1));

    fail(&ejector, &eps, 0, 2, &config);
    ejector.record(&eps, 0, Outcome::Success, &config, Instant::now());
    fail(&ejector, &eps, 0, 2, &config);
    assert!(!eps[0].outlier.ejected(), "failures in a row only");
    fail(&ejector, &eps, 0, 1, &config);
    assert!(eps[0].outlier.ejected());
    assert!(never_0(&b));

    // 30 s later: one probe gets through, and the others still pass it by.
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(never_0(&b));
    tokio::time::advance(Duration::from_secs(1)).await;
    let picks: Vec<usize> = (0..10)
        .map(|_| b.pick(&eps, Pick::default()).unwrap())
        .collect();
    assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 1, "{picks:?}");
    // The probe fails: out for 60 s this time.
    fail(&ejector, &eps, 0, 1, &config);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(never_0(&b));
    tokio::time::advance(Duration::from_secs(1)).await;
    let probe = (0..10).find(|_| b.pick(&eps, Pick::default()) == Some(0));
    assert!(probe.is_some(), "probed after 60 s");
    ejector.record(&eps, 0, Outcome::Success, &config, Instant::now());
    assert!(!eps[0].outlier.ejected(), "the probe succeeded: back");
    let c = counts(&b, &eps, 10);
    assert_eq!(c, vec![5, 5]);
}

#[tokio::test(start_paused = true)]
async fn never_more_than_max_ejection_percent_is_ejected() {
    let config = outlier(1, 50);
    let eps = stats(4);
    let ejector = Ejector::default();
    for i in 0..4 {
        fail(&ejector, &eps, i, 1, &config);
    }
    let ejected = eps.iter().filter(|e| e.outlier.ejected()).count();
    assert_eq!(ejected, 2);
    // 10 % of 4 rounds down to none.
    let eps = stats(4);
    fail(&ejector, &eps, 0, 5, &outlier(1, 10));
    assert!(!eps[0].outlier.ejected());
}

#[tokio::test(start_paused = true)]
async fn a_set_all_ejected_still_serves() {
    let config = outlier(1, 100);
    let eps = stats(2);
    let ejector = Ejector::default();
    fail(&ejector, &eps, 0, 1, &config);
    fail(&ejector, &eps, 1, 1, &config);
    let b = Balancer::new(LoadBalancerKind::LeastRequest, &addrs(2));
    assert!(b.pick(&eps, Pick::default()).is_some());
}

#[tokio::test(start_paused = true)]
async fn healthy_intervals_forgive_earlier_ejections() {
    let config = outlier(1, 100);
    let eps = stats(2);
    let ejector = Ejector::default();
    fail(&ejector, &eps, 0, 1, &config);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(eps[0].outlier.take(Instant::now()), "the probe");
    ejector.record(&eps, 0, Outcome::Success, &config, Instant::now());
    // Healthy for 20 s (two intervals): the next ejection is a first one again, 30 s.
    tokio::time::advance(Duration::from_secs(20)).await;
    fail(&ejector, &eps, 0, 1, &config);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(eps[0].outlier.usable(Instant::now()));
}
