//! Files of several documents: splitting at `---`, parsing each document with the lines of
//! the file, and reading a document's envelope (`apiVersion`, `kind`, `metadata`).

use super::Metadata;
use super::decode::Decoder;
use super::names::{dns_label_error, dns_subdomain_error, quoted};
use crate::validate::yaml::{self, Node, SyntaxError, Value};

const ROOT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const METADATA_FIELDS: &[&str] = &["name", "namespace", "labels", "annotations"];

/// The namespace of a resource that names none.
pub(super) const DEFAULT_NAMESPACE: &str = "default";

/// One document of a file: its text and the line of the file it starts on.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Chunk<'t> {
    pub(super) first_line: usize,
    pub(super) text: &'t str,
}

/// Split a file at its document markers: lines that start with `---` followed by nothing, a
/// space or a comment (as kubectl splits). A marker at column 0 always starts a document in
/// YAML, even inside a block scalar, so this is exact. The marker line stays with the
/// document it starts.
pub(super) fn split(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let (mut start, mut start_line) = (0, 1);
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']));
        if marker && offset > start {
            chunks.push(Chunk {
                first_line: start_line,
                text: &text[start..offset],
            });
            (start, start_line) = (offset, i + 1);
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        first_line: start_line,
        text: &text[start..],
    });
    chunks
}

/// Parse one document; marks are lines of the whole file.
pub(super) fn parse(chunk: &Chunk<'_>) -> Result<Node, SyntaxError> {
    let lines = chunk.first_line - 1;
    match yaml::parse(chunk.text) {
        Ok(mut node) => {
            shift(&mut node, lines);
            Ok(node)
        }
        Err(mut e) => {
            e.mark.line += lines;
            Err(e)
        }
    }
}

fn shift(node: &mut Node, lines: usize) {
    node.mark.line += lines;
    match &mut node.value {
        Value::Scalar { .. } => {}
        Value::Seq(items) => items.iter_mut().for_each(|n| shift(n, lines)),
        Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            shift(k, lines);
            shift(v, lines);
        }),
    }
}

/// A document's envelope, read.
pub(super) struct Envelope<'n> {
    pub(super) api_version: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) metadata: Metadata,
    pub(super) spec: Option<&'n Node>,
}

impl Decoder {
    /// Read `apiVersion`, `kind` and `metadata`, and find `spec`.
    pub(super) fn envelope<'n>(&mut self, node: &'n Node) -> Envelope<'n> {
        let mut spec = None;
        if let Value::Map(entries) = &node.value {
            spec = entries
                .iter()
                .find(|(k, v)| k.text() == Some("spec") && !v.is_null())
                .map(|(_, v)| v);
        }
        let f = self.fields(node, "", ROOT_FIELDS);
        let api_version = self.required(&f, "apiVersion", Self::string);
        let kind = self.required(&f, "kind", Self::string);
        let metadata = self
            .required(&f, "metadata", |d, n, p| Some(d.metadata(n, p)))
            .unwrap_or_else(|| Metadata {
                name: String::new(),
                namespace: DEFAULT_NAMESPACE.to_string(),
                labels: Default::default(),
                annotations: Default::default(),
            });
        // Reported here, decoded by the kind's decoder.
        let _ = self.required(&f, "spec", |_, _, _| Some(()));
        Envelope {
            api_version,
            kind,
            metadata,
            spec,
        }
    }

    fn metadata(&mut self, node: &Node, path: &str) -> Metadata {
        let f = self.fields(node, path, METADATA_FIELDS);
        let metadata = Metadata {
            name: self.required(&f, "name", Self::string).unwrap_or_default(),
            namespace: self
                .optional(&f, "namespace", Self::string)
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            labels: self
                .optional(&f, "labels", Self::labels)
                .unwrap_or_default(),
            annotations: self
                .optional(&f, "annotations", |d, n, p| {
                    let what = "a mapping of annotation names to text";
                    let entries = d.map(n, p, what, Self::string)?;
                    Some(entries.into_iter().collect())
                })
                .unwrap_or_default(),
        };
        if let Some(reason) = dns_label_error(&metadata.namespace) {
            self.report(&format!("{path}.namespace"), &[], reason);
        }
        metadata
    }

    /// Names that become host names (Services) are DNS labels; others DNS subdomains.
    pub(super) fn check_name(&mut self, name: &str, label: bool) {
        let reason = if name.is_empty() {
            Some("must not be empty".to_string())
        } else if label {
            dns_label_error(name)
                .map(|r| format!("{r}: a Service's name is part of its host names"))
        } else {
            dns_subdomain_error(name)
        };
        if let Some(reason) = reason {
            self.reject("metadata.name", reason);
        }
    }
}

/// `the root of the document is a list`, for a message.
pub(super) fn not_a_resource(node: &Node) -> String {
    format!(
        "expected a resource (a mapping with apiVersion, kind, metadata and spec), found {}",
        match &node.value {
            Value::Scalar { text, .. } => quoted(text),
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a mapping".to_string(),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_lines(text: &str) -> Vec<(usize, &str)> {
        split(text)
            .into_iter()
            .map(|c| (c.first_line, c.text))
            .collect()
    }

    #[test]
    fn splits_at_markers_and_keeps_lines() {
        let text = "a: 1\n---\nb: 2\n--- # c\nc: 3\n";
        assert_eq!(
            split_lines(text),
            vec![(1, "a: 1\n"), (2, "---\nb: 2\n"), (4, "--- # c\nc: 3\n")]
        );
        assert_eq!(split_lines("---\na: 1\n"), vec![(1, "---\na: 1\n")]);
        assert_eq!(split_lines(""), vec![(1, "")]);
        // Not markers: `----`, an indented `---`, `---x`.
        let text = "a: |\n  ---\n----: 1\n---x: 2\n";
        assert_eq!(split_lines(text), vec![(1, text)]);
    }

    #[test]
    fn marks_are_lines_of_the_file() {
        let text = "a: 1\n---\n\nb:\n  c: 2\n";
        let chunks = split(text);
        let node = parse(&chunks[1]).unwrap();
        let Value::Map(entries) = &node.value else {
            panic!("a mapping")
        };
        assert_eq!(entries[0].0.mark.line, 4);
        let Value::Map(inner) = &entries[0].1.value else {
            panic!("a mapping")
        };
        assert_eq!((inner[0].0.mark.line, inner[0].0.mark.column), (5, 3));
        let error = parse(&Chunk {
            first_line: 10,
            text: "a: [1\n",
        })
        .unwrap_err();
        assert!(error.mark.line >= 10, "{error:?}");
    }
}
