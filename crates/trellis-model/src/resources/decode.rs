//! Decoding one document's tree field by field, collecting every error.
//!
//! The machinery is the proxy config's too ([`crate::decoder`]): a field that is missing or
//! wrong is reported with its path and line, gets a placeholder, and its path is remembered as
//! failed so that later checks (in the document and across documents) skip it rather than
//! report a placeholder. Here are what only resources need (labels, mappings of names, checks
//! after decoding) and their messages. Field names are camelCase, as in Kubernetes.

use std::collections::{BTreeMap, HashMap};

use super::names::{label_key_error, label_value_error, quoted};
use crate::decoder::{self, Dialect, join};
use crate::validate::yaml::{Mark, Node, Value};

pub(super) use crate::decoder::{Fields, Problem};

/// A resource document's decoder.
pub(super) type Decoder = decoder::Decoder<ResourceDocument>;

/// The messages of the resources' decoder.
#[derive(Debug, Default)]
pub(super) struct ResourceDocument;

impl Dialect for ResourceDocument {
    const SOCKET_ADDR_HINT: &'static str = "write 127.0.0.1:15008 or [::1]:15008";
    const STATUS_EXAMPLE: &'static str = "503";

    fn not_a_mapping(node: &Node, _path: &str, allowed: &[&str]) -> String {
        format!(
            "expected a mapping, found {} (its fields: {})",
            node.describe(),
            allowed.join(", ")
        )
    }
}

impl Decoder {
    // Mappings and lists.

    /// A list that must have at least one item.
    pub(super) fn nonempty_list<T>(
        &mut self,
        node: &Node,
        path: &str,
        item: impl FnMut(&mut Self, &Node, &str) -> T,
    ) -> Option<Vec<T>> {
        let items = self.list(node, path, item)?;
        if items.is_empty() {
            self.fail(node.mark, path, "must not be empty".to_string());
        }
        Some(items)
    }

    /// A mapping of names to values (`{ http: 18080 }`); `what` describes it for a message.
    /// Each value is decoded at `path.key` (`path["key"]` when the key has dots or slashes).
    pub(super) fn map<T>(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
        mut value: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> Option<Vec<(String, T)>> {
        let Value::Map(entries) = &node.value else {
            let reason = format!("expected {what}, found {}", node.describe());
            self.fail(node.mark, path, reason);
            return None;
        };
        let mut out: Vec<(String, T)> = Vec::with_capacity(entries.len());
        let mut seen: HashMap<&str, Mark> = HashMap::new();
        for (key, v) in entries {
            let name = key.text().unwrap_or_default();
            let p = key_path(path, name);
            if let Some(first) = seen.get(name) {
                let reason = format!(
                    "{} is set twice (first on line {})",
                    quoted(name),
                    first.line
                );
                self.error(key.mark, &p, reason);
                continue;
            }
            seen.insert(name, key.mark);
            self.marks.insert(p.clone(), key.mark);
            if let Some(v) = value(self, v, &p) {
                out.push((name.to_string(), v));
            }
        }
        Some(out)
    }

    /// Kubernetes labels (or a selector's `matchLabels`): keys and values checked.
    pub(super) fn labels(&mut self, node: &Node, path: &str) -> Option<BTreeMap<String, String>> {
        let what = "a mapping of label names to values (e.g. { app: reviews })";
        let entries = self.map(node, path, what, |d, n, p| {
            let value = d.scalar(n, p, "a label value")?.to_string();
            if let Some(reason) = label_value_error(&value) {
                d.fail(n.mark, p, reason);
            }
            Some(value)
        })?;
        for (key, _) in &entries {
            if let Some(reason) = label_key_error(key) {
                let p = key_path(path, key);
                let mark = self.marks.get(&p).copied().unwrap_or(node.mark);
                self.fail(mark, &p, reason);
            }
        }
        Some(entries.into_iter().collect())
    }

    /// A list of strings, each non-empty.
    pub(super) fn strings(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        self.list(node, path, |d, n, p| {
            let s = d.string(n, p).unwrap_or_default();
            if s.is_empty() && !d.failed(p) {
                d.fail(n.mark, p, "must not be empty".to_string());
            }
            s
        })
    }

    // Scalars.

    pub(super) fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        let plain = matches!(node.value, Value::Scalar { plain: true, .. });
        match self.scalar(node, path, "true or false")? {
            "true" if plain => Some(true),
            "false" if plain => Some(false),
            _ => {
                let reason = format!("expected true or false, found {}", node.describe());
                self.fail(node.mark, path, reason);
                None
            }
        }
    }

    // What was decoded.

    /// Whether anything at or under `path` is a placeholder.
    pub(super) fn failed_under(&self, path: &str) -> bool {
        self.failed(path)
            || self.failed.iter().any(|p| {
                p.strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
            })
    }

    // Reporting.

    /// Report a problem found after decoding at `path` (located where it was written), unless
    /// it or a value it was compared with is a placeholder for a value already reported.
    pub(super) fn report(&mut self, path: &str, related: &[&str], reason: impl Into<String>) {
        if self.failed(path) || related.iter().any(|p| self.failed(p)) {
            return;
        }
        self.problems.push(Problem {
            mark: self.mark(path),
            field: path.to_string(),
            reason: reason.into(),
        });
    }

    /// Like [`Decoder::report`], and the value at `path` becomes a placeholder.
    pub(super) fn reject(&mut self, path: &str, reason: impl Into<String>) {
        if !self.failed(path) {
            self.report(path, &[], reason);
            self.failed.insert(path.to_string());
        }
    }

    /// `line N` for a value that was written, `by default` for one that was not.
    pub(super) fn where_written(&self, path: &str) -> String {
        match self.mark(path) {
            Some(mark) if self.written(path) => format!("line {}", mark.line),
            _ => "by default".to_string(),
        }
    }
}

/// The path of a mapping key that is data rather than a field name: `labels.app`, or
/// `labels["app.kubernetes.io/name"]` when the key is more than letters, digits, `-` and `_`.
pub(super) fn key_path(parent: &str, key: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if key.is_empty() || !key.chars().all(plain) {
        format!("{parent}[{}]", quoted(key))
    } else {
        join(parent, key)
    }
}
