//! Access logs: one event per finished request or TCP connection, on target `access`.
//!
//! The event's fields are the record; the runtime's subscriber writes events of this target as
//! flattened JSON lines on stdout. Field names follow Istio's JSON access log (snake case) so
//! existing log pipelines read them unchanged. An absent optional value (no `x-request-id`,
//! no upstream connected) is left out of the line rather than logged as `-`.
//!
//! Cost: when the `access` target is filtered out, a call is one cached-interest check; the
//! fields are not evaluated. When enabled, building the event allocates nothing here; the
//! subscriber's formatting is the cost.

use std::net::SocketAddr;
use std::time::Duration;

use crate::metrics::{Reporter, ResponseFlags};

/// The `target` of every access log event.
pub const TARGET: &str = "access";

/// One finished HTTP or gRPC request, as seen by one proxy.
#[derive(Clone, Copy, Debug)]
pub struct RequestLog<'a> {
    pub reporter: Reporter,
    /// `x-request-id`.
    pub request_id: Option<&'a str>,
    pub method: &'a str,
    pub authority: &'a str,
    /// Path and query, as received.
    pub path: &'a str,
    /// The protocol the downstream client spoke.
    pub protocol: Protocol,
    /// The status sent downstream; 0 when none was sent.
    pub response_code: u16,
    pub grpc_status: Option<u16>,
    pub response_flags: ResponseFlags,
    /// Body bytes received from the downstream client.
    pub bytes_received: u64,
    /// Body bytes sent to the downstream client.
    pub bytes_sent: u64,
    pub duration: Duration,
    /// The endpoint address the request was forwarded to, if one was connected.
    pub upstream_host: Option<SocketAddr>,
    pub destination_service: &'a str,
    /// The client's address.
    pub downstream_remote_address: SocketAddr,
    /// The address the client connected to (the original destination when captured).
    pub downstream_local_address: SocketAddr,
    pub source_workload: &'a str,
    pub destination_workload: &'a str,
    pub source_principal: &'a str,
    pub destination_principal: &'a str,
    pub user_agent: Option<&'a str>,
}

/// One closed TCP connection (opaque TCP or TLS passed through), as seen by one proxy.
#[derive(Clone, Copy, Debug)]
pub struct TcpLog<'a> {
    pub reporter: Reporter,
    pub response_flags: ResponseFlags,
    /// Bytes received from the downstream client.
    pub bytes_received: u64,
    /// Bytes sent to the downstream client.
    pub bytes_sent: u64,
    pub duration: Duration,
    pub upstream_host: Option<SocketAddr>,
    pub destination_service: &'a str,
    pub downstream_remote_address: SocketAddr,
    pub downstream_local_address: SocketAddr,
    pub source_workload: &'a str,
    pub destination_workload: &'a str,
    pub source_principal: &'a str,
    pub destination_principal: &'a str,
    /// The server name of TLS passed through untouched.
    pub sni: Option<&'a str>,
}

/// The protocol a downstream client spoke, logged as `protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http10,
    Http11,
    Http2,
    Grpc,
}

/// Are access logs written (the `access` target enabled)? A cached check: what only the log
/// reads need not be copied when it is not.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// Emits the access log event of one request.
pub fn log_request(r: &RequestLog<'_>) {
    tracing::info!(
        target: TARGET,
        kind = "http",
        reporter = r.reporter.as_str(),
        request_id = r.request_id,
        method = r.method,
        authority = r.authority,
        path = r.path,
        protocol = r.protocol.as_str(),
        response_code = r.response_code,
        grpc_status = r.grpc_status,
        response_flags = r.response_flags.as_str(),
        bytes_received = r.bytes_received,
        bytes_sent = r.bytes_sent,
        duration_ms = millis(r.duration),
        upstream_host = r.upstream_host.map(tracing::field::display),
        destination_service = r.destination_service,
        downstream_remote_address = %r.downstream_remote_address,
        downstream_local_address = %r.downstream_local_address,
        source_workload = r.source_workload,
        destination_workload = r.destination_workload,
        source_principal = r.source_principal,
        destination_principal = r.destination_principal,
        user_agent = r.user_agent,
    );
}

/// Emits the access log event of one TCP connection, at its close.
pub fn log_tcp(r: &TcpLog<'_>) {
    tracing::info!(
        target: TARGET,
        kind = "tcp",
        reporter = r.reporter.as_str(),
        response_flags = r.response_flags.as_str(),
        bytes_received = r.bytes_received,
        bytes_sent = r.bytes_sent,
        duration_ms = millis(r.duration),
        upstream_host = r.upstream_host.map(tracing::field::display),
        destination_service = r.destination_service,
        downstream_remote_address = %r.downstream_remote_address,
        downstream_local_address = %r.downstream_local_address,
        source_workload = r.source_workload,
        destination_workload = r.destination_workload,
        source_principal = r.source_principal,
        destination_principal = r.destination_principal,
        sni = r.sni,
    );
}

impl Protocol {
    /// What the client spoke: the HTTP version, or `grpc` for a gRPC request.
    pub fn new(version: http::Version, grpc: bool) -> Protocol {
        if grpc {
            Protocol::Grpc
        } else if version == http::Version::HTTP_2 {
            Protocol::Http2
        } else if version == http::Version::HTTP_10 {
            Protocol::Http10
        } else {
            // HTTP/0.9 never reaches us (hyper rejects it) and HTTP/3 is not served.
            Protocol::Http11
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http10 => "HTTP/1.0",
            Protocol::Http11 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Milliseconds with the sub-millisecond part: one rounding (nanoseconds to `f64` are exact
/// below 104 days), so 12.5 ms logs as `12.5`, not `12.500000000000002`.
fn millis(duration: Duration) -> f64 {
    duration.as_nanos() as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Map, Value, json};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    use super::*;

    /// A captured event: its target, level and fields.
    type Captured = (String, Level, Map<String, Value>);

    /// A subscriber that keeps every event's fields, as the runtime's JSON formatter sees them.
    #[derive(Clone, Default)]
    struct Capture {
        events: Arc<Mutex<Vec<Captured>>>,
    }

    struct Fields<'a>(&'a mut Map<String, Value>);

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut fields = Map::new();
            event.record(&mut Fields(&mut fields));
            let meta = event.metadata();
            let captured = (meta.target().to_owned(), *meta.level(), fields);
            self.events.lock().unwrap().push(captured);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    impl Visit for Fields<'_> {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), json!(value));
        }
        fn record_u64(&mut self, field: &Field, value: u64) {
            self.0.insert(field.name().to_owned(), json!(value));
        }
        fn record_f64(&mut self, field: &Field, value: f64) {
            self.0.insert(field.name().to_owned(), json!(value));
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0
                .insert(field.name().to_owned(), json!(format!("{value:?}")));
        }
    }

    fn capture(f: impl FnOnce()) -> Vec<Captured> {
        let capture = Capture::default();
        tracing::subscriber::with_default(capture.clone(), f);
        capture.events.lock().unwrap().clone()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn request_event_carries_the_record() {
        let record = RequestLog {
            reporter: Reporter::Source,
            request_id: Some("4b5e0a4c-1c1f-4d2e-9f7a-0c7e1f6b2a11"),
            method: "GET",
            authority: "reviews:9080",
            path: "/reviews/0?x=1",
            protocol: Protocol::new(http::Version::HTTP_11, false),
            response_code: 503,
            grpc_status: None,
            response_flags: ResponseFlags::UpstreamConnectionFailure,
            bytes_received: 0,
            bytes_sent: 91,
            duration: Duration::from_micros(12_500),
            upstream_host: Some(addr("10.0.0.7:15008")),
            destination_service: "reviews.default.svc.cluster.local",
            downstream_remote_address: addr("127.0.0.1:40222"),
            downstream_local_address: addr("10.96.0.12:9080"),
            source_workload: "productpage-v1",
            destination_workload: "reviews-v1",
            source_principal: "spiffe://cluster.local/ns/default/sa/productpage",
            destination_principal: "spiffe://cluster.local/ns/default/sa/reviews",
            user_agent: Some("curl/8.5.0"),
        };
        let events = capture(|| log_request(&record));

        assert_eq!(events.len(), 1);
        let (target, level, fields) = &events[0];
        assert_eq!(target, "access");
        assert_eq!(*level, Level::INFO);
        let expected = json!({
            "kind": "http",
            "reporter": "source",
            "request_id": "4b5e0a4c-1c1f-4d2e-9f7a-0c7e1f6b2a11",
            "method": "GET",
            "authority": "reviews:9080",
            "path": "/reviews/0?x=1",
            "protocol": "HTTP/1.1",
            "response_code": 503,
            "response_flags": "UF",
            "bytes_received": 0,
            "bytes_sent": 91,
            "duration_ms": 12.5,
            "upstream_host": "10.0.0.7:15008",
            "destination_service": "reviews.default.svc.cluster.local",
            "downstream_remote_address": "127.0.0.1:40222",
            "downstream_local_address": "10.96.0.12:9080",
            "source_workload": "productpage-v1",
            "destination_workload": "reviews-v1",
            "source_principal": "spiffe://cluster.local/ns/default/sa/productpage",
            "destination_principal": "spiffe://cluster.local/ns/default/sa/reviews",
            "user_agent": "curl/8.5.0",
        });
        // grpc_status is absent: a plain HTTP response has none.
        assert_eq!(Value::Object(fields.clone()), expected);
    }

    #[test]
    fn grpc_request_logs_status_and_protocol() {
        let record = RequestLog {
            reporter: Reporter::Destination,
            request_id: None,
            method: "POST",
            authority: "ratings:50051",
            path: "/ratings.Ratings/Get",
            protocol: Protocol::new(http::Version::HTTP_2, true),
            response_code: 200,
            grpc_status: Some(14),
            response_flags: ResponseFlags::None,
            bytes_received: 12,
            bytes_sent: 0,
            duration: Duration::from_millis(3),
            upstream_host: None,
            destination_service: "ratings.default.svc.cluster.local",
            downstream_remote_address: addr("10.0.0.5:51234"),
            downstream_local_address: addr("10.0.0.9:15006"),
            source_workload: "reviews-v1",
            destination_workload: "ratings-v1",
            source_principal: "spiffe://cluster.local/ns/default/sa/reviews",
            destination_principal: "spiffe://cluster.local/ns/default/sa/ratings",
            user_agent: None,
        };
        let events = capture(|| log_request(&record));

        let fields = &events[0].2;
        assert_eq!(fields["protocol"], "grpc");
        assert_eq!(fields["grpc_status"], 14);
        assert_eq!(fields["response_flags"], "-");
        assert_eq!(fields["duration_ms"], 3.0);
        for absent in ["request_id", "upstream_host", "user_agent"] {
            assert!(!fields.contains_key(absent), "{absent} logged: {fields:?}");
        }
    }

    #[test]
    fn tcp_event_carries_the_record() {
        let record = TcpLog {
            reporter: Reporter::Destination,
            response_flags: ResponseFlags::None,
            bytes_received: 1_048_576,
            bytes_sent: 2_048,
            duration: Duration::from_secs(2),
            upstream_host: Some(addr("127.0.0.1:3306")),
            destination_service: "mysql.db.svc.cluster.local",
            downstream_remote_address: addr("10.0.0.5:50000"),
            downstream_local_address: addr("10.0.0.8:15006"),
            source_workload: "reviews-v1",
            destination_workload: "mysql-v1",
            source_principal: "spiffe://cluster.local/ns/default/sa/reviews",
            destination_principal: "spiffe://cluster.local/ns/db/sa/mysql",
            sni: Some("mysql.db.svc.cluster.local"),
        };
        let events = capture(|| log_tcp(&record));

        assert_eq!(events.len(), 1);
        let (target, level, fields) = &events[0];
        assert_eq!(target, "access");
        assert_eq!(*level, Level::INFO);
        let expected = json!({
            "kind": "tcp",
            "reporter": "destination",
            "response_flags": "-",
            "bytes_received": 1_048_576,
            "bytes_sent": 2_048,
            "duration_ms": 2000.0,
            "upstream_host": "127.0.0.1:3306",
            "destination_service": "mysql.db.svc.cluster.local",
            "downstream_remote_address": "10.0.0.5:50000",
            "downstream_local_address": "10.0.0.8:15006",
            "source_workload": "reviews-v1",
            "destination_workload": "mysql-v1",
            "source_principal": "spiffe://cluster.local/ns/default/sa/reviews",
            "destination_principal": "spiffe://cluster.local/ns/db/sa/mysql",
            "sni": "mysql.db.svc.cluster.local",
        });
        assert_eq!(Value::Object(fields.clone()), expected);
    }

    #[test]
    fn protocol_from_http_version() {
        assert_eq!(
            Protocol::new(http::Version::HTTP_10, false).as_str(),
            "HTTP/1.0"
        );
        assert_eq!(
            Protocol::new(http::Version::HTTP_11, false).as_str(),
            "HTTP/1.1"
        );
        assert_eq!(
            Protocol::new(http::Version::HTTP_2, false).as_str(),
            "HTTP/2"
        );
        assert_eq!(Protocol::new(http::Version::HTTP_2, true).as_str(), "grpc");
    }
}
