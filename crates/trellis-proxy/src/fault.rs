//! Fault injection (a route rule's `fault` filter, from a `FaultInjection` resource): Istio's
//! semantics. For its share of requests a delay waits before the request goes anywhere; for
//! its own share (drawn independently) an abort answers at once, without contacting the
//! backend: the configured HTTP status, or for a gRPC request HTTP 200 with a `grpc-status`
//! (trailers-only). Telemetry flags them as Envoy does: `DI` for a delayed request, `FI` for an
//! aborted one (an abort after a delay is `FI`).
//!
//! Both come before the destination's limits and retries: a fault stands for the network or
//! the service misbehaving, so it is never retried, and the delay is not part of the request
//! timeout (Envoy's fault filter runs before its router, likewise).

use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use http::{Response, StatusCode, Version};
use trellis_model::{FaultInjection, Percent};

use crate::pool::{Body, empty, full};

/// A rule's faults, ready to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    delay: Option<(Duration, Percent)>,
    abort: Option<Abort>,
}

/// How an aborted request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Abort {
    status: StatusCode,
    grpc_status: Option<u8>,
    percent: Percent,
}

/// What one request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Injected {
    pub(crate) delay: Option<Duration>,
    pub(crate) abort: Option<Abort>,
}

impl Fault {
    /// `None` when the status is not one an abort can answer with (the model checks it).
    pub(crate) fn build(f: &FaultInjection) -> Option<Self> {
        let abort = match &f.abort {
            None => None,
            Some(a) => Some(Abort {
                status: StatusCode::from_u16(a.status).ok()?,
                grpc_status: a.grpc_status,
                percent: a.percent,
            }),
        };
        Some(Self {
            delay: f.delay.map(|d| (d.duration, d.percent)),
            abort,
        })
    }

    /// The faults for one request, from two independent draws (uniform over `u64`).
    pub(crate) fn roll(&self, mut draw: impl FnMut() -> u64) -> Injected {
        Injected {
            delay: self
                .delay
                .filter(|(_, share)| share.includes(draw()))
                .map(|(d, _)| d),
            abort: self.abort.filter(|a| a.percent.includes(draw())),
        }
    }
}

impl Injected {
    /// Wait out the delay, if the request got one.
    pub(crate) async fn delay(&self) {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
    }
}

impl Abort {
    /// The answer to an aborted request: for gRPC (by the request's `content-type`), HTTP 200
    /// with the configured `grpc-status`, else the one gRPC maps the HTTP status to.
    pub(crate) fn response(&self, request: &HeaderMap, version: Version) -> Response<Body> {
        let grpc = request
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut resp = if grpc {
            let code = self.grpc_status.unwrap_or_else(|| grpc_code(self.status));
            let mut resp = Response::new(empty());
            let h = resp.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from(u16::from(code)));
            h.insert(
                "grpc-message",
                HeaderValue::from_static("fault filter abort"),
            );
            resp
        } else {
            let mut resp = Response::new(full("fault filter abort\n"));
            *resp.status_mut() = self.status;
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        };
        *resp.version_mut() = version;
        resp
    }
}

/// gRPC's mapping of an HTTP status to a status code (as Envoy's `httpToGrpcStatus`).
fn grpc_code(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tokio::time::Instant;
    use trellis_model::{FaultAbort, FaultDelay};

    use super::*;

    fn fault(delay: Option<f64>, abort: Option<f64>, grpc_status: Option<u8>) -> Fault {
        Fault::build(&FaultInjection {
            delay: delay.map(|p| FaultDelay {
                duration: Duration::from_millis(100),
                percent: Percent::new(p).unwrap(),
            }),
            abort: abort.map(|p| FaultAbort {
                status: 503,
                grpc_status,
                percent: Percent::new(p).unwrap(),
            }),
        })
        .unwrap()
    }

    /// Seeded pseudo-random draws (xorshift), so the test is deterministic.
    fn counter() -> impl FnMut() -> u64 {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    #[test]
    fn each_fault_applies_to_its_share_of_requests() {
        let f = fault(Some(10.0), Some(5.0), None);
        let mut draw = counter();
        let (mut delayed, mut aborted, mut both) = (0, 0, 0);
        for _ in 0..100_000 {
            let i = f.roll(&mut draw);
            delayed += usize::from(i.delay.is_some());
            aborted += usize::from(i.abort.is_some());
            both += usize::from(i.delay.is_some() && i.abort.is_some());
        }
        assert!((9_000..=11_000).contains(&delayed), "{delayed}");
        assert!((4_000..=6_000).contains(&aborted), "{aborted}");
        // Independent draws: about 0.5 % get both.
        assert!((200..=800).contains(&both), "{both}");
        let none = fault(Some(0.0), Some(0.0), None);
        assert_eq!(none.roll(&mut draw), Injected::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_waits_its_duration() {
        let f = fault(Some(100.0), None, None);
        let injected = f.roll(crate::balance::random_u64);
        let started = Instant::now();
        injected.delay().await;
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert!(injected.abort.is_none());
        let started = Instant::now();
        Injected::default().delay().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn an_abort_answers_http_with_its_status_and_grpc_with_a_grpc_status() {
        let abort = fault(None, Some(100.0), None).abort.unwrap();
        let resp = abort.response(&HeaderMap::new(), Version::HTTP_11);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "fault filter abort\n");

        let mut grpc = HeaderMap::new();
        grpc.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let resp = abort.response(&grpc, Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["grpc-status"],
            "14",
            "503 maps to UNAVAILABLE"
        );
        let given = fault(None, Some(100.0), Some(8)).abort.unwrap();
        let resp = given.response(&grpc, Version::HTTP_2);
        assert_eq!(resp.headers()["grpc-status"], "8");
        assert!(http_body::Body::is_end_stream(resp.body()), "trailers-only");
    }
}
