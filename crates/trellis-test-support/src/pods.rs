//! "Pods" on one machine, wired the way a Kubernetes node wires them: a network namespace
//! per workload, each with a veth (`eth0` inside) to a bridge that lives in a namespace of its
//! own (the "node"). Root only: without it [`Node::create`] prints that the test skipped
//! (under `CI=true` it fails instead).
//!
//! - Addresses: pods get `10.250.S.N/24` (the bridge is `10.250.S.1`, every pod's default
//!   route), services get virtual addresses `10.251.S.N`, resolved by each pod's own
//!   `/etc/hosts` (`/etc/netns/NAME/hosts`) so apps call services (and pods given a
//!   [`Node::host`] name) by name. Every test has its
//!   own node namespace and bridge, so nothing can collide with a parallel test or leave this
//!   machine; `S` still differs between tests so captures and logs are told apart.
//! - Sidecars: [`Pod::sidecar`] runs `trellis proxy` inside the pod as [`PROXY_UID`] (so the
//!   capture rules leave its own traffic alone) with Istio's ports (15000 admin, 15001
//!   outbound capture, 15006 inbound capture, 15008 mesh) and an mTLS identity from files
//!   issued by `trellis ca issue`; [`Pod::capture`] then runs `trellis iptables apply`.
//! - Teardown: every namespace, hosts file, process and directory is removed on drop, also
//!   when the test panics.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::dir::TestDir;
use crate::netns::{NetNs, write_hosts};
use crate::pcap::PacketCapture;
use crate::process::run;
use crate::proxy::{ProxyProcess, Trellis};
use crate::tools::require_tool;

/// The uid and gid every sidecar runs as (Istio's 1337).
pub const PROXY_UID: u32 = 1337;
pub const PROXY_GID: u32 = 1337;
/// The trust domain of the pods' identities.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The namespace (Kubernetes sense) of every workload.
pub const NAMESPACE: &str = "test";
/// The sidecar's mesh port (peers' mTLS).
pub const MESH_PORT: u16 = 15008;

/// The bridge and everything attached to it.
#[derive(Debug)]
pub struct Node {
    trellis: Trellis,
    subnet: u8,
    /// What every pod's `/etc/hosts` says.
    hosts: Vec<(IpAddr, Vec<String>)>,
    /// Every pod namespace's name, to rewrite the files when a name is added.
    pods: Vec<String>,
    next_pod: u8,
    next_vip: u8,
    /// Certificates for the sidecars, made on first use.
    ca: Option<TestDir>,
    // Last: the namespace (and the bridge with it) goes after everything above.
    ns: NetNs,
}

/// One workload's network namespace, on the node's bridge.
#[derive(Debug)]
pub struct Pod {
    name: String,
    ip: Ipv4Addr,
    trellis: Trellis,
    ns: NetNs,
}

const BRIDGE: &str = "br0";

impl Node {
    /// The node namespace with its bridge up at `10.250.S.1/24`. `None` (after printing
    /// `SKIPPED ...`) when not root or `ip`/`iptables`/`setpriv` is missing.
    pub fn create(label: &str, trellis: &Trellis) -> Option<Node> {
        let ns = NetNs::create(&format!("{label}-node"))?;
        if !require_tool("setpriv") {
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Not needed for isolation (each test has its own bridge), only to tell tests apart.
        let n = std::process::id().wrapping_mul(7) + NEXT.fetch_add(1, Ordering::Relaxed);
        let subnet = (n % 250) as u8 + 1;
        ns.output("ip", &["link", "add", BRIDGE, "type", "bridge"]);
        ns.output(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.250.{subnet}.1/24"),
                "dev",
                BRIDGE,
            ],
        );
        ns.output("ip", &["link", "set", BRIDGE, "up"]);
        Some(Node {
            trellis: trellis.clone(),
            subnet,
            hosts: Vec::new(),
            pods: Vec::new(),
            next_pod: 2,
            next_vip: 10,
            ca: None,
            ns,
        })
    }

    /// A new pod `name` at the next address. Its name is its workload's: the sidecar's
    /// identity is `spiffe://cluster.local/ns/test/sa/NAME`. (Give it a host name with
    /// [`Node::host`] when apps should call it directly.)
    pub fn pod(&mut self, name: &str) -> Pod {
        let ip = Ipv4Addr::new(10, 250, self.subnet, self.next_pod);
        self.next_pod += 1;
        let ns = NetNs::create(name).unwrap_or_else(|| panic!("pod {name}: no namespace"));
        // The veth is made inside the node namespace and its far end moved straight into the
        // pod, so no interface ever appears in the machine's own namespace.
        let veth = format!("veth{}", ip.octets()[3]);
        self.ns.output(
            "ip",
            &[
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ],
        );
        self.ns
            .output("ip", &["link", "set", &veth, "master", BRIDGE, "up"]);
        ns.output("ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.output("ip", &["link", "set", "eth0", "up"]);
        let gateway = format!("10.250.{}.1", self.subnet);
        ns.output("ip", &["route", "add", "default", "via", &gateway]);
        self.pods.push(ns.name().to_owned());
        self.write_hosts();
        Pod {
            name: name.to_owned(),
            ip,
            trellis: self.trellis.in_netns(&ns),
            ns,
        }
    }

    /// Every pod resolves `name` to `ip`.
    pub fn host(&mut self, name: &str, ip: Ipv4Addr) {
        self.hosts.push((ip.into(), vec![name.to_owned()]));
        self.write_hosts();
    }

    /// A service's virtual address, resolved from every pod as `name`, `name.test`,
    /// `name.test.svc` and `name.test.svc.cluster.local`. Nothing answers at it: only a
    /// sidecar that knows it (`services[].addresses`) makes it reachable.
    pub fn service(&mut self, name: &str) -> Ipv4Addr {
        let vip = Ipv4Addr::new(10, 251, self.subnet, self.next_vip);
        self.next_vip += 1;
        let names = [
            name.to_owned(),
            format!("{name}.{NAMESPACE}"),
            format!("{name}.{NAMESPACE}.svc"),
            format!("{name}.{NAMESPACE}.svc.{TRUST_DOMAIN}"),
        ];
        self.hosts.push((vip.into(), names.into()));
        self.write_hosts();
        vip
    }

    /// `tcpdump` on the bridge: every frame between the pods. `None` (after printing
    /// `SKIPPED ...`) when tcpdump is not installed.
    pub fn capture(&self) -> Option<PacketCapture> {
        require_tool("tcpdump").then(|| PacketCapture::start(self.ns.exec("tcpdump", &[]), BRIDGE))
    }

    /// The SPIFFE ID of workload `name`.
    pub fn spiffe_id(name: &str) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{name}")
    }

    /// Starts `pod`'s sidecar: `trellis proxy` inside the pod as [`PROXY_UID`], with Istio's
    /// ports, an identity for the pod's name, and `config` (YAML: `app`, `services`, `mtls`,
    /// ...) for the rest. Returns once the proxy is ready; capture is not on yet.
    pub fn sidecar(&mut self, pod: &Pod, config: &str) -> ProxyProcess {
        let identity = self.issue(&pod.name);
        let d = identity.display();
        let yaml = format!(
            "node: {{ name: {name}-0, namespace: {NAMESPACE}, workload: {name} }}
listeners:
  admin: 127.0.0.1:15000
  outbound_transparent: 0.0.0.0:15001
  inbound: 0.0.0.0:15006
  mesh: 0.0.0.0:{MESH_PORT}
identity:
  id: {id}
  bundle: {d}/root-cert.pem
  cert: {d}/cert-chain.pem
  key: {d}/key.pem
{config}",
            name = pod.name,
            id = Node::spiffe_id(&pod.name),
        );
        pod.trellis
            .as_user(PROXY_UID, PROXY_GID)
            .proxy(&format!("sidecar-{}", pod.name), &yaml)
    }

    /// Key and certificates for workload `name` in a directory of the CA's (removed with
    /// it), handed to the sidecar's user.
    fn issue(&mut self, name: &str) -> PathBuf {
        let trellis = self.trellis.clone();
        let ca = self.ca.get_or_insert_with(|| {
            let dir = TestDir::new("pods-ca");
            let mut init = trellis.command();
            init.args(["ca", "init", "--dir"])
                .arg(dir.join("ca"))
                .args(["--trust-domain", TRUST_DOMAIN]);
            let out = run("trellis ca init", init, Duration::from_secs(30));
            assert!(out.status.success(), "trellis ca init failed: {out:?}");
            dir
        });
        let out_dir = ca.join(name);
        let mut issue = trellis.command();
        issue
            .args(["ca", "issue", "--dir"])
            .arg(ca.join("ca"))
            .args(["--id", &Node::spiffe_id(name), "--out"])
            .arg(&out_dir);
        let out = run("trellis ca issue", issue, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "trellis ca issue {name} failed: {out:?}"
        );
        crate::dir::chown_tree(&out_dir, PROXY_UID, PROXY_GID);
        out_dir
    }

    fn write_hosts(&self) {
        for pod in &self.pods {
            write_hosts(pod, &self.hosts);
        }
    }
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// The binary, run inside this pod (as root, like the app).
    pub fn trellis(&self) -> &Trellis {
        &self.trellis
    }

    /// `program ARGS` inside the pod, as root (an app, a client).
    pub fn exec(&self, program: &str, args: &[&str]) -> Command {
        self.ns.exec(program, args)
    }

    /// `program ARGS` inside the pod as the sidecar's user.
    pub fn exec_as_proxy(&self, program: &str, args: &[&str]) -> Command {
        self.ns.exec_as(PROXY_UID, PROXY_GID, program, args)
    }

    /// Turns capture on: `trellis iptables apply --proxy-uid 1337 --proxy-gid 1337 ARGS`
    /// inside the pod (as an init container would). Panics with its output on failure.
    pub fn capture(&self, args: &[&str]) {
        let mut apply = self.trellis.command();
        apply
            .args(["iptables", "apply"])
            .args(["--proxy-uid", &PROXY_UID.to_string()])
            .args(["--proxy-gid", &PROXY_GID.to_string()])
            .args(args);
        let out = run("trellis iptables apply", apply, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "trellis iptables apply in pod {} failed: {}\n{}",
            self.name,
            out.stderr,
            out.stdout_text()
        );
    }
}
