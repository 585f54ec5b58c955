//! Retries: which failures are retried, how long to wait between tries, the budget that
//! keeps retries from amplifying an outage ([`budget`]), the request body kept for
//! replay ([`replay`]), and the first frame of a gRPC response looked at for an error in its
//! trailers ([`peek`]). The loop itself is `outbound/attempt.rs`.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use trellis_model::{Retries, RetryOn};

use crate::error::{Failure, ProxyError};

pub(crate) mod budget;
pub(crate) mod peek;
pub(crate) mod replay;

pub(crate) use budget::Budget;
pub(crate) use peek::UpstreamBody;
pub(crate) use replay::Replay;

/// A service's retry policy, compiled for the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Retries after the first try.
    pub(crate) attempts: u32,
    pub(crate) per_try_timeout: Option<Duration>,
    backoff: Duration,
    max_backoff: Duration,
    on: Vec<RetryOn>,
}

impl RetryPolicy {
    pub(crate) fn new(r: &Retries) -> Self {
        Self {
            attempts: r.attempts,
            per_try_timeout: r.per_try_timeout,
            backoff: r.backoff,
            max_backoff: r.max_backoff(),
            on: r.on.clone(),
        }
    }

    /// Is a try that got this response worth retrying?
    pub(crate) fn retry_response(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let code = status.as_u16();
        let grpc = grpc_status(headers);
        self.on.iter().any(|on| match on {
            RetryOn::ServerError => status.is_server_error(),
            RetryOn::GatewayError => matches!(code, 502..=504),
            RetryOn::Retriable4xx => code == 409,
            RetryOn::Status(s) => *s == code,
            _ => grpc.is_some_and(|g| grpc_condition(*on, g)),
        })
    }

    /// Is a gRPC status that came in trailers (after the response headers) worth retrying?
    pub(crate) fn retry_grpc_trailers(&self, trailers: &HeaderMap) -> bool {
        grpc_status(trailers).is_some_and(|g| self.on.iter().any(|on| grpc_condition(*on, g)))
    }

    /// Does the policy retry on any gRPC status?
    pub(crate) fn has_grpc_conditions(&self) -> bool {
        self.on
            .iter()
            .any(|on| (0..=16).any(|g| grpc_condition(*on, g)))
    }

    /// Is a try that failed with this error worth retrying?
    pub(crate) fn retry_error(&self, error: &ProxyError) -> bool {
        let Some(failure) = error.failure() else {
            return false;
        };
        self.on.iter().any(|on| match on {
            // Envoy's 5xx covers every try that got no response.
            RetryOn::ServerError => true,
            RetryOn::GatewayError => {
                matches!(failure, Failure::Connect | Failure::Timeout)
            }
            RetryOn::Reset => matches!(failure, Failure::Reset | Failure::RefusedStream),
            RetryOn::ConnectFailure => failure == Failure::Connect,
            RetryOn::RefusedStream => failure == Failure::RefusedStream,
            _ => false,
        })
    }

    /// The wait before retry `n` (1, 2, ...): full jitter (AWS's name: a uniform draw from
    /// zero) below `backoff × 2^(n-1)`, capped at `max_backoff`.
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let unit = (crate::balance::random_u64() >> 11) as f64 / (1u64 << 53) as f64;
        self.backoff_ceiling(n).mul_f64(unit)
    }

    /// The most retry `n` may wait.
    fn backoff_ceiling(&self, n: u32) -> Duration {
        self.backoff
            .saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(self.max_backoff)
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<u8> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u8>().ok())
}

/// Does retry condition `on` name gRPC status `code`?
fn grpc_condition(on: RetryOn, code: u8) -> bool {
    match on {
        RetryOn::Cancelled => code == 1,
        RetryOn::DeadlineExceeded => code == 4,
        RetryOn::ResourceExhausted => code == 8,
        RetryOn::Internal => code == 13,
        RetryOn::Unavailable => code == 14,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[RetryOn]) -> RetryPolicy {
        RetryPolicy::new(&Retries {
            attempts: 2,
            on: on.to_vec(),
            per_try_timeout: None,
            backoff: Duration::from_millis(25),
            max_backoff: None,
            budget: Default::default(),
        })
    }

    #[test]
    fn conditions_match_statuses_and_grpc_codes() {
        let none = HeaderMap::new();
        let p = policy(&[RetryOn::Status(503)]);
        assert!(p.retry_response(StatusCode::SERVICE_UNAVAILABLE, &none));
        assert!(!p.retry_response(StatusCode::BAD_GATEWAY, &none));
        let p = policy(&[RetryOn::GatewayError]);
        assert!(p.retry_response(StatusCode::GATEWAY_TIMEOUT, &none));
        assert!(!p.retry_response(StatusCode::INTERNAL_SERVER_ERROR, &none));
        let p = policy(&[RetryOn::ServerError]);
        assert!(p.retry_response(StatusCode::INTERNAL_SERVER_ERROR, &none));
        assert!(!p.retry_response(StatusCode::NOT_FOUND, &none));
        let p = policy(&[RetryOn::Unavailable]);
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", "14".parse().unwrap());
        assert!(p.retry_response(StatusCode::OK, &grpc));
        grpc.insert("grpc-status", "13".parse().unwrap());
        assert!(!p.retry_response(StatusCode::OK, &grpc));
        // The same conditions apply to a status in trailers.
        assert!(!p.retry_grpc_trailers(&grpc));
        grpc.insert("grpc-status", "14".parse().unwrap());
        assert!(p.retry_grpc_trailers(&grpc));
        assert!(p.has_grpc_conditions());
        assert!(!policy(&[RetryOn::ServerError, RetryOn::Status(503)]).has_grpc_conditions());
    }

    #[test]
    fn conditions_match_failures() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let refused = ProxyError::Connect {
            addr,
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        let timeout = ProxyError::Timeout {
            addr,
            timeout: Duration::from_secs(1),
        };
        assert!(policy(&[RetryOn::ConnectFailure]).retry_error(&refused));
        assert!(!policy(&[RetryOn::ConnectFailure]).retry_error(&timeout));
        assert!(policy(&[RetryOn::ServerError]).retry_error(&timeout));
        assert!(policy(&[RetryOn::GatewayError]).retry_error(&timeout));
        assert!(!policy(&[RetryOn::Status(503)]).retry_error(&refused));
        let bad = ProxyError::BadRequest { reason: "x" };
        assert!(!policy(&[RetryOn::ServerError]).retry_error(&bad));
    }

    #[test]
    fn backoff_doubles_up_to_ten_times_the_base() {
        let p = policy(&[]);
        for _ in 0..100 {
            assert!(p.backoff(1) <= Duration::from_millis(25));
            assert!(p.backoff(2) <= Duration::from_millis(50));
            assert!(p.backoff(9) <= Duration::from_millis(250));
        }
        assert_eq!(p.backoff_ceiling(9), Duration::from_millis(250));
    }

    #[test]
    fn backoff_is_full_jitter_below_a_ceiling_capped_at_max_backoff() {
        let p = RetryPolicy::new(&Retries {
            attempts: 5,
            on: Vec::new(),
            per_try_timeout: None,
            backoff: Duration::from_millis(10),
            max_backoff: Some(Duration::from_millis(35)),
            budget: Default::default(),
        });
        let ms = Duration::from_millis;
        let ceilings: Vec<Duration> = (1..=5).map(|n| p.backoff_ceiling(n)).collect();
        assert_eq!(ceilings, [ms(10), ms(20), ms(35), ms(35), ms(35)]);
        // Full jitter: draws spread over the whole range below the ceiling, not near it.
        let draws: Vec<Duration> = (0..2000).map(|_| p.backoff(4)).collect();
        assert!(draws.iter().all(|d| *d <= ms(35)));
        assert!(draws.iter().any(|d| *d < ms(5)), "no short waits");
        assert!(draws.iter().any(|d| *d > ms(30)), "no long waits");
        let mean = draws.iter().sum::<Duration>() / draws.len() as u32;
        assert!(
            (ms(14)..=ms(21)).contains(&mean),
            "mean {mean:?}, expected about half the ceiling"
        );
    }
}
