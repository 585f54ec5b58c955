//! Decoding the config's `authorization`: each value checked on its own (principals are
//! SPIFFE IDs or wildcards, methods are tokens, `when` keys are attributes the proxy
//! evaluates, with values of their kind).

use super::Decoder;
use crate::decoder::join;
use crate::proxy::{
    Authorization, AuthorizationPolicy, ConditionKey, ConditionKeyError, IpBlock, PolicyAction,
    PolicyCondition, PolicyOperation, PolicyRule, PolicySource,
};
use crate::resources::names::is_http_token;
use crate::validate::quoted;
use crate::validate::yaml::Node;

pub(in crate::validate) const AUTHORIZATION_FIELDS: &[&str] = &["policies"];
pub(in crate::validate) const POLICY_FIELDS: &[&str] = &["name", "action", "rules"];
pub(in crate::validate) const POLICY_RULE_FIELDS: &[&str] = &["from", "to", "when"];
pub(in crate::validate) const POLICY_SOURCE_FIELDS: &[&str] = &[
    "principals",
    "not_principals",
    "namespaces",
    "not_namespaces",
    "ip_blocks",
    "not_ip_blocks",
];
pub(in crate::validate) const POLICY_OPERATION_FIELDS: &[&str] = &[
    "methods",
    "not_methods",
    "paths",
    "not_paths",
    "ports",
    "not_ports",
];
pub(in crate::validate) const POLICY_CONDITION_FIELDS: &[&str] = &["key", "values", "not_values"];
pub(in crate::validate) const POLICY_ACTIONS: &[(&str, PolicyAction)] =
    &[("allow", PolicyAction::Allow), ("deny", PolicyAction::Deny)];

impl Decoder {
    pub(super) fn authorization(&mut self, node: &Node, path: &str) -> Authorization {
        let f = self.fields(node, path, AUTHORIZATION_FIELDS);
        Authorization {
            policies: self
                .optional(&f, "policies", |d, n, p| d.list(n, p, Self::policy))
                .unwrap_or_default(),
        }
    }

    fn policy(&mut self, node: &Node, path: &str) -> AuthorizationPolicy {
        let f = self.fields(node, path, POLICY_FIELDS);
        AuthorizationPolicy {
            name: self.optional(&f, "name", Self::string).unwrap_or_default(),
            action: self
                .required(&f, "action", |d, n, p| {
                    d.choice(n, p, "an action", POLICY_ACTIONS)
                })
                // A placeholder that allows nothing it should not.
                .unwrap_or(PolicyAction::Deny),
            rules: self
                .optional(&f, "rules", |d, n, p| d.list(n, p, Self::policy_rule))
                .unwrap_or_default(),
        }
    }

    fn policy_rule(&mut self, node: &Node, path: &str) -> PolicyRule {
        let f = self.fields(node, path, POLICY_RULE_FIELDS);
        PolicyRule {
            from: self
                .optional(&f, "from", |d, n, p| d.list(n, p, Self::policy_source))
                .unwrap_or_default(),
            to: self
                .optional(&f, "to", |d, n, p| d.list(n, p, Self::policy_operation))
                .unwrap_or_default(),
            when: self
                .optional(&f, "when", |d, n, p| d.list(n, p, Self::policy_condition))
                .unwrap_or_default(),
        }
    }

    fn policy_source(&mut self, node: &Node, path: &str) -> PolicySource {
        let f = self.fields(node, path, POLICY_SOURCE_FIELDS);
        let strings = |d: &mut Self, n: &Node, p: &str| {
            d.list(n, p, |d, n, p| d.string(n, p).unwrap_or_default())
        };
        let principals = |d: &mut Self, n: &Node, p: &str| {
            d.list(n, p, |d, n, p| {
                let principal = d.string(n, p)?;
                if let Some(reason) = principal_error(&principal) {
                    d.fail(n.mark, p, reason);
                }
                Some(principal)
            })
            .map(|list| list.into_iter().flatten().collect())
        };
        let blocks = |d: &mut Self, n: &Node, p: &str| {
            d.list(n, p, Self::ip_block)
                .map(|list| list.into_iter().flatten().collect())
        };
        PolicySource {
            principals: self
                .optional(&f, "principals", principals)
                .unwrap_or_default(),
            not_principals: self
                .optional(&f, "not_principals", principals)
                .unwrap_or_default(),
            namespaces: self.optional(&f, "namespaces", strings).unwrap_or_default(),
            not_namespaces: self
                .optional(&f, "not_namespaces", strings)
                .unwrap_or_default(),
            ip_blocks: self.optional(&f, "ip_blocks", blocks).unwrap_or_default(),
            not_ip_blocks: self
                .optional(&f, "not_ip_blocks", blocks)
                .unwrap_or_default(),
        }
    }

    fn policy_operation(&mut self, node: &Node, path: &str) -> PolicyOperation {
        let f = self.fields(node, path, POLICY_OPERATION_FIELDS);
        let strings = |d: &mut Self, n: &Node, p: &str| {
            d.list(n, p, |d, n, p| d.string(n, p).unwrap_or_default())
        };
        let methods = |d: &mut Self, n: &Node, p: &str| {
            d.list(n, p, |d, n, p| {
                let method = d.string(n, p).unwrap_or_default();
                if !d.failed.contains(p) && !is_http_token(&method) {
                    let reason = format!("{} is not an HTTP method", quoted(&method));
                    d.fail(n.mark, p, reason);
                }
                method
            })
        };
        let ports =
            |d: &mut Self, n: &Node, p: &str| d.list(n, p, |d, n, p| d.port(n, p).unwrap_or(0));
        PolicyOperation {
            methods: self.optional(&f, "methods", methods).unwrap_or_default(),
            not_methods: self
                .optional(&f, "not_methods", methods)
                .unwrap_or_default(),
            paths: self.optional(&f, "paths", strings).unwrap_or_default(),
            not_paths: self.optional(&f, "not_paths", strings).unwrap_or_default(),
            ports: self.optional(&f, "ports", ports).unwrap_or_default(),
            not_ports: self.optional(&f, "not_ports", ports).unwrap_or_default(),
        }
    }

    fn policy_condition(&mut self, node: &Node, path: &str) -> PolicyCondition {
        let f = self.fields(node, path, POLICY_CONDITION_FIELDS);
        let key_text = self.required(&f, "key", Self::string);
        let key_path = join(path, "key");
        let key = key_text.as_deref().and_then(|text| {
            let reason = match ConditionKey::parse(text) {
                Ok(ConditionKey::RequestHeader(name)) if !is_http_token(&name) => {
                    format!("{} is not a header name", quoted(&name))
                }
                Ok(key) => return Some(key),
                Err(ConditionKeyError::Unsupported) => {
                    format!("{} is an attribute Trellis does not evaluate", quoted(text))
                }
                Err(ConditionKeyError::Unknown) => format!(
                    "{} is not an attribute the proxy knows (source.ip, remote.ip, \
                     source.namespace, source.principal, destination.ip, destination.port, \
                     request.headers[NAME], request.auth.*)",
                    quoted(text)
                ),
            };
            let mark = self.marks.get(&key_path).copied().unwrap_or(f.mark);
            self.fail(mark, &key_path, reason);
            None
        });
        let mut values = |name: &str| {
            let check = |d: &mut Self, n: &Node, p: &str| {
                let value = d.string(n, p).unwrap_or_default();
                let reason = match &key {
                    _ if d.failed.contains(p) => None,
                    Some(ConditionKey::SourcePrincipal) => principal_error(&value),
                    Some(key) => key.value_error(&value),
                    None => None,
                };
                if let Some(reason) = reason {
                    d.fail(n.mark, p, reason);
                }
                value
            };
            self.optional(&f, name, |d, n, p| d.list(n, p, check))
                .unwrap_or_default()
        };
        let condition = PolicyCondition {
            key: key_text.unwrap_or_default(),
            values: values("values"),
            not_values: values("not_values"),
        };
        if condition.values.is_empty()
            && condition.not_values.is_empty()
            && !self.failed.contains(path)
        {
            self.fail(
                f.mark,
                path,
                "a condition needs values or not_values".into(),
            );
        }
        condition
    }

    fn ip_block(&mut self, node: &Node, path: &str) -> Option<IpBlock> {
        let text = self.scalar(node, path, "an IP address or CIDR block")?;
        let block = IpBlock::parse(text);
        if block.is_none() {
            let reason = format!(
                "{} is not an IP address or CIDR block (write 10.0.0.1 or 10.0.0.0/8)",
                node.describe()
            );
            self.fail(node.mark, path, reason);
        }
        block
    }
}

/// A principal is a whole SPIFFE ID, or Istio's wildcard forms of one.
fn principal_error(principal: &str) -> Option<String> {
    if principal.starts_with("spiffe://") || principal.starts_with('*') {
        return None;
    }
    Some(format!(
        "{} is not a SPIFFE ID: write spiffe://{} (the proxy config takes whole IDs; \
         `*` at the start or end for a suffix or prefix, `*` alone for any)",
        quoted(principal),
        principal
    ))
}
