//! The HTTP/2 client of the mesh transport (and of HTTP/2 apps), driven on `h2` directly.
//!
//! hyper's HTTP/2 client puts a channel, two one-shot channels and a spawned task between a
//! request and its stream (`SendWhen`, which waits for the response headers and hands them
//! back), strips connection headers the proxy has already stripped, and moves each request
//! through several kilobyte-sized futures: about 6,500 instructions of proxy A's 68,600 per
//! request (callgrind, `bench/instructions`). Here the request's own task opens the stream and
//! waits for the response headers itself; the connection's task only drives the connection.
//!
//! A request body that is not over when the stream opens is piped from a task of its own, as
//! hyper does (a GET needs none); the stream is reset if the caller gives up before the
//! response comes. A `CONNECT` stream becomes a byte stream ([`H2Io`]) for tunnels.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::client::SendRequest;
use h2::{Ping, PingPong, RecvStream, SendStream};
use http::{Request, Response, header};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::pool::{Body, BoxError};
use crate::serve::{
    H2_CONNECTION_WINDOW, H2_MAX_FRAME, H2_MAX_SEND_BUFFER, H2_STREAM_WINDOW, MAX_HEADER_BYTES,
    PING_INTERVAL, PING_TIMEOUT,
};

/// A live HTTP/2 connection: cheap to clone, one per peer in the pool.
#[derive(Debug, Clone)]
pub(crate) struct H2Conn {
    send: SendRequest<Bytes>,
    /// Cleared when the connection's task ends (closed, failed, or no answer to a ping).
    open: Arc<AtomicBool>,
}

/// Start HTTP/2 (prior knowledge) on `io` and spawn the task that drives the connection.
/// Large windows so one stream can fill a fast link; server push off.
pub(crate) async fn handshake<T>(io: T, addr: SocketAddr) -> Result<H2Conn, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_send_buffer_size(H2_MAX_SEND_BUFFER)
        // Responses may carry as much header as requests may (hyper's client took 16 KiB).
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        // Until the peer's SETTINGS say how many streams it takes (hyper's default).
        .initial_max_send_streams(100)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let open = Arc::new(AtomicBool::new(true));
    let ping = conn.ping_pong();
    let flag = open.clone();
    tokio::spawn(async move {
        let keepalive = keepalive(ping);
        tokio::select! {
            result = conn => if let Err(error) = result {
                tracing::debug!(peer.addr = %addr, %error, "HTTP/2 connection ended");
            },
            () = keepalive => {
                tracing::debug!(peer.addr = %addr, "HTTP/2 connection closed: no answer to a ping");
            }
        }
        flag.store(false, Ordering::Release);
    });
    Ok(H2Conn { send, open })
}

/// Ping every [`PING_INTERVAL`]; return when a pong does not come within [`PING_TIMEOUT`]
/// (never, without a ping handle, or once the connection has failed: its task ends then).
pub(crate) async fn keepalive(ping: Option<PingPong>) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        match tokio::time::timeout(PING_TIMEOUT, ping.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection failed: its own future reports that.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

impl H2Conn {
    /// Is the connection gone (no new stream can open on it)?
    pub(crate) fn is_closed(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    /// Wait for room for one more stream. An error means the connection is closing or gone
    /// (GOAWAY): it is marked closed, so the pool opens a new one.
    pub(crate) async fn ready(&self) -> Result<Ready, h2::Error> {
        let result = self.send.clone().ready().await;
        if result.is_err() {
            self.open.store(false, Ordering::Release);
        }
        result.map(Ready)
    }
}

/// A connection with room for one more stream.
#[derive(Debug)]
pub(crate) struct Ready(SendRequest<Bytes>);

impl Ready {
    /// Send `req` (absolute URI) and wait for the response headers.
    pub(crate) async fn send(self, req: Request<Body>) -> Result<Response<RecvBody>, h2::Error> {
        let mut send = self.0;
        let (parts, body) = req.into_parts();
        let eos = body.is_end_stream();
        let (response, stream) = send.send_request(Request::from_parts(parts, ()), eos)?;
        // Until the response comes, dropping this future (the client went away, a timeout)
        // must reset a stream whose body is still being piped.
        let piping = if eos { None } else { pipe(body, stream).await };
        let response = response.await?;
        if let Some(piping) = piping {
            let _ = piping.send(());
        }
        let content_length = content_length(response.headers());
        Ok(response.map(|recv| RecvBody::H2(H2Body::new(recv, content_length))))
    }

    /// Open a `CONNECT` stream (`req`'s URI is the target's authority) and, once the peer
    /// answers, return its response and the stream as bytes (meaningful when the status is
    /// 200).
    pub(crate) async fn connect(self, req: Request<()>) -> Result<(Response<()>, H2Io), h2::Error> {
        let mut send = self.0;
        let (response, stream) = send.send_request(req, false)?;
        let (parts, recv) = response.await?.into_parts();
        let io = H2Io::new(stream, recv);
        Ok((Response::from_parts(parts, ()), io))
    }
}

/// Pipe `body` into `stream`. Most bodies are over at once (one buffered chunk): that is done
/// here. Otherwise a task takes over; the returned sender tells it the response came (dropped
/// without a word, the caller gave up and the stream is reset).
async fn pipe(body: Body, stream: SendStream<Bytes>) -> Option<oneshot::Sender<()>> {
    let mut pipe = Pipe::new(body, stream);
    let done = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut pipe).poll(cx).is_ready()));
    if done.await {
        return None;
    }
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        tokio::pin!(rx);
        let mut watching = true;
        std::future::poll_fn(|cx| {
            if watching {
                match rx.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => watching = false,
                    Poll::Ready(Err(_)) => {
                        pipe.stream.send_reset(h2::Reason::CANCEL);
                        return Poll::Ready(());
                    }
                    Poll::Pending => {}
                }
            }
            Pin::new(&mut pipe).poll(cx)
        })
        .await;
    });
    Some(tx)
}

/// A request body being written to its stream: DATA as flow control allows, then trailers or
/// an empty end-of-stream frame. Ends early (and quietly) if the peer resets the stream or the
/// body fails (the stream is reset then).
pub(crate) struct Pipe {
    body: Body,
    stream: SendStream<Bytes>,
    /// A chunk waiting for flow-control capacity, and whether it ends the body.
    pending: Option<(Bytes, bool)>,
}

impl Pipe {
    pub(crate) fn new(body: Body, stream: SendStream<Bytes>) -> Self {
        Self {
            body,
            stream,
            pending: None,
        }
    }
}

impl Future for Pipe {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if let Poll::Ready(reason) = this.stream.poll_reset(cx) {
                tracing::debug!(?reason, "request stream reset by the peer");
                return Poll::Ready(());
            }
            if let Some((chunk, eos)) = this.pending.take() {
                while this.stream.capacity() == 0 {
                    match this.stream.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                        Poll::Pending => {
                            this.pending = Some((chunk, eos));
                            return Poll::Pending;
                        }
                    }
                }
                if this.stream.send_data(chunk, eos).is_err() || eos {
                    return Poll::Ready(());
                }
                continue;
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        let eos = this.body.is_end_stream();
                        if chunk.is_empty() {
                            if this.stream.send_data(chunk, eos).is_err() || eos {
                                return Poll::Ready(());
                            }
                        } else {
                            // A small claim, as hyper makes: h2 raises it to what is buffered.
                            this.stream.reserve_capacity(1);
                            this.pending = Some((chunk, eos));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.stream.reserve_capacity(0);
                            let _ = this.stream.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(error)) => {
                    tracing::debug!(%error, "request body failed; stream reset");
                    this.stream.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(());
                }
                None => {
                    let _ = this.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// A body as received: a response from an upstream over HTTP/1.1 (hyper's client, or read
/// directly by `h1_client`) or HTTP/2 (ours), or a request from a client (hyper's server, or
/// ours on the mesh transport, [`crate::h2_server`]).
#[derive(Debug)]
pub(crate) enum RecvBody {
    H1(hyper::body::Incoming),
    Direct(crate::h1_client::RecvH1),
    H2(H2Body),
    /// None at all (a `CONNECT` request: the stream is the tunnel's).
    Empty,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::H1(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
            Self::Direct(body) => Pin::new(body).poll_frame(cx),
            Self::H2(body) => body.poll_frame(cx),
            Self::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::H1(body) => body.is_end_stream(),
            Self::Direct(body) => body.is_end_stream(),
            Self::H2(body) => body.recv.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::H1(body) => body.size_hint(),
            Self::Direct(body) => body.size_hint(),
            Self::H2(body) => body
                .content_length
                .map_or_else(SizeHint::default, SizeHint::with_exact),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A message's `content-length` (one value, digits only: `h1::content_length`), for a body's
/// size hint.
pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_LENGTH)?;
    crate::h1::content_length(value.as_bytes()).map(|n| n as u64)
}

/// A response body arriving on an HTTP/2 stream. Flow-control capacity is given back as each
/// chunk is taken, so the peer may send more.
#[derive(Debug)]
pub(crate) struct H2Body {
    recv: RecvStream,
    /// From the response's `content-length`, for the size hint.
    content_length: Option<u64>,
}

impl H2Body {
    /// `content_length` from the message's header, for the size hint.
    pub(crate) fn new(recv: RecvStream, content_length: Option<u64>) -> Self {
        Self {
            recv,
            content_length,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match ready!(self.recv.poll_data(cx)) {
            Some(Ok(chunk)) => {
                let _ = self.recv.flow_control().release_capacity(chunk.len());
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Some(Err(error)) => Poll::Ready(Some(Err(error.into()))),
            None => match ready!(self.recv.poll_trailers(cx)) {
                Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Ok(None) => Poll::Ready(None),
                Err(error) => Poll::Ready(Some(Err(error.into()))),
            },
        }
    }
}

/// An HTTP/2 stream as a byte stream (a `CONNECT` tunnel): reads take DATA, writes send DATA as
/// flow control allows, shutdown ends the stream (a half-close).
#[derive(Debug)]
pub(crate) struct H2Io {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Read but not yet taken.
    buf: Bytes,
    /// End of stream sent.
    closed: bool,
}

impl H2Io {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            buf: Bytes::new(),
            closed: false,
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.buf.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(chunk)) => this.buf = chunk,
                Some(Err(error)) => {
                    return Poll::Ready(match error.reason() {
                        Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL) => Ok(()),
                        _ => Err(io_error(error)),
                    });
                }
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.send;
        if let Poll::Ready(reason) = send.poll_reset(cx) {
            let error = match reason {
                Ok(reason) => io::Error::new(io::ErrorKind::BrokenPipe, h2::Error::from(reason)),
                Err(error) => io_error(error),
            };
            return Poll::Ready(Err(error));
        }
        send.reserve_capacity(buf.len());
        while send.capacity() == 0 {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(error)) => return Poll::Ready(Err(io_error(error))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        let n = send.capacity().min(buf.len());
        send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.closed {
            self.closed = true;
            self.send.reserve_capacity(0);
            self.send.send_data(Bytes::new(), true).map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

fn io_error(error: h2::Error) -> io::Error {
    if error.is_io() {
        error
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::Other.into())
    } else {
        io::Error::other(error)
    }
}

#[cfg(test)]
mod tests;
