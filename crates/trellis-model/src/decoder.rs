//! Decoding a YAML tree field by field, collecting every error: the machinery that the proxy
//! config's decoder (`validate/decode.rs`) and the resources' (`resources/decode.rs`) share.
//!
//! A field that is missing or wrong is reported with its path and line, gets a placeholder,
//! and its path is remembered as failed, so that later checks skip it rather than report the
//! placeholder (a placeholder `0` port must not also be reported as "port 0").
//!
//! Both decoders are a [`Decoder`], told apart by their [`Dialect`]: each adds the methods for
//! its own types (the same names on both, e.g. `retries`), and the dialect holds the few
//! messages that differ.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use crate::Percent;
use crate::proxy::{RETRY_CONDITIONS, RetryOn};
use crate::resources::names::quoted;
use crate::validate::yaml::{Mark, Node, Value};

const PORT: &str = "a port number (1-65535)";

/// What differs between the decoders.
pub(crate) trait Dialect {
    /// How to write a socket address, for the message about one that is not.
    const SOCKET_ADDR_HINT: &'static str;

    /// An HTTP status as a retry condition is written in this file (`503`, or `"503"`).
    const STATUS_EXAMPLE: &'static str;

    /// The reason for a value at `path` that should be a mapping of the `allowed` fields.
    fn not_a_mapping(node: &Node, path: &str, allowed: &[&str]) -> String;
}

/// One problem, before the file name is attached.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) mark: Option<Mark>,
    pub(crate) field: String,
    pub(crate) reason: String,
}

/// A tree being decoded, and afterwards what the later checks need to know about it: where
/// each field was written and which values are placeholders.
#[derive(Debug, Default)]
pub(crate) struct Decoder<D> {
    pub(crate) problems: Vec<Problem>,
    /// Where each field (its value if a scalar, else its key) and list item was written.
    pub(crate) marks: HashMap<String, Mark>,
    /// Paths whose value is a placeholder because it was missing or invalid.
    pub(crate) failed: HashSet<String>,
    dialect: PhantomData<D>,
}

/// A mapping's entries that name allowed fields, first occurrence of each.
pub(crate) struct Fields<'n> {
    pub(crate) path: String,
    pub(crate) mark: Mark,
    pub(crate) entries: Vec<Entry<'n>>,
    /// The value was not a mapping (already reported): its fields are placeholders, silently.
    pub(crate) broken: bool,
}

pub(crate) struct Entry<'n> {
    name: &'n str,
    key: Mark,
    value: &'n Node,
}

impl Fields<'_> {
    /// Whether the field is present with a value.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.name == name && !e.value.is_null())
    }

    /// The names of the fields present with a value, in the order written.
    pub(crate) fn present(&self) -> Vec<&str> {
        let entries = self.entries.iter().filter(|e| !e.value.is_null());
        entries.map(|e| e.name).collect()
    }

    /// Where the field's key was written.
    pub(crate) fn key_mark(&self, name: &str) -> Option<Mark> {
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

impl<D: Dialect> Decoder<D> {
    // Mappings and lists.

    /// Read a mapping's fields, reporting unknown and repeated ones.
    pub(crate) fn fields<'n>(
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
            self.fail(node.mark, path, D::not_a_mapping(node, path, allowed));
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
    pub(crate) fn required<T>(
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
    pub(crate) fn optional<T>(
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
    pub(crate) fn list<T>(
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

    // Scalars.

    pub(crate) fn scalar<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Option<&'n str> {
        let text = node.text();
        if text.is_none() {
            let reason = format!("expected {what}, found {}", node.describe());
            self.fail(node.mark, path, reason);
        }
        text
    }

    pub(crate) fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        self.scalar(node, path, "a string").map(str::to_string)
    }

    /// A port number, written as a number (a quoted `"8080"` is a string, as Kubernetes sees it).
    pub(crate) fn port(&mut self, node: &Node, path: &str) -> Option<u16> {
        let n = self.whole(node, path, PORT)?;
        match u16::try_from(n) {
            Ok(port) if port > 0 => Some(port),
            _ => {
                self.fail(node.mark, path, format!("{n} is not {PORT}"));
                None
            }
        }
    }

    /// A whole number from 0 to `max`, written as a number.
    pub(crate) fn number(&mut self, node: &Node, path: &str, max: u32) -> Option<u32> {
        let what = format!("a whole number from 0 to {max}");
        let n = self.whole(node, path, &what)?;
        match u32::try_from(n) {
            Ok(n) if n <= max => Some(n),
            _ => {
                let reason = format!("{n} is out of range (expected {what})");
                self.fail(node.mark, path, reason);
                None
            }
        }
    }

    /// A whole number written as a number, not in quotes; the caller checks its range.
    fn whole(&mut self, node: &Node, path: &str, what: &str) -> Option<u64> {
        let text = self.scalar(node, path, what)?;
        let quoted = matches!(node.value, Value::Scalar { plain: false, .. });
        let reason = match text.parse::<u64>() {
            Ok(_) if quoted => {
                format!("expected {what}, found the string \"{text}\" (remove the quotes)")
            }
            Ok(n) => return Some(n),
            Err(_) => format!("expected {what}, found {}", node.describe()),
        };
        self.fail(node.mark, path, reason);
        None
    }

    /// A share of requests: a number from 0 to 100 (fractions allowed).
    pub(crate) fn percent(&mut self, node: &Node, path: &str) -> Option<Percent> {
        let what = "a percentage (a number from 0 to 100)";
        let text = self.scalar(node, path, what)?;
        let percent = text.parse::<f64>().ok().and_then(Percent::new);
        if percent.is_none() {
            self.fail(node.mark, path, format!("{text} is not {what}"));
        }
        percent
    }

    pub(crate) fn ip(&mut self, node: &Node, path: &str) -> Option<IpAddr> {
        self.parsed(node, path, "an IP address", "write 10.0.0.1 or fd00::1")
    }

    pub(crate) fn socket_addr(&mut self, node: &Node, path: &str) -> Option<SocketAddr> {
        self.parsed(node, path, "a socket address", D::SOCKET_ADDR_HINT)
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
    pub(crate) fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let text = self.scalar(node, path, "a duration (e.g. 10s, 250ms, 1m)")?;
        crate::parse_duration(text)
            .map_err(|reason| self.fail(node.mark, path, reason))
            .ok()
    }

    /// One of `options`, by its name as written.
    pub(crate) fn choice<T: Copy>(
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

    /// A retry condition: an HTTP status (`503`) or a name (`5xx`, `unavailable`).
    pub(crate) fn retry_condition(&mut self, node: &Node, path: &str) -> Option<RetryOn> {
        let text = self.scalar(node, path, "a retry condition")?;
        let on = RetryOn::parse(text);
        if on.is_none() {
            let names: Vec<&str> = RETRY_CONDITIONS.iter().map(|(name, _)| *name).collect();
            let reason = format!(
                "{} is not a retry condition (expected an HTTP status such as {}, or one of: {})",
                node.describe(),
                D::STATUS_EXAMPLE,
                names.join(", ")
            );
            self.fail(node.mark, path, reason);
        }
        on
    }

    // What was decoded.

    /// Where `path` was written: its own mark, or that of its nearest ancestor that was
    /// written (a defaulted field has none).
    pub(crate) fn mark(&self, path: &str) -> Option<Mark> {
        std::iter::once(path)
            .chain(ancestors(path))
            .find_map(|p| self.marks.get(p).copied())
    }

    /// Whether `path` was written (rather than defaulted).
    pub(crate) fn written(&self, path: &str) -> bool {
        self.marks.contains_key(path)
    }

    /// Whether `path`, or a value it is part of, is a placeholder for something invalid.
    pub(crate) fn failed(&self, path: &str) -> bool {
        std::iter::once(path)
            .chain(ancestors(path))
            .any(|p| self.failed.contains(p))
    }

    // Reporting.

    /// Report a problem with the value at `path`, which becomes a placeholder.
    pub(crate) fn fail(&mut self, mark: Mark, path: &str, reason: String) {
        self.failed.insert(path.to_string());
        self.error(mark, path, reason);
    }

    /// Report a problem that leaves no placeholder behind (an unknown or repeated field).
    pub(crate) fn error(&mut self, mark: Mark, path: &str, reason: String) {
        self.problems.push(Problem {
            mark: Some(mark),
            field: path.to_string(),
            reason,
        });
    }
}

/// `parent.name`, or `name` at the top.
pub(crate) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// The paths that contain `path`, innermost first: `a[0].b` gives `a[0]`, `a`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.char_indices()
        .rev()
        .filter(|(_, c)| matches!(c, '.' | '['))
        .map(move |(i, _)| &path[..i])
}
