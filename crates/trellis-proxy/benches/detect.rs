//! Micro-benchmarks of protocol detection.
//!
//! `classify/*` measures the pure decision on a client's first segment, one per protocol;
//! `detect/*` adds the async driver (buffer allocation, one read from an in-memory stream, the
//! timeout timer) on a current-thread runtime. Read the figures as the per-connection cost that
//! detection adds before the first byte is forwarded.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use trellis_proxy::detect::{Protocol, classify, detect};

/// A typical first segment of an HTTP/1.1 client.
const HTTP1_GET: &[u8] = b"GET /api/v1/reviews/42?verbose=true HTTP/1.1\r\n\
    Host: reviews.default.svc.cluster.local:9080\r\n\
    User-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";

/// The HTTP/2 preface followed by an empty SETTINGS frame.
const H2_START: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// A ClientHello from `openssl s_client -servername example.com` (OpenSSL 3.0); the same capture
/// the unit tests use.
const HELLO_SNI_HEX: &str = concat!(
    "1603010138010001340303c1267c3f316e3c4bf437373546cc6c9f7873873c4d29c49bc461e09218",
    "1a4ba2200a1d31e9115116f4581c99891748f744551d48002f5837e2de7ba9c132a0307c003e1302",
    "13031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039",
    "c009c0130033009d009c003d003c0035002f00ff010000ad00000010000e00000b6578616d706c65",
    "2e636f6d000b000403000102000a00160014001d0017001e00190018010001010102010301040023",
    "00000016000000170000000d002a0028040305030603080708080809080a080b0804080508060401",
    "05010601030303010302040205020602002b0009080304030303020301002d000201010033002600",
    "24001d0020274bfec6905ba8577035c12abe5aadb913ec04020ca2473a2d8fb6c0f11a8763",
);

/// A PostgreSQL StartupMessage: binary, decided on the first byte.
const OPAQUE: &[u8] = b"\0\0\0\x29\0\x03\0\0user\0postgres\0database\0orders\0\0";

fn unhex(hex: &str) -> Vec<u8> {
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).expect("ascii hex");
            u8::from_str_radix(digits, 16).expect("valid hex")
        })
        .collect()
}

fn bench_classify(c: &mut Criterion) {
    let hello = unhex(HELLO_SNI_HEX);
    assert_eq!(classify(HTTP1_GET), Some(Protocol::Http1));
    assert_eq!(classify(H2_START), Some(Protocol::Http2));
    assert!(matches!(
        classify(&hello),
        Some(Protocol::Tls { sni: Some(_) })
    ));
    assert_eq!(classify(OPAQUE), Some(Protocol::Opaque));

    let mut group = c.benchmark_group("classify");
    group.bench_function("http1_get", |b| b.iter(|| classify(black_box(HTTP1_GET))));
    group.bench_function("h2_preface", |b| b.iter(|| classify(black_box(H2_START))));
    group.bench_function("tls_client_hello_sni", |b| {
        b.iter(|| classify(black_box(&hello)))
    });
    group.bench_function("opaque", |b| b.iter(|| classify(black_box(OPAQUE))));
    group.finish();
}

fn bench_detect(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let hello = unhex(HELLO_SNI_HEX);
    let timeout = Duration::from_secs(1);

    let mut group = c.benchmark_group("detect");
    group.bench_function("http1_get_in_memory", |b| {
        b.iter(|| rt.block_on(detect(black_box(HTTP1_GET), timeout)))
    });
    group.bench_function("tls_client_hello_in_memory", |b| {
        b.iter(|| rt.block_on(detect(black_box(&hello[..]), timeout)))
    });
    group.finish();
}

criterion_group!(benches, bench_classify, bench_detect);
criterion_main!(benches);
