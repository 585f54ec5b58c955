//! Checks across documents: names unique per kind and namespace, references to Services and
//! ports that exist, and no two policies claiming the same thing. Each problem is reported in
//! the document that refers (at the referring field), naming where the other document is.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use super::mesh::selections;
use super::names::quoted;
use super::route::Route;
use super::{Docs, Kind, Metadata, Resource, Resources, ServiceSpec};
use crate::Protocol;

/// Longest list of names a message shows.
const MAX_LISTED: usize = 8;

/// Run every check; problems go to the documents they are about.
pub(super) fn check(resources: &Resources, docs: &mut Docs) {
    let services: HashMap<(&str, &str), usize> = resources
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| ((s.metadata.namespace.as_str(), s.metadata.name.as_str()), i))
        .collect();
    let refs = Refs {
        resources,
        services,
    };
    duplicates(resources, docs);
    host_names(resources, docs);
    workloads(resources, docs);
    refs.traffic_policies(docs);
    refs.routes(docs, Kind::HttpRoute, &resources.http_routes);
    refs.routes(docs, Kind::GrpcRoute, &resources.grpc_routes);
    peer_authentications(resources, docs);
}

/// Services by namespace and name, for references.
struct Refs<'r> {
    resources: &'r Resources,
    services: HashMap<(&'r str, &'r str), usize>,
}

/// No two resources of a kind share a namespace and name.
fn duplicates(resources: &Resources, docs: &mut Docs) {
    for kind in Kind::ALL {
        let metas = metadata_of(resources, kind);
        let mut first: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, meta) in metas.iter().enumerate() {
            if meta.name.is_empty() || docs.failed(kind, i, "metadata.name") {
                continue;
            }
            match first.get(&(meta.namespace.as_str(), meta.name.as_str())) {
                Some(&j) => {
                    let reason = format!(
                        "{} {} is defined twice in namespace {} (first at {})",
                        kind.name(),
                        quoted(&meta.name),
                        quoted(&meta.namespace),
                        docs.at(kind, j, "metadata.name")
                    );
                    docs.of(kind, i).report("metadata.name", &[], reason);
                }
                None => {
                    first.insert((&meta.namespace, &meta.name), i);
                }
            }
        }
    }
}

/// A host name, and a virtual address and port, lead to one Service only.
fn host_names(resources: &Resources, docs: &mut Docs) {
    let mut claimed: HashMap<String, (usize, String)> = HashMap::new();
    // The names every Service answers to without listing them (the same bare name in two
    // namespaces is fine, as in Kubernetes).
    for (i, s) in resources.services.iter().enumerate() {
        let (name, ns) = (&s.metadata.name, &s.metadata.namespace);
        for implicit in [
            format!("{name}.{ns}"),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}.svc.cluster.local"),
        ] {
            claimed
                .entry(implicit)
                .or_insert((i, "metadata.name".to_string()));
        }
    }
    for (i, s) in resources.services.iter().enumerate() {
        for (k, host) in s.spec.hostnames.iter().enumerate() {
            let path = format!("spec.hostnames[{k}]");
            match claimed.get(host.as_str()) {
                Some((other, other_path)) if *other != i => {
                    let reason = format!(
                        "host name {} already leads to Service {} ({})",
                        quoted(host),
                        qualified(&resources.services[*other].metadata),
                        docs.at(Kind::Service, *other, other_path)
                    );
                    docs.of(Kind::Service, i).report(&path, &[], reason);
                }
                Some(_) => {}
                None => {
                    claimed.insert(host.clone(), (i, path));
                }
            }
        }
    }

    let mut addresses: HashMap<(IpAddr, u16), (usize, String)> = HashMap::new();
    for (i, s) in resources.services.iter().enumerate() {
        for (k, &address) in s.spec.addresses.iter().enumerate() {
            if s.spec.addresses[..k].contains(&address) {
                continue; // Listed twice: reported as such.
            }
            let path = format!("spec.addresses[{k}]");
            for port in &s.spec.ports {
                match addresses.get(&(address, port.port)) {
                    Some((other, other_path)) if *other != i => {
                        let reason = format!(
                            "{} already leads to Service {} ({})",
                            SocketAddr::new(address, port.port),
                            qualified(&resources.services[*other].metadata),
                            docs.at(Kind::Service, *other, other_path)
                        );
                        docs.of(Kind::Service, i).report(&path, &[], reason);
                        break;
                    }
                    Some(_) => {}
                    None => {
                        addresses.insert((address, port.port), (i, path.clone()));
                    }
                }
            }
        }
    }
}

/// A workload's port entries name ports of the Services that select it, one app port has one
/// protocol, and no two sidecars share an address.
fn workloads(resources: &Resources, docs: &mut Docs) {
    let mut selected_by: Vec<Vec<usize>> = vec![Vec::new(); resources.workloads.len()];
    for (s, workloads) in selections(resources).into_iter().enumerate() {
        for w in workloads {
            selected_by[w].push(s);
        }
    }
    for (w, workload) in resources.workloads.iter().enumerate() {
        let services: Vec<&Resource<ServiceSpec>> = selected_by[w]
            .iter()
            .map(|&s| &resources.services[s])
            .collect();
        if services.is_empty()
            || selected_by[w]
                .iter()
                .any(|&s| docs.failed(Kind::Service, s, "spec.ports"))
        {
            continue;
        }
        for key in workload.spec.ports.keys() {
            if !services
                .iter()
                .any(|s| s.spec.port_by_name_or_number(key).is_some())
            {
                let ports: Vec<String> = services
                    .iter()
                    .flat_map(|s| {
                        let name = &s.metadata.name;
                        s.spec
                            .ports
                            .iter()
                            .map(move |p| format!("{name} {} {}", p.name, p.port))
                    })
                    .collect();
                let reason = format!(
                    "{} names no port of the Services that select this workload (their ports: {})",
                    quoted(key),
                    some(ports.iter().map(String::as_str))
                );
                let path = super::decode::key_path("spec.ports", key);
                docs.of(Kind::Workload, w).report(&path, &[], reason);
            }
        }
        let mut app_ports: BTreeMap<u16, (Protocol, String)> = BTreeMap::new();
        for s in &services {
            for port in &s.spec.ports {
                let app_port = workload.spec.app_port(port);
                let this = format!("port {} of Service {}", port.name, quoted(&s.metadata.name));
                match app_ports.get(&app_port) {
                    Some((protocol, first)) if *protocol != port.protocol => {
                        let reason = format!(
                            "the app's port {app_port} serves {first} ({}) and {this} ({}): one \
                             port has one protocol (map one of them elsewhere in spec.ports)",
                            protocol_name(*protocol),
                            protocol_name(port.protocol)
                        );
                        docs.of(Kind::Workload, w).report("spec.ports", &[], reason);
                    }
                    Some(_) => {}
                    None => {
                        app_ports.insert(app_port, (port.protocol, this));
                    }
                }
            }
        }
    }

    let mut bound: HashMap<SocketAddr, (usize, &str)> = HashMap::new();
    for (w, workload) in resources.workloads.iter().enumerate() {
        let Some(proxy) = &workload.spec.proxy else {
            continue;
        };
        for (field, addr) in [
            ("mesh", Some(proxy.mesh)),
            ("outbound", proxy.outbound),
            ("admin", proxy.admin),
        ] {
            let Some(addr) = addr.filter(|a| a.port() != 0) else {
                continue;
            };
            let path = format!("spec.proxy.{field}");
            match bound.get(&addr) {
                Some((other, other_field)) if *other != w => {
                    let other_path = format!("spec.proxy.{other_field}");
                    let reason = format!(
                        "{addr} is also the {other_field} address of Workload {} ({})",
                        qualified(&resources.workloads[*other].metadata),
                        docs.at(Kind::Workload, *other, &other_path)
                    );
                    docs.of(Kind::Workload, w).report(&path, &[], reason);
                }
                Some(_) => {}
                None => {
                    bound.insert(addr, (w, field));
                }
            }
        }
    }
}

impl Refs<'_> {
    /// A TrafficPolicy targets a Service that exists, and no other policy targets it.
    fn traffic_policies(&self, docs: &mut Docs) {
        let mut first: HashMap<usize, usize> = HashMap::new();
        for (i, policy) in self.resources.traffic_policies.iter().enumerate() {
            let ns = policy.metadata.namespace.as_str();
            let path = "spec.targetRef.name";
            let Some(s) = self.service(docs, Kind::TrafficPolicy, i, path, ns, &policy.spec.target)
            else {
                continue;
            };
            match first.get(&s) {
                Some(&j) => {
                    let reason = format!(
                        "Service {} already has TrafficPolicy {} ({}); put both in one",
                        quoted(&policy.spec.target),
                        quoted(&self.resources.traffic_policies[j].metadata.name),
                        docs.at(Kind::TrafficPolicy, j, "metadata.name")
                    );
                    docs.of(Kind::TrafficPolicy, i).report(path, &[], reason);
                }
                None => {
                    first.insert(s, i);
                }
            }
        }
    }

    /// GAMMA: a route's parents are Services (with the port given, if any, and a port the
    /// route's protocol can run on); its backends and mirrors are Services in the route's
    /// namespace, with the port given; its extensionRefs name FaultInjections there.
    fn routes<R: Route>(&self, docs: &mut Docs, kind: Kind, routes: &[Resource<R>]) {
        for (i, route) in routes.iter().enumerate() {
            let ns = route.metadata.namespace.as_str();
            for (j, parent) in route.spec.parent_refs().iter().enumerate() {
                let path = format!("spec.parentRefs[{j}]");
                let parent_ns = parent.namespace.as_deref().unwrap_or(ns);
                let name_path = format!("{path}.name");
                let Some(s) = self.service(docs, kind, i, &name_path, parent_ns, &parent.name)
                else {
                    continue;
                };
                let service = &self.resources.services[s];
                if docs.failed(Kind::Service, s, "spec.ports") {
                    continue;
                }
                let ports: Vec<_> = match parent.port {
                    Some(port) => {
                        let found: Vec<_> = service
                            .spec
                            .ports
                            .iter()
                            .filter(|p| p.port == port)
                            .collect();
                        if found.is_empty() {
                            let reason = no_port(service, port);
                            docs.of(kind, i)
                                .report(&format!("{path}.port"), &[], reason);
                            continue;
                        }
                        found
                    }
                    None => service.spec.ports.iter().collect(),
                };
                if ports
                    .iter()
                    .all(|p| matches!(p.protocol, Protocol::Tcp | Protocol::Tls))
                {
                    let which: Vec<String> = ports
                        .iter()
                        .map(|p| format!("{} ({})", p.port, protocol_name(p.protocol)))
                        .collect();
                    let article = if kind == Kind::HttpRoute { "an" } else { "a" };
                    let reason = format!(
                        "{article} {} applies to HTTP traffic, and Service {} port {} is opaque \
                         TCP; declare the port http, http2 or grpc",
                        kind.name(),
                        quoted(&service.metadata.name),
                        which.join(", ")
                    );
                    let at = if parent.port.is_some() {
                        format!("{path}.port")
                    } else {
                        name_path
                    };
                    docs.of(kind, i).report(&at, &[], reason);
                }
            }
            for (path, name, namespace, port) in route.spec.service_refs() {
                if let Some(other) = namespace.filter(|other| *other != ns) {
                    let reason = format!(
                        "a backend in another namespace ({}) needs a ReferenceGrant, which Trellis \
                         does not support yet: route to a Service in {}",
                        quoted(other),
                        quoted(ns)
                    );
                    docs.of(kind, i)
                        .report(&format!("{path}.namespace"), &[], reason);
                    continue;
                }
                let name_path = format!("{path}.name");
                let Some(s) = self.service(docs, kind, i, &name_path, ns, name) else {
                    continue;
                };
                let service = &self.resources.services[s];
                let port_path = format!("{path}.port");
                if !docs.failed(Kind::Service, s, "spec.ports")
                    && !service.spec.ports.iter().any(|p| p.port == port)
                {
                    docs.of(kind, i)
                        .report(&port_path, &[], no_port(service, port));
                }
            }
            for (path, name) in route.spec.extension_refs() {
                // A filter of the rule that could not be read shifts the indexes of the others:
                // the path would be wrong, and the problem is reported already.
                let rule_filters = path
                    .find(".filters[")
                    .map_or(&path[..], |at| &path[..at + 8]);
                if docs.failed(kind, i, rule_filters) {
                    continue;
                }
                let found = self
                    .resources
                    .fault_injections
                    .iter()
                    .any(|f| f.metadata.namespace == ns && f.metadata.name == name);
                if found || name.is_empty() {
                    continue;
                }
                let there = self
                    .resources
                    .fault_injections
                    .iter()
                    .filter(|f| f.metadata.namespace == ns)
                    .map(|f| f.metadata.name.as_str());
                let reason = format!(
                    "no FaultInjection {} in namespace {} (FaultInjections there: {}); an \
                     extensionRef names one in the route's namespace",
                    quoted(name),
                    quoted(ns),
                    some(there)
                );
                docs.of(kind, i).report(&path, &[], reason);
            }
        }
    }

    /// The Service `name` in `namespace`, or a report at `path` of resource `index` of `kind`.
    fn service(
        &self,
        docs: &mut Docs,
        kind: Kind,
        index: usize,
        path: &str,
        namespace: &str,
        name: &str,
    ) -> Option<usize> {
        if name.is_empty() {
            return None;
        }
        if let Some(&s) = self.services.get(&(namespace, name)) {
            return Some(s);
        }
        let there = self
            .resources
            .services
            .iter()
            .filter(|s| s.metadata.namespace == namespace)
            .map(|s| s.metadata.name.as_str());
        let reason = format!(
            "no Service {} in namespace {} (Services there: {})",
            quoted(name),
            quoted(namespace),
            some(there)
        );
        docs.of(kind, index).report(path, &[], reason);
        None
    }
}

/// One namespace-wide PeerAuthentication per namespace, and one selecting each workload.
fn peer_authentications(resources: &Resources, docs: &mut Docs) {
    let kind = Kind::PeerAuthentication;
    let policies = &resources.peer_authentications;
    let mut namespace_wide: HashMap<&str, usize> = HashMap::new();
    for (i, policy) in policies.iter().enumerate() {
        if policy.spec.selector.is_some() || docs.failed(kind, i, "spec.selector") {
            continue;
        }
        let ns = policy.metadata.namespace.as_str();
        match namespace_wide.get(ns) {
            Some(&j) => {
                let reason = format!(
                    "namespace {} already has a PeerAuthentication without a selector ({} at \
                     {}); keep one, or give this one a selector",
                    quoted(ns),
                    quoted(&policies[j].metadata.name),
                    docs.at(kind, j, "metadata.name")
                );
                docs.of(kind, i).report("metadata.name", &[], reason);
            }
            None => {
                namespace_wide.insert(ns, i);
            }
        }
    }
    // Each pair of overlapping policies is reported once, at the later one.
    let mut reported: Vec<(usize, usize)> = Vec::new();
    for workload in &resources.workloads {
        let matching: Vec<usize> = policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.metadata.namespace == workload.metadata.namespace)
            .filter(|(_, p)| {
                p.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| super::mesh::selects(s, &workload.spec.labels))
            })
            .map(|(i, _)| i)
            .collect();
        for pair in matching.windows(2) {
            let (first, later) = (pair[0], pair[1]);
            if reported.contains(&(first, later)) {
                continue;
            }
            reported.push((first, later));
            let reason = format!(
                "Workload {} is also selected by PeerAuthentication {} ({}); a workload may have \
                 one (make the selectors disjoint)",
                quoted(&workload.metadata.name),
                quoted(&policies[first].metadata.name),
                docs.at(kind, first, "spec.selector")
            );
            docs.of(kind, later).report("spec.selector", &[], reason);
        }
    }
}

fn metadata_of(resources: &Resources, kind: Kind) -> Vec<&Metadata> {
    fn metas<S>(list: &[Resource<S>]) -> Vec<&Metadata> {
        list.iter().map(|r| &r.metadata).collect()
    }
    match kind {
        Kind::Service => metas(&resources.services),
        Kind::Workload => metas(&resources.workloads),
        Kind::TrafficPolicy => metas(&resources.traffic_policies),
        Kind::HttpRoute => metas(&resources.http_routes),
        Kind::GrpcRoute => metas(&resources.grpc_routes),
        Kind::PeerAuthentication => metas(&resources.peer_authentications),
        Kind::AuthorizationPolicy => metas(&resources.authorization_policies),
        Kind::FaultInjection => metas(&resources.fault_injections),
    }
}

fn no_port(service: &Resource<ServiceSpec>, port: u16) -> String {
    let ports = service
        .spec
        .ports
        .iter()
        .map(|p| format!("{} {}", p.name, p.port));
    let ports: Vec<String> = ports.collect();
    format!(
        "Service {} has no port {port} (its ports: {})",
        quoted(&service.metadata.name),
        some(ports.iter().map(String::as_str))
    )
}

fn qualified(meta: &Metadata) -> String {
    quoted(&format!("{}/{}", meta.namespace, meta.name))
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Grpc => "grpc",
        Protocol::Tcp => "tcp",
        Protocol::Tls => "tls",
    }
}

/// At most [`MAX_LISTED`] names, then how many more.
fn some<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.len() <= MAX_LISTED {
        return super::names::listed(names);
    }
    format!(
        "{} and {} more",
        names[..MAX_LISTED].join(", "),
        names.len() - MAX_LISTED
    )
}
