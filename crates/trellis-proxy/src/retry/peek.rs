//! Retrying a gRPC status that arrives in trailers.
//!
//! A server may fail a call with a trailers-only response (`grpc-status` in the response
//! headers, which the retry conditions see at once), or with response headers first and the
//! status in trailers after an empty body — the shape many servers use (grpc-java, grpcio
//! after `send_initial_metadata`, Envoy's own gRPC errors after headers). When a try of a
//! gRPC request to a service that retries on gRPC conditions gets headers without
//! `grpc-status`, the proxy waits up to [`PEEK_WAIT`] for the body's first frame:
//! - trailers with a retryable `grpc-status`: the try failed; it is retried as if the status
//!   had been in the headers (nothing was sent to the client yet);
//! - anything else (a message, other trailers, the end, an error): the response goes to the
//!   client with that frame put back in front of the rest of the body ([`UpstreamBody`]);
//! - nothing within the wait: the response goes on as it is, and is not retried.
//!
//! The trade-off is streaming RPCs: a server-streaming call whose server sends headers early
//! and its first message late has its headers held for up to [`PEEK_WAIT`] (its messages are
//! never held: the first one leaves as soon as it arrives). A failure whose trailers come
//! later than that after the headers is not retried. The wait is short because a server that
//! fails a call sends headers and trailers back to back; and it applies only when a retry is
//! possible (tries left, gRPC conditions, a gRPC request), so other traffic never waits.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use crate::h2_client::RecvBody;
use crate::pool::BoxError;

/// The longest a try's response headers are held while waiting for the first frame.
pub(crate) const PEEK_WAIT: Duration = Duration::from_millis(250);

/// An upstream response body, with the frame that was looked at (if any) put back in front.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    /// `Some(None)`: the body was seen to end.
    peeked: Option<Option<Result<Frame<Bytes>, BoxError>>>,
    rest: RecvBody,
}

/// A response whose first frame was looked at.
#[derive(Debug)]
pub(crate) struct Peeked {
    pub(crate) response: Response<UpstreamBody>,
    /// The trailers, when the first frame was trailers (the body had no data).
    pub(crate) trailers: Option<http::HeaderMap>,
}

impl UpstreamBody {
    pub(crate) fn new(rest: RecvBody) -> Self {
        Self { peeked: None, rest }
    }
}

/// Wait up to `wait` for the first frame of `response`'s body.
pub(crate) async fn peek(response: Response<RecvBody>, wait: Duration) -> Peeked {
    let (parts, mut body) = response.into_parts();
    let (peeked, trailers) = match tokio::time::timeout(wait, body.frame()).await {
        Err(_) => (None, None),
        Ok(first) => {
            let trailers = match &first {
                Some(Ok(frame)) => frame.trailers_ref().cloned(),
                _ => None,
            };
            (Some(first), trailers)
        }
    };
    let body = UpstreamBody { peeked, rest: body };
    Peeked {
        response: Response::from_parts(parts, body),
        trailers,
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(peeked) = self.peeked.take() {
            return Poll::Ready(peeked);
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        match &self.peeked {
            Some(None) => true,
            Some(Some(_)) => false,
            None => self.rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.peeked {
            None => self.rest.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::{HeaderMap, HeaderValue, Request};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;
    use crate::pool::empty;

    /// A response from a real HTTP/2 server over an in-memory pipe, whose body is `frames`
    /// (with `pause` before them).
    async fn response(frames: Vec<Frame<Bytes>>, pause: Duration) -> Response<RecvBody> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let frames = std::sync::Mutex::new(Some(frames));
        let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
            let frames = frames
                .lock()
                .ok()
                .and_then(|mut f| f.take())
                .unwrap_or_default();
            async move {
                let stream = futures_util::stream::iter(frames)
                    .map(Ok::<_, BoxError>)
                    .then(move |f| async move {
                        tokio::time::sleep(pause).await;
                        f
                    });
                let body = crate::pool::boxed(http_body_util::StreamBody::new(stream));
                Ok::<_, Infallible>(Response::new(body))
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let addr = "127.0.0.1:1".parse().unwrap();
        let conn = crate::h2_client::handshake(client, addr).await.unwrap();
        let req = Request::post("http://test/svc/Method")
            .body(empty())
            .unwrap();
        conn.ready().await.unwrap().send(req).await.unwrap()
    }

    fn status(code: &'static str) -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(code));
        trailers
    }

    use futures_util::StreamExt;

    #[tokio::test]
    async fn trailers_first_are_seen_and_put_back() {
        let resp = response(vec![Frame::trailers(status("14"))], Duration::ZERO).await;
        let peeked = peek(resp, PEEK_WAIT).await;
        let trailers = peeked.trailers.expect("trailers seen");
        assert_eq!(trailers["grpc-status"], "14");
        // Passed on, the body still ends with them.
        let body = peeked.response.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "14");
    }

    #[tokio::test]
    async fn a_message_first_is_put_back_in_front() {
        let frames = vec![
            Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi")),
            Frame::trailers(status("0")),
        ];
        let peeked = peek(response(frames, Duration::ZERO).await, PEEK_WAIT).await;
        assert!(peeked.trailers.is_none());
        let body = peeked.response.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(body.to_bytes(), &b"\0\0\0\0\x02hi"[..]);
    }

    #[tokio::test]
    async fn a_slow_first_frame_is_not_waited_for() {
        let frames = vec![Frame::trailers(status("14"))];
        let resp = response(frames, Duration::from_millis(600)).await;
        let peeked = peek(resp, Duration::from_millis(50)).await;
        assert!(peeked.trailers.is_none(), "passed on without waiting");
        let body = peeked.response.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "14");
    }
}
