//! `trellis control` processes (the CA's signing service), and join tokens.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::dir::TestDir;
use crate::metrics::Metrics;
use crate::process::{Process, run};
use crate::proxy::{STARTUP, Trellis};
use crate::raw::http_request;
use crate::wait::wait_until;

/// A running `trellis control --ca-dir DIR` on kernel-chosen ports.
#[derive(Debug)]
pub struct ControlProcess {
    process: Process,
    grpc: SocketAddr,
    admin: SocketAddr,
    _dir: TestDir,
}

impl ControlProcess {
    /// Starts the control plane for the CA in `ca_dir` (made by `trellis ca init`) with extra
    /// arguments (e.g. `--cert-ttl 20s`), and waits for its ready file.
    pub fn start(trellis: &Trellis, ca_dir: &Path, args: &[&str]) -> ControlProcess {
        let dir = TestDir::new("control");
        let ready = dir.join("ready.json");
        let mut command = trellis.command();
        command
            .arg("control")
            .arg("--ca-dir")
            .arg(ca_dir)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready)
            .args(args);
        let mut process = Process::spawn("control", command);
        let json: Value = wait_until(STARTUP, || {
            if let Some(status) = process.try_exit() {
                panic!(
                    "trellis control exited with {status} before it was ready\n{}",
                    process.stderr_tail(40)
                );
            }
            serde_json::from_str(&std::fs::read_to_string(&ready).ok()?).ok()
        })
        .unwrap_or_else(|| panic!("trellis control not ready\n{}", process.stderr_tail(40)));
        let addr = |name: &str| -> SocketAddr {
            json[name]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("control ready file has no {name} address: {json}"))
        };
        ControlProcess {
            grpc: addr("grpc"),
            admin: addr("admin"),
            process,
            _dir: dir,
        }
    }

    /// The signing service (gRPC over TLS).
    pub fn grpc(&self) -> SocketAddr {
        self.grpc
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The process itself, e.g. to signal it and wait for its exit.
    pub fn into_process(self) -> Process {
        self.process
    }

    /// The control plane's `/metrics`, parsed.
    pub fn metrics(&self) -> Metrics {
        let response = http_request(self.admin, "GET", "/metrics", &[], b"");
        assert_eq!(response.status, 200, "{}", response.text());
        Metrics::parse(&response.text())
    }

    /// Mints a join token for `id` with `trellis control token`.
    pub fn token(trellis: &Trellis, ca_dir: &Path, id: &str, ttl: &str) -> String {
        let mut command = trellis.command();
        command
            .args(["control", "token", "--ca-dir"])
            .arg(ca_dir)
            .args(["--id", id, "--ttl", ttl]);
        let out = run("trellis control token", command, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "trellis control token failed: {}",
            out.stderr
        );
        out.stdout_text().trim().to_owned()
    }
}
