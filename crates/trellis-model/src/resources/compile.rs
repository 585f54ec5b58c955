//! From resources to one proxy's [`ProxyConfig`]: a pure function of the resources, the
//! workload and the options.
//!
//! What goes in: the node, the app (its address and the ports of the Services that select it,
//! with their protocols and PeerAuthentication's port-level mTLS), every Service exported to it
//! with its endpoints (the Workloads its selector matches, each with its sidecar's address and
//! SPIFFE identity), the timeouts of its TrafficPolicy and its routes (HTTPRoute and
//! GRPCRoute as GAMMA scopes them, see [`route`]: producer routes for every caller, consumer
//! routes for the callers of their namespace), the workload's mTLS mode, and the
//! AuthorizationPolicies that apply to it (mesh-wide, namespace-wide and selecting ones, see
//! [`authorization`]).
//!
//! A TrafficPolicy's load balancer, retries, outlier detection and connection limits become
//! the Service's `policy`.
//!
//! Route filters carry over, with a rule's `RequestMirror`s as `mirror` filters and the
//! FaultInjection an `ExtensionRef` names copied in as a `fault` filter.
//!
//! What does not: `listeners`, `identity` and `control` are the caller's to set. A proxy sees
//! the Services exported to its namespace (`exportTo`, all by default).
//!
//! [`Compiler`] does the work shared by every proxy (selectors, endpoints, producer routes)
//! once per set of resources, so that each proxy costs a copy of the Services plus its
//! namespace's consumer routes; [`compile`] is the one-shot form.

use std::collections::{BTreeMap, HashMap};

use super::mesh::{selections, selects};
use super::{Resource, Resources, ServiceSpec, TrafficPolicySpec, WorkloadSpec};
use crate::proxy::{self, App, AppPort, Endpoint, MtlsMode, Node, ProxyConfig, Timeouts};

mod authorization;
mod route;
#[cfg(test)]
mod tests;

/// What the resources do not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// The trust domain of SPIFFE IDs: `spiffe://<trust-domain>/ns/<ns>/sa/<account>`.
    pub trust_domain: String,
    /// The namespace whose PeerAuthentication and AuthorizationPolicies without a selector
    /// apply to the whole mesh (Istio's root namespace).
    pub root_namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("no Workload \"{name}\" in namespace \"{namespace}\" (Workloads there: {known})")]
    UnknownWorkload {
        namespace: String,
        name: String,
        /// The workloads of that namespace, for the message.
        known: String,
    },
}

/// Compiles proxy configs from one set of resources.
#[derive(Debug)]
pub struct Compiler<'r> {
    resources: &'r Resources,
    options: CompileOptions,
    /// Every Service with its endpoints and producer routes, sorted by namespace and name: the
    /// same for every proxy.
    services: Vec<proxy::Service>,
    /// For each of `services`, the Service it was compiled from (for `exportTo`).
    specs: Vec<&'r ServiceSpec>,
    /// Consumer routes by caller namespace: index into `services`, and the routes.
    consumer_routes: HashMap<String, Vec<(usize, Vec<proxy::Route>)>>,
    /// For each workload, the Services that select it (indexes into `resources.services`).
    selected_by: Vec<Vec<usize>>,
    workloads: HashMap<(&'r str, &'r str), usize>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_string(),
            root_namespace: "trellis-system".to_string(),
        }
    }
}

impl<'r> Compiler<'r> {
    pub fn new(resources: &'r Resources, options: CompileOptions) -> Self {
        let selections = selections(resources);
        let mut selected_by = vec![Vec::new(); resources.workloads.len()];
        for (s, workloads) in selections.iter().enumerate() {
            for &w in workloads {
                selected_by[w].push(s);
            }
        }
        let mut order: Vec<usize> = (0..resources.services.len()).collect();
        order.sort_by_key(|&s| key(&resources.services[s]));
        let policies: HashMap<(&str, &str), &Resource<TrafficPolicySpec>> = resources
            .traffic_policies
            .iter()
            .map(|p| ((p.metadata.namespace.as_str(), p.spec.target.as_str()), p))
            .collect();
        let specs = order.iter().map(|&s| &resources.services[s].spec).collect();
        let mut routes = route::Routes::compile(resources);
        let services: Vec<proxy::Service> = order
            .iter()
            .map(|&s| {
                let svc = &resources.services[s];
                let policy = policies.get(&key(svc)).copied();
                let mut service = service(resources, &options, s, &selections[s], policy);
                let (ns, name) = key(svc);
                service.routes = routes
                    .producer
                    .remove(&(ns.to_string(), name.to_string()))
                    .unwrap_or_default();
                service
            })
            .collect();
        let index: HashMap<(&str, &str), usize> = services
            .iter()
            .enumerate()
            .map(|(i, s)| ((s.namespace.as_str(), s.name.as_str()), i))
            .collect();
        let consumer_routes = routes
            .consumer
            .into_iter()
            .map(|(caller, by_service)| {
                let mut list: Vec<(usize, Vec<proxy::Route>)> = by_service
                    .into_iter()
                    .filter_map(|((ns, name), r)| Some((*index.get(&(&*ns, &*name))?, r)))
                    .collect();
                list.sort_by_key(|(i, _)| *i);
                (caller, list)
            })
            .collect();
        let workloads = resources
            .workloads
            .iter()
            .enumerate()
            .map(|(w, r)| ((r.metadata.namespace.as_str(), r.metadata.name.as_str()), w))
            .collect();
        Self {
            resources,
            options,
            services,
            specs,
            consumer_routes,
            selected_by,
            workloads,
        }
    }

    /// The config of the sidecar of Workload `name` in `namespace`.
    pub fn proxy(&self, name: &str, namespace: &str) -> Result<ProxyConfig, CompileError> {
        let Some(&w) = self.workloads.get(&(namespace, name)) else {
            let mut known: Vec<&str> = self
                .resources
                .workloads
                .iter()
                .filter(|r| r.metadata.namespace == namespace)
                .map(|r| r.metadata.name.as_str())
                .collect();
            known.sort_unstable();
            return Err(CompileError::UnknownWorkload {
                namespace: namespace.to_string(),
                name: name.to_string(),
                known: super::names::listed(known),
            });
        };
        let workload = &self.resources.workloads[w];
        let (mtls, port_level) = self.peer_authentication(workload);
        Ok(ProxyConfig {
            node: Node {
                name: workload.metadata.name.clone(),
                namespace: workload.metadata.namespace.clone(),
                workload: Some(workload.metadata.name.clone()),
            },
            listeners: Default::default(),
            app: self.app(w, port_level),
            services: self.visible_from(namespace),
            outbound_policy: Default::default(),
            timeouts: Timeouts::default(),
            identity: None,
            mtls,
            authorization: authorization::for_workload(
                &self.resources.authorization_policies,
                &self.options.root_namespace,
                workload,
            ),
            control: None,
        })
    }

    /// The Services exported to proxies in namespace `caller` (`exportTo`), with the consumer
    /// routes of that namespace.
    fn visible_from(&self, caller: &str) -> Vec<proxy::Service> {
        let consumer: HashMap<usize, &Vec<proxy::Route>> = self
            .consumer_routes
            .get(caller)
            .into_iter()
            .flatten()
            .map(|(s, routes)| (*s, routes))
            .collect();
        self.services
            .iter()
            .zip(&self.specs)
            .enumerate()
            .filter(|(_, (s, spec))| spec.exported_to(&s.namespace, caller))
            .map(|(i, (s, _))| {
                let mut service = s.clone();
                if let Some(routes) = consumer.get(&i) {
                    route::apply_consumer_routes(&mut service, routes);
                }
                service
            })
            .collect()
    }

    /// Every Service as each proxy sees it, but for consumer routes (which only the callers
    /// in their namespace see) and `exportTo`.
    pub fn services(&self) -> &[proxy::Service] {
        &self.services
    }

    /// The app's ports: one per port of each Service that selects the workload, where the app
    /// listens for it; the first Service (by namespace and name) decides a shared port.
    fn app(&self, w: usize, port_level: Option<&BTreeMap<u16, Option<MtlsMode>>>) -> App {
        let workload = &self.resources.workloads[w].spec;
        let mut services: Vec<&Resource<ServiceSpec>> = self.selected_by[w]
            .iter()
            .map(|&s| &self.resources.services[s])
            .collect();
        services.sort_by_key(|s| key(s));
        let mut ports: Vec<AppPort> = Vec::new();
        for port in services.iter().flat_map(|s| &s.spec.ports) {
            let app_port = workload.app_port(port);
            if ports.iter().any(|p| p.port == app_port) {
                continue;
            }
            ports.push(AppPort {
                port: app_port,
                protocol: port.protocol,
                mtls: port_level.and_then(|m| m.get(&app_port).copied().flatten()),
            });
        }
        ports.sort_by_key(|p| p.port);
        App {
            address: workload.address,
            ports,
        }
    }

    /// The workload's mTLS mode, Istio's way: the PeerAuthentication selecting it, else its
    /// namespace's, else the mesh's (root namespace) — the first that sets a mode; PERMISSIVE
    /// if none does. Port-level modes come from the selecting policy only.
    fn peer_authentication(
        &self,
        workload: &Resource<WorkloadSpec>,
    ) -> (MtlsMode, Option<&'r BTreeMap<u16, Option<MtlsMode>>>) {
        let policies = &self.resources.peer_authentications;
        let ns = workload.metadata.namespace.as_str();
        let selecting = policies.iter().find(|p| {
            p.metadata.namespace == ns
                && p.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| selects(s, &workload.spec.labels))
        });
        let namespace_wide = |ns: &str| {
            policies
                .iter()
                .find(|p| p.metadata.namespace == ns && p.spec.selector.is_none())
        };
        let mode = [
            selecting,
            namespace_wide(ns),
            namespace_wide(&self.options.root_namespace),
        ]
        .into_iter()
        .flatten()
        .find_map(|p| p.spec.mtls)
        .unwrap_or_default();
        (mode, selecting.map(|p| &p.spec.port_level_mtls))
    }
}

/// The config of the sidecar of Workload `name` in `namespace`. To compile for many proxies,
/// make one [`Compiler`] and call [`Compiler::proxy`] for each.
pub fn compile(
    resources: &Resources,
    name: &str,
    namespace: &str,
    options: &CompileOptions,
) -> Result<ProxyConfig, CompileError> {
    Compiler::new(resources, options.clone()).proxy(name, namespace)
}

/// Service `s` as a proxy sees it, with the Workloads it selects as endpoints and the timeouts
/// of its TrafficPolicy.
fn service(
    resources: &Resources,
    options: &CompileOptions,
    s: usize,
    selected: &[usize],
    policy: Option<&Resource<TrafficPolicySpec>>,
) -> proxy::Service {
    let service = &resources.services[s];
    let mut endpoints: Vec<(&Resource<WorkloadSpec>, Endpoint)> = selected
        .iter()
        .map(|&w| {
            let workload = &resources.workloads[w];
            (workload, endpoint(workload, &service.spec, options))
        })
        .collect();
    endpoints.sort_by_key(|(w, _)| key(w));
    let ns = &service.metadata.namespace;
    let timeouts = policy.and_then(|p| p.spec.timeouts).map(|t| {
        let base = Timeouts::default();
        Timeouts {
            connect: t.connect.unwrap_or(base.connect),
            request: t.request.unwrap_or(base.request),
            idle: t.idle.unwrap_or(base.idle),
            ..base
        }
    });
    proxy::Service {
        name: service.metadata.name.clone(),
        namespace: ns.clone(),
        hostnames: service.spec.hostnames.clone(),
        addresses: service.spec.addresses.clone(),
        ports: service
            .spec
            .ports
            .iter()
            .map(|p| proxy::ServicePort {
                name: p.name.clone(),
                port: p.port,
                protocol: p.protocol,
                target_port: p.target_port,
            })
            .collect(),
        endpoints: endpoints.into_iter().map(|(_, e)| e).collect(),
        timeouts,
        routes: Vec::new(),
        policy: policy.and_then(|p| service_policy(&p.spec)),
    }
}

/// The proxy's form of a TrafficPolicy's load balancer, retries, outlier detection and
/// connection limits; `None` when it sets none of them (only timeouts).
fn service_policy(spec: &TrafficPolicySpec) -> Option<proxy::ServicePolicy> {
    use super::traffic;
    if spec.load_balancer.is_none()
        && spec.retries.is_none()
        && spec.outlier_detection.is_none()
        && spec.connection_limits.is_none()
    {
        return None;
    }
    let load_balancer = spec
        .load_balancer
        .as_ref()
        .map(|lb| proxy::LoadBalancer {
            kind: match lb.kind {
                traffic::LoadBalancerKind::RoundRobin => proxy::LoadBalancerKind::RoundRobin,
                traffic::LoadBalancerKind::LeastRequest => proxy::LoadBalancerKind::LeastRequest,
                traffic::LoadBalancerKind::RingHash => proxy::LoadBalancerKind::RingHash,
                traffic::LoadBalancerKind::Maglev => proxy::LoadBalancerKind::Maglev,
            },
            hash_on: lb.hash_on.as_ref().map(|h| match h {
                traffic::HashOn::Header(name) => proxy::HashOn::Header(name.clone()),
                traffic::HashOn::Cookie(name) => proxy::HashOn::Cookie(name.clone()),
                traffic::HashOn::SourceIp => proxy::HashOn::SourceIp,
            }),
        })
        .unwrap_or_default();
    let retries = spec.retries.as_ref().map(|r| proxy::Retries {
        attempts: r.attempts,
        on: r.on.clone(),
        per_try_timeout: r.per_try_timeout,
        backoff: r
            .backoff
            .map_or_else(crate::proxy::policy::default_backoff, |b| b.base_interval),
        max_backoff: r.backoff.and_then(|b| b.max_interval),
        budget: r
            .budget
            .map(|b| proxy::RetryBudget {
                percent: b.percent,
                min_retries_per_second: b.min_retries_per_second,
                ttl: b.ttl,
            })
            .unwrap_or_default(),
    });
    let outlier_detection = spec.outlier_detection.map(|o| {
        let default = proxy::OutlierDetection::default();
        proxy::OutlierDetection {
            consecutive_5xx: o.consecutive_5xx,
            interval: o.interval,
            base_ejection_time: o.base_ejection_time,
            max_ejection_time: default.max_ejection_time.max(o.base_ejection_time),
            max_ejection_percent: o.max_ejection_percent,
        }
    });
    let limits = spec.connection_limits.map(|l| proxy::Limits {
        max_connections: l.max_connections,
        max_pending_requests: l.max_pending_requests,
        max_requests: l.max_requests,
    });
    Some(proxy::ServicePolicy {
        load_balancer,
        retries,
        outlier_detection,
        limits,
    })
}

/// A workload as an endpoint of `service`. Outside the mesh (no sidecar) it has no mesh
/// address and no identity: it is reached directly.
fn endpoint(
    workload: &Resource<WorkloadSpec>,
    service: &ServiceSpec,
    options: &CompileOptions,
) -> Endpoint {
    let spec = &workload.spec;
    let ports = service
        .ports
        .iter()
        .filter_map(|p| Some((p.name.clone(), spec.port_override(p)?)))
        .collect();
    let proxy = spec.proxy.as_ref();
    Endpoint {
        address: spec.address,
        ports,
        mesh: proxy.map(|p| p.mesh),
        workload: Some(workload.metadata.name.clone()),
        namespace: Some(workload.metadata.namespace.clone()),
        identity: proxy.map(|_| {
            spiffe_id(
                &options.trust_domain,
                &workload.metadata.namespace,
                &spec.service_account,
            )
        }),
    }
}

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
pub(super) fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

fn key<S>(r: &Resource<S>) -> (&str, &str) {
    (&r.metadata.namespace, &r.metadata.name)
}
