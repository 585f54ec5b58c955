//! A private network namespace for tests of transparent capture: its own loopback, its own
//! iptables, removed on drop. Needs root, `ip` (iproute2) and `iptables`.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::tools::{require_tool, skip};

/// A network namespace created for one test.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `trellis-<label>-<pid>-<n>` with loopback up. Returns `None` (after printing
    /// `SKIPPED ...`) when not root or a tool is missing; under `CI=true` it panics instead.
    pub fn create(label: &str) -> Option<NetNs> {
        if !is_root() {
            skip("root (network namespaces and iptables need it)");
            return None;
        }
        if !require_tool("ip") || !require_tool("iptables") {
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "trellis-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ns = NetNs { name };
        ns.check(Command::new("ip").args(["netns", "add", &ns.name]));
        ns.check(&mut ns.exec("ip", &["link", "set", "lo", "up"]));
        Some(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command run inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, program])
            .args(args);
        command
    }

    /// Runs `iptables ARGS` inside the namespace; panics with its stderr on failure.
    pub fn iptables(&self, args: &[&str]) {
        self.check(&mut self.exec("iptables", args));
    }

    fn check(&self, command: &mut Command) {
        let out = command
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("netns {}: cannot run {command:?}: {e}", self.name));
        assert!(
            out.status.success(),
            "netns {}: {command:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn is_root() -> bool {
    // /proc/self/status: "Uid: real effective saved fs".
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}
