//! The topology most tests use: client → proxy A (explicit outbound proxy) → proxy B (mesh
//! listener, HTTP/2 between the proxies) → app. Apps start first; then B, whose `app.ports`
//! lists every app port; then A, whose services point at those ports through B's mesh address.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::proxy::{ProxyProcess, Trellis};
use crate::tools::free_port;

/// Namespace of every workload and service in a chain.
pub const NAMESPACE: &str = "test";

/// Where a service's endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// An app port behind proxy B (the normal case).
    Meshed(u16),
    /// A port reached directly from A, outside the mesh (no `mesh:`).
    Direct(u16),
    /// An app port behind a peer proxy that is not running (its mesh address refuses).
    DeadPeer(u16),
}

/// A service proxy A may reach: `name.test`, one port.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub port: u16,
    /// `http`, `http2`, `grpc`, `tcp` or `tls`.
    pub protocol: String,
    pub target: Target,
    pub hostnames: Vec<String>,
}

/// Builds a [`Chain`].
#[derive(Debug, Clone)]
pub struct ChainBuilder {
    trellis: Trellis,
    services: Vec<ServiceSpec>,
    a_timeouts: BTreeMap<String, String>,
    b_timeouts: BTreeMap<String, String>,
    outbound_policy: String,
    a_args: Vec<String>,
}

/// Proxy A (workload `client`) and proxy B (workload `web`), both running.
#[derive(Debug)]
pub struct Chain {
    pub a: ProxyProcess,
    pub b: ProxyProcess,
}

impl ServiceSpec {
    pub fn new(name: &str, port: u16, protocol: &str, target: Target) -> ServiceSpec {
        ServiceSpec {
            name: name.to_owned(),
            port,
            protocol: protocol.to_owned(),
            target,
            hostnames: Vec::new(),
        }
    }

    /// An extra host name for the service.
    pub fn hostname(mut self, hostname: &str) -> ServiceSpec {
        self.hostnames.push(hostname.to_owned());
        self
    }

    /// `name.test.svc.cluster.local`, the `destination_service` label.
    pub fn fqdn(&self) -> String {
        format!("{}.{NAMESPACE}.svc.cluster.local", self.name)
    }

    /// The service port's name, also the key of the endpoint's `ports` map.
    fn port_name(&self) -> &str {
        &self.protocol
    }
}

impl ChainBuilder {
    /// Adds a service to proxy A's config (and its app port to B's, when meshed).
    pub fn service(mut self, service: ServiceSpec) -> ChainBuilder {
        self.services.push(service);
        self
    }

    /// Sets one of proxy A's `timeouts` (`"request"`, `"500ms"`).
    pub fn a_timeout(mut self, key: &str, value: &str) -> ChainBuilder {
        self.a_timeouts.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets one of proxy B's `timeouts`.
    pub fn b_timeout(mut self, key: &str, value: &str) -> ChainBuilder {
        self.b_timeouts.insert(key.to_owned(), value.to_owned());
        self
    }

    /// `allow_any` (default) or `registry_only`, for proxy A.
    pub fn outbound_policy(mut self, policy: &str) -> ChainBuilder {
        self.outbound_policy = policy.to_owned();
        self
    }

    /// Extra command-line arguments for proxy A.
    pub fn a_arg(mut self, arg: &str) -> ChainBuilder {
        self.a_args.push(arg.to_owned());
        self
    }

    /// Proxy B's config.
    pub fn b_yaml(&self) -> String {
        let mut yaml = String::new();
        let _ = writeln!(
            yaml,
            "node: {{ name: proxy-b, namespace: {NAMESPACE}, workload: web }}"
        );
        let _ = writeln!(
            yaml,
            "listeners: {{ admin: \"127.0.0.1:0\", mesh: \"127.0.0.1:0\" }}"
        );
        let _ = writeln!(yaml, "app:\n  address: 127.0.0.1\n  ports:");
        let mut seen = Vec::new();
        for service in &self.services {
            if let Target::Meshed(port) = service.target {
                if !seen.contains(&port) {
                    seen.push(port);
                    let _ = writeln!(
                        yaml,
                        "    - {{ port: {port}, protocol: {} }}",
                        service.protocol
                    );
                }
            }
        }
        if seen.is_empty() {
            yaml = yaml.replace("  ports:\n", "  ports: []\n");
        }
        let _ = writeln!(yaml, "timeouts: {}", flow_map(&self.b_timeouts));
        yaml
    }

    /// Proxy A's config, given B's mesh address.
    pub fn a_yaml(&self, b_mesh: &str) -> String {
        let mut yaml = String::new();
        let _ = writeln!(
            yaml,
            "node: {{ name: proxy-a, namespace: {NAMESPACE}, workload: client }}"
        );
        let _ = writeln!(
            yaml,
            "listeners: {{ admin: \"127.0.0.1:0\", outbound: \"127.0.0.1:0\" }}"
        );
        let _ = writeln!(yaml, "services:");
        if self.services.is_empty() {
            yaml = yaml.replace("services:\n", "services: []\n");
        }
        for service in &self.services {
            let (port, mesh) = match service.target {
                Target::Meshed(port) => (port, Some(b_mesh.to_owned())),
                Target::Direct(port) => (port, None),
                Target::DeadPeer(port) => (port, Some(format!("127.0.0.1:{}", free_port()))),
            };
            let _ = writeln!(
                yaml,
                "  - name: {}\n    namespace: {NAMESPACE}",
                service.name
            );
            if !service.hostnames.is_empty() {
                let _ = writeln!(yaml, "    hostnames: [ {} ]", service.hostnames.join(", "));
            }
            let _ = writeln!(
                yaml,
                "    ports: [ {{ name: {}, port: {}, protocol: {} }} ]",
                service.port_name(),
                service.port,
                service.protocol
            );
            let _ = writeln!(yaml, "    endpoints:\n      - address: 127.0.0.1");
            let _ = writeln!(yaml, "        ports: {{ {}: {port} }}", service.port_name());
            if let Some(mesh) = mesh {
                let _ = writeln!(yaml, "        mesh: \"{mesh}\"");
            }
            let _ = writeln!(yaml, "        workload: web");
        }
        let _ = writeln!(yaml, "timeouts: {}", flow_map(&self.a_timeouts));
        let _ = writeln!(yaml, "outbound_policy: {}", self.outbound_policy);
        yaml
    }

    /// Starts B, then A.
    pub fn start(self) -> Chain {
        let b = self.trellis.proxy("proxy-b", &self.b_yaml());
        let a_yaml = self.a_yaml(&b.mesh().to_string());
        let args: Vec<&str> = self.a_args.iter().map(String::as_str).collect();
        let a = ProxyProcess::start_with_args(self.trellis.bin(), "proxy-a", &a_yaml, &args);
        Chain { a, b }
    }
}

impl Chain {
    /// A builder with no services, the default timeouts of the spec
    /// (`detect: 100ms, header: 10s, connect: 1s, request: 15s, idle: 1h, drain: 10s`) and
    /// `allow_any`.
    pub fn builder(trellis: &Trellis) -> ChainBuilder {
        let timeouts: BTreeMap<String, String> = [
            ("detect", "100ms"),
            ("header", "10s"),
            ("connect", "1s"),
            ("request", "15s"),
            ("idle", "1h"),
            ("drain", "10s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        ChainBuilder {
            trellis: trellis.clone(),
            services: Vec::new(),
            a_timeouts: timeouts.clone(),
            b_timeouts: timeouts,
            outbound_policy: "allow_any".to_owned(),
            a_args: Vec::new(),
        }
    }

    /// `http://127.0.0.1:PORT` of A's outbound listener, for `curl -x`.
    pub fn proxy_url(&self) -> String {
        self.a.proxy_url()
    }

    /// Both proxies' stderr and access log tails, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!("{}{}", self.a.diagnostics(), self.b.diagnostics())
    }
}

fn flow_map(map: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{ {} }}", pairs.join(", "))
}
