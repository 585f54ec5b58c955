//! Reading a [`ProxyConfig`] from YAML and validating it, reporting every problem at once.
//!
//! Three steps, each reporting with file, line, column, field path and reason:
//! 1. [`yaml`] parses the text into a tree that remembers where each node was written. A syntax
//!    error (bad indentation, an unclosed bracket) stops here: it is the one error reported.
//! 2. [`decode`] reads the tree into a `ProxyConfig` field by field, so every unknown field,
//!    missing field and invalid value is reported, not just the first.
//! 3. The checks in this file look at the config as a whole: names unique, ports in range,
//!    endpoints that name real ports, listeners that do not collide, sane timeouts; and in
//!    [`route`], routes whose backends are services of the config.
//!
//! The config is returned only when all three found nothing.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::decoder::Problem;
use crate::proxy::{App, Identity, Listeners, MtlsMode, ProxyConfig, Service, Timeouts};
use crate::resources::names::quoted;
use decode::Decoder;

mod decode;
mod route;
#[cfg(test)]
mod tests;
pub(crate) mod yaml;

/// Larger documents are refused before parsing: a config is untrusted input.
const MAX_CONFIG_BYTES: usize = 4 << 20;

/// Protocol detection holds back every first byte of a server-first protocol for this long.
const MAX_DETECT: Duration = Duration::from_secs(10);

/// One problem in a config file. Displays as `FILE:LINE:COLUMN: FIELD: REASON`, leaving out
/// what is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name given to [`ProxyConfig::from_yaml`].
    pub file: String,
    /// 1-based line of the offending node.
    pub line: Option<usize>,
    /// 1-based column of the offending node.
    pub column: Option<usize>,
    /// Path of the offending field, e.g. `services[1].ports[0].protocol`; empty for the file
    /// as a whole.
    pub field: String,
    /// What is wrong, for the operator.
    pub reason: String,
}

/// Every problem found in a config file, in the order they appear in it. Displays one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// The whole-config checks, reporting into `problems`.
struct Checker<'d> {
    decoded: &'d Decoder,
    problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parse, decode and check a config; `file` names it in the errors.
pub(crate) fn load(file: &str, text: &str) -> Result<ProxyConfig, ConfigErrors> {
    let errors = |mut problems: Vec<Problem>| {
        // Stable: problems on one node keep the order they were found in.
        problems.sort_by_key(|p| p.mark);
        ConfigErrors(problems.into_iter().map(|p| p.into_error(file)).collect())
    };
    if text.len() > MAX_CONFIG_BYTES {
        let reason = format!(
            "the file is {} bytes; a config may be at most {MAX_CONFIG_BYTES} bytes (4 MiB)",
            text.len()
        );
        return Err(errors(vec![Problem {
            mark: None,
            field: String::new(),
            reason,
        }]));
    }
    let root = yaml::parse(text).map_err(|e| {
        let reason = format!("invalid YAML: {}", e.reason);
        errors(vec![Problem {
            mark: Some(e.mark),
            field: String::new(),
            reason,
        }])
    })?;
    let (config, mut decoded) = decode::decode(&root);
    let mut problems = std::mem::take(&mut decoded.problems);
    problems.extend(check(&config, &decoded));
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(errors(problems))
    }
}

impl Problem {
    fn into_error(self, file: &str) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            line: self.mark.map(|m| m.line),
            column: self.mark.map(|m| m.column),
            field: self.field,
            reason: self.reason,
        }
    }
}

/// The checks that need more than one field to decide.
fn check(config: &ProxyConfig, decoded: &Decoder) -> Vec<Problem> {
    let mut c = Checker {
        decoded,
        problems: Vec::new(),
    };
    if config.node.name.trim().is_empty() {
        c.report("node.name", &[], "must not be empty");
    }
    c.dns_label("node.namespace", &config.node.namespace);
    c.listeners(&config.listeners);
    c.app(&config.app, &config.listeners);
    c.services(&config.services);
    c.timeouts("timeouts", &config.timeouts);
    if let Some(identity) = &config.identity {
        c.identity(identity);
    }
    if config.control.is_some() && config.identity.is_none() {
        c.report(
            "control",
            &[],
            "the control plane knows proxies by their certificate: add an `identity` section",
        );
    }
    if config.mtls == MtlsMode::Strict && config.identity.is_none() {
        c.report(
            "mtls",
            &[],
            "strict mTLS needs an identity (add an `identity` section)",
        );
    }
    c.problems
}

impl Checker<'_> {
    /// An identity comes from files (`cert` + `key`) or from the CA (`ca` + `join_token_file`),
    /// never both.
    fn identity(&mut self, id: &Identity) {
        self.spiffe_id("identity.id", &id.id);
        let files = id.cert.is_some() || id.key.is_some();
        if files && id.ca.is_some() {
            self.report(
                "identity.ca",
                &["identity.cert"],
                "give either cert and key (files) or ca (the signing service), not both",
            );
        } else if files && (id.cert.is_none() || id.key.is_none()) {
            let (missing, given) = if id.cert.is_none() {
                ("cert", "key")
            } else {
                ("key", "cert")
            };
            self.report(
                &format!("identity.{given}"),
                &[],
                format!("{given} needs {missing} beside it"),
            );
        } else if !files && id.ca.is_none() {
            self.report(
                "identity",
                &[],
                "no source for the certificate: give cert and key, or ca and join_token_file",
            );
        } else if id.ca.is_some() && id.join_token_file.is_none() {
            self.report(
                "identity.ca",
                &[],
                "the first CSR needs a join token: add join_token_file (mint one with `trellis control token`)",
            );
        }
        if id.cert_ttl < Duration::from_secs(10) {
            self.report("identity.cert_ttl", &[], "must be at least 10s");
        }
    }

    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    fn spiffe_id(&mut self, path: &str, id: &str) {
        if self.decoded.failed(path) {
            return;
        }
        let ok = id.strip_prefix("spiffe://").is_some_and(|rest| {
            let parts: Vec<&str> = rest.split('/').collect();
            matches!(parts.as_slice(), [td, "ns", ns, "sa", sa]
                if !td.is_empty() && !ns.is_empty() && !sa.is_empty())
        });
        if !ok {
            self.report(
                path,
                &[],
                format!(
                    "{} is not a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)",
                    quoted(id)
                ),
            );
        }
    }

    /// No two listeners may bind the same port on overlapping addresses. Port 0 picks a free
    /// port, so it never collides.
    fn listeners(&mut self, l: &Listeners) {
        let all = [
            ("admin", Some(l.admin)),
            ("outbound", l.outbound),
            ("outbound_transparent", l.outbound_transparent),
            ("inbound", l.inbound),
            ("mesh", l.mesh),
        ];
        let ingress = l
            .ingress
            .iter()
            .enumerate()
            .map(|(i, g)| (format!("ingress[{i}]"), Some(g.address)));
        let all = all
            .into_iter()
            .map(|(name, addr)| (name.to_owned(), addr))
            .chain(ingress);
        let mut bound: Vec<(String, SocketAddr)> = Vec::new();
        for (name, addr) in all {
            let Some(addr) = addr.filter(|a| a.port() != 0) else {
                continue;
            };
            let path = if name.starts_with("ingress[") {
                format!("listeners.{name}.address")
            } else {
                format!("listeners.{name}")
            };
            if let Some((other, _)) = bound.iter().find(|(_, b)| overlaps(addr, *b)) {
                let other_path = format!("listeners.{other}");
                let reason = format!(
                    "{addr} is also where the {other} listener binds ({})",
                    self.where_written(&other_path)
                );
                self.report(&path, &[&other_path], reason);
            }
            bound.push((name, addr));
        }
    }

    /// App ports are unique, and none is where one of the proxy's own listeners binds: the
    /// proxy would forward the app's traffic to itself, for ever.
    fn app(&mut self, app: &App, l: &Listeners) {
        let ports = app.ports.iter().enumerate();
        self.unique(
            ports.map(|(i, p)| (format!("app.ports[{i}].port"), p.port)),
            |p| format!("port {p}"),
        );
        let listeners = [
            ("admin", Some(l.admin)),
            ("outbound", l.outbound),
            ("outbound_transparent", l.outbound_transparent),
            ("inbound", l.inbound),
            ("mesh", l.mesh),
        ];
        for (i, port) in app.ports.iter().enumerate() {
            let target = SocketAddr::new(app.address, port.port);
            let own = listeners
                .iter()
                .filter_map(|(name, addr)| Some((*name, (*addr)?)))
                .find(|(_, addr)| addr.port() != 0 && overlaps(target, *addr));
            if let Some((name, addr)) = own {
                let path = format!("app.ports[{i}].port");
                let reason = format!(
                    "the app at {target} would be the proxy's own {name} listener ({addr}): \
                     its traffic would loop back into the proxy"
                );
                self.report(&path, &[], reason);
            }
        }
    }

    fn services(&mut self, services: &[Service]) {
        let names = services.iter().enumerate().map(|(i, s)| {
            (
                format!("services[{i}].name"),
                (s.namespace.as_str(), s.name.as_str()),
            )
        });
        self.unique(names, |(ns, name)| {
            format!("service {} in namespace {}", quoted(name), quoted(ns))
        });
        for (i, service) in services.iter().enumerate() {
            self.service(&format!("services[{i}]"), service);
        }
        self.hostnames(services);
        self.virtual_addresses(services);
        self.routes(services);
    }

    fn service(&mut self, path: &str, s: &Service) {
        if s.name.is_empty() {
            self.report(&format!("{path}.name"), &[], "must not be empty");
        } else {
            self.dns_label(&format!("{path}.name"), &s.name);
        }
        self.dns_label(&format!("{path}.namespace"), &s.namespace);

        // Ports.
        if s.ports.is_empty() {
            self.report(
                &format!("{path}.ports"),
                &[],
                "a service needs at least one port",
            );
        }
        for (j, port) in s.ports.iter().enumerate() {
            if port.name.is_empty() {
                self.report(&format!("{path}.ports[{j}].name"), &[], "must not be empty");
            }
        }
        let ports = s.ports.iter().enumerate();
        self.unique(
            ports
                .clone()
                .map(|(j, p)| (format!("{path}.ports[{j}].name"), p.name.as_str())),
            |n| format!("port name {}", quoted(n)),
        );
        self.unique(
            ports.map(|(j, p)| (format!("{path}.ports[{j}].port"), p.port)),
            |p| format!("port {p}"),
        );

        // Endpoints: one per address, and per-endpoint ports only for ports the service has
        // (when all of its port names are known).
        for (j, e) in s.endpoints.iter().enumerate() {
            if let Some(id) = &e.identity {
                self.spiffe_id(&format!("{path}.endpoints[{j}].identity"), id);
            }
        }
        let endpoints = s.endpoints.iter().enumerate();
        // Local mode puts every workload on one loopback address with its own ports: an
        // endpoint is the address with its ports and its proxy.
        self.unique(
            endpoints.map(|(j, e)| {
                (
                    format!("{path}.endpoints[{j}].address"),
                    (e.address, e.ports.clone(), e.mesh),
                )
            }),
            |(a, _, _)| format!("endpoint {a} (with the same ports and mesh address)"),
        );
        let port_names: Vec<&str> = s.ports.iter().map(|p| p.name.as_str()).collect();
        let names_known = !self.decoded.failed(&format!("{path}.ports"))
            && (0..s.ports.len()).all(|j| !self.decoded.failed(&format!("{path}.ports[{j}].name")));
        for (j, endpoint) in s.endpoints.iter().enumerate().filter(|_| names_known) {
            for name in endpoint.ports.keys() {
                if !port_names.contains(&name.as_str()) {
                    let reason = format!(
                        "{} is not a port of service {} (its ports: {})",
                        quoted(name),
                        quoted(&s.name),
                        port_names.join(", ")
                    );
                    self.report(&format!("{path}.endpoints[{j}].ports.{name}"), &[], reason);
                }
            }
        }

        if let Some(timeouts) = &s.timeouts {
            self.timeouts(&format!("{path}.timeouts"), timeouts);
        }
    }

    /// Extra host names must be DNS names that no other service answers to.
    fn hostnames(&mut self, services: &[Service]) {
        // The names every service answers to without listing them: `name`,
        // `name.namespace`, ... (the same bare name in two namespaces is fine, as in Kubernetes).
        let mut implicit: HashMap<String, usize> = HashMap::new();
        for (i, s) in services.iter().enumerate() {
            for name in s.all_hostnames() {
                if !s.hostnames.contains(&name) {
                    implicit.entry(name).or_insert(i);
                }
            }
        }
        let mut explicit: HashMap<&str, (usize, String)> = HashMap::new();
        for (i, s) in services.iter().enumerate() {
            for (j, host) in s.hostnames.iter().enumerate() {
                let path = format!("services[{i}].hostnames[{j}]");
                if let Err(reason) = dns_name(host) {
                    self.report(&path, &[], reason);
                    continue;
                }
                if let Some(&other) = implicit.get(host.as_str()).filter(|&&other| other != i) {
                    let other_path = format!("services[{other}].name");
                    let reason = format!(
                        "host name {} already names service {} ({})",
                        quoted(host),
                        qualified(&services[other]),
                        self.where_written(&other_path)
                    );
                    self.report(&path, &[&other_path], reason);
                } else if let Some((other, other_path)) = explicit.get(host.as_str()) {
                    let reason = if *other == i {
                        format!(
                            "host name {} is listed twice (first {})",
                            quoted(host),
                            self.where_written(other_path)
                        )
                    } else {
                        format!(
                            "host name {} is also claimed by service {} ({})",
                            quoted(host),
                            qualified(&services[*other]),
                            self.where_written(other_path)
                        )
                    };
                    self.report(&path, &[other_path.as_str()], reason);
                } else {
                    explicit.insert(host, (i, path));
                }
            }
        }
    }

    /// A virtual address and port leads to one service only.
    fn virtual_addresses(&mut self, services: &[Service]) {
        let mut claimed: HashMap<(IpAddr, u16), (usize, String)> = HashMap::new();
        for (i, s) in services.iter().enumerate() {
            let addresses = s.addresses.iter().enumerate();
            self.unique(
                addresses.map(|(k, a)| (format!("services[{i}].addresses[{k}]"), *a)),
                |a| format!("address {a}"),
            );
            for (k, &address) in s.addresses.iter().enumerate() {
                let path = format!("services[{i}].addresses[{k}]");
                for (j, port) in s.ports.iter().enumerate() {
                    let port_path = format!("services[{i}].ports[{j}].port");
                    if self.decoded.failed(&port_path) {
                        continue;
                    }
                    match claimed.get(&(address, port.port)) {
                        Some((other, other_path)) if *other != i => {
                            let reason = format!(
                                "{} is also claimed by service {} ({})",
                                SocketAddr::new(address, port.port),
                                qualified(&services[*other]),
                                self.where_written(other_path)
                            );
                            self.report(&path, &[other_path.as_str(), &port_path], reason);
                        }
                        Some(_) => {}
                        None => {
                            claimed.insert((address, port.port), (i, path.clone()));
                        }
                    }
                }
            }
        }
    }

    fn timeouts(&mut self, path: &str, t: &Timeouts) {
        if t.detect.is_zero() || t.detect > MAX_DETECT {
            let reason = format!(
                "{} is out of range: must be more than 0s and at most 10s (server-first protocols \
                 wait this long for their first byte)",
                crate::format_duration(t.detect)
            );
            self.report(&format!("{path}.detect"), &[], reason);
        }
        if t.header.is_zero() {
            self.report(&format!("{path}.header"), &[], "must be more than 0s");
        }
    }

    // Helpers.

    /// Report each value that an earlier item of the same list already has.
    fn unique<K: Eq + Hash>(
        &mut self,
        items: impl Iterator<Item = (String, K)>,
        describe: impl Fn(&K) -> String,
    ) {
        let mut first: HashMap<K, String> = HashMap::new();
        for (path, key) in items {
            if self.decoded.failed(&path) {
                continue;
            }
            match first.get(&key) {
                Some(first_path) => {
                    let reason = format!(
                        "{} is listed twice (first {})",
                        describe(&key),
                        self.where_written(first_path)
                    );
                    self.report(&path, &[first_path], reason);
                }
                None => {
                    first.insert(key, path);
                }
            }
        }
    }

    fn dns_label(&mut self, path: &str, value: &str) {
        if !is_dns_label(value) {
            let reason = format!(
                "{} is not a DNS label (at most 63 lowercase letters, digits and '-', \
                 starting and ending with a letter or digit)",
                quoted(value)
            );
            self.report(path, &[], reason);
        }
    }

    /// `on line N` for a value that was written, `by default` for one that was not.
    fn where_written(&self, path: &str) -> String {
        match self.decoded.mark(path) {
            Some(mark) if self.decoded.written(path) => format!("on line {}", mark.line),
            _ => "by default".to_string(),
        }
    }

    /// Report a problem at `path`, unless it or a value it was compared with is a placeholder
    /// for a value already reported as invalid.
    fn report(&mut self, path: &str, related: &[&str], reason: impl Into<String>) {
        if self.decoded.failed(path) || related.iter().any(|p| self.decoded.failed(p)) {
            return;
        }
        self.problems.push(Problem {
            mark: self.decoded.mark(path),
            field: path.to_string(),
            reason: reason.into(),
        });
    }
}

/// Whether binding both would collide: same port, and the same address or a wildcard.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn qualified(s: &Service) -> String {
    quoted(&format!("{}/{}", s.namespace, s.name))
}

/// An RFC 1123 label: what Kubernetes requires of service and namespace names.
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns_name(s: &str) -> Result<(), String> {
    if s.len() <= 253 && s.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(format!(
            "{} is not a DNS name (dot-separated labels of lowercase letters, digits and '-')",
            quoted(s)
        ))
    }
}
