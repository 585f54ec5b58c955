//! Decoding the YAML tree into a [`ProxyConfig`], field by field, collecting every error.
//!
//! Each type has a decoder that knows its fields, so one bad value does not stop the others
//! from being read: a field that is missing or wrong is reported with its path and line, gets
//! a placeholder, and its path is remembered as failed so the semantic checks skip it (a
//! placeholder `0` port must not also be reported as "port 0").
//!
//! The machinery (fields, lists, scalars) is the resources' decoder's too, in
//! [`crate::decoder`]; here are the proxy config's types and its messages.
//!
//! The field lists and defaults mirror the serde attributes in `proxy.rs`; the tests in
//! `validate/tests.rs` fail if the two drift apart.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::quoted;
use super::yaml::{Node, Value};
use crate::decoder::{self, Dialect, join};
use crate::proxy::{self, App, AppPort, Endpoint, Identity, Ingress, Listeners, MtlsMode};
use crate::proxy::{OutboundPolicy, Protocol};
use crate::proxy::{ProxyConfig, Service, ServicePort, Timeouts};

pub(super) mod authorization;
pub(super) mod policy;
pub(super) mod route;

pub(super) const ROOT_FIELDS: &[&str] = &[
    "node",
    "listeners",
    "app",
    "services",
    "outbound_policy",
    "timeouts",
    "identity",
    "mtls",
    "authorization",
    "control",
];
pub(super) const IDENTITY_FIELDS: &[&str] = &[
    "id",
    "bundle",
    "cert",
    "key",
    "ca",
    "join_token_file",
    "cert_ttl",
];
pub(super) const NODE_FIELDS: &[&str] = &["name", "namespace", "workload"];
pub(super) const LISTENER_FIELDS: &[&str] = &[
    "admin",
    "outbound",
    "outbound_transparent",
    "inbound",
    "mesh",
    "ingress",
];
pub(super) const INGRESS_FIELDS: &[&str] = &["address", "to"];
pub(super) const APP_FIELDS: &[&str] = &["address", "ports"];
pub(super) const APP_PORT_FIELDS: &[&str] = &["port", "protocol", "mtls"];
pub(super) const SERVICE_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "hostnames",
    "addresses",
    "ports",
    "endpoints",
    "timeouts",
    "routes",
    "policy",
];
pub(super) const SERVICE_PORT_FIELDS: &[&str] = &["name", "port", "protocol", "target_port"];
pub(super) const ENDPOINT_FIELDS: &[&str] = &[
    "address",
    "ports",
    "mesh",
    "workload",
    "namespace",
    "identity",
];
pub(super) const TIMEOUT_FIELDS: &[&str] =
    &["detect", "header", "connect", "request", "idle", "drain"];

pub(super) const PROTOCOLS: &[(&str, Protocol)] = &[
    ("http", Protocol::Http),
    ("http2", Protocol::Http2),
    ("grpc", Protocol::Grpc),
    ("tcp", Protocol::Tcp),
    ("tls", Protocol::Tls),
];
pub(super) const MTLS_MODES: &[(&str, MtlsMode)] = &[
    ("strict", MtlsMode::Strict),
    ("permissive", MtlsMode::Permissive),
    ("disable", MtlsMode::Disable),
];
pub(super) const OUTBOUND_POLICIES: &[(&str, OutboundPolicy)] = &[
    ("allow_any", OutboundPolicy::AllowAny),
    ("registry_only", OutboundPolicy::RegistryOnly),
];

/// The namespace of a node or service that names none (serde: `default_namespace`).
pub(super) const DEFAULT_NAMESPACE: &str = "default";

/// The proxy config's decoder.
pub(super) type Decoder = decoder::Decoder<ConfigFile>;

/// The messages of the proxy config's decoder.
#[derive(Debug, Default)]
pub(super) struct ConfigFile;

impl Dialect for ConfigFile {
    const SOCKET_ADDR_HINT: &'static str = "write 127.0.0.1:15000 or [::1]:15000";
    const STATUS_EXAMPLE: &'static str = "\"503\"";

    fn not_a_mapping(node: &Node, path: &str, allowed: &[&str]) -> String {
        if path.is_empty() && node.is_null() {
            return "the file is empty; a config needs at least node.name".to_string();
        }
        let what = if path.is_empty() {
            "the file"
        } else {
            "this field"
        };
        format!(
            "expected a mapping, found {} ({what} has fields {})",
            node.describe(),
            allowed.join(", ")
        )
    }
}

/// Decode the whole document: the config, possibly with placeholders, and the decoder with
/// the problems it found and what the semantic checks need to know about where each value
/// came from.
pub(super) fn decode(root: &Node) -> (ProxyConfig, Decoder) {
    let mut d = Decoder::default();
    let config = d.proxy_config(root);
    (config, d)
}

impl Decoder {
    fn proxy_config(&mut self, node: &Node) -> ProxyConfig {
        let f = self.fields(node, "", ROOT_FIELDS);
        ProxyConfig {
            node: self
                .required(&f, "node", |d, n, p| Some(d.node(n, p)))
                .unwrap_or_else(|| proxy::Node {
                    name: String::new(),
                    namespace: DEFAULT_NAMESPACE.to_string(),
                    workload: None,
                }),
            listeners: self
                .optional(&f, "listeners", |d, n, p| Some(d.listeners(n, p)))
                .unwrap_or_default(),
            app: self
                .optional(&f, "app", |d, n, p| Some(d.app(n, p)))
                .unwrap_or_default(),
            services: self
                .optional(&f, "services", |d, n, p| d.list(n, p, Self::service))
                .unwrap_or_default(),
            outbound_policy: self
                .optional(&f, "outbound_policy", |d, n, p| {
                    d.choice(n, p, "an outbound policy", OUTBOUND_POLICIES)
                })
                .unwrap_or_default(),
            timeouts: self
                .optional(&f, "timeouts", |d, n, p| Some(d.timeouts(n, p)))
                .unwrap_or_default(),
            identity: self.optional(&f, "identity", |d, n, p| Some(d.identity(n, p))),
            mtls: self
                .optional(&f, "mtls", Self::mtls_mode)
                .unwrap_or_default(),
            authorization: self
                .optional(&f, "authorization", |d, n, p| Some(d.authorization(n, p)))
                .unwrap_or_default(),
            control: self.optional(&f, "control", Self::socket_addr),
        }
    }

    fn identity(&mut self, node: &Node, path: &str) -> Identity {
        let f = self.fields(node, path, IDENTITY_FIELDS);
        Identity {
            id: self.required(&f, "id", Self::string).unwrap_or_default(),
            bundle: self
                .required(&f, "bundle", Self::string)
                .unwrap_or_default()
                .into(),
            cert: self.optional(&f, "cert", Self::string).map(Into::into),
            key: self.optional(&f, "key", Self::string).map(Into::into),
            ca: self.optional(&f, "ca", Self::socket_addr),
            join_token_file: self
                .optional(&f, "join_token_file", Self::string)
                .map(Into::into),
            cert_ttl: self
                .optional(&f, "cert_ttl", Self::duration)
                .unwrap_or(Duration::from_secs(24 * 3600)),
        }
    }

    fn mtls_mode(&mut self, node: &Node, path: &str) -> Option<MtlsMode> {
        self.choice(node, path, "an mTLS mode", MTLS_MODES)
    }

    fn node(&mut self, node: &Node, path: &str) -> proxy::Node {
        let f = self.fields(node, path, NODE_FIELDS);
        proxy::Node {
            name: self.required(&f, "name", Self::string).unwrap_or_default(),
            namespace: self
                .optional(&f, "namespace", Self::string)
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            workload: self.optional(&f, "workload", Self::string),
        }
    }

    fn listeners(&mut self, node: &Node, path: &str) -> Listeners {
        let f = self.fields(node, path, LISTENER_FIELDS);
        Listeners {
            admin: self
                .optional(&f, "admin", Self::socket_addr)
                .unwrap_or(Listeners::default().admin),
            outbound: self.optional(&f, "outbound", Self::socket_addr),
            outbound_transparent: self.optional(&f, "outbound_transparent", Self::socket_addr),
            inbound: self.optional(&f, "inbound", Self::socket_addr),
            mesh: self.optional(&f, "mesh", Self::socket_addr),
            ingress: self
                .optional(&f, "ingress", |d, n, p| d.list(n, p, Self::ingress))
                .unwrap_or_default(),
        }
    }

    fn ingress(&mut self, node: &Node, path: &str) -> Ingress {
        let f = self.fields(node, path, INGRESS_FIELDS);
        Ingress {
            address: self
                .required(&f, "address", Self::socket_addr)
                .unwrap_or(Listeners::default().admin),
            to: self.required(&f, "to", Self::authority).unwrap_or_default(),
        }
    }

    /// `host:port`.
    fn authority(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = self.scalar(node, path, "host:port")?;
        let ok = text.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            self.fail(
                node.mark,
                path,
                format!(
                    "{} is not host:port (write frontend.shop:8080)",
                    node.describe()
                ),
            );
            return None;
        }
        Some(text.to_string())
    }

    fn app(&mut self, node: &Node, path: &str) -> App {
        let f = self.fields(node, path, APP_FIELDS);
        App {
            address: self
                .optional(&f, "address", Self::ip)
                .unwrap_or(App::default().address),
            ports: self
                .optional(&f, "ports", |d, n, p| d.list(n, p, Self::app_port))
                .unwrap_or_default(),
        }
    }

    fn app_port(&mut self, node: &Node, path: &str) -> AppPort {
        let f = self.fields(node, path, APP_PORT_FIELDS);
        AppPort {
            port: self.required(&f, "port", Self::port).unwrap_or(0),
            protocol: self
                .required(&f, "protocol", Self::protocol)
                .unwrap_or(Protocol::Tcp),
            mtls: self.optional(&f, "mtls", Self::mtls_mode),
        }
    }

    fn service(&mut self, node: &Node, path: &str) -> Service {
        let f = self.fields(node, path, SERVICE_FIELDS);
        let string = |d: &mut Self, n: &Node, p: &str| d.string(n, p).unwrap_or_default();
        let ip =
            |d: &mut Self, n: &Node, p: &str| d.ip(n, p).unwrap_or(Ipv4Addr::UNSPECIFIED.into());
        Service {
            name: self.required(&f, "name", Self::string).unwrap_or_default(),
            namespace: self
                .optional(&f, "namespace", Self::string)
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            hostnames: self
                .optional(&f, "hostnames", |d, n, p| d.list(n, p, string))
                .unwrap_or_default(),
            addresses: self
                .optional(&f, "addresses", |d, n, p| d.list(n, p, ip))
                .unwrap_or_default(),
            ports: self
                .required(&f, "ports", |d, n, p| d.list(n, p, Self::service_port))
                .unwrap_or_default(),
            endpoints: self
                .optional(&f, "endpoints", |d, n, p| d.list(n, p, Self::endpoint))
                .unwrap_or_default(),
            timeouts: self.optional(&f, "timeouts", |d, n, p| Some(d.timeouts(n, p))),
            routes: self
                .optional(&f, "routes", |d, n, p| d.list(n, p, Self::route))
                .unwrap_or_default(),
            policy: self.optional(&f, "policy", |d, n, p| Some(d.service_policy(n, p))),
        }
    }

    fn service_port(&mut self, node: &Node, path: &str) -> ServicePort {
        let f = self.fields(node, path, SERVICE_PORT_FIELDS);
        ServicePort {
            name: self.required(&f, "name", Self::string).unwrap_or_default(),
            port: self.required(&f, "port", Self::port).unwrap_or(0),
            protocol: self
                .required(&f, "protocol", Self::protocol)
                .unwrap_or(Protocol::Tcp),
            target_port: self.optional(&f, "target_port", Self::port),
        }
    }

    fn endpoint(&mut self, node: &Node, path: &str) -> Endpoint {
        let f = self.fields(node, path, ENDPOINT_FIELDS);
        Endpoint {
            address: self
                .required(&f, "address", Self::ip)
                .unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
            ports: self
                .optional(&f, "ports", Self::port_map)
                .unwrap_or_default(),
            mesh: self.optional(&f, "mesh", Self::socket_addr),
            workload: self.optional(&f, "workload", Self::string),
            namespace: self.optional(&f, "namespace", Self::string),
            identity: self.optional(&f, "identity", Self::string),
        }
    }

    fn timeouts(&mut self, node: &Node, path: &str) -> Timeouts {
        let f = self.fields(node, path, TIMEOUT_FIELDS);
        let default = Timeouts::default();
        let mut get = |name: &str, default: Duration| {
            self.optional(&f, name, Self::duration).unwrap_or(default)
        };
        Timeouts {
            detect: get("detect", default.detect),
            header: get("header", default.header),
            connect: get("connect", default.connect),
            request: get("request", default.request),
            idle: get("idle", default.idle),
            drain: get("drain", default.drain),
        }
    }

    /// An endpoint's `ports`: service port name to port number.
    fn port_map(&mut self, node: &Node, path: &str) -> Option<BTreeMap<String, u16>> {
        let Value::Map(entries) = &node.value else {
            let reason = format!(
                "expected a mapping of service port names to port numbers (e.g. {{ http: 18080 }}), found {}",
                node.describe()
            );
            self.fail(node.mark, path, reason);
            return None;
        };
        let mut ports = BTreeMap::new();
        for (key, value) in entries {
            let name = key.text().unwrap_or_default();
            let p = join(path, name);
            if ports.contains_key(name) {
                let first = self.marks.get(&p).map_or(0, |m| m.line);
                let reason = format!("{} is set twice (first on line {first})", quoted(name));
                self.error(key.mark, &p, reason);
                continue;
            }
            self.marks.insert(p.clone(), value.mark);
            let port = self.port(value, &p).unwrap_or(0);
            ports.insert(name.to_string(), port);
        }
        Some(ports)
    }

    fn protocol(&mut self, node: &Node, path: &str) -> Option<Protocol> {
        self.choice(node, path, "a protocol", PROTOCOLS)
    }
}
