//! Request mirroring (a rule's `mirror` filters, Gateway API `RequestMirror`): a copy of a
//! share of the rule's requests goes to another service, whose answer is thrown away.
//!
//! The copy never costs the request itself anything but a few clones:
//! - it is sent from its own task; nothing on the request's path awaits it;
//! - its body is what the client sent, copied as the request's own body streams through
//!   ([`Tee`]), kept only up to 64 KiB (the retry replay limit): a larger body, or one the
//!   client never finishes, is not mirrored at all (a copy without its body would be a
//!   different request). The copy leaves once the client's body has ended;
//! - at most [`MAX_IN_FLIGHT`] copies are out at once per proxy: over that, a copy is dropped
//!   (and counted), so a slow shadow cannot pile up tasks;
//! - a copy is bounded by the shadow service's request timeout, is tried once, and does not
//!   feed the shadow's load or outlier statistics.
//!
//! As in Envoy and Istio, the copy's `Host`/`:authority` gets `-shadow` appended to its host
//! (`reviews:9080` → `reviews-shadow:9080`), so the shadow can tell copies from real traffic.
//! Copies are counted in `trellis_mirror_requests_total{destination_service, result}` with
//! result `sent` (an answer came), `failed` (none did), `dropped` (over the cap) or `skipped`
//! (the body could not be kept); they are not requests of the app's, so they are not in
//! `trellis_requests_total`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::{Request, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::{Outbound, Upstream, attempt::clone_parts, forward};
use crate::metrics::MirrorResult;
use crate::observe::authority_of;
use crate::pool::{Body, BoxError};
use crate::retry::replay::MAX_REPLAY;
use crate::route::Rule;
use crate::state::Destination;

/// The most copies a proxy has out at once.
pub(crate) const MAX_IN_FLIGHT: usize = 128;

/// A request body that streams through unchanged while a copy of it is kept for mirrors.
struct Tee<B> {
    inner: B,
    kept: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    /// The mirrors waiting for the whole body; dropped (the copies skipped) on overflow or
    /// error.
    waiting: Vec<oneshot::Sender<Kept>>,
}

/// A whole request body, for a copy.
#[derive(Debug, Clone, Default)]
struct Kept {
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

/// The body of a copy: the kept chunks, then the trailers.
struct Replayed {
    chunks: std::vec::IntoIter<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Outbound {
    /// Send copies of the request (`parts`, `body`) to the rule's mirrors that draw it; the
    /// body to forward in its place.
    pub(super) fn mirror<B>(&self, rule: &Rule<Arc<Destination>>, parts: &Parts, body: B) -> Body
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let ended = body.is_end_stream();
        let mut waiting = Vec::new();
        for (dest, share) in &rule.mirrors {
            if !share.includes(crate::balance::random_u64()) {
                continue;
            }
            let Ok(permit) = self.mirror_slots.clone().try_acquire_owned() else {
                tracing::debug!(dst.service = %dest.fqdn, "mirror dropped: too many in flight");
                self.metrics.mirror(&dest.fqdn, MirrorResult::Dropped);
                continue;
            };
            if !ended && body.size_hint().lower() > MAX_REPLAY as u64 {
                self.metrics.mirror(&dest.fqdn, MirrorResult::Skipped);
                continue;
            }
            let (tx, rx) = oneshot::channel();
            if ended {
                let _ = tx.send(Kept::default());
            } else {
                waiting.push(tx);
            }
            let copy = Copy {
                outbound: self,
                dest: dest.clone(),
                head: shadow_head(parts),
            };
            tokio::spawn(copy.send(rx, permit));
        }
        if waiting.is_empty() {
            return crate::pool::boxed(body);
        }
        crate::pool::boxed(Tee {
            inner: body,
            kept: Vec::new(),
            len: 0,
            trailers: None,
            waiting,
        })
    }
}

/// What a copy's task needs.
struct Copy<'o> {
    outbound: &'o Outbound,
    dest: Arc<Destination>,
    head: Parts,
}

impl Copy<'_> {
    /// The task: wait for the body, send once, throw the answer away.
    fn send(
        self,
        body: oneshot::Receiver<Kept>,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + 'static {
        let upstreams = self.outbound.upstreams.clone();
        let metrics = self.outbound.metrics.clone();
        let (dest, head) = (self.dest, self.head);
        async move {
            let _permit = permit;
            let Ok(kept) = body.await else {
                tracing::debug!(dst.service = %dest.fqdn, "mirror skipped: the body was not kept");
                metrics.mirror(&dest.fqdn, MirrorResult::Skipped);
                return;
            };
            let Some((i, _)) = dest.pick(None, &[]) else {
                metrics.mirror(&dest.fqdn, MirrorResult::Failed);
                return;
            };
            let upstream = Upstream::endpoint(&dest, i);
            let version = head.version;
            let body = crate::pool::boxed(Replayed {
                chunks: kept.chunks.into_iter(),
                trailers: kept.trailers,
            });
            let t = dest.timeouts;
            let req = Request::from_parts(head, body);
            let answer = forward(&upstreams, req, version, &upstream, t).await;
            match answer {
                Ok(resp) => {
                    tracing::debug!(dst.service = %dest.fqdn, status = %resp.status(), "mirrored");
                    metrics.mirror(&dest.fqdn, MirrorResult::Sent);
                    // Read the answer to its end (bounded by the timeout), and drop it.
                    let mut body = resp.into_body();
                    let drain = async { while let Some(Ok(_)) = body.frame().await {} };
                    let _ = tokio::time::timeout(t.request.max(t.connect), drain).await;
                }
                Err(error) => {
                    tracing::debug!(dst.service = %dest.fqdn, %error, "mirror failed");
                    metrics.mirror(&dest.fqdn, MirrorResult::Failed);
                }
            }
        }
    }
}

/// The copy's head: the request's, with `-shadow` appended to its host.
fn shadow_head(parts: &Parts) -> Parts {
    let mut head = clone_parts(parts);
    let Some(authority) = authority_of(&Request::from_parts(clone_parts(parts), ())) else {
        return head;
    };
    let Some(shadow) = shadow_authority(&authority) else {
        return head;
    };
    if head.uri.authority().is_some() {
        let mut uri = head.uri.clone().into_parts();
        uri.authority = Some(shadow.clone());
        if let Ok(uri) = Uri::from_parts(uri) {
            head.uri = uri;
        }
    }
    if head.headers.contains_key(header::HOST) || head.uri.authority().is_none() {
        if let Ok(value) = HeaderValue::from_str(shadow.as_str()) {
            head.headers.insert(header::HOST, value);
        }
    }
    head
}

/// `host[:port]` → `host-shadow[:port]`; `None` for an IP literal (which has no name to mark).
fn shadow_authority(parsed: &Authority) -> Option<Authority> {
    let host = parsed.host();
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let shadow = match parsed.port_u16() {
        Some(port) => format!("{host}-shadow:{port}"),
        None => format!("{host}-shadow"),
    };
    shadow.parse().ok()
}

impl<B> http_body::Body for Tee<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if this.waiting.is_empty() {
            return Poll::Ready(frame);
        }
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.len += data.len();
                    if this.len > MAX_REPLAY {
                        // Too large to keep: the copies are skipped.
                        this.waiting.clear();
                        this.kept = Vec::new();
                    } else {
                        this.kept.push(data.clone());
                    }
                } else if let Some(trailers) = f.trailers_ref() {
                    this.trailers = Some(trailers.clone());
                }
            }
            Some(Err(_)) => this.waiting.clear(),
            None => this.release(),
        }
        if this.inner.is_end_stream() && !this.waiting.is_empty() {
            this.release();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Tee<B> {
    /// The body is whole: hand it to the copies.
    fn release(&mut self) {
        let kept = Kept {
            chunks: std::mem::take(&mut self.kept),
            trailers: self.trailers.take(),
        };
        for tx in self.waiting.drain(..) {
            let _ = tx.send(kept.clone());
        }
    }
}

impl http_body::Body for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.chunks.next() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.len() == 0 && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.trailers.is_some() {
            return SizeHint::default();
        }
        SizeHint::with_exact(self.chunks.as_slice().iter().map(|c| c.len() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed(chunks: Vec<Bytes>) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
        crate::pool::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    fn tee(body: Body, copies: usize) -> (Tee<Body>, Vec<oneshot::Receiver<Kept>>) {
        let (waiting, rx): (Vec<_>, Vec<_>) = (0..copies).map(|_| oneshot::channel()).unzip();
        let tee = Tee {
            inner: body,
            kept: Vec::new(),
            len: 0,
            trailers: None,
            waiting,
        };
        (tee, rx)
    }

    #[tokio::test]
    async fn the_body_streams_through_and_each_copy_gets_it_whole() {
        let chunks = vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")];
        let (tee, rx) = tee(streamed(chunks), 2);
        let through = tee.collect().await.unwrap().to_bytes();
        assert_eq!(through, "abcd");
        for rx in rx {
            let kept = rx.await.expect("released");
            let body = Replayed {
                chunks: kept.chunks.into_iter(),
                trailers: kept.trailers,
            };
            assert_eq!(body.collect().await.unwrap().to_bytes(), "abcd");
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_streams_through_but_is_not_mirrored() {
        let chunk = Bytes::from(vec![7u8; 40 * 1024]);
        let (tee, rx) = tee(streamed(vec![chunk.clone(), chunk]), 1);
        let through = tee.collect().await.unwrap().to_bytes();
        assert_eq!(through.len(), 80 * 1024);
        let mut rx = rx;
        assert!(rx.remove(0).await.is_err(), "no copy of a body over 64 KiB");
    }

    #[tokio::test]
    async fn a_body_the_client_abandons_is_not_mirrored() {
        let (mut tee, mut rx) = tee(streamed(vec![Bytes::from_static(b"ab")]), 1);
        let first = tee.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "ab");
        drop(tee);
        assert!(rx.remove(0).await.is_err());
    }

    #[test]
    fn the_copy_names_the_shadow_host() {
        let shadow = |a: &str| shadow_authority(&a.parse().ok()?).map(|a| a.to_string());
        assert_eq!(
            shadow("reviews:9080").as_deref(),
            Some("reviews-shadow:9080")
        );
        assert_eq!(shadow("web.test").as_deref(), Some("web.test-shadow"));
        assert_eq!(shadow("10.0.0.1:80"), None);
        assert_eq!(shadow("[::1]:80"), None);

        let req = Request::get("http://web.test/x").body(()).unwrap();
        let head = shadow_head(&req.into_parts().0);
        assert_eq!(head.uri, "http://web.test-shadow/x");
        let req = Request::get("/x")
            .header(header::HOST, "web.test:8080")
            .body(())
            .unwrap();
        let head = shadow_head(&req.into_parts().0);
        assert_eq!(head.headers[header::HOST], "web.test-shadow:8080");
        assert_eq!(head.uri, "/x");
    }
}
