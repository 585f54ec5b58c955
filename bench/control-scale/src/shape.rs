//! The mesh under test: a resources directory generated from a few numbers (the format
//! `trellis control --resources DIR` reads), and the changes made to it during the run, each
//! with the simulated proxies it must reach.
//!
//! - `namespaces` application namespaces `ns-000`, `ns-001`, ...; the services not shared are
//!   dealt round-robin over them, as `svc-000`, `svc-001`, ... in each. With `--export own`
//!   (the default) each is exported to its own namespace only (`exportTo: ["."]`); with
//!   `--export all` to every namespace (no `exportTo`: Istio's and Trellis's default).
//! - `shared` mesh-wide services `shared-00`, ... in namespace `platform`, exported to every
//!   namespace (`exportTo: ["*"]`): the auth, config and telemetry services everyone calls.
//! - `endpoints` Workloads dealt evenly over all services: `<service>-<i>`, labelled
//!   `app: <service>` (one Service selects each), service account `<service>`, a unique
//!   address in 10.0.0.0/8; with `--sidecars proxies` (the default) the simulated proxies'
//!   Workloads have a sidecar (`spec.proxy.mesh: <address>:15008`) and the others are
//!   endpoints outside the mesh; with `--sidecars all` every Workload has one.
//! - `proxies` of the application Workloads are simulated proxies, dealt evenly over the
//!   application namespaces and, within one, over its services.
//! - A PeerAuthentication in `trellis-system` makes the mesh STRICT (as `examples/demo`).
//!
//! One file per namespace, so that a change rewrites one file of about `endpoints /
//! namespaces` Workloads, as an operator or a tool writing one namespace's resources would.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail, ensure};
use serde::Serialize;

/// The numbers the mesh is made from.
#[derive(Debug, Clone, Serialize)]
pub struct Shape {
    pub proxies: usize,
    /// Every Service, the shared ones included.
    pub services: usize,
    /// Every Workload.
    pub endpoints: usize,
    /// Application namespaces (the shared services' `platform` comes on top).
    pub namespaces: usize,
    /// Mesh-wide services (in `platform`, exported everywhere).
    pub shared: usize,
    pub export: Export,
    pub sidecars: Sidecars,
}

/// Where the application Services are exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Export {
    /// `exportTo: ["."]`: a proxy is sent its own namespace's Services and the shared ones.
    Own,
    /// No `exportTo` (every namespace): every proxy is sent every Service.
    All,
}

/// Which Workloads have a sidecar (`spec.proxy`), i.e. get a config compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Sidecars {
    /// Every Workload (a real mesh: every endpoint is meshed).
    All,
    /// Only the simulated proxies' Workloads.
    Proxies,
}

/// What one change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    /// A Workload of an application Service moves (new address): the common case.
    Endpoint,
    /// A Workload of a shared Service moves: every proxy is told.
    SharedEndpoint,
    /// A new Service with its Workloads in an application namespace.
    AddService,
}

/// A change written to a temporary file, to be put in place by [`Change::commit`].
#[derive(Debug)]
pub struct Change {
    pub kind: ChangeKind,
    pub what: String,
    /// The simulated proxies (indexes into [`Mesh::proxies`]) whose config it changes.
    pub expected: Vec<usize>,
    tmp: PathBuf,
    path: PathBuf,
}

/// A simulated proxy: the Workload it stands beside.
#[derive(Debug, Clone)]
pub struct ProxyRef {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// Its namespace's index in [`Mesh::namespaces`].
    ns: usize,
}

/// The generated mesh, kept to render the files again after a change.
#[derive(Debug)]
pub struct Mesh {
    shape: Shape,
    /// Application namespaces first, then `platform` (when there are shared services).
    namespaces: Vec<Namespace>,
    proxies: Vec<ProxyRef>,
    /// Addresses handed out so far (the next one is fresh).
    addresses: u32,
    /// Services added by changes so far.
    added: usize,
}

#[derive(Debug)]
struct Namespace {
    name: String,
    shared: bool,
    services: Vec<Service>,
}

#[derive(Debug)]
struct Service {
    name: String,
    protocol: (&'static str, u16, &'static str),
    workloads: Vec<Workload>,
}

#[derive(Debug)]
struct Workload {
    name: String,
    address: Ipv4Addr,
    sidecar: bool,
}

const SHARED_NAMESPACE: &str = "platform";
/// Port name, port and protocol; dealt 6:3:1 over the services.
const PROTOCOLS: [(&str, u16, &str); 3] = [
    ("http", 8080, "http"),
    ("grpc", 9090, "grpc"),
    ("tcp", 7070, "tcp"),
];

impl Shape {
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(self.namespaces >= 1, "--namespaces must be at least 1");
        ensure!(
            self.shared < self.services,
            "--shared ({}) must leave some of the --services ({}) to the application namespaces",
            self.shared,
            self.services
        );
        ensure!(
            self.services - self.shared >= self.namespaces,
            "{} application services cannot fill {} namespaces: give more --services or fewer --namespaces",
            self.services - self.shared,
            self.namespaces
        );
        ensure!(
            self.endpoints >= self.services,
            "--endpoints ({}) must give every one of the --services ({}) at least one",
            self.endpoints,
            self.services
        );
        ensure!(self.proxies >= 1, "--proxies must be at least 1");
        ensure!(
            self.endpoints < (1 << 24) - 1,
            "at most 16 million endpoints (one 10.0.0.0/8 address each)"
        );
        Ok(())
    }

    /// The Workloads of the Service with global index `s` (endpoints dealt evenly).
    fn workloads_of(&self, s: usize) -> usize {
        self.endpoints / self.services + usize::from(s < self.endpoints % self.services)
    }
}

impl Mesh {
    /// Builds the mesh for `shape` (nothing is written yet).
    pub fn generate(shape: &Shape) -> anyhow::Result<Mesh> {
        shape.check()?;
        let mut mesh = Mesh {
            shape: shape.clone(),
            namespaces: (0..shape.namespaces)
                .map(|n| Namespace {
                    name: format!("ns-{n:03}"),
                    shared: false,
                    services: Vec::new(),
                })
                .collect(),
            proxies: Vec::new(),
            addresses: 0,
            added: 0,
        };
        if shape.shared > 0 {
            mesh.namespaces.push(Namespace {
                name: SHARED_NAMESPACE.to_owned(),
                shared: true,
                services: Vec::new(),
            });
        }
        let app_services = shape.services - shape.shared;
        for s in 0..shape.services {
            let n = if s < app_services {
                s % shape.namespaces
            } else {
                shape.namespaces
            };
            let index = mesh.namespaces[n].services.len();
            let name = if mesh.namespaces[n].shared {
                format!("shared-{index:02}")
            } else {
                format!("svc-{index:03}")
            };
            let service = mesh.service(name, s, shape.workloads_of(s), |_| true);
            mesh.namespaces[n].services.push(service);
        }
        mesh.pick_proxies()?;
        if shape.sidecars == Sidecars::Proxies {
            for ns in &mut mesh.namespaces {
                for service in &mut ns.services {
                    for workload in &mut service.workloads {
                        workload.sidecar = false;
                    }
                }
            }
            for p in 0..mesh.proxies.len() {
                let (ns, s, w) = mesh.locate(p)?;
                mesh.namespaces[ns].services[s].workloads[w].sidecar = true;
            }
        }
        Ok(mesh)
    }

    /// The simulated proxies, in the order they connect.
    pub fn proxies(&self) -> &[ProxyRef] {
        &self.proxies
    }

    /// Every Workload with a sidecar (whose config the control plane compiles).
    pub fn sidecars(&self) -> usize {
        self.namespaces
            .iter()
            .flat_map(|ns| &ns.services)
            .flat_map(|s| &s.workloads)
            .filter(|w| w.sidecar)
            .count()
    }

    /// Writes every file into `dir` (which must exist).
    pub fn write_all(&self, dir: &Path) -> anyhow::Result<()> {
        let mesh_file = dir.join("mesh.yaml");
        std::fs::write(&mesh_file, MESH_POLICY)
            .with_context(|| format!("cannot write {}", mesh_file.display()))?;
        for n in 0..self.namespaces.len() {
            let path = self.file(dir, n);
            std::fs::write(&path, self.render(n))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    /// Makes change number `round` of `kind` and writes it to a temporary (hidden) file in
    /// `dir`; [`Change::commit`] puts it in place.
    pub fn change(&mut self, kind: ChangeKind, round: usize, dir: &Path) -> anyhow::Result<Change> {
        let app = self.shape.namespaces;
        // Rotate over the namespaces with a stride, so consecutive rounds touch different ones.
        let n = match kind {
            ChangeKind::SharedEndpoint if self.shape.shared == 0 => {
                bail!("no shared services (--shared 0) for a shared-endpoint change")
            }
            ChangeKind::SharedEndpoint => app,
            _ => (round * 7 + 3) % app,
        };
        let what = match kind {
            ChangeKind::Endpoint | ChangeKind::SharedEndpoint => {
                let s = round % self.namespaces[n].services.len();
                let address = self.fresh_address()?;
                let ns = &mut self.namespaces[n];
                let workload = ns.services[s]
                    .workloads
                    .last_mut()
                    .context("a service without workloads")?;
                let what = format!(
                    "Workload {}.{} moves {} -> {address}",
                    workload.name, ns.name, workload.address
                );
                workload.address = address;
                what
            }
            ChangeKind::AddService => {
                self.added += 1;
                let name = format!("added-{:02}", self.added);
                let count = self.shape.endpoints / self.shape.services;
                let sidecar = self.shape.sidecars == Sidecars::All;
                let service = self.service(name.clone(), round, count, |_| sidecar);
                self.namespaces[n].services.push(service);
                format!(
                    "Service {name}.{} added with {count} Workloads",
                    self.namespaces[n].name
                )
            }
        };
        let expected = (0..self.proxies.len())
            .filter(|&p| self.sees(self.proxies[p].ns, n))
            .collect();
        let path = self.file(dir, n);
        let tmp = dir.join(format!(".{}.yaml.tmp", self.namespaces[n].name));
        std::fs::write(&tmp, self.render(n))
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        Ok(Change {
            kind,
            what,
            expected,
            tmp,
            path,
        })
    }

    /// Whether a proxy in namespace `proxy_ns` is sent the Services of namespace `service_ns`.
    fn sees(&self, proxy_ns: usize, service_ns: usize) -> bool {
        self.namespaces[service_ns].shared
            || self.shape.export == Export::All
            || proxy_ns == service_ns
    }

    fn service(
        &mut self,
        name: String,
        index: usize,
        workloads: usize,
        sidecar: impl Fn(usize) -> bool,
    ) -> Service {
        let protocol = match index % 10 {
            0..=5 => PROTOCOLS[0],
            6..=8 => PROTOCOLS[1],
            _ => PROTOCOLS[2],
        };
        let workloads = (0..workloads)
            .map(|i| {
                self.addresses += 1;
                Workload {
                    name: format!("{name}-{i}"),
                    address: Ipv4Addr::from(0x0a00_0000 | self.addresses),
                    sidecar: sidecar(i),
                }
            })
            .collect();
        Service {
            name,
            protocol,
            workloads,
        }
    }

    /// An address no Workload has had: 172.16.0.0/12 (the generated ones are in 10.0.0.0/8).
    fn fresh_address(&mut self) -> anyhow::Result<Ipv4Addr> {
        self.addresses += 1;
        let moved = self.addresses - u32::try_from(self.shape.endpoints).unwrap_or(0);
        ensure!(moved < (1 << 20), "too many changes");
        Ok(Ipv4Addr::from(0xac10_0000 | moved))
    }

    /// Deals the proxies over the application namespaces, and within one over its services
    /// (first Workload of each service, then the second, ...).
    fn pick_proxies(&mut self) -> anyhow::Result<()> {
        let app = self.shape.namespaces;
        for n in 0..app {
            let count = self.shape.proxies / app + usize::from(n < self.shape.proxies % app);
            let ns = &self.namespaces[n];
            let deepest = ns.services.iter().map(|s| s.workloads.len()).max();
            let mut picked = Vec::new();
            'deal: for i in 0..deepest.unwrap_or(0) {
                for service in &ns.services {
                    if picked.len() == count {
                        break 'deal;
                    }
                    if let Some(workload) = service.workloads.get(i) {
                        picked.push(ProxyRef {
                            name: workload.name.clone(),
                            namespace: ns.name.clone(),
                            service_account: service.name.clone(),
                            ns: n,
                        });
                    }
                }
            }
            ensure!(
                picked.len() == count,
                "namespace {} has {} Workloads, too few for {count} proxies: give more --endpoints",
                ns.name,
                picked.len()
            );
            self.proxies.extend(picked);
        }
        // Interleave the namespaces, so that any prefix of the list is spread over them.
        self.proxies.sort_by_key(|p| {
            let rank = p
                .name
                .rsplit('-')
                .next()
                .and_then(|i| i.parse::<usize>().ok());
            (rank, p.service_account.clone(), p.ns)
        });
        Ok(())
    }

    /// Where proxy `p`'s Workload is: namespace, service and workload indexes.
    fn locate(&self, p: usize) -> anyhow::Result<(usize, usize, usize)> {
        let proxy = &self.proxies[p];
        let ns = &self.namespaces[proxy.ns];
        for (s, service) in ns.services.iter().enumerate() {
            if let Some(w) = service.workloads.iter().position(|w| w.name == proxy.name) {
                return Ok((proxy.ns, s, w));
            }
        }
        bail!("proxy {} has no Workload", proxy.name)
    }

    fn file(&self, dir: &Path, n: usize) -> PathBuf {
        dir.join(format!("{}.yaml", self.namespaces[n].name))
    }

    /// Namespace `n`'s file: its Services, each followed by its Workloads.
    fn render(&self, n: usize) -> String {
        let ns = &self.namespaces[n];
        let export = match (ns.shared, self.shape.export) {
            (true, _) => "\n  exportTo: [\"*\"]",
            (false, Export::Own) => "\n  exportTo: [\".\"]",
            (false, Export::All) => "",
        };
        let mut out = String::new();
        for service in &ns.services {
            let (port_name, port, protocol) = service.protocol;
            let _ = write!(
                out,
                "---\napiVersion: trellis.dev/v1alpha1\nkind: Service\n\
                 metadata: {{name: {svc}, namespace: {ns}}}\n\
                 spec:\n  selector: {{app: {svc}}}{export}\n  \
                 ports:\n    - {{name: {port_name}, port: {port}, protocol: {protocol}}}\n",
                svc = service.name,
                ns = ns.name,
            );
            for workload in &service.workloads {
                let _ = write!(
                    out,
                    "---\napiVersion: trellis.dev/v1alpha1\nkind: Workload\n\
                     metadata: {{name: {name}, namespace: {ns}, labels: {{app: {svc}}}}}\n\
                     spec:\n  serviceAccount: {svc}\n  address: {address}\n",
                    name = workload.name,
                    ns = ns.name,
                    svc = service.name,
                    address = workload.address,
                );
                if workload.sidecar {
                    let _ = writeln!(out, "  proxy: {{mesh: \"{}:15008\"}}", workload.address);
                }
            }
        }
        out
    }
}

impl Change {
    /// Puts the change in place (a rename: the control plane never sees half a file).
    pub fn commit(&self) -> anyhow::Result<()> {
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("cannot rename {} into place", self.tmp.display()))
    }

    pub fn file(&self) -> &Path {
        &self.path
    }
}

/// The kinds of the changes of a run of `rounds`: mostly endpoint moves in an application
/// namespace (the common case), a shared service's endpoint every fourth round, a new Service
/// every fourth.
pub fn plan(rounds: usize, shared: bool) -> Vec<ChangeKind> {
    (0..rounds)
        .map(|r| match r % 4 {
            2 if shared => ChangeKind::SharedEndpoint,
            3 => ChangeKind::AddService,
            _ => ChangeKind::Endpoint,
        })
        .collect()
}

const MESH_POLICY: &str = "\
# Mesh-wide mutual TLS, as examples/demo.
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: trellis-system}
spec:
  mtls: {mode: STRICT}
";

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_model::resources::{CompileOptions, Compiler, Resources};

    fn shape(export: Export, sidecars: Sidecars) -> Shape {
        Shape {
            proxies: 6,
            services: 12,
            endpoints: 40,
            namespaces: 3,
            shared: 2,
            export,
            sidecars,
        }
    }

    fn load(mesh: &Mesh) -> Resources {
        let mut files = vec![("mesh.yaml".to_owned(), MESH_POLICY.to_owned())];
        for n in 0..mesh.namespaces.len() {
            files.push((format!("{n}.yaml"), mesh.render(n)));
        }
        Resources::load(&files).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_generated_mesh_is_valid_and_has_the_numbers_asked_for() {
        let mesh = Mesh::generate(&shape(Export::Own, Sidecars::All)).unwrap();
        let resources = load(&mesh);
        assert_eq!(resources.services.len(), 12);
        assert_eq!(resources.workloads.len(), 40);
        assert_eq!(mesh.sidecars(), 40);
        assert_eq!(mesh.proxies().len(), 6);
        let namespaces: std::collections::BTreeSet<&str> = mesh
            .proxies()
            .iter()
            .map(|p| p.namespace.as_str())
            .collect();
        assert_eq!(namespaces.len(), 3, "{namespaces:?}");

        // A proxy sees its namespace's services and the shared ones, each with its endpoints.
        let compiler = Compiler::new(&resources, CompileOptions::default());
        let proxy = &mesh.proxies()[0];
        let config = compiler.proxy(&proxy.name, &proxy.namespace).unwrap();
        let seen: Vec<&str> = config
            .services
            .iter()
            .map(|s| s.namespace.as_str())
            .collect();
        assert!(
            seen.iter()
                .all(|ns| *ns == proxy.namespace || *ns == "platform"),
            "{seen:?}"
        );
        assert_eq!(
            seen.len(),
            10 / 3 + usize::from(proxy.ns < 10 % 3) + 2,
            "{seen:?}"
        );
        assert!(config.services.iter().all(|s| !s.endpoints.is_empty()));
        assert_eq!(config.mtls, trellis_model::MtlsMode::Strict);
    }

    #[test]
    fn exported_everywhere_every_proxy_sees_every_service() {
        let mesh = Mesh::generate(&shape(Export::All, Sidecars::Proxies)).unwrap();
        let resources = load(&mesh);
        assert_eq!(mesh.sidecars(), 6);
        let compiler = Compiler::new(&resources, CompileOptions::default());
        let proxy = &mesh.proxies()[5];
        let config = compiler.proxy(&proxy.name, &proxy.namespace).unwrap();
        assert_eq!(config.services.len(), 12);
    }

    #[test]
    fn a_change_names_the_proxies_that_see_it_and_stays_valid() {
        let dir = std::env::temp_dir().join(format!("control-scale-shape-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut mesh = Mesh::generate(&shape(Export::Own, Sidecars::All)).unwrap();
        let change = mesh.change(ChangeKind::Endpoint, 0, &dir).unwrap();
        let ns = &mesh.proxies()[change.expected[0]].namespace;
        assert!(
            change
                .expected
                .iter()
                .all(|&p| mesh.proxies()[p].namespace == *ns)
        );
        assert_eq!(change.expected.len(), 2);
        assert!(change.what.contains("-> 172.16.0.1"), "{}", change.what);
        let shared = mesh.change(ChangeKind::SharedEndpoint, 1, &dir).unwrap();
        assert_eq!(shared.expected.len(), 6);
        let added = mesh.change(ChangeKind::AddService, 2, &dir).unwrap();
        assert_eq!(added.expected.len(), 2);
        let resources = load(&mesh);
        assert_eq!(resources.services.len(), 13);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
