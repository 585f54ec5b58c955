//! AuthorizationPolicy to the `authorization` of one workload's proxy config, scoped as Istio
//! scopes it:
//! - a policy in the root namespace without a selector applies to every workload of the mesh;
//! - a policy in the root namespace with a selector applies to the workloads it selects, in
//!   every namespace;
//! - any other policy applies to the workloads of its own namespace: all of them without a
//!   selector, those it selects with one.
//!
//! Istio principals (`cluster.local/ns/shop/sa/web`, no scheme) become whole SPIFFE IDs, the
//! form the proxy learns from a peer's certificate: `spiffe://` is put in front of every
//! principal but a suffix or presence wildcard (`*/sa/web`, `*`), which match as written.

use super::super::mesh::selects;
use super::super::{
    AuthorizationAction, AuthorizationPolicySpec, AuthorizationRule, Resource, WorkloadSpec,
};
use crate::proxy::{
    Authorization, AuthorizationPolicy, PolicyAction, PolicyCondition, PolicyOperation, PolicyRule,
    PolicySource,
};

/// The policies that apply to `workload`, sorted by namespace and name.
pub(super) fn for_workload(
    policies: &[Resource<AuthorizationPolicySpec>],
    root_namespace: &str,
    workload: &Resource<WorkloadSpec>,
) -> Authorization {
    let ns = workload.metadata.namespace.as_str();
    let mut applying: Vec<&Resource<AuthorizationPolicySpec>> = policies
        .iter()
        .filter(|p| {
            let policy_ns = p.metadata.namespace.as_str();
            let in_scope = policy_ns == ns || policy_ns == root_namespace;
            in_scope
                && p.spec
                    .selector
                    .as_ref()
                    .is_none_or(|s| selects(s, &workload.spec.labels))
        })
        .collect();
    applying.sort_by_key(|p| (&p.metadata.namespace, &p.metadata.name));
    Authorization {
        policies: applying.into_iter().map(policy).collect(),
    }
}

fn policy(resource: &Resource<AuthorizationPolicySpec>) -> AuthorizationPolicy {
    let spec = &resource.spec;
    AuthorizationPolicy {
        name: format!("{}/{}", resource.metadata.namespace, resource.metadata.name),
        action: match spec.action {
            AuthorizationAction::Allow => PolicyAction::Allow,
            AuthorizationAction::Deny => PolicyAction::Deny,
        },
        rules: spec.rules.iter().map(rule).collect(),
    }
}

fn rule(rule: &AuthorizationRule) -> PolicyRule {
    PolicyRule {
        from: rule
            .from
            .iter()
            .map(|s| PolicySource {
                principals: s.principals.iter().map(|p| spiffe(p)).collect(),
                not_principals: s.not_principals.iter().map(|p| spiffe(p)).collect(),
                namespaces: s.namespaces.clone(),
                not_namespaces: s.not_namespaces.clone(),
                ip_blocks: s.ip_blocks.clone(),
                not_ip_blocks: s.not_ip_blocks.clone(),
            })
            .collect(),
        to: rule
            .to
            .iter()
            .map(|o| PolicyOperation {
                methods: o.methods.clone(),
                not_methods: o.not_methods.clone(),
                paths: o.paths.clone(),
                not_paths: o.not_paths.clone(),
                ports: o.ports.clone(),
                not_ports: o.not_ports.clone(),
            })
            .collect(),
        when: rule
            .when
            .iter()
            .map(|c| {
                let principals = c.key == "source.principal";
                let values = |values: &[String]| -> Vec<String> {
                    let each = values.iter();
                    each.map(|v| if principals { spiffe(v) } else { v.clone() })
                        .collect()
                };
                PolicyCondition {
                    key: c.key.clone(),
                    values: values(&c.values),
                    not_values: values(&c.not_values),
                }
            })
            .collect(),
    }
}

/// An Istio principal as a SPIFFE ID pattern: `cluster.local/ns/a/sa/b` →
/// `spiffe://cluster.local/ns/a/sa/b`, `cluster.local/ns/a/*` → `spiffe://cluster.local/ns/a/*`;
/// `*/sa/b` and `*` stay.
fn spiffe(principal: &str) -> String {
    if principal.starts_with('*') {
        principal.to_string()
    } else {
        format!("spiffe://{principal}")
    }
}

#[cfg(test)]
mod tests {
    use super::spiffe;
    use crate::resources::{CompileOptions, Resources, compile};
    use crate::{PolicyAction, ProxyConfig};

    /// `web` and `ratings` in `shop`, `api` (labelled like ratings) in `other`; policies in the
    /// root namespace, in `shop` and in `other`.
    const POLICIES: &str = "\
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: web, namespace: shop, labels: { app: web } }
spec: { address: 10.0.0.1 }
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: ratings, namespace: shop, labels: { app: ratings } }
spec: { address: 10.0.0.2 }
---
apiVersion: trellis.dev/v1alpha1
kind: Workload
metadata: { name: api, namespace: other, labels: { app: ratings } }
spec: { address: 10.0.0.3 }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: mesh-deny, namespace: trellis-system }
spec:
  action: DENY
  rules: [{ from: [{ source: { ipBlocks: [192.0.2.0/24] } }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ratings-everywhere, namespace: trellis-system }
spec:
  selector: { matchLabels: { app: ratings } }
  rules: [{ to: [{ operation: { methods: [GET] } }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: namespace-wide, namespace: shop }
spec:
  rules:
    - from:
        - source:
            principals: [cluster.local/ns/shop/sa/web, \"*/sa/admin\"]
            notPrincipals: [cluster.local/ns/shop/*]
            namespaces: [shop]
      when:
        - { key: source.principal, values: [cluster.local/ns/shop/sa/web], notValues: [\"*\"] }
        - { key: \"request.headers[x-user]\", values: [alice] }
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: ratings-only, namespace: shop }
spec:
  selector: { matchLabels: { app: ratings } }
  action: DENY
  rules: [{ to: [{ operation: { paths: [/admin*], ports: [\"8080\"] } }] }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: elsewhere, namespace: other }
spec: {}
";

    fn config(name: &str, namespace: &str) -> ProxyConfig {
        let resources = match Resources::load(&[("policies.yaml", POLICIES)]) {
            Ok(resources) => resources,
            Err(errors) => panic!("expected valid resources, got:\n{errors}"),
        };
        compile(&resources, name, namespace, &CompileOptions::default()).expect("compiles")
    }

    fn names(config: &ProxyConfig) -> Vec<&str> {
        let policies = &config.authorization.policies;
        policies.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn policies_apply_by_root_namespace_namespace_and_selector() {
        assert_eq!(
            names(&config("web", "shop")),
            ["shop/namespace-wide", "trellis-system/mesh-deny"],
            "the mesh's policy and its namespace's; not the ratings-only ones"
        );
        assert_eq!(
            names(&config("ratings", "shop")),
            [
                "shop/namespace-wide",
                "shop/ratings-only",
                "trellis-system/mesh-deny",
                "trellis-system/ratings-everywhere",
            ]
        );
        assert_eq!(
            names(&config("api", "other")),
            [
                "other/elsewhere",
                "trellis-system/mesh-deny",
                "trellis-system/ratings-everywhere",
            ],
            "a root selector applies in every namespace; shop's policies stay in shop"
        );

        // Another root namespace: trellis-system is an ordinary namespace, with no workload.
        let resources = Resources::load(&[("policies.yaml", POLICIES)]).unwrap();
        let options = CompileOptions {
            root_namespace: "other".to_string(),
            ..CompileOptions::default()
        };
        let web = compile(&resources, "web", "shop", &options).unwrap();
        assert_eq!(names(&web), ["other/elsewhere", "shop/namespace-wide"]);
    }

    #[test]
    fn a_policy_compiles_to_the_proxy_form() {
        let ratings = config("ratings", "shop");
        let policies = &ratings.authorization.policies;
        let allow = &policies[0];
        assert_eq!(allow.action, PolicyAction::Allow, "ALLOW is the default");
        let source = &allow.rules[0].from[0];
        assert_eq!(
            source.principals,
            ["spiffe://cluster.local/ns/shop/sa/web", "*/sa/admin"]
        );
        assert_eq!(source.not_principals, ["spiffe://cluster.local/ns/shop/*"]);
        assert_eq!(source.namespaces, ["shop"]);
        let when = &allow.rules[0].when;
        assert_eq!(when[0].values, ["spiffe://cluster.local/ns/shop/sa/web"]);
        assert_eq!(when[0].not_values, ["*"]);
        assert_eq!(when[1].key, "request.headers[x-user]");
        assert_eq!(when[1].values, ["alice"], "other keys' values stay");

        let deny = &policies[1];
        assert_eq!(deny.action, PolicyAction::Deny);
        assert_eq!(deny.rules[0].to[0].paths, ["/admin*"]);
        assert_eq!(deny.rules[0].to[0].ports, [8080]);
        assert_eq!(
            policies[2].rules[0].from[0].ip_blocks[0].to_string(),
            "192.0.2.0/24"
        );
        let elsewhere = config("api", "other");
        assert!(
            elsewhere.authorization.policies[0].rules.is_empty(),
            "an ALLOW policy without rules stays one (it allows nothing)"
        );

        // What the compiler writes, the proxy reads back.
        let text = serde_json::to_string(&ratings).unwrap();
        match ProxyConfig::from_yaml("compiled.json", &text) {
            Ok(parsed) => assert_eq!(parsed, ratings),
            Err(errors) => panic!("the compiled config does not validate:\n{errors}"),
        }
    }

    #[test]
    fn principals_become_spiffe_ids() {
        assert_eq!(
            spiffe("cluster.local/ns/a/sa/b"),
            "spiffe://cluster.local/ns/a/sa/b"
        );
        assert_eq!(
            spiffe("cluster.local/ns/a/*"),
            "spiffe://cluster.local/ns/a/*"
        );
        assert_eq!(spiffe("*/sa/b"), "*/sa/b");
        assert_eq!(spiffe("*"), "*");
    }
}
