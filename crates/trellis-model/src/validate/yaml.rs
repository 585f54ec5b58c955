//! A YAML document as a tree of nodes that remember where they were written.
//!
//! Built from the events of `granit-parser` (the parser under serde-saphyr, re-exported by it).
//! Scalars keep their text as written, so the decoder, which knows each field's type, decides
//! what `0123` or `yes` means, not a guess made here. Anchors, aliases and merge keys (`<<`) are
//! resolved; tags other than the core ones are refused. Limits bound what untrusted input can
//! cost: nesting depth and the number of nodes, counting every alias expansion.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{self, Event, Parser, ScalarStyle, Span, Tag};

/// Most nodes a document may have, counting every node an alias repeats (serde-saphyr's default
/// budget). A config with 1,000 services of 20 endpoints stays far below.
const MAX_NODES: usize = 250_000;
/// Deepest nesting of sequences and mappings. The config itself nests six levels.
const MAX_DEPTH: usize = 64;

/// A position in the source; both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Mark {
    pub(crate) line: usize,
    pub(crate) column: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) mark: Mark,
}

#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// A scalar's text after escapes. `plain` is false for quoted, block and `!!str` scalars,
    /// which are always strings (never null or a number).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in source order, keys as written (duplicates are the decoder's to report).
    Map(Vec<(Node, Node)>),
}

/// Why the document could not be read as a tree; parsing stops at the first one.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub(crate) mark: Mark,
    pub(crate) reason: String,
}

/// A sequence or mapping whose end has not been seen yet.
enum Open {
    Seq {
        mark: Mark,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        mark: Mark,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

struct Builder {
    stack: Vec<Open>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
}

impl Node {
    /// Plain `~`, `null` or nothing at all: YAML's null.
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if is_null_text(text))
    }

    /// The text of a scalar, whatever its style.
    pub(crate) fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// What this node is, for "expected X, found Y" messages.
    pub(crate) fn describe(&self) -> String {
        match &self.value {
            _ if self.is_null() => "nothing".to_string(),
            Value::Scalar { text, .. } => super::quoted(text),
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a mapping".to_string(),
        }
    }

    fn size(&self) -> usize {
        match &self.value {
            Value::Scalar { .. } => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Value::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.size() + v.size())
                    .sum::<usize>()
            }
        }
    }
}

/// Parse one YAML document. An empty file is a null node.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let options = granit_parser::options! {
        emit_comments: false,
        flow_nesting_limit: MAX_DEPTH,
        block_nesting_limit: MAX_DEPTH,
    };
    let mut builder = Builder {
        stack: Vec::new(),
        root: None,
        anchors: HashMap::new(),
        nodes: 0,
    };
    let mut documents = 0;
    for event in Parser::new_from_str_with_options(text, options) {
        let (event, span) = event.map_err(|e| SyntaxError {
            mark: Mark {
                line: e.marker().line(),
                column: e.marker().col() + 1,
            },
            reason: e.info(),
        })?;
        let mark = mark(&span);
        match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        mark,
                        reason: "a second YAML document (---); the config is one document"
                            .to_string(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let quoted = !matches!(style, ScalarStyle::Plain);
                let plain = !quoted && !is_str_tag(tag.as_deref(), mark)?;
                let node = Node {
                    value: Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    },
                    mark,
                };
                builder.count(1, mark)?;
                builder.complete(node, anchor)?;
            }
            Event::SequenceStart(_, anchor, tag) => {
                check_tag(tag.as_deref(), mark)?;
                builder.open(Open::Seq {
                    mark,
                    anchor,
                    items: Vec::new(),
                })?;
            }
            Event::MappingStart(_, anchor, tag) => {
                check_tag(tag.as_deref(), mark)?;
                builder.open(Open::Map {
                    mark,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                })?;
            }
            Event::SequenceEnd | Event::MappingEnd => builder.close()?,
            Event::Alias(id) => {
                let node = builder
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| SyntaxError {
                        mark,
                        reason: "an alias to an anchor that is not complete yet".to_string(),
                    })?;
                builder.count(node.size(), mark)?;
                builder.complete(Node { mark, ..node }, 0)?;
            }
            _ => {}
        }
    }
    let empty = Node {
        value: Value::Scalar {
            text: String::new(),
            plain: true,
        },
        mark: Mark { line: 1, column: 1 },
    };
    Ok(builder.root.unwrap_or(empty))
}

impl Builder {
    fn count(&mut self, nodes: usize, mark: Mark) -> Result<(), SyntaxError> {
        self.nodes += nodes;
        if self.nodes > MAX_NODES {
            return Err(SyntaxError {
                mark,
                reason: format!("more than {MAX_NODES} YAML nodes (counting alias expansions)"),
            });
        }
        Ok(())
    }

    fn open(&mut self, open: Open) -> Result<(), SyntaxError> {
        let (Open::Seq { mark, .. } | Open::Map { mark, .. }) = &open;
        let mark = *mark;
        self.count(1, mark)?;
        if self.stack.len() >= MAX_DEPTH {
            return Err(SyntaxError {
                mark,
                reason: format!("nested deeper than {MAX_DEPTH} levels"),
            });
        }
        self.stack.push(open);
        Ok(())
    }

    fn close(&mut self) -> Result<(), SyntaxError> {
        let (node, anchor) = match self.stack.pop() {
            Some(Open::Seq {
                mark,
                anchor,
                items,
            }) => (
                Node {
                    value: Value::Seq(items),
                    mark,
                },
                anchor,
            ),
            Some(Open::Map {
                mark,
                anchor,
                entries,
                ..
            }) => (
                Node {
                    value: Value::Map(merge(entries)?),
                    mark,
                },
                anchor,
            ),
            None => return Ok(()),
        };
        self.complete(node, anchor)
    }

    /// A finished node goes into its parent (or becomes the root) and, if anchored, is kept
    /// for aliases. The kept copy counts against the budget too: anchors nested in anchors
    /// would otherwise multiply memory by the nesting depth.
    fn complete(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            self.count(node.size(), node.mark)?;
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq { items, .. }) => items.push(node),
            Some(Open::Map {
                key: key @ None, ..
            }) => {
                if !matches!(node.value, Value::Scalar { .. }) {
                    return Err(SyntaxError {
                        mark: node.mark,
                        reason: "a mapping key must be a name, not a list or mapping".to_string(),
                    });
                }
                *key = Some(node);
            }
            Some(Open::Map {
                entries,
                key: key @ Some(_),
                ..
            }) => {
                if let Some(key) = key.take() {
                    entries.push((key, node));
                }
            }
        }
        Ok(())
    }
}

/// Resolve merge keys: `<<: *base` (or `<<: [*a, *b]`) adds the entries of the merged
/// mappings that the mapping does not set itself.
fn merge(entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, SyntaxError> {
    let is_merge =
        |key: &Node| matches!(&key.value, Value::Scalar { text, plain: true } if text == "<<");
    if !entries.iter().any(|(key, _)| is_merge(key)) {
        return Ok(entries);
    }
    let (merges, mut own): (Vec<_>, Vec<_>) =
        entries.into_iter().partition(|(key, _)| is_merge(key));
    for (_, value) in merges {
        let sources = match value.value {
            Value::Seq(items) => items,
            Value::Map(_) => vec![value],
            Value::Scalar { .. } => {
                return Err(SyntaxError {
                    mark: value.mark,
                    reason: "a merge key (<<) takes a mapping or a list of mappings".to_string(),
                });
            }
        };
        for source in sources {
            let Value::Map(merged) = source.value else {
                return Err(SyntaxError {
                    mark: source.mark,
                    reason: "a merge key (<<) takes a mapping or a list of mappings".to_string(),
                });
            };
            for (key, value) in merged {
                if !own.iter().any(|(k, _)| k.text() == key.text()) {
                    own.push((key, value));
                }
            }
        }
    }
    Ok(own)
}

fn mark(span: &Span) -> Mark {
    Mark {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

fn is_null_text(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// Whether a scalar's tag makes it a string (`!!str`, or the non-specific `!`).
fn is_str_tag(tag: Option<&Tag>, mark: Mark) -> Result<bool, SyntaxError> {
    check_tag(tag, mark)?;
    Ok(tag.is_some_and(|t| t.is_yaml_core_schema_tag("str") || t.parts() == ("!", "")))
}

/// Core tags (`!!str`, `!!int`, ...) are accepted; application tags mean nothing here.
fn check_tag(tag: Option<&Tag>, mark: Mark) -> Result<(), SyntaxError> {
    match tag {
        Some(t) if !t.is_yaml_core_schema() && t.parts() != ("!", "") => Err(SyntaxError {
            mark,
            reason: format!("unsupported tag {} (the config uses no tags)", t.original()),
        }),
        _ => Ok(()),
    }
}
