//! A mesh configured by the control plane (config push): a CA, `trellis control` on fixed
//! ports (so that proxies can be started before it, and it can be restarted under them), the
//! directory of resources it compiles and pushes (`--resources`), and proxies whose config
//! file is a bootstrap (`identity.ca` + `control`). A proxy's node name is its Workload's.
//!
//! A pushed proxy is not ready (and writes no ready file) until its first config is applied,
//! so its admin and mesh listeners are on ports chosen here, known before it is ready; so are
//! the control plane's. They are taken below the kernel's ephemeral range ([`fixed_port`]).

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::control::ControlProcess;
use crate::dir::TestDir;
use crate::process::{CommandOutput, Process, run};
use crate::proxy::{ProxyAddrs, STARTUP, Trellis, wait_for_ready_file};
use crate::raw::{RawConn, RawResponse};
use crate::tools::free_port;
use crate::wait::wait_until;

/// The trust domain of every pushed mesh.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The namespace of every workload in it.
pub const NAMESPACE: &str = "test";

/// The CA, the control plane's addresses and the resources directory.
#[derive(Debug)]
pub struct PushMesh {
    trellis: Trellis,
    grpc: SocketAddr,
    admin: SocketAddr,
    starts: AtomicU32,
    dir: TestDir,
}

/// A `trellis proxy` started from a bootstrap; not waited for.
#[derive(Debug)]
pub struct PushedProxy {
    process: Process,
    admin: SocketAddr,
    mesh: Option<SocketAddr>,
    ready_file: PathBuf,
    addrs: Option<ProxyAddrs>,
    _dir: TestDir,
}

/// The SPIFFE ID of service account `sa` in the test namespace.
pub fn spiffe_id(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{sa}")
}

impl PushMesh {
    /// `trellis ca init`, an empty resources directory, and two free ports for the control
    /// plane (not started: see [`PushMesh::start_control`]).
    pub fn new(trellis: &Trellis) -> PushMesh {
        let dir = TestDir::new("push-mesh");
        let mut init = trellis.command();
        init.args(["ca", "init", "--dir"])
            .arg(dir.join("ca"))
            .args(["--trust-domain", TRUST_DOMAIN]);
        let out = run("trellis ca init", init, Duration::from_secs(30));
        assert!(out.status.success(), "ca init failed: {}", out.stderr);
        std::fs::create_dir_all(dir.join("resources")).expect("create the resources dir");
        PushMesh {
            trellis: trellis.clone(),
            grpc: SocketAddr::from(([127, 0, 0, 1], fixed_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], fixed_port())),
            starts: AtomicU32::new(0),
            dir,
        }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
    }

    pub fn resources_dir(&self) -> PathBuf {
        self.dir.join("resources")
    }

    /// The control plane's gRPC address (the CA and discovery).
    pub fn grpc(&self) -> SocketAddr {
        self.grpc
    }

    /// The control plane's admin address.
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// Starts `trellis control --resources DIR` on this mesh's ports and waits for its
    /// ready file. Call again after the previous one is gone to restart it.
    pub fn start_control(&self) -> Process {
        let n = self.starts.fetch_add(1, Ordering::Relaxed);
        let ready = self.dir.join(&format!("control-ready-{n}.json"));
        let mut command = self.trellis.command();
        command
            .arg("control")
            .arg("--ca-dir")
            .arg(self.ca_dir())
            .arg("--listen")
            .arg(self.grpc.to_string())
            .arg("--admin")
            .arg(self.admin.to_string())
            .arg("--resources")
            .arg(self.resources_dir())
            .arg("--ready-file")
            .arg(&ready);
        let mut process = Process::spawn(&format!("control-{n}"), command);
        if let Err(why) = wait_for_ready_file(&mut process, &ready, STARTUP) {
            panic!(
                "trellis control did not start: {why}\n{}",
                process.stderr_tail(40)
            );
        }
        process
    }

    /// Writes `yaml` as `name` in the resources directory, whole (temporary file, then
    /// rename).
    pub fn write_resources(&self, name: &str, yaml: &str) {
        let tmp = self.dir.write(&format!("{name}.tmp"), yaml);
        let path = self.resources_dir().join(name);
        std::fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("cannot move {} to {}: {e}", tmp.display(), path.display()));
    }

    /// Starts proxy `node` (service account `sa`) from a bootstrap naming this mesh's control
    /// plane, with an admin listener and `listeners` (YAML flow entries, e.g.
    /// `outbound: 127.0.0.1:0`); `mesh: true` adds a mesh listener on a port chosen here.
    pub fn start_proxy(&self, node: &str, sa: &str, mesh: bool, listeners: &str) -> PushedProxy {
        let dir = TestDir::new(node);
        let token = ControlProcess::token(&self.trellis, &self.ca_dir(), &spiffe_id(sa), "10m");
        let token_file = dir.write("token", token);
        let admin = SocketAddr::from(([127, 0, 0, 1], fixed_port()));
        let mesh = mesh.then(|| SocketAddr::from(([127, 0, 0, 1], fixed_port())));
        let mut all = vec![format!("admin: {admin}")];
        all.extend(mesh.map(|m| format!("mesh: {m}")));
        if !listeners.is_empty() {
            all.push(listeners.to_owned());
        }
        let bootstrap = format!(
            "node: {{ name: {node}, namespace: {NAMESPACE} }}
listeners: {{ {listeners} }}
identity:
  id: {id}
  bundle: {bundle}
  ca: {grpc}
  join_token_file: {token}
control: {grpc}
",
            listeners = all.join(", "),
            id = spiffe_id(sa),
            bundle = self.ca_dir().join("root-cert.pem").display(),
            grpc = self.grpc,
            token = token_file.display(),
        );
        let config = dir.write("bootstrap.yaml", &bootstrap);
        let ready_file = dir.join("ready.json");
        let mut command = self.trellis.command();
        command
            .arg("proxy")
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready_file);
        PushedProxy {
            process: Process::spawn(node, command),
            admin,
            mesh,
            ready_file,
            addrs: None,
            _dir: dir,
        }
    }

    /// The control plane's `/debug/proxies`, or None when it does not answer.
    pub fn proxies(&self) -> Option<Value> {
        let response = try_get(self.admin, "/debug/proxies")?;
        (response.status == 200).then(|| response.json())
    }

    /// `/debug/proxies` once `ready` holds for it, or None after `timeout`.
    pub fn proxies_when(&self, timeout: Duration, ready: impl Fn(&Value) -> bool) -> Option<Value> {
        wait_until(timeout, || self.proxies().filter(|json| ready(json)))
    }

    /// Runs `trellis proxy-status --control-admin ADDR` (with `args`).
    pub fn proxy_status(&self, args: &[&str]) -> CommandOutput {
        let mut command = self.trellis.command();
        command
            .args(["proxy-status", "--control-admin"])
            .arg(self.admin.to_string())
            .args(args);
        run("trellis proxy-status", command, Duration::from_secs(30))
    }

    /// Runs `trellis proxy-config NAME --control-admin ADDR`.
    pub fn proxy_config(&self, name: &str) -> CommandOutput {
        let mut command = self.trellis.command();
        command
            .args(["proxy-config", name, "--control-admin"])
            .arg(self.admin.to_string());
        run("trellis proxy-config", command, Duration::from_secs(30))
    }
}

/// The row of proxy `name` in a `/debug/proxies` answer (Null when absent).
pub fn proxy_row<'a>(json: &'a Value, name: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    json["proxies"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name))
        .unwrap_or(&NULL)
}

impl PushedProxy {
    pub fn name(&self) -> &str {
        self.process.name()
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The mesh listener (chosen before start); panics when the proxy has none.
    pub fn mesh(&self) -> SocketAddr {
        self.mesh
            .unwrap_or_else(|| panic!("proxy {} has no mesh listener", self.name()))
    }

    /// The status `/ready` answers now, or None when the admin port does not answer (yet).
    pub fn ready_status(&self) -> Option<u16> {
        try_get(self.admin, "/ready").map(|r| r.status)
    }

    /// Waits (up to `timeout`) for the ready file: the proxy has its certificate and its first
    /// config. Panics with its stderr if it exits or is not ready in time.
    pub fn wait_ready(&mut self, timeout: Duration) -> &ProxyAddrs {
        if self.addrs.is_none() {
            let json = wait_for_ready_file(&mut self.process, &self.ready_file, timeout)
                .unwrap_or_else(|why| {
                    panic!(
                        "proxy {} not ready: {why}\n{}",
                        self.process.name(),
                        self.process.stderr_tail(60)
                    )
                });
            let addrs = addrs_of(&json).unwrap_or_else(|| panic!("bad ready file {json}"));
            self.addrs = Some(addrs);
        }
        self.addrs.as_ref().expect("set above")
    }

    /// The explicit outbound listener, once ready; panics otherwise.
    pub fn outbound(&self) -> SocketAddr {
        self.addrs
            .as_ref()
            .and_then(|a| a.outbound)
            .unwrap_or_else(|| {
                panic!(
                    "proxy {} is not ready or has no outbound listener",
                    self.name()
                )
            })
    }

    /// `http://127.0.0.1:PORT` of the outbound listener, for `curl -x`.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.outbound())
    }

    /// `/config_dump`: `{ "bound", "applied_version", "config" }`.
    pub fn config_dump(&self) -> Value {
        let response = try_get(self.admin, "/config_dump")
            .unwrap_or_else(|| panic!("proxy {} admin does not answer", self.name()));
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()
    }

    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    pub fn diagnostics(&self) -> String {
        self.process.stderr_tail(40)
    }

    pub fn process(&self) -> &Process {
        &self.process
    }
}

impl Drop for PushedProxy {
    fn drop(&mut self) {
        self.process.kill();
        if !std::thread::panicking() && self.process.stderr().contains("panicked at") {
            panic!(
                "proxy {} panicked during the test\n{}",
                self.process.name(),
                self.process.stderr_tail(80)
            );
        }
    }
}

/// A port that is free now, for a listener that must be known before its process can report
/// it. Taken below the kernel's ephemeral range (`ip_local_port_range`, 32768-60999 by
/// default), so that neither a parallel test's port-0 listener nor an outgoing connection
/// (including a proxy retrying a control plane that is not up yet) takes it meanwhile; falls
/// back to [`free_port`] when that range starts too low to leave room.
pub fn fixed_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const FLOOR: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if ephemeral_low < FLOOR + 2_000 {
        return free_port();
    }
    let span = ephemeral_low - FLOOR;
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0..1_000u32 {
        let mut h = random.build_hasher();
        h.write_u32(attempt);
        let port = u16::try_from(FLOOR + (h.finish() % u64::from(span)) as u32).unwrap_or(0);
        if port != 0 && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    free_port()
}

/// The addresses in a proxy's ready file.
fn addrs_of(json: &Value) -> Option<ProxyAddrs> {
    let addr = |key: &str| json[key].as_str().and_then(|s| s.parse().ok());
    Some(ProxyAddrs {
        admin: addr("admin")?,
        outbound: addr("outbound"),
        outbound_transparent: addr("outbound_transparent"),
        inbound: addr("inbound"),
        mesh: addr("mesh"),
    })
}

/// GET `path`, or None when nothing accepts the connection.
fn try_get(addr: SocketAddr, path: &str) -> Option<RawResponse> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    let mut conn = RawConn::connect(addr);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.send(request.as_bytes()).ok()?;
    conn.read_response(Duration::from_secs(10)).ok()
}
