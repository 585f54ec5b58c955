use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue, Method};
use trellis_model::ProxyConfig;

use super::*;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const ADMIN: &str = "spiffe://cluster.local/ns/ops/sa/admin";

/// The policies of `yaml` (the items of `authorization.policies`, at 4 spaces), through the
/// config's own loader.
fn authorizer(yaml: &str) -> Authorizer {
    let text = format!("node: {{ name: a }}\nauthorization:\n  policies:\n{yaml}");
    match ProxyConfig::from_yaml("test.yaml", &text) {
        Ok(config) => Authorizer::new(&config.authorization),
        Err(errors) => panic!("invalid policies:\n{errors}"),
    }
}

/// A request (or, with `tcp`, a connection) to the app at 127.0.0.1:8080 from 10.0.0.5.
#[derive(Debug, Clone)]
struct Req {
    principal: Option<&'static str>,
    source: IpAddr,
    destination: SocketAddr,
    method: Method,
    path: &'static str,
    headers: HeaderMap,
    tcp: bool,
}

impl Req {
    fn from(principal: &'static str) -> Req {
        Req {
            principal: Some(principal),
            ..Req::plaintext()
        }
    }

    fn plaintext() -> Req {
        Req {
            principal: None,
            source: "10.0.0.5".parse().unwrap(),
            destination: "127.0.0.1:8080".parse().unwrap(),
            method: Method::GET,
            path: "/",
            headers: HeaderMap::new(),
            tcp: false,
        }
    }

    fn path(mut self, path: &'static str) -> Req {
        self.path = path;
        self
    }

    fn method(mut self, method: Method) -> Req {
        self.method = method;
        self
    }

    fn port(mut self, port: u16) -> Req {
        self.destination.set_port(port);
        self
    }

    fn source(mut self, ip: &str) -> Req {
        self.source = ip.parse().unwrap();
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.append(name, HeaderValue::from_static(value));
        self
    }

    fn tcp(mut self) -> Req {
        self.tcp = true;
        self
    }

    fn check(&self, authz: &Authorizer) -> Result<(), Denial> {
        let http = (!self.tcp).then_some(HttpAttributes {
            method: &self.method,
            path: self.path,
            headers: &self.headers,
        });
        authz.check(&Attributes {
            principal: self.principal,
            source: self.source,
            destination: self.destination,
            http,
        })
    }

    fn allowed(&self, authz: &Authorizer) -> bool {
        self.check(authz).is_ok()
    }
}

#[test]
fn without_policies_everything_is_allowed() {
    let authz = Authorizer::new(&Authorization::default());
    assert!(Req::plaintext().allowed(&authz));
    assert!(Req::from(WEB).tcp().allowed(&authz));
}

#[test]
fn deny_wins_over_allow() {
    let authz = authorizer(
        "    - { name: shop/allow-web, action: allow, rules: [{ from: [{ principals: [\"*\"] }] }] }
    - { name: shop/no-admin, action: deny, rules: [{ to: [{ paths: [/admin*] }] }] }
",
    );
    assert!(Req::from(WEB).path("/api").allowed(&authz));
    assert_eq!(
        Req::from(WEB).path("/admin/users").check(&authz),
        Err(Denial::DenyMatched {
            policy: "shop/no-admin".into()
        })
    );
    assert_eq!(
        Req::plaintext().path("/api").check(&authz),
        Err(Denial::NoAllowMatched),
        "no principal: the ALLOW policy does not match"
    );
}

#[test]
fn with_only_deny_policies_the_rest_is_allowed() {
    let authz = authorizer(
        "    - { name: d, action: deny, rules: [{ from: [{ namespaces: [test] }] }] }
",
    );
    assert!(Req::from(WEB).allowed(&authz));
    assert!(Req::plaintext().allowed(&authz));
    assert!(!Req::from("spiffe://cluster.local/ns/test/sa/x").allowed(&authz));
    // A DENY policy without rules denies nothing.
    let authz = authorizer("    - { name: d, action: deny }\n");
    assert!(Req::from(WEB).allowed(&authz));
}

#[test]
fn an_allow_policy_without_rules_allows_nothing_and_an_empty_rule_everything() {
    let authz = authorizer("    - { name: nothing, action: allow }\n");
    assert_eq!(Req::from(WEB).check(&authz), Err(Denial::NoAllowMatched));
    assert!(!Req::from(WEB).tcp().allowed(&authz));

    let authz = authorizer("    - { name: all, action: allow, rules: [{}] }\n");
    assert!(Req::from(WEB).allowed(&authz));
    assert!(Req::plaintext().tcp().allowed(&authz));

    // Several ALLOW policies: any one may allow.
    let authz = authorizer(
        "    - { name: nothing, action: allow }
    - { name: web, action: allow, rules: [{ from: [{ principals: [\"spiffe://cluster.local/ns/shop/sa/web\"] }] }] }
",
    );
    assert!(Req::from(WEB).allowed(&authz));
    assert!(!Req::from(ADMIN).allowed(&authz));
}

#[test]
fn principals_match_exactly_by_prefix_suffix_or_presence() {
    let allow = |pattern: &str| {
        authorizer(&format!(
            "    - {{ name: p, action: allow, rules: [{{ from: [{{ principals: [\"{pattern}\"] }}] }}] }}\n"
        ))
    };
    let exact = allow(WEB);
    assert!(Req::from(WEB).allowed(&exact));
    assert!(!Req::from("spiffe://cluster.local/ns/shop/sa/web2").allowed(&exact));
    let prefix = allow("spiffe://cluster.local/ns/shop/*");
    assert!(Req::from(WEB).allowed(&prefix));
    assert!(!Req::from(ADMIN).allowed(&prefix));
    let suffix = allow("*/sa/admin");
    assert!(Req::from(ADMIN).allowed(&suffix));
    assert!(!Req::from(WEB).allowed(&suffix));
    let any = allow("*");
    assert!(Req::from(WEB).allowed(&any) && Req::from(ADMIN).allowed(&any));
    for authz in [&exact, &prefix, &suffix, &any] {
        assert!(
            !Req::plaintext().allowed(authz),
            "a plaintext peer has no principal"
        );
    }

    // not_principals: a plaintext peer matches none, so it passes.
    let not_web = authorizer(
        "    - { name: p, action: allow, rules: [{ from: [{ not_principals: [\"spiffe://cluster.local/ns/shop/sa/web\"] }] }] }\n",
    );
    assert!(!Req::from(WEB).allowed(&not_web));
    assert!(Req::from(ADMIN).allowed(&not_web));
    assert!(Req::plaintext().allowed(&not_web));
}

#[test]
fn namespaces_come_from_the_principal() {
    let authz = authorizer(
        "    - { name: n, action: allow, rules: [{ from: [{ namespaces: [shop, \"op*\"], not_namespaces: [opx] }] }] }\n",
    );
    assert!(Req::from(WEB).allowed(&authz));
    assert!(Req::from(ADMIN).allowed(&authz), "prefix op*");
    assert!(!Req::from("spiffe://cluster.local/ns/opx/sa/a").allowed(&authz));
    assert!(!Req::from("spiffe://cluster.local/ns/test/sa/a").allowed(&authz));
    assert!(!Req::plaintext().allowed(&authz));
    assert_eq!(namespace_of(WEB), Some("shop"));
    assert_eq!(namespace_of("spiffe://td/ns//sa/x"), None);
    assert_eq!(namespace_of("cluster.local/ns/shop/sa/web"), None);
}

#[test]
fn all_fields_of_a_source_must_hold_and_any_source_may() {
    let authz = authorizer(
        "    - name: s
      action: allow
      rules:
        - from:
            - { principals: [\"spiffe://cluster.local/ns/shop/sa/web\"], ip_blocks: [10.0.0.0/8], not_ip_blocks: [10.9.0.0/16] }
            - { ip_blocks: [192.0.2.7] }
",
    );
    assert!(Req::from(WEB).allowed(&authz));
    assert!(!Req::from(WEB).source("172.16.0.1").allowed(&authz));
    assert!(
        !Req::from(WEB).source("10.9.1.1").allowed(&authz),
        "not_ip_blocks"
    );
    assert!(!Req::from(ADMIN).allowed(&authz));
    assert!(
        Req::plaintext().source("192.0.2.7").allowed(&authz),
        "the second source"
    );
}

#[test]
fn paths_methods_and_ports_with_their_not_fields() {
    let authz = authorizer(
        "    - name: o
      action: allow
      rules:
        - to:
            - { methods: [GET, \"HE*\"], paths: [/api/*, \"*.css\", /exact], not_paths: [/api/private*] }
            - { methods: [POST], ports: [9090] }
            - { not_methods: [DELETE, GET, POST, HEAD], not_ports: [8080] }
",
    );
    let req = Req::from(WEB);
    assert!(req.clone().path("/api/items").allowed(&authz));
    assert!(req.clone().path("/site/main.css").allowed(&authz));
    assert!(req.clone().path("/exact").allowed(&authz));
    assert!(!req.clone().path("/exact/more").allowed(&authz));
    assert!(!req.clone().path("/api/private/x").allowed(&authz));
    assert!(
        req.clone()
            .path("/api/x")
            .method(Method::HEAD)
            .allowed(&authz)
    );
    assert!(
        !req.clone()
            .path("/api/x")
            .method(Method::POST)
            .allowed(&authz)
    );
    assert!(req.clone().method(Method::POST).port(9090).allowed(&authz));
    assert!(
        !req.clone().method(Method::PUT).allowed(&authz),
        "not_ports: 8080"
    );
    assert!(req.clone().method(Method::PUT).port(7000).allowed(&authz));
    assert!(
        !req.clone()
            .method(Method::DELETE)
            .port(7000)
            .allowed(&authz)
    );
}

#[test]
fn paths_are_matched_normalized() {
    let authz = authorizer(
        "    - { name: d, action: deny, rules: [{ to: [{ paths: [/admin, /admin/*] }] }] }\n",
    );
    for path in [
        "/admin",
        "/./admin",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/%61dmin/x",
        "/admin/.",
    ] {
        assert!(!Req::from(WEB).path(path).allowed(&authz), "{path}");
    }
    for path in ["/public", "/administrator", "/public/%2Fadmin"] {
        assert!(Req::from(WEB).path(path).allowed(&authz), "{path}");
    }

    assert_eq!(normalize_path("/a/b"), "/a/b");
    assert!(matches!(normalize_path("/a/b"), Cow::Borrowed(_)));
    assert_eq!(normalize_path("/a/./b/../c"), "/a/c");
    assert_eq!(normalize_path("/a/b/.."), "/a/");
    assert_eq!(normalize_path("/../../x"), "/x");
    assert_eq!(normalize_path("/.."), "/");
    assert_eq!(normalize_path("/%7Euser/%41"), "/~user/A");
    assert_eq!(
        normalize_path("/%2F%20%zz%4"),
        "/%2F%20%zz%4",
        "only unreserved"
    );
    assert_eq!(normalize_path("/é%41/ü"), "/éA/ü");
}

#[test]
fn conditions_must_all_hold() {
    let authz = authorizer(
        "    - name: c
      action: allow
      rules:
        - when:
            - { key: \"request.headers[x-user]\", values: [alice, \"bo*\"], not_values: [bobby] }
            - { key: source.namespace, values: [shop] }
            - { key: destination.port, values: [\"8080\"] }
            - { key: source.ip, not_values: [192.0.2.0/24] }
            - { key: source.principal, values: [\"*/sa/web\"] }
",
    );
    let web = Req::from(WEB);
    assert!(web.clone().header("x-user", "alice").allowed(&authz));
    assert!(web.clone().header("x-user", "bob").allowed(&authz));
    assert!(!web.clone().header("x-user", "bobby").allowed(&authz));
    assert!(
        !web.clone().allowed(&authz),
        "absent header: no value matches"
    );
    let alice = web.clone().header("x-user", "alice");
    assert!(!alice.clone().port(9090).allowed(&authz));
    assert!(!alice.clone().source("192.0.2.1").allowed(&authz));
    assert!(!Req::from(ADMIN).header("x-user", "alice").allowed(&authz));

    // Several values of a header are joined with commas.
    let joined = authorizer(
        "    - { name: j, action: allow, rules: [{ when: [{ key: \"request.headers[x-a]\", values: [\"1,2\"] }] }] }\n",
    );
    assert!(
        Req::plaintext()
            .header("x-a", "1")
            .header("x-a", "2")
            .allowed(&joined)
    );

    // not_values of an absent header hold; presence needs the header.
    let absent = authorizer(
        "    - { name: a, action: deny, rules: [{ when: [{ key: \"request.headers[x-token]\", not_values: [\"*\"] }] }] }\n",
    );
    assert!(!Req::plaintext().allowed(&absent), "no token: denied");
    assert!(Req::plaintext().header("x-token", "t").allowed(&absent));
}

#[test]
fn jwt_attributes_are_absent() {
    // No RequestAuthentication: as in Istio without one, request.auth.* is never present.
    let allow = authorizer(
        "    - { name: a, action: allow, rules: [{ when: [{ key: \"request.auth.claims[iss]\", values: [\"*\"] }] }] }\n",
    );
    assert!(!Req::from(WEB).allowed(&allow));
    let deny = authorizer(
        "    - { name: d, action: deny, rules: [{ when: [{ key: request.auth.principal, not_values: [\"*\"] }] }] }\n",
    );
    assert!(!Req::from(WEB).allowed(&deny), "no JWT: denied");
}

#[test]
fn tcp_allow_rules_with_http_fields_match_nothing() {
    let authz = authorizer(
        "    - name: a
      action: allow
      rules:
        - { from: [{ principals: [\"spiffe://cluster.local/ns/shop/sa/web\"] }], to: [{ ports: [9000] }, { paths: [/x] }] }
        - { from: [{ principals: [\"*/sa/admin\"] }], to: [{ ports: [9000] }] }
        - { from: [{ principals: [\"*/sa/admin\"] }], when: [{ key: \"request.headers[x]\", values: [a] }] }
",
    );
    // Over HTTP the first rule allows web on port 9000.
    assert!(Req::from(WEB).port(9000).allowed(&authz));
    // Over TCP it needs a path it cannot have: the whole rule is out.
    assert_eq!(
        Req::from(WEB).port(9000).tcp().check(&authz),
        Err(Denial::NoAllowMatched)
    );
    assert!(Req::from(ADMIN).port(9000).tcp().allowed(&authz));
    assert!(
        !Req::from(ADMIN).port(9001).tcp().allowed(&authz),
        "the header rule is out on TCP"
    );
}

#[test]
fn tcp_deny_rules_lose_their_http_fields_and_deny_more() {
    let authz = authorizer(
        "    - { name: ops/no-admin, action: deny, rules: [{ from: [{ namespaces: [test] }], to: [{ paths: [/admin], ports: [9000] }] }] }
    - { name: ops/no-header, action: deny, rules: [{ from: [{ namespaces: [other] }], when: [{ key: \"request.headers[x]\", values: [a] }] }] }
",
    );
    let test = Req::from("spiffe://cluster.local/ns/test/sa/a");
    // HTTP: only /admin on 9000.
    assert!(test.clone().port(9000).path("/public").allowed(&authz));
    assert!(!test.clone().port(9000).path("/admin").allowed(&authz));
    // TCP: the path is dropped, so every connection to 9000 is denied; others pass.
    assert_eq!(
        test.clone().port(9000).tcp().check(&authz),
        Err(Denial::DenyMatched {
            policy: "ops/no-admin".into()
        })
    );
    assert!(test.clone().port(9001).tcp().allowed(&authz));
    // The header condition is dropped: every TCP connection from `other` is denied.
    let other = Req::from("spiffe://cluster.local/ns/other/sa/a");
    assert!(other.clone().allowed(&authz), "HTTP without the header");
    assert!(!other.tcp().allowed(&authz));
    assert!(Req::from(WEB).tcp().allowed(&authz));
}

#[test]
fn ports_apply_to_tcp() {
    let authz = authorizer(
        "    - { name: a, action: allow, rules: [{ from: [{ principals: [\"*/sa/web\"] }], to: [{ ports: [9000] }] }] }\n",
    );
    assert!(Req::from(WEB).port(9000).tcp().allowed(&authz));
    assert!(!Req::from(WEB).port(9001).tcp().allowed(&authz));
    assert!(!Req::from(ADMIN).port(9000).tcp().allowed(&authz));
}

#[test]
fn a_denial_says_which_policy() {
    assert_eq!(
        Denial::DenyMatched {
            policy: "shop/x".into()
        }
        .to_string(),
        "DENY policy shop/x matched"
    );
    assert_eq!(
        Denial::NoAllowMatched.to_string(),
        "no ALLOW policy matched"
    );
    let resp = denied_response();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}
