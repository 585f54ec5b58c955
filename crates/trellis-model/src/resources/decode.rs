//! Decoding one document's tree field by field, collecting every error.
//!
//! The same conventions as the proxy config's decoder (`validate/decode.rs`): a field that is
//! missing or wrong is reported with its path and line, gets a placeholder, and its path is
//! remembered as failed so that later checks (in the document and across documents) skip it
//! rather than report a placeholder. Field names are camelCase, as in Kubernetes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use super::names::{label_key_error, label_value_error, quoted};
use crate::validate::yaml::{Mark, Node, Value};

pub(super) const PORT: &str = "a port number (1-65535)";

/// One problem, before the file name is attached.
#[derive(Debug)]
pub(super) struct Problem {
    pub(super) mark: Option<Mark>,
    pub(super) field: String,
    pub(super) reason: String,
}

/// A document being decoded, and afterwards what the checks across documents need to know
/// about it: where each field was written and which values are placeholders.
#[derive(Debug, Default)]
pub(super) struct Decoder {
    pub(super) problems: Vec<Problem>,
    /// Where each field (its value if a scalar, else its key) and list item was written.
    marks: HashMap<String, Mark>,
    /// Paths whose value is a placeholder because it was missing or invalid.
    failed: HashSet<String>,
}

/// A mapping's entries that name allowed fields, first occurrence of each.
pub(super) struct Fields<'n> {
    path: String,
    mark: Mark,
    entries: Vec<Entry<'n>>,
    /// The value was not a mapping (already reported): its fields are placeholders, silently.
    broken: bool,
}

struct Entry<'n> {
    name: &'n str,
    key: Mark,
    value: &'n Node,
}

impl Fields<'_> {
    /// Whether the field is present with a value.
    pub(super) fn has(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.name == name && !e.value.is_null())
    }

    /// The names of the fields present with a value, in the order written.
    pub(super) fn present(&self) -> Vec<&str> {
        let entries = self.entries.iter().filter(|e| !e.value.is_null());
        entries.map(|e| e.name).collect()
    }

    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// Where the field's key was written.
    pub(super) fn key_mark(&self, name: &str) -> Option<Mark> {
        self.entries.iter().find(|e| e.name == name).map(|e| e.key)
    }
}

impl Entry<'_> {
    /// Where a problem with this field's value is shown: at a scalar value itself, at the key
    /// of a list or mapping (whose first item may be lines below).
    fn mark(&self) -> Mark {
        match self.value.value {
            Value::Scalar { .. } => self.value.mark,
            _ => self.key,
        }
    }
}

impl Decoder {
    // Mappings and lists.

    /// Read a mapping's fields, reporting unknown and repeated ones.
    pub(super) fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        allowed: &[&str],
    ) -> Fields<'n> {
        let mut fields = Fields {
            path: path.to_string(),
            mark: node.mark,
            entries: Vec::new(),
            broken: false,
        };
        let Value::Map(entries) = &node.value else {
            let reason = format!(
                "expected a mapping, found {} (its fields: {})",
                node.describe(),
                allowed.join(", ")
            );
            self.fail(node.mark, path, reason);
            fields.broken = true;
            return fields;
        };
        for (key, value) in entries {
            let name = key.text().unwrap_or_default();
            let key_path = join(path, name);
            if !allowed.contains(&name) {
                let reason = format!(
                    "unknown field {} (expected one of: {})",
                    quoted(name),
                    allowed.join(", ")
                );
                self.error(key.mark, &key_path, reason);
            } else if let Some(first) = fields.entries.iter().find(|e| e.name == name) {
                let reason = format!(
                    "{} is set twice (first on line {})",
                    quoted(name),
                    first.key.line
                );
                self.error(key.mark, &key_path, reason);
            } else {
                fields.entries.push(Entry {
                    name,
                    key: key.mark,
                    value,
                });
            }
        }
        fields
    }

    /// A field that must be present (and not null).
    pub(super) fn required<T>(
        &mut self,
        f: &Fields<'_>,
        name: &str,
        decode: impl FnOnce(&mut Self, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        let path = join(&f.path, name);
        match f.entries.iter().find(|e| e.name == name) {
            _ if f.broken => {
                self.failed.insert(path);
                None
            }
            Some(entry) if !entry.value.is_null() => {
                self.marks.insert(path.clone(), entry.mark());
                decode(self, entry.value, &path)
            }
            Some(entry) => {
                self.fail(entry.key, &path, format!("\"{name}\" needs a value"));
                None
            }
            None => {
                self.fail(f.mark, &path, format!("missing required field \"{name}\""));
                None
            }
        }
    }

    /// A field that may be absent or null (then the caller's default applies).
    pub(super) fn optional<T>(
        &mut self,
        f: &Fields<'_>,
        name: &str,
        decode: impl FnOnce(&mut Self, &Node, &str) -> Option<T>,
    ) -> Option<T> {
        let entry = f
            .entries
            .iter()
            .find(|e| e.name == name && !e.value.is_null())?;
        let path = join(&f.path, name);
        self.marks.insert(path.clone(), entry.mark());
        decode(self, entry.value, &path)
    }

    /// A list; every item is decoded (to a placeholder if invalid) so that indexes hold.
    pub(super) fn list<T>(
        &mut self,
        node: &Node,
        path: &str,
        mut item: impl FnMut(&mut Self, &Node, &str) -> T,
    ) -> Option<Vec<T>> {
        let Value::Seq(nodes) = &node.value else {
            let reason = format!("expected a list, found {}", node.describe());
            self.fail(node.mark, path, reason);
            return None;
        };
        let mut items = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let p = format!("{path}[{i}]");
            self.marks.insert(p.clone(), n.mark);
            items.push(item(self, n, &p));
        }
        Some(items)
    }

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

    pub(super) fn scalar<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Option<&'n str> {
        let text = node.text();
        if text.is_none() {
            let reason = format!("expected {what}, found {}", node.describe());
            self.fail(node.mark, path, reason);
        }
        text
    }

    pub(super) fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        self.scalar(node, path, "a string").map(str::to_string)
    }

    /// A port number, written as a number (a quoted `"8080"` is a string, as Kubernetes sees it).
    pub(super) fn port(&mut self, node: &Node, path: &str) -> Option<u16> {
        let text = self.scalar(node, path, PORT)?;
        let quoted = matches!(node.value, Value::Scalar { plain: false, .. });
        let reason = match text.parse::<u64>() {
            Ok(_) if quoted => {
                format!("expected {PORT}, found the string \"{text}\" (remove the quotes)")
            }
            Ok(port) => match u16::try_from(port) {
                Ok(port) if port > 0 => return Some(port),
                _ => format!("{port} is not {PORT}"),
            },
            Err(_) => format!("expected {PORT}, found {}", node.describe()),
        };
        self.fail(node.mark, path, reason);
        None
    }

    /// A whole number from 0 to `max`, written as a number.
    pub(super) fn number(&mut self, node: &Node, path: &str, max: u32) -> Option<u32> {
        let what = format!("a whole number from 0 to {max}");
        let text = self.scalar(node, path, &what)?;
        let quoted = matches!(node.value, Value::Scalar { plain: false, .. });
        let reason = match text.parse::<u64>() {
            Ok(_) if quoted => {
                format!("expected {what}, found the string \"{text}\" (remove the quotes)")
            }
            Ok(n) => match u32::try_from(n) {
                Ok(n) if n <= max => return Some(n),
                _ => format!("{n} is out of range (expected {what})"),
            },
            Err(_) => format!("expected {what}, found {}", node.describe()),
        };
        self.fail(node.mark, path, reason);
        None
    }

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

    pub(super) fn ip(&mut self, node: &Node, path: &str) -> Option<IpAddr> {
        self.parsed(node, path, "an IP address", "write 10.0.0.1 or fd00::1")
    }

    pub(super) fn socket_addr(&mut self, node: &Node, path: &str) -> Option<SocketAddr> {
        self.parsed(
            node,
            path,
            "a socket address",
            "write 127.0.0.1:15008 or [::1]:15008",
        )
    }

    fn parsed<T: FromStr>(&mut self, node: &Node, path: &str, what: &str, hint: &str) -> Option<T> {
        let parsed = self.scalar(node, path, what)?.parse().ok();
        if parsed.is_none() {
            let reason = format!("{} is not {what} ({hint})", node.describe());
            self.fail(node.mark, path, reason);
        }
        parsed
    }

    /// A duration as Trellis writes them (`250ms`, `10s`, `1m30s`).
    pub(super) fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let text = self.scalar(node, path, "a duration (e.g. 10s, 250ms, 1m)")?;
        crate::parse_duration(text)
            .map_err(|reason| self.fail(node.mark, path, reason))
            .ok()
    }

    /// One of `options`, by its name as written.
    pub(super) fn choice<T: Copy>(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let text = self.scalar(node, path, what)?;
        let found = options
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, value)| *value);
        if found.is_none() {
            let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            let reason = format!(
                "{} is not {what} (expected one of: {})",
                node.describe(),
                names.join(", ")
            );
            self.fail(node.mark, path, reason);
        }
        found
    }

    // What was decoded.

    /// Where `path` was written: its own mark, or that of its nearest ancestor that was
    /// written (a defaulted field has none).
    pub(super) fn mark(&self, path: &str) -> Option<Mark> {
        std::iter::once(path)
            .chain(ancestors(path))
            .find_map(|p| self.marks.get(p).copied())
    }

    /// Whether `path` was written in the document (rather than defaulted).
    pub(super) fn written(&self, path: &str) -> bool {
        self.marks.contains_key(path)
    }

    /// Whether `path`, or a value it is part of, is a placeholder for something invalid.
    pub(super) fn failed(&self, path: &str) -> bool {
        std::iter::once(path)
            .chain(ancestors(path))
            .any(|p| self.failed.contains(p))
    }

    /// Whether anything at or under `path` is a placeholder.
    pub(super) fn failed_under(&self, path: &str) -> bool {
        self.failed(path)
            || self.failed.iter().any(|p| {
                p.strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
            })
    }

    // Reporting.

    /// Report a problem with the value at `path`, which becomes a placeholder.
    pub(super) fn fail(&mut self, mark: Mark, path: &str, reason: String) {
        self.failed.insert(path.to_string());
        self.error(mark, path, reason);
    }

    /// Report a problem that leaves no placeholder behind (an unknown or repeated field).
    pub(super) fn error(&mut self, mark: Mark, path: &str, reason: String) {
        self.problems.push(Problem {
            mark: Some(mark),
            field: path.to_string(),
            reason,
        });
    }

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

/// `parent.name`, or `name` at the top.
pub(super) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
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

/// The paths that contain `path`, innermost first: `a[0].b` gives `a[0]`, `a`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.char_indices()
        .rev()
        .filter(|(_, c)| matches!(c, '.' | '['))
        .map(move |(i, _)| &path[..i])
}
