//! End-to-end tests: the real `trellis` binary, real clients (curl, grpcio, websockets,
//! openssl, hyper), real sockets on 127.0.0.1 with ports chosen by the kernel.
//!
//! Most tests build the chain client → proxy A → proxy B → app (see
//! `trellis_test_support::chain`). Each test starts its own processes, so tests run in
//! parallel under cargo test (threads) and cargo nextest (processes).

mod admin;
mod authz;
mod bad_input;
mod ca_service;
mod capture;
mod check;
mod config;
mod demo;
mod discovery;
mod faults;
mod grpc;
mod http;
mod identity;
mod large_body;
mod lifecycle;
mod metrics;
mod mtls;
mod routes;
mod streaming;
mod traffic;
mod transparent;
mod tunnel;
mod up;
mod websocket;

use serde_json::Value;
use trellis_test_support::{
    Chain, ChainBuilder, DemoApp, ProxyProcess, ServiceSpec, Target, Trellis,
};

/// The binary under test.
pub(crate) fn trellis() -> Trellis {
    Trellis::new(env!("CARGO_BIN_EXE_trellis"))
}

/// Proxy B in front of one app port declared `protocol`, and proxy A (explicit outbound,
/// `registry_only`) that knows one service, `name.test:port`, whose only endpoint is that app
/// behind B. `extra` is YAML added to the service's entry, indented four spaces (`policy:`,
/// `routes:`). Returns (A, B).
pub(crate) fn one_service_pair(
    trellis: &Trellis,
    app_port: u16,
    protocol: &str,
    (name, port): (&str, u16),
    extra: &str,
) -> (ProxyProcess, ProxyProcess) {
    let b = trellis.proxy(
        "proxy-b",
        &format!(
            "\
node: {{ name: proxy-b, namespace: test, workload: echo }}
listeners: {{ admin: \"127.0.0.1:0\", mesh: \"127.0.0.1:0\" }}
app: {{ address: 127.0.0.1, ports: [ {{ port: {app_port}, protocol: {protocol} }} ] }}
"
        ),
    );
    let a = trellis.proxy(
        "proxy-a",
        &format!(
            "\
node: {{ name: proxy-a, namespace: test, workload: client }}
listeners: {{ admin: \"127.0.0.1:0\", outbound: \"127.0.0.1:0\" }}
outbound_policy: registry_only
services:
  - name: {name}
    namespace: test
    ports: [ {{ name: {protocol}, port: {port}, protocol: {protocol} }} ]
    endpoints:
      - {{ address: 127.0.0.1, ports: {{ {protocol}: {app_port} }}, mesh: \"{mesh}\", workload: echo }}
{extra}",
            mesh = b.mesh()
        ),
    );
    (a, b)
}

/// The demo app `web` behind proxy B, reachable from proxy A as `web.test:80` (protocol
/// `http`, extra host name `www.web.example`), plus the chain.
pub(crate) struct Web {
    pub(crate) app: DemoApp,
    pub(crate) chain: Chain,
}

/// `web` as in [`Web`], with more services or settings added by `more`.
pub(crate) fn web_chain_with(more: impl FnOnce(ChainBuilder) -> ChainBuilder) -> Web {
    let trellis = trellis();
    let app = trellis.demo_app("web");
    let builder = Chain::builder(&trellis).service(
        ServiceSpec::new("web", 80, "http", Target::Meshed(app.http_port()))
            .hostname("www.web.example"),
    );
    let chain = more(builder).start();
    Web { app, chain }
}

pub(crate) fn web_chain() -> Web {
    web_chain_with(|builder| builder)
}

/// A header from the demo app's `headers` object (names compared case-insensitively; a
/// list of values is joined with ", ").
pub(crate) fn app_header(headers: &Value, name: &str) -> Option<String> {
    let object = headers.as_object()?;
    let (_, value) = object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))?;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(values) => Some(
            values
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        other => Some(other.to_string()),
    }
}

/// The headers object of a demo app answer: `/` nests it under `headers`, `/headers` may
/// return it bare.
pub(crate) fn headers_of(json: &Value) -> Value {
    match json.get("headers") {
        Some(headers) if headers.is_object() => headers.clone(),
        _ => json.clone(),
    }
}

/// The header names the app saw, lower-cased.
pub(crate) fn app_header_names(headers: &Value) -> Vec<String> {
    headers
        .as_object()
        .map(|object| object.keys().map(|k| k.to_ascii_lowercase()).collect())
        .unwrap_or_default()
}

/// `response_code` of an access log line as a number (whether logged as number or string).
pub(crate) fn log_code(line: &Value) -> Option<u64> {
    match &line["response_code"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A numeric access log field (number or numeric string).
pub(crate) fn log_number(line: &Value, field: &str) -> Option<u64> {
    match &line[field] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A string access log field, "" when absent.
pub(crate) fn log_str<'a>(line: &'a Value, field: &str) -> &'a str {
    line[field].as_str().unwrap_or_default()
}

/// Deterministic pseudo-random bytes (xorshift) for request bodies.
pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Collects failed checks so one run reports every mismatch, not just the first.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<String>);

impl Problems {
    pub(crate) fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    pub(crate) fn eq<T: PartialEq + std::fmt::Debug>(&mut self, got: T, want: T, what: &str) {
        if got != want {
            self.0.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    /// Panics listing every problem, followed by `context` (logs, dumps).
    pub(crate) fn assert_none(self, context: &str) {
        assert!(
            self.0.is_empty(),
            "{} problem(s):\n  - {}\n{context}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}
