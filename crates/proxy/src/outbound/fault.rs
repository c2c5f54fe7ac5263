//! Fault injection: a route's delays and aborts, as Envoy's fault filter applies the
//! `HTTPFault` Istio generates from a VirtualService's `fault`.
//!
//! [`FaultInjection::decide`] draws, per request, whether to delay it and whether to abort it.
//! The two draws are independent, as in Envoy (each is its own `featureEnabled` against its own
//! random number, `random % 1_000_000 < per_million`): a request may be delayed and then
//! aborted. The caller applies the [`Decision`]: first the delay (flag `DI`; the request then
//! goes on as usual, with no `response_code_details` of its own), then the abort, a local reply
//! built from [`AbortReply`] with flag `FI` and details [`ABORT_DETAILS`].
//!
//! Left out, as Istio does not configure them: `max_active_faults`, header-controlled faults,
//! `downstream_nodes`, `upstream_cluster`, and the response rate limit.

use std::time::Duration;

use http::StatusCode;
use rand::Rng;
use xds::AbortStatus;

/// The body of an abort (`text/plain`; `grpc-message` for a gRPC request).
pub const ABORT_BODY: &str = "fault filter abort";

/// `response_code_details` of an abort.
pub const ABORT_DETAILS: &str = "fault_filter_abort";

/// Parts per million: Envoy's `FractionalPercent` denominator `MILLION`, as Istio sets it.
const MILLION: u64 = 1_000_000;

/// A route's faults, compiled once per snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultInjection {
    delay: Option<(Duration, u32)>,
    abort: Option<(AbortStatus, u32)>,
}

/// What to do to one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Hold the request this long before it goes on (flag `DI`).
    pub delay: Option<Duration>,
    /// After the delay, if any, answer the request locally instead of forwarding it (flag
    /// `FI`; see [`AbortReply::of`]).
    pub abort: Option<AbortStatus>,
}

impl FaultInjection {
    /// Compiles a route's `fault`. A delay of 0 ms is none (Envoy delays only for a positive
    /// duration).
    pub fn compile(fault: &xds::Fault) -> FaultInjection {
        FaultInjection {
            delay: fault
                .delay
                .as_ref()
                .filter(|d| d.fixed_delay_ms > 0)
                .map(|d| (Duration::from_millis(d.fixed_delay_ms), d.per_million)),
            abort: fault
                .abort
                .as_ref()
                .map(|a| (a.status.clone(), a.per_million)),
        }
    }

    /// True if nothing is ever injected.
    pub fn is_empty(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }

    /// Draws this request's faults: delay and abort independently, each with its share.
    pub fn decide(&self, rng: &mut impl Rng) -> Decision {
        Decision {
            delay: self
                .delay
                .filter(|(_, share)| sampled(*share, rng))
                .map(|(d, _)| d),
            abort: self
                .abort
                .as_ref()
                .filter(|(_, share)| sampled(*share, rng))
                .map(|(s, _)| s.clone()),
        }
    }
}

/// Envoy's `featureEnabled` with a `FractionalPercent` over a million.
pub(crate) fn sampled(per_million: u32, rng: &mut impl Rng) -> bool {
    rng.random::<u64>() % MILLION < u64::from(per_million)
}

/// The local reply of an abort, as Envoy's fault filter sends it through `sendLocalReply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortReply {
    /// The HTTP status: the abort's, or 200 for a gRPC abort.
    pub status: StatusCode,
    /// For a gRPC request, the `grpc-status` of the trailers-only reply when the abort names
    /// one; `None` means the status mapped from [`AbortReply::status`] as for any local reply
    /// (Envoy's `httpToGrpcStatus`).
    pub grpc_status: Option<u16>,
}

impl AbortReply {
    /// The reply to `abort`. To a gRPC request (content type `application/grpc`) it goes as
    /// every local reply does: trailers-only, HTTP 200, `grpc-status` (this one's, or mapped
    /// from the HTTP status) and `grpc-message: fault filter abort`. To any other request it is
    /// the status with body [`ABORT_BODY`] in `text/plain`: a gRPC abort then answers a plain
    /// HTTP client with 200 and that body, as Envoy does.
    pub fn of(abort: &AbortStatus) -> AbortReply {
        match *abort {
            AbortStatus::Http(code) => AbortReply {
                // The contract validates 200..599; Envoy would send what it got, we fall back to
                // 503 rather than panic on a status `http` cannot represent.
                status: StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                grpc_status: None,
            },
            AbortStatus::Grpc(code) => AbortReply {
                status: StatusCode::OK,
                grpc_status: Some(code),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn fault(delay: Option<(u64, u32)>, abort: Option<(AbortStatus, u32)>) -> FaultInjection {
        FaultInjection::compile(&xds::Fault {
            delay: delay.map(|(ms, per_million)| xds::FaultDelay {
                fixed_delay_ms: ms,
                per_million,
            }),
            abort: abort.map(|(status, per_million)| xds::FaultAbort {
                status,
                per_million,
            }),
        })
    }

    #[test]
    fn all_or_nothing_shares() {
        let mut rng = StdRng::seed_from_u64(1);
        let always = fault(
            Some((5000, 1_000_000)),
            Some((AbortStatus::Http(503), 1_000_000)),
        );
        let never = fault(Some((5000, 0)), Some((AbortStatus::Http(503), 0)));
        for _ in 0..1000 {
            assert_eq!(
                always.decide(&mut rng),
                Decision {
                    delay: Some(Duration::from_secs(5)),
                    abort: Some(AbortStatus::Http(503)),
                }
            );
            assert_eq!(never.decide(&mut rng), Decision::default());
        }
        assert!(fault(None, None).is_empty());
        // A zero delay is no delay.
        assert!(fault(Some((0, 1_000_000)), None).is_empty());
    }

    #[test]
    fn delay_and_abort_are_drawn_independently() {
        let mut rng = StdRng::seed_from_u64(42);
        let f = fault(Some((10, 500_000)), Some((AbortStatus::Grpc(14), 500_000)));
        let (mut delay, mut abort, mut both) = (0u32, 0u32, 0u32);
        let n = 20_000;
        for _ in 0..n {
            let d = f.decide(&mut rng);
            delay += u32::from(d.delay.is_some());
            abort += u32::from(d.abort.is_some());
            both += u32::from(d.delay.is_some() && d.abort.is_some());
        }
        // Each about half; both about a quarter (independent), not half (one draw shared) nor
        // zero (exclusive).
        for share in [delay, abort] {
            assert!((9_000..11_000).contains(&share), "{share}");
        }
        assert!((4_300..5_700).contains(&both), "{both}");
    }

    #[test]
    fn share_is_parts_per_million() {
        let mut rng = StdRng::seed_from_u64(9);
        // 0.1 %: 1000 per million.
        let f = fault(None, Some((AbortStatus::Http(500), 1000)));
        let hits = (0..200_000)
            .filter(|_| f.decide(&mut rng).abort.is_some())
            .count();
        assert!((120..280).contains(&hits), "{hits}");
    }

    #[test]
    fn abort_replies_are_envoys() {
        assert_eq!(
            AbortReply::of(&AbortStatus::Http(418)),
            AbortReply {
                status: StatusCode::IM_A_TEAPOT,
                grpc_status: None
            }
        );
        assert_eq!(
            AbortReply::of(&AbortStatus::Grpc(14)),
            AbortReply {
                status: StatusCode::OK,
                grpc_status: Some(14)
            }
        );
        assert_eq!(ABORT_BODY, "fault filter abort");
        assert_eq!(ABORT_DETAILS, "fault_filter_abort");
    }
}
