//! Limits per service (circuit breaking): at most `max_requests` in flight, at most
//! `max_pending_requests` waiting for one of those slots; beyond that a request is answered
//! 503 `UO` at once. There is never an unbounded queue: with no `max_pending_requests`, nothing
//! waits.
//!
//! `max_connections` caps the connections this proxy holds open to the service at once that
//! are its own: each opaque TCP connection relayed to it (captured TCP, `CONNECT`, WebSocket
//! and other upgrades) is one end-to-end connection, a tunnel stream to the peer proxy and a
//! connection to the app there. Over the cap a tunnel is refused at once, never queued: a
//! `CONNECT` or upgrade gets 503 `UO`, a captured TCP connection is closed and logged with
//! `UO`. Ordinary HTTP requests do not count: to a peer proxy they are streams multiplexed on
//! the one HTTP/2 connection it shares with every service on that peer, so `max_requests` is
//! what bounds them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use trellis_model::Limits;

use crate::error::ProxyError;

/// One service's limits and what counts against them. Kept across config pushes while the
/// limits stay the same, so requests in flight still count.
#[derive(Debug)]
pub(crate) struct Limiter {
    limits: Limits,
    slots: Option<Arc<Semaphore>>,
    waiting: AtomicU32,
    /// Connections (tunnels) open to the service.
    connections: Option<Arc<Semaphore>>,
}

/// A connection's place under `max_connections`, released when the connection closes.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    _slot: Option<OwnedSemaphorePermit>,
}

/// A request's place under the limits, released when dropped.
#[derive(Debug)]
pub(crate) struct Admission {
    _slot: Option<OwnedSemaphorePermit>,
}

impl Limiter {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            slots: limits
                .max_requests
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            waiting: AtomicU32::new(0),
            connections: limits
                .max_connections
                .map(|n| Arc::new(Semaphore::new(n as usize))),
        }
    }

    /// Take a place for a new connection to `service`, or refuse it at once (never waits).
    pub(crate) fn connect(&self, service: &str) -> Result<ConnectionSlot, ProxyError> {
        let Some(connections) = &self.connections else {
            return Ok(ConnectionSlot { _slot: None });
        };
        match connections.clone().try_acquire_owned() {
            Ok(slot) => Ok(ConnectionSlot { _slot: Some(slot) }),
            Err(_) => Err(ProxyError::Overflow {
                service: service.to_string(),
                limit: "max_connections",
            }),
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admit a request to `service`, waiting for a slot only if fewer than
    /// `max_pending_requests` already wait (the caller bounds the wait by its timeout).
    pub(crate) async fn admit(&self, service: &str) -> Result<Admission, ProxyError> {
        let Some(slots) = &self.slots else {
            return Ok(Admission { _slot: None });
        };
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Ok(Admission {
                _slot: Some(permit),
            });
        }
        let max_pending = self.limits.max_pending_requests.unwrap_or(0);
        let admitted = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |w| {
                (w < max_pending).then_some(w + 1)
            })
            .is_ok();
        if !admitted {
            return Err(ProxyError::Overflow {
                service: service.to_string(),
                limit: if max_pending == 0 {
                    "max_requests"
                } else {
                    "max_pending_requests"
                },
            });
        }
        let _waiting = Waiting(&self.waiting);
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ProxyError::Overflow {
                service: service.to_string(),
                limit: "max_requests",
            })?;
        Ok(Admission {
            _slot: Some(permit),
        })
    }
}

/// Counts a request as waiting while it lives.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_requests: u32, max_pending: Option<u32>) -> Limiter {
        Limiter::new(Limits {
            max_connections: None,
            max_pending_requests: max_pending,
            max_requests: Some(max_requests),
        })
    }

    #[tokio::test]
    async fn over_max_requests_is_refused_at_once() {
        let l = limiter(2, None);
        let a = l.admit("s").await.unwrap();
        let _b = l.admit("s").await.unwrap();
        let refused = l.admit("s").await.unwrap_err();
        assert_eq!(refused.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            refused.flags(),
            crate::metrics::ResponseFlags::UpstreamOverflow
        );
        drop(a);
        assert!(
            l.admit("s").await.is_ok(),
            "a finished request frees its slot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pending_requests_wait_in_a_bounded_queue() {
        let l = Arc::new(limiter(1, Some(1)));
        let first = l.admit("s").await.unwrap();
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.admit("s").await.map(drop) }
        });
        // Let the waiter queue up.
        while l.waiting.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        let refused = l.admit("s").await.unwrap_err();
        assert!(
            refused.to_string().contains("max_pending_requests"),
            "{refused}"
        );
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(l.waiting.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn connections_over_max_connections_are_refused_until_one_closes() {
        let l = Limiter::new(Limits {
            max_connections: Some(2),
            ..Limits::default()
        });
        let first = l.connect("s").unwrap();
        let _second = l.connect("s").unwrap();
        let refused = l.connect("s").unwrap_err();
        assert!(refused.to_string().contains("max_connections"), "{refused}");
        assert_eq!(
            refused.flags(),
            crate::metrics::ResponseFlags::UpstreamOverflow
        );
        drop(first);
        assert!(
            l.connect("s").is_ok(),
            "a closed connection frees its place"
        );
        // Requests are not connections.
        assert!(Limiter::new(Limits::default()).connect("s").is_ok());
    }

    #[tokio::test]
    async fn no_limits_admit_everything() {
        let l = Limiter::new(Limits::default());
        let all: Vec<_> = futures_util::future::join_all((0..100).map(|_| l.admit("s"))).await;
        assert!(all.iter().all(Result::is_ok));
    }
}
