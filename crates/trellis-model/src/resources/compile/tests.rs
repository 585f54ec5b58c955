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
fn traffic_policy_becomes_the_service_policy() {
    let r = resources(
        "\
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: web, namespace: shop }
spec:
  targetRef: { kind: Service, name: web }
  loadBalancer: { type: maglev, hashOn: { header: x-user } }
  retries:
    attempts: 2
    on: [5xx, \"409\"]
    perTryTimeout: 500ms
    backoff: { baseInterval: 10ms, maxInterval: 80ms }
    budget: { percent: 10, minRetriesPerSecond: 3 }
  outlierDetection: { consecutive5xx: 3, baseEjectionTime: 10s, maxEjectionPercent: 50 }
  connectionLimits: { maxRequests: 100 }
",
    );
    let config = proxy(&r, "web", "shop");
    let policy = service(&config, "web").policy.clone().expect("a policy");
    assert_eq!(policy.load_balancer.kind, proxy::LoadBalancerKind::Maglev);
    assert_eq!(
        policy.load_balancer.hash_on,
        Some(proxy::HashOn::Header("x-user".into()))
    );
    let retries = policy.retries.expect("retries");
    assert_eq!(retries.attempts, 2);
    assert_eq!(
        retries.on,
        [proxy::RetryOn::ServerError, proxy::RetryOn::Status(409)]
    );
    assert_eq!(retries.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(retries.backoff, Duration::from_millis(10));
    assert_eq!(retries.max_backoff, Some(Duration::from_millis(80)));
    assert_eq!(retries.budget.percent, 10);
    assert_eq!(retries.budget.min_retries_per_second, 3);
    let od = policy.outlier_detection.expect("outlier detection");
    assert_eq!(od.consecutive_5xx, 3);
    assert_eq!(od.base_ejection_time, Duration::from_secs(10));
    assert_eq!(od.max_ejection_percent, 50);
    assert_eq!(policy.limits.expect("limits").max_requests, Some(100));
    // Only timeouts: no policy.
    assert_eq!(service(&config, "ratings").policy, None);
    // What the compiler writes, the proxy's loader reads back.
    let json = serde_json::to_string(&config).expect("serializes");
    let loaded = ProxyConfig::from_yaml("compiled.json", &json).expect("valid");
    assert_eq!(loaded, config);
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

/// Backends for routes: `ratings-v1`/`ratings-v2` select one ratings workload each; the
/// namespace `frontend` has a caller `fe` and its own Service `canary` (ratings-b again: a
/// Service selects in its own namespace, so `canary` has a workload there).
const ROUTED: &str = "\
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: ratings-v1, namespace: shop }
spec:
  selector: { app: ratings, version: v1 }
  ports: [{ name: http, port: 9080, protocol: http, targetPort: 8080 }]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: ratings-v2, namespace: shop }
spec:
  selector: { app: ratings, version: v2 }
  ports: [{ name: http, port: 9080, protocol: http, targetPort: 8080 }]
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: fe, namespace: frontend, labels: { app: fe } }
spec:
  serviceAccount: fe
  address: 10.0.2.1
  proxy: { mesh: 10.0.2.1:15008 }
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: canary, namespace: frontend }
spec:
  selector: { app: canary }
  ports: [{ name: http, port: 8000, protocol: http }]
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: canary-0, namespace: frontend, labels: { app: canary } }
spec:
  serviceAccount: canary
  address: 10.0.2.2
  proxy: { mesh: 10.0.2.2:15008 }
";

/// A producer route on ratings: `x-version: v2` pins ratings-v2, the rest splits 90/10.
const PRODUCER: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: ratings-split, namespace: shop }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: ratings }]
  rules:
    - matches: [{ headers: [{ name: x-version, value: v2 }] }]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: { set: [{ name: x-routed, value: \"yes\" }], remove: [x-debug] }
        - type: RequestMirror
          requestMirror: { backendRef: { name: ratings-v1, port: 9080 } }
      backendRefs: [{ name: ratings-v2, port: 9080 }]
      timeouts: { request: 2s, backendRequest: 1s }
    - matches: [{ path: { type: PathPrefix, value: /old } }]
      filters:
        - type: RequestRedirect
          requestRedirect: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /new }, statusCode: 301 }
    - backendRefs:
        - { name: ratings-v1, port: 9080, weight: 90 }
        - { name: ratings-v2, port: 9080, weight: 10 }
";

/// A consumer route on ratings, for the callers in `frontend`, narrowed to port `port`.
fn consumer(port: Option<u16>) -> String {
    let port = port.map_or(String::new(), |p| format!(", port: {p}"));
    format!(
        "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: to-canary, namespace: frontend }}
spec:
  parentRefs: [{{ group: \"\", kind: Service, name: ratings, namespace: shop{port} }}]
  rules:
    - backendRefs: [{{ name: canary, port: 8000 }}]
      timeouts: {{ request: 100ms }}
"
    )
}

fn routed(extra: &[&str]) -> Resources {
    let mut docs = vec![ROUTED];
    docs.extend(extra);
    resources(&docs.join("---\n"))
}

fn route_names(config: &ProxyConfig, service_name: &str) -> Vec<(String, Option<u16>)> {
    service(config, service_name)
        .routes
        .iter()
        .map(|r| (r.name.clone(), r.port))
        .collect()
}

#[test]
fn a_service_without_routes_has_none() {
    let r = routed(&[]);
    let config = proxy(&r, "web", "shop");
    assert!(config.services.iter().all(|s| s.routes.is_empty()));
}

#[test]
fn producer_routes_apply_to_every_caller_with_backends_resolved() {
    let r = routed(&[PRODUCER]);
    let config = proxy(&r, "web", "shop");
    let ratings = service(&config, "ratings");
    assert_eq!(ratings.routes.len(), 1);
    let route = &ratings.routes[0];
    assert_eq!(route.name, "HTTPRoute shop/ratings-split");
    assert_eq!(route.port, None, "no parentRef port: every port");
    let [pinned, redirect, split] = route.rules.as_slice() else {
        panic!("{:#?}", route.rules);
    };

    // The header rule, with the Gateway API's default path (prefix /) written out.
    let m = &pinned.matches[0];
    let prefix = proxy::PathMatch {
        kind: proxy::PathMatchKind::Prefix,
        value: "/".to_string(),
    };
    assert_eq!(m.path.as_ref(), Some(&prefix));
    assert_eq!(
        m.headers,
        [proxy::ValueMatch {
            kind: proxy::ValueMatchKind::Exact,
            name: "x-version".to_string(),
            value: "v2".to_string(),
        }]
    );
    // The header modifier, then the mirror with its namespace written out.
    assert_eq!(
        pinned.filters,
        [
            proxy::RouteFilter::RequestHeaderModifier(proxy::HeaderModifier {
                set: vec![proxy::Header {
                    name: "x-routed".to_string(),
                    value: "yes".to_string(),
                }],
                add: Vec::new(),
                remove: vec!["x-debug".to_string()],
            }),
            proxy::RouteFilter::Mirror(proxy::RequestMirror {
                service: "ratings-v1".to_string(),
                namespace: Some("shop".to_string()),
                port: 9080,
                percent: crate::Percent::ALL,
            })
        ]
    );
    // One try: the shorter of request and backendRequest.
    assert_eq!(pinned.timeout, Some(Duration::from_secs(1)));

    let proxy::RouteFilter::RequestRedirect(r301) = &redirect.filters[0] else {
        panic!("{:?}", redirect.filters);
    };
    assert_eq!(r301.status_code, 301);
    assert_eq!(
        r301.path,
        Some(proxy::PathModifier::ReplacePrefixMatch("/new".to_string()))
    );
    assert!(redirect.backends.is_empty());

    // Backends are Services with their namespace written out, and the backend Service's port.
    let backends: Vec<(&str, Option<&str>, u16, u32)> = split
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.namespace.as_deref(), b.port, b.weight))
        .collect();
    assert_eq!(
        backends,
        [
            ("ratings-v1", Some("shop"), 9080, 90),
            ("ratings-v2", Some("shop"), 9080, 10)
        ]
    );
    assert_eq!(split.timeout, None);

    // Every caller, in any namespace, sees the producer route; the backends keep no routes.
    for (name, ns) in [
        ("legacy-db", "default"),
        ("fe", "frontend"),
        ("ratings-a", "shop"),
    ] {
        let other = proxy(&r, name, ns);
        assert_eq!(
            service(&other, "ratings").routes,
            ratings.routes,
            "{ns}/{name}"
        );
        assert!(service(&other, "ratings-v1").routes.is_empty());
    }
}

#[test]
fn consumer_routes_replace_producer_routes_for_their_namespace_only() {
    let consumer = consumer(None);
    let r = routed(&[PRODUCER, &consumer]);
    let fe = proxy(&r, "fe", "frontend");
    assert_eq!(
        route_names(&fe, "ratings"),
        [("HTTPRoute frontend/to-canary".to_string(), None)]
    );
    let rule = &service(&fe, "ratings").routes[0].rules[0];
    assert_eq!(rule.backends[0].service, "canary");
    assert_eq!(
        rule.backends[0].namespace.as_deref(),
        Some("frontend"),
        "the route's namespace, not the parent's"
    );
    assert_eq!(rule.timeout, Some(Duration::from_millis(100)));
    // Callers elsewhere never see it.
    for (name, ns) in [("web", "shop"), ("legacy-db", "default")] {
        assert_eq!(
            route_names(&proxy(&r, name, ns), "ratings"),
            [("HTTPRoute shop/ratings-split".to_string(), None)],
            "{ns}/{name}"
        );
    }
    // A consumer route alone (no producer route) works the same way.
    let r = routed(&[&consumer]);
    assert_eq!(
        route_names(&proxy(&r, "fe", "frontend"), "ratings").len(),
        1
    );
    assert!(route_names(&proxy(&r, "web", "shop"), "ratings").is_empty());
}

#[test]
fn a_parent_port_narrows_a_route_and_its_precedence() {
    // A producer route on port 9901 only.
    let narrowed = PRODUCER.replace(
        "name: ratings }]",
        "name: ratings, port: 9901 }, { group: \"\", kind: Service, name: ratings, port: 9901 }]",
    );
    let r = routed(&[&narrowed]);
    assert_eq!(
        route_names(&proxy(&r, "web", "shop"), "ratings"),
        [("HTTPRoute shop/ratings-split".to_string(), Some(9901))],
        "a parentRef given twice attaches once"
    );

    // A consumer route on 9080 replaces the producer route (every port) on 9080 only: the
    // producer route stays on 9901 for the consumer's callers.
    let consumer = consumer(Some(9080));
    let r = routed(&[PRODUCER, &consumer]);
    assert_eq!(
        route_names(&proxy(&r, "fe", "frontend"), "ratings"),
        [
            ("HTTPRoute shop/ratings-split".to_string(), Some(9901)),
            ("HTTPRoute frontend/to-canary".to_string(), Some(9080)),
        ]
    );
    assert_eq!(
        route_names(&proxy(&r, "web", "shop"), "ratings"),
        [("HTTPRoute shop/ratings-split".to_string(), None)]
    );
}

#[test]
fn routes_are_in_tie_break_order_by_namespace_then_name() {
    let second = PRODUCER.replace("name: ratings-split", "name: b-route");
    let first = PRODUCER.replace("name: ratings-split", "name: a-route");
    let grpc = "\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: a-route, namespace: shop }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: ratings, port: 9901 }]
  rules:
    - backendRefs: [{ name: ratings-v1, port: 9080 }]
";
    let r = routed(&[&second, grpc, &first]);
    let names: Vec<String> = route_names(&proxy(&r, "web", "shop"), "ratings")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        [
            "HTTPRoute shop/a-route",
            "GRPCRoute shop/a-route",
            "HTTPRoute shop/b-route"
        ]
    );
}

#[test]
fn grpc_methods_compile_to_paths() {
    let grpc = "\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: ratings-grpc, namespace: shop }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: ratings, port: 9901 }]
  rules:
    - matches:
        - method: { service: shop.v1.Ratings, method: Get }
        - method: { service: shop.v1.Ratings }
        - method: { method: List }
        - method: { type: RegularExpression, service: \"shop\\\\.v[0-9]+\\\\.Ratings\" }
          headers: [{ name: x-user, type: RegularExpression, value: \"a.*\" }]
        - headers: [{ name: x-user, value: bob }]
      filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: { add: [{ name: x-grpc-routed, value: \"1\" }] }
      backendRefs: [{ name: ratings-v2, port: 9080 }]
    - {}
";
    let r = routed(&[grpc]);
    let config = proxy(&r, "web", "shop");
    let route = &service(&config, "ratings").routes[0];
    assert_eq!(route.name, "GRPCRoute shop/ratings-grpc");
    assert_eq!(route.port, Some(9901));
    let paths: Vec<Option<(proxy::PathMatchKind, &str)>> = route.rules[0]
        .matches
        .iter()
        .map(|m| m.path.as_ref().map(|p| (p.kind, p.value.as_str())))
        .collect();
    use proxy::PathMatchKind::{Exact, Prefix, Regex};
    assert_eq!(
        paths,
        [
            Some((Exact, "/shop.v1.Ratings/Get")),
            Some((Prefix, "/shop.v1.Ratings")),
            Some((Regex, "/[^/]+/List")),
            Some((Regex, "/(?:shop\\.v[0-9]+\\.Ratings)/(?:[^/]+)")),
            None,
        ]
    );
    let headers = &route.rules[0].matches[3].headers[0];
    assert_eq!(headers.kind, proxy::ValueMatchKind::Regex);
    assert_eq!(route.rules[0].matches[4].headers[0].value, "bob");
    assert!(matches!(
        route.rules[0].filters[0],
        proxy::RouteFilter::ResponseHeaderModifier(_)
    ));
    // A rule with no matches matches every request; with no backends it answers 500.
    assert_eq!(route.rules[1], proxy::RouteRule::default());
}

#[test]
fn compiled_routes_pass_the_proxys_own_validation() {
    let consumer = consumer(Some(9080));
    let r = routed(&[PRODUCER, &consumer]);
    let compiler = Compiler::new(&r, CompileOptions::default());
    for workload in &r.workloads {
        let (name, ns) = (&workload.metadata.name, &workload.metadata.namespace);
        let config = compiler.proxy(name, ns).expect("compiles");
        let text = serde_json::to_string(&config).expect("serializes");
        match ProxyConfig::from_yaml("compiled.json", &text) {
            Ok(parsed) => assert_eq!(parsed, config),
            Err(errors) => panic!("the config of {ns}/{name} does not validate:\n{errors}"),
        }
    }
}

#[test]
fn a_fault_injection_becomes_the_rules_fault_filter() {
    let r = resources(&format!(
        "{ROUTED}---
apiVersion: trellis.dev/v1alpha1
kind: FaultInjection
metadata: {{ name: flaky, namespace: shop }}
spec:
  delay: {{ fixedDelay: 2s, percentage: 12.5 }}
  abort: {{ httpStatus: 500, grpcStatus: INTERNAL }}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{ name: faulty, namespace: shop }}
spec:
  parentRefs: [{{ group: \"\", kind: Service, name: ratings }}]
  rules:
    - filters:
        - type: ExtensionRef
          extensionRef: {{ group: trellis.dev, kind: FaultInjection, name: flaky }}
      backendRefs: [{{ name: ratings-v1, port: 9080 }}]
"
    ));
    let config = proxy(&r, "ratings-a", "shop");
    let rule = &service(&config, "ratings").routes[0].rules[0];
    assert_eq!(
        rule.filters,
        [proxy::RouteFilter::Fault(proxy::FaultInjection {
            delay: Some(proxy::FaultDelay {
                duration: Duration::from_secs(2),
                percent: crate::Percent::new(12.5).unwrap(),
            }),
            abort: Some(proxy::FaultAbort {
                status: 500,
                grpc_status: Some(13),
                percent: crate::Percent::ALL,
            }),
        })]
    );
    // What the compiler writes, the proxy's loader reads back.
    let json = serde_json::to_string(&config).expect("serializes");
    let loaded = ProxyConfig::from_yaml("compiled.json", &json).expect("valid");
    assert_eq!(loaded, config);
}
