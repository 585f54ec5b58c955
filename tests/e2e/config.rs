//! Invalid configuration: exit code 2, and every error on stderr as
//! `FILE:LINE:COL: FIELD: REASON`, all at once.

use std::time::Duration;

use trellis_test_support::{CommandOutput, TestDir, run};

use crate::trellis;

/// Runs `trellis proxy --config FILE --ready-file ...` on `yaml`; returns the output, the
/// config path and whether a ready file appeared.
fn run_proxy_on(yaml: &str) -> (CommandOutput, String, bool, TestDir) {
    let dir = TestDir::new("config");
    let config = dir.write("bad.yaml", yaml);
    let ready = dir.join("ready.json");
    let mut command = trellis().command();
    command
        .arg("proxy")
        .arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready);
    let out = run("trellis proxy", command, Duration::from_secs(20));
    let path = config.display().to_string();
    let became_ready = ready.exists();
    (out, path, became_ready, dir)
}

/// The `(line, column, rest)` of every stderr line of the form `FILE:LINE:COL: rest`.
fn located_errors(stderr: &str, file: &str) -> Vec<(usize, usize, String)> {
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(file)?.strip_prefix(':')?;
            let (line_no, rest) = rest.split_once(':')?;
            let (col, rest) = rest.split_once(':')?;
            Some((
                line_no.parse().ok()?,
                col.trim().parse().ok()?,
                rest.trim().to_owned(),
            ))
        })
        .collect()
}

/// 1-based number of the first line of `yaml` containing `marker`.
fn line_of(yaml: &str, marker: &str) -> usize {
    yaml.lines()
        .position(|l| l.contains(marker))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{marker} not in the yaml"))
}

fn assert_rejected(out: &CommandOutput, became_ready: bool) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "invalid config must exit with code 2 ({})\nstderr:\n{}",
        out.status,
        out.stderr
    );
    assert!(!became_ready, "an invalid config must never become ready");
}

/// Each `(marker, what)` must have an error located on the marker's line.
fn assert_located(yaml: &str, out: &CommandOutput, file: &str, expected: &[(&str, &str)]) {
    let errors = located_errors(&out.stderr, file);
    for (marker, what) in expected {
        let line = line_of(yaml, marker);
        assert!(
            errors.iter().any(|(l, _, _)| *l == line),
            "no `{file}:{line}:COL: ...` error for {what} (line {line}: {:?})\nlocated errors: {errors:?}\nstderr:\n{}",
            yaml.lines().nth(line - 1).unwrap_or_default(),
            out.stderr
        );
    }
    for (_, col, rest) in &errors {
        assert!(*col >= 1, "columns are 1-based: {rest}");
        assert!(
            rest.contains(": "),
            "expected `FIELD: REASON` after the location, got {rest:?}"
        );
    }
}

#[test]
fn semantic_errors_are_all_reported_with_file_and_line() {
    let yaml = "\
node: { name: proxy-a, namespace: test, workload: client }
listeners: { admin: \"127.0.0.1:0\", outbound: \"127.0.0.1:0\" }
services:
  - name: web
    namespace: test
    ports:
      - { name: http, port: 0, protocol: http }   # port-zero
    endpoints:
      - address: 127.0.0.1
        ports: { grpc: 18080 }                    # undeclared-port
  - name: web                                     # duplicate-service
    namespace: test
    ports: [ { name: http, port: 80, protocol: http } ]
";
    let (out, file, ready, _dir) = run_proxy_on(yaml);
    assert_rejected(&out, ready);
    assert_located(
        yaml,
        &out,
        &file,
        &[
            ("# port-zero", "a service port 0"),
            (
                "# undeclared-port",
                "an endpoint port naming no service port",
            ),
            ("# duplicate-service", "a second service web.test"),
        ],
    );
}

#[test]
fn a_type_error_is_reported_with_file_line_and_field() {
    let yaml = "\
node: { name: proxy-a }
listeners: { admin: \"127.0.0.1:0\" }
services:
  - name: web
    ports: [ { name: http, port: 80, protocol: htp } ]   # bad-protocol
";
    let (out, file, ready, _dir) = run_proxy_on(yaml);
    assert_rejected(&out, ready);
    assert_located(yaml, &out, &file, &[("# bad-protocol", "protocol htp")]);
    assert!(
        out.stderr.contains("protocol"),
        "the error names the field\n{}",
        out.stderr
    );
}

#[test]
fn several_parse_errors_are_reported_at_once() {
    let yaml = "\
node: { name: proxy-a }
listeners: { admin: \"127.0.0.1:0\", outbound: \"not-an-address\" }   # bad-address
services:
  - name: web
    ports: [ { name: http, port: 80, protocol: htp } ]                # bad-protocol
timeouts: { detect: soon }                                            # bad-duration
";
    let (out, file, ready, _dir) = run_proxy_on(yaml);
    assert_rejected(&out, ready);
    assert_located(
        yaml,
        &out,
        &file,
        &[
            ("# bad-address", "outbound: not-an-address"),
            ("# bad-protocol", "protocol htp"),
            ("# bad-duration", "detect: soon"),
        ],
    );
}

#[test]
fn unknown_field_is_reported_with_its_name() {
    let yaml = "\
node: { name: proxy-a }
listeners: { admin: \"127.0.0.1:0\" }
outbund_policy: registry_only   # typo
";
    let (out, file, ready, _dir) = run_proxy_on(yaml);
    assert_rejected(&out, ready);
    assert_located(
        yaml,
        &out,
        &file,
        &[("# typo", "the unknown field outbund_policy")],
    );
    assert!(
        out.stderr.contains("outbund_policy"),
        "the error names the unknown field\n{}",
        out.stderr
    );
}

#[test]
fn missing_config_file_exits_2_naming_the_file() {
    let dir = TestDir::new("config-missing");
    let missing = dir.join("nope.yaml");
    let mut command = trellis().command();
    command.arg("proxy").arg("--config").arg(&missing);
    let out = run("trellis proxy", command, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2), "stderr:\n{}", out.stderr);
    assert!(
        out.stderr.contains(&missing.display().to_string()) || out.stderr.contains("nope.yaml"),
        "names the file\n{}",
        out.stderr
    );
}

/// A time slice the kernel would not take is a usage error, before anything starts.
#[test]
fn sched_slice_outside_the_kernels_range_exits_2() {
    for value in ["50", "100001", "fast"] {
        let mut command = trellis().command();
        command
            .args(["proxy", "--config", "/nonexistent.yaml", "--sched-slice-us"])
            .arg(value);
        let out = run("trellis proxy", command, Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(2), "{value}: {}", out.stderr);
        assert!(
            out.stderr.contains("--sched-slice-us") && out.stderr.contains(value),
            "{value}: names the flag and the value\n{}",
            out.stderr
        );
    }
}

/// The sidecar binary `trellis-proxy` is `trellis proxy` on its own: the same flags, the same
/// config errors, and a good config serves.
#[test]
fn the_trellis_proxy_binary_is_trellis_proxy() {
    let dir = TestDir::new("sidecar-binary");
    let bad = dir.write(
        "bad.yaml",
        "node: { name: a }\nlisteners: { admin: 127.0.0.1:0, nope: 1 }\n",
    );
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_trellis-proxy"));
    command.arg("--config").arg(&bad);
    let out = run("trellis-proxy", command, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    let errors = located_errors(&out.stderr, &bad.display().to_string());
    assert!(
        errors
            .iter()
            .any(|(line, _, rest)| *line == 2 && rest.contains("nope")),
        "{}",
        out.stderr
    );

    let good = dir.write(
        "good.yaml",
        "node: { name: a }\nlisteners: { admin: 127.0.0.1:0, outbound: 127.0.0.1:0 }\n",
    );
    let ready = dir.join("ready.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trellis-proxy"))
        .arg("--config")
        .arg(&good)
        .arg("--ready-file")
        .arg(&ready)
        .arg("--no-access-log")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start trellis-proxy");
    for _ in 0..1000 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready.exists(), "trellis-proxy never became ready");
    let addrs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ready).expect("ready file")).expect("JSON");
    assert!(addrs["outbound"].is_string(), "{addrs}");
}
