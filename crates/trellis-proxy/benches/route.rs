//! Micro-benchmarks of HTTP routing.
//!
//! A service with 100 routes of one rule each, a third of each kind: an exact path
//! (`/api/v{i}/items`), a path prefix (`/svc{i}`), and a path prefix with a header
//! (`/svc{i}` and `x-tenant: t{i}`); every rule splits 90/10 over two backends.
//! - `match/*`: finding the rule for one request (a typical header set, a query string): an
//!   exact hit, a prefix hit, a prefix-and-header hit, and a miss that walks the whole table
//!   (the 404 case, the worst).
//! - `pick/*`: choosing a rule's backend by weight, over 2 and 16 backends.
//! - `build/100_routes`: building the table, which happens once per config push.
//!
//! Read `match` as the per-request cost routing adds before the endpoint pick.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri};
use trellis_model::{
    PathMatch, PathMatchKind, Route, RouteBackend, RouteMatch, RouteRule, ValueMatch,
    ValueMatchKind,
};
use trellis_proxy::route::RouteTable;

fn backend(name: &str, weight: u32) -> RouteBackend {
    RouteBackend {
        service: name.to_string(),
        namespace: None,
        port: 80,
        weight,
    }
}

fn routes() -> Vec<Route> {
    (0..100)
        .map(|i| {
            let (kind, value) = match i % 3 {
                0 => (PathMatchKind::Exact, format!("/api/v{i}/items")),
                _ => (PathMatchKind::Prefix, format!("/svc{i}")),
            };
            let headers = if i % 3 == 2 {
                vec![ValueMatch {
                    kind: ValueMatchKind::Exact,
                    name: "x-tenant".to_string(),
                    value: format!("t{i}"),
                }]
            } else {
                Vec::new()
            };
            Route {
                name: format!("HTTPRoute bench/r{i:03}"),
                port: None,
                rules: vec![RouteRule {
                    matches: vec![RouteMatch {
                        path: Some(PathMatch { kind, value }),
                        method: None,
                        headers,
                        query_params: Vec::new(),
                    }],
                    filters: Vec::new(),
                    backends: vec![backend("v1", 90), backend("v2", 10)],
                    timeout: None,
                }],
            }
        })
        .collect()
}

fn table(routes: &[Route]) -> RouteTable<u32> {
    let refs: Vec<&Route> = routes.iter().collect();
    let mut next = 0;
    RouteTable::build("bench", &refs, |_, _, _| {
        next += 1;
        Some(next)
    })
    .expect("the bench routes build")
}

fn headers(extra: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("host", "reviews.bench.svc.cluster.local:9080"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("x-request-id", "5b1c1a1e-7f0e-4a55-9f5f-2f8f7a3f4d11"),
    ]
    .iter()
    .chain(extra)
    {
        h.insert(*name, HeaderValue::from_static(value));
    }
    h
}

fn bench(c: &mut Criterion) {
    let routes = routes();
    let table = table(&routes);
    let plain = headers(&[]);
    let tenant = headers(&[("x-tenant", "t50")]);
    let cases: [(&str, &str, &HeaderMap, bool); 4] = [
        ("match/exact_hit", "/api/v51/items", &plain, true),
        (
            "match/prefix_hit",
            "/svc49/reviews/42?verbose=true",
            &plain,
            true,
        ),
        ("match/header_hit", "/svc50/reviews/42", &tenant, true),
        ("match/miss_404", "/nothing/here?x=1", &tenant, false),
    ];
    for (name, uri, headers, hit) in cases {
        let uri: Uri = uri.parse().expect("a URI");
        assert_eq!(
            table.find(&Method::GET, &uri, headers).is_some(),
            hit,
            "{name}"
        );
        c.bench_function(name, |b| {
            b.iter(|| table.find(black_box(&Method::GET), black_box(&uri), black_box(headers)))
        });
    }

    let uri: Uri = "/api/v51/items".parse().expect("a URI");
    let rule = table.find(&Method::GET, &uri, &plain).expect("a rule");
    c.bench_function("pick/weighted_2", |b| b.iter(|| black_box(rule.pick())));
    let sixteen = Route {
        name: "HTTPRoute bench/sixteen".to_string(),
        port: None,
        rules: vec![RouteRule {
            backends: (1..=16).map(|w| backend("v", w * 10)).collect(),
            ..RouteRule::default()
        }],
    };
    let wide = self::table(std::slice::from_ref(&sixteen));
    let rule = wide.find(&Method::GET, &uri, &plain).expect("a rule");
    c.bench_function("pick/weighted_16", |b| b.iter(|| black_box(rule.pick())));

    c.bench_function("build/100_routes", |b| {
        b.iter(|| self::table(black_box(&routes)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
