use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::*;
use crate::{Identity, Protocol};

/// `ratings` has two instances, each with its sidecar; `web` calls it; `legacy` is outside
/// the mesh (no sidecar).
const MESH: &str = "\
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: ratings, namespace: shop }
spec:
  selector: { app: ratings }
  addresses: [10.96.0.20]
  hostnames: [ratings.example]
  ports:
    - { name: http, port: 9080, protocol: http, targetPort: 8080 }
    - { name: admin, port: 9901, protocol: http2 }
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: ratings-b, namespace: shop, labels: { app: ratings, version: v2 } }
spec:
  serviceAccount: ratings
  address: 10.0.0.12
  ports: { \"9080\": 18081 }
  proxy: { mesh: 10.0.0.12:15008 }
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: ratings-a, namespace: shop, labels: { app: ratings, version: v1 } }
spec:
  serviceAccount: ratings
  address: 10.0.0.11
  ports: { http: 18080, admin: 19901 }
  proxy: { mesh: 10.0.0.11:15008, admin: 10.0.0.11:15000 }
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: web, namespace: shop }
spec:
  selector: { app: web }
  ports: [{ name: http, port: 80, protocol: http }]
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: web, namespace: shop, labels: { app: web } }
spec:
  serviceAccount: web
  address: 10.0.0.20
  ports: { http: 8000 }
  proxy: { mesh: 10.0.0.20:15008 }
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: legacy }
spec:
  selector: { app: legacy }
  ports: [{ name: db, port: 5432, protocol: tcp }]
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: legacy-db, labels: { app: legacy } }
spec:
  address: 10.0.1.5
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: ratings, namespace: shop }
spec:
  targetRef: { kind: Service, name: ratings }
  timeouts: { request: 3s }
";

fn resources(extra: &str) -> Resources {
    let text = format!("{MESH}---\n{extra}");
    match Resources::load(&[("mesh.yaml", text.as_str())]) {
        Ok(resources) => resources,
        Err(errors) => panic!("expected valid resources, got:\n{errors}"),
    }
}

fn proxy(resources: &Resources, name: &str, namespace: &str) -> ProxyConfig {
    compile(resources, name, namespace, &CompileOptions::default()).expect("compiles")
}

fn service<'c>(config: &'c ProxyConfig, name: &str) -> &'c proxy::Service {
    let found = config.services.iter().find(|s| s.name == name);
    found.unwrap_or_else(|| panic!("no service {name} in {:#?}", config.services))
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

fn socket(text: &str) -> SocketAddr {
    text.parse().expect("a socket address")
}

#[test]
fn a_service_selecting_two_workloads_has_two_endpoints_with_identities() {
    let r = resources("");
    let config = proxy(&r, "web", "shop");
    let ratings = service(&config, "ratings");
    assert_eq!(ratings.namespace, "shop");
    assert_eq!(ratings.addresses, [ip("10.96.0.20")]);
    assert_eq!(ratings.hostnames, ["ratings.example"]);
    assert_eq!(ratings.endpoints.len(), 2);
    // Sorted by workload name, whatever the file order.
    let a = &ratings.endpoints[0];
    assert_eq!(a.workload.as_deref(), Some("ratings-a"));
    assert_eq!(a.namespace.as_deref(), Some("shop"));
    assert_eq!(a.address, ip("10.0.0.11"));
    assert_eq!(a.mesh, Some(socket("10.0.0.11:15008")));
    assert_eq!(
        a.identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/ratings")
    );
    let b = &ratings.endpoints[1];
    assert_eq!(b.workload.as_deref(), Some("ratings-b"));
    assert_eq!(b.mesh, Some(socket("10.0.0.12:15008")));
    assert_eq!(b.identity, a.identity, "one service account, one identity");
}

#[test]
fn ports_map_by_name_or_number() {
    let r = resources("");
    let config = proxy(&r, "web", "shop");
    let ratings = service(&config, "ratings");
    let (http, admin) = (&ratings.ports[0], &ratings.ports[1]);
    assert_eq!(
        (http.port, http.protocol, http.target_port),
        (9080, Protocol::Http, Some(8080))
    );
    assert_eq!(admin.protocol, Protocol::Http2);
    let (a, b) = (&ratings.endpoints[0], &ratings.endpoints[1]);
    // ratings-a by name, ratings-b by number; a port with no entry keeps the Service's target.
    assert_eq!(a.target(http), socket("10.0.0.11:18080"));
    assert_eq!(a.target(admin), socket("10.0.0.11:19901"));
    assert_eq!(b.target(http), socket("10.0.0.12:18081"));
    assert_eq!(b.target(admin), socket("10.0.0.12:9901"));
    assert_eq!(b.ports.len(), 1, "{:?}", b.ports);
    assert_eq!(b.ports["http"], 18081, "keyed by the port's name");

    // The app side of ratings-a: where its app listens for each port, with its protocol.
    let config = proxy(&r, "ratings-a", "shop");
    assert_eq!(config.app.address, ip("10.0.0.11"));
    let ports: Vec<(u16, Protocol)> = config
        .app
        .ports
        .iter()
        .map(|p| (p.port, p.protocol))
        .collect();
    assert_eq!(ports, [(18080, Protocol::Http), (19901, Protocol::Http2)]);
    let config = proxy(&r, "ratings-b", "shop");
    let ports: Vec<u16> = config.app.ports.iter().map(|p| p.port).collect();
    assert_eq!(ports, [9901, 18081]);
}

#[test]
fn a_workload_sees_every_service_and_its_own_node() {
    let r = resources("");
    let config = proxy(&r, "web", "shop");
    assert_eq!(config.node.name, "web");
    assert_eq!(config.node.namespace, "shop");
    assert_eq!(config.workload(), "web");
    let names: Vec<(&str, &str)> = config
        .services
        .iter()
        .map(|s| (s.namespace.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [("default", "legacy"), ("shop", "ratings"), ("shop", "web")]
    );
    // The caller's business.
    assert_eq!(config.listeners, Default::default());
    assert_eq!(config.identity, None);
    assert_eq!(config.control, None);
    // Another workload gets the same services.
    assert_eq!(proxy(&r, "ratings-a", "shop").services, config.services);
}

#[test]
fn a_workload_outside_the_mesh_is_reached_directly() {
    let r = resources("");
    let config = proxy(&r, "web", "shop");
    let legacy = &service(&config, "legacy").endpoints[0];
    assert_eq!(legacy.address, ip("10.0.1.5"));
    assert_eq!((legacy.mesh, legacy.identity.as_deref()), (None, None));
    assert_eq!(legacy.namespace.as_deref(), Some("default"));
}

#[test]
fn traffic_policy_timeouts_override_the_defaults() {
    let r = resources("");
    let config = proxy(&r, "web", "shop");
    let timeouts = service(&config, "ratings").timeouts.expect("timeouts");
    assert_eq!(timeouts.request, Duration::from_secs(3));
    assert_eq!(timeouts.connect, Timeouts::default().connect);
    assert_eq!(service(&config, "web").timeouts, None);
}

#[test]
fn peer_authentication_precedence() {
    let mesh_strict = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: trellis-system }
spec: { mtls: { mode: STRICT } }
";
    let shop_permissive = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: shop }
spec: { mtls: { mode: PERMISSIVE } }
";
    let v1_disable = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: v1, namespace: shop }
spec:
  selector: { matchLabels: { version: v1 } }
  mtls: { mode: DISABLE }
  portLevelMtls: { 18080: { mode: STRICT }, 19901: { mode: UNSET } }
";
    let v2_unset = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: v2, namespace: shop }
spec:
  selector: { matchLabels: { version: v2 } }
  portLevelMtls: { 9901: { mode: DISABLE } }
";
    let mode = |r: &Resources, name: &str| proxy(r, name, "shop").mtls;

    // Nothing: Istio's default.
    let r = resources("");
    assert_eq!(mode(&r, "web"), MtlsMode::Permissive);

    // The mesh's policy applies everywhere...
    let r = resources(mesh_strict);
    assert_eq!(mode(&r, "web"), MtlsMode::Strict);
    assert_eq!(proxy(&r, "legacy-db", "default").mtls, MtlsMode::Strict);

    // ... unless the namespace has its own ...
    let r = resources(&format!("{mesh_strict}---\n{shop_permissive}"));
    assert_eq!(mode(&r, "web"), MtlsMode::Permissive);
    assert_eq!(proxy(&r, "legacy-db", "default").mtls, MtlsMode::Strict);

    // ... unless the workload has its own; UNSET inherits.
    let all = format!("{mesh_strict}---\n{shop_permissive}---\n{v1_disable}---\n{v2_unset}");
    let r = resources(&all);
    let a = proxy(&r, "ratings-a", "shop");
    assert_eq!(a.mtls, MtlsMode::Disable);
    let ports: Vec<(u16, Option<MtlsMode>)> =
        a.app.ports.iter().map(|p| (p.port, p.mtls)).collect();
    assert_eq!(ports, [(18080, Some(MtlsMode::Strict)), (19901, None)]);
    let b = proxy(&r, "ratings-b", "shop");
    assert_eq!(b.mtls, MtlsMode::Permissive, "UNSET: the namespace's");
    let ports: Vec<(u16, Option<MtlsMode>)> =
        b.app.ports.iter().map(|p| (p.port, p.mtls)).collect();
    assert_eq!(ports, [(9901, Some(MtlsMode::Disable)), (18081, None)]);
    assert_eq!(mode(&r, "web"), MtlsMode::Permissive);

    // Another root namespace.
    let options = CompileOptions {
        root_namespace: "mesh".to_string(),
        ..CompileOptions::default()
    };
    let r = resources(mesh_strict);
    let config = compile(&r, "web", "shop", &options).expect("compiles");
    assert_eq!(
        config.mtls,
        MtlsMode::Permissive,
        "trellis-system is not the root now"
    );
}

#[test]
fn the_trust_domain_is_an_option() {
    let r = resources("");
    let options = CompileOptions {
        trust_domain: "shop.example".to_string(),
        ..CompileOptions::default()
    };
    let config = compile(&r, "web", "shop", &options).expect("compiles");
    let identity = service(&config, "web").endpoints[0].identity.clone();
    assert_eq!(
        identity.as_deref(),
        Some("spiffe://shop.example/ns/shop/sa/web")
    );
}

#[test]
fn an_unknown_workload_is_an_error_naming_those_there() {
    let r = resources("");
    let error = compile(&r, "wbe", "shop", &CompileOptions::default()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "no Workload \"wbe\" in namespace \"shop\" (Workloads there: ratings-a, ratings-b, web)"
    );
    let error = compile(&r, "web", "nope", &CompileOptions::default()).unwrap_err();
    assert!(
        error.to_string().ends_with("(Workloads there: none)"),
        "{error}"
    );
}

/// What compile produces, with the caller's identity and listeners added, is a config the
/// proxy accepts.
#[test]
fn the_compiled_config_passes_the_proxys_own_validation() {
    let r = resources(
        "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: trellis-system }
spec: { mtls: { mode: STRICT } }
",
    );
    let compiler = Compiler::new(&r, CompileOptions::default());
    for workload in &r.workloads {
        let (name, ns) = (&workload.metadata.name, &workload.metadata.namespace);
        let mut config = compiler.proxy(name, ns).expect("compiles");
        config.identity = Some(Identity {
            id: spiffe_id("cluster.local", ns, &workload.spec.service_account),
            bundle: "/etc/trellis/root-cert.pem".into(),
            cert: None,
            key: None,
            ca: Some(socket("127.0.0.1:15012")),
            join_token_file: Some("/etc/trellis/token".into()),
            cert_ttl: Duration::from_secs(3600),
        });
        // JSON is YAML: the proxy's loader reads it with every check.
        let text = serde_json::to_string(&config).expect("serializes");
        match ProxyConfig::from_yaml("compiled.json", &text) {
            Ok(parsed) => assert_eq!(parsed, config),
            Err(errors) => panic!("the config of {ns}/{name} does not validate:\n{errors}"),
        }
    }
}

#[test]
fn a_proxy_sees_only_the_services_exported_to_its_namespace() {
    let r = resources(
        "apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: internal, namespace: shop }
spec:
  exportTo: [\".\"]
  ports: [{ name: http, port: 80, protocol: http }]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: shared, namespace: shop }
spec:
  exportTo: [\".\", ops]
  ports: [{ name: http, port: 80, protocol: http }]
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: probe, namespace: ops }
spec:
  address: 10.0.2.1
  proxy: { mesh: 10.0.2.1:15008 }
",
    );
    let names = |c: &ProxyConfig| -> Vec<String> {
        c.services
            .iter()
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .collect()
    };
    let web = proxy(&r, "web", "shop");
    assert_eq!(
        names(&web),
        [
            "default/legacy",
            "shop/internal",
            "shop/ratings",
            "shop/shared",
            "shop/web"
        ]
    );
    let probe = proxy(&r, "probe", "ops");
    assert_eq!(
        names(&probe),
        ["default/legacy", "shop/ratings", "shop/shared", "shop/web"]
    );

    let bad = Resources::load(&[(
        "bad.yaml",
        "apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: x }
spec:
  exportTo: [\"Not A Namespace\"]
  ports: [{ name: http, port: 80, protocol: http }]
",
    )])
    .unwrap_err()
    .to_string();
    assert!(
        bad.contains("bad.yaml:5:") && bad.contains("spec.exportTo[0]"),
        "{bad}"
    );
}
