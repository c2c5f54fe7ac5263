//! Retries: which failed attempts are tried again, and how long to wait before each.
//!
//! [`Retry::compile`] turns a route's [`xds::RetryPolicy`] into the rules Envoy applies with the
//! route Istio generates from it (`pilot/pkg/networking/core/route/retry/retry.go`): Istio splits
//! `retryOn` into Envoy's `retry_on` conditions and, for bare numbers, `retriable_status_codes`
//! (adding `retriable-status-codes` itself). [`Retry::should_retry`] is Envoy's
//! `RetryStateImpl::wouldRetryFromHeaders` / `wouldRetryFromReset` for one attempt's outcome, and
//! [`Retry::backoff`] its fully jittered exponential back-off.
//!
//! Compiled once per snapshot; the per-request work is a few bit tests and, for a response, one
//! header lookup. What is left to the caller (the router): counting attempts against
//! [`Retry::attempts`], not retrying once the response has started downstream or the request
//! body outgrew [`crate::outbound::replay`]'s limit, and choosing another endpoint
//! ([`Retry::retry_other_hosts`], up to [`HOST_SELECTION_MAX_ATTEMPTS`] picks).
//!
//! Request headers that ask Envoy for retries ([`RETRY_REQUEST_HEADERS`]) are not honoured
//! here: only the route's policy counts. Envoy honours them on requests its connection manager
//! deems internal and strips them from the others; it removes them before forwarding in any
//! case (`RetryStateImpl::create`), which the router must do as well.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use rand::Rng;

/// Istio's `retryOn` when a policy gives `attempts` but no `retryOn` (and the conditions of
/// [`xds::RetryPolicy::istio_default`]): `defaultRetryOn` in Istio's `retry.go`.
pub const ISTIO_DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// How many endpoints the balancer may pick for one retry before it takes one that was already
/// tried (Istio's `HostSelectionRetryMaxAttempts`).
pub const HOST_SELECTION_MAX_ATTEMPTS: u32 = 5;

/// Request headers Envoy's router consumes (removes before forwarding upstream) whatever the
/// route's policy.
pub const RETRY_REQUEST_HEADERS: [&str; 7] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-upstream-rq-per-try-timeout-ms",
];

/// Envoy's default base back-off interval (`upstream.base_retry_backoff_ms`).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// A `retryOn` that Istio's validation refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryError {
    /// A token that is neither an Envoy condition nor an HTTP status code Istio knows.
    #[error("retryOn: {0:?} is not a valid retryOn policy")]
    UnknownCondition(String),
    /// `backoff` of zero (Envoy's `base_interval` must be positive).
    #[error("backoff: must be positive")]
    ZeroBackoff,
}

/// Envoy's `RetryPolicy::RETRY_ON_*` bits, one per condition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Conditions(u32);

impl Conditions {
    /// `5xx`: any 5xx response, and any reset or connect failure.
    pub const FIVE_XX: Conditions = Conditions(1 << 0);
    /// `gateway-error`: 502, 503, 504, and any reset or connect failure.
    pub const GATEWAY_ERROR: Conditions = Conditions(1 << 1);
    /// `connect-failure`: the connection could not be made.
    pub const CONNECT_FAILURE: Conditions = Conditions(1 << 2);
    /// `retriable-4xx`: 409.
    pub const RETRIABLE_4XX: Conditions = Conditions(1 << 3);
    /// `refused-stream`: HTTP/2 `REFUSED_STREAM`.
    pub const REFUSED_STREAM: Conditions = Conditions(1 << 4);
    /// `retriable-status-codes`: the policy's status codes.
    pub const RETRIABLE_STATUS_CODES: Conditions = Conditions(1 << 5);
    /// `retriable-headers`: response headers matching the route's `retriable_headers` (Istio
    /// configures none, so this never matches).
    pub const RETRIABLE_HEADERS: Conditions = Conditions(1 << 6);
    /// `reset`: any reset, timeout or connect failure.
    pub const RESET: Conditions = Conditions(1 << 7);
    /// `reset-before-request`: a reset before any byte of the request went upstream.
    pub const RESET_BEFORE_REQUEST: Conditions = Conditions(1 << 8);
    /// `envoy-ratelimited`: a response with `x-envoy-ratelimited`.
    pub const ENVOY_RATELIMITED: Conditions = Conditions(1 << 9);
    /// `http3-post-connect-failure` (never matches: the proxy speaks no HTTP/3 upstream).
    pub const HTTP3_POST_CONNECT_FAILURE: Conditions = Conditions(1 << 10);
    /// gRPC `cancelled` (1).
    pub const GRPC_CANCELLED: Conditions = Conditions(1 << 11);
    /// gRPC `deadline-exceeded` (4).
    pub const GRPC_DEADLINE_EXCEEDED: Conditions = Conditions(1 << 12);
    /// gRPC `resource-exhausted` (8).
    pub const GRPC_RESOURCE_EXHAUSTED: Conditions = Conditions(1 << 13);
    /// gRPC `internal` (13).
    pub const GRPC_INTERNAL: Conditions = Conditions(1 << 14);
    /// gRPC `unavailable` (14).
    pub const GRPC_UNAVAILABLE: Conditions = Conditions(1 << 15);

    const ANY_GRPC: Conditions = Conditions(0b1_1111 << 11);

    /// The condition named `token` in Envoy's `retry_on` (HTTP and gRPC names alike, as the
    /// route's `retry_on` takes both).
    pub fn parse(token: &str) -> Option<Conditions> {
        Some(match token {
            "5xx" => Self::FIVE_XX,
            "gateway-error" => Self::GATEWAY_ERROR,
            "connect-failure" => Self::CONNECT_FAILURE,
            "retriable-4xx" => Self::RETRIABLE_4XX,
            "refused-stream" => Self::REFUSED_STREAM,
            "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES,
            "retriable-headers" => Self::RETRIABLE_HEADERS,
            "reset" => Self::RESET,
            "reset-before-request" => Self::RESET_BEFORE_REQUEST,
            "envoy-ratelimited" => Self::ENVOY_RATELIMITED,
            "http3-post-connect-failure" => Self::HTTP3_POST_CONNECT_FAILURE,
            "cancelled" => Self::GRPC_CANCELLED,
            "deadline-exceeded" => Self::GRPC_DEADLINE_EXCEEDED,
            "resource-exhausted" => Self::GRPC_RESOURCE_EXHAUSTED,
            "internal" => Self::GRPC_INTERNAL,
            "unavailable" => Self::GRPC_UNAVAILABLE,
            _ => return None,
        })
    }

    /// True if any condition of `other` is set.
    pub fn any(self, other: Conditions) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for Conditions {
    type Output = Conditions;
    fn bitor(self, rhs: Conditions) -> Conditions {
        Conditions(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Conditions {
    fn bitor_assign(&mut self, rhs: Conditions) {
        self.0 |= rhs.0;
    }
}

/// Why a stream ended before its response headers (Envoy's `Http::StreamResetReason`, less the
/// connection failures, which are [`Outcome::ConnectFailure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The peer reset the stream (HTTP/2 `RST_STREAM` other than `REFUSED_STREAM`).
    Remote,
    /// The peer refused the stream (HTTP/2 `REFUSED_STREAM`): it was not processed.
    RefusedStream,
    /// The connection closed under the stream.
    ConnectionTermination,
    /// The peer broke the protocol (Envoy answers 502 rather than 503).
    Protocol,
    /// The proxy reset the stream itself.
    Local,
    /// A circuit breaker refused the stream (`UO`): never retried.
    Overflow,
}

/// What one attempt came to, as far as retrying is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// No connection to the endpoint: refused, unreachable, connect timeout, TLS handshake
    /// failure (Envoy's `LocalConnectionFailure`, `RemoteConnectionFailure`,
    /// `ConnectionTimeout`). Nothing of the request was sent.
    ConnectFailure,
    /// The stream ended before response headers.
    Reset {
        /// Why.
        reason: ResetReason,
        /// Some byte of the request (its headers included) was written upstream (Envoy's
        /// `upstream_request_started_`: the first upstream byte was sent).
        request_started: bool,
    },
    /// The attempt's per-try timeout fired before response headers. Envoy resets the stream
    /// locally and asks the reset rules (so `5xx`, `gateway-error` and `reset` retry it).
    PerTryTimeout {
        /// As for [`Outcome::Reset`].
        request_started: bool,
    },
    /// Response headers arrived (a trailers-only gRPC response carries `grpc-status` here).
    Response {
        /// The status.
        status: StatusCode,
        /// The response headers.
        headers: &'a HeaderMap,
    },
}

/// A route's retry policy, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Retries after the first attempt (0: none).
    pub attempts: u32,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// The conditions retried.
    pub conditions: Conditions,
    /// Response statuses retried under `retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// First back-off interval.
    pub backoff_base: Duration,
    /// Longest back-off interval (10 × base, Envoy's default; Istio sets no other).
    pub backoff_max: Duration,
    /// Retries go to other endpoints than those already tried (Envoy's `previous_hosts`
    /// predicate, which Istio sets unless the destination uses consistent hashing or
    /// `retryIgnorePreviousHosts: false`).
    pub retry_other_hosts: bool,
}

impl Retry {
    /// Compiles `policy`. A `retryOn` token is either one of Envoy's conditions or an HTTP status
    /// code Istio knows (Go's `http.StatusText`), exactly as written, as Istio's validation
    /// demands (`"5xx,"` and `" 503"` are refused); anything else is an error naming the token.
    /// No (or an empty) `retryOn` means Istio's default conditions ([`ISTIO_DEFAULT_RETRY_ON`]).
    pub fn compile(policy: &xds::RetryPolicy) -> Result<Retry, RetryError> {
        // An empty `retryOn` is none, as in Istio.
        let retry_on = policy
            .retry_on
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(ISTIO_DEFAULT_RETRY_ON);
        let mut conditions = Conditions::default();
        let mut codes = Vec::new();
        for token in retry_on.split(',') {
            if let Some(c) = Conditions::parse(token) {
                conditions |= c;
            } else if let Some(code) = token.parse::<u16>().ok().filter(|c| known_status(*c)) {
                if !codes.contains(&code) {
                    codes.push(code);
                }
            } else {
                return Err(RetryError::UnknownCondition(token.to_string()));
            }
        }
        // Istio adds the condition that makes the codes count when only codes were given.
        if !codes.is_empty() {
            conditions |= Conditions::RETRIABLE_STATUS_CODES;
        }
        let backoff_base = match policy.backoff_ms {
            Some(0) => return Err(RetryError::ZeroBackoff),
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_BACKOFF_BASE,
        };
        Ok(Retry {
            attempts: policy.attempts,
            // Envoy treats a zero per-try timeout as none.
            per_try_timeout: policy
                .per_try_timeout_ms
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            conditions,
            retriable_status_codes: codes,
            backoff_base,
            backoff_max: backoff_base * 10,
            retry_other_hosts: policy.retry_other_hosts,
        })
    }

    /// True if the policy may retry a request after it went upstream (on a response, a reset
    /// or a per-try timeout), so the request must be kept to be sent again; a connect failure
    /// hands the request back unsent and needs no copy. gRPC conditions count only for a gRPC
    /// request (`grpc`): another request's response carries no `grpc-status`.
    pub fn retries_after_send(&self, grpc: bool) -> bool {
        let c = self.conditions;
        let after_send = Conditions::FIVE_XX
            | Conditions::GATEWAY_ERROR
            | Conditions::RETRIABLE_4XX
            | Conditions::REFUSED_STREAM
            | Conditions::RESET
            | Conditions::RESET_BEFORE_REQUEST
            | Conditions::ENVOY_RATELIMITED;
        self.enabled()
            && (c.any(after_send)
                || (c.any(Conditions::RETRIABLE_STATUS_CODES)
                    && !self.retriable_status_codes.is_empty())
                || self.per_try_timeout.is_some()
                || (grpc && c.any(Conditions::ANY_GRPC)))
    }

    /// True if the policy retries at all (Istio drops a policy of 0 attempts).
    pub fn enabled(&self) -> bool {
        self.attempts > 0
    }

    /// The per-try timeout under a route timeout of `route_timeout`: Envoy ignores a per-try
    /// timeout that is not shorter than the route's (`FilterUtility::finalTimeout`).
    pub fn per_try_timeout_within(&self, route_timeout: Option<Duration>) -> Option<Duration> {
        match (self.per_try_timeout, route_timeout) {
            (Some(p), Some(r)) if p >= r => None,
            (p, _) => p,
        }
    }

    /// True if an attempt that ended in `outcome` is tried again (when attempts remain): Envoy's
    /// rules, condition by condition.
    pub fn should_retry(&self, outcome: &Outcome<'_>) -> bool {
        let c = self.conditions;
        match *outcome {
            Outcome::ConnectFailure => {
                // A connect failure not covered by `connect-failure` still falls to the reset
                // rules (nothing was sent, so `reset-before-request` covers it too).
                c.any(Conditions::CONNECT_FAILURE) || self.retries_reset(false)
            }
            Outcome::Reset {
                reason: ResetReason::Overflow,
                ..
            } => false,
            Outcome::Reset {
                reason,
                request_started,
            } => {
                self.retries_reset(request_started)
                    || (reason == ResetReason::RefusedStream && c.any(Conditions::REFUSED_STREAM))
            }
            Outcome::PerTryTimeout { request_started } => self.retries_reset(request_started),
            Outcome::Response { status, headers } => self.retries_response(status, headers),
        }
    }

    /// The conditions that retry any reset: `reset-before-request` (while nothing was sent),
    /// `reset`, and `5xx`/`gateway-error`, which count a reset as the 503 it becomes.
    fn retries_reset(&self, request_started: bool) -> bool {
        let c = self.conditions;
        (c.any(Conditions::RESET_BEFORE_REQUEST) && !request_started)
            || c.any(Conditions::RESET | Conditions::FIVE_XX | Conditions::GATEWAY_ERROR)
    }

    fn retries_response(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        let c = self.conditions;
        // A response an upstream Envoy rate-limited is retried only under `envoy-ratelimited`,
        // whatever else would apply.
        if headers.contains_key(X_ENVOY_RATELIMITED) {
            return c.any(Conditions::ENVOY_RATELIMITED);
        }
        let code = status.as_u16();
        if c.any(Conditions::FIVE_XX) && status.is_server_error() {
            return true;
        }
        if c.any(Conditions::GATEWAY_ERROR) && matches!(code, 502..=504) {
            return true;
        }
        if c.any(Conditions::RETRIABLE_4XX) && code == 409 {
            return true;
        }
        if c.any(Conditions::RETRIABLE_STATUS_CODES) && self.retriable_status_codes.contains(&code)
        {
            return true;
        }
        // gRPC conditions look at `grpc-status` in the response headers, as Envoy does: a
        // trailers-only response (an error status in trailers after data is never retried).
        if c.any(Conditions::ANY_GRPC)
            && let Some(grpc) = grpc_status(headers)
        {
            let wanted = match grpc {
                1 => Conditions::GRPC_CANCELLED,
                4 => Conditions::GRPC_DEADLINE_EXCEEDED,
                8 => Conditions::GRPC_RESOURCE_EXHAUSTED,
                13 => Conditions::GRPC_INTERNAL,
                14 => Conditions::GRPC_UNAVAILABLE,
                _ => return false,
            };
            return c.any(wanted);
        }
        false
    }

    /// How long to wait before retry number `retry` (1 for the first retry): Envoy's
    /// `JitteredExponentialBackOffStrategy`, uniform in `[0, interval)` where the interval starts
    /// at the base and doubles per retry until doubling would pass half the maximum, then is the
    /// maximum (25 ms base: 25, 50, 100, 200, 250, 250, … ms).
    pub fn backoff(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let interval = backoff_interval(
            self.backoff_base.as_millis() as u64,
            self.backoff_max.as_millis() as u64,
            retry,
        );
        if interval == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rng.random::<u64>() % interval)
    }
}

/// What to do after an attempt (Envoy's `RetryStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after this back-off.
    Retry {
        /// How long to wait first.
        backoff: Duration,
    },
    /// The outcome is not retried: it is the answer.
    No,
    /// The outcome would be retried but no retry is left: it is the answer, with flag `URX`.
    LimitExceeded,
}

/// One request's retries against its route's [`Retry`].
#[derive(Debug, Clone)]
pub struct Attempts<'a> {
    retry: &'a Retry,
    done: u32,
}

impl<'a> Attempts<'a> {
    /// No retry made yet.
    pub fn new(retry: &'a Retry) -> Attempts<'a> {
        Attempts { retry, done: 0 }
    }

    /// Retries made so far.
    pub fn retries(&self) -> u32 {
        self.done
    }

    /// The verdict on an attempt that ended in `outcome` (Envoy's `shouldRetry`): a retry while
    /// some remain, counting it.
    pub fn after(&mut self, outcome: &Outcome<'_>, rng: &mut impl Rng) -> Verdict {
        if !self.retry.should_retry(outcome) {
            return Verdict::No;
        }
        if self.done >= self.retry.attempts {
            return Verdict::LimitExceeded;
        }
        self.done += 1;
        Verdict::Retry {
            backoff: self.retry.backoff(self.done, rng),
        }
    }
}

/// The interval (ms) retry number `retry` draws its back-off from.
fn backoff_interval(base: u64, max: u64, retry: u32) -> u64 {
    let mut interval = base;
    for _ in 1..retry {
        if interval >= max / 2 {
            return max;
        }
        interval *= 2;
    }
    interval
}

/// `x-envoy-ratelimited`.
const X_ENVOY_RATELIMITED: &str = "x-envoy-ratelimited";

/// The `grpc-status` of response headers, as Envoy's `Grpc::Common::getGrpcStatus` reads it (a
/// value that is not a number is no status any condition names).
fn grpc_status(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get("grpc-status")?;
    let s = std::str::from_utf8(v.as_bytes()).ok()?;
    Some(s.trim().parse().unwrap_or(u64::MAX))
}

/// The HTTP status codes Go's `http.StatusText` names: Istio takes only those as retriable
/// status codes in `retryOn`.
fn known_status(code: u16) -> bool {
    matches!(
        code,
        100..=103
            | 200..=208
            | 226
            | 300..=305
            | 307
            | 308
            | 400..=418
            | 421..=426
            | 428
            | 429
            | 431
            | 451
            | 500..=508
            | 510
            | 511
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy(retry_on: Option<&str>) -> xds::RetryPolicy {
        xds::RetryPolicy {
            attempts: 2,
            retry_on: retry_on.map(str::to_string),
            ..xds::RetryPolicy::istio_default()
        }
    }

    fn compile(retry_on: &str) -> Retry {
        Retry::compile(&policy(Some(retry_on))).unwrap()
    }

    fn response(r: &Retry, status: u16, headers: &[(&'static str, &str)]) -> bool {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        r.should_retry(&Outcome::Response {
            status: StatusCode::from_u16(status).unwrap(),
            headers: &h,
        })
    }

    fn reset(r: &Retry, reason: ResetReason, request_started: bool) -> bool {
        r.should_retry(&Outcome::Reset {
            reason,
            request_started,
        })
    }

    #[test]
    fn numbers_become_retriable_status_codes_as_istio_does() {
        let r = compile("connect-failure,503,504");
        assert_eq!(r.retriable_status_codes, vec![503, 504]);
        assert!(r.conditions.any(Conditions::RETRIABLE_STATUS_CODES));
        assert!(response(&r, 503, &[]));
        assert!(response(&r, 504, &[]));
        assert!(!response(&r, 500, &[]));
        assert!(r.should_retry(&Outcome::ConnectFailure));
    }

    #[test]
    fn unknown_tokens_are_refused_as_istio_validation_does() {
        for bad in ["5xx,bogus", "600", "5xx,", " 503", "5XX", ",5xx"] {
            assert!(
                matches!(
                    Retry::compile(&policy(Some(bad))),
                    Err(RetryError::UnknownCondition(_))
                ),
                "{bad:?} accepted"
            );
        }
        let err = Retry::compile(&policy(Some("5xx,not-a-policy"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "retryOn: \"not-a-policy\" is not a valid retryOn policy"
        );
        let mut p = policy(None);
        p.backoff_ms = Some(0);
        assert_eq!(Retry::compile(&p), Err(RetryError::ZeroBackoff));
    }

    #[test]
    fn istio_default_conditions() {
        // No retryOn: Istio's default conditions, which retry 503 only through a code list that
        // is empty (Istio stopped retrying 503 by default in 1.24).
        let r = Retry::compile(&policy(None)).unwrap();
        assert!(r.retriable_status_codes.is_empty());
        assert!(!response(&r, 503, &[]));
        assert!(r.should_retry(&Outcome::ConnectFailure));
        assert!(reset(&r, ResetReason::RefusedStream, true));
        assert!(!reset(&r, ResetReason::Remote, false));
        assert!(!reset(&r, ResetReason::ConnectionTermination, true));
        assert!(!r.should_retry(&Outcome::PerTryTimeout {
            request_started: true
        }));
        assert!(response(&r, 200, &[("grpc-status", "14")]));
        assert!(response(&r, 200, &[("grpc-status", "1")]));
        assert!(!response(&r, 200, &[("grpc-status", "4")]));
        assert!(!response(&r, 200, &[("grpc-status", "13")]));
        assert_eq!(r.attempts, 2);
        assert!(r.retry_other_hosts);
    }

    #[test]
    fn the_contracts_default_is_istios() {
        let r = Retry::compile(&xds::RetryPolicy::istio_default()).unwrap();
        assert_eq!(r, Retry::compile(&policy(None)).unwrap());
        assert!(!response(&r, 503, &[]));
        assert_eq!(r.backoff_base, Duration::from_millis(25));
        assert_eq!(r.backoff_max, Duration::from_millis(250));
    }

    #[test]
    fn five_xx_covers_responses_resets_timeouts_and_connect_failures() {
        let r = compile("5xx");
        assert!(response(&r, 500, &[]));
        assert!(response(&r, 599, &[]));
        assert!(!response(&r, 499, &[]));
        assert!(reset(&r, ResetReason::Remote, true));
        assert!(reset(&r, ResetReason::ConnectionTermination, true));
        assert!(reset(&r, ResetReason::Protocol, true));
        assert!(reset(&r, ResetReason::Local, true));
        assert!(r.should_retry(&Outcome::PerTryTimeout {
            request_started: true
        }));
        assert!(r.should_retry(&Outcome::ConnectFailure));
        // Never an overflow.
        assert!(!reset(&r, ResetReason::Overflow, false));
    }

    #[test]
    fn gateway_error_is_502_to_504_and_resets() {
        let r = compile("gateway-error");
        assert!(!response(&r, 500, &[]));
        assert!(!response(&r, 501, &[]));
        for s in [502, 503, 504] {
            assert!(response(&r, s, &[]));
        }
        assert!(!response(&r, 505, &[]));
        assert!(reset(&r, ResetReason::Remote, true));
        assert!(r.should_retry(&Outcome::PerTryTimeout {
            request_started: true
        }));
    }

    #[test]
    fn connect_failure_and_refused_stream_are_narrow() {
        let r = compile("connect-failure");
        assert!(r.should_retry(&Outcome::ConnectFailure));
        assert!(!reset(&r, ResetReason::RefusedStream, true));
        assert!(!reset(&r, ResetReason::Remote, false));
        assert!(!response(&r, 503, &[]));
        let r = compile("refused-stream");
        assert!(reset(&r, ResetReason::RefusedStream, true));
        assert!(!reset(&r, ResetReason::Remote, true));
        assert!(!r.should_retry(&Outcome::ConnectFailure));
        assert!(!r.should_retry(&Outcome::PerTryTimeout {
            request_started: true
        }));
    }

    #[test]
    fn reset_before_request_only_while_nothing_was_sent() {
        let r = compile("reset-before-request");
        assert!(reset(&r, ResetReason::Remote, false));
        assert!(reset(&r, ResetReason::ConnectionTermination, false));
        assert!(!reset(&r, ResetReason::Remote, true));
        assert!(r.should_retry(&Outcome::ConnectFailure));
        assert!(!r.should_retry(&Outcome::PerTryTimeout {
            request_started: true
        }));
        assert!(!response(&r, 503, &[]));
        let r = compile("reset");
        assert!(reset(&r, ResetReason::Remote, true));
        assert!(r.should_retry(&Outcome::PerTryTimeout {
            request_started: true
        }));
        assert!(r.should_retry(&Outcome::ConnectFailure));
        assert!(!response(&r, 503, &[]));
    }

    #[test]
    fn retriable_4xx_is_409() {
        let r = compile("retriable-4xx");
        assert!(response(&r, 409, &[]));
        assert!(!response(&r, 400, &[]));
        assert!(!response(&r, 429, &[]));
    }

    #[test]
    fn retriable_status_codes_without_codes_retries_nothing() {
        let r = compile("retriable-status-codes");
        assert!(!response(&r, 503, &[]));
        let r = compile("429");
        assert!(response(&r, 429, &[]));
    }

    #[test]
    fn ratelimited_responses_only_under_envoy_ratelimited() {
        let r = compile("5xx,429");
        assert!(response(&r, 503, &[]));
        assert!(!response(&r, 503, &[("x-envoy-ratelimited", "true")]));
        assert!(!response(&r, 429, &[("x-envoy-ratelimited", "true")]));
        let r = compile("envoy-ratelimited");
        assert!(response(&r, 429, &[("x-envoy-ratelimited", "true")]));
        assert!(!response(&r, 429, &[]));
    }

    #[test]
    fn grpc_conditions_read_grpc_status_in_headers() {
        let r = compile("cancelled,deadline-exceeded,internal,resource-exhausted,unavailable");
        for (s, yes) in [
            ("1", true),
            ("4", true),
            ("8", true),
            ("13", true),
            ("14", true),
            ("0", false),
            ("2", false),
            ("16", false),
            ("x", false),
        ] {
            assert_eq!(response(&r, 200, &[("grpc-status", s)]), yes, "{s}");
        }
        // No grpc-status in the headers (it comes in trailers, later): no retry.
        assert!(!response(&r, 200, &[]));
        // HTTP conditions are not gRPC ones.
        assert!(!response(&r, 503, &[]));
        let r = compile("unavailable");
        assert!(!response(&r, 200, &[("grpc-status", "1")]));
    }

    #[test]
    fn retriable_headers_and_http3_match_nothing_here() {
        let r = compile("retriable-headers,http3-post-connect-failure");
        assert!(!response(&r, 503, &[("x-anything", "1")]));
        assert!(!reset(&r, ResetReason::Remote, true));
    }

    #[test]
    fn per_try_timeout_is_dropped_when_not_shorter_than_the_route_timeout() {
        let mut p = policy(None);
        p.per_try_timeout_ms = Some(1000);
        let r = Retry::compile(&p).unwrap();
        let s = Duration::from_secs;
        assert_eq!(r.per_try_timeout_within(None), Some(s(1)));
        assert_eq!(r.per_try_timeout_within(Some(s(2))), Some(s(1)));
        assert_eq!(r.per_try_timeout_within(Some(s(1))), None);
        p.per_try_timeout_ms = Some(0);
        assert_eq!(Retry::compile(&p).unwrap().per_try_timeout, None);
    }

    #[test]
    fn attempts_count_down_to_the_limit() {
        let r = compile("5xx");
        let mut rng = StdRng::seed_from_u64(3);
        let h = HeaderMap::new();
        let failed = Outcome::Response {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers: &h,
        };
        let ok = Outcome::Response {
            status: StatusCode::OK,
            headers: &h,
        };
        let mut a = Attempts::new(&r);
        assert!(
            matches!(a.after(&failed, &mut rng), Verdict::Retry { backoff } if backoff < Duration::from_millis(25))
        );
        assert!(
            matches!(a.after(&failed, &mut rng), Verdict::Retry { backoff } if backoff < Duration::from_millis(50))
        );
        assert_eq!(a.retries(), 2);
        assert_eq!(a.after(&failed, &mut rng), Verdict::LimitExceeded);
        assert_eq!(a.after(&ok, &mut rng), Verdict::No);
        let off = Retry::compile(&xds::RetryPolicy {
            attempts: 0,
            ..policy(Some("5xx"))
        })
        .unwrap();
        assert!(!off.enabled());
        assert_eq!(
            Attempts::new(&off).after(&failed, &mut rng),
            Verdict::LimitExceeded
        );
    }

    #[test]
    fn backoff_intervals_double_up_to_ten_times_the_base() {
        assert_eq!(
            (1..=7)
                .map(|n| backoff_interval(25, 250, n))
                .collect::<Vec<_>>(),
            vec![25, 50, 100, 200, 250, 250, 250]
        );
        assert_eq!(
            (1..=5)
                .map(|n| backoff_interval(100, 1000, n))
                .collect::<Vec<_>>(),
            vec![100, 200, 400, 800, 1000]
        );
        let mut p = policy(None);
        p.backoff_ms = Some(100);
        let r = Retry::compile(&p).unwrap();
        assert_eq!(r.backoff_max, Duration::from_secs(1));
        let mut rng = StdRng::seed_from_u64(7);
        let mut max_seen = [Duration::ZERO; 6];
        for _ in 0..2000 {
            for (n, seen) in max_seen.iter_mut().enumerate() {
                let b = r.backoff(n as u32 + 1, &mut rng);
                assert!(b < Duration::from_millis(backoff_interval(100, 1000, n as u32 + 1)));
                *seen = (*seen).max(b);
            }
        }
        // Fully jittered: the draws fill the interval (not a fixed delay).
        assert!(max_seen[0] >= Duration::from_millis(90), "{max_seen:?}");
        assert!(max_seen[5] >= Duration::from_millis(900), "{max_seen:?}");
    }
}
