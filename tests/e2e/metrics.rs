//! After known traffic, A's and B's `/metrics` show the right counts, labels and histogram
//! buckets, as a Prometheus scrape would. Every mismatch is reported at once.

use trellis_test_support::{Curl, Metrics, require_tool};

use crate::tunnel::{echo_chain, echo_through_tunnel};
use crate::{Problems, web_chain};

/// The histogram buckets of `trellis_request_duration_seconds`, as numbers (the exposition
/// may write `1` as `1.0`).
const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const LABELS: [&str; 13] = [
    "reporter",
    "source_workload",
    "source_namespace",
    "source_principal",
    "destination_service",
    "destination_workload",
    "destination_namespace",
    "destination_principal",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Label values every series of the chain must carry on both sides.
const EXPECTED_LABELS: [(&str, &str); 4] = [
    ("source_workload", "client"),
    ("source_namespace", "test"),
    ("destination_workload", "web"),
    ("destination_namespace", "test"),
];

/// `connection_security_policy` as Istio reports it: only the destination knows how the
/// connection was secured (`none`: plaintext until mTLS lands); the source says `unknown`.
fn security_policy(reporter: &str) -> (&'static str, &'static str) {
    match reporter {
        "destination" => ("connection_security_policy", "none"),
        _ => ("connection_security_policy", "unknown"),
    }
}

const WEB: (&str, &str) = ("destination_service", "web.test.svc.cluster.local");

#[test]
fn request_metrics_count_label_and_bucket_known_traffic() {
    if !require_tool("curl") {
        return;
    }
    let web = web_chain();
    let chain = &web.chain;
    for path in ["/", "/", "/", "/status/404", "/status/404"] {
        let out = Curl::new()
            .proxy(&chain.proxy_url())
            .arg(format!("http://web.test{path}"))
            .run();
        assert!(out.code == 200 || out.code == 404, "{}", out.describe());
    }

    let mut problems = Problems::default();
    let mut dumps = String::new();
    for (proxy, reporter) in [(&chain.a, "source"), (&chain.b, "destination")] {
        let who = [("reporter", reporter), WEB];
        let metrics = proxy.metrics_when(|m| m.sum("trellis_requests_total", &who) >= 5.0);
        let at = format!("{} (reporter {reporter})", proxy.name());
        dumps.push_str(&format!(
            "--- {at} ---\n{}",
            metrics.dump("trellis_request")
        ));

        let ok = [("reporter", reporter), WEB, ("response_code", "200")];
        let not_found = [("reporter", reporter), WEB, ("response_code", "404")];
        problems.eq(
            metrics.sum("trellis_requests_total", &ok),
            3.0,
            &format!("200s at {at}"),
        );
        problems.eq(
            metrics.sum("trellis_requests_total", &not_found),
            2.0,
            &format!("404s at {at}"),
        );

        for sample in metrics.select("trellis_requests_total", &who) {
            let missing: Vec<&str> = LABELS
                .iter()
                .copied()
                .filter(|l| !sample.labels.contains_key(*l))
                .collect();
            problems.check(missing.is_empty(), || {
                format!("labels missing at {at}: {missing:?}")
            });
            let mut expected = EXPECTED_LABELS.to_vec();
            expected.extend([
                ("request_protocol", "http"),
                ("response_flags", "-"),
                security_policy(reporter),
            ]);
            for (label, want) in expected {
                let got = sample.labels.get(label).map_or("<absent>", String::as_str);
                problems.eq(got, want, &format!("label {label} at {at}"));
            }
        }

        check_histogram(&mut problems, &metrics, &ok, 3.0, &at);
        check_histogram(&mut problems, &metrics, &not_found, 2.0, &at);
    }
    problems.assert_none(&dumps);
}

/// The duration histogram for the series `labels` has every bucket of the spec, cumulative
/// counts ending at `count`, and matching `_count` and `_sum`.
fn check_histogram(
    problems: &mut Problems,
    metrics: &Metrics,
    labels: &[(&str, &str)],
    count: f64,
    at: &str,
) {
    let mut bounds: Vec<(f64, f64)> = metrics
        .select("trellis_request_duration_seconds_bucket", labels)
        .iter()
        .map(|s| {
            let le = s.labels.get("le").map_or("", String::as_str);
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            (bound, s.value)
        })
        .collect();
    bounds.sort_by(|x, y| x.0.total_cmp(&y.0));
    let finite: Vec<f64> = bounds
        .iter()
        .map(|b| b.0)
        .filter(|b| b.is_finite())
        .collect();
    let what = format!("duration histogram at {at} for {labels:?}");
    problems.eq(
        finite,
        BUCKETS.to_vec(),
        &format!("bucket bounds of the {what}"),
    );
    problems.eq(
        bounds.last().map(|b| b.0),
        Some(f64::INFINITY),
        &format!("+Inf bucket of the {what}"),
    );
    problems.check(bounds.windows(2).all(|w| w[0].1 <= w[1].1), || {
        format!("buckets not cumulative in the {what}")
    });
    problems.eq(
        bounds.last().map(|b| b.1),
        Some(count),
        &format!("+Inf count of the {what}"),
    );
    let total = metrics.sum("trellis_request_duration_seconds_count", labels);
    problems.eq(total, count, &format!("_count of the {what}"));
    let sum = metrics.sum("trellis_request_duration_seconds_sum", labels);
    problems.check(sum > 0.0 && sum < 60.0 * count, || {
        format!("_sum {sum} of the {what}")
    });
}

#[test]
fn tcp_metrics_count_connections_and_bytes() {
    let (_app, chain) = echo_chain();
    let payload = vec![b'x'; 10_000];
    echo_through_tunnel(&chain, &payload);
    let banner = "trellis-demo echo tcp\r\n".len() as f64;
    let echo = ("destination_service", "echo.test.svc.cluster.local");

    let mut problems = Problems::default();
    let mut dumps = String::new();
    for (proxy, reporter) in [(&chain.a, "source"), (&chain.b, "destination")] {
        let who = [("reporter", reporter), echo];
        let metrics =
            proxy.metrics_when(|m| m.sum("trellis_tcp_connections_closed_total", &who) >= 1.0);
        let at = format!("{} (reporter {reporter})", proxy.name());
        dumps.push_str(&format!("--- {at} ---\n{}", metrics.dump("trellis_tcp")));
        problems.eq(
            metrics.sum("trellis_tcp_connections_opened_total", &who),
            1.0,
            &format!("connections opened at {at}"),
        );
        problems.eq(
            metrics.sum("trellis_tcp_connections_closed_total", &who),
            1.0,
            &format!("connections closed at {at}"),
        );
        // Istio's meaning: received = from the client (request side), sent = to the client.
        problems.eq(
            metrics.sum("trellis_tcp_received_bytes_total", &who),
            payload.len() as f64,
            &format!("received bytes at {at}"),
        );
        problems.eq(
            metrics.sum("trellis_tcp_sent_bytes_total", &who),
            banner + payload.len() as f64,
            &format!("sent bytes at {at}"),
        );
        for sample in metrics.select("trellis_tcp_connections_opened_total", &who) {
            let mut expected = EXPECTED_LABELS.to_vec();
            expected.extend([("request_protocol", "tcp"), security_policy(reporter)]);
            for (label, want) in expected {
                let got = sample.labels.get(label).map_or("<absent>", String::as_str);
                problems.eq(got, want, &format!("label {label} at {at}"));
            }
        }
    }
    problems.assert_none(&dumps);
}
