//! A private network namespace for tests of transparent capture: its own loopback, its own
//! iptables, its own `/etc/hosts`, removed on drop. Needs root, `ip` (iproute2) and `iptables`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::tools::{require_tool, skip_because};

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
            skip_because(
                "not root (network namespaces and iptables need it)",
                "CI runs the suite as root",
            );
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

    /// A command run inside the namespace as `uid`/`gid` (no supplementary groups), the way
    /// a sidecar runs under a uid of its own.
    pub fn exec_as(&self, uid: u32, gid: u32, program: &str, args: &[&str]) -> Command {
        let mut command = self.exec("setpriv", &[]);
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args(["--clear-groups", "--", program])
            .args(args);
        command
    }

    /// Runs `iptables ARGS` inside the namespace; panics with its stderr on failure.
    pub fn iptables(&self, args: &[&str]) {
        self.check(&mut self.exec("iptables", args));
    }

    /// Runs `program ARGS` inside the namespace and returns its stdout; panics with its
    /// stderr on failure.
    pub fn output(&self, program: &str, args: &[&str]) -> String {
        self.check(&mut self.exec(program, args))
    }

    /// Writes the namespace's `/etc/hosts`; see [`write_hosts`].
    pub fn set_hosts(&self, entries: &[(IpAddr, Vec<String>)]) {
        write_hosts(&self.name, entries);
    }

    fn check(&self, command: &mut Command) -> String {
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
        String::from_utf8_lossy(&out.stdout).into_owned()
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
        // Only ours: the directory is named after this namespace.
        let _ = std::fs::remove_dir_all(etc_dir(&self.name));
    }
}

/// Writes network namespace `ns`'s `/etc/hosts` (`/etc/netns/NS/hosts`, which `ip netns exec`
/// mounts over `/etc/hosts` for every command it runs): `localhost`, then each address with
/// its names. Rewritten in place, so commands already running see the change. Removed with
/// the namespace.
pub fn write_hosts(ns: &str, entries: &[(IpAddr, Vec<String>)]) {
    let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
    for (addr, names) in entries {
        text.push_str(&format!("{addr}\t{}\n", names.join(" ")));
    }
    let dir = etc_dir(ns);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let path = dir.join("hosts");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn etc_dir(ns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(ns)
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
