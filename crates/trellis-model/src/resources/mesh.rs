//! `trellis.dev/v1alpha1` `Service` and `Workload`: what the mesh is made of.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use super::decode::{Decoder, key_path};
use super::names::{dns_label_error, dns_subdomain_error, quoted};
use super::{Labels, Resource, Resources};
use crate::Protocol;
use crate::validate::yaml::Node;

const SERVICE_FIELDS: &[&str] = &["ports", "selector", "addresses", "hostnames", "exportTo"];
const SERVICE_PORT_FIELDS: &[&str] = &["name", "port", "protocol", "targetPort"];
const WORKLOAD_FIELDS: &[&str] = &[
    "labels",
    "serviceAccount",
    "address",
    "ports",
    "proxy",
    "run",
];
const WORKLOAD_RUN_FIELDS: &[&str] = &["command", "env"];
const WORKLOAD_PROXY_FIELDS: &[&str] = &["mesh", "outbound", "admin"];

const PROTOCOLS: &[(&str, Protocol)] = &[
    ("http", Protocol::Http),
    ("http2", Protocol::Http2),
    ("grpc", Protocol::Grpc),
    ("tcp", Protocol::Tcp),
    ("tls", Protocol::Tls),
];

/// A name for a set of workloads (those its selector matches) and the ports they serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub ports: Vec<ServicePortSpec>,
    /// The labels a Workload in the Service's namespace must carry to be one of its endpoints.
    /// Empty: the Service selects nothing (as in Kubernetes).
    pub selector: Labels,
    /// Virtual addresses (what transparent capture sees as the destination).
    pub addresses: Vec<IpAddr>,
    /// Extra host names; `name`, `name.namespace`, `name.namespace.svc` and
    /// `name.namespace.svc.cluster.local` always address the Service.
    pub hostnames: Vec<String>,
    /// The namespaces whose proxies see (and may call) the Service, as Istio's `exportTo`:
    /// `*` every namespace (the default), `.` the Service's own, or namespace names. A proxy
    /// is sent only the Services exported to its namespace, which keeps configs small.
    pub export_to: Vec<String>,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortSpec {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The port the workloads' apps listen on; defaults to `port`. A Workload's own `ports`
    /// entry for this port wins.
    pub target_port: Option<u16>,
}

/// One instance: an app at an address, with its sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSpec {
    /// The workload's labels: `metadata.labels` and `spec.labels` together.
    pub labels: Labels,
    /// The account the workload runs as; its SPIFFE ID is
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccount>`.
    pub service_account: String,
    /// Where the app listens.
    pub address: IpAddr,
    /// The app's port for a Service port, keyed by the port's name or number (`http: 18080`,
    /// `"9080": 18080`). A Service port with no entry goes to its `targetPort` (or `port`).
    pub ports: BTreeMap<String, u16>,
    /// The sidecar's addresses; absent, the workload is outside the mesh (reached directly,
    /// in plaintext). `trellis up` fills this in.
    pub proxy: Option<WorkloadProxy>,
    /// How `trellis up` starts the app (ignored elsewhere).
    pub run: Option<WorkloadRun>,
}

/// A program `trellis up` runs as the workload's app: any command (a `command[0]` of
/// `trellis` is this very binary, e.g. `[trellis, demo-app, ...]`). `$(NAME)` in an argument
/// or value is replaced by that variable: those of `env`, and those `trellis up` sets
/// (`PORT_<NAME>` for each entry of the Workload's `ports`, `HTTP_PROXY`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRun {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// Where a workload's sidecar listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadProxy {
    /// The mesh transport: where peers' proxies connect.
    pub mesh: SocketAddr,
    /// The explicit outbound proxy the app sends its requests to.
    pub outbound: Option<SocketAddr>,
    /// The admin server.
    pub admin: Option<SocketAddr>,
}

impl ServiceSpec {
    /// Whether proxies in `caller` see this Service (which lives in `own`).
    pub fn exported_to(&self, own: &str, caller: &str) -> bool {
        self.export_to
            .iter()
            .any(|e| e == "*" || e == caller || (e == "." && own == caller))
    }

    /// The port with this name, or failing that this number (written as text: `"9080"`).
    pub fn port_by_name_or_number(&self, key: &str) -> Option<&ServicePortSpec> {
        let by_name = self.ports.iter().find(|p| p.name == key);
        by_name.or_else(|| {
            let number: u16 = key.parse().ok()?;
            self.ports.iter().find(|p| p.port == number)
        })
    }
}

impl WorkloadSpec {
    /// The port the app listens on for `port` of a Service that selects this workload.
    pub fn app_port(&self, port: &ServicePortSpec) -> u16 {
        self.port_override(port)
            .or(port.target_port)
            .unwrap_or(port.port)
    }

    /// This workload's own entry for `port`, by name first, then by number.
    pub fn port_override(&self, port: &ServicePortSpec) -> Option<u16> {
        let by_name = self.ports.get(&port.name);
        by_name
            .or_else(|| self.ports.get(&port.port.to_string()))
            .copied()
    }
}

/// Whether every label of a (non-empty) `selector` is among `labels`.
pub(super) fn selects(selector: &Labels, labels: &Labels) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// For each Service, the indexes of the Workloads it selects: in its namespace, carrying every
/// label of its selector. Found through an index of labels, not by trying every pair.
pub(super) fn selections(resources: &Resources) -> Vec<Vec<usize>> {
    let mut index: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
    for (w, workload) in resources.workloads.iter().enumerate() {
        let ns = workload.metadata.namespace.as_str();
        for (key, value) in &workload.spec.labels {
            index.entry((ns, key, value)).or_default().push(w);
        }
    }
    let select = |service: &Resource<ServiceSpec>| -> Vec<usize> {
        let ns = service.metadata.namespace.as_str();
        let selector = &service.spec.selector;
        let candidates = selector.iter().map(|(key, value)| {
            index
                .get(&(ns, key.as_str(), value.as_str()))
                .map_or(&[][..], Vec::as_slice)
        });
        let Some(fewest) = candidates.min_by_key(|c| c.len()) else {
            return Vec::new();
        };
        let workloads = fewest.iter().copied();
        workloads
            .filter(|&w| selects(selector, &resources.workloads[w].spec.labels))
            .collect()
    };
    resources.services.iter().map(select).collect()
}

impl Decoder {
    pub(super) fn service_spec(&mut self, node: &Node, path: &str) -> ServiceSpec {
        let f = self.fields(node, path, SERVICE_FIELDS);
        let ip = |d: &mut Self, n: &Node, p: &str| d.ip(n, p).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let hostname = |d: &mut Self, n: &Node, p: &str| {
            let name = d.string(n, p).unwrap_or_default();
            if let Some(reason) = dns_subdomain_error(&name).filter(|_| !d.failed(p)) {
                d.fail(n.mark, p, reason);
            }
            name
        };
        let spec = ServiceSpec {
            ports: self
                .required(&f, "ports", |d, n, p| {
                    d.nonempty_list(n, p, Self::service_port)
                })
                .unwrap_or_default(),
            selector: self
                .optional(&f, "selector", Self::labels)
                .unwrap_or_default(),
            addresses: self
                .optional(&f, "addresses", |d, n, p| d.list(n, p, ip))
                .unwrap_or_default(),
            hostnames: self
                .optional(&f, "hostnames", |d, n, p| d.list(n, p, hostname))
                .unwrap_or_default(),
            export_to: self
                .optional(&f, "exportTo", |d, n, p| {
                    let names = d.strings(n, p)?;
                    for (i, name) in names.iter().enumerate() {
                        let bad = name != "*" && name != "." && dns_label_error(name).is_some();
                        if bad {
                            let reason =
                                format!("{} is not `*`, `.` or a namespace name", quoted(name));
                            d.report(&format!("{p}[{i}]"), &[], reason);
                        }
                    }
                    Some(names)
                })
                .unwrap_or_else(|| vec!["*".to_string()]),
        };
        let ports = spec.ports.iter().enumerate();
        self.unique(
            ports
                .clone()
                .map(|(i, p)| (format!("{path}.ports[{i}].name"), p.name.as_str())),
            |name| format!("port name {}", quoted(name)),
        );
        self.unique(
            ports.map(|(i, p)| (format!("{path}.ports[{i}].port"), p.port)),
            |port| format!("port {port}"),
        );
        let addresses = spec.addresses.iter().enumerate();
        self.unique(
            addresses.map(|(i, a)| (format!("{path}.addresses[{i}]"), *a)),
            |a| format!("address {a}"),
        );
        let hostnames = spec.hostnames.iter().enumerate();
        self.unique(
            hostnames.map(|(i, h)| (format!("{path}.hostnames[{i}]"), h.as_str())),
            |h| format!("host name {}", quoted(h)),
        );
        spec
    }

    fn service_port(&mut self, node: &Node, path: &str) -> ServicePortSpec {
        let f = self.fields(node, path, SERVICE_PORT_FIELDS);
        let port = ServicePortSpec {
            name: self.required(&f, "name", Self::string).unwrap_or_default(),
            port: self.required(&f, "port", Self::port).unwrap_or(0),
            protocol: self
                .required(&f, "protocol", |d, n, p| {
                    d.choice(n, p, "a protocol", PROTOCOLS)
                })
                .unwrap_or(Protocol::Tcp),
            target_port: self.optional(&f, "targetPort", Self::port),
        };
        if let Some(reason) = dns_label_error(&port.name) {
            self.report(&format!("{path}.name"), &[], reason);
        }
        port
    }

    /// A Workload; `labels` are those of its metadata, merged with `spec.labels`.
    pub(super) fn workload_spec(
        &mut self,
        node: &Node,
        path: &str,
        labels: &Labels,
    ) -> WorkloadSpec {
        let f = self.fields(node, path, WORKLOAD_FIELDS);
        let own = self
            .optional(&f, "labels", Self::labels)
            .unwrap_or_default();
        let mut merged = labels.clone();
        for (key, value) in own {
            match merged.get(&key) {
                Some(other) if *other != value => {
                    let reason = format!(
                        "label {} is {} here but {} in metadata.labels (give it once)",
                        quoted(&key),
                        quoted(&value),
                        quoted(other)
                    );
                    self.report(&key_path(&format!("{path}.labels"), &key), &[], reason);
                }
                _ => {
                    merged.insert(key, value);
                }
            }
        }
        let spec = WorkloadSpec {
            labels: merged,
            service_account: self
                .optional(&f, "serviceAccount", Self::string)
                .unwrap_or_else(|| "default".to_string()),
            address: self
                .required(&f, "address", Self::ip)
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
            ports: self
                .optional(&f, "ports", Self::workload_ports)
                .unwrap_or_default(),
            proxy: self.optional(&f, "proxy", |d, n, p| d.workload_proxy(n, p)),
            run: self.optional(&f, "run", |d, n, p| d.workload_run(n, p)),
        };
        if let Some(reason) = dns_subdomain_error(&spec.service_account) {
            self.report(&format!("{path}.serviceAccount"), &[], reason);
        }
        spec
    }

    fn workload_ports(&mut self, node: &Node, path: &str) -> Option<BTreeMap<String, u16>> {
        let what = "a mapping of Service port names (or numbers) to the app's ports (e.g. { http: 18080 })";
        let entries = self.map(node, path, what, Self::port)?;
        for (key, _) in &entries {
            let is_number = key.parse::<u16>().is_ok_and(|n| n > 0);
            if !is_number && dns_label_error(key).is_some() {
                let reason = format!(
                    "{} is neither a port name (a DNS label) nor a port number",
                    quoted(key)
                );
                self.report(&key_path(path, key), &[], reason);
            }
        }
        Some(entries.into_iter().collect())
    }

    fn workload_run(&mut self, node: &Node, path: &str) -> Option<WorkloadRun> {
        let f = self.fields(node, path, WORKLOAD_RUN_FIELDS);
        let command = self.required(&f, "command", Self::strings)?;
        if command.is_empty() {
            self.report(
                &format!("{path}.command"),
                &[],
                "give the program to run and its arguments",
            );
        }
        let env = self
            .optional(&f, "env", |d, n, p| {
                let what = "a mapping of variable names to values (e.g. { LOG: debug })";
                let entries = d.map(n, p, what, Self::string)?;
                for (key, _) in &entries {
                    let valid = key
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid {
                        let reason = format!("{} is not an environment variable name", quoted(key));
                        d.report(&key_path(p, key), &[], reason);
                    }
                }
                Some(entries.into_iter().collect())
            })
            .unwrap_or_default();
        Some(WorkloadRun { command, env })
    }

    fn workload_proxy(&mut self, node: &Node, path: &str) -> Option<WorkloadProxy> {
        let f = self.fields(node, path, WORKLOAD_PROXY_FIELDS);
        let proxy = WorkloadProxy {
            mesh: self.required(&f, "mesh", Self::socket_addr)?,
            outbound: self.optional(&f, "outbound", Self::socket_addr),
            admin: self.optional(&f, "admin", Self::socket_addr),
        };
        if proxy.mesh.port() == 0 {
            let reason = "peers connect here: give the port the sidecar listens on, not 0";
            self.report(&format!("{path}.mesh"), &[], reason);
        }
        let listeners = [
            ("mesh", Some(proxy.mesh)),
            ("outbound", proxy.outbound),
            ("admin", proxy.admin),
        ];
        let mut bound: Vec<(&str, SocketAddr)> = Vec::new();
        for (name, addr) in listeners {
            let Some(addr) = addr.filter(|a| a.port() != 0) else {
                continue;
            };
            if let Some((other, _)) = bound.iter().find(|(_, b)| *b == addr) {
                let reason = format!("{addr} is also the {other} address");
                let other_path = format!("{path}.{other}");
                self.report(&format!("{path}.{name}"), &[&other_path], reason);
            }
            bound.push((name, addr));
        }
        Some(proxy)
    }

    /// Report each value that an earlier item of the same list already has.
    pub(super) fn unique<K: Eq + std::hash::Hash>(
        &mut self,
        items: impl Iterator<Item = (String, K)>,
        describe: impl Fn(&K) -> String,
    ) {
        let mut first: HashMap<K, String> = HashMap::new();
        for (path, key) in items {
            if self.failed(&path) {
                continue;
            }
            match first.get(&key) {
                Some(first_path) => {
                    let reason = format!(
                        "{} is listed twice (first on {})",
                        describe(&key),
                        self.where_written(first_path)
                    );
                    let first_path = first_path.clone();
                    self.report(&path, &[&first_path], reason);
                }
                None => {
                    first.insert(key, path);
                }
            }
        }
    }
}
