//! What went over the wire: `tcpdump -w` on a link, read back as IPv4 TCP/UDP packets, and
//! the little of TLS a test needs to say "this is TLS 1.3, and nothing else was readable".

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dir::TestDir;
use crate::process::Process;
use crate::wait::wait_until;

/// `tcpdump` writing every frame of one interface to a file, packet by packet (`-U`).
#[derive(Debug)]
pub struct PacketCapture {
    process: Process,
    file: PathBuf,
    _dir: TestDir,
}

/// One IPv4 TCP or UDP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub transport: Transport,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// The TLS handshake as seen on the wire, from the bytes each side sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSummary {
    /// A ClientHello came first from the client.
    pub client_hello: bool,
    /// The version the server chose: `supported_versions` when present (TLS 1.3), else the
    /// ServerHello's legacy version.
    pub server_version: Option<u16>,
    /// Record content types the server sent after its ServerHello (23 = application data).
    pub server_records_after_hello: Vec<u8>,
    /// Record content types the client sent after its ClientHello.
    pub client_records_after_hello: Vec<u8>,
}

pub const TLS_1_3: u16 = 0x0304;

impl PacketCapture {
    /// Starts `tcpdump` with `launcher` (e.g. `ip netns exec NODE tcpdump`) on `interface`
    /// and waits until it says it is listening.
    pub fn start(mut launcher: std::process::Command, interface: &str) -> PacketCapture {
        let dir = TestDir::new("pcap");
        let file = dir.join("capture.pcap");
        // -Z root: Debian's tcpdump would otherwise drop to its own user before opening the
        // file in a directory that user cannot write. -n: no name lookups.
        launcher
            .args(["-i", interface, "-n", "-U", "-s", "0", "-Z", "root", "-w"])
            .arg(&file);
        let process = Process::spawn("tcpdump", launcher);
        let listening = process.wait_for_stderr(Duration::from_secs(10), |line| {
            line.starts_with("listening on") || line.contains("tcpdump: listening")
        });
        assert!(
            listening.is_some(),
            "tcpdump did not start listening on {interface}\n{}",
            process.stderr_tail(20)
        );
        PacketCapture {
            process,
            file,
            _dir: dir,
        }
    }

    /// Every packet written so far.
    pub fn packets(&self) -> Vec<Packet> {
        std::fs::read(&self.file)
            .map(|bytes| parse_pcap(&bytes))
            .unwrap_or_default()
    }

    /// Waits until a packet matching `pred` has been written (packets are written in the
    /// order the link carried them, so everything before it is there too), then stops
    /// tcpdump and returns every packet.
    pub fn finish_after(mut self, pred: impl Fn(&Packet) -> bool) -> Vec<Packet> {
        let seen = wait_until(Duration::from_secs(10), || {
            self.packets().iter().any(&pred).then_some(())
        });
        assert!(
            seen.is_some(),
            "the marker packet never reached the capture\n{}",
            self.process.stderr_tail(20)
        );
        self.process.signal("INT");
        self.process.wait_exit(Duration::from_secs(5));
        self.packets()
    }

    pub fn path(&self) -> &Path {
        &self.file
    }
}

impl Packet {
    /// Between these two hosts, either way.
    pub fn between(&self, a: IpAddr, b: IpAddr) -> bool {
        (self.src.ip() == a && self.dst.ip() == b) || (self.src.ip() == b && self.dst.ip() == a)
    }

    /// Either end uses `port`.
    pub fn has_port(&self, port: u16) -> bool {
        self.src.port() == port || self.dst.port() == port
    }
}

/// The bytes sent from `src` to `dst` over TCP, segments joined in capture order (a veth does
/// not reorder or drop, so that is the byte stream; retransmissions would show twice).
pub fn tcp_stream(packets: &[Packet], src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    packets
        .iter()
        .filter(|p| p.transport == Transport::Tcp && p.src == src && p.dst == dst)
        .flat_map(|p| p.payload.iter().copied())
        .collect()
}

/// Reads the TLS records of one connection: `client` the bytes the client sent, `server`
/// what the server sent.
pub fn tls_summary(client: &[u8], server: &[u8]) -> TlsSummary {
    let client_records = records(client);
    let server_records = records(server);
    let client_hello = client_records
        .first()
        .is_some_and(|(kind, body)| *kind == 22 && body.first() == Some(&1));
    let hello = server_records
        .iter()
        .position(|(kind, body)| *kind == 22 && body.first() == Some(&2));
    TlsSummary {
        client_hello,
        server_version: hello.and_then(|i| server_hello_version(server_records[i].1)),
        server_records_after_hello: hello
            .map(|i| server_records[i + 1..].iter().map(|(k, _)| *k).collect())
            .unwrap_or_default(),
        client_records_after_hello: client_records.iter().skip(1).map(|(k, _)| *k).collect(),
    }
}

/// Whether `needle` appears in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// TLS records: (content type, fragment). A truncated last record is dropped.
fn records(mut bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
        let Some(fragment) = bytes.get(5..5 + len) else {
            break;
        };
        out.push((bytes[0], fragment));
        bytes = &bytes[5 + len..];
    }
    out
}

/// The version a ServerHello handshake message selects.
fn server_hello_version(hs: &[u8]) -> Option<u16> {
    // type(1) length(3) legacy_version(2) random(32) session_id(1+n) cipher(2) compression(1)
    let legacy = u16::from_be_bytes([*hs.get(4)?, *hs.get(5)?]);
    let sid_len = usize::from(*hs.get(38)?);
    let mut at = 39 + sid_len + 3;
    let ext_len = usize::from(u16::from_be_bytes([*hs.get(at)?, *hs.get(at + 1)?]));
    at += 2;
    let end = (at + ext_len).min(hs.len());
    while at + 4 <= end {
        let kind = u16::from_be_bytes([hs[at], hs[at + 1]]);
        let len = usize::from(u16::from_be_bytes([hs[at + 2], hs[at + 3]]));
        if kind == 43 && len == 2 {
            return Some(u16::from_be_bytes([*hs.get(at + 4)?, *hs.get(at + 5)?]));
        }
        at += 4 + len;
    }
    Some(legacy)
}

/// IPv4 TCP and UDP packets from a pcap file of Ethernet frames; anything else is skipped.
pub fn parse_pcap(bytes: &[u8]) -> Vec<Packet> {
    let Some(header) = bytes.get(..24) else {
        return Vec::new();
    };
    let little = match header[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Vec::new(),
    };
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        let word: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(word)
        } else {
            u32::from_be_bytes(word)
        })
    };
    const ETHERNET: u32 = 1;
    if u32_at(header, 20) != Some(ETHERNET) {
        return Vec::new();
    }
    let mut packets = Vec::new();
    let mut at = 24;
    while let Some(len) = u32_at(bytes, at + 8) {
        let start = at + 16;
        let Some(frame) = bytes.get(start..start + len as usize) else {
            break;
        };
        packets.extend(parse_frame(frame));
        at = start + len as usize;
    }
    packets
}

fn parse_frame(frame: &[u8]) -> Option<Packet> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None; // not IPv4
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let ip = ip.get(..total.min(ip.len()))?;
    let proto = *ip.get(9)?;
    let addrs = ip.get(12..20)?;
    let src_ip = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
    let dst_ip = Ipv4Addr::new(addrs[4], addrs[5], addrs[6], addrs[7]);
    let l4 = ip.get(ihl..)?;
    let port = |at: usize| Some(u16::from_be_bytes([*l4.get(at)?, *l4.get(at + 1)?]));
    let (transport, payload) = match proto {
        6 => {
            let offset = usize::from(l4.get(12)? >> 4) * 4;
            (Transport::Tcp, l4.get(offset..)?)
        }
        17 => (Transport::Udp, l4.get(8..)?),
        _ => return None,
    };
    Some(Packet {
        src: SocketAddr::new(src_ip.into(), port(0)?),
        dst: SocketAddr::new(dst_ip.into(), port(2)?),
        transport,
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_tls_1_3_server_hello() {
        // A ServerHello with an empty session id and supported_versions = TLS 1.3.
        let mut hello = vec![2, 0, 0, 0, 0x03, 0x03];
        hello.extend([7; 32]);
        hello.extend([0, 0x13, 0x01, 0]);
        hello.extend([0, 6, 0, 43, 0, 2, 0x03, 0x04]);
        let mut server = vec![22, 3, 3, 0, hello.len() as u8];
        server.extend(&hello);
        server.extend([23, 3, 3, 0, 2, 0xaa, 0xbb]);
        let client = [22, 3, 1, 0, 1, 1, 23, 3, 3, 0, 1, 0];
        let summary = tls_summary(&client, &server);
        assert!(summary.client_hello);
        assert_eq!(summary.server_version, Some(TLS_1_3));
        assert_eq!(summary.server_records_after_hello, [23]);
        assert_eq!(summary.client_records_after_hello, [23]);
    }

    #[test]
    fn plaintext_is_not_tls() {
        let summary = tls_summary(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(!summary.client_hello);
        assert_eq!(summary.server_version, None);
    }
}
