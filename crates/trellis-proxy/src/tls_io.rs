//! TLS on the mesh transport's connections, with the writes of one turn coalesced.
//!
//! h2 hands each DATA frame of 256 bytes or more to the socket on its own and flushes after
//! it, and tokio-rustls makes each such write a TLS record and a system call: a proxy that
//! answered sixteen 1 KiB responses in one turn made sixteen `writev`s to its peer (strace),
//! and the peer sixteen reads. Here, after the handshake (which tokio-rustls still does), a
//! write only encrypts into rustls's buffer, and a flush only notes that records are owed and
//! wakes the task. The owed records go out together when the connection next reads, which h2
//! does first thing each time the connection is polled: after the other tasks that were ready
//! have run, so everything they answered in the meantime goes in the same `writev`. Nothing
//! waits for a timer. A full buffer (rustls's 64 KiB) is written at once, and shutdown
//! writes everything before the close.
//!
//! At 1,000 req/s that wake is one more poll of the HTTP/2 connection per request on each
//! proxy before the bytes leave. Writing at the flush that ends h2's turn instead (h2's chained
//! DATA frames tell it apart) was tried on 2026-11-27: 1-2 % fewer instructions at that rate,
//! no difference in latency that 36 paired trials could show, a little more CPU per request in
//! most of them, and 10 % off the L4 maximum (smaller writes); not kept (bench/README.md,
//! tenth session).

use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A TLS connection whose handshake is done; see the module's note for how it writes.
pub(crate) struct TlsIo<IO> {
    io: IO,
    conn: rustls::Connection,
    /// close_notify has been queued.
    closing: bool,
}

impl<IO> std::fmt::Debug for TlsIo<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIo").finish_non_exhaustive()
    }
}

impl<IO> TlsIo<IO> {
    pub(crate) fn client(tls: tokio_rustls::client::TlsStream<IO>) -> Self {
        let (io, conn) = tls.into_inner();
        Self::new(io, conn.into())
    }

    pub(crate) fn server(tls: tokio_rustls::server::TlsStream<IO>) -> Self {
        let (io, conn) = tls.into_inner();
        Self::new(io, conn.into())
    }

    fn new(io: IO, conn: rustls::Connection) -> Self {
        Self {
            io,
            conn,
            closing: false,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsIo<IO> {
    /// Write every queued record (rustls writes them vectored: one system call for many).
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut io = SyncIo {
                io: &mut self.io,
                cx,
            };
            match self.conn.write_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Read what the socket has into rustls and decrypt it; 0 at the end of the stream.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut io = SyncIo {
            io: &mut self.io,
            cx,
        };
        let n = match self.conn.read_tls(&mut io) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if let Err(error) = self.conn.process_new_packets() {
            // Send the alert that says why, if the socket takes it now.
            let _ = self.poll_write_tls(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
        }
        Poll::Ready(Ok(n))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // What the last turn wrote (and anything rustls queued itself: tickets, key updates).
        // A full socket leaves it queued: its writability wakes the task; reading goes on.
        if this.conn.wants_write() {
            if let Poll::Ready(Err(e)) = this.poll_write_tls(cx) {
                return Poll::Ready(Err(e));
            }
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Copy from rustls's plaintext straight into the caller's (uninitialised) buffer:
            // `read` would need it zeroed first, and h2 offers kilobytes per read.
            let mut reader = this.conn.reader();
            match reader.fill_buf() {
                // Empty: the peer's close_notify, the end of the stream.
                Ok(chunk) => {
                    let n = chunk.len().min(buf.remaining());
                    buf.put_slice(&chunk[..n]);
                    reader.consume(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // UnexpectedEof: the socket ended without close_notify.
                Err(e) => return Poll::Ready(Err(e)),
            }
            // No plaintext yet: more records from the socket (at its end, rustls's reader
            // answers the next round with the end or an error).
            ready!(this.poll_read_tls(cx))?;
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let n = this.conn.writer().write(buf)?;
            if n > 0 || buf.is_empty() {
                return Poll::Ready(Ok(n));
            }
            // rustls's buffer is full: out with it now.
            ready!(this.poll_write_tls(cx))?;
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            let n = this.conn.writer().write_vectored(bufs)?;
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            ready!(this.poll_write_tls(cx))?;
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Owed, not written: the next read writes it (see the module's note). The wake makes
    /// sure there is a next poll even when nothing arrives.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.wants_write() {
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.conn.send_close_notify();
            this.closing = true;
        }
        ready!(this.poll_write_tls(cx))?;
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            // Already gone: as closed as it gets.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            result => Poll::Ready(result),
        }
    }
}

/// The socket as blocking `Read`/`Write` for rustls: `Pending` becomes `WouldBlock` (the
/// waker is then registered).
struct SyncIo<'a, 'b, IO> {
    io: &'a mut IO,
    cx: &'a mut Context<'b>,
}

impl<IO: AsyncRead + Unpin> Read for SyncIo<'_, '_, IO> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<IO: AsyncWrite + Unpin> Write for SyncIo<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use trellis_identity::{
        CertificateAuthority, Credentials, Existing, SpiffeId, TrustBundle, WorkloadCert,
    };

    use crate::mtls::{MeshStream, MeshTls};

    const TD: &str = "tls-io.test";

    fn id(name: &str) -> SpiffeId {
        format!("spiffe://{TD}/ns/test/sa/{name}").parse().unwrap()
    }

    /// Two proxies' TLS material from one throwaway CA.
    fn pair(test: &str) -> (MeshTls, MeshTls) {
        let dir =
            std::env::temp_dir().join(format!("trellis-tls-io-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = CertificateAuthority::init(&dir.join("ca"), TD, Existing::Replace).unwrap();
        let tls = |name: &str| {
            let (key, issued) = ca.issue(&id(name), Duration::from_secs(3600)).unwrap();
            let out = dir.join(name);
            issued.write(&out, &key).unwrap();
            let read = |f: &str| std::fs::read(out.join(f)).unwrap();
            let cert = WorkloadCert::from_pem(name, &read("cert-chain.pem"), &read("key.pem"));
            let bundle = TrustBundle::from_pem("root", &read("root-cert.pem")).unwrap();
            MeshTls::new(Credentials::new(cert.unwrap(), bundle)).unwrap()
        };
        let pair = (tls("client"), tls("server"));
        let _ = std::fs::remove_dir_all(&dir);
        pair
    }

    /// A client `TlsIo` (inside a `MeshStream`) and the server's, connected.
    async fn connected(test: &str) -> (MeshStream, super::TlsIo<TcpStream>) {
        let (client, server) = pair(test);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (io, peer) = server.accept(tcp).await.unwrap();
            assert_eq!(peer, Some(id("client")));
            io
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let io = client.connect(tcp, addr, &id("server")).await.unwrap();
        (io, accept.await.unwrap())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// 4 MiB each way in writes of many sizes, each side reading in the same task as it
    /// writes (as h2 does): everything arrives whole, past rustls's 64 KiB buffer and the
    /// socket's, and each side's close ends the other's reading.
    #[tokio::test]
    async fn everything_written_arrives_both_ways() {
        let (client, mut server) = connected("both-ways").await;
        let echo = tokio::spawn(async move {
            let mut buf = vec![0; 70_000];
            loop {
                let n = server.read(&mut buf).await.unwrap();
                if n == 0 {
                    server.shutdown().await.unwrap();
                    return;
                }
                server.write_all(&buf[..n]).await.unwrap();
                server.flush().await.unwrap();
            }
        });
        let sent = pattern(4 << 20);
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async {
            let mut at = 0;
            for size in (1..).map(|i| (i * 7919) % 40_000 + 1) {
                let end = (at + size).min(sent.len());
                wr.write_all(&sent[at..end]).await.unwrap();
                wr.flush().await.unwrap();
                at = end;
                if at == sent.len() {
                    break;
                }
            }
            wr.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let read = rd.read_to_end(&mut got);
        let both = async { tokio::join!(write, read).1 };
        tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .expect("the echo finished")
            .unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the bytes came back changed");
        echo.await.unwrap();
    }

    /// A flush with nothing more to do still sends: the task is woken, and its next read
    /// writes what the flush owed. Then a shutdown writes what is left and closes cleanly.
    #[tokio::test]
    async fn a_flush_is_answered_and_a_shutdown_writes_the_rest() {
        let (mut client, mut server) = connected("flush").await;
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let answer = tokio::spawn(async move {
            let mut buf = [0; 4];
            server.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            server.write_all(b"pong").await.unwrap();
            server.flush().await.unwrap();
            // The rest only after the client's close: the client's shutdown must write it all.
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            server.shutdown().await.unwrap();
            rest
        });
        let mut buf = [0; 4];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut buf))
            .await
            .expect("the ping was sent and answered")
            .unwrap();
        assert_eq!(&buf, b"pong");
        let tail = pattern(300_000);
        client.write_all(&tail).await.unwrap();
        client.shutdown().await.unwrap();
        let rest = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("the tail arrived")
            .unwrap();
        assert!(
            rest == tail,
            "{} bytes of {} arrived",
            rest.len(),
            tail.len()
        );
    }
}
