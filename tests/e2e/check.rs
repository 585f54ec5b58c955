//! `trellis check DIR`: the demo's resources pass; a copy with mistakes reports each one at
//! its file and line, all at once, and exits 1; an unreadable directory exits 2; `--workload`
//! prints the compiled proxy config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use trellis_test_support::{CommandOutput, TestDir, run};

use crate::trellis;

/// `examples/demo` in the repository.
fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo")
}

fn check(args: &[&str]) -> CommandOutput {
    let mut command = trellis().command();
    command.arg("check").args(args);
    run("trellis check", command, Duration::from_secs(20))
}

fn demo_file(name: &str) -> String {
    let path = demo_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// 1-based number of the first line of `text` containing `marker`.
fn line_of(text: &str, marker: &str) -> usize {
    text.lines()
        .position(|l| l.contains(marker))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{marker:?} is not in the file"))
}

/// `text` with the first `from` replaced by `to` (which must be there).
fn break_once(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in the file");
    text.replacen(from, to, 1)
}

#[test]
fn the_demo_passes() {
    let dir = demo_dir();
    let out = check(&[dir.to_str().expect("a UTF-8 path")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "trellis check examples/demo failed:\n{}",
        out.stderr
    );
    let stdout = out.stdout_text();
    let summary = stdout.trim();
    assert!(summary.starts_with("ok: "), "{summary}");
    for kind in [
        "Services: ",
        "Workloads: ",
        "HTTPRoutes: ",
        "PeerAuthentications: ",
    ] {
        assert!(summary.contains(kind), "no {kind} in {summary:?}");
    }
}

#[test]
fn a_broken_copy_reports_every_mistake_at_its_line() {
    let dir = TestDir::new("check");
    // Copy the demo, then make three mistakes in three files.
    let mut files = Vec::new();
    for entry in std::fs::read_dir(demo_dir()).expect("the demo directory") {
        let name = entry.expect("an entry").file_name();
        let name = name.to_str().expect("a UTF-8 name").to_string();
        if name.ends_with(".yaml") {
            files.push(name);
        }
    }
    assert!(files.len() >= 3, "{files:?}");
    for name in &files {
        dir.write(name, demo_file(name));
    }
    let mistakes = [
        // A protocol that does not exist.
        ("frontend.yaml", "protocol: http", "protocol: htp"),
        // A backend port the Service does not have.
        (
            "reviews.yaml",
            "port: 9080\n          weight: 90",
            "port: 9081\n          weight: 90",
        ),
        // A kind that does not exist.
        ("stock.yaml", "kind: Workload", "kind: Workloads"),
    ];
    let mut expected = Vec::new();
    for (file, from, to) in mistakes {
        let text = break_once(&demo_file(file), from, to);
        let marker = to.lines().next().unwrap_or(to);
        let path = dir.write(file, &text);
        expected.push((path.display().to_string(), line_of(&text, marker)));
    }

    let root = dir.path().to_str().expect("a UTF-8 path");
    let out = check(&[root]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "invalid resources exit 1:\n{}",
        out.stderr
    );
    // `FILE:LINE:COL: FIELD: REASON`, one per error.
    let mut located: Vec<(String, usize)> = Vec::new();
    for line in out.stderr.lines() {
        let Some((file, rest)) = line.split_once(".yaml:") else {
            continue;
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(l), Some(c), Some(what)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("not FILE:LINE:COL: ...: {line}");
        };
        let column: usize = c.parse().unwrap_or_else(|_| panic!("no column in {line}"));
        assert!(column >= 1, "{line}");
        assert!(what.contains(": "), "FIELD: REASON in {line}");
        let line_no = l.parse().unwrap_or_else(|_| panic!("no line in {line}"));
        located.push((format!("{file}.yaml"), line_no));
    }
    located.sort();
    expected.sort();
    assert_eq!(located, expected, "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains("\"htp\" is not a protocol"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("spec.rules[1].backendRefs[0].port: Service \"reviews-v1\" has no port 9081"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("did you mean Workload?"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("trellis: 3 errors in"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "nothing on stdout when invalid");
}

#[test]
fn an_unreadable_directory_exits_2() {
    let dir = TestDir::new("check-missing");
    let missing = dir.join("nowhere");
    let out = check(&[missing.to_str().expect("a UTF-8 path")]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);
}

#[test]
fn workload_prints_the_compiled_proxy_config() {
    let dir = demo_dir();
    let dir = dir.to_str().expect("a UTF-8 path");
    let args = [
        dir,
        "--workload",
        "frontend",
        "--namespace",
        "shop",
        "--output",
        "json",
    ];
    let out = check(&args);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stderr.starts_with("ok: "),
        "the summary goes to stderr: {}",
        out.stderr
    );
    let config: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(config["node"]["name"], "frontend");
    assert_eq!(config["node"]["namespace"], "shop");
    assert_eq!(config["mtls"], "strict", "the mesh-wide PeerAuthentication");
    assert_eq!(config["app"]["ports"][0]["port"], 18080);
    let services = config["services"].as_array().expect("services");
    let reviews = services
        .iter()
        .find(|s| s["name"] == "reviews")
        .expect("frontend sees reviews");
    let endpoints: Vec<&str> = reviews["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e["workload"].as_str())
        .collect();
    assert_eq!(endpoints, ["reviews-v1", "reviews-v2"]);

    // YAML by default; an unknown workload is an error naming those there.
    let out = check(&[dir, "--workload", "frontend", "--namespace", "shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout_text().starts_with("node:\n"),
        "{}",
        out.stdout_text()
    );
    let out = check(&[dir, "--workload", "frontdoor", "--namespace", "shop"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("no Workload \"frontdoor\" in namespace \"shop\""),
        "{}",
        out.stderr
    );
}
