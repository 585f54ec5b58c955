//! Step 6 of an outbound HTTP request: its tries. Each try goes to an endpoint of the
//! destination, counted as pending on it while it runs and timed for its latency estimate;
//! its outcome feeds outlier detection. When the destination retries, a failed try is sent
//! again — on another endpoint if there is one — if its failure is one the policy names,
//! tries are left, the body could be kept (64 KiB), the service's retry budget allows it and
//! the request's deadline is not up, after a jittered exponential backoff. A gRPC status in
//! trailers after the response headers counts too: `retry/peek.rs` looks at the first frame.

use std::time::Duration;

use http::request::Parts;
use http::{Request, Response};
use tokio::time::Instant;
use trellis_model::Timeouts;

use super::{ConnCtx, Outbound, Upstream, forward};
use crate::balance::{InFlight, Outcome};
use crate::error::ProxyError;
use crate::h2_client::RecvBody;
use crate::pool::{Body, empty};
use crate::retry::peek::{PEEK_WAIT, peek};
use crate::retry::{Replay, UpstreamBody};
use crate::state::Destination;

impl Outbound {
    /// Send `req` to `first` and, as the destination's retry policy allows, to other endpoints;
    /// the result of the last try, and where it went.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send(
        &self,
        req: Request<Body>,
        ctx: ConnCtx,
        dest: Option<&Destination>,
        first: Upstream,
        hash: Option<u64>,
        t: Timeouts,
    ) -> (Result<Response<UpstreamBody>, ProxyError>, Upstream) {
        let Some(dest) = dest else {
            let result =
                std::pin::pin!(forward(&self.upstreams, req, ctx.version, &first, t)).await;
            return (result.map(|r| r.map(UpstreamBody::new)), first);
        };
        let retries = dest.retries.as_ref().filter(|(p, _)| p.attempts > 0);
        let Some((policy, budget)) = retries else {
            let this_try = Try::start(dest, &first);
            let result =
                std::pin::pin!(forward(&self.upstreams, req, ctx.version, &first, t)).await;
            this_try.finish(&result);
            return (result.map(|r| r.map(UpstreamBody::new)), first);
        };
        budget.deposit();
        let deadline = (!t.request.is_zero()).then(|| Instant::now() + t.request);
        let (parts, body) = req.into_parts();
        // A gRPC error may come in trailers after the headers: worth a look when gRPC
        // statuses are retried (see `retry/peek.rs`).
        let grpc = policy.has_grpc_conditions() && is_grpc(&parts.headers);
        // A body that is already over (GET) needs no keeping.
        let replay = (!http_body::Body::is_end_stream(&body)).then(|| Replay::new(body));
        let mut upstream = first;
        let mut tried: Vec<usize> = Vec::new();
        let mut retry = 0;
        loop {
            // Each try gets the per-try timeout, within what is left of the request's.
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let mut try_t = t;
            try_t.request = match (policy.per_try_timeout, left) {
                (Some(per_try), Some(left)) => per_try.min(left),
                (Some(per_try), None) => per_try,
                (None, Some(left)) => left,
                (None, None) => Duration::ZERO,
            };
            let body = replay.as_ref().map_or_else(empty, Replay::body);
            let req = Request::from_parts(clone_parts(&parts), body);
            let this_try = Try::start(dest, &upstream);
            let result = forward(&self.upstreams, req, ctx.version, &upstream, try_t).await;
            this_try.finish(&result);
            tried.extend(upstream.index);

            let (result, failed) = match result {
                Ok(resp) if policy.retry_response(resp.status(), resp.headers()) => {
                    (Ok(resp.map(UpstreamBody::new)), true)
                }
                Ok(resp)
                    if grpc
                        && retry < policy.attempts
                        && !resp.headers().contains_key("grpc-status") =>
                {
                    let peeked = peek(resp, PEEK_WAIT).await;
                    let failed = peeked
                        .trailers
                        .as_ref()
                        .is_some_and(|t| policy.retry_grpc_trailers(t));
                    (Ok(peeked.response), failed)
                }
                Ok(resp) => (Ok(resp.map(UpstreamBody::new)), false),
                Err(error) => {
                    let failed = policy.retry_error(&error);
                    (Err(error), failed)
                }
            };
            if !failed || retry >= policy.attempts {
                return (result, upstream);
            }
            if replay.as_ref().is_some_and(|r| !r.replayable()) {
                tracing::debug!("not retried: the request body is over 64 KiB");
                return (result, upstream);
            }
            let wait = policy.backoff(retry + 1);
            if deadline.is_some_and(|d| Instant::now() + wait >= d) {
                return (result, upstream);
            }
            if !budget.withdraw() {
                tracing::debug!(dst.service = %dest.fqdn, "not retried: retry budget exhausted");
                return (result, upstream);
            }
            let Some((next, _)) = dest.pick(hash, &tried) else {
                return (result, upstream);
            };
            retry += 1;
            tracing::debug!(
                dst.service = %dest.fqdn,
                retry,
                failed = %match &result {
                    Ok(resp) => resp.status().to_string(),
                    Err(error) => error.to_string(),
                },
                "retrying"
            );
            // The failed response goes (its stream is reset) before the wait.
            drop(result);
            tokio::time::sleep(wait).await;
            upstream = Upstream::endpoint(dest, next);
        }
    }
}

/// One try to an endpoint of a destination: pending on the endpoint while it runs, then its
/// latency and outcome recorded. A guard around the forwarding future rather than an async
/// function wrapping it: each async layer copies and holds the whole (kilobytes) future below.
struct Try<'a> {
    dest: &'a Destination,
    /// The endpoint's index, its pending count held, and when the try started; none for a
    /// target outside the destination's endpoints.
    endpoint: Option<(usize, InFlight, Instant)>,
}

impl<'a> Try<'a> {
    fn start(dest: &'a Destination, upstream: &Upstream) -> Self {
        let endpoint = upstream
            .index
            .and_then(|i| Some((i, dest.endpoints.get(i)?.stats.start(), Instant::now())));
        Try { dest, endpoint }
    }

    fn finish(self, result: &Result<Response<RecvBody>, ProxyError>) {
        let Some((i, in_flight, started)) = self.endpoint else {
            return;
        };
        let took = started.elapsed();
        drop(in_flight);
        let outcome = match result {
            Ok(resp) if resp.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(error) if error.failure().is_some() => Outcome::Failure,
            // Not the endpoint's doing (a bad request).
            Err(_) => return,
        };
        self.dest.record(i, outcome, took);
    }
}

/// Is the request gRPC (by its `content-type`)?
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A copy of a request's head for another try (extensions are not carried: the forward path
/// uses none).
pub(super) fn clone_parts(parts: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}
