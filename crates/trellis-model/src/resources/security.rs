//! `security.istio.io/v1` `PeerAuthentication` and `AuthorizationPolicy`: the shapes Istio users
//! already write, with Istio's validation rules.
//!
//! PeerAuthentication is compiled into each proxy's mTLS modes, AuthorizationPolicy into each
//! proxy's `authorization` (see `compile/authorization.rs`), which the proxy enforces.

use std::collections::BTreeMap;

use super::Labels;
use super::decode::{Decoder, Fields};
use super::names::{is_http_token, quoted};
use crate::proxy::authorization::CONDITION_KEYS;
use crate::proxy::{ConditionKey, ConditionKeyError};
use crate::validate::yaml::Node;
use crate::{IpBlock, MtlsMode};

const PEER_AUTHENTICATION_FIELDS: &[&str] = &["selector", "mtls", "portLevelMtls"];
const SELECTOR_FIELDS: &[&str] = &["matchLabels"];
const MTLS_FIELDS: &[&str] = &["mode"];
const AUTHORIZATION_FIELDS: &[&str] = &["selector", "action", "rules"];
const RULE_FIELDS: &[&str] = &["from", "to", "when"];
const FROM_FIELDS: &[&str] = &["source"];
const TO_FIELDS: &[&str] = &["operation"];
const SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
];
const OPERATION_FIELDS: &[&str] = &[
    "methods",
    "notMethods",
    "paths",
    "notPaths",
    "ports",
    "notPorts",
];
const CONDITION_FIELDS: &[&str] = &["key", "values", "notValues"];

/// Istio's modes; `UNSET` inherits from the enclosing policy.
const MTLS_MODES: &[(&str, Option<MtlsMode>)] = &[
    ("UNSET", None),
    ("DISABLE", Some(MtlsMode::Disable)),
    ("PERMISSIVE", Some(MtlsMode::Permissive)),
    ("STRICT", Some(MtlsMode::Strict)),
];
const ACTIONS: &[(&str, AuthorizationAction)] = &[
    ("ALLOW", AuthorizationAction::Allow),
    ("DENY", AuthorizationAction::Deny),
];

/// What mTLS a workload's mesh listener accepts. Without a selector the policy is for the whole
/// namespace (for the whole mesh in the root namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuthenticationSpec {
    /// The workloads (in the policy's namespace) it applies to; absent: all of them.
    pub selector: Option<Labels>,
    /// Absent (or `UNSET`): inherited from the namespace's, then the mesh's policy.
    pub mtls: Option<MtlsMode>,
    /// Modes for single app ports (by the port the workload listens on); a selector is needed.
    /// A `None` mode (`UNSET`) inherits the workload's.
    pub port_level_mtls: BTreeMap<u16, Option<MtlsMode>>,
}

/// Who may call the selected workloads, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicySpec {
    pub selector: Option<Labels>,
    pub action: AuthorizationAction,
    /// A request matches the policy if it matches any rule. An ALLOW policy with no rules
    /// allows nothing; a DENY policy with no rules denies nothing.
    pub rules: Vec<AuthorizationRule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthorizationAction {
    #[default]
    Allow,
    Deny,
}

/// A request matches if it matches any of `from`, any of `to` and all of `when` (an empty
/// list matches everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizationRule {
    pub from: Vec<RuleSource>,
    pub to: Vec<RuleOperation>,
    pub when: Vec<RuleCondition>,
}

/// Istio principals are SPIFFE IDs without the scheme: `cluster.local/ns/shop/sa/frontend`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSource {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub ip_blocks: Vec<IpBlock>,
    pub not_ip_blocks: Vec<IpBlock>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleOperation {
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCondition {
    /// An Istio attribute: `source.ip`, `request.headers[x-user]`, `request.auth.claims[iss]`, ...
    pub key: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
}

impl Decoder {
    pub(super) fn peer_authentication_spec(
        &mut self,
        node: &Node,
        path: &str,
    ) -> PeerAuthenticationSpec {
        let f = self.fields(node, path, PEER_AUTHENTICATION_FIELDS);
        let spec = PeerAuthenticationSpec {
            selector: self.optional(&f, "selector", Self::selector).flatten(),
            mtls: self.optional(&f, "mtls", Self::mtls).flatten(),
            port_level_mtls: self
                .optional(&f, "portLevelMtls", Self::port_level_mtls)
                .unwrap_or_default(),
        };
        if f.has("portLevelMtls")
            && spec.selector.is_none()
            && !self.failed(&format!("{path}.selector"))
        {
            let reason =
                "portLevelMtls applies to the workloads of a selector: add selector.matchLabels";
            self.report(&format!("{path}.portLevelMtls"), &[], reason);
        }
        spec
    }

    /// `selector: {matchLabels: {...}}`; empty labels select the whole namespace, as in Istio.
    pub(super) fn selector(&mut self, node: &Node, path: &str) -> Option<Option<Labels>> {
        let f = self.fields(node, path, SELECTOR_FIELDS);
        let labels = self.optional(&f, "matchLabels", Self::labels)?;
        Some((!labels.is_empty()).then_some(labels))
    }

    fn mtls(&mut self, node: &Node, path: &str) -> Option<Option<MtlsMode>> {
        let f = self.fields(node, path, MTLS_FIELDS);
        self.optional(&f, "mode", |d, n, p| {
            d.choice(n, p, "an mTLS mode", MTLS_MODES)
        })
    }

    fn port_level_mtls(
        &mut self,
        node: &Node,
        path: &str,
    ) -> Option<BTreeMap<u16, Option<MtlsMode>>> {
        let what = "a mapping of port numbers to { mode: ... } (e.g. 8080: { mode: DISABLE })";
        let entries = self.map(node, path, what, Self::mtls)?;
        let mut ports = BTreeMap::new();
        for (key, mode) in entries {
            match key.parse::<u16>() {
                Ok(port) if port > 0 => {
                    ports.insert(port, mode);
                }
                _ => {
                    let reason = format!("{} is not a port number (1-65535)", quoted(&key));
                    self.report(&format!("{path}.{key}"), &[], reason);
                }
            }
        }
        Some(ports)
    }

    pub(super) fn authorization_policy_spec(
        &mut self,
        node: &Node,
        path: &str,
    ) -> AuthorizationPolicySpec {
        let f = self.fields(node, path, AUTHORIZATION_FIELDS);
        let action = self.optional(&f, "action", |d, n, p| {
            if matches!(n.text(), Some("AUDIT" | "CUSTOM")) {
                let reason = format!(
                    "{} is an Istio action Trellis does not support (use ALLOW or DENY)",
                    n.describe()
                );
                d.fail(n.mark, p, reason);
                return None;
            }
            d.choice(n, p, "an action", ACTIONS)
        });
        AuthorizationPolicySpec {
            selector: self.optional(&f, "selector", Self::selector).flatten(),
            action: action.unwrap_or_default(),
            rules: self
                .optional(&f, "rules", |d, n, p| {
                    d.list(n, p, Self::authorization_rule)
                })
                .unwrap_or_default(),
        }
    }

    fn authorization_rule(&mut self, node: &Node, path: &str) -> AuthorizationRule {
        let f = self.fields(node, path, RULE_FIELDS);
        let from = |d: &mut Self, n: &Node, p: &str| {
            let f = d.fields(n, p, FROM_FIELDS);
            d.required(&f, "source", |d, n, p| Some(d.rule_source(n, p)))
                .unwrap_or_default()
        };
        let to = |d: &mut Self, n: &Node, p: &str| {
            let f = d.fields(n, p, TO_FIELDS);
            d.required(&f, "operation", |d, n, p| Some(d.rule_operation(n, p)))
                .unwrap_or_default()
        };
        AuthorizationRule {
            from: self
                .optional(&f, "from", |d, n, p| d.nonempty_list(n, p, from))
                .unwrap_or_default(),
            to: self
                .optional(&f, "to", |d, n, p| d.nonempty_list(n, p, to))
                .unwrap_or_default(),
            when: self
                .optional(&f, "when", |d, n, p| {
                    d.nonempty_list(n, p, Self::rule_condition)
                })
                .unwrap_or_default(),
        }
    }

    fn rule_source(&mut self, node: &Node, path: &str) -> RuleSource {
        let f = self.fields(node, path, SOURCE_FIELDS);
        let source = RuleSource {
            principals: self.principals(&f, "principals"),
            not_principals: self.principals(&f, "notPrincipals"),
            namespaces: self
                .optional(&f, "namespaces", Self::strings)
                .unwrap_or_default(),
            not_namespaces: self
                .optional(&f, "notNamespaces", Self::strings)
                .unwrap_or_default(),
            ip_blocks: self
                .optional(&f, "ipBlocks", Self::ip_blocks)
                .unwrap_or_default(),
            not_ip_blocks: self
                .optional(&f, "notIpBlocks", Self::ip_blocks)
                .unwrap_or_default(),
        };
        if f.present().is_empty() && !self.failed(path) {
            let reason = format!(
                "a source needs at least one of: {}",
                SOURCE_FIELDS.join(", ")
            );
            self.report(path, &[], reason);
        }
        source
    }

    fn principals(&mut self, f: &Fields<'_>, name: &str) -> Vec<String> {
        let principals = self.optional(f, name, Self::strings).unwrap_or_default();
        for (i, principal) in principals.iter().enumerate() {
            if let Some(rest) = principal.strip_prefix("spiffe://") {
                let reason = format!(
                    "Istio principals leave out the scheme: write {}",
                    quoted(rest)
                );
                self.report(&format!("{}.{name}[{i}]", f.path), &[], reason);
            }
        }
        principals
    }

    fn rule_operation(&mut self, node: &Node, path: &str) -> RuleOperation {
        let f = self.fields(node, path, OPERATION_FIELDS);
        let methods = |d: &mut Self, n: &Node, p: &str| {
            let methods = d.strings(n, p)?;
            for (i, m) in methods.iter().enumerate() {
                if !m.is_empty() && !is_http_token(m) {
                    let reason = format!("{} is not an HTTP method", quoted(m));
                    d.report(&format!("{p}[{i}]"), &[], reason);
                }
            }
            Some(methods)
        };
        let ports = |d: &mut Self, n: &Node, p: &str| d.list(n, p, Self::text_port);
        let operation = RuleOperation {
            methods: self.optional(&f, "methods", methods).unwrap_or_default(),
            not_methods: self.optional(&f, "notMethods", methods).unwrap_or_default(),
            paths: self
                .optional(&f, "paths", Self::strings)
                .unwrap_or_default(),
            not_paths: self
                .optional(&f, "notPaths", Self::strings)
                .unwrap_or_default(),
            ports: self.optional(&f, "ports", ports).unwrap_or_default(),
            not_ports: self.optional(&f, "notPorts", ports).unwrap_or_default(),
        };
        if f.present().is_empty() && !self.failed(path) {
            let reason = format!(
                "an operation needs at least one of: {}",
                OPERATION_FIELDS.join(", ")
            );
            self.report(path, &[], reason);
        }
        operation
    }

    fn rule_condition(&mut self, node: &Node, path: &str) -> RuleCondition {
        let f = self.fields(node, path, CONDITION_FIELDS);
        let condition = RuleCondition {
            key: self.required(&f, "key", Self::string).unwrap_or_default(),
            values: self
                .optional(&f, "values", Self::strings)
                .unwrap_or_default(),
            not_values: self
                .optional(&f, "notValues", Self::strings)
                .unwrap_or_default(),
        };
        let key_path = format!("{path}.key");
        if let Some(reason) = condition_key_error(&condition.key) {
            self.report(&key_path, &[], reason);
        }
        if !f.has("values") && !f.has("notValues") && !self.failed(path) {
            self.report(path, &[], "a condition needs values or notValues");
        }
        // Values of address and port keys must be addresses and ports.
        let Ok(key) = ConditionKey::parse(&condition.key) else {
            return condition;
        };
        for (field, values) in [
            ("values", &condition.values),
            ("notValues", &condition.not_values),
        ] {
            for (i, value) in values.iter().enumerate() {
                if let Some(reason) = key.value_error(value) {
                    self.report(&format!("{path}.{field}[{i}]"), &[&key_path], reason);
                }
            }
        }
        condition
    }

    fn ip_blocks(&mut self, node: &Node, path: &str) -> Option<Vec<IpBlock>> {
        let blocks = self.list(node, path, |d, n, p| {
            let text = d.scalar(n, p, "an IP address or CIDR block")?;
            let block = IpBlock::parse(text);
            if block.is_none() {
                let reason = format!(
                    "{} is not an IP address or CIDR block (write 10.0.0.1 or 10.0.0.0/8)",
                    n.describe()
                );
                d.fail(n.mark, p, reason);
            }
            block
        })?;
        Some(blocks.into_iter().flatten().collect())
    }

    /// A port, as a number or (as Istio writes them) a string.
    fn text_port(&mut self, node: &Node, path: &str) -> u16 {
        let Some(text) = self.scalar(node, path, "a port number (1-65535)") else {
            return 0;
        };
        match text.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                let reason = format!("{} is not a port number (1-65535)", node.describe());
                self.fail(node.mark, path, reason);
                0
            }
        }
    }
}

/// Istio's attribute names for `when`, those Trellis evaluates.
pub(crate) fn condition_key_error(key: &str) -> Option<String> {
    match ConditionKey::parse(key) {
        Ok(_) => None,
        Err(_) if key.is_empty() => None,
        Err(ConditionKeyError::Unsupported) => Some(format!(
            "{} is an Istio attribute Trellis does not evaluate",
            quoted(key)
        )),
        Err(ConditionKeyError::Unknown) => {
            let names: Vec<&str> = CONDITION_KEYS
                .iter()
                .filter(|(_, k)| k.is_some())
                .map(|(name, _)| *name)
                .collect();
            Some(format!(
                "{} is not an attribute Istio knows (expected one of: {}, \
                 request.headers[NAME], request.auth.claims[NAME])",
                quoted(key),
                names.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_keys() {
        assert_eq!(condition_key_error("source.ip"), None);
        assert_eq!(condition_key_error("request.headers[x-user]"), None);
        assert_eq!(condition_key_error("request.auth.claims[iss]"), None);
        assert!(condition_key_error("request.headers[]").is_some());
        assert!(condition_key_error("source.ips").is_some());
        let unsupported = condition_key_error("connection.sni").unwrap();
        assert!(
            unsupported.contains("Trellis does not evaluate"),
            "{unsupported}"
        );
    }
}
