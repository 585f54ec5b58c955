//! SPIFFE IDs in the Kubernetes shape: `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.

use std::fmt;
use std::str::FromStr;

/// A workload identity. Parsed and validated once; cheap to compare and print.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a SPIFFE ID we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("{0:?} does not start with spiffe://")]
    Scheme(String),
    #[error(
        "{id:?}: trust domain {domain:?} is not valid (lower-case letters, digits, '.', '-', '_')"
    )]
    TrustDomain { id: String, domain: String },
    #[error("{0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    Shape(String),
    #[error("{id:?}: {what} {value:?} is not a valid name (lower-case letters, digits, '-', '.')")]
    Segment {
        id: String,
        what: &'static str,
        value: String,
    },
}

impl SpiffeId {
    /// Build an ID from its parts, validating each.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_owned()))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or_else(|| SpiffeIdError::Shape(s.to_owned()))?;
        if !is_trust_domain(domain) {
            return Err(SpiffeIdError::TrustDomain {
                id: s.to_owned(),
                domain: domain.to_owned(),
            });
        }
        let parts: Vec<&str> = path.split('/').collect();
        let [ns_key, namespace, sa_key, account] = parts.as_slice() else {
            return Err(SpiffeIdError::Shape(s.to_owned()));
        };
        if *ns_key != "ns" || *sa_key != "sa" {
            return Err(SpiffeIdError::Shape(s.to_owned()));
        }
        for (what, value) in [("namespace", namespace), ("service account", account)] {
            let ok = !value.is_empty()
                && value.len() <= 253
                && value
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
            if !ok {
                return Err(SpiffeIdError::Segment {
                    id: s.to_owned(),
                    what,
                    value: (*value).to_owned(),
                });
            }
        }
        Ok(Self {
            trust_domain: domain.to_owned(),
            namespace: (*namespace).to_owned(),
            service_account: (*account).to_owned(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Checks a trust domain on its own (`cluster.local`), with the same rule as in an ID.
pub fn check_trust_domain(domain: &str) -> Result<(), SpiffeIdError> {
    if is_trust_domain(domain) {
        Ok(())
    } else {
        Err(SpiffeIdError::TrustDomain {
            id: format!("spiffe://{domain}"),
            domain: domain.to_owned(),
        })
    }
}

fn is_trust_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 255
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/reviews".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "reviews");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/reviews");
        assert_eq!(
            SpiffeId::new("cluster.local", "shop", "reviews").unwrap(),
            id
        );
    }

    #[test]
    fn rejects_malformed_ids_with_a_reason() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/namespace/a/sa/b",
        ] {
            let err = bad.parse::<SpiffeId>().unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
