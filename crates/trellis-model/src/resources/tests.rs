use std::net::IpAddr;
use std::time::Duration;

use super::*;
use crate::{MtlsMode, Protocol};

/// A small shop: every kind, several documents per file, across two files.
const SHOP: &str = "\
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata:
  name: reviews
  namespace: shop
spec:
  selector: { app: reviews }
  ports:
    - { name: http, port: 9080, protocol: http }
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: reviews-v1, namespace: shop }
spec:
  selector: { app: reviews, version: v1 }
  ports: [{ name: http, port: 9080, protocol: http, targetPort: 8080 }]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: reviews-v2, namespace: shop }
spec:
  selector: { app: reviews, version: v2 }
  ports: [{ name: http, port: 9080, protocol: http }]
  addresses: [10.96.0.12]
  hostnames: [reviews.example]
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata:
  name: reviews-v1
  namespace: shop
  labels: { app: reviews }
spec:
  labels: { version: v1 }
  address: 127.0.0.1
  ports: { http: 19080 }
  proxy: { mesh: 127.0.0.1:15008, admin: 127.0.0.1:15000 }
";

const ROUTES: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: reviews, namespace: shop }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: reviews, port: 9080 }]
  rules:
    - matches:
        - path: { type: PathPrefix, value: /api }
          headers: [{ name: x-version, value: v2 }]
          method: GET
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{ name: x-routed, value: \"yes\" }]
            remove: [x-debug]
      backendRefs: [{ name: reviews-v2, port: 9080 }]
      timeouts: { request: 10s, backendRequest: 2s }
    - backendRefs:
        - { name: reviews-v1, port: 9080, weight: 90 }
        - { name: reviews-v2, port: 9080, weight: 10 }
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: reviews-grpc, namespace: shop }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: reviews }]
  rules:
    - matches: [{ method: { service: shop.v1.Reviews, method: List } }]
      backendRefs: [{ name: reviews-v1, port: 9080 }]
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: reviews, namespace: shop }
spec:
  targetRef: { kind: Service, name: reviews }
  loadBalancer: { type: ringHash, hashOn: { header: x-user } }
  retries: { attempts: 2, on: [5xx, \"503\", reset], perTryTimeout: 500ms }
  outlierDetection: { consecutive5xx: 3 }
  connectionLimits: { maxConnections: 100 }
  timeouts: { connect: 2s, request: 5s }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: default, namespace: trellis-system }
spec:
  mtls: { mode: STRICT }
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: { name: reviews, namespace: shop }
spec:
  selector: { matchLabels: { app: reviews } }
  mtls: { mode: UNSET }
  portLevelMtls:
    19080: { mode: PERMISSIVE }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: reviews, namespace: shop }
spec:
  selector: { matchLabels: { app: reviews } }
  action: ALLOW
  rules:
    - from:
        - source: { principals: [cluster.local/ns/shop/sa/frontend], ipBlocks: [10.0.0.0/8] }
      to:
        - operation: { methods: [GET], paths: [/api/*], ports: [\"9080\", 8080] }
      when:
        - { key: \"request.headers[x-user]\", values: [alice] }
";

fn load_ok(files: &[(&str, &str)]) -> Resources {
    match Resources::load(files) {
        Ok(resources) => resources,
        Err(errors) => panic!("expected valid resources, got:\n{errors}"),
    }
}

/// The errors as `(file, line, field, reason)`.
fn load_err(files: &[(&str, &str)]) -> Vec<(String, usize, String, String)> {
    let errors = Resources::load(files).expect_err("expected errors");
    let errors = errors.0.into_iter();
    errors
        .map(|e| (e.file, e.line.unwrap_or(0), e.field, e.reason))
        .collect()
}

/// The shop with `extra` appended to the routes file as more documents.
fn shop_with(extra: &str) -> Vec<(String, usize, String, String)> {
    let routes = format!("{ROUTES}---\n{extra}");
    load_err(&[("shop.yaml", SHOP), ("routes.yaml", &routes)])
}

/// Line (1-based) of `extra`'s line `n` (1-based) once appended to the routes file.
fn extra_line(n: usize) -> usize {
    ROUTES.lines().count() + 1 + n
}

#[track_caller]
fn assert_error(
    errors: &[(String, usize, String, String)],
    line: usize,
    field: &str,
    reason: &str,
) {
    assert!(
        errors
            .iter()
            .any(|(_, l, f, r)| *l == line && f == field && r.contains(reason)),
        "no error at line {line} on {field} containing {reason:?} in:\n{}",
        compact(errors)
    );
}

fn compact(errors: &[(String, usize, String, String)]) -> String {
    let lines = errors
        .iter()
        .map(|(file, line, field, reason)| format!("{file}:{line}: {field}: {reason}"));
    lines.collect::<Vec<_>>().join("\n")
}

#[test]
fn the_shop_loads_with_defaults_filled_in() {
    let r = load_ok(&[("shop.yaml", SHOP), ("routes.yaml", ROUTES)]);
    assert_eq!(r.len(), 10);
    assert_eq!(r.count(Kind::Service), 3);
    assert_eq!(r.count(Kind::PeerAuthentication), 2);

    let reviews = r.service("shop", "reviews").expect("reviews");
    assert_eq!(reviews.location.file, "shop.yaml");
    assert_eq!(reviews.location.line, 1);
    assert_eq!(reviews.spec.ports[0].protocol, Protocol::Http);
    let v1 = r.service("shop", "reviews-v1").expect("reviews-v1");
    assert_eq!(v1.location.line, 11);
    assert_eq!(v1.spec.ports[0].target_port, Some(8080));

    let w = r.workload("shop", "reviews-v1").expect("workload");
    let labels: Vec<(&str, &str)> = w
        .spec
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(labels, [("app", "reviews"), ("version", "v1")]);
    assert_eq!(w.spec.service_account, "default");
    assert_eq!(w.spec.ports["http"], 19080);
    assert_eq!(w.spec.proxy.expect("proxy").mesh.port(), 15008);
    assert_eq!(w.spec.app_port(&v1.spec.ports[0]), 19080);

    let route = &r.http_routes[0];
    assert_eq!(route.spec.parent_refs[0].port, Some(9080));
    let rule = &route.spec.rules[0];
    assert_eq!(rule.matches[0].path.value, "/api");
    assert_eq!(rule.matches[0].headers[0].kind, MatchKind::Exact);
    assert_eq!(rule.backend_refs[0].weight, 1, "weight defaults to 1");
    assert_eq!(rule.timeouts.backend_request, Some(Duration::from_secs(2)));
    let split = &route.spec.rules[1];
    assert_eq!(
        split.matches,
        vec![HttpRouteMatch::default()],
        "matches default to PathPrefix /"
    );
    assert_eq!(split.backend_refs[0].weight, 90);
    assert_eq!(split.matches[0].path.kind, PathMatchKind::PathPrefix);

    let grpc = &r.grpc_routes[0].spec.rules[0].matches[0];
    let method = grpc.method.as_ref().expect("method");
    assert_eq!(
        (method.kind, method.method.as_deref()),
        (MatchKind::Exact, Some("List"))
    );

    let policy = &r.traffic_policies[0].spec;
    assert_eq!(policy.target, "reviews");
    let lb = policy.load_balancer.as_ref().expect("lb");
    assert_eq!(lb.hash_on, Some(HashOn::Header("x-user".to_string())));
    let retries = policy.retries.as_ref().expect("retries");
    assert_eq!(
        retries.on,
        [RetryOn::ServerError, RetryOn::Status(503), RetryOn::Reset]
    );
    let outlier = policy.outlier_detection.expect("outlier");
    assert_eq!(outlier.consecutive_5xx, 3);
    assert_eq!(
        outlier.interval,
        Duration::from_secs(10),
        "defaults fill the rest"
    );

    let pa = &r.peer_authentications[1].spec;
    assert_eq!(pa.mtls, None, "UNSET inherits");
    assert_eq!(pa.port_level_mtls[&19080], Some(MtlsMode::Permissive));
    let authz = &r.authorization_policies[0].spec;
    assert_eq!(authz.action, AuthorizationAction::Allow);
    let rule = &authz.rules[0];
    assert_eq!(rule.from[0].ip_blocks[0].to_string(), "10.0.0.0/8");
    assert_eq!(rule.to[0].ports, [9080, 8080]);
    assert_eq!(rule.when[0].key, "request.headers[x-user]");
}

#[test]
fn a_misspelt_kind_gets_a_hint() {
    let text = SHOP.replace("kind: Workload", "kind: workloads");
    let errors = load_err(&[("shop.yaml", &text)]);
    assert_error(
        &errors,
        28,
        "kind",
        "\"workloads\" is not a kind Trellis knows; did you mean Workload? (known: ",
    );
    assert_eq!(errors.len(), 1, "{}", compact(&errors));
}

#[test]
fn empty_documents_and_files_are_fine() {
    let r = load_ok(&[
        ("a.yaml", ""),
        ("b.yaml", "---\n# nothing\n---\n"),
        ("c.yaml", SHOP),
    ]);
    assert_eq!(r.count(Kind::Service), 3);
}

#[test]
fn every_error_at_once_with_file_line_and_field() {
    let broken = "\
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: broken, namespace: shop }
spec:
  selector: { app: broken }
  ports:
    - { name: http, port: 70000, protocol: htp }
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: w, namespace: shop }
spec:
  address: 127.0.0.300
  colour: blue
---
apiVersion: v1
kind: ConfigMap
metadata: { name: x }
spec: {}
---
kind: Service
apiVersion: trellis.dev/v1
metadata: { name: Bad_Name }
spec:
  ports: [{ name: http, port: 80, protocol: http }]
";
    let errors = load_err(&[("shop.yaml", SHOP), ("broken.yaml", broken)]);
    assert_error(
        &errors,
        7,
        "spec.ports[0].port",
        "70000 is not a port number",
    );
    assert_error(
        &errors,
        7,
        "spec.ports[0].protocol",
        "\"htp\" is not a protocol",
    );
    assert_error(&errors, 13, "spec.address", "not an IP address");
    assert_error(&errors, 14, "spec.colour", "unknown field \"colour\"");
    assert_error(
        &errors,
        17,
        "kind",
        "\"ConfigMap\" is not a kind Trellis knows (known: trellis.dev/v1alpha1 Service",
    );
    assert_error(
        &errors,
        22,
        "apiVersion",
        "write apiVersion: trellis.dev/v1alpha1",
    );
    assert_error(
        &errors,
        23,
        "metadata.name",
        "\"Bad_Name\" is not a DNS label",
    );
    assert_eq!(errors.len(), 7, "{errors:#?}");
    assert!(errors.iter().all(|(file, ..)| file == "broken.yaml"));
    let lines: Vec<usize> = errors.iter().map(|e| e.1).collect();
    assert!(lines.is_sorted(), "sorted by line: {lines:?}");
}

#[test]
fn a_syntax_error_spoils_only_its_document() {
    let text = "\
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: a
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: b }
spec: { address: nowhere }
";
    let errors = load_err(&[("w.yaml", text)]);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].3.starts_with("invalid YAML"), "{errors:#?}");
    assert!((3..=4).contains(&errors[0].1), "{errors:#?}");
    assert_error(
        &errors,
        8,
        "spec.address",
        "\"nowhere\" is not an IP address",
    );
}

#[test]
fn documents_must_be_resources() {
    let errors = load_err(&[("x.yaml", "- a\n- b\n---\njust text\n---\nkind: Service\n")]);
    assert_error(
        &errors,
        1,
        "",
        "expected a resource (a mapping with apiVersion, kind, metadata and spec), found a list",
    );
    assert_error(&errors, 4, "", "found \"just text\"");
    assert_error(
        &errors,
        6,
        "apiVersion",
        "missing required field \"apiVersion\"",
    );
    assert_error(
        &errors,
        6,
        "metadata",
        "missing required field \"metadata\"",
    );
    assert_error(&errors, 6, "spec", "missing required field \"spec\"");
    assert_eq!(errors.len(), 5, "{errors:#?}");
}

#[test]
fn duplicates_name_the_first_file_and_line() {
    let again = "\
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: reviews, namespace: shop }
spec:
  ports: [{ name: http, port: 80, protocol: http }]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: reviews }
spec:
  ports: [{ name: http, port: 80, protocol: http }]
";
    let errors = load_err(&[("shop.yaml", SHOP), ("again.yaml", again)]);
    assert_eq!(
        errors.len(),
        1,
        "another namespace is another name: {errors:#?}"
    );
    assert_error(
        &errors,
        3,
        "metadata.name",
        "Service \"reviews\" is defined twice in namespace \"shop\" (first at shop.yaml:4)",
    );
}

#[test]
fn references_to_services_and_ports_must_resolve() {
    let routes = ROUTES
        .replace(
            "{ name: reviews-v2, port: 9080, weight: 10 }",
            "{ name: reviews-v2, port: 9081, weight: 10 }",
        )
        .replace(
            "targetRef: { kind: Service, name: reviews }",
            "targetRef: { kind: Service, name: reveiws }",
        )
        .replace(
            "kind: Service, name: reviews }",
            "kind: Service, name: ratings }",
        );
    let errors = load_err(&[("shop.yaml", SHOP), ("routes.yaml", &routes)]);
    assert_error(
        &errors,
        20,
        "spec.rules[1].backendRefs[1].port",
        "Service \"reviews-v2\" has no port 9081 (its ports: http 9080)",
    );
    assert_error(
        &errors,
        26,
        "spec.parentRefs[0].name",
        "no Service \"ratings\" in namespace \"shop\" (Services there: reviews, reviews-v1, reviews-v2)",
    );
    assert_error(&errors, 35, "spec.targetRef.name", "no Service \"reveiws\"");
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn gamma_parent_refs() {
    let errors = shop_with(
        "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: r, namespace: shop }
spec:
  parentRefs:
    - { name: reviews }
    - { kind: Service, name: reviews }
    - { group: \"\", kind: Service, name: reviews, port: 80 }
    - { group: \"\", kind: Service, name: reviews, namespace: other }
  rules:
    - backendRefs: [{ name: reviews, port: 9080, namespace: other }]
",
    );
    assert_error(
        &errors,
        extra_line(6),
        "spec.parentRefs[0]",
        "kind defaults to Gateway",
    );
    assert_error(
        &errors,
        extra_line(7),
        "spec.parentRefs[1].kind",
        "add group: \"\"",
    );
    assert_error(
        &errors,
        extra_line(8),
        "spec.parentRefs[2].port",
        "has no port 80",
    );
    assert_error(
        &errors,
        extra_line(9),
        "spec.parentRefs[3].name",
        "no Service \"reviews\" in namespace \"other\"",
    );
    assert_error(
        &errors,
        extra_line(11),
        "spec.rules[0].backendRefs[0].namespace",
        "needs a ReferenceGrant",
    );
    assert_eq!(errors.len(), 5, "{errors:#?}");
}

#[test]
fn a_route_on_a_tcp_port_is_refused() {
    let stock = "\
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: stock, namespace: shop }
spec:
  ports: [{ name: tcp, port: 7070, protocol: tcp }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: stock, namespace: shop }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: stock }]
";
    let errors = load_err(&[("stock.yaml", stock)]);
    assert_error(
        &errors,
        11,
        "spec.parentRefs[0].name",
        "Service \"stock\" port 7070 (tcp) is opaque TCP",
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
}

#[test]
fn http_route_rules_follow_the_gateway_api() {
    let errors = shop_with(
        "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: r, namespace: shop }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: reviews }]
  hostnames: [\"*.example.com\", \"Not A Host\"]
  rules:
    - matches:
        - path: { type: RegularExpression, value: \"/api/(v1\" }
          headers: [{ name: x-a, value: \"1\" }, { name: X-A, value: \"2\" }]
        - path: { type: Exact, value: api }
          method: FETCH
      filters:
        - type: URLRewrite
          urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /v2 } }
        - type: RequestRedirect
          requestRedirect: { statusCode: 304 }
        - type: RequestHeaderModifier
          responseHeaderModifier: { set: [{ name: a, value: b }] }
        - type: ExtensionRef
          extensionRef: { group: x, kind: y, name: z }
      backendRefs: [{ name: reviews-v1, port: 9080, weight: 2000000 }]
      timeouts: { request: 1s, backendRequest: 1.5s }
    - backendRefs: [{ name: reviews-v1 }]
      timeouts: { request: 1s, backendRequest: 2s }
",
    );
    let l = extra_line;
    assert_error(&errors, l(6), "spec.hostnames[1]", "is not a host name");
    assert_error(
        &errors,
        l(9),
        "spec.rules[0].matches[0].path.value",
        "\"/api/(v1\" is not a valid regular expression",
    );
    assert_error(
        &errors,
        l(10),
        "spec.rules[0].matches[0].headers[1].name",
        "header \"x-a\" is listed twice",
    );
    assert_error(
        &errors,
        l(11),
        "spec.rules[0].matches[1].path.value",
        "must start with \"/\"",
    );
    assert_error(
        &errors,
        l(12),
        "spec.rules[0].matches[1].method",
        "\"FETCH\" is not an HTTP method",
    );
    assert_error(
        &errors,
        l(15),
        "spec.rules[0].filters[0].urlRewrite.path.type",
        "exactly one match",
    );
    assert_error(
        &errors,
        l(16),
        "spec.rules[0].filters[1].type",
        "may not have both URLRewrite",
    );
    assert_error(
        &errors,
        l(16),
        "spec.rules[0].filters[1].type",
        "cannot be used together with backendRefs",
    );
    assert_error(
        &errors,
        l(17),
        "spec.rules[0].filters[1].requestRedirect.statusCode",
        "301, 302, 303, 307 or 308",
    );
    assert_error(
        &errors,
        l(18),
        "spec.rules[0].filters[2].requestHeaderModifier",
        "missing required field",
    );
    assert_error(
        &errors,
        l(19),
        "spec.rules[0].filters[2].responseHeaderModifier",
        "does not go with type RequestHeaderModifier",
    );
    assert_error(
        &errors,
        l(21),
        "spec.rules[0].filters[3].extensionRef.group",
        "\"x\" is not an extension group Trellis knows (Trellis's one extension filter is group trellis.dev, kind FaultInjection)",
    );
    assert_error(
        &errors,
        l(21),
        "spec.rules[0].filters[3].extensionRef.kind",
        "\"y\" is not an extension filter Trellis knows",
    );

    assert_error(
        &errors,
        l(22),
        "spec.rules[0].backendRefs[0].weight",
        "2000000 is out of range",
    );
    assert_error(
        &errors,
        l(23),
        "spec.rules[0].timeouts.backendRequest",
        "not a Gateway API duration",
    );
    assert_error(
        &errors,
        l(24),
        "spec.rules[1].backendRefs[0].port",
        "missing required field \"port\"",
    );
    assert_error(
        &errors,
        l(25),
        "spec.rules[1].timeouts.backendRequest",
        "longer than the request timeout",
    );
    assert_eq!(errors.len(), 17, "{errors:#?}");
}

#[test]
fn fault_injections_and_the_routes_that_use_them() {
    let good = "\
apiVersion: trellis.dev/v1alpha1
kind: FaultInjection
metadata: { name: flaky, namespace: shop }
spec:
  delay: { fixedDelay: 100ms, percentage: 10 }
  abort: { httpStatus: 503, grpcStatus: UNAVAILABLE, percentage: { value: 0.5 } }
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: g, namespace: shop }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: reviews }]
  rules:
    - filters:
        - type: ExtensionRef
          extensionRef: { group: trellis.dev, kind: FaultInjection, name: flaky }
        - type: RequestMirror
          requestMirror:
            backendRef: { name: reviews-v2, port: 9080 }
            fraction: { numerator: 1, denominator: 3 }
      backendRefs: [{ name: reviews-v1, port: 9080 }]
";
    let routes = format!("{ROUTES}---\n{good}");
    let r = load_ok(&[("shop.yaml", SHOP), ("routes.yaml", &routes)]);
    let fault = &r.fault_injections[0].spec;
    assert_eq!(
        fault.delay,
        Some(FaultDelay {
            fixed_delay: Duration::from_millis(100),
            percentage: crate::Percent::new(10.0).unwrap(),
        })
    );
    let abort = fault.abort.unwrap();
    assert_eq!((abort.http_status, abort.grpc_status), (503, Some(14)));
    assert_eq!(abort.percentage.per_million(), 5_000);
    let rule = &r.grpc_routes[1].spec.rules[0];
    let GrpcFilter::RequestMirror(mirror) = &rule.filters[1] else {
        panic!("{:?}", rule.filters)
    };
    assert_eq!(mirror.percent, crate::Percent::fraction(1, 3));

    let errors = shop_with(
        "\
apiVersion: trellis.dev/v1alpha1
kind: FaultInjection
metadata: { name: bad, namespace: shop }
spec:
  delay: { fixedDelay: 0s, percentage: 120 }
  abort: { httpStatus: 100, grpcStatus: SOMETIMES }
---
apiVersion: trellis.dev/v1alpha1
kind: FaultInjection
metadata: { name: empty, namespace: shop }
spec: {}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: h, namespace: shop }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: reviews }]
  rules:
    - filters:
        - type: ExtensionRef
          extensionRef: { group: trellis.dev, kind: FaultInjection, name: missing }
        - type: ExtensionRef
          extensionRef: { group: trellis.dev, kind: FaultInjection, name: bad }
        - type: RequestMirror
          requestMirror:
            backendRef: { name: reviews-v2, port: 9080 }
            percent: 10
            fraction: { numerator: 2, denominator: 1 }
      backendRefs: [{ name: reviews-v1, port: 9080 }]
",
    );
    let l = extra_line;
    assert_error(
        &errors,
        l(5),
        "spec.delay.fixedDelay",
        "must be more than 0s",
    );
    assert_error(
        &errors,
        l(5),
        "spec.delay.percentage",
        "120 is not a percentage (a number from 0 to 100)",
    );
    assert_error(
        &errors,
        l(6),
        "spec.abort.httpStatus",
        "100 is not an HTTP status for an abort (200 to 599)",
    );
    assert_error(
        &errors,
        l(6),
        "spec.abort.grpcStatus",
        "\"SOMETIMES\" is not a gRPC status (a number from 0 to 16, or one of: OK, CANCELLED",
    );
    assert_error(
        &errors,
        l(11),
        "spec",
        "a FaultInjection needs a delay, an abort or both",
    );
    assert_error(
        &errors,
        l(21),
        "spec.rules[0].filters[0].extensionRef.name",
        "no FaultInjection \"missing\" in namespace \"shop\" (FaultInjections there: bad, empty)",
    );
    assert_error(
        &errors,
        l(22),
        "spec.rules[0].filters[1].type",
        "a rule may have one ExtensionRef filter (the first is filters[0])",
    );
    assert_error(
        &errors,
        l(28),
        "spec.rules[0].filters[2].requestMirror.fraction",
        "2/1 is not a fraction of the requests",
    );
    assert_error(
        &errors,
        l(28),
        "spec.rules[0].filters[2].requestMirror.fraction",
        "give percent or fraction, not both",
    );
    assert_eq!(errors.len(), 9, "{errors:#?}");
}

#[test]
fn filter_combinations_within_a_rule() {
    let errors = shop_with(
        "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: r, namespace: shop }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: reviews }]
  rules:
    - matches: [{ path: { type: Exact, value: /a } }]
      filters:
        - type: URLRewrite
          urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /v2 } }
        - type: RequestRedirect
          requestRedirect: { scheme: https }
        - type: RequestMirror
          requestMirror: { backendRef: { name: reviews-v2, port: 9999 }, percent: 10 }
        - type: RequestMirror
          requestMirror: { backendRef: { name: reviews-v1, port: 9080 } }
        - type: ResponseHeaderModifier
          responseHeaderModifier: { add: [{ name: X-A, value: \"1\" }, { name: x-a, value: \"2\" }], remove: [x-a] }
      backendRefs: [{ name: reviews-v1, port: 9080 }]
",
    );
    let l = extra_line;
    assert_error(
        &errors,
        l(10),
        "spec.rules[0].filters[0].urlRewrite.path.type",
        "exactly one match, with a PathPrefix path",
    );
    assert_error(
        &errors,
        l(11),
        "spec.rules[0].filters[1].type",
        "may not have both URLRewrite (filters[0]) and RequestRedirect",
    );
    assert_error(
        &errors,
        l(11),
        "spec.rules[0].filters[1].type",
        "cannot be used together with backendRefs",
    );
    assert_error(
        &errors,
        l(14),
        "spec.rules[0].filters[2].requestMirror.backendRef.port",
        "Service \"reviews-v2\" has no port 9999",
    );
    assert_error(
        &errors,
        l(18),
        "spec.rules[0].filters[4].responseHeaderModifier.add[1].name",
        "header \"x-a\" is listed twice",
    );
    assert_eq!(errors.len(), 5, "{errors:#?}");
}

#[test]
fn grpc_route_method_matches() {
    let errors = shop_with(
        "\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: g, namespace: shop }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: reviews }]
  rules:
    - matches:
        - method: { type: Exact }
        - method: { service: shop/Reviews, method: \"1List\" }
        - method: { type: RegularExpression, service: \"shop\\\\.(v1|v2\" }
      filters:
        - type: URLRewrite
          urlRewrite: {}
      backendRefs: [{ name: reviews, port: 9080 }]
",
    );
    let l = extra_line;
    assert_error(
        &errors,
        l(8),
        "spec.rules[0].matches[0].method",
        "give service, method or both",
    );
    assert_error(
        &errors,
        l(9),
        "spec.rules[0].matches[1].method.service",
        "is not a gRPC service name",
    );
    assert_error(
        &errors,
        l(9),
        "spec.rules[0].matches[1].method.method",
        "is not a gRPC method name",
    );
    assert_error(
        &errors,
        l(10),
        "spec.rules[0].matches[2].method.service",
        "not a valid regular expression",
    );
    assert_error(
        &errors,
        l(12),
        "spec.rules[0].filters[0].type",
        "\"URLRewrite\" is not a filter type",
    );
    assert_error(
        &errors,
        l(13),
        "spec.rules[0].filters[0].urlRewrite",
        "unknown field",
    );
    assert_eq!(errors.len(), 6, "{errors:#?}");
}

#[test]
fn traffic_policy_shapes() {
    let errors = shop_with(
        "\
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: again, namespace: shop }
spec:
  targetRef: { kind: Deployment, name: reviews }
  loadBalancer: { type: maglev }
  retries: { attempts: 11, on: [5xx, teapot, \"700\"], perTryTimeout: 30s }
  outlierDetection: { consecutive5xx: 0, maxEjectionPercent: 101 }
  connectionLimits: { maxRequests: 0 }
  timeouts: { connect: 0s, request: 10s }
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: hashing, namespace: shop }
spec:
  targetRef: { kind: Service, name: reviews-v1 }
  loadBalancer: { type: roundRobin, hashOn: { header: x-user, sourceIP: true } }
  retries:
    attempts: 1
    backoff: { baseInterval: 100ms, maxInterval: 50ms }
---
apiVersion: trellis.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: backoff, namespace: shop }
spec:
  targetRef: { kind: Service, name: reviews-v2 }
  retries: { attempts: 1, backoff: { baseInterval: 0s, maxSleep: 1s } }
",
    );
    let l = extra_line;
    assert_error(
        &errors,
        l(5),
        "spec.targetRef.kind",
        "applies to a Service, not \"Deployment\"",
    );
    assert_error(
        &errors,
        l(5),
        "spec.targetRef.name",
        "Service \"reviews\" already has TrafficPolicy \"reviews\" (routes.yaml:",
    );
    assert_error(
        &errors,
        l(6),
        "spec.loadBalancer.type",
        "a consistent hash needs hashOn",
    );
    assert_error(&errors, l(7), "spec.retries.attempts", "11 is out of range");
    assert_error(
        &errors,
        l(7),
        "spec.retries.on[1]",
        "\"teapot\" is not a retry condition (expected an HTTP status",
    );
    assert_error(
        &errors,
        l(7),
        "spec.retries.on[2]",
        "\"700\" is not a retry condition",
    );
    assert_error(
        &errors,
        l(7),
        "spec.retries.perTryTimeout",
        "30s is longer than timeouts.request (10s)",
    );
    assert_error(
        &errors,
        l(8),
        "spec.outlierDetection.consecutive5xx",
        "must be at least 1",
    );
    assert_error(
        &errors,
        l(8),
        "spec.outlierDetection.maxEjectionPercent",
        "101 is out of range",
    );
    assert_error(
        &errors,
        l(9),
        "spec.connectionLimits.maxRequests",
        "must be at least 1",
    );
    assert_error(
        &errors,
        l(10),
        "spec.timeouts.connect",
        "must be more than 0s",
    );
    assert_error(
        &errors,
        l(17),
        "spec.loadBalancer.hashOn",
        "only to the ringHash and maglev",
    );
    assert_error(
        &errors,
        l(17),
        "spec.loadBalancer.hashOn",
        "exactly one of header, cookie or sourceIP (found header, sourceIP)",
    );
    assert_error(
        &errors,
        l(20),
        "spec.retries.backoff.maxInterval",
        "50ms is shorter than baseInterval (100ms)",
    );
    assert_error(
        &errors,
        l(27),
        "spec.retries.backoff.baseInterval",
        "must be more than 0s",
    );
    assert_error(
        &errors,
        l(27),
        "spec.retries.backoff.maxSleep",
        "unknown field \"maxSleep\" (expected one of: baseInterval, maxInterval)",
    );
    assert_eq!(errors.len(), 16, "{errors:#?}");
}

#[test]
fn peer_authentication_conflicts() {
    let errors = shop_with(
        "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: also-mesh-wide, namespace: trellis-system }
spec: { mtls: { mode: DISABLE } }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: v1, namespace: shop }
spec:
  selector: { matchLabels: { version: v1 } }
  mtls: { mode: strict }
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: { name: ports, namespace: shop }
spec:
  portLevelMtls: { \"0\": { mode: STRICT } }
",
    );
    let l = extra_line;
    assert_error(
        &errors,
        l(3),
        "metadata.name",
        "namespace \"trellis-system\" already has a PeerAuthentication without a selector (\"default\" at routes.yaml:",
    );
    assert_error(
        &errors,
        l(10),
        "spec.selector",
        "Workload \"reviews-v1\" is also selected by PeerAuthentication \"reviews\"",
    );
    assert_error(
        &errors,
        l(11),
        "spec.mtls.mode",
        "\"strict\" is not an mTLS mode (expected one of: UNSET, DISABLE, PERMISSIVE, STRICT)",
    );
    assert_error(
        &errors,
        l(17),
        "spec.portLevelMtls",
        "add selector.matchLabels",
    );
    assert_error(
        &errors,
        l(17),
        "spec.portLevelMtls.0",
        "\"0\" is not a port number",
    );
    assert_eq!(errors.len(), 5, "{errors:#?}");
}

#[test]
fn authorization_policy_shapes() {
    let errors = shop_with(
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: bad, namespace: shop }
spec:
  action: AUDIT
  rules:
    - from: []
      to: [{ operation: {} }]
    - from:
        - source: { principals: [spiffe://cluster.local/ns/shop/sa/a], ipBlocks: [10.0.0.0/33] }
      to: [{ operation: { ports: [\"http\"] } }]
      when:
        - { key: source.ips, values: [a] }
        - { key: destination.port }
        - { key: source.ip, notValues: [nowhere] }
",
    );
    let l = extra_line;
    assert_error(
        &errors,
        l(5),
        "spec.action",
        "\"AUDIT\" is an Istio action Trellis does not support",
    );
    assert_error(&errors, l(7), "spec.rules[0].from", "must not be empty");
    assert_error(
        &errors,
        l(8),
        "spec.rules[0].to[0].operation",
        "an operation needs at least one of",
    );
    assert_error(
        &errors,
        l(10),
        "spec.rules[1].from[0].source.principals[0]",
        "write \"cluster.local/ns/shop/sa/a\"",
    );
    assert_error(
        &errors,
        l(10),
        "spec.rules[1].from[0].source.ipBlocks[0]",
        "not an IP address or CIDR block",
    );
    assert_error(
        &errors,
        l(11),
        "spec.rules[1].to[0].operation.ports[0]",
        "\"http\" is not a port number",
    );
    assert_error(
        &errors,
        l(13),
        "spec.rules[1].when[0].key",
        "\"source.ips\" is not an attribute Istio knows",
    );
    assert_error(
        &errors,
        l(14),
        "spec.rules[1].when[1]",
        "needs values or notValues",
    );
    assert_error(
        &errors,
        l(15),
        "spec.rules[1].when[2].notValues[0]",
        "\"nowhere\" is not an IP address or CIDR block",
    );
    assert_eq!(errors.len(), 9, "{errors:#?}");
}

#[test]
fn workloads_against_their_services() {
    let errors = shop_with(
        "\
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata:
  name: reviews-v2
  namespace: shop
  labels: { app: reviews, version: v2 }
spec:
  labels: { app: ratings }
  address: 127.0.0.2
  ports: { http: 19081, grpc: 19082, \"9080\": 1 }
  proxy: { mesh: 127.0.0.1:15008, outbound: 127.0.0.2:15001, admin: 127.0.0.2:15001 }
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: lonely, namespace: shop }
spec:
  address: 10.0.0.1
  ports: { anything: 1 }
  serviceAccount: Not_Valid
",
    );
    let l = extra_line;
    assert_error(
        &errors,
        l(8),
        "spec.labels.app",
        "label \"app\" is \"ratings\" here but \"reviews\" in metadata.labels",
    );
    assert_error(
        &errors,
        l(10),
        "spec.ports.grpc",
        "\"grpc\" names no port of the Services that select this workload (their ports: reviews http 9080, reviews-v2 http 9080)",
    );
    assert_error(
        &errors,
        l(11),
        "spec.proxy.mesh",
        "127.0.0.1:15008 is also the mesh address of Workload \"shop/reviews-v1\" (shop.yaml:37)",
    );
    assert_error(
        &errors,
        l(11),
        "spec.proxy.admin",
        "127.0.0.2:15001 is also the outbound address",
    );
    assert_error(
        &errors,
        l(19),
        "spec.serviceAccount",
        "\"Not_Valid\" is not a DNS name",
    );
    assert_eq!(
        errors.len(),
        5,
        "a workload no Service selects may name any port: {errors:#?}"
    );
}

#[test]
fn one_app_port_has_one_protocol() {
    let text = "\
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: web }
spec:
  selector: { app: web }
  ports: [{ name: http, port: 80, protocol: http, targetPort: 8080 }]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: web-raw }
spec:
  selector: { app: web }
  ports: [{ name: raw, port: 81, protocol: tcp, targetPort: 8080 }]
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: web, labels: { app: web } }
spec:
  address: 10.0.0.1
  ports: { http: 8080 }
";
    let errors = load_err(&[("web.yaml", text)]);
    assert_error(
        &errors,
        20,
        "spec.ports",
        "the app's port 8080 serves port http of Service \"web\" (http) and port raw of Service \"web-raw\" (tcp)",
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let fixed = text.replace("ports: { http: 8080 }", "ports: { http: 8080, raw: 8081 }");
    load_ok(&[("web.yaml", &fixed)]);
}

#[test]
fn service_shapes_and_host_names() {
    let errors = shop_with(
        "\
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: other, namespace: shop }
spec:
  selector: { \"app.kubernetes.io/name\": other, \"bad key!\": x }
  ports:
    - { name: http, port: 9080, protocol: http }
    - { name: http, port: 9080, protocol: tcp }
  addresses: [10.96.0.12, 10.96.0.12]
  hostnames: [reviews.example, reviews-v1.shop.svc, UPPER.example]
---
apiVersion: trellis.dev/v1alpha1
kind: Service
metadata: { name: empty, namespace: shop }
spec:
  ports: []
",
    );
    let l = extra_line;
    assert_error(
        &errors,
        l(5),
        "spec.selector[\"bad key!\"]",
        "is not a label key",
    );
    assert_error(
        &errors,
        l(8),
        "spec.ports[1].name",
        "port name \"http\" is listed twice (first on line",
    );
    assert_error(
        &errors,
        l(8),
        "spec.ports[1].port",
        "port 9080 is listed twice",
    );
    assert_error(
        &errors,
        l(9),
        "spec.addresses[1]",
        "address 10.96.0.12 is listed twice",
    );
    assert_error(
        &errors,
        l(9),
        "spec.addresses[0]",
        "10.96.0.12:9080 already leads to Service \"shop/reviews-v2\"",
    );
    assert_error(
        &errors,
        l(10),
        "spec.hostnames[0]",
        "host name \"reviews.example\" already leads to Service \"shop/reviews-v2\" (shop.yaml:",
    );
    assert_error(
        &errors,
        l(10),
        "spec.hostnames[1]",
        "already leads to Service \"shop/reviews-v1\"",
    );
    assert_error(
        &errors,
        l(10),
        "spec.hostnames[2]",
        "\"UPPER.example\" is not a DNS name",
    );
    assert_error(&errors, l(16), "spec.ports", "must not be empty");
    assert_eq!(errors.len(), 9, "{errors:#?}");
}

#[test]
fn addresses_parse_in_both_families() {
    let text = SHOP.replace("address: 127.0.0.1", "address: \"fd00::7\"");
    let r = load_ok(&[("shop.yaml", &text)]);
    let w = r.workload("shop", "reviews-v1").expect("workload");
    assert_eq!(w.spec.address, "fd00::7".parse::<IpAddr>().unwrap());
}
