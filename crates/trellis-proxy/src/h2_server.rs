//! The HTTP/2 server of the mesh transport (the inbound side of a peer connection), driven on
//! `h2` directly: the counterpart of [`crate::h2_client`], with its pieces.
//!
//! hyper's HTTP/2 server puts its own layer between a stream and the handler: it parses
//! `content-length` again, strips connection headers the proxy never lets through, records
//! every frame for its ping-based window sizing, and wraps both bodies in its own types. Without
//! it proxy B runs 1.2 % fewer instructions per request under wrk and 2.2 % fewer at 1,000
//! req/s (callgrind, `bench/instructions`), where the connection's task wakes for every request.
//! Each stream's handler still runs on a task of its own: run inside the connection's task
//! (`FuturesUnordered`) B cost 40 % more (76.6k instructions against 54.0k), probably because
//! every wake of any stream then polls the whole connection as well.
//!
//! What hyper did and this does too: the handler is dropped when the client resets the stream
//! before the answer; a body of known size gets its `content-length`; a `CONNECT` stream
//! answered 2xx becomes a byte stream ([`Tunnel`]); GOAWAY on drain, open streams finish; a
//! ping every 30 s, the connection closed when the pong takes 10 s. Not done: a `date` header on
//! responses that have none (the proxy that answers the client adds it).

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderValue, Method, Request, Response, header};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use trellis_runtime::DrainWatcher;

use crate::h2_client::{H2Body, H2Io, Pipe, RecvBody, content_length, keepalive};
use crate::pool::Body;
use crate::serve::{
    H2_CONNECTION_WINDOW, H2_MAX_FRAME, H2_MAX_SEND_BUFFER, H2_MAX_STREAMS, H2_STREAM_WINDOW,
    MAX_HEADER_BYTES,
};

/// In a `CONNECT` request's extensions: the stream as bytes, once the handler's answer was a
/// 2xx and has been sent (dropped unsent otherwise).
/// (Shared because extensions must be `Clone`: the first to wait takes it.)
#[derive(Debug, Clone)]
pub(crate) struct Tunnel(Arc<Mutex<Option<oneshot::Receiver<H2Io>>>>);

impl Tunnel {
    /// Wait for the stream; `None` if it never opened (the answer was not a 2xx, or the peer
    /// reset the stream first).
    pub(crate) async fn opened(self) -> Option<H2Io> {
        let rx = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        rx.await.ok()
    }
}

/// Serve HTTP/2 (prior knowledge) on `io`: each stream's request goes to `handler` on a task of
/// its own, and its response back on the stream. On drain, GOAWAY; the open streams finish.
pub(crate) async fn serve<I, H, F>(io: I, drain: &DrainWatcher, handler: H)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<RecvBody>) -> F,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // The settings of hyper's server (`serve::http2`, still used for HTTP/2 from apps).
    let handshake = h2::server::Builder::new()
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(H2_MAX_FRAME)
        .max_send_buffer_size(H2_MAX_SEND_BUFFER)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_local_error_reset_streams(Some(1024))
        .handshake::<_, Bytes>(io);
    let mut conn = tokio::select! {
        result = handshake => match result {
            Ok(conn) => conn,
            Err(error) => {
                tracing::debug!(%error, "HTTP/2 handshake failed");
                return;
            }
        },
        () = drain.signaled() => return,
    };
    let mut keepalive = pin!(keepalive(conn.ping_pong()));
    let mut drained = pin!(drain.signaled());
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    let (req, tunnel) = request(req);
                    tokio::spawn(answer(handler(req), respond, tunnel));
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "HTTP/2 connection ended with an error");
                    break;
                }
                None => break,
            },
            () = &mut drained, if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
            () = &mut keepalive => {
                tracing::debug!("HTTP/2 connection closed: no answer to a ping");
                break;
            }
        }
    }
}

/// The handler's view of a stream's request; for `CONNECT`, an empty body and the [`Tunnel`]
/// in its extensions, and the stream's receiving half kept for the tunnel.
fn request(
    req: Request<RecvStream>,
) -> (
    Request<RecvBody>,
    Option<(RecvStream, oneshot::Sender<H2Io>)>,
) {
    let (mut parts, recv) = req.into_parts();
    if parts.method == Method::CONNECT {
        let (tx, rx) = oneshot::channel();
        parts
            .extensions
            .insert(Tunnel(Arc::new(Mutex::new(Some(rx)))));
        let body = RecvBody::Empty;
        return (Request::from_parts(parts, body), Some((recv, tx)));
    }
    let body = RecvBody::H2(H2Body::new(recv, content_length(&parts.headers)));
    (Request::from_parts(parts, body), None)
}

/// Run one stream's handler and send its answer: headers, then the body as flow control allows
/// (or, for a tunnel, the stream to the tunnel's owner). A reset from the client drops the
/// handler where it is.
async fn answer<F>(
    handler: F,
    mut respond: SendResponse<Bytes>,
    tunnel: Option<(RecvStream, oneshot::Sender<H2Io>)>,
) where
    F: Future<Output = Response<Body>>,
{
    let mut handler = pin!(handler);
    let resp = std::future::poll_fn(|cx| {
        if let Poll::Ready(resp) = handler.as_mut().poll(cx) {
            return Poll::Ready(Some(resp));
        }
        match respond.poll_reset(cx) {
            Poll::Ready(reason) => {
                tracing::debug!(?reason, "stream reset by the client before the answer");
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let Some(resp) = resp else { return };
    let (mut parts, body) = resp.into_parts();
    if let Some((recv, tx)) = tunnel {
        if parts.status.is_success() {
            // A 2xx to CONNECT has no body (RFC 9113 §8.5): what follows is the tunnel's.
            parts.headers.remove(header::CONTENT_LENGTH);
            match respond.send_response(Response::from_parts(parts, ()), false) {
                Ok(send) => {
                    let _ = tx.send(H2Io::new(send, recv));
                }
                Err(error) => tracing::debug!(%error, "CONNECT answer not sent"),
            }
            return;
        }
    }
    let eos = body.is_end_stream();
    if !eos && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        if let Some(len) = body.size_hint().exact() {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    match respond.send_response(Response::from_parts(parts, ()), eos) {
        Ok(stream) if !eos => Pipe::new(body, stream).await,
        Ok(_) => {}
        Err(error) => tracing::debug!(%error, "answer not sent"),
    }
}

#[cfg(test)]
mod tests;
