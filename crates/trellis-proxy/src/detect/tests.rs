use super::*;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncWriteExt, ReadBuf};

/// `openssl s_client -servername example.com` (OpenSSL 3.0), captured from a socket.
const HELLO_SNI_HEX: &str = concat!(
    "1603010138010001340303c1267c3f316e3c4bf437373546cc6c9f7873873c4d29c49bc461e09218",
    "1a4ba2200a1d31e9115116f4581c99891748f744551d48002f5837e2de7ba9c132a0307c003e1302",
    "13031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039",
    "c009c0130033009d009c003d003c0035002f00ff010000ad00000010000e00000b6578616d706c65",
    "2e636f6d000b000403000102000a00160014001d0017001e00190018010001010102010301040023",
    "00000016000000170000000d002a0028040305030603080708080809080a080b0804080508060401",
    "05010601030303010302040205020602002b0009080304030303020301002d000201010033002600",
    "24001d0020274bfec6905ba8577035c12abe5aadb913ec04020ca2473a2d8fb6c0f11a8763",
);

/// `openssl s_client -noservername`, captured the same way.
const HELLO_NO_SNI_HEX: &str = concat!(
    "1603010124010001200303fb700b19b061c04f33df0ce9398cfa4c1809bb4559aaa9242edff6c783",
    "01667d20be0924c372b8ba1c0d56a97b9d025a25fab99f2abe7c0f9eff6623f6bd1c5cc5003e1302",
    "13031301c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039",
    "c009c0130033009d009c003d003c0035002f00ff01000099000b000403000102000a00160014001d",
    "0017001e0019001801000101010201030104002300000016000000170000000d002a002804030503",
    "0603080708080809080a080b080408050806040105010601030303010302040205020602002b0009",
    "080304030303020301002d00020101003300260024001d0020f59b087d76b52d4519077c3134b383",
    "9913bf9d3b3d90b9b4b7d0f22aa77b021c",
);

const GET: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n";

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn tls(sni: &str) -> Protocol {
    Protocol::Tls {
        sni: Some(sni.to_owned()),
    }
}

const TLS_NO_SNI: Protocol = Protocol::Tls { sni: None };

fn h2_start() -> Vec<u8> {
    // The preface followed by an empty SETTINGS frame, as a client sends it.
    let mut v = H2_PREFACE.to_vec();
    v.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    v
}

fn be16(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap().to_be_bytes()
}

/// A `server_name` extension body with the given (name type, name) entries.
fn sni_body(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (ty, name) in entries {
        list.push(*ty);
        list.extend_from_slice(&be16(name.len()));
        list.extend_from_slice(name);
    }
    let mut body = be16(list.len()).to_vec();
    body.extend_from_slice(&list);
    body
}

/// A TLS 1.2-style ClientHello in one record with the given extensions. `hello_len_extra`
/// inflates the handshake length, as if the message continued in another record.
fn build_hello(extensions: &[(u16, Vec<u8>)], hello_len_extra: usize) -> Vec<u8> {
    let mut exts = Vec::new();
    for (ty, body) in extensions {
        exts.extend_from_slice(&ty.to_be_bytes());
        exts.extend_from_slice(&be16(body.len()));
        exts.extend_from_slice(body);
    }
    let mut hello = vec![3, 3];
    hello.extend_from_slice(&[7; 32]); // random
    hello.extend_from_slice(&[32]);
    hello.extend_from_slice(&[9; 32]); // session id
    hello.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    hello.extend_from_slice(&[1, 0]); // null compression
    hello.extend_from_slice(&be16(exts.len()));
    hello.extend_from_slice(&exts);
    let hs_len = u32::try_from(hello.len() + hello_len_extra).unwrap();
    let mut handshake = vec![TLS_CLIENT_HELLO];
    handshake.extend_from_slice(&hs_len.to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![TLS_HANDSHAKE, 3, 1];
    record.extend_from_slice(&be16(handshake.len()));
    record.extend_from_slice(&handshake);
    record
}

/// A scripted stream: each chunk is one read's worth; then EOF (or an error).
#[derive(Debug)]
struct Script {
    chunks: VecDeque<Vec<u8>>,
    error_at_end: bool,
    reads: usize,
}

impl Script {
    fn new(chunks: impl IntoIterator<Item = Vec<u8>>) -> Self {
        Self {
            chunks: chunks.into_iter().collect(),
            error_at_end: false,
            reads: 0,
        }
    }

    fn dribble(bytes: &[u8]) -> Self {
        Self::new(bytes.iter().map(|&b| vec![b]))
    }
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.reads += 1;
        let Some(mut chunk) = self.chunks.pop_front() else {
            return Poll::Ready(if self.error_at_end {
                Err(io::ErrorKind::ConnectionReset.into())
            } else {
                Ok(())
            });
        };
        let n = chunk.len().min(buf.remaining());
        buf.put_slice(&chunk[..n]);
        if n < chunk.len() {
            self.chunks.push_front(chunk.split_off(n));
        }
        Poll::Ready(Ok(()))
    }
}

async fn read_all<S: AsyncRead + Unpin>(mut io: Prefixed<S>) -> Vec<u8> {
    let mut out = Vec::new();
    io.read_to_end(&mut out).await.unwrap();
    out
}

const TIMEOUT: Duration = Duration::from_millis(100);

// ---- classify ----

#[test]
fn as_str_names() {
    assert_eq!(Protocol::Http1.as_str(), "http/1.1");
    assert_eq!(Protocol::Http2.as_str(), "h2");
    assert_eq!(TLS_NO_SNI.as_str(), "tls");
    assert_eq!(Protocol::Opaque.as_str(), "tcp");
}

#[test]
fn empty_needs_more() {
    assert_eq!(classify(b""), None);
}

#[test]
fn known_methods_decide_at_the_space() {
    for m in KNOWN_METHODS {
        let mut req = m.to_vec();
        assert_eq!(classify(&req), None, "{}", String::from_utf8_lossy(m));
        req.push(b' ');
        assert_eq!(classify(&req), Some(Protocol::Http1));
    }
    assert_eq!(classify(GET), Some(Protocol::Http1));
    assert_eq!(classify(b"G"), None);
    assert_eq!(classify(b"GETX"), None);
}

#[test]
fn unknown_methods_wait_for_the_version() {
    let req = b"PROPFIND /dav HTTP/1.1\r\nDepth: 1\r\n\r\n";
    let line_end = req.iter().position(|&b| b == b'\n').unwrap();
    for n in 1..=line_end {
        assert_eq!(classify(&req[..n]), None, "prefix {n}");
    }
    assert_eq!(classify(&req[..=line_end]), Some(Protocol::Http1));
    assert_eq!(
        classify(b"VERSION-CONTROL /x HTTP/1.0\r\n"),
        Some(Protocol::Http1)
    );
    // Bare LF is accepted, as lenient HTTP/1 servers do.
    assert_eq!(classify(b"MKCOL /x HTTP/1.1\n"), Some(Protocol::Http1));
}

#[test]
fn text_protocols_that_are_not_http1_are_opaque() {
    for input in [
        &b"SET key value\r\n"[..],                // Redis inline command
        b"PING\r\n",                              // Redis, no space after the token
        b"EHLO mail.example.com\r\n",             // SMTP
        b"FOO /x HTTP/2.0\r\n",                   // wrong version
        b"FOO  HTTP/1.1\r\n",                     // empty target
        b"FOO /a b HTTP/1.1\r\n",                 // space in target
        b"FOO /x HTTP/1.x\r\n",                   // not a digit
        b"SSH-2.0-OpenSSH_9.6\r\n",               // token then a digit
        b"get / HTTP/1.1\r\n",                    // methods are case-sensitive
        b"ABCDEFGHIJKLMNOPQRSTU /x HTTP/1.1\r\n", // 21-letter method
    ] {
        assert_eq!(
            classify(input),
            Some(Protocol::Opaque),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn binary_first_byte_is_opaque_at_once() {
    for first in [0u8, 1, b'*', b'+', b'$', 0x80, 0xff, b'a', b'0', 0x17] {
        assert_eq!(classify(&[first]), Some(Protocol::Opaque), "{first:#x}");
    }
}

#[test]
fn long_method_tokens_are_capped() {
    let twenty = [b'A'; MAX_METHOD_LEN];
    assert_eq!(classify(&twenty), None);
    assert_eq!(
        classify(&[b'A'; MAX_METHOD_LEN + 1]),
        Some(Protocol::Opaque)
    );
}

#[test]
fn request_line_wait_is_capped() {
    let mut line = b"FOO /".to_vec();
    line.resize(MAX_REQUEST_LINE - 1, b'a');
    assert_eq!(classify(&line), None);
    line.push(b'a');
    assert_eq!(classify(&line), Some(Protocol::Opaque));
    // A line end past the cap changes nothing.
    line.extend_from_slice(b" HTTP/1.1\r\n");
    assert_eq!(classify(&line), Some(Protocol::Opaque));
}

#[test]
fn h2_preface() {
    let start = h2_start();
    for n in 1..H2_PREFACE.len() {
        assert_eq!(classify(&start[..n]), None, "prefix {n}");
    }
    assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
    assert_eq!(classify(&start), Some(Protocol::Http2));
}

#[test]
fn h2_preface_mismatch_is_not_h2() {
    assert_eq!(
        classify(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
        Some(Protocol::Opaque)
    );
    // Diverging from the preface before its line end falls back to HTTP/1 rules.
    assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Some(Protocol::Http1));
    assert_eq!(classify(b"PRI * HTTP/1"), None);
}

#[test]
fn tls_real_client_hello_with_sni() {
    let hello = unhex(HELLO_SNI_HEX);
    assert_eq!(classify(&hello), Some(tls("example.com")));
    // Decided as soon as the host name is complete, not before.
    let name_end = hello.windows(11).position(|w| w == b"example.com").unwrap() + 11;
    for n in 1..name_end {
        assert_eq!(classify(&hello[..n]), None, "prefix {n}");
    }
    assert_eq!(classify(&hello[..name_end]), Some(tls("example.com")));
}

#[test]
fn tls_real_client_hello_without_sni() {
    let hello = unhex(HELLO_NO_SNI_HEX);
    assert_eq!(classify(&hello), Some(TLS_NO_SNI));
    for n in 1..hello.len() - 40 {
        assert_eq!(classify(&hello[..n]), None, "prefix {n}");
    }
}

#[test]
fn tls_sni_after_other_extensions_and_names() {
    let hello = build_hello(
        &[
            (0x000a, vec![0, 2, 0, 0x1d]),
            (0x0015, vec![0; 300]), // padding
            (
                EXT_SERVER_NAME,
                sni_body(&[(7, b"ignored"), (0, b"API.Example.COM")]),
            ),
        ],
        0,
    );
    assert_eq!(classify(&hello), Some(tls("api.example.com")));
}

#[test]
fn tls_sni_without_a_host_name_or_with_a_bad_one() {
    let other_type = build_hello(&[(EXT_SERVER_NAME, sni_body(&[(1, b"x")]))], 0);
    assert_eq!(classify(&other_type), Some(TLS_NO_SNI));
    let bad = build_hello(&[(EXT_SERVER_NAME, sni_body(&[(0, b"a b\0")]))], 0);
    assert_eq!(classify(&bad), Some(TLS_NO_SNI));
    let empty = build_hello(&[(EXT_SERVER_NAME, sni_body(&[(0, b"")]))], 0);
    assert_eq!(classify(&empty), Some(TLS_NO_SNI));
    let no_extensions = {
        let mut h = build_hello(&[], 0);
        // Drop the empty extensions block and fix up the lengths.
        h.truncate(h.len() - 2);
        h[4] -= 2;
        h[8] -= 2;
        h
    };
    assert_eq!(classify(&no_extensions), Some(TLS_NO_SNI));
}

#[test]
fn tls_hello_continuing_in_a_second_record() {
    let sni = (EXT_SERVER_NAME, sni_body(&[(0, b"first.example")]));
    let in_first = build_hello(std::slice::from_ref(&sni), 500);
    assert_eq!(classify(&in_first), Some(tls("first.example")));
    let later = build_hello(&[(0x0015, vec![0; 40])], 500);
    assert_eq!(classify(&later), Some(TLS_NO_SNI));
}

#[test]
fn tls_record_header_checks() {
    assert_eq!(classify(&[0x16]), None);
    assert_eq!(classify(&[0x16, 3, 1, 0]), None);
    assert_eq!(classify(&[0x16, 2]), Some(Protocol::Opaque));
    assert_eq!(classify(&[0x16, 3, 5]), Some(Protocol::Opaque));
    assert_eq!(classify(&[0x16, 3, 1, 0, 0]), Some(TLS_NO_SNI));
    assert_eq!(classify(&[0x16, 3, 1, 0x40, 1]), Some(TLS_NO_SNI));
    assert_eq!(classify(&[0x16, 3, 3, 0, 10]), None);
    // A handshake record that is not a ClientHello (a ServerHello) is not client TLS.
    assert_eq!(classify(&[0x16, 3, 3, 0, 10, 2]), Some(Protocol::Opaque));
}

#[test]
fn tls_garbage_is_tls_without_sni() {
    // A ClientHello whose handshake length overruns nothing but whose inner lengths are
    // nonsense.
    let mut hello = unhex(HELLO_SNI_HEX);
    hello[43] = 0xff; // session id length
    assert_eq!(classify(&hello), Some(TLS_NO_SNI));
    let mut record = vec![0x16, 3, 1, 0, 20, 1, 0, 0, 16];
    record.extend_from_slice(&[0xee; 16]);
    assert_eq!(classify(&record), Some(TLS_NO_SNI));
    // The SNI extension's length pointing past the extensions block.
    let mut hello = unhex(HELLO_SNI_HEX);
    assert_eq!(hello[0x90..0x94], [0, 0, 0, 0x10]);
    hello[0x92] = 0xff;
    assert_eq!(classify(&hello), Some(TLS_NO_SNI));
}

#[test]
fn tls_truncated_waits_then_full_record_decides() {
    // A record whose declared length is larger than what was sent stays undecided; detect's
    // timeout or EOF then settles it.
    let hello = unhex(HELLO_NO_SNI_HEX);
    assert_eq!(classify(&hello[..100]), None);
}

#[test]
fn a_full_buffer_always_decides() {
    // A maximal record whose host name (too long to be valid) ends it.
    let name = vec![b'a'; MAX_TLS_RECORD - 88];
    let big_record = build_hello(&[(EXT_SERVER_NAME, sni_body(&[(0, &name)]))], 0);
    assert_eq!(big_record.len(), MAX_DETECT);
    assert_eq!(classify(&big_record), Some(TLS_NO_SNI));
    assert!(classify(&big_record[..MAX_DETECT - 1]).is_none());
    let mut line = b"FOO ".to_vec();
    line.resize(MAX_DETECT, b'x');
    assert!(classify(&line).is_some());
}

// ---- property-style ----

/// xorshift64*: a small, deterministic generator for the fuzz-style test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

/// Asserts that `classify` never changes its mind as `buf` is revealed byte by byte.
fn assert_consistent(buf: &[u8]) {
    let mut decided: Option<(usize, Protocol)> = None;
    for n in 0..=buf.len() {
        let got = classify(&buf[..n]);
        match (&decided, got) {
            (Some((at, first)), got) => assert_eq!(
                got.as_ref(),
                Some(first),
                "decided at {at}, changed at {n} for {buf:02x?}"
            ),
            (None, Some(p)) => decided = Some((n, p)),
            (None, None) => {}
        }
    }
    if buf.len() >= MAX_DETECT {
        assert!(classify(buf).is_some());
    }
}

#[test]
fn classify_is_total_and_monotonic_on_random_input() {
    let samples = [
        GET.to_vec(),
        b"PROPFIND /dav HTTP/1.1\r\n".to_vec(),
        h2_start(),
        unhex(HELLO_SNI_HEX),
        unhex(HELLO_NO_SNI_HEX),
        build_hello(
            &[(0x0015, vec![0; 20]), (0, sni_body(&[(0, b"x.example")]))],
            3,
        ),
        vec![0x16, 3, 3],
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let mut buf = if rng.below(4) == 0 {
            (0..rng.below(64)).map(|_| rng.byte()).collect()
        } else {
            samples[rng.below(samples.len())].clone()
        };
        // Flip a few bytes (TLS length fields included), then cut or extend.
        for _ in 0..rng.below(4) {
            if !buf.is_empty() {
                let at = rng.below(buf.len());
                buf[at] = rng.byte();
            }
        }
        match rng.below(3) {
            0 => buf.truncate(rng.below(buf.len() + 1)),
            1 => buf.extend((0..rng.below(32)).map(|_| rng.byte())),
            _ => {}
        }
        assert_consistent(&buf);
    }
}

#[test]
fn classify_is_total_on_large_random_input() {
    let mut rng = XorShift(42);
    for first in [0x16u8, b'F', b'P'] {
        let mut buf: Vec<u8> = (0..MAX_DETECT + 100).map(|_| rng.byte()).collect();
        buf[0] = first;
        if first == 0x16 {
            buf[1..5].copy_from_slice(&[3, 3, 0x40, 0]);
            buf[5] = TLS_CLIENT_HELLO;
        } else {
            buf[1..4].copy_from_slice(b"OO ");
        }
        assert!(classify(&buf).is_some());
        for n in [MAX_REQUEST_LINE - 1, MAX_REQUEST_LINE, MAX_DETECT - 1] {
            if let Some(p) = classify(&buf[..n]) {
                assert_eq!(Some(p), classify(&buf));
            }
        }
    }
}

// ---- detect ----

async fn detect_script(script: &mut Script) -> (Protocol, Vec<u8>) {
    let (protocol, io) = detect(script, TIMEOUT).await.unwrap();
    (protocol, read_all(io).await)
}

fn cases() -> Vec<(&'static str, Vec<u8>, Protocol)> {
    vec![
        ("http1", GET.to_vec(), Protocol::Http1),
        ("h2", h2_start(), Protocol::Http2),
        ("tls", unhex(HELLO_SNI_HEX), tls("example.com")),
        ("tls no sni", unhex(HELLO_NO_SNI_HEX), TLS_NO_SNI),
        (
            "opaque",
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f".to_vec(),
            Protocol::Opaque,
        ),
    ]
}

#[tokio::test(start_paused = true)]
async fn each_protocol_in_one_read() {
    for (name, bytes, want) in cases() {
        let mut script = Script::new([bytes.clone(), b"more".to_vec()]);
        let (protocol, io) = detect(&mut script, TIMEOUT).await.unwrap();
        assert_eq!(protocol, want, "{name}");
        assert_eq!(io.get_ref().reads, 1, "{name}: one read");
        let mut expected = bytes;
        expected.extend_from_slice(b"more");
        assert_eq!(read_all(io).await, expected, "{name}: bytes replayed");
    }
}

#[tokio::test(start_paused = true)]
async fn each_protocol_dribbled_one_byte_at_a_time() {
    for (name, bytes, want) in cases() {
        let mut script = Script::dribble(&bytes);
        let (protocol, replayed) = detect_script(&mut script).await;
        assert_eq!(protocol, want, "{name}");
        assert_eq!(replayed, bytes, "{name}: bytes replayed");
    }
}

#[tokio::test(start_paused = true)]
async fn server_first_client_is_opaque_after_the_timeout() {
    let (server_side, mut client) = tokio::io::duplex(1024);
    let start = tokio::time::Instant::now();
    let (protocol, mut io) = detect(server_side, TIMEOUT).await.unwrap();
    assert_eq!(protocol, Protocol::Opaque);
    assert_eq!(start.elapsed(), TIMEOUT);
    // The server speaks first; the client's answer arrives intact.
    io.write_all(b"220 mail.example.com ESMTP\r\n")
        .await
        .unwrap();
    client.write_all(b"EHLO me\r\n").await.unwrap();
    drop(client);
    assert_eq!(read_all(io).await, b"EHLO me\r\n");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_partial_request_is_opaque_after_the_timeout() {
    let (server_side, mut client) = tokio::io::duplex(1024);
    client.write_all(b"GE").await.unwrap();
    let (protocol, io) = detect(server_side, TIMEOUT).await.unwrap();
    assert_eq!(protocol, Protocol::Opaque);
    client.write_all(b"T / HTTP/1.1\r\n").await.unwrap();
    drop(client);
    assert_eq!(read_all(io).await, b"GET / HTTP/1.1\r\n");
}

#[tokio::test(start_paused = true)]
async fn eof_mid_preface_is_opaque_and_replayed() {
    let mut script = Script::new([H2_PREFACE[..10].to_vec()]);
    let start = tokio::time::Instant::now();
    let (protocol, replayed) = detect_script(&mut script).await;
    assert_eq!(protocol, Protocol::Opaque);
    assert_eq!(replayed, &H2_PREFACE[..10]);
    assert!(
        start.elapsed() < TIMEOUT,
        "EOF must not wait for the timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn eof_after_a_decidable_prefix_uses_it() {
    let mut script = Script::new([b"GET ".to_vec()]);
    assert_eq!(detect_script(&mut script).await.0, Protocol::Http1);
    let mut empty = Script::new([]);
    assert_eq!(
        detect_script(&mut empty).await,
        (Protocol::Opaque, Vec::new())
    );
}

#[tokio::test(start_paused = true)]
async fn read_errors_are_returned() {
    let mut script = Script::new([b"GE".to_vec()]);
    script.error_at_end = true;
    let err = detect(&mut script, TIMEOUT).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
}

#[tokio::test(start_paused = true)]
async fn a_large_client_hello_grows_the_buffer_once() {
    let hello = build_hello(
        &[
            (0x0015, vec![0; 9000]),
            (EXT_SERVER_NAME, sni_body(&[(0, b"late.example")])),
        ],
        0,
    );
    let mut script = Script::new([hello.clone()]);
    let (protocol, io) = detect(&mut script, TIMEOUT).await.unwrap();
    assert_eq!(protocol, tls("late.example"));
    assert!(io.get_ref().reads <= 3, "reads: {}", io.get_ref().reads);
    assert_eq!(read_all(io).await, hello);
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_still_reads_what_is_there() {
    let mut script = Script::new([GET.to_vec()]);
    let (protocol, _) = detect(&mut script, Duration::ZERO).await.unwrap();
    assert_eq!(protocol, Protocol::Http1);
}
