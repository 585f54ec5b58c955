use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{Value as Json, json};

use super::decode::authorization::{
    AUTHORIZATION_FIELDS, POLICY_ACTIONS, POLICY_CONDITION_FIELDS, POLICY_FIELDS,
    POLICY_OPERATION_FIELDS, POLICY_RULE_FIELDS, POLICY_SOURCE_FIELDS,
};
use super::decode::policy::{
    BUDGET_FIELDS, HASH_ON_FIELDS, LIMIT_FIELDS, LOAD_BALANCER_FIELDS, OUTLIER_FIELDS,
    POLICY_FIELDS as SERVICE_POLICY_FIELDS, RETRY_FIELDS,
};
use super::decode::route::{
    BACKEND_FIELDS, FAULT_ABORT_FIELDS, FAULT_DELAY_FIELDS, FAULT_FIELDS, FILTER_KINDS,
    HEADER_FIELDS, HEADER_MODIFIER_FIELDS, MATCH_FIELDS, MIRROR_FIELDS, PATH_MATCH_FIELDS,
    PATH_MATCH_KINDS, PATH_MODIFIER_KINDS, REDIRECT_FIELDS, REWRITE_FIELDS, ROUTE_FIELDS,
    RULE_FIELDS, VALUE_MATCH_FIELDS, VALUE_MATCH_KINDS,
};
use super::decode::{
    APP_FIELDS, APP_PORT_FIELDS, DEFAULT_NAMESPACE, ENDPOINT_FIELDS, INGRESS_FIELDS,
    LISTENER_FIELDS, NODE_FIELDS, OUTBOUND_POLICIES, PROTOCOLS, ROOT_FIELDS, SERVICE_FIELDS,
    SERVICE_PORT_FIELDS, TIMEOUT_FIELDS,
};
use super::*;
use crate::{
    OutboundPolicy, PathMatchKind, PathModifier, PolicyAction, Protocol, RouteFilter,
    ValueMatchKind,
};

const EXAMPLE: &str = "\
node:
  name: frontend-0
  namespace: shop
  workload: frontend
listeners:
  admin: 127.0.0.1:0
  outbound: 127.0.0.1:0
  mesh: 127.0.0.1:0
app:
  address: 127.0.0.1
  ports:
    - port: 8080
      protocol: http
services:
  - name: reviews
    namespace: shop
    addresses: [10.96.0.10]
    ports:
      - name: http
        port: 9080
        protocol: http
        target_port: 8080
      - name: db
        port: 3306
        protocol: tcp
    endpoints:
      - address: 127.0.0.1
        ports: { http: 18080 }
        mesh: 127.0.0.1:15008
        workload: reviews-v1
timeouts:
  detect: 100ms
  request: 5s
outbound_policy: allow_any
";

fn load_ok(text: &str) -> ProxyConfig {
    match ProxyConfig::from_yaml("test.yaml", text) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

/// The errors as (line, field, reason).
fn load_err(text: &str) -> Vec<(usize, String, String)> {
    let errors = ProxyConfig::from_yaml("test.yaml", text).expect_err("expected errors");
    errors
        .0
        .into_iter()
        .map(|e| (e.line.unwrap_or(0), e.field, e.reason))
        .collect()
}

#[track_caller]
fn assert_error(errors: &[(usize, String, String)], line: usize, field: &str, reason: &str) {
    assert!(
        errors
            .iter()
            .any(|(l, f, r)| *l == line && f == field && r.contains(reason)),
        "no error at line {line} on {field} containing {reason:?} in:\n{errors:#?}"
    );
}

#[test]
fn example_loads_and_round_trips_through_json() {
    let config = load_ok(EXAMPLE);
    assert_eq!(config.node.name, "frontend-0");
    assert_eq!(config.workload(), "frontend");
    assert_eq!(config.listeners.mesh, Some("127.0.0.1:0".parse().unwrap()));
    assert_eq!(config.app.ports[0].protocol, Protocol::Http);
    let reviews = &config.services[0];
    assert_eq!(
        reviews.addresses,
        vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(reviews.ports[0].target_port, Some(8080));
    assert_eq!(reviews.ports[1].protocol, Protocol::Tcp);
    assert_eq!(
        reviews.endpoints[0].target(&reviews.ports[0]),
        "127.0.0.1:18080".parse().unwrap()
    );
    assert_eq!(
        reviews.endpoints[0].target(&reviews.ports[1]),
        "127.0.0.1:3306".parse().unwrap()
    );
    assert_eq!(config.timeouts.detect, Duration::from_millis(100));
    assert_eq!(config.timeouts.request, Duration::from_secs(5));
    assert_eq!(
        config.timeouts.header,
        Duration::from_secs(10),
        "unset timeouts keep defaults"
    );

    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(json["timeouts"]["detect"], "100ms");
    assert_eq!(json["timeouts"]["idle"], "1h");
    assert_eq!(json["services"][0]["endpoints"][0]["ports"]["http"], 18080);
    assert_eq!(json["services"][0]["namespace"], "shop");
    assert_eq!(json["outbound_policy"], "allow_any");
    let back: ProxyConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, config);
}

#[test]
fn defaults_match_serde() {
    let config = load_ok(
        "node:\n  name: a\nservices:\n  - name: s\n    ports: [{name: p, port: 1, protocol: tcp}]\n",
    );
    assert_eq!(config.node.namespace, "default");
    assert_eq!(config.services[0].namespace, "default");
    assert_eq!(
        config.listeners.admin,
        SocketAddr::from(([127, 0, 0, 1], 15000))
    );
    assert_eq!(config.listeners.outbound, None);
    assert_eq!(config.app.address, IpAddr::from([127, 0, 0, 1]));
    assert_eq!(config.timeouts, Timeouts::default());
    assert_eq!(config.timeouts.detect, Duration::from_millis(200));
    assert_eq!(config.outbound_policy, OutboundPolicy::AllowAny);

    // The same document through serde's defaults.
    let serde: ProxyConfig = serde_json::from_value(json!({
        "node": { "name": "a" },
        "services": [{ "name": "s", "ports": [{ "name": "p", "port": 1, "protocol": "tcp" }] }],
    }))
    .unwrap();
    assert_eq!(config, serde);
    assert_eq!(DEFAULT_NAMESPACE, serde.node.namespace);

    // Explicit nulls mean "the default" too.
    let config = load_ok("node:\n  name: a\n  namespace:\nlisteners:\ntimeouts: ~\n");
    assert_eq!(config.node.namespace, "default");
    assert_eq!(config.listeners, Listeners::default());
}

/// The decoder's field lists are the serde field names, in declaration order.
#[test]
fn field_lists_match_serde() {
    let config = load_ok(EXAMPLE);
    let mut json = serde_json::to_value(&config).unwrap();
    // Give every optional field a value so that it serializes.
    json["listeners"]["outbound_transparent"] = json!("127.0.0.1:0");
    json["listeners"]["inbound"] = json!("127.0.0.1:0");
    json["listeners"]["ingress"] = json!([{ "address": "127.0.0.1:0", "to": "reviews.shop:80" }]);
    json["services"][0]["hostnames"] = json!(["reviews.example.com"]);
    json["services"][0]["timeouts"] = serde_json::to_value(Timeouts::default()).unwrap();
    json["services"][0]["endpoints"][0]["namespace"] = json!("shop");
    json["services"][0]["routes"] = full_route();
    json["authorization"] = full_authorization();
    json["services"][0]["policy"] = full_policy();
    let full: ProxyConfig = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(
        serde_json::to_value(&full).unwrap(),
        json,
        "every field serializes"
    );
    // The decoder reads what serde writes, field for field (JSON is YAML).
    assert_eq!(load_ok(&json.to_string()), full);

    let keys = |v: &Json| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let service = &json["services"][0];
    let cases: [(&Json, &[&str]); 10] = [
        (&json, ROOT_FIELDS),
        (&json["node"], NODE_FIELDS),
        (&json["listeners"], LISTENER_FIELDS),
        (&json["listeners"]["ingress"][0], INGRESS_FIELDS),
        (&json["app"], APP_FIELDS),
        (&json["app"]["ports"][0], APP_PORT_FIELDS),
        (service, SERVICE_FIELDS),
        (&service["ports"][0], SERVICE_PORT_FIELDS),
        (&service["endpoints"][0], ENDPOINT_FIELDS),
        (&json["timeouts"], TIMEOUT_FIELDS),
    ];
    let route = &service["routes"][0];
    let (rule, redirect_rule) = (&route["rules"][0], &route["rules"][1]);
    let filters = &rule["filters"];
    let redirect = &redirect_rule["filters"][0]["request_redirect"];
    let route_cases: [(&Json, &[&str]); 14] = [
        (route, ROUTE_FIELDS),
        (rule, RULE_FIELDS),
        (&rule["matches"][0], MATCH_FIELDS),
        (&rule["matches"][0]["path"], PATH_MATCH_FIELDS),
        (&rule["matches"][0]["headers"][0], VALUE_MATCH_FIELDS),
        (&rule["backends"][0], BACKEND_FIELDS),
        (
            &filters[0]["request_header_modifier"],
            HEADER_MODIFIER_FIELDS,
        ),
        (
            &filters[0]["request_header_modifier"]["set"][0],
            HEADER_FIELDS,
        ),
        (redirect, REDIRECT_FIELDS),
        (&filters[2]["url_rewrite"], REWRITE_FIELDS),
        (&filters[3]["mirror"], MIRROR_FIELDS),
        (&filters[4]["fault"], FAULT_FIELDS),
        (&filters[4]["fault"]["delay"], FAULT_DELAY_FIELDS),
        (&filters[4]["fault"]["abort"], FAULT_ABORT_FIELDS),
    ];
    let policy = &json["authorization"]["policies"][0];
    let policy_rule = &policy["rules"][0];
    let authorization_cases: [(&Json, &[&str]); 6] = [
        (&json["authorization"], AUTHORIZATION_FIELDS),
        (policy, POLICY_FIELDS),
        (policy_rule, POLICY_RULE_FIELDS),
        (&policy_rule["from"][0], POLICY_SOURCE_FIELDS),
        (&policy_rule["to"][0], POLICY_OPERATION_FIELDS),
        (&policy_rule["when"][0], POLICY_CONDITION_FIELDS),
    ];
    let service_policy = &service["policy"];
    let policy_cases: [(&Json, &[&str]); 6] = [
        (service_policy, SERVICE_POLICY_FIELDS),
        (&service_policy["load_balancer"], LOAD_BALANCER_FIELDS),
        (&service_policy["retries"], RETRY_FIELDS),
        (&service_policy["retries"]["budget"], BUDGET_FIELDS),
        (&service_policy["outlier_detection"], OUTLIER_FIELDS),
        (&service_policy["limits"], LIMIT_FIELDS),
    ];
    for (value, fields) in cases
        .into_iter()
        .chain(route_cases)
        .chain(authorization_cases)
        .chain(policy_cases)
    {
        let mut want: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        let mut got = keys(value);
        want.sort();
        got.sort();
        assert_eq!(got, want);
    }
    // Enums with data: one key each.
    let mut hash_keys = vec!["header".to_string(), "cookie".to_string()];
    hash_keys.sort();
    let mut want_hash: Vec<String> = HASH_ON_FIELDS.iter().map(|k| k.to_string()).collect();
    want_hash.sort();
    assert_eq!(hash_keys, want_hash);
    for (hash_on, key) in [
        (crate::HashOn::Header("x".into()), Some("header")),
        (crate::HashOn::Cookie("x".into()), Some("cookie")),
        (crate::HashOn::SourceIp, None),
    ] {
        let value = serde_json::to_value(&hash_on).unwrap();
        match key {
            Some(key) => assert_eq!(keys(&value), [key]),
            None => assert_eq!(value, json!("source_ip")),
        }
    }
    let mut kinds: Vec<String> = filters
        .as_array()
        .unwrap()
        .iter()
        .chain([&redirect_rule["filters"][0]])
        .flat_map(keys)
        .collect();
    kinds.sort();
    let mut want: Vec<String> = FILTER_KINDS.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(kinds, want);
    let mut modifiers = keys(&filters[2]["url_rewrite"]["path"]);
    modifiers.extend(keys(&redirect["path"]));
    modifiers.sort();
    assert_eq!(modifiers, PATH_MODIFIER_KINDS);

    // Every enum variant is listed, under its serde name.
    fn _exhaustive(p: Protocol, o: OutboundPolicy) {
        // A new variant fails to compile here: add it to PROTOCOLS / OUTBOUND_POLICIES.
        match p {
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::Tcp | Protocol::Tls => {}
        }
        match o {
            OutboundPolicy::AllowAny | OutboundPolicy::RegistryOnly => {}
        }
    }
    assert_eq!(PROTOCOLS.len(), 5);
    assert_eq!(OUTBOUND_POLICIES.len(), 2);
    for (name, p) in PROTOCOLS {
        assert_eq!(serde_json::to_value(p).unwrap(), json!(name));
    }
    for (name, o) in OUTBOUND_POLICIES {
        assert_eq!(serde_json::to_value(o).unwrap(), json!(name));
    }
    fn _exhaustive_routes(p: PathMatchKind, v: ValueMatchKind, f: &RouteFilter, m: &PathModifier) {
        // A new variant fails to compile here: add it to the decoder's lists.
        match p {
            PathMatchKind::Exact | PathMatchKind::Prefix | PathMatchKind::Regex => {}
        }
        match v {
            ValueMatchKind::Exact | ValueMatchKind::Regex => {}
        }
        match f {
            RouteFilter::RequestHeaderModifier(_)
            | RouteFilter::ResponseHeaderModifier(_)
            | RouteFilter::RequestRedirect(_)
            | RouteFilter::UrlRewrite(_)
            | RouteFilter::Mirror(_)
            | RouteFilter::Fault(_) => {}
        }
        match m {
            PathModifier::ReplaceFullPath(_) | PathModifier::ReplacePrefixMatch(_) => {}
        }
    }
    fn _exhaustive_authorization(a: PolicyAction) {
        match a {
            PolicyAction::Allow | PolicyAction::Deny => {}
        }
    }
    assert_eq!(POLICY_ACTIONS.len(), 2);
    for (name, a) in POLICY_ACTIONS {
        assert_eq!(serde_json::to_value(a).unwrap(), json!(name));
    }
    assert_eq!(PATH_MATCH_KINDS.len(), 3);
    assert_eq!(VALUE_MATCH_KINDS.len(), 2);
    for (name, k) in PATH_MATCH_KINDS {
        assert_eq!(serde_json::to_value(k).unwrap(), json!(name));
    }
    for (name, k) in VALUE_MATCH_KINDS {
        assert_eq!(serde_json::to_value(k).unwrap(), json!(name));
    }
}

/// An authorization section with every field given.
fn full_authorization() -> Json {
    json!({
        "policies": [{
            "name": "shop/reviews",
            "action": "allow",
            "rules": [{
                "from": [{
                    "principals": ["spiffe://cluster.local/ns/shop/sa/frontend"],
                    "not_principals": ["*/sa/legacy"],
                    "namespaces": ["shop"],
                    "not_namespaces": ["test*"],
                    "ip_blocks": ["10.0.0.0/8"],
                    "not_ip_blocks": ["10.9.0.1/32"],
                }],
                "to": [{
                    "methods": ["GET"],
                    "not_methods": ["DELETE"],
                    "paths": ["/api/*"],
                    "not_paths": ["/api/admin"],
                    "ports": [8080],
                    "not_ports": [9090],
                }],
                "when": [{
                    "key": "request.headers[x-user]",
                    "values": ["alice"],
                    "not_values": ["mallory"],
                }],
            }],
        }],
    })
}

/// A route with every field given (and a second rule for the redirect, which cannot share a
/// rule with backends or a rewrite).
fn full_route() -> Json {
    json!([{
        "name": "HTTPRoute shop/reviews",
        "port": 9080,
        "rules": [
            {
                "matches": [{
                    "path": { "type": "prefix", "value": "/api" },
                    "method": "GET",
                    "headers": [{ "type": "exact", "name": "x-canary", "value": "yes" }],
                    "query_params": [{ "type": "regex", "name": "q", "value": "a.*" }],
                }],
                "filters": [
                    { "request_header_modifier": {
                        "set": [{ "name": "x-set", "value": "1" }],
                        "add": [{ "name": "x-add", "value": "2" }],
                        "remove": ["x-remove"],
                    } },
                    { "response_header_modifier": { "set": [], "add": [], "remove": ["server"] } },
                    { "url_rewrite": {
                        "hostname": "reviews.example",
                        "path": { "replace_prefix_match": "/v2" },
                    } },
                    { "mirror": { "service": "reviews", "namespace": "shop", "port": 9080, "percent": 12.5 } },
                    { "fault": {
                        "delay": { "duration": "100ms", "percent": 10 },
                        "abort": { "status": 503, "grpc_status": 14, "percent": 0.5 },
                    } },
                ],
                "backends": [{ "service": "reviews", "namespace": "shop", "port": 9080, "weight": 90 }],
                "timeout": "2s",
            },
            {
                "matches": [],
                "filters": [{ "request_redirect": {
                    "scheme": "https",
                    "hostname": "reviews.example",
                    "path": { "replace_full_path": "/moved" },
                    "port": 8443,
                    "status_code": 301,
                } }],
                "backends": [],
                "timeout": null,
            },
        ],
    }])
}

/// A config whose service `reviews` (ports 9080 and 9090) has `routes` (YAML at 4 spaces),
/// beside service `ratings` (port 80) in namespace `shop`.
fn with_routes(routes: &str) -> String {
    format!(
        "\
node: {{ name: a }}
services:
  - name: reviews
    ports: [{{ name: http, port: 9080, protocol: http }}, {{ name: grpc, port: 9090, protocol: grpc }}]
    routes:
{routes}  - name: ratings
    namespace: shop
    ports: [{{ name: http, port: 80, protocol: http }}]
"
    )
}

#[test]
fn routes_load_with_their_defaults() {
    let config = load_ok(&with_routes(
        "      - rules:
          - backends: [{ service: reviews, port: 9080 }, { service: ratings, namespace: shop, port: 80, weight: 0 }]
          - matches: [{ headers: [{ name: x-v, value: \"2\" }] }]
            filters: [{ request_redirect: {} }]
",
    ));
    let route = &config.services[0].routes[0];
    assert_eq!((route.name.as_str(), route.port), ("", None));
    let rule = &route.rules[0];
    assert!(rule.matches.is_empty() && rule.filters.is_empty());
    assert_eq!(rule.timeout, None);
    assert_eq!(
        rule.backends[0].weight, 1,
        "the Gateway API's default weight"
    );
    assert_eq!(rule.backends[0].namespace, None);
    assert_eq!(
        rule.backends[1].weight, 0,
        "all weights zero is allowed: a 500"
    );
    let m = &route.rules[1].matches[0];
    assert_eq!(m.path, None);
    assert_eq!(m.headers[0].kind, ValueMatchKind::Exact);
    let RouteFilter::RequestRedirect(redirect) = &route.rules[1].filters[0] else {
        panic!("{:?}", route.rules[1].filters);
    };
    assert_eq!(redirect.status_code, 302);

    // The same through serde's defaults.
    let serde: crate::Route = serde_json::from_value(json!({
        "rules": [
            { "backends": [
                { "service": "reviews", "port": 9080 },
                { "service": "ratings", "namespace": "shop", "port": 80, "weight": 0 },
            ] },
            { "matches": [{ "headers": [{ "name": "x-v", "value": "2" }] }],
              "filters": [{ "request_redirect": {} }] },
        ],
    }))
    .unwrap();
    assert_eq!(&serde, route);
}

#[test]
fn mirror_and_fault_filters_load_and_their_mistakes_are_reported() {
    let config = load_ok(&with_routes(
        "      - rules:
          - filters:
              - { mirror: { service: ratings, namespace: shop, port: 80 } }
              - { mirror: { service: reviews, port: 9080, percent: 0.5 } }
              - { fault: { abort: { status: 503 } } }
            backends: [{ service: reviews, port: 9080 }]
",
    ));
    let filters = &config.services[0].routes[0].rules[0].filters;
    let RouteFilter::Mirror(all) = &filters[0] else {
        panic!("{filters:?}")
    };
    assert_eq!(all.percent, crate::Percent::ALL);
    let RouteFilter::Mirror(half) = &filters[1] else {
        panic!("{filters:?}")
    };
    assert_eq!(half.percent.per_million(), 5_000);
    let RouteFilter::Fault(fault) = &filters[2] else {
        panic!("{filters:?}")
    };
    assert_eq!(fault.delay, None);
    assert_eq!(
        fault.abort.map(|a| (a.status, a.percent)),
        Some((503, crate::Percent::ALL))
    );

    let errors = load_err(&with_routes(
        "      - rules:
          - filters:
              - { mirror: { service: nowhere, port: 80, percent: 101 } }
              - { mirror: { service: ratings, namespace: shop, port: 81 } }
              - { fault: { delay: { duration: 1s, percent: ten }, abort: { status: 99, grpc_status: 17 } } }
              - { fault: { abort: { status: 500 } } }
            backends: [{ service: reviews, port: 9080 }]
          - filters: [{ fault: {} }]
            backends: [{ service: reviews, port: 9080 }]
",
    ));
    let at = "services[0].routes[0].rules[0].filters";
    assert_error(
        &errors,
        8,
        &format!("{at}[0].mirror.percent"),
        "101 is not a percentage",
    );
    assert_error(
        &errors,
        8,
        &format!("{at}[0].mirror.service"),
        "no service \"nowhere\" in namespace \"default\"",
    );
    assert_error(
        &errors,
        9,
        &format!("{at}[1].mirror.port"),
        "81 is not a port of service \"ratings\"",
    );
    let fault = format!("{at}[2].fault");
    assert_error(
        &errors,
        10,
        &format!("{fault}.delay.percent"),
        "ten is not a percentage",
    );
    assert_error(
        &errors,
        10,
        &format!("{fault}.abort.status"),
        "99 is not an HTTP status (200 to 599)",
    );
    assert_error(
        &errors,
        10,
        &format!("{fault}.abort.grpc_status"),
        "17 is not a gRPC status code (0 to 16)",
    );
    assert_error(
        &errors,
        13,
        "services[0].routes[0].rules[1].filters[0].fault",
        "a fault needs a delay, an abort or both",
    );
    assert_error(
        &errors,
        11,
        &format!("{at}[3].fault"),
        "a rule may have one fault (the first is filters[2])",
    );
    assert_eq!(errors.len(), 8, "{errors:#?}");
}

#[test]
fn route_mistakes_are_reported_with_line_and_field() {
    let text = with_routes(
        "      - port: 8080
        rules:
          - matches:
              - path: { type: regex, value: \"/a(b\" }
                headers: [{ name: \"x y\", type: regex, value: \"[\" }]
                method: \"GE T\"
            backends:
              - { service: reviewz, port: 9080 }
              - { service: ratings, port: 80 }
              - { service: ratings, namespace: shop, port: 81 }
              - { service: reviews, port: 9080, weight: 2000000 }
            timeout: 2 s
          - filters:
              - { request_redirect: { status_code: 305, scheme: ftp } }
              - { url_rewrite: { path: { replace_prefix_match: /v2 } } }
              - { mirroring: {} }
          - filters:
              - { request_header_modifier: { set: [{ name: x, value: y }] }, url_rewrite: {} }
          - matches: [{ path: { type: exact, value: /a } }]
            filters:
              - { request_redirect: { path: { replace_prefix_match: /b } } }
              - { request_redirect: { hostname: Not_A_Host } }
            backends: [{ service: reviews, port: 9090 }]
          - matches: [{ path: { type: prefix, value: a } }]
",
    );
    let errors = load_err(&text);
    let at = "services[0].routes[0]";
    assert_error(
        &errors,
        6,
        &format!("{at}.port"),
        "8080 is not a port of service \"reviews\" (its ports: 9080, 9090)",
    );
    assert_error(
        &errors,
        9,
        &format!("{at}.rules[0].matches[0].path.value"),
        "\"/a(b\" is not a valid regular expression",
    );
    assert_error(
        &errors,
        10,
        &format!("{at}.rules[0].matches[0].headers[0].name"),
        "\"x y\" is not a header name",
    );
    assert_error(
        &errors,
        10,
        &format!("{at}.rules[0].matches[0].headers[0].value"),
        "\"[\" is not a valid regular expression",
    );
    assert_error(
        &errors,
        11,
        &format!("{at}.rules[0].matches[0].method"),
        "\"GE T\" is not an HTTP method",
    );
    assert_error(
        &errors,
        13,
        &format!("{at}.rules[0].backends[0].service"),
        "no service \"reviewz\" in namespace \"default\" in this config (services there: reviews)",
    );
    assert_error(
        &errors,
        14,
        &format!("{at}.rules[0].backends[1].service"),
        "no service \"ratings\" in namespace \"default\"",
    );
    assert_error(
        &errors,
        15,
        &format!("{at}.rules[0].backends[2].port"),
        "81 is not a port of service \"ratings\" (its ports: 80)",
    );
    assert_error(
        &errors,
        16,
        &format!("{at}.rules[0].backends[3].weight"),
        "2000000 is not a weight (a whole number from 0 to 1000000)",
    );
    assert_error(
        &errors,
        17,
        &format!("{at}.rules[0].timeout"),
        "\"2 s\" is not a duration",
    );
    let redirect = format!("{at}.rules[1].filters[0].request_redirect");
    assert_error(
        &errors,
        19,
        &format!("{redirect}.status_code"),
        "305 is not a redirect status (301, 302, 303, 307 or 308)",
    );
    assert_error(
        &errors,
        19,
        &format!("{redirect}.scheme"),
        "\"ftp\" is not a scheme (expected one of: http, https)",
    );
    assert_error(
        &errors,
        21,
        &format!("{at}.rules[1].filters[2]"),
        "unknown filter \"mirroring\" (expected one of: request_header_modifier, response_header_modifier, request_redirect, url_rewrite, mirror, fault)",
    );
    assert_error(
        &errors,
        23,
        &format!("{at}.rules[2].filters[0]"),
        "give one of request_header_modifier, response_header_modifier, request_redirect, url_rewrite, mirror, fault in each item, not request_header_modifier and url_rewrite together",
    );
    let rule = format!("{at}.rules[3]");
    assert_error(
        &errors,
        26,
        &format!("{rule}.filters[0].request_redirect.path"),
        "replace_prefix_match needs the rule to have exactly one match, with a prefix path",
    );
    assert_error(
        &errors,
        26,
        &format!("{rule}.filters[0].request_redirect"),
        "a redirect answers the request itself: a rule with request_redirect has no backends",
    );
    assert_error(
        &errors,
        27,
        &format!("{rule}.filters[1].request_redirect"),
        "a rule may have one request_redirect (the first is filters[0])",
    );
    assert_error(
        &errors,
        27,
        &format!("{rule}.filters[1].request_redirect.hostname"),
        "\"Not_A_Host\" is not a DNS name",
    );
    assert_error(
        &errors,
        29,
        &format!("{at}.rules[4].matches[0].path.value"),
        "\"a\" must start with \"/\"",
    );
    // Rule 1's redirect and rewrite clash is not reported: a filter of that rule could not be
    // read, so the others' indexes do not hold.
    assert!(
        !errors
            .iter()
            .any(|(_, f, _)| f.starts_with(&format!("{at}.rules[1].filters[1]"))),
        "{errors:#?}"
    );
    assert_eq!(errors.len(), 19, "{errors:#?}");
}

#[test]
fn a_redirect_and_a_rewrite_do_not_share_a_rule() {
    let errors = load_err(&with_routes(
        "      - rules:
          - filters:
              - { request_redirect: { hostname: a.example } }
              - { url_rewrite: { hostname: b.example } }
",
    ));
    assert_error(
        &errors,
        9,
        "services[0].routes[0].rules[0].filters[1].url_rewrite",
        "a rule may not have both request_redirect (filters[0]) and url_rewrite",
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
}

#[test]
fn reports_every_mistake_with_line_and_field() {
    let text = "\
node:
  name: frontend-0
listeners:
  admin: 127.0.0.1:15000
  outbound: 127.0.0.1:15000
app:
  ports:
    - port: 8080
      protocol: htp
services:
  - name: reviews
    ports:
      - name: http
        port: 70000
        protocol: http
    endpoints:
      - adress: 10.0.0.1
      - address: not-an-ip
        ports: { grpc: 9090 }
  - namespace: shop
    ports: []
  - name: reviews
    ports:
      - { name: http, port: 80, protocol: http }
timeouts:
  detect: 30s
  header: 0s
  idle: 10 sec
";
    let errors = load_err(text);
    assert_error(
        &errors,
        5,
        "listeners.outbound",
        "127.0.0.1:15000 is also where the admin listener binds (on line 4)",
    );
    assert_error(
        &errors,
        9,
        "app.ports[0].protocol",
        "\"htp\" is not a protocol (expected one of: http, http2, grpc, tcp, tls)",
    );
    assert_error(
        &errors,
        14,
        "services[0].ports[0].port",
        "70000 is not a port number (1-65535)",
    );
    assert_error(
        &errors,
        17,
        "services[0].endpoints[0].adress",
        "unknown field \"adress\" (expected one of: address, ports, mesh, workload, namespace, identity)",
    );
    assert_error(
        &errors,
        17,
        "services[0].endpoints[0].address",
        "missing required field \"address\"",
    );
    assert_error(
        &errors,
        18,
        "services[0].endpoints[1].address",
        "\"not-an-ip\" is not an IP address",
    );
    assert_error(
        &errors,
        19,
        "services[0].endpoints[1].ports.grpc",
        "\"grpc\" is not a port of service \"reviews\" (its ports: http)",
    );
    assert_error(
        &errors,
        20,
        "services[1].name",
        "missing required field \"name\"",
    );
    assert_error(
        &errors,
        21,
        "services[1].ports",
        "a service needs at least one port",
    );
    assert_error(
        &errors,
        22,
        "services[2].name",
        "service \"reviews\" in namespace \"default\" is listed twice (first on line 11)",
    );
    assert_error(&errors, 26, "timeouts.detect", "30s is out of range");
    assert_error(&errors, 27, "timeouts.header", "must be more than 0s");
    assert_error(
        &errors,
        28,
        "timeouts.idle",
        "\"10 sec\" is not a duration (write 10s, 250ms, 1m)",
    );
    assert_eq!(errors.len(), 13, "{errors:#?}");

    // In file order, and displayed as FILE:LINE:COLUMN: FIELD: REASON.
    let lines: Vec<usize> = errors.iter().map(|e| e.0).collect();
    assert!(lines.is_sorted(), "{lines:?}");
    let shown = ProxyConfig::from_yaml("proxy.yaml", text)
        .unwrap_err()
        .to_string();
    let first = shown.lines().next().unwrap();
    assert_eq!(
        first,
        "proxy.yaml:5:13: listeners.outbound: 127.0.0.1:15000 is also where the admin listener binds (on line 4)"
    );
    assert_eq!(shown.lines().count(), 13);
}

#[test]
fn type_errors() {
    let errors = load_err(
        "\
node: frontend
app:
  address: [127.0.0.1]
  ports:
    - port: \"8080\"
      protocol: http
    - port: -1
      protocol: tcp
    - 8080
listeners:
  mesh: 127.0.0.1
outbound_policy: deny
services: {}
",
    );
    assert_error(
        &errors,
        1,
        "node",
        "expected a mapping, found \"frontend\" (this field has fields name, namespace, workload)",
    );
    assert_error(
        &errors,
        3,
        "app.address",
        "expected an IP address, found a list",
    );
    assert_error(
        &errors,
        5,
        "app.ports[0].port",
        "found the string \"8080\" (remove the quotes)",
    );
    assert_error(
        &errors,
        7,
        "app.ports[1].port",
        "expected a port number (1-65535), found \"-1\"",
    );
    assert_error(
        &errors,
        9,
        "app.ports[2]",
        "expected a mapping, found \"8080\"",
    );
    assert_error(
        &errors,
        11,
        "listeners.mesh",
        "\"127.0.0.1\" is not a socket address (write 127.0.0.1:15000 or [::1]:15000)",
    );
    assert_error(
        &errors,
        12,
        "outbound_policy",
        "(expected one of: allow_any, registry_only)",
    );
    assert_error(&errors, 13, "services", "expected a list, found a mapping");
    assert_eq!(errors.len(), 8, "{errors:#?}");
}

#[test]
fn a_placeholder_is_not_reported_again() {
    // The bad ports are not also "port 0" or "listed twice"; the unnamed service is not a
    // duplicate of the other unnamed one.
    let errors = load_err(
        "\
node: { name: a }
services:
  - ports:
      - { name: a, port: x, protocol: tcp }
      - { name: b, port: y, protocol: tcp }
  - ports: [{ name: a, port: 1, protocol: tcp }]
",
    );
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert_error(&errors, 3, "services[0].name", "missing required field");
    assert_error(&errors, 4, "services[0].ports[0].port", "found \"x\"");
    assert_error(&errors, 5, "services[0].ports[1].port", "found \"y\"");
    assert_error(&errors, 6, "services[1].name", "missing required field");
}

#[test]
fn semantic_checks() {
    let errors = load_err(
        "\
node: { name: ' ', namespace: Shop }
listeners:
  outbound: 127.0.0.1:15001
  mesh: 0.0.0.0:15001
app:
  ports:
    - { port: 8080, protocol: http }
    - { port: 8080, protocol: tcp }
services:
  - name: reviews
    hostnames: [reviews.example.com, ratings, Bad_Host]
    addresses: [10.0.0.1, 10.0.0.1]
    ports:
      - { name: http, port: 80, protocol: http, target_port: 0 }
      - { name: http, port: 80, protocol: http }
    endpoints:
      - { address: 10.1.0.1 }
      - { address: 10.1.0.1 }
    timeouts: { detect: 0s }
  - name: ratings
    hostnames: [reviews.example.com]
    addresses: [10.0.0.1]
    ports: [{ name: web, port: 80, protocol: http }]
",
    );
    assert_error(&errors, 1, "node.name", "must not be empty");
    assert_error(&errors, 1, "node.namespace", "\"Shop\" is not a DNS label");
    assert_error(
        &errors,
        4,
        "listeners.mesh",
        "0.0.0.0:15001 is also where the outbound listener binds (on line 3)",
    );
    assert_error(
        &errors,
        8,
        "app.ports[1].port",
        "port 8080 is listed twice (first on line 7)",
    );
    assert_error(
        &errors,
        11,
        "services[0].hostnames[1]",
        "host name \"ratings\" already names service \"default/ratings\" (on line 20)",
    );
    assert_error(
        &errors,
        11,
        "services[0].hostnames[2]",
        "\"Bad_Host\" is not a DNS name",
    );
    assert_error(
        &errors,
        12,
        "services[0].addresses[1]",
        "address 10.0.0.1 is listed twice (first on line 12)",
    );
    assert_error(
        &errors,
        14,
        "services[0].ports[0].target_port",
        "0 is not a port number (1-65535)",
    );
    assert_error(
        &errors,
        15,
        "services[0].ports[1].name",
        "port name \"http\" is listed twice (first on line 14)",
    );
    assert_error(
        &errors,
        15,
        "services[0].ports[1].port",
        "port 80 is listed twice (first on line 14)",
    );
    assert_error(
        &errors,
        18,
        "services[0].endpoints[1].address",
        "endpoint 10.1.0.1 (with the same ports and mesh address) is listed twice (first on line 17)",
    );
    assert_error(
        &errors,
        19,
        "services[0].timeouts.detect",
        "0s is out of range",
    );
    assert_error(
        &errors,
        21,
        "services[1].hostnames[0]",
        "host name \"reviews.example.com\" is also claimed by service \"default/reviews\" (on line 11)",
    );
    assert_error(
        &errors,
        22,
        "services[1].addresses[0]",
        "10.0.0.1:80 is also claimed by service \"default/reviews\" (on line 12)",
    );
    assert_eq!(errors.len(), 14, "{errors:#?}");
}

#[test]
fn listeners_may_share_port_zero_and_collide_with_the_default_admin() {
    load_ok(
        "node: { name: a }\nlisteners: { admin: 127.0.0.1:0, outbound: 127.0.0.1:0, mesh: 127.0.0.1:0 }\n",
    );
    let errors = load_err("node: { name: a }\nlisteners: { outbound: 127.0.0.1:15000 }\n");
    assert_error(
        &errors,
        2,
        "listeners.outbound",
        "is also where the admin listener binds (by default)",
    );
}

#[test]
fn an_ingress_needs_an_address_of_its_own_and_a_host_and_port() {
    let config = load_ok(
        "node: { name: a }\nlisteners:\n  ingress: [ { address: 127.0.0.1:8080, to: frontend.shop:8080 } ]\n",
    );
    assert_eq!(config.listeners.ingress[0].to, "frontend.shop:8080");
    let errors = load_err(
        "node: { name: a }\nlisteners:\n  outbound: 127.0.0.1:8080\n  ingress:\n    - { address: 127.0.0.1:8080, to: frontend.shop:8080 }\n    - { address: 127.0.0.1:8081, to: frontend }\n",
    );
    assert_error(
        &errors,
        5,
        "listeners.ingress[0].address",
        "127.0.0.1:8080 is also where the outbound listener binds",
    );
    assert_error(&errors, 6, "listeners.ingress[1].to", "is not host:port");
    assert_eq!(errors.len(), 2, "{errors:#?}");
}

#[test]
fn an_app_port_that_is_one_of_the_proxy_listeners_would_loop() {
    load_ok("node: { name: a }\napp: { ports: [ { port: 15001, protocol: http } ] }\n");
    let errors = load_err(
        "node: { name: a }\nlisteners: { outbound: 0.0.0.0:15001 }\napp:\n  ports:\n    - { port: 8080, protocol: http }\n    - { port: 15001, protocol: http }\n",
    );
    assert_error(
        &errors,
        6,
        "app.ports[1].port",
        "the app at 127.0.0.1:15001 would be the proxy's own outbound listener (0.0.0.0:15001)",
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
}

#[test]
fn syntax_errors_report_their_line() {
    let text = "node:\n  name: a\n services:\n  - name: b\n";
    let errors = ProxyConfig::from_yaml("bad.yaml", text).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    let error = &errors.0[0];
    assert_eq!(error.line, Some(3), "{error}");
    assert!(error.reason.starts_with("invalid YAML: "), "{error}");
    assert!(error.to_string().starts_with("bad.yaml:3:"), "{error}");

    let errors = load_err("node: { name: a\nservices: []\n");
    assert!(errors[0].0 >= 1, "{errors:?}");
    assert!(errors[0].2.starts_with("invalid YAML"), "{errors:?}");
}

#[test]
fn yaml_oddities() {
    // Duplicate keys, a second document, application tags, an empty file.
    let errors = load_err("node:\n  name: a\n  name: b\n");
    assert_error(
        &errors,
        3,
        "node.name",
        "\"name\" is set twice (first on line 2)",
    );
    let errors = load_err("node: { name: a }\n---\nnode: { name: b }\n");
    assert_error(&errors, 2, "", "a second YAML document");
    let errors = load_err("node: !secret { name: a }\n");
    assert_error(&errors, 1, "", "unsupported tag !secret");
    let errors = load_err("# nothing here\n");
    assert_error(&errors, 1, "", "the file is empty");
    assert_eq!(errors.len(), 1);
    let errors = load_err("- node\n");
    assert_error(
        &errors,
        1,
        "",
        "expected a mapping, found a list (the file has fields node, listeners",
    );

    // Strings stay as written; `!!str` and quotes make strings of numbers.
    let config = load_ok("node: { name: 0123, workload: !!str 1.50, namespace: 'yes' }\n");
    assert_eq!(config.node.name, "0123");
    assert_eq!(config.node.workload.as_deref(), Some("1.50"));
    assert_eq!(config.node.namespace, "yes");
}

#[test]
fn anchors_aliases_and_merge_keys() {
    let config = load_ok(
        "\
node: { name: a }
services:
  - name: one
    ports: &ports
      - { name: http, port: 80, protocol: http }
    endpoints:
      - &ep { address: 10.0.0.1, ports: { http: 8080 }, workload: w }
      - { <<: *ep, address: 10.0.0.2 }
  - name: two
    ports: *ports
",
    );
    assert_eq!(config.services[1].ports, config.services[0].ports);
    let endpoints = &config.services[0].endpoints;
    assert_eq!(endpoints[1].address, "10.0.0.2".parse::<IpAddr>().unwrap());
    assert_eq!(endpoints[1].workload.as_deref(), Some("w"));
    assert_eq!(endpoints[1].ports, endpoints[0].ports);
}

#[test]
fn untrusted_input_is_bounded() {
    let big = format!("node: {{ name: a }}\n#{}\n", "x".repeat(MAX_CONFIG_BYTES));
    let errors = load_err(&big);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].2.contains("at most 4194304 bytes (4 MiB)"),
        "{errors:?}"
    );

    // Billion laughs: each level doubles; the node budget stops it early.
    let mut bomb = String::from("a0: &a0 [x, x]\n");
    for i in 1..40 {
        bomb.push_str(&format!("a{i}: &a{i} [*a{}, *a{}]\n", i - 1, i - 1));
    }
    let errors = load_err(&bomb);
    assert!(errors[0].2.contains("YAML nodes"), "{errors:?}");

    let deep = format!("node: {}{}\n", "[".repeat(100), "]".repeat(100));
    let errors = load_err(&deep);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].2.starts_with("invalid YAML"), "{errors:?}");
}

#[test]
fn display() {
    let error = |line, column, field: &str| ConfigError {
        file: "p.yaml".to_string(),
        line,
        column,
        field: field.to_string(),
        reason: "bad".to_string(),
    };
    assert_eq!(
        error(Some(3), Some(7), "node.name").to_string(),
        "p.yaml:3:7: node.name: bad"
    );
    assert_eq!(error(Some(3), None, "").to_string(), "p.yaml:3: bad");
    assert_eq!(error(None, None, "").to_string(), "p.yaml: bad");
    let errors = ConfigErrors(vec![
        error(Some(1), Some(1), "a"),
        error(Some(2), Some(1), "b"),
    ]);
    assert_eq!(errors.to_string(), "p.yaml:1:1: a: bad\np.yaml:2:1: b: bad");
}

#[test]
fn identity_needs_one_certificate_source_and_spiffe_ids() {
    let errors = load_err(
        "node: { name: a }
mtls: strict
identity:
  id: spiffe://cluster.local/ns/test
  bundle: /etc/trellis/root-cert.pem
  key: /etc/trellis/key.pem
services:
  - name: web
    ports: [ { name: http, port: 80, protocol: http } ]
    endpoints:
      - address: 127.0.0.1
        identity: web
",
    );
    assert_error(&errors, 4, "identity.id", "is not a SPIFFE ID");
    assert_error(&errors, 6, "identity.key", "key needs cert beside it");
    assert_error(
        &errors,
        12,
        "services[0].endpoints[0].identity",
        "is not a SPIFFE ID",
    );

    let errors = load_err("node: { name: a }\nmtls: strict\n");
    assert_error(&errors, 2, "mtls", "strict mTLS needs an identity");

    let errors = load_err(
        "node: { name: a }
identity: { id: spiffe://td/ns/a/sa/b, bundle: r.pem, ca: 127.0.0.1:15010 }
",
    );
    assert_error(&errors, 2, "identity.ca", "needs a join token");

    let ok = load_ok(
        "node: { name: a }
mtls: permissive
identity: { id: spiffe://td/ns/a/sa/b, bundle: r.pem, ca: 127.0.0.1:15010, join_token_file: t }
app: { ports: [ { port: 80, protocol: http, mtls: disable } ] }
",
    );
    assert_eq!(ok.app.ports[0].mtls, Some(crate::MtlsMode::Disable));
    assert_eq!(
        ok.identity.unwrap().cert_ttl,
        std::time::Duration::from_secs(86400)
    );
}

#[test]
fn authorization_loads_and_is_left_out_when_empty() {
    let config = load_ok(
        "\
node: { name: a }
authorization:
  policies:
    - name: shop/allow
      action: allow
      rules:
        - from: [{ principals: [\"spiffe://cluster.local/ns/shop/sa/web\", \"*/sa/b\"], ip_blocks: [10.0.0.0/8] }]
          to: [{ paths: [/api/*], ports: [8080] }]
          when: [{ key: destination.port, values: [\"8080\"] }]
    - action: deny
",
    );
    let policies = &config.authorization.policies;
    assert_eq!(policies.len(), 2);
    assert_eq!(policies[0].action, PolicyAction::Allow);
    let rule = &policies[0].rules[0];
    assert_eq!(rule.from[0].ip_blocks[0].to_string(), "10.0.0.0/8");
    assert_eq!(rule.to[0].ports, [8080]);
    assert_eq!(rule.when[0].values, ["8080"]);
    assert_eq!(policies[1].name, "");
    assert!(policies[1].rules.is_empty());
    let json = serde_json::to_value(&config).unwrap();
    assert_eq!(
        json["authorization"]["policies"][1],
        json!({ "name": "", "action": "deny", "rules": [] })
    );
    assert_eq!(
        json["authorization"]["policies"][0]["rules"][0]["from"][0],
        json!({
            "principals": ["spiffe://cluster.local/ns/shop/sa/web", "*/sa/b"],
            "ip_blocks": ["10.0.0.0/8"],
        }),
        "empty lists are left out"
    );

    // Without policies, the config serializes as it did before authorization existed.
    let json = serde_json::to_value(load_ok(EXAMPLE)).unwrap();
    assert!(json.get("authorization").is_none(), "{json}");
}

#[test]
fn authorization_mistakes_are_reported_with_line_and_field() {
    let errors = load_err(
        "\
node: { name: a }
authorization:
  policies:
    - action: audit
    - action: allow
      rules:
        - from: [{ principals: [cluster.local/ns/a/sa/b], ip_blocks: [10.0.0.0/33], peers: [] }]
          to: [{ methods: [\"GE T\"], ports: [\"80\", 0] }]
          when:
            - { key: source.ips, values: [a] }
            - { key: connection.sni, values: [a] }
            - { key: \"request.headers[x y]\", values: [a] }
            - { key: source.ip, not_values: [nowhere] }
            - { key: source.principal, values: [cluster.local/ns/a/sa/b] }
            - { key: destination.port }
    - rules: []
",
    );
    assert_error(
        &errors,
        4,
        "authorization.policies[0].action",
        "\"audit\" is not an action",
    );
    let rule = "authorization.policies[1].rules[0]";
    assert_error(
        &errors,
        7,
        &format!("{rule}.from[0].principals[0]"),
        "write spiffe://cluster.local/ns/a/sa/b",
    );
    assert_error(
        &errors,
        7,
        &format!("{rule}.from[0].ip_blocks[0]"),
        "not an IP address or CIDR block",
    );
    assert_error(
        &errors,
        7,
        &format!("{rule}.from[0].peers"),
        "unknown field",
    );
    assert_error(
        &errors,
        8,
        &format!("{rule}.to[0].methods[0]"),
        "is not an HTTP method",
    );
    assert_error(
        &errors,
        8,
        &format!("{rule}.to[0].ports[0]"),
        "remove the quotes",
    );
    assert_error(
        &errors,
        8,
        &format!("{rule}.to[0].ports[1]"),
        "0 is not a port",
    );
    assert_error(
        &errors,
        10,
        &format!("{rule}.when[0].key"),
        "\"source.ips\" is not an attribute the proxy knows",
    );
    assert_error(
        &errors,
        11,
        &format!("{rule}.when[1].key"),
        "Trellis does not evaluate",
    );
    assert_error(
        &errors,
        12,
        &format!("{rule}.when[2].key"),
        "\"x y\" is not a header name",
    );
    assert_error(
        &errors,
        13,
        &format!("{rule}.when[3].not_values[0]"),
        "not an IP address or CIDR block",
    );
    assert_error(
        &errors,
        14,
        &format!("{rule}.when[4].values[0]"),
        "is not a SPIFFE ID",
    );
    assert_error(
        &errors,
        15,
        &format!("{rule}.when[5]"),
        "needs values or not_values",
    );
    assert_error(
        &errors,
        16,
        "authorization.policies[2].action",
        "missing required field \"action\"",
    );
    assert_eq!(errors.len(), 14, "{errors:#?}");
}

/// A policy with every field set.
fn full_policy() -> Json {
    json!({
        "load_balancer": { "type": "ring_hash", "hash_on": { "header": "x-user" } },
        "retries": {
            "attempts": 2,
            "on": ["5xx", "503", "unavailable"],
            "per_try_timeout": "250ms",
            "backoff": "10ms",
            "max_backoff": "100ms",
            "budget": { "percent": 20, "min_retries_per_second": 5, "ttl": "10s" },
        },
        "outlier_detection": {
            "consecutive_5xx": 3,
            "interval": "10s",
            "base_ejection_time": "30s",
            "max_ejection_time": "5m",
            "max_ejection_percent": 50,
        },
        "limits": { "max_connections": 10, "max_pending_requests": 5, "max_requests": 20 },
    })
}

fn with_policy(policy: &str) -> String {
    format!(
        "\
node: {{ name: a }}
services:
  - name: reviews
    ports: [{{ name: http, port: 9080, protocol: http }}]
    policy:
{policy}"
    )
}

#[test]
fn policy_loads_with_its_defaults() {
    let config = load_ok(&with_policy(
        "      load_balancer: { type: maglev, hash_on: source_ip }\n      retries: { attempts: 2 }\n",
    ));
    let policy = config.services[0].policy.clone().unwrap();
    assert_eq!(policy.load_balancer.hash_on, Some(crate::HashOn::SourceIp));
    let retries = policy.retries.unwrap();
    assert_eq!(retries.on, crate::proxy::policy::default_retry_on());
    assert_eq!(retries.budget, crate::RetryBudget::default());
    assert_eq!(retries.backoff, Duration::from_millis(25));
    assert_eq!(policy.limits, None);
}

#[test]
fn policy_mistakes_are_reported_with_line_and_field() {
    let errors = load_err(&with_policy(
        "      load_balancer: { type: ring_hash }
      retries: { attempts: 11, on: [\"5xx\", teapot], per_try_timeout: 0s }
      outlier_detection: { consecutive_5xx: 0, base_ejection_time: 1m, max_ejection_time: 10s }
      limits: { max_requests: 0 }
",
    ));
    let p = "services[0].policy";
    assert_error(
        &errors,
        6,
        &format!("{p}.load_balancer.type"),
        "needs hash_on",
    );
    assert_error(&errors, 7, &format!("{p}.retries.attempts"), "out of range");
    assert_error(
        &errors,
        7,
        &format!("{p}.retries.on[1]"),
        "not a retry condition",
    );
    assert_error(
        &errors,
        7,
        &format!("{p}.retries.per_try_timeout"),
        "more than 0s",
    );
    let od = format!("{p}.outlier_detection");
    assert_error(&errors, 8, &format!("{od}.consecutive_5xx"), "at least 1");
    assert_error(
        &errors,
        8,
        &format!("{od}.max_ejection_time"),
        "shorter than",
    );
    assert_error(
        &errors,
        9,
        &format!("{p}.limits.max_requests"),
        "at least 1",
    );
    let errors = load_err(&with_policy(
        "      retries: { attempts: 1, backoff: 50ms, max_backoff: 20ms }\n",
    ));
    assert_error(
        &errors,
        6,
        &format!("{p}.retries.max_backoff"),
        "is shorter than backoff (50ms)",
    );
    let errors = load_err(&with_policy(
        "      retries: { attempts: 1, backoff: 0s }\n",
    ));
    assert_error(
        &errors,
        6,
        &format!("{p}.retries.backoff"),
        "must be more than 0s",
    );
    let errors = load_err(&with_policy(
        "      load_balancer: { type: round_robin, hash_on: { header: x, cookie: y } }\n",
    ));
    assert_error(
        &errors,
        6,
        &format!("{p}.load_balancer.hash_on"),
        "exactly one",
    );
    assert_error(
        &errors,
        6,
        &format!("{p}.load_balancer.hash_on"),
        "only to the ring_hash",
    );
}
