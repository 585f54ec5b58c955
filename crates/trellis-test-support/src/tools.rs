//! External tools a test needs, and free ports for third-party servers.

use std::net::TcpListener;
use std::process::{Command, Stdio};

/// True when `tool` is on `PATH`. Otherwise prints
/// `SKIPPED <test>: <tool> not installed (./scripts/test installs it)` and returns false, so the
/// test can return early; under `CI=true` it panics instead, so CI never passes without
/// running the test.
pub fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    found || skip(tool)
}

/// True when `python3` can import `module` (`grpc` comes from the pip package `grpcio`).
/// Skips like [`require_tool`] otherwise.
pub fn require_python_module(module: &str) -> bool {
    if !require_tool("python3") {
        return false;
    }
    let imported = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    imported || skip(&format!("python module {module}"))
}

/// Skips (or fails under `CI=true`) for a missing tool.
pub(crate) fn skip(what: &str) -> bool {
    skip_because(
        &format!("{what} not installed"),
        "./scripts/test installs it",
    )
}

/// Prints `SKIPPED <test>: <reason> (<hint>)` and returns false; under `CI=true` it panics
/// instead, so CI never passes without running the test.
pub(crate) fn skip_because(reason: &str, hint: &str) -> bool {
    let current = std::thread::current();
    let test = current.name().unwrap_or("test");
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{test}: {reason}, and CI=true forbids skipping ({hint})");
    }
    eprintln!("SKIPPED {test}: {reason} ({hint})");
    false
}

/// A port that was free a moment ago: bind 127.0.0.1:0, read the port, close. Only for
/// servers that cannot report a port-0 choice themselves (openssl) and for addresses where
/// nothing must listen (a dead peer, a refused upstream).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local addr of a bound listener")
        .port()
}
