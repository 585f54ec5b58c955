//! Inbound authorization in the proxy config: Istio's `AuthorizationPolicy`, already scoped to
//! one workload by the control plane, in a shape the proxy evaluates directly.
//!
//! The proxy decides as Istio does: if any `deny` policy matches, the request is denied; else,
//! with no `allow` policy, it is allowed; else it is allowed if an `allow` policy matches. A
//! policy matches if any of its rules does (so an `allow` policy without rules allows nothing);
//! a rule matches if any `from` matches, any `to` matches and every `when` holds (an empty
//! list matches everything); within one source or operation every field given must hold.
//!
//! Strings are matched as Istio matches them: `abc` exactly, `abc*` by prefix, `*abc` by
//! suffix, and `*` if the value is present at all. Principals are whole SPIFFE IDs
//! (`spiffe://cluster.local/ns/shop/sa/web`; `spiffe://cluster.local/ns/shop/*`, `*/sa/web`).
//!
//! On TCP (opaque connections, `CONNECT` tunnels) the HTTP fields (methods, paths, request
//! headers and `request.auth.*`) cannot be evaluated: an `allow` rule with one never matches,
//! and they are left out of a `deny` rule, which then matches more.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// This workload's authorization policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    #[serde(default)]
    pub policies: Vec<AuthorizationPolicy>,
}

/// One `AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Where the policy came from, for logs (`shop/deny-admin`).
    #[serde(default)]
    pub name: String,
    pub action: PolicyAction,
    /// A request matches the policy if it matches any rule.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyAction {
    Allow,
    Deny,
}

/// Any of `from`, any of `to`, all of `when`; an empty list matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PolicySource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyOperation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<PolicyCondition>,
}

/// Who is calling. Every field given must hold; a field holds if any of its values matches
/// (a `not_` field: if none does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySource {
    /// The peer's SPIFFE ID, proven by mutual TLS (a plaintext peer has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// The namespace of the peer's SPIFFE ID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// The address the connection came from: for mesh traffic, the peer proxy's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<IpBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<IpBlock>,
}

/// What is called.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOperation {
    /// HTTP methods (HTTP only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Request paths, without the query (HTTP only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// The app port the request or connection is for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
}

/// An Istio attribute (`key`, see [`ConditionKey`]) with the values it may, or may not, have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCondition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// The attributes a `when` condition can test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKey {
    /// `source.ip`: the address the connection came from.
    SourceIp,
    /// `remote.ip`: the original client; the proxy trusts no `X-Forwarded-For` hop, so this is
    /// `source.ip`, as in Istio with its default `numTrustedProxies: 0`.
    RemoteIp,
    /// `source.namespace`: the namespace of the peer's SPIFFE ID.
    SourceNamespace,
    /// `source.principal`: the peer's SPIFFE ID.
    SourcePrincipal,
    /// `destination.ip`: the app address.
    DestinationIp,
    /// `destination.port`: the app port.
    DestinationPort,
    /// `request.headers[NAME]` (HTTP only).
    RequestHeader(String),
    /// `request.auth.principal`, `.audiences`, `.presenter`, `.claims[NAME]` (HTTP only): the
    /// attributes of a JWT that RequestAuthentication validated. Trellis validates none, so
    /// they are always absent, as in Istio without a RequestAuthentication.
    RequestAuth,
}

/// Why a `when` key cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionKeyError {
    /// Not an attribute Istio knows.
    Unknown,
    /// An Istio attribute Trellis does not evaluate (`connection.sni`, `experimental.*`).
    Unsupported,
}

/// An address or CIDR block (`10.0.0.0/8`; a bare address is a /32 or /128). Written and read
/// as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpBlock {
    pub address: IpAddr,
    pub prefix_len: u8,
}

/// The `when` keys that are a fixed name.
pub(crate) const CONDITION_KEYS: &[(&str, Option<ConditionKey>)] = &[
    ("source.ip", Some(ConditionKey::SourceIp)),
    ("remote.ip", Some(ConditionKey::RemoteIp)),
    ("source.namespace", Some(ConditionKey::SourceNamespace)),
    ("source.principal", Some(ConditionKey::SourcePrincipal)),
    ("request.auth.principal", Some(ConditionKey::RequestAuth)),
    ("request.auth.audiences", Some(ConditionKey::RequestAuth)),
    ("request.auth.presenter", Some(ConditionKey::RequestAuth)),
    ("destination.ip", Some(ConditionKey::DestinationIp)),
    ("destination.port", Some(ConditionKey::DestinationPort)),
    ("connection.sni", None),
];

impl Authorization {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

impl ConditionKey {
    /// Parse an Istio attribute name: one of [`CONDITION_KEYS`], `request.headers[NAME]` or
    /// `request.auth.claims[NAME]`.
    pub fn parse(key: &str) -> Result<Self, ConditionKeyError> {
        if let Some((_, known)) = CONDITION_KEYS.iter().find(|(name, _)| *name == key) {
            return known.clone().ok_or(ConditionKeyError::Unsupported);
        }
        let bracketed = |prefix: &str| {
            key.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(']'))
                .filter(|name| !name.is_empty() && !name.contains(['[', ']']))
        };
        if let Some(name) = bracketed("request.headers[") {
            return Ok(ConditionKey::RequestHeader(name.to_string()));
        }
        if bracketed("request.auth.claims[").is_some() {
            return Ok(ConditionKey::RequestAuth);
        }
        if key.starts_with("experimental.envoy.filters.") {
            return Err(ConditionKeyError::Unsupported);
        }
        Err(ConditionKeyError::Unknown)
    }

    /// Whether only an HTTP request has this attribute.
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            ConditionKey::RequestHeader(_) | ConditionKey::RequestAuth
        )
    }

    /// Whether `value` is a value this attribute can have; the reason if not.
    pub fn value_error(&self, value: &str) -> Option<String> {
        match self {
            ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp
                if IpBlock::parse(value).is_none() =>
            {
                Some(format!("{value:?} is not an IP address or CIDR block"))
            }
            ConditionKey::DestinationPort if !value.parse::<u16>().is_ok_and(|p| p > 0) => {
                Some(format!("{value:?} is not a port number (1-65535)"))
            }
            _ => None,
        }
    }
}

impl IpBlock {
    /// Parse `10.0.0.1` or `10.0.0.0/8`.
    pub fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().ok()?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            Some(_) => return None,
            None => max,
        };
        (prefix_len <= max).then_some(Self {
            address,
            prefix_len,
        })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as the IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |width: u32| width.saturating_sub(u32::from(self.prefix_len));
        match (self.address, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(bits(32)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(bits(128)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl Serialize for IpBlock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpBlock {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        IpBlock::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not an IP address or CIDR block"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_blocks_parse() {
        let block = IpBlock::parse("10.0.0.0/8").unwrap();
        assert_eq!(block.to_string(), "10.0.0.0/8");
        assert_eq!(IpBlock::parse("10.1.2.3").unwrap().prefix_len, 32);
        assert_eq!(IpBlock::parse("fd00::/8").unwrap().prefix_len, 8);
        for bad in ["10.0.0.0/33", "10.0.0/8", "10.0.0.0/", "10.0.0.0/+8", "x"] {
            assert_eq!(IpBlock::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn ip_blocks_contain() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let block = |s: &str| IpBlock::parse(s).unwrap();
        assert!(block("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!block("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(block("10.1.2.3").contains(ip("10.1.2.3")));
        assert!(!block("10.1.2.3").contains(ip("10.1.2.4")));
        assert!(block("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(!block("0.0.0.0/0").contains(ip("::1")));
        assert!(
            block("127.0.0.1").contains(ip("::ffff:127.0.0.1")),
            "v4-mapped"
        );
        assert!(block("fd00::/8").contains(ip("fd12::1")));
        assert!(!block("fd00::/8").contains(ip("fe80::1")));
        assert!(block("::/0").contains(ip("2001:db8::1")));
        // A block written with host bits set matches its network.
        assert!(block("10.1.2.3/16").contains(ip("10.1.9.9")));
    }

    #[test]
    fn condition_keys() {
        assert_eq!(ConditionKey::parse("source.ip"), Ok(ConditionKey::SourceIp));
        assert_eq!(
            ConditionKey::parse("request.headers[x-user]"),
            Ok(ConditionKey::RequestHeader("x-user".to_string()))
        );
        assert_eq!(
            ConditionKey::parse("request.auth.claims[iss]"),
            Ok(ConditionKey::RequestAuth)
        );
        assert_eq!(
            ConditionKey::parse("request.headers[]"),
            Err(ConditionKeyError::Unknown)
        );
        assert_eq!(
            ConditionKey::parse("source.ips"),
            Err(ConditionKeyError::Unknown)
        );
        assert_eq!(
            ConditionKey::parse("connection.sni"),
            Err(ConditionKeyError::Unsupported)
        );
        assert_eq!(
            ConditionKey::parse("experimental.envoy.filters.a[b]"),
            Err(ConditionKeyError::Unsupported)
        );
        assert!(ConditionKey::RequestAuth.http_only());
        assert!(!ConditionKey::SourcePrincipal.http_only());
    }

    #[test]
    fn ip_blocks_are_text_in_json() {
        let block = IpBlock::parse("10.0.0.0/8").unwrap();
        assert_eq!(serde_json::to_value(block).unwrap(), "10.0.0.0/8");
        let back: IpBlock = serde_json::from_value("10.0.0.0/8".into()).unwrap();
        assert_eq!(back, block);
        let bad = serde_json::from_value::<IpBlock>("10.0.0.0/99".into()).unwrap_err();
        assert!(bad.to_string().contains("not an IP address or CIDR block"));
    }
}
