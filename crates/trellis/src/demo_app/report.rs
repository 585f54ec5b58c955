//! The call tree the demo app reports: who answered (`service`, `version`) and the outcome of
//! each backend call, with the backend's own report nested inside when it is a demo app too.
//! One model, three faces: JSON (`GET /`), protobuf (`trellis.demo.v1.InfoReply`) and a short
//! indented text tree (`GET /?format=text`).

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trellis_api::demo::v1 as pb;

/// One node of the call tree: an app and the calls it made for this request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Report {
    pub(super) service: String,
    pub(super) version: String,
    /// Every call below succeeded, recursively.
    pub(super) ok: bool,
    pub(super) calls: Vec<Call>,
}

/// The outcome of one backend call. Field order is the JSON's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Call {
    /// The `--backend` URL as written.
    pub(super) target: String,
    pub(super) protocol: Protocol,
    /// This call succeeded and so did everything below it.
    pub(super) ok: bool,
    /// HTTP status (http) or gRPC code (grpc); absent for tcp or when nothing answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) status: Option<u32>,
    pub(super) latency_ms: f64,
    /// Why this call failed (absent when only a call below it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<String>,
    /// tcp: the server's banner line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) banner: Option<String>,
    /// The backend's own report, when it is a demo app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) reply: Option<Box<Report>>,
    /// http: an answer that is not a demo app's report (JSON as it came, other text as a
    /// string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) body: Option<Value>,
}

/// How a backend is called: the scheme of its `--backend` URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Protocol {
    Http,
    Grpc,
    Tcp,
}

impl Report {
    pub(super) fn new(service: &str, version: &str, calls: Vec<Call>) -> Self {
        Self {
            service: service.to_owned(),
            version: version.to_owned(),
            ok: calls.iter().all(|c| c.ok),
            calls,
        }
    }

    /// A short indented tree for people:
    ///
    /// ```text
    /// frontend v1: ok
    /// ├─ http://reviews.test:9080/ → reviews v2: ok (HTTP 200, 1.2 ms)
    /// └─ grpc://catalog.test:50051 → catalog v1: ok (gRPC OK, 3.4 ms)
    ///    └─ tcp://stock.test:7000: ok (banner "trellis-demo stock tcp", 0.8 ms)
    /// ```
    pub(super) fn to_text(&self) -> String {
        let mut out = format!(
            "{} {}: {}\n",
            self.service,
            self.version,
            if self.ok { "ok" } else { "FAILED" }
        );
        write_calls(&mut out, &self.calls, "");
        out
    }
}

impl Call {
    /// A call that got no usable answer.
    pub(super) fn failed(
        target: &str,
        protocol: Protocol,
        latency: Duration,
        error: String,
    ) -> Self {
        Self {
            target: target.to_owned(),
            protocol,
            ok: false,
            status: None,
            latency_ms: latency_ms(latency),
            error: Some(error),
            banner: None,
            reply: None,
            body: None,
        }
    }

    /// "HTTP 200, 1.2 ms" and the like, for [`Report::to_text`].
    fn summary(&self) -> String {
        let mut parts = Vec::new();
        match (self.protocol, self.status) {
            (Protocol::Http, Some(status)) => parts.push(format!("HTTP {status}")),
            (Protocol::Grpc, Some(code)) => parts.push(format!(
                "gRPC {:?}",
                tonic::Code::from_i32(i32::try_from(code).unwrap_or(i32::MAX))
            )),
            _ => {}
        }
        if let Some(banner) = &self.banner {
            parts.push(format!("banner {banner:?}"));
        }
        parts.push(format!("{:.1} ms", self.latency_ms));
        parts.join(", ")
    }
}

fn write_calls(out: &mut String, calls: &[Call], indent: &str) {
    for (i, call) in calls.iter().enumerate() {
        let last = i + 1 == calls.len();
        let (branch, below) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        let who = call
            .reply
            .as_ref()
            .map(|r| format!(" → {} {}", r.service, r.version))
            .unwrap_or_default();
        let verdict = match (&call.error, call.ok) {
            (_, true) => "ok".to_owned(),
            (Some(error), false) => format!("FAILED: {error}"),
            (None, false) => "FAILED below".to_owned(),
        };
        let _ = writeln!(
            out,
            "{indent}{branch}{}{who}: {verdict} ({})",
            call.target,
            call.summary()
        );
        if let Some(reply) = &call.reply {
            write_calls(out, &reply.calls, &format!("{indent}{below}"));
        }
    }
}

/// Milliseconds with one decimal: enough for a human, stable enough to read.
pub(super) fn latency_ms(latency: Duration) -> f64 {
    (latency.as_secs_f64() * 10_000.0).round() / 10.0
}

impl From<&Report> for pb::InfoReply {
    fn from(report: &Report) -> Self {
        Self {
            service: report.service.clone(),
            version: report.version.clone(),
            ok: report.ok,
            calls: report.calls.iter().map(pb::Call::from).collect(),
        }
    }
}

impl From<&Call> for pb::Call {
    fn from(call: &Call) -> Self {
        Self {
            target: call.target.clone(),
            protocol: call.protocol.as_str().to_owned(),
            ok: call.ok,
            status: call.status,
            latency_ms: call.latency_ms,
            error: call.error.clone().unwrap_or_default(),
            banner: call.banner.clone().unwrap_or_default(),
            reply: call.reply.as_deref().map(pb::InfoReply::from),
            body_json: call.body.as_ref().map(Value::to_string).unwrap_or_default(),
        }
    }
}

impl From<pb::InfoReply> for Report {
    fn from(reply: pb::InfoReply) -> Self {
        Self {
            service: reply.service,
            version: reply.version,
            ok: reply.ok,
            calls: reply.calls.into_iter().map(Call::from).collect(),
        }
    }
}

impl From<pb::Call> for Call {
    fn from(call: pb::Call) -> Self {
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        Self {
            protocol: Protocol::from_name(&call.protocol),
            target: call.target,
            ok: call.ok,
            status: call.status,
            latency_ms: call.latency_ms,
            error: non_empty(call.error),
            banner: non_empty(call.banner),
            reply: call.reply.map(|r| Box::new(Report::from(r))),
            body: non_empty(call.body_json)
                .map(|json| serde_json::from_str(&json).unwrap_or(Value::String(json))),
        }
    }
}

impl Protocol {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }

    /// The protocol named in a peer's reply; anything unknown is shown as http, the only one
    /// that can carry an arbitrary answer.
    fn from_name(name: &str) -> Self {
        match name {
            "grpc" => Protocol::Grpc,
            "tcp" => Protocol::Tcp,
            _ => Protocol::Http,
        }
    }
}
