//! Header hygiene: hop-by-hop headers, request ids, forwarding headers, and the few headers
//! the two proxies use between themselves. Nothing else in a request or response is rewritten.

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

/// Between proxies, everything the far side needs to know of a request, in one header:
/// `dst=<ip:port>; proto=<http1|h2>; peer=<workload> <namespace>; service=<fqdn>`.
/// - `dst`: the app address the request is for;
/// - `proto`: the protocol the client spoke, so the far side gives the app the same;
/// - `peer`: the calling workload, for telemetry (authorization uses the mTLS identity);
/// - `service`: the service the caller addressed.
///
/// A `CONNECT` stream carries `peer` and `service` (its target is its authority). One header
/// rather than four is one entry to add, encode, decode, look up and remove per request on
/// each side: 4 % of the pair's instructions (`bench/instructions`). Each value is made once
/// per config (per endpoint and protocol), so HPACK sends it as one index after the first time.
pub(crate) const TRELLIS_META: HeaderName = HeaderName::from_static("trellis-meta");

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Remove the hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `Proxy-Authorization`, `Transfer-Encoding`, `Upgrade`, and
/// `TE` unless it is `trailers` (which gRPC needs end to end). `Trailer` is end to end (RFC 9110
/// §6.6.2) and stays: HTTP/1.1 only sends the trailer fields it declares.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which are present (most messages carry none, or only
    // `Connection: keep-alive`); then only those are removed. No allocation unless
    // `Connection` names a header outside the fixed list.
    let mut present = [false; 7];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present[i] = true;
        }
    }
    let [connection, te, fixed @ ..] = present;
    if connection {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // `close`, `keep-alive` and the fixed names are handled here anyway; `te` must not
            // remove `te: trailers`, which is handled below.
            .filter(|t| {
                !t.eq_ignore_ascii_case("close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|h| t.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(&name);
        }
        headers.remove(header::CONNECTION);
    }
    for (name, present) in HOP_BY_HOP[2..].iter().zip(fixed) {
        if present {
            headers.remove(name);
        }
    }
    if te {
        let trailers = headers.get_all(header::TE).iter().any(|te| {
            te.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// Where `name` (lower case, as `HeaderName`s are) is in [`HOP_BY_HOP`]. One `match` on the
/// string: the compiler switches on the length and compares at most one or two names.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    match name {
        "connection" => Some(0),
        "te" => Some(1),
        "keep-alive" => Some(2),
        "proxy-connection" => Some(3),
        "proxy-authorization" => Some(4),
        "transfer-encoding" => Some(5),
        "upgrade" => Some(6),
        _ => None,
    }
}

/// The hop-by-hop headers: `Connection` and `TE` first (each handled on its own), then those
/// that are simply removed. A `static`, not a `const`: a `const` array of `HeaderName`s is built
/// and dropped again at every use (13 times per message, 530 instructions, when it was one).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Remove the headers the proxies use between themselves (any `trellis-*`), so a client cannot
/// forge them and an app never sees them.
pub(crate) fn strip_internal(headers: &mut HeaderMap) {
    let internal = |n: &HeaderName| n.as_str().starts_with("trellis-");
    if !headers.keys().any(internal) {
        return;
    }
    headers.remove(TRELLIS_META);
    if headers.keys().any(internal) {
        let forged: Vec<HeaderName> = headers.keys().filter(|n| internal(n)).cloned().collect();
        for name in forged {
            headers.remove(name);
        }
    }
}

/// A `trellis-meta` value. `peer` is `(workload, namespace)`.
pub(crate) fn meta_value(
    dst: Option<SocketAddr>,
    http1: Option<bool>,
    peer: (&str, &str),
    service: Option<&str>,
) -> HeaderValue {
    let mut text = String::with_capacity(96);
    let mut field = |key: &str, value: &dyn std::fmt::Display| {
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(text, "{key}={value}");
    };
    if let Some(dst) = dst {
        field("dst", &dst);
    }
    if let Some(http1) = http1 {
        field("proto", &if http1 { "http1" } else { "h2" });
    }
    field("peer", &format_args!("{} {}", peer.0, peer.1));
    if let Some(service) = service {
        field("service", &service);
    }
    HeaderValue::from_str(&text)
        .unwrap_or_else(|_| HeaderValue::from_static("peer=unknown unknown"))
}

/// A `trellis-meta` value, read. Fields that are absent or malformed are `None`; unknown ones
/// are skipped (a newer peer may send more).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) dst: Option<SocketAddr>,
    /// The client spoke HTTP/1.1 (`proto=http1`).
    pub(crate) http1: bool,
    pub(crate) peer: Option<(Arc<str>, Arc<str>)>,
    pub(crate) service: Option<Arc<str>>,
}

/// Parse a `trellis-meta` value.
pub(crate) fn parse_meta(value: &HeaderValue) -> Meta {
    let mut meta = Meta::default();
    let Ok(text) = value.to_str() else {
        return meta;
    };
    for field in text.split(';') {
        let Some((key, value)) = field.trim().split_once('=') else {
            continue;
        };
        match key {
            "dst" => meta.dst = value.parse().ok(),
            "proto" => meta.http1 = value == "http1",
            "peer" => {
                meta.peer = value
                    .split_once(' ')
                    .map(|(workload, namespace)| (workload.into(), namespace.into()));
            }
            "service" if !value.is_empty() => meta.service = Some(value.into()),
            _ => {}
        }
    }
    meta
}

/// Add `x-request-id` when the request has none; returns the id in force.
///
/// The id is marked sensitive, which HPACK encodes as "never indexed": a value that differs on
/// every request would otherwise enter the mesh connection's header table each time and evict
/// the headers that repeat (`trellis-*`, `:authority`), which then travel as literals again.
///
/// One lookup of the name (the entry), and the id is lent, not cloned: a clone of a value made
/// from a buffer of its own moves that buffer into a shared allocation.
pub(crate) fn ensure_request_id(headers: &mut HeaderMap) -> &HeaderValue {
    let id = headers.entry(X_REQUEST_ID).or_insert_with(new_request_id);
    id.set_sensitive(true);
    id
}

/// At the edge of the mesh: record the client's address and the scheme it used.
///
/// One lookup of `x-forwarded-for` (the entry) for reading and writing it.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, client: IpAddr, proto: &'static str) {
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Occupied(mut entry) => {
            let value = match entry.get().to_str() {
                Ok(prev) if !prev.is_empty() => {
                    HeaderValue::from_str(&format!("{prev}, {client}")).ok()
                }
                _ => Some(ip_value(client)),
            };
            if let Some(v) = value {
                entry.insert(v);
            }
        }
        Entry::Vacant(entry) => {
            entry.insert(ip_value(client));
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

/// An address as a header value. A sidecar's clients are nearly always the app on loopback,
/// which costs no allocation; any other address is formatted on the stack and copied once.
fn ip_value(ip: IpAddr) -> HeaderValue {
    use std::io::Write;
    if ip == IpAddr::from([127, 0, 0, 1]) {
        return HeaderValue::from_static("127.0.0.1");
    }
    if ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST) {
        return HeaderValue::from_static("::1");
    }
    // The longest address text (an IPv4-mapped IPv6 address) is 45 bytes.
    let mut text = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    let _ = write!(cursor, "{ip}");
    let len = cursor.position() as usize;
    HeaderValue::from_bytes(&text[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Is this an HTTP/1.1 upgrade request (WebSocket and friends)?
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// A random 128-bit id in UUID v4 text form: a per-process random key mixed with a counter
/// (SplitMix64's finaliser, a bijection, so ids never repeat within a process), written as hex
/// without going through `format!` (this runs once per request).
fn new_request_id() -> HeaderValue {
    static KEYS: LazyLock<(u64, u64)> = LazyLock::new(|| {
        let keys = RandomState::new();
        (keys.hash_one(1u8), keys.hash_one(2u8))
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hi = mix(n ^ KEYS.0);
    let lo = mix(n.wrapping_add(KEYS.1));
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // 8-4-4-4-12 hex digits: `hi` fills the first 16 (three groups), `lo` the last 16.
    let mut text = *b"00000000-0000-0000-0000-000000000000";
    let digits = |word: u64, out: &mut [u8], positions: &[usize; 16]| {
        for (k, &at) in positions.iter().enumerate() {
            out[at] = HEX[((word >> (60 - 4 * k)) & 0xf) as usize];
        }
    };
    digits(
        hi,
        &mut text,
        &[0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17],
    );
    digits(
        lo,
        &mut text,
        &[
            19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35,
        ],
    );
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// SplitMix64's output function: a cheap bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_hop_by_hop_match_agrees_with_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index("trailer"), None);
        assert_eq!(hop_by_hop_index("x-connection"), None);
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip, trailers"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("proxy-connection").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "yes");
    }

    #[test]
    fn each_hop_by_hop_header_goes_alone_and_connection_names_are_case_insensitive() {
        for name in [
            "upgrade",
            "proxy-authorization",
            "transfer-encoding",
            "keep-alive",
        ] {
            let mut h = map(&[(name, "x"), ("x-kept", "yes")]);
            strip_hop_by_hop(&mut h);
            assert!(h.get(name).is_none(), "{name}");
            assert_eq!(h.len(), 1, "{name}");
        }
        let mut h = map(&[
            ("connection", "Keep-Alive, X-Private, close"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get("x-kept").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    }

    #[test]
    fn meta_is_read_as_written() {
        let dst: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        let value = meta_value(
            Some(dst),
            Some(true),
            ("web", "shop"),
            Some("cart.shop.svc.cluster.local"),
        );
        assert_eq!(
            value,
            "dst=10.1.2.3:8080; proto=http1; peer=web shop; service=cart.shop.svc.cluster.local"
        );
        let meta = parse_meta(&value);
        assert_eq!(meta.dst, Some(dst));
        assert!(meta.http1);
        let (workload, namespace) = meta.peer.unwrap();
        assert_eq!((&*workload, &*namespace), ("web", "shop"));
        assert_eq!(meta.service.as_deref(), Some("cart.shop.svc.cluster.local"));

        let h2 = parse_meta(&meta_value(Some(dst), Some(false), ("web", "shop"), None));
        assert!(!h2.http1);
        assert_eq!(h2.service, None);
        let tunnel = meta_value(
            None,
            None,
            ("web", "shop"),
            Some("db.shop.svc.cluster.local"),
        );
        assert_eq!(tunnel, "peer=web shop; service=db.shop.svc.cluster.local");
    }

    #[test]
    fn meta_fields_that_do_not_parse_are_absent() {
        let meta = parse_meta(&HeaderValue::from_static(
            "dst=not-an-address; proto=http1; peer=nospace; extra=1; junk",
        ));
        assert_eq!(meta.dst, None);
        assert!(meta.http1, "the fields around a bad one still count");
        assert_eq!(meta.peer, None);
        assert_eq!(parse_meta(&HeaderValue::from_static("")), Meta::default());
    }

    #[test]
    fn internal_headers_are_stripped_forged_ones_too() {
        let mut h = map(&[
            ("trellis-meta", "dst=10.0.0.1:80"),
            ("trellis-dst", "10.0.0.9:22"),
            ("trellis-anything", "x"),
            ("host", "svc"),
        ]);
        strip_internal(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("host"));
        let mut plain = map(&[("host", "svc"), ("x-trellis", "kept")]);
        strip_internal(&mut plain);
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn te_other_than_trailers_is_removed() {
        let mut h = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("te").is_none());
    }

    #[test]
    fn request_id_is_kept_or_added_and_unique() {
        let mut h = map(&[("x-request-id", "abc")]);
        assert_eq!(ensure_request_id(&mut h), "abc");
        assert!(h.get("x-request-id").unwrap().is_sensitive());
        let mut a = HeaderMap::new();
        let mut b = HeaderMap::new();
        let ida = ensure_request_id(&mut a).clone();
        let idb = ensure_request_id(&mut b).clone();
        assert_ne!(ida, idb);
        // A UUID v4 in text: 8-4-4-4-12 lowercase hex, version 4, variant 10xx.
        for id in [ida, idb] {
            let text = id.to_str().unwrap();
            let groups: Vec<_> = text.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{text}");
            assert!(
                text.chars()
                    .all(|c| c == '-' || matches!(c, '0'..='9' | 'a'..='f')),
                "{text}"
            );
            assert_eq!(&text[14..15], "4", "{text}");
            assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
        }
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        set_forwarded(&mut h, IpAddr::from([127, 0, 0, 1]), "http");
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 127.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
    }

    #[test]
    fn forwarded_for_names_the_client_of_any_family() {
        for (ip, text) in [
            ("127.0.0.1", "127.0.0.1"),
            ("::1", "::1"),
            ("10.1.2.3", "10.1.2.3"),
            ("fd00::1:2", "fd00::1:2"),
            ("::ffff:255.255.255.255", "::ffff:255.255.255.255"),
            (
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
        ] {
            let mut h = HeaderMap::new();
            set_forwarded(&mut h, ip.parse().unwrap(), "https");
            assert_eq!(h.get("x-forwarded-for").unwrap(), text);
            assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        }
    }

    #[test]
    fn upgrade_detection_needs_both_headers() {
        assert!(is_upgrade(&map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }
}
