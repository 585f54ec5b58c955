//! `trellis-loadgen`: an open-loop, fixed-rate HTTP/1.1 load generator.
//!
//! Requests are sent on a fixed schedule (`--rate` per second, spread over `--connections`
//! keep-alive connections), and each latency is measured from the time the request was
//! *scheduled*, not from when it could be sent: when the system under test stalls, the requests
//! that should have gone out meanwhile count their wait (no coordinated omission, as wrk2 does).
//! Prints one JSON object: rate achieved, errors, and latency percentiles in milliseconds.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    /// Where to connect (the proxy or server under test).
    #[arg(long)]
    addr: SocketAddr,
    /// The Host header (routes the request at an explicit proxy).
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Path to request.
    #[arg(long, default_value = "/")]
    path: String,
    /// Requests per second, in total.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Keep-alive connections the rate is spread over.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(args))?;
    println!("{report}");
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        args.rate > 0 && args.connections > 0,
        "--rate and --connections must be positive"
    );
    // Each connection sends every `interval`, offset so the connections interleave evenly.
    let interval = Duration::from_secs_f64(f64::from(args.connections) / f64::from(args.rate));
    let start = Instant::now() + Duration::from_millis(100);
    let measure_from = start + Duration::from_secs(args.warmup);
    let end = measure_from + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let offset = interval.mul_f64(f64::from(i) / f64::from(args.connections));
        let (addr, host, path) = (args.addr, args.host.clone(), args.path.clone());
        tasks.push(tokio::spawn(connection(
            addr,
            host,
            path,
            start + offset,
            interval,
            measure_from,
            end,
        )));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut sent, mut errors) = (0u64, 0u64);
    for task in tasks {
        let (h, s, e) = task.await??;
        hist.add(h)?;
        sent += s;
        errors += e;
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(serde_json::json!({
        "rate": args.rate,
        "connections": args.connections,
        "seconds": args.seconds,
        "requests": sent,
        "achieved_rps": sent as f64 / args.seconds as f64,
        "errors": errors,
        "latency_ms": { "p50": ms(0.50), "p90": ms(0.90), "p99": ms(0.99), "p99.9": ms(0.999), "max": hist.max() as f64 / 1000.0 },
    }))
}

/// One keep-alive connection sending on its schedule. Latency in microseconds from the
/// scheduled time to the end of the response body.
async fn connection(
    addr: SocketAddr,
    host: String,
    path: String,
    first: Instant,
    interval: Duration,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut sent, mut errors) = (0u64, 0u64);
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut scheduled = first;
    // When the previous response finished: if after `scheduled`, this request was held back by
    // the system under test and its latency counts from `scheduled` (no coordinated omission);
    // otherwise it counts from when it was actually sent, so that the generator's own timer
    // granularity (about a millisecond) is not charged to the system under test.
    let mut previous_done = first;
    while scheduled < end {
        tokio::time::sleep_until(scheduled).await;
        let req = Request::get(path.as_str())
            .header("host", host.as_str())
            .body(Empty::new())?;
        let origin = if previous_done > scheduled {
            scheduled
        } else {
            Instant::now()
        };
        // The connection takes the next request once the previous response is done.
        if send.ready().await.is_err() {
            anyhow::bail!("connection to {addr} closed");
        }
        let ok = match send.send_request(req).await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp.into_body().collect().await;
                if !status.is_success() || body.is_err() {
                    eprintln!("request got {status} ({:?})", body.err());
                }
                status.is_success()
            }
            Err(error) => {
                eprintln!("request failed: {error}");
                false
            }
        };
        let done = Instant::now();
        previous_done = done;
        if scheduled >= measure_from {
            let micros = done.duration_since(origin).as_micros();
            hist.record(u64::try_from(micros).unwrap_or(u64::MAX).max(1))?;
            sent += 1;
            errors += u64::from(!ok);
        }
        if !ok {
            anyhow::ensure!(!send.is_closed(), "connection to {addr} closed");
        }
        scheduled += interval;
    }
    Ok((hist, sent, errors))
}
