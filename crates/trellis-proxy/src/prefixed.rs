//! An IO stream that replays bytes already read from it.
//!
//! Protocol detection has to read (not peek) the first bytes of a connection to decide what it
//! carries. [`Prefixed`] hands those bytes back to whoever handles the connection next, then
//! reads from the socket as if nothing had happened. Writes are never buffered: they go straight
//! to the inner stream.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pin_project! {
    /// A stream whose reads first yield `prefix`, then continue from `inner`.
    ///
    /// Once the prefix has been read it is released, so a long-lived connection does not keep
    /// the detection buffer alive; with an empty prefix a read costs one `is_empty` check more
    /// than reading `inner` directly.
    #[derive(Debug)]
    pub struct Prefixed<S> {
        prefix: Bytes,
        #[pin]
        inner: S,
    }
}

impl<S> Prefixed<S> {
    /// Wraps `inner` so that reads yield `prefix` before anything read from `inner`.
    #[must_use]
    pub fn new(prefix: impl Into<Bytes>, inner: S) -> Self {
        Self {
            prefix: prefix.into(),
            inner,
        }
    }

    /// Returns the bytes not yet replayed and the inner stream.
    #[must_use]
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }

    /// The bytes not yet replayed.
    #[must_use]
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Returns the inner stream, e.g. to read its addresses or socket options.
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.prefix.is_empty() {
            return this.inner.poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        if this.prefix.is_empty() {
            // Drop our reference to the detection buffer now rather than with the connection.
            *this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A writer that records what it was asked to do and claims vectored-write support.
    #[derive(Default)]
    struct RecordingWriter {
        written: Vec<u8>,
        vectored_calls: usize,
        flushed: bool,
        shut_down: bool,
    }

    impl AsyncWrite for RecordingWriter {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.vectored_calls += 1;
            let mut n = 0;
            for b in bufs {
                self.written.extend_from_slice(b);
                n += b.len();
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushed = true;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut_down = true;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn replays_prefix_then_reads_inner() {
        let inner: &[u8] = b" world";
        let mut io = Prefixed::new(Bytes::from_static(b"hello"), inner);
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello world");
    }

    #[tokio::test]
    async fn small_reads_split_the_prefix() {
        let inner: &[u8] = b"cd";
        let mut io = Prefixed::new(Bytes::from_static(b"ab"), inner);
        let mut one = [0u8; 1];
        let mut seen = Vec::new();
        while io.read(&mut one).await.unwrap() == 1 {
            seen.push(one[0]);
        }
        assert_eq!(seen, b"abcd");
    }

    #[tokio::test]
    async fn a_read_never_mixes_prefix_and_inner() {
        let inner: &[u8] = b"cd";
        let mut io = Prefixed::new(Bytes::from_static(b"ab"), inner);
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 2);
        assert_eq!(&buf[..2], b"ab");
        assert_eq!(io.read(&mut buf).await.unwrap(), 2);
        assert_eq!(&buf[..2], b"cd");
    }

    #[tokio::test]
    async fn empty_prefix_reads_inner_directly() {
        let inner: &[u8] = b"xyz";
        let mut io = Prefixed::new(Bytes::new(), inner);
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"xyz");
    }

    #[tokio::test]
    async fn into_parts_returns_the_unread_prefix() {
        let inner: &[u8] = b"rest";
        let mut io = Prefixed::new(bytes::BytesMut::from(&b"prefix"[..]), inner);
        let mut three = [0u8; 3];
        io.read_exact(&mut three).await.unwrap();
        assert_eq!(io.get_ref(), b"rest");
        let (prefix, inner) = io.into_parts();
        assert_eq!(&prefix[..], b"fix");
        assert_eq!(inner, b"rest");
    }

    #[tokio::test]
    async fn consumed_prefix_is_released() {
        let inner: &[u8] = b"";
        let mut io = Prefixed::new(Bytes::from(vec![1u8, 2, 3]), inner);
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.unwrap();
        let (prefix, _) = io.into_parts();
        assert!(prefix.is_empty());
        assert_eq!(prefix, Bytes::new());
    }

    #[tokio::test]
    async fn writes_flush_and_shutdown_go_to_inner() {
        let mut io = Prefixed::new(Bytes::from_static(b"unread"), RecordingWriter::default());
        assert!(io.is_write_vectored());
        io.write_all(b"plain ").await.unwrap();
        let bufs = [IoSlice::new(b"vec"), IoSlice::new(b"tored")];
        let n = io.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, 8);
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        let (prefix, inner) = io.into_parts();
        assert_eq!(&prefix[..], b"unread", "writes must not touch the prefix");
        assert_eq!(inner.written, b"plain vectored");
        assert_eq!(inner.vectored_calls, 1);
        assert!(inner.flushed && inner.shut_down);
    }

    #[tokio::test]
    async fn duplex_round_trip() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = Prefixed::new(Bytes::from_static(b"first "), a);
        b.write_all(b"second").await.unwrap();
        b.shutdown().await.unwrap();
        io.write_all(b"reply").await.unwrap();
        io.shutdown().await.unwrap();

        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"first second");
        let mut reply = Vec::new();
        b.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");
    }
}
