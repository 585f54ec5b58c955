//! A request body that can be sent again: the first try streams the client's body upstream
//! and keeps a copy of what passed, up to 64 KiB; a retry replays the copy, then goes on
//! reading the client's body where the last try left off. A body that grows past the limit
//! stops being kept and its request is not retried (it still streams through, unbuffered).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};

use crate::pool::{Body, BoxError};

/// The most of a request body kept for retries.
pub(crate) const MAX_REPLAY: usize = 64 * 1024;

/// The client's body, shared by the tries of one request.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    shared: Arc<Mutex<Shared>>,
    hint: SizeHint,
}

struct Shared {
    /// The client's body, when no try is reading it.
    inner: Option<Body>,
    /// What has been read from it, while within the limit.
    chunks: Vec<Bytes>,
    len: usize,
    /// Past the limit: `chunks` was dropped; no more tries.
    overflow: bool,
    trailers: Option<HeaderMap>,
    /// The client's body has ended.
    ended: bool,
    /// A try waiting for the body to come back from the last one.
    waiting: Option<Waker>,
}

/// One try's body.
struct TryBody {
    shared: Arc<Mutex<Shared>>,
    hint: SizeHint,
    /// Chunks of `shared.chunks` this try has sent.
    sent: usize,
    /// The client's body, while this try reads it.
    inner: Option<Body>,
    trailers_sent: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("len", &self.len)
            .field("overflow", &self.overflow)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Replay {
    pub(crate) fn new(body: Body) -> Self {
        let hint = body.size_hint();
        let overflow = hint.lower() > MAX_REPLAY as u64;
        Self {
            shared: Arc::new(Mutex::new(Shared {
                inner: Some(body),
                chunks: Vec::new(),
                len: 0,
                overflow,
                trailers: None,
                ended: false,
                waiting: None,
            })),
            hint,
        }
    }

    /// A body for the next try.
    pub(crate) fn body(&self) -> Body {
        crate::pool::boxed(TryBody {
            shared: self.shared.clone(),
            hint: self.hint,
            sent: 0,
            inner: None,
            trailers_sent: false,
        })
    }

    /// Can the body still be sent again (it has not outgrown the limit)?
    pub(crate) fn replayable(&self) -> bool {
        !lock(&self.shared).overflow
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl http_body::Body for TryBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.inner.is_none() {
            let mut shared = lock(&this.shared);
            // Replay what earlier tries read.
            if !shared.overflow && this.sent < shared.chunks.len() {
                let chunk = shared.chunks[this.sent].clone();
                this.sent += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if shared.ended {
                if !this.trailers_sent {
                    this.trailers_sent = true;
                    if let Some(trailers) = shared.trailers.clone() {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
                return Poll::Ready(None);
            }
            match shared.inner.take() {
                Some(inner) => this.inner = Some(inner),
                None => {
                    // The last try still holds it; it hands it back when dropped.
                    shared.waiting = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        let mut shared = lock(&this.shared);
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    shared.len += data.len();
                    if shared.len > MAX_REPLAY {
                        shared.overflow = true;
                        shared.chunks = Vec::new();
                    } else if !shared.overflow {
                        shared.chunks.push(data.clone());
                        this.sent = shared.chunks.len();
                    }
                } else if let Some(trailers) = f.trailers_ref() {
                    shared.trailers = Some(trailers.clone());
                    this.trailers_sent = true;
                }
            }
            None => shared.ended = true,
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        shared.ended
            && (shared.overflow || self.sent >= shared.chunks.len())
            && (self.trailers_sent || shared.trailers.is_none())
            && self.inner.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for TryBody {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let mut shared = lock(&self.shared);
            shared.inner = Some(inner);
            if let Some(waker) = shared.waiting.take() {
                waker.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn streamed(chunks: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        crate::pool::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn a_retry_replays_what_the_first_try_read_then_the_rest() {
        let replay = Replay::new(streamed(&[b"ab", b"cd", b"ef"]));
        let mut first = replay.body();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(first); // the first try failed after one chunk
        assert!(replay.replayable());
        let second = replay.body().collect().await.unwrap().to_bytes();
        assert_eq!(second, "abcdef");
        let third = replay.body().collect().await.unwrap().to_bytes();
        assert_eq!(third, "abcdef");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_streams_but_is_not_replayable() {
        static BIG: [u8; 40 * 1024] = [7; 40 * 1024];
        let replay = Replay::new(streamed(&[&BIG, &BIG]));
        let all = replay.body().collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 80 * 1024);
        assert!(!replay.replayable());
    }

    #[tokio::test]
    async fn a_known_large_body_is_not_kept_at_all() {
        let big = crate::pool::full(vec![0u8; MAX_REPLAY + 1]);
        assert!(!Replay::new(big).replayable());
    }
}
