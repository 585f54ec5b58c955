//! The shapes names and labels must have: DNS labels and subdomains (Kubernetes object names),
//! label keys and values, HTTP header names, and regular expressions.

/// An RFC 1123 label: what Kubernetes requires of namespaces and service names.
pub(super) fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 subdomain: dot-separated labels, at most 253 characters (most object names).
pub(super) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Why `s` cannot be a DNS label, for a message.
pub(super) fn dns_label_error(s: &str) -> Option<String> {
    (!is_dns_label(s)).then(|| {
        format!(
            "{} is not a DNS label (at most 63 lowercase letters, digits and '-', starting and \
             ending with a letter or digit)",
            quoted(s)
        )
    })
}

/// Why `s` cannot be a DNS subdomain, for a message.
pub(super) fn dns_subdomain_error(s: &str) -> Option<String> {
    (!is_dns_subdomain(s)).then(|| {
        format!(
            "{} is not a DNS name (lowercase letters, digits, '-' and '.', at most 253 \
             characters, e.g. reviews-v1)",
            quoted(s)
        )
    })
}

/// A Kubernetes label key: an optional DNS subdomain prefix and `/`, then a name of at most
/// 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
pub(super) fn label_key_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !is_dns_subdomain(p)) || !is_label_name(name) || name.is_empty() {
        return Some(format!(
            "{} is not a label key ([prefix/]name: a name of at most 63 letters, digits, '-', '_' \
             and '.', starting and ending with a letter or digit; a prefix is a DNS name)",
            quoted(key)
        ));
    }
    None
}

/// A Kubernetes label value: empty, or at most 63 letters, digits, `-`, `_` and `.`, starting
/// and ending with a letter or digit.
pub(super) fn label_value_error(value: &str) -> Option<String> {
    (!value.is_empty() && !is_label_name(value)).then(|| {
        format!(
            "{} is not a label value (at most 63 letters, digits, '-', '_' and '.', starting and \
             ending with a letter or digit)",
            quoted(value)
        )
    })
}

fn is_label_name(s: &str) -> bool {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && alnum(s.chars().next())
        && alnum(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An HTTP field name (an RFC 9110 token), as Gateway API requires of header names.
pub(crate) fn is_http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Why `pattern` does not compile as a regular expression (RE2 syntax, as the `regex` crate and
/// Envoy take it), or `None`.
pub(crate) fn regex_error(pattern: &str) -> Option<String> {
    let error = regex_syntax::Parser::new().parse(pattern).err()?;
    let detail = match &error {
        regex_syntax::Error::Parse(e) => {
            format!("{} (at character {})", e.kind(), e.span().start.offset + 1)
        }
        regex_syntax::Error::Translate(e) => {
            format!("{} (at character {})", e.kind(), e.span().start.offset + 1)
        }
        other => other.to_string(),
    };
    Some(format!(
        "{} is not a valid regular expression: {detail}",
        quoted(pattern)
    ))
}

/// Text from a file, quoted for a message: escaped, and cut short if long.
pub(crate) fn quoted(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("\"{}...\"", text[..end].escape_debug()),
        None => format!("\"{}\"", text.escape_debug()),
    }
}

/// A list of names for a message: `a, b, c`, or `none`.
pub(super) fn listed<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}
