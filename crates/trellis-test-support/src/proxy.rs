//! The binary under test and `trellis proxy` processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::Value;

use crate::demo::{DemoApp, DemoOptions};
use crate::dir::TestDir;
use crate::metrics::Metrics;
use crate::process::Process;
use crate::raw::{RawResponse, http_request};
use crate::wait::wait_until;

/// How long a process may take to write its ready file. Generous: a debug build on two busy
/// cores.
pub const STARTUP: Duration = Duration::from_secs(30);

/// The `trellis` binary. The test crate passes `env!("CARGO_BIN_EXE_trellis")`.
#[derive(Debug, Clone)]
pub struct Trellis {
    bin: PathBuf,
    /// Run every process inside this network namespace (`ip netns exec NS ...`).
    netns: Option<String>,
    /// Run every process as this user and group (`setpriv`), the way a pod runs its sidecar
    /// under its own uid so that capture rules can leave the sidecar's traffic alone.
    user: Option<(u32, u32)>,
}

/// The addresses a proxy reports in its ready file (listeners configured with port 0 carry
/// their real ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAddrs {
    pub admin: SocketAddr,
    pub outbound: Option<SocketAddr>,
    pub outbound_transparent: Option<SocketAddr>,
    pub inbound: Option<SocketAddr>,
    pub mesh: Option<SocketAddr>,
}

/// A running `trellis proxy --config FILE --ready-file PATH`. stdout (the access log) and
/// stderr are captured; the process is killed on drop, and a proxy that panicked fails the
/// test there.
#[derive(Debug)]
pub struct ProxyProcess {
    process: Process,
    addrs: ProxyAddrs,
    config: PathBuf,
    // Last, so it is removed after the process is gone.
    _dir: TestDir,
}

impl Trellis {
    pub fn new(bin: impl Into<PathBuf>) -> Trellis {
        Trellis {
            bin: bin.into(),
            netns: None,
            user: None,
        }
    }

    /// The same binary, with every process it starts running inside network namespace `ns`.
    pub fn in_netns(&self, ns: &crate::NetNs) -> Trellis {
        Trellis {
            netns: Some(ns.name().to_owned()),
            ..self.clone()
        }
    }

    /// The same binary, with every process it starts running as `uid`/`gid` (no
    /// supplementary groups). The files a proxy needs are handed to that user.
    pub fn as_user(&self, uid: u32, gid: u32) -> Trellis {
        Trellis {
            user: Some((uid, gid)),
            ..self.clone()
        }
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A `Command` for the binary (inside the network namespace and as the user, if any), to
    /// run subcommands by hand. `ip netns exec` and `setpriv` exec the binary, so the child's
    /// pid is the binary's.
    pub fn command(&self) -> Command {
        let mut words: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            words.extend(["ip", "netns", "exec", ns].map(Into::into));
        }
        if let Some((uid, gid)) = self.user {
            words.push("setpriv".into());
            words.push(format!("--reuid={uid}").into());
            words.push(format!("--regid={gid}").into());
            words.push("--clear-groups".into());
            words.push("--".into());
        }
        words.push(self.bin.clone().into());
        let mut command = Command::new(&words[0]);
        command.args(&words[1..]);
        command
    }

    /// Starts `trellis proxy` with `yaml` as its config; see [`ProxyProcess::start`].
    pub fn proxy(&self, name: &str, yaml: &str) -> ProxyProcess {
        ProxyProcess::spawn_as(self.command(), name, yaml, &[], self.user)
    }

    /// Starts `trellis demo-app --name NAME` with an HTTP port only.
    pub fn demo_app(&self, name: &str) -> DemoApp {
        DemoOptions::new(name).start(self)
    }
}

impl ProxyProcess {
    /// Writes `yaml` to a private directory, starts the proxy with `--ready-file`, and waits for
    /// that file (up to [`STARTUP`]). Panics with the proxy's stderr if it exits or is not ready
    /// in time.
    pub fn start(bin: &Path, name: &str, yaml: &str) -> ProxyProcess {
        ProxyProcess::start_with_args(bin, name, yaml, &[])
    }

    /// Like [`ProxyProcess::start`], with extra command-line arguments (e.g. `--log-level`).
    pub fn start_with_args(bin: &Path, name: &str, yaml: &str, args: &[&str]) -> ProxyProcess {
        ProxyProcess::spawn(Command::new(bin), name, yaml, args)
    }

    /// Starts `command` (the binary, possibly behind a launcher such as `ip netns exec`) as a
    /// proxy; see [`ProxyProcess::start`].
    pub fn spawn(command: Command, name: &str, yaml: &str, args: &[&str]) -> ProxyProcess {
        ProxyProcess::spawn_as(command, name, yaml, args, None)
    }

    /// Like [`ProxyProcess::spawn`] for a proxy that runs as `user` (uid, gid): its directory
    /// (config, ready file) is handed to that user first.
    pub fn spawn_as(
        mut command: Command,
        name: &str,
        yaml: &str,
        args: &[&str],
        user: Option<(u32, u32)>,
    ) -> ProxyProcess {
        let dir = TestDir::new(name);
        if let Some((uid, gid)) = user {
            dir.chown(uid, gid);
        }
        let config = dir.write("proxy.yaml", yaml);
        let ready = dir.join("ready.json");
        command
            .arg("proxy")
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            .args(args);
        let mut process = Process::spawn(name, command);
        let json = wait_for_ready_file(&mut process, &ready, STARTUP).unwrap_or_else(|why| {
            panic!(
                "proxy {name} did not start: {why}\n--- config ---\n{yaml}\n{}",
                process.stderr_tail(60)
            )
        });
        let addrs = ProxyAddrs::from_json(&json)
            .unwrap_or_else(|why| panic!("proxy {name}: bad ready file {json}: {why}"));
        ProxyProcess {
            process,
            addrs,
            config,
            _dir: dir,
        }
    }

    pub fn name(&self) -> &str {
        self.process.name()
    }

    pub fn addrs(&self) -> &ProxyAddrs {
        &self.addrs
    }

    pub fn admin(&self) -> SocketAddr {
        self.addrs.admin
    }

    /// The explicit outbound listener; panics when the config has none.
    pub fn outbound(&self) -> SocketAddr {
        self.addrs
            .outbound
            .unwrap_or_else(|| panic!("proxy {} has no outbound listener", self.name()))
    }

    /// The mesh listener; panics when the config has none.
    pub fn mesh(&self) -> SocketAddr {
        self.addrs
            .mesh
            .unwrap_or_else(|| panic!("proxy {} has no mesh listener", self.name()))
    }

    /// `http://127.0.0.1:PORT` of the outbound listener, for `curl -x`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.outbound())
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Every access log line so far (stdout lines that parse as JSON objects).
    pub fn access_log(&self) -> Vec<Value> {
        self.process
            .stdout_lines()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// The first access log line matching `pred`, waiting for it (lines are written when a
    /// request or connection ends, which may be just after the client saw the response).
    /// Panics with the log and stderr when none arrives; `what` describes the line sought.
    pub fn wait_access_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_until(Duration::from_secs(10), || {
            self.access_log().into_iter().find(|line| pred(line))
        })
        .unwrap_or_else(|| {
            panic!(
                "no access log line at {} for {what}\n{}",
                self.name(),
                self.diagnostics()
            )
        })
    }

    /// stderr (the human log) so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// The stderr tail and the access log tail, for failure messages.
    pub fn diagnostics(&self) -> String {
        let stdout = self.process.stdout_lines();
        let start = stdout.len().saturating_sub(20);
        format!(
            "{}--- {} stdout (access log, last {} of {} lines) ---\n{}\n",
            self.process.stderr_tail(40),
            self.name(),
            stdout.len() - start,
            stdout.len(),
            stdout[start..].join("\n")
        )
    }

    /// GET `path` on the admin listener.
    pub fn admin_get(&self, path: &str) -> RawResponse {
        http_request(self.admin(), "GET", path, &[], b"")
    }

    /// POST `path` (empty body) on the admin listener.
    pub fn admin_post(&self, path: &str) -> RawResponse {
        http_request(self.admin(), "POST", path, &[], b"")
    }

    /// Scrapes `/metrics`; panics unless it answers 200.
    pub fn metrics(&self) -> Metrics {
        let response = self.admin_get("/metrics");
        assert_eq!(
            response.status,
            200,
            "GET /metrics at {}: {}\n{}",
            self.name(),
            response.text(),
            self.diagnostics()
        );
        Metrics::parse(&response.text())
    }

    /// Scrapes `/metrics` until `ready` holds for a scrape (metrics are recorded when a
    /// request ends, possibly just after the client saw it), then returns that scrape; after
    /// 10 s returns the last scrape anyway so the test's assertions can say what is wrong.
    pub fn metrics_when(&self, ready: impl Fn(&Metrics) -> bool) -> Metrics {
        let mut last = Metrics::default();
        let found = wait_until(Duration::from_secs(10), || {
            last = self.metrics();
            ready(&last).then(|| last.clone())
        });
        found.unwrap_or(last)
    }

    /// Peak RSS of the proxy so far, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.process.peak_rss_kib()
    }

    pub fn sigterm(&mut self) {
        self.process.signal("TERM");
    }

    pub fn sigint(&mut self) {
        self.process.signal("INT");
    }

    /// Waits up to `timeout` for the proxy to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.process.kill();
        let stderr = self.process.stderr();
        if !std::thread::panicking() && stderr.contains("panicked at") {
            panic!(
                "proxy {} panicked during the test\n{}",
                self.name(),
                self.process.stderr_tail(80)
            );
        }
    }
}

impl ProxyAddrs {
    fn from_json(json: &Value) -> Result<ProxyAddrs, String> {
        let addr = |key: &str| -> Result<Option<SocketAddr>, String> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => s
                    .parse()
                    .map(Some)
                    .map_err(|e| format!("{key}: {s:?}: {e}")),
                Some(other) => Err(format!("{key}: expected an address, got {other}")),
            }
        };
        Ok(ProxyAddrs {
            admin: addr("admin")?.ok_or("no admin address")?,
            outbound: addr("outbound")?,
            outbound_transparent: addr("outbound_transparent")?,
            inbound: addr("inbound")?,
            mesh: addr("mesh")?,
        })
    }
}

/// Waits for a ready file holding JSON. Fails early, with the exit status, if the process
/// ends first.
pub(crate) fn wait_for_ready_file(
    process: &mut Process,
    path: &Path,
    timeout: Duration,
) -> Result<Value, String> {
    let mut last_error = String::from("no ready file yet");
    let found = wait_until(timeout, || {
        if let Some(status) = process.try_exit() {
            return Some(Err(format!("exited with {status} before it was ready")));
        }
        let text = std::fs::read_to_string(path).ok()?;
        match serde_json::from_str::<Value>(&text) {
            Ok(json) => Some(Ok(json)),
            Err(e) => {
                last_error = format!(
                    "ready file {} does not parse ({e}): {text:?}",
                    path.display()
                );
                None
            }
        }
    });
    match found {
        Some(result) => result,
        None => Err(format!("not ready after {timeout:?}: {last_error}")),
    }
}
