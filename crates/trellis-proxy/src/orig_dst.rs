//! The original destination of a connection redirected by iptables (`SO_ORIGINAL_DST`).
//!
//! socket2 wraps the `getsockopt` call safely, so this module needs no `unsafe` of its own.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// Where the client meant to connect before iptables redirected it to us. Fails with
/// `NotFound`-like errors when the connection was not redirected (no conntrack entry).
pub(crate) fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let local = stream.local_addr()?;
    let addr = if local.is_ipv4() {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}
