//! The resources users write (DESIGN §4): Kubernetes-style documents, several per file, read
//! from a directory and validated as a whole.
//!
//! [`Resources::load`] takes the files' names and text (reading them is the caller's job: the
//! model does no I/O) and returns every resource, or every problem at once, each with file,
//! line, column, field and reason:
//! 1. each file is split into documents at `---` and each document parsed into a tree that
//!    remembers lines (`validate::yaml`, shared with the proxy config); a syntax error is that
//!    document's one error, and the other documents are still read;
//! 2. each document is decoded field by field by its kind's decoder (`mesh`, `traffic`, `route`,
//!    `security`), with the checks that need only that document;
//! 3. `consistency` checks the documents against each other: names unique per kind and
//!    namespace, references to Services and ports that exist, no two policies for one target.
//!
//! [`compile`] turns resources into one proxy's [`ProxyConfig`](crate::ProxyConfig).

use std::collections::BTreeMap;

use crate::validate::yaml::{Mark, Node, Value};
use crate::{ConfigError, ConfigErrors};
use decode::{Decoder, Problem};

mod compile;
mod consistency;
mod decode;
mod document;
mod fault;
mod mesh;
pub(crate) mod names;
mod route;
mod security;
#[cfg(test)]
mod tests;
mod traffic;

pub use crate::proxy::IpBlock;
pub use compile::{CompileError, CompileOptions, Compiler, compile};
pub use fault::{FaultAbort, FaultDelay, FaultInjectionSpec};
pub use mesh::{ServicePortSpec, ServiceSpec, WorkloadProxy, WorkloadRun, WorkloadSpec};
pub use route::{
    BackendRef, ExtensionRef, GrpcFilter, GrpcMethodMatch, GrpcRouteMatch, GrpcRouteRule,
    GrpcRouteSpec, Header, HeaderModifier, HttpFilter, HttpRouteMatch, HttpRouteRule,
    HttpRouteSpec, MatchKind, Mirror, ParentRef, PathMatch, PathMatchKind, PathModifier, Redirect,
    RouteTimeouts, UrlRewrite, ValueMatch,
};
pub use security::{
    AuthorizationAction, AuthorizationPolicySpec, AuthorizationRule, PeerAuthenticationSpec,
    RuleCondition, RuleOperation, RuleSource,
};
pub use traffic::{
    ConnectionLimits, HashOn, LoadBalancer, LoadBalancerKind, OutlierDetection, PolicyTimeouts,
    Retries, RetryBackoff, RetryBudget, RetryOn, TrafficPolicySpec,
};

/// Larger files are refused before parsing: resources are untrusted input.
const MAX_FILE_BYTES: usize = 32 << 20;

/// Label names to values.
pub type Labels = BTreeMap<String, String>;

/// Every resource of a directory, valid and consistent, in the order of the files given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub services: Vec<Resource<ServiceSpec>>,
    pub workloads: Vec<Resource<WorkloadSpec>>,
    pub traffic_policies: Vec<Resource<TrafficPolicySpec>>,
    pub http_routes: Vec<Resource<HttpRouteSpec>>,
    pub grpc_routes: Vec<Resource<GrpcRouteSpec>>,
    pub peer_authentications: Vec<Resource<PeerAuthenticationSpec>>,
    pub authorization_policies: Vec<Resource<AuthorizationPolicySpec>>,
    pub fault_injections: Vec<Resource<FaultInjectionSpec>>,
}

/// One document: its metadata, where it was written, and its kind's spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource<S> {
    pub metadata: Metadata,
    pub location: Location,
    pub spec: S,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub name: String,
    /// `default` unless given.
    pub namespace: String,
    pub labels: Labels,
    pub annotations: Labels,
}

/// Where a document starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based line of the document's first field.
    pub line: usize,
}

/// The kinds of resource Trellis reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    Workload,
    TrafficPolicy,
    HttpRoute,
    GrpcRoute,
    PeerAuthentication,
    AuthorizationPolicy,
    FaultInjection,
}

/// The documents as read, for the checks across documents: each one's decoder (marks and
/// placeholders), and which document each resource came from.
struct Docs {
    files: Vec<String>,
    docs: Vec<(usize, Decoder)>,
    /// Per kind (by `Kind::index`), the document of each resource.
    origins: [Vec<usize>; Kind::ALL.len()],
}

impl Resources {
    /// Read and validate the resources of `files`, given as `(file name, text)`; the name is
    /// used in locations and errors. Every problem is reported, sorted by file (in the order
    /// given) and line.
    pub fn load<F: AsRef<str>, T: AsRef<str>>(files: &[(F, T)]) -> Result<Self, ConfigErrors> {
        let mut resources = Resources::default();
        let mut docs = Docs {
            files: files.iter().map(|(f, _)| f.as_ref().to_string()).collect(),
            docs: Vec::new(),
            origins: Default::default(),
        };
        let mut file_problems: Vec<(usize, Problem)> = Vec::new();
        for (index, (_, text)) in files.iter().enumerate() {
            let text = text.as_ref();
            if text.len() > MAX_FILE_BYTES {
                let reason = format!(
                    "the file is {} bytes; a file of resources may be at most {MAX_FILE_BYTES} \
                     bytes (32 MiB): split it",
                    text.len()
                );
                file_problems.push((index, problem(None, "", reason)));
                continue;
            }
            for chunk in document::split(text) {
                match document::parse(&chunk) {
                    Ok(root) if root.is_null() => {}
                    Ok(root) => {
                        let mut d = Decoder::default();
                        let location = Location {
                            file: docs.files[index].clone(),
                            line: root.mark.line,
                        };
                        if let Some(kind) = d.resource(&root, location, &mut resources) {
                            docs.origins[kind.index()].push(docs.docs.len());
                        }
                        docs.docs.push((index, d));
                    }
                    Err(e) => {
                        let reason = format!("invalid YAML: {}", e.reason);
                        file_problems.push((index, problem(Some(e.mark), "", reason)));
                    }
                }
            }
        }
        consistency::check(&resources, &mut docs);

        let mut problems = file_problems;
        for (file, d) in &mut docs.docs {
            problems.extend(d.problems.drain(..).map(|p| (*file, p)));
        }
        if problems.is_empty() {
            return Ok(resources);
        }
        // Stable: problems on one node keep the order they were found in.
        problems.sort_by_key(|(file, p)| (*file, p.mark));
        let errors = problems.into_iter().map(|(file, p)| ConfigError {
            file: docs.files[file].clone(),
            line: p.mark.map(|m| m.line),
            column: p.mark.map(|m| m.column),
            field: p.field,
            reason: p.reason,
        });
        Err(ConfigErrors(errors.collect()))
    }

    /// How many resources of `kind` there are.
    pub fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Service => self.services.len(),
            Kind::Workload => self.workloads.len(),
            Kind::TrafficPolicy => self.traffic_policies.len(),
            Kind::HttpRoute => self.http_routes.len(),
            Kind::GrpcRoute => self.grpc_routes.len(),
            Kind::PeerAuthentication => self.peer_authentications.len(),
            Kind::AuthorizationPolicy => self.authorization_policies.len(),
            Kind::FaultInjection => self.fault_injections.len(),
        }
    }

    /// How many resources there are in all.
    pub fn len(&self) -> usize {
        Kind::ALL.iter().map(|k| self.count(*k)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Resource<ServiceSpec>> {
        find(&self.services, namespace, name)
    }

    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Resource<WorkloadSpec>> {
        find(&self.workloads, namespace, name)
    }
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Service,
        Kind::Workload,
        Kind::TrafficPolicy,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::FaultInjection,
    ];

    /// The kind as written in `kind:`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Workload => "Workload",
            Kind::TrafficPolicy => "TrafficPolicy",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::FaultInjection => "FaultInjection",
        }
    }

    /// The plural, for summaries: `Services`, `HTTPRoutes`, `TrafficPolicies`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "Services",
            Kind::Workload => "Workloads",
            Kind::TrafficPolicy => "TrafficPolicies",
            Kind::HttpRoute => "HTTPRoutes",
            Kind::GrpcRoute => "GRPCRoutes",
            Kind::PeerAuthentication => "PeerAuthentications",
            Kind::AuthorizationPolicy => "AuthorizationPolicies",
            Kind::FaultInjection => "FaultInjections",
        }
    }

    /// The `apiVersion` to write.
    pub fn api_version(self) -> &'static str {
        self.api_versions()[0]
    }

    /// Every `apiVersion` accepted: Istio's `v1beta1` has the same schema as `v1`.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::Service | Kind::Workload | Kind::TrafficPolicy | Kind::FaultInjection => {
                &["trellis.dev/v1alpha1"]
            }
            Kind::HttpRoute | Kind::GrpcRoute => &["gateway.networking.k8s.io/v1"],
            Kind::PeerAuthentication | Kind::AuthorizationPolicy => {
                &["security.istio.io/v1", "security.istio.io/v1beta1"]
            }
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl Docs {
    /// The decoder of the document that resource `index` of `kind` came from.
    fn of(&mut self, kind: Kind, index: usize) -> &mut Decoder {
        let doc = self.origins[kind.index()][index];
        &mut self.docs[doc].1
    }

    /// `FILE:LINE` of `path` in the document of resource `index` of `kind`, for a message.
    fn at(&self, kind: Kind, index: usize, path: &str) -> String {
        let (file, d) = &self.docs[self.origins[kind.index()][index]];
        match d.mark(path) {
            Some(mark) => format!("{}:{}", self.files[*file], mark.line),
            None => self.files[*file].clone(),
        }
    }

    /// Whether `path` in the document of resource `index` of `kind` is a placeholder.
    fn failed(&self, kind: Kind, index: usize, path: &str) -> bool {
        let doc = self.origins[kind.index()][index];
        self.docs[doc].1.failed_under(path)
    }
}

impl Decoder {
    /// Decode one document into `resources`; the kind it was added as, if any.
    fn resource(
        &mut self,
        root: &Node,
        location: Location,
        resources: &mut Resources,
    ) -> Option<Kind> {
        if !matches!(root.value, Value::Map(_)) {
            self.error(root.mark, "", document::not_a_resource(root));
            return None;
        }
        let envelope = self.envelope(root);
        let kind_name = envelope.kind.as_deref()?;
        let Some(kind) = Kind::from_name(kind_name) else {
            let known: Vec<String> = Kind::ALL
                .iter()
                .map(|k| format!("{} {}", k.api_version(), k.name()))
                .collect();
            let lower = kind_name.to_ascii_lowercase();
            let close = Kind::ALL.into_iter().find(|k| {
                let k = k.name().to_ascii_lowercase();
                lower == k || lower.strip_suffix('s') == Some(k.as_str())
            });
            let hint = close.map_or(String::new(), |k| format!("; did you mean {}?", k.name()));
            let reason = format!(
                "{} is not a kind Trellis knows{hint} (known: {})",
                names::quoted(kind_name),
                known.join(", ")
            );
            self.report("kind", &[], reason);
            return None;
        };
        if let Some(version) = &envelope.api_version {
            if !kind.api_versions().contains(&version.as_str()) {
                let reason = format!(
                    "{} is not an apiVersion of {} (write apiVersion: {})",
                    names::quoted(version),
                    kind.name(),
                    kind.api_version()
                );
                self.report("apiVersion", &[], reason);
            }
        }
        self.check_name(&envelope.metadata.name, kind == Kind::Service);
        let metadata = envelope.metadata;
        // A missing spec was reported: its resource is still known (so that references to it
        // are not reported too), with a spec of placeholders whose problems are dropped.
        let empty = Node {
            value: Value::Map(Vec::new()),
            mark: root.mark,
        };
        let mut scratch = Decoder::default();
        let (d, spec) = match envelope.spec {
            Some(spec) => (self, spec),
            None => (&mut scratch, &empty),
        };
        macro_rules! push {
            ($list:ident, $spec:expr) => {{
                let spec = $spec;
                resources.$list.push(Resource {
                    metadata,
                    location,
                    spec,
                })
            }};
        }
        match kind {
            Kind::Service => push!(services, d.service_spec(spec, "spec")),
            Kind::Workload => {
                let labels = metadata.labels.clone();
                push!(workloads, d.workload_spec(spec, "spec", &labels))
            }
            Kind::TrafficPolicy => push!(traffic_policies, d.traffic_policy_spec(spec, "spec")),
            Kind::HttpRoute => push!(http_routes, d.http_route_spec(spec, "spec")),
            Kind::GrpcRoute => push!(grpc_routes, d.grpc_route_spec(spec, "spec")),
            Kind::PeerAuthentication => {
                push!(
                    peer_authentications,
                    d.peer_authentication_spec(spec, "spec")
                )
            }
            Kind::AuthorizationPolicy => {
                push!(
                    authorization_policies,
                    d.authorization_policy_spec(spec, "spec")
                )
            }
            Kind::FaultInjection => {
                push!(fault_injections, d.fault_injection_spec(spec, "spec"))
            }
        }
        Some(kind)
    }
}

fn find<'r, S>(list: &'r [Resource<S>], namespace: &str, name: &str) -> Option<&'r Resource<S>> {
    list.iter()
        .find(|r| r.metadata.namespace == namespace && r.metadata.name == name)
}

fn problem(mark: Option<Mark>, field: &str, reason: String) -> Problem {
    Problem {
        mark,
        field: field.to_string(),
        reason,
    }
}
