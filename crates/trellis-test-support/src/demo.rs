//! `trellis demo-app` processes.

use std::net::SocketAddr;

use serde_json::Value;

use crate::dir::TestDir;
use crate::process::Process;
use crate::proxy::{STARTUP, Trellis, wait_for_ready_file};

const LOOPBACK_ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// How to start a demo app.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    name: String,
    version: Option<String>,
    /// Where to listen: HTTP, and the TCP echo when `tcp` is set.
    http: SocketAddr,
    tcp: Option<SocketAddr>,
    args: Vec<String>,
}

/// A running `trellis demo-app`: HTTP/1.1, h2c and gRPC (`trellis.demo.v1.Demo`) on `http`,
/// and, when asked for, the server-first TCP echo on `tcp` (banner `trellis-demo NAME tcp\r\n`,
/// then echo). `GET /` on `http` reports the call tree of its `--backend`s.
#[derive(Debug)]
pub struct DemoApp {
    pub http: SocketAddr,
    pub tcp: Option<SocketAddr>,
    process: Process,
    _dir: TestDir,
}

impl DemoOptions {
    pub fn new(name: &str) -> DemoOptions {
        DemoOptions {
            name: name.to_owned(),
            version: None,
            http: LOOPBACK_ANY_PORT,
            tcp: None,
            args: Vec::new(),
        }
    }

    pub fn version(mut self, version: &str) -> DemoOptions {
        self.version = Some(version.to_owned());
        self
    }

    /// Also serve the TCP echo port.
    pub fn tcp(mut self) -> DemoOptions {
        self.tcp = Some(LOOPBACK_ANY_PORT);
        self
    }

    /// Listen for HTTP on `addr` instead of 127.0.0.1:0 (a pod's app listens on all its
    /// addresses, on a fixed port).
    pub fn http_addr(mut self, addr: SocketAddr) -> DemoOptions {
        self.http = addr;
        self
    }

    /// Serve the TCP echo port on `addr`.
    pub fn tcp_addr(mut self, addr: SocketAddr) -> DemoOptions {
        self.tcp = Some(addr);
        self
    }

    /// A backend that `GET /` calls: `http://HOST[:PORT]/PATH`, `grpc://HOST:PORT` or
    /// `tcp://HOST:PORT` (repeatable).
    pub fn backend(self, url: &str) -> DemoOptions {
        self.arg("--backend").arg(url)
    }

    /// The explicit HTTP proxy for backend calls (`http://HOST:PORT` or `HOST:PORT`), e.g.
    /// [`crate::Chain::proxy_url`].
    pub fn proxy(self, proxy: &str) -> DemoOptions {
        self.arg("--proxy").arg(proxy)
    }

    /// Time allowed for each backend call (`500ms`, `2s`).
    pub fn timeout(self, timeout: &str) -> DemoOptions {
        self.arg("--timeout").arg(timeout)
    }

    /// Any other argument.
    pub fn arg(mut self, arg: &str) -> DemoOptions {
        self.args.push(arg.to_owned());
        self
    }

    /// Starts the app (on 127.0.0.1:0 unless told otherwise) and waits for its ready file.
    pub fn start(self, trellis: &Trellis) -> DemoApp {
        let label = format!("demo-{}", self.name);
        let dir = TestDir::new(&label);
        let ready = dir.join("ready.json");
        let mut command = trellis.command();
        command
            .args(["demo-app", "--name", &self.name, "--http"])
            .arg(self.http.to_string())
            .arg("--ready-file")
            .arg(&ready);
        if let Some(version) = &self.version {
            command.args(["--version", version]);
        }
        if let Some(tcp) = self.tcp {
            command.arg("--tcp").arg(tcp.to_string());
        }
        command.args(&self.args);
        let mut process = Process::spawn(&label, command);
        let json = wait_for_ready_file(&mut process, &ready, STARTUP).unwrap_or_else(|why| {
            panic!("{label} did not start: {why}\n{}", process.stderr_tail(40))
        });
        let addr =
            |key: &str| match json.get(key) {
                Some(Value::String(s)) => Some(s.parse::<SocketAddr>().unwrap_or_else(|e| {
                    panic!("{label}: bad {key} address {s:?} in ready file: {e}")
                })),
                _ => None,
            };
        let http =
            addr("http").unwrap_or_else(|| panic!("{label}: no http address in ready file {json}"));
        let tcp = addr("tcp");
        assert!(
            self.tcp.is_none() || tcp.is_some(),
            "{label}: asked for --tcp but the ready file has no tcp address: {json}"
        );
        DemoApp {
            http,
            tcp,
            process,
            _dir: dir,
        }
    }
}

impl DemoApp {
    /// Starts `trellis demo-app --name NAME` with an HTTP port only.
    pub fn start(trellis: &Trellis, name: &str) -> DemoApp {
        DemoOptions::new(name).start(trellis)
    }

    /// Options for a demo app with more than an HTTP port (`.tcp()`, `.version()`,
    /// `.backend()`, `.proxy()`, `.arg()`).
    pub fn options(name: &str) -> DemoOptions {
        DemoOptions::new(name)
    }

    pub fn http_port(&self) -> u16 {
        self.http.port()
    }

    /// The TCP echo port; panics when the app was started without one.
    pub fn tcp_port(&self) -> u16 {
        self.tcp.expect("demo app started without --tcp").port()
    }

    pub fn process(&self) -> &Process {
        &self.process
    }

    pub fn diagnostics(&self) -> String {
        self.process.stderr_tail(20)
    }
}
