//! The admin listener: `/logging`, `/config_dump`, `/metrics`.

use serde_json::Value;
use trellis_test_support::{http_request, wait_until};

use crate::web_chain;

/// Whether `json` holds the string `want` anywhere.
fn contains_string(json: &Value, want: &str) -> bool {
    match json {
        Value::String(s) => s == want,
        Value::Array(items) => items.iter().any(|v| contains_string(v, want)),
        Value::Object(map) => map.values().any(|v| contains_string(v, want)),
        _ => false,
    }
}

fn debug_lines(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.contains("DEBUG") || l.contains("\"level\":\"DEBUG\""))
        .count()
}

#[test]
fn logging_level_changes_at_run_time() {
    let web = web_chain();
    let a = &web.chain.a;
    let good = || {
        let response = http_request(a.outbound(), "GET", "http://web.test/", &[], b"");
        assert_eq!(response.status, 200, "{}", a.diagnostics());
    };

    good();
    assert_eq!(
        debug_lines(&a.stderr()),
        0,
        "DEBUG lines at the default level\n{}",
        a.diagnostics()
    );

    let set = a.admin_post("/logging?level=debug");
    assert_eq!(set.status, 200, "POST /logging?level=debug: {}", set.text());
    let now = a.admin_get("/logging");
    assert_eq!(now.status, 200, "GET /logging: {}", now.text());
    assert!(
        now.text().to_ascii_lowercase().contains("debug"),
        "GET /logging after setting debug: {}",
        now.text()
    );

    good();
    let seen = wait_until(std::time::Duration::from_secs(5), || {
        (debug_lines(&a.stderr()) > 0).then_some(())
    });
    assert!(
        seen.is_some(),
        "no DEBUG lines after /logging?level=debug and a request\n{}",
        a.diagnostics()
    );

    let bogus = a.admin_post("/logging?level=bogus");
    assert_eq!(
        bogus.status,
        400,
        "an unknown level is refused: {}",
        bogus.text()
    );

    let back = a.admin_post("/logging?level=info");
    assert_eq!(back.status, 200, "{}", back.text());
    // Count once the change is in the captured stderr: every line logged before it (the last
    // request's DEBUG lines, written by other tasks) has been read by then.
    let changed = wait_until(std::time::Duration::from_secs(5), || {
        a.stderr().contains("to=info").then_some(())
    });
    assert!(
        changed.is_some(),
        "no level change logged\n{}",
        a.diagnostics()
    );
    let before = debug_lines(&a.stderr());
    good();
    assert_eq!(
        debug_lines(&a.stderr()),
        before,
        "DEBUG lines after going back to info\n{}",
        a.diagnostics()
    );
}

#[test]
fn config_dump_is_the_config_as_json() {
    let web = web_chain();
    let dump = web.chain.a.admin_get("/config_dump");
    assert_eq!(dump.status, 200, "{}", dump.text());
    let json = dump.json();
    assert!(
        contains_string(&json, "proxy-a"),
        "node name in the dump: {json}"
    );
    assert!(
        contains_string(&json, "web"),
        "service web in the dump: {json}"
    );
    assert!(
        contains_string(&json, &web.chain.b.mesh().to_string()),
        "B's mesh address in the endpoints: {json}"
    );
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let web = web_chain();
    let request = http_request(web.chain.a.outbound(), "GET", "http://web.test/", &[], b"");
    assert_eq!(request.status, 200);
    let response = web.chain.a.admin_get("/metrics");
    assert_eq!(response.status, 200);
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text"),
        "content-type {content_type:?}"
    );
    assert!(
        response.text().contains("# TYPE trellis_requests"),
        "{}",
        response.text()
    );
}

#[test]
fn unknown_admin_path_is_404() {
    let web = web_chain();
    assert_eq!(web.chain.a.admin_get("/nope").status, 404);
}
