use super::*;

#[test]
fn labels_are_equal_by_content_not_by_pointer() {
    // The same names in strings of their own: one series, as with the derived comparison.
    let a = request_labels(200, ResponseFlags::None);
    let b = request_labels(200, ResponseFlags::None);
    assert!(!Arc::ptr_eq(&a.source_workload, &b.source_workload));
    assert_eq!(a, b);
    // One name that differs, whatever the pointers: another series.
    let mut c = a.clone();
    c.destination_workload = Arc::from("reviews-v2");
    assert_ne!(a, c);
    let mut d = a.clone();
    d.response_code = 503;
    assert_ne!(a, d);
}

fn request_labels(code: u16, flags: ResponseFlags) -> RequestLabels {
    RequestLabels {
        reporter: Reporter::Destination,
        source_workload: Arc::from("productpage-v1"),
        source_namespace: Arc::from("default"),
        source_principal: Arc::from("spiffe://cluster.local/ns/default/sa/productpage"),
        destination_service: Arc::from("reviews.default.svc.cluster.local"),
        destination_workload: Arc::from("reviews-v1"),
        destination_namespace: Arc::from("default"),
        destination_principal: Arc::from("spiffe://cluster.local/ns/default/sa/reviews"),
        request_protocol: RequestProtocol::Http,
        response_code: code,
        grpc_response_status: None,
        response_flags: flags,
        connection_security_policy: SecurityPolicy::MutualTls,
    }
}

fn tcp_labels() -> TcpLabels {
    TcpLabels {
        reporter: Reporter::Source,
        source_workload: Arc::from("productpage-v1"),
        source_namespace: Arc::from("default"),
        source_principal: Arc::from("spiffe://cluster.local/ns/default/sa/productpage"),
        destination_service: Arc::from("mysql.db.svc.cluster.local"),
        destination_workload: Arc::from("mysql-v1"),
        destination_namespace: Arc::from("db"),
        destination_principal: unknown(),
        response_flags: ResponseFlags::None,
        connection_security_policy: SecurityPolicy::Unknown,
    }
}

const OK_LABELS: &str = concat!(
    r#"reporter="destination",source_workload="productpage-v1",source_namespace="default","#,
    r#"source_principal="spiffe://cluster.local/ns/default/sa/productpage","#,
    r#"destination_service="reviews.default.svc.cluster.local","#,
    r#"destination_workload="reviews-v1",destination_namespace="default","#,
    r#"destination_principal="spiffe://cluster.local/ns/default/sa/reviews","#,
    r#"request_protocol="http",response_code="200",grpc_response_status="-","#,
    r#"response_flags="-",connection_security_policy="mutual_tls""#,
);

const FAILED_LABELS: &str = concat!(
    r#"reporter="destination",source_workload="productpage-v1",source_namespace="default","#,
    r#"source_principal="spiffe://cluster.local/ns/default/sa/productpage","#,
    r#"destination_service="reviews.default.svc.cluster.local","#,
    r#"destination_workload="reviews-v1",destination_namespace="default","#,
    r#"destination_principal="spiffe://cluster.local/ns/default/sa/reviews","#,
    r#"request_protocol="http",response_code="503",grpc_response_status="-","#,
    r#"response_flags="UF",connection_security_policy="mutual_tls""#,
);

const TCP_LABELS: &str = concat!(
    r#"reporter="source",source_workload="productpage-v1",source_namespace="default","#,
    r#"source_principal="spiffe://cluster.local/ns/default/sa/productpage","#,
    r#"destination_service="mysql.db.svc.cluster.local","#,
    r#"destination_workload="mysql-v1",destination_namespace="db","#,
    r#"destination_principal="unknown",request_protocol="tcp","#,
    r#"response_flags="-",connection_security_policy="unknown""#,
);

/// Records 3 requests answered 200, 1 answered 503 with `UF`, and 2 TCP connections.
fn known_traffic() -> String {
    let metrics = Metrics::new();
    let ok = request_labels(200, ResponseFlags::None);
    // Durations that are exact in binary, so `_sum` prints exactly: 2^-9 s, 2^-8 s, 0.25 s.
    metrics.record_request(&ok, Duration::from_nanos(1_953_125));
    metrics.record_request(&ok, Duration::from_nanos(3_906_250));
    metrics.record_request(&ok, Duration::from_millis(250));
    let failed = request_labels(503, ResponseFlags::UpstreamConnectionFailure);
    metrics.record_request(&failed, Duration::from_millis(500));

    let tcp = tcp_labels();
    metrics.tcp_opened(&tcp);
    metrics.tcp_bytes(&tcp, 100, 200);
    metrics.tcp_opened(&tcp);
    metrics.tcp_bytes(&tcp, 1000, 2000);
    metrics.tcp_bytes(&tcp, 50, 0);
    metrics.tcp_closed(&tcp);
    metrics.tcp_closed(&tcp);
    metrics.encode()
}

fn assert_line(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "missing line\n  {line}\nin exposition:\n{text}"
    );
}

#[test]
fn request_counts_by_label_set() {
    let text = known_traffic();
    assert_line(&text, "# TYPE trellis_requests counter");
    assert_line(&text, &format!("trellis_requests_total{{{OK_LABELS}}} 3"));
    assert_line(
        &text,
        &format!("trellis_requests_total{{{FAILED_LABELS}}} 1"),
    );
    assert_eq!(text.matches("trellis_requests_total{").count(), 2);
}

#[test]
fn names_that_differ_only_in_the_middle_are_separate_series() {
    // The hash reads a name's length and its first and last eight bytes: these two share
    // a bucket, and must still be two series.
    let metrics = Metrics::new();
    for workload in ["reviews-aaaa-v1", "reviews-bbbb-v1", "reviews-aaaa-v1"] {
        let mut labels = request_labels(200, ResponseFlags::None);
        labels.destination_workload = Arc::from(workload);
        metrics.record_request(&labels, Duration::from_millis(1));
    }
    let text = metrics.encode();
    let count = |workload: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("trellis_requests_total{")
                    && l.contains(&format!("destination_workload=\"{workload}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(count("reviews-aaaa-v1").as_deref(), Some("2"), "{text}");
    assert_eq!(count("reviews-bbbb-v1").as_deref(), Some("1"), "{text}");
}

#[test]
fn instances_on_one_thread_keep_their_own_counts() {
    let (a, b) = (Metrics::new(), Metrics::new());
    let ok = request_labels(200, ResponseFlags::None);
    for _ in 0..3 {
        a.record_request(&ok, Duration::from_millis(1));
    }
    b.record_request(&ok, Duration::from_millis(1));
    // A label set seen before, after others pushed it down the recent list.
    for code in 300..320 {
        a.record_request(&request_labels(code, ResponseFlags::None), Duration::ZERO);
    }
    a.record_request(&ok, Duration::from_millis(1));
    let count = |m: &Metrics| {
        m.encode()
            .lines()
            .find(|l| {
                l.starts_with("trellis_requests_total{") && l.contains("response_code=\"200\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    assert_eq!(count(&a).as_deref(), Some("4"));
    assert_eq!(count(&b).as_deref(), Some("1"));
}

#[test]
fn request_duration_histogram() {
    let text = known_traffic();
    assert_line(&text, "# TYPE trellis_request_duration_seconds histogram");
    assert_line(&text, "# UNIT trellis_request_duration_seconds seconds");
    // The encoder puts `le` first, before the family's labels.
    let bucket = |labels: &str, le: &str, count: u64| {
        format!(r#"trellis_request_duration_seconds_bucket{{le="{le}",{labels}}} {count}"#)
    };
    let sum =
        |labels: &str, sum: &str| format!("trellis_request_duration_seconds_sum{{{labels}}} {sum}");
    let count = |labels: &str, count: u64| {
        format!("trellis_request_duration_seconds_count{{{labels}}} {count}")
    };
    // 200s took 2^-9 s, 2^-8 s and 0.25 s: cumulative counts per upper bound.
    assert_line(&text, &bucket(OK_LABELS, "0.001", 0));
    assert_line(&text, &bucket(OK_LABELS, "0.005", 2));
    assert_line(&text, &bucket(OK_LABELS, "0.1", 2));
    assert_line(&text, &bucket(OK_LABELS, "0.25", 3));
    assert_line(&text, &bucket(OK_LABELS, "1.0", 3));
    assert_line(&text, &bucket(OK_LABELS, "+Inf", 3));
    assert_line(&text, &sum(OK_LABELS, "0.255859375"));
    assert_line(&text, &count(OK_LABELS, 3));
    // The 503 took 0.5 s.
    assert_line(&text, &bucket(FAILED_LABELS, "0.005", 0));
    assert_line(&text, &bucket(FAILED_LABELS, "0.25", 0));
    assert_line(&text, &bucket(FAILED_LABELS, "0.5", 1));
    assert_line(&text, &sum(FAILED_LABELS, "0.5"));
    assert_line(&text, &count(FAILED_LABELS, 1));
    // 15 configured buckets plus +Inf, per series.
    let buckets = text.matches(&format!(",{OK_LABELS}}}")).count();
    assert_eq!(buckets, 16);
}

#[test]
fn tcp_counters() {
    let text = known_traffic();
    assert_line(
        &text,
        &format!("trellis_tcp_connections_opened_total{{{TCP_LABELS}}} 2"),
    );
    assert_line(
        &text,
        &format!("trellis_tcp_connections_closed_total{{{TCP_LABELS}}} 2"),
    );
    assert_line(
        &text,
        &format!("trellis_tcp_sent_bytes_total{{{TCP_LABELS}}} 1150"),
    );
    assert_line(
        &text,
        &format!("trellis_tcp_received_bytes_total{{{TCP_LABELS}}} 2200"),
    );
    assert_line(&text, "# UNIT trellis_tcp_sent_bytes bytes");
}

#[test]
fn exposition_ends_with_eof() {
    assert!(known_traffic().ends_with("# EOF\n"));
    assert_eq!(Metrics::new().encode().lines().last(), Some("# EOF"));
}

#[test]
fn grpc_status_is_a_number() {
    let metrics = Metrics::new();
    let labels = RequestLabels {
        request_protocol: RequestProtocol::Grpc,
        grpc_response_status: Some(14),
        ..request_labels(200, ResponseFlags::None)
    };
    metrics.record_request(&labels, Duration::from_millis(1));
    let text = metrics.encode();
    assert!(
        text.contains(r#"request_protocol="grpc",response_code="200",grpc_response_status="14","#),
        "{text}"
    );
}

#[test]
fn label_values_are_escaped() {
    let metrics = Metrics::new();
    let labels = TcpLabels {
        source_workload: Arc::from("a\"b\\c\nd"),
        ..tcp_labels()
    };
    metrics.tcp_opened(&labels);
    assert!(metrics.encode().contains(r#"source_workload="a\"b\\c\nd""#));
}

#[test]
fn response_flags_render_envoy_names() {
    assert_eq!(ResponseFlags::default().to_string(), "-");
    assert_eq!(ResponseFlags::UpstreamRetryLimitExceeded.as_str(), "URX");
    assert_eq!(ResponseFlags::DownstreamProtocolError.to_string(), "DPE");
}
