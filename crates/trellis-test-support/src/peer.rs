//! Third-party peers: the Python gRPC and WebSocket peers, and `openssl s_server`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::dir::TestDir;
use crate::process::{CommandOutput, Process, run};
use crate::tools::free_port;

/// The repository root (where `tests/peers/` lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Python peer server (`tests/peers/*.py server --port 0`) that prints `READY <port>`.
#[derive(Debug)]
pub struct PyPeer {
    pub port: u16,
    process: Process,
}

/// `openssl s_server -www` with a fresh self-signed certificate for one host name.
#[derive(Debug)]
pub struct TlsServer {
    pub port: u16,
    /// The certificate to trust (`curl --cacert`).
    pub cert: PathBuf,
    process: Process,
    _dir: TestDir,
}

impl PyPeer {
    /// Runs `python3 -u SCRIPT ARGS...` (`script` relative to the repository root) and waits
    /// for its `READY <port>` line.
    pub fn start(script: &str, args: &[&str]) -> PyPeer {
        PyPeer::start_with(Command::new("python3"), script, args)
    }

    /// Like [`PyPeer::start`], with `python3` started by `python` (e.g. `ip netns exec NS
    /// python3`, from [`crate::NetNs::exec`]).
    pub fn start_with(mut command: Command, script: &str, args: &[&str]) -> PyPeer {
        command.arg("-u").arg(repo_root().join(script)).args(args);
        let process = Process::spawn(script, command);
        let ready =
            process.wait_for_stdout(Duration::from_secs(30), |line| line.starts_with("READY "));
        let port = ready
            .as_deref()
            .and_then(|line| line.trim_start_matches("READY ").trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{script} {args:?} did not print READY <port>\n--- stdout ---\n{}\n{}",
                    process.stdout_lines().join("\n"),
                    process.stderr_tail(40)
                )
            });
        PyPeer { port, process }
    }

    pub fn diagnostics(&self) -> String {
        self.process.stderr_tail(40)
    }
}

/// Runs a Python peer client to completion (`python3 -u SCRIPT ARGS...`).
pub fn run_python(script: &str, args: &[&str], timeout: Duration) -> CommandOutput {
    let mut command = Command::new("python3");
    command.arg("-u").arg(repo_root().join(script)).args(args);
    run(script, command, timeout)
}

impl TlsServer {
    /// Makes an ECDSA P-256 certificate for `host` (CN and DNS SAN) and serves `-www` on
    /// 127.0.0.1. openssl cannot report a port-0 choice, so the port is picked by
    /// [`free_port`] (retried if someone takes it first).
    pub fn start(host: &str) -> TlsServer {
        let dir = TestDir::new(&format!("tls-{host}"));
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let mut req = Command::new("openssl");
        req.args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args([
            "-subj",
            &format!("/CN={host}"),
            "-addext",
            &format!("subjectAltName=DNS:{host}"),
        ]);
        let made = run("openssl req", req, Duration::from_secs(30));
        assert!(made.status.success(), "openssl req failed: {}", made.stderr);

        let mut failures = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut command = Command::new("openssl");
            command
                .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-www"])
                .arg("-cert")
                .arg(&cert)
                .arg("-key")
                .arg(&key);
            let mut process = Process::spawn("openssl s_server", command);
            // s_server prints ACCEPT once it listens; it exits at once if the port was taken.
            if process
                .wait_for_stdout(Duration::from_secs(10), |line| line.contains("ACCEPT"))
                .is_some()
                && process.try_exit().is_none()
            {
                return TlsServer {
                    port,
                    cert,
                    process,
                    _dir: dir,
                };
            }
            process.kill();
            failures.push_str(&process.stderr_tail(10));
        }
        panic!("openssl s_server did not start\n{failures}");
    }

    pub fn diagnostics(&self) -> String {
        self.process.stderr_tail(20)
    }
}
