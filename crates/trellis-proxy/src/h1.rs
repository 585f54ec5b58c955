//! What the HTTP/1.1 server ([`crate::h1_server`]) and client ([`crate::h1_client`]) share:
//! turning a head parsed by `httparse` into `http` types without copying its bytes, and reading
//! the framing headers.

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Where one header's name and value lie in a message head, as offsets (a head is at most
/// `serve::MAX_HEADER_BYTES`, so they fit in `u32`).
#[derive(Clone, Copy, Default)]
pub(crate) struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    /// The span of `header`, parsed from the buffer that starts at `base`.
    pub(crate) fn of(base: &[u8], header: &httparse::Header<'_>) -> Span {
        Span {
            name: at(base, header.name.as_bytes()),
            value: at(base, header.value),
        }
    }

    /// The name's bytes in `base`, the buffer this span was parsed from.
    pub(crate) fn name<'a>(&self, base: &'a [u8]) -> &'a [u8] {
        let (start, len) = (self.name.0 as usize, self.name.1 as usize);
        &base[start..start + len]
    }
}

/// Offset and length of `part`, a slice of `base`.
pub(crate) fn at(base: &[u8], part: &[u8]) -> (u32, u32) {
    (
        (part.as_ptr() as usize - base.as_ptr() as usize) as u32,
        part.len() as u32,
    )
}

/// The bytes of `head` at `(offset, length)`, sharing its buffer.
pub(crate) fn slice(head: &Bytes, (start, len): (u32, u32)) -> Bytes {
    head.slice(start as usize..(start + len) as usize)
}

/// `content-length: n` and its line end, without `core::fmt` (about 350 instructions a message
/// through `write!`).
pub(crate) fn put_content_length(out: &mut BytesMut, n: u64) {
    out.put_slice(b"content-length: ");
    out.put_slice(itoa::Buffer::new().format(n).as_bytes());
    out.put_slice(b"\r\n");
}

/// Append the headers at `spans` of `head` (the buffer they were parsed from, now frozen) to
/// `map`; values share `head`'s buffer. Err for a name or value `http` does not accept.
pub(crate) fn append_headers(map: &mut HeaderMap, head: &Bytes, spans: &[Span]) -> Result<(), ()> {
    NAMES.with_borrow_mut(|names| {
        for span in spans {
            let (Ok(name), Ok(value)) = (
                names.get(span.name(head)),
                HeaderValue::from_maybe_shared(slice(head, span.value)),
            ) else {
                return Err(());
            };
            map.append(name, value);
        }
        Ok(())
    })
}

thread_local! {
    static NAMES: RefCell<NameCache> = const { RefCell::new(NameCache::new()) };
}

/// The header names this thread parsed last, as they were spelled on the wire. The messages of
/// an app (and of a client) repeat the same names; `HeaderName::from_bytes` lowercases each
/// and looks it up among the standard names, about 170 instructions a name, where a hit here
/// is a comparison of lengths and one of bytes. Misses replace entries in turn, so a peer
/// that sends new names every time costs a little more but grows nothing.
struct NameCache {
    entries: Vec<(Box<[u8]>, HeaderName)>,
    next: usize,
}

impl NameCache {
    const SIZE: usize = 32;

    const fn new() -> NameCache {
        NameCache {
            entries: Vec::new(),
            next: 0,
        }
    }

    /// The name spelled `raw`, from the cache or parsed (and then cached).
    fn get(&mut self, raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
        if let Some((_, name)) = self.entries.iter().find(|(k, _)| **k == *raw) {
            return Ok(name.clone());
        }
        let name = HeaderName::from_bytes(raw)?;
        let entry = (Box::from(raw), name.clone());
        if self.entries.len() < Self::SIZE {
            self.entries.push(entry);
        } else {
            self.entries[self.next] = entry;
            self.next = (self.next + 1) % Self::SIZE;
        }
        Ok(name)
    }
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6), with optional surrounding blanks.
pub(crate) fn content_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0')),
    )
}

/// Does the comma-separated list `value` hold `token` (any case)?
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Is every item of the comma-separated list `value` one of `tokens` (any case)? Empty items
/// are allowed (RFC 9110 §5.6.1).
pub(crate) fn only_tokens(value: &[u8], tokens: &[&[u8]]) -> bool {
    value.split(|&b| b == b',').all(|t| {
        let t = t.trim_ascii();
        t.is_empty() || tokens.iter().any(|k| t.eq_ignore_ascii_case(k))
    })
}

/// Is `chunked` the last coding of a `Transfer-Encoding` value (RFC 9112 §6.3)?
pub(crate) fn chunked_last(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_cache_gives_what_from_bytes_gives_and_stays_bounded() {
        let mut cache = NameCache::new();
        for raw in [
            &b"Content-Type"[..],
            b"content-type",
            b"X-Custom",
            b"x-custom",
            b"X-Custom",
        ] {
            assert_eq!(
                cache.get(raw).unwrap(),
                HeaderName::from_bytes(raw).unwrap()
            );
        }
        assert_eq!(cache.entries.len(), 4, "each spelling once");
        assert!(cache.get(b"bad name").is_err());
        for i in 0..100 {
            let raw = format!("x-h{i}");
            assert_eq!(cache.get(raw.as_bytes()).unwrap().as_str(), raw);
        }
        assert_eq!(cache.entries.len(), NameCache::SIZE);
        assert_eq!(cache.get(b"x-h99").unwrap().as_str(), "x-h99");
    }
}
