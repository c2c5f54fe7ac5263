//! Envoy's response flags: why a request or connection ended the way it did.
//!
//! The short codes, their order and the `-` for "none" are part of the user contract: they appear
//! in the access log (`%RESPONSE_FLAGS%`) and in the `response_flags` metric label, and users grep
//! for them (`UH`, `UF`, `URX`, `NR`, `DC`...). Envoy prints the set flags comma-separated in the
//! order of its `ResponseFlag` enum, which is the order of [`ResponseFlags::ALL`] here.

use std::fmt;
use std::str::FromStr;

/// A set of Envoy response flags: a `u32` bitset, `Copy`, cheap to carry on the hot path.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

macro_rules! flags {
    ($($(#[$doc:meta])* $name:ident = $bit:expr, $code:literal;)*) => {
        impl ResponseFlags {
            $($(#[$doc])* pub const $name: ResponseFlags = ResponseFlags(1 << $bit);)*

            /// Every flag with its short code, in Envoy's print order.
            pub const ALL: &'static [(ResponseFlags, &'static str)] = &[$((ResponseFlags::$name, $code),)*];
        }
    };
}

flags! {
    /// `LH`: the local service failed its health check (503).
    FAILED_LOCAL_HEALTH_CHECK = 0, "LH";
    /// `UH`: no healthy upstream host in the cluster (503).
    NO_HEALTHY_UPSTREAM = 1, "UH";
    /// `UT`: upstream request timeout (504).
    UPSTREAM_REQUEST_TIMEOUT = 2, "UT";
    /// `LR`: connection reset locally (503).
    LOCAL_RESET = 3, "LR";
    /// `UR`: upstream remote reset (503).
    UPSTREAM_REMOTE_RESET = 4, "UR";
    /// `UF`: upstream connection failure (503).
    UPSTREAM_CONNECTION_FAILURE = 5, "UF";
    /// `UC`: upstream connection termination (503).
    UPSTREAM_CONNECTION_TERMINATION = 6, "UC";
    /// `UO`: upstream overflow, circuit breaking (503).
    UPSTREAM_OVERFLOW = 7, "UO";
    /// `NR`: no route configured (404), or no filter chain for a connection.
    NO_ROUTE_FOUND = 8, "NR";
    /// `DI`: the request was delayed by fault injection.
    DELAY_INJECTED = 9, "DI";
    /// `FI`: the request was aborted by fault injection.
    FAULT_INJECTED = 10, "FI";
    /// `RL`: rate limited locally (429).
    RATE_LIMITED = 11, "RL";
    /// `UAEX`: denied by the external authorization service.
    UNAUTHORIZED_EXTERNAL_SERVICE = 12, "UAEX";
    /// `RLSE`: rejected because the rate limit service failed.
    RATELIMIT_SERVICE_ERROR = 13, "RLSE";
    /// `DC`: downstream connection termination.
    DOWNSTREAM_CONNECTION_TERMINATION = 14, "DC";
    /// `URX`: upstream retry limit (HTTP) or connect attempts (TCP) exceeded.
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 15, "URX";
    /// `SI`: stream idle timeout (408).
    STREAM_IDLE_TIMEOUT = 16, "SI";
    /// `IH`: invalid value in a strictly checked `x-envoy-*` header (400).
    INVALID_ENVOY_REQUEST_HEADERS = 17, "IH";
    /// `DPE`: the downstream request had an HTTP protocol error.
    DOWNSTREAM_PROTOCOL_ERROR = 18, "DPE";
    /// `UMSDR`: the upstream request reached its max stream duration.
    UPSTREAM_MAX_STREAM_DURATION_REACHED = 19, "UMSDR";
    /// `RFCF`: the response came from the cache filter.
    RESPONSE_FROM_CACHE_FILTER = 20, "RFCF";
    /// `NFCF`: no filter config found.
    NO_FILTER_CONFIG_FOUND = 21, "NFCF";
    /// `DT`: the request or connection exceeded its max duration.
    DURATION_TIMEOUT = 22, "DT";
    /// `UPE`: the upstream response had an HTTP protocol error.
    UPSTREAM_PROTOCOL_ERROR = 23, "UPE";
    /// `NC`: upstream cluster not found.
    NO_CLUSTER_FOUND = 24, "NC";
    /// `OM`: the overload manager terminated the request.
    OVERLOAD_MANAGER = 25, "OM";
    /// `DF`: DNS resolution failed.
    DNS_RESOLUTION_FAILED = 26, "DF";
    /// `DO`: dropped by drop_overload.
    DROP_OVERLOAD = 27, "DO";
}

impl ResponseFlags {
    /// No flag set: printed as `-`.
    pub const NONE: ResponseFlags = ResponseFlags(0);

    /// True when no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when every flag of `other` is set in `self`.
    pub const fn contains(self, other: ResponseFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: ResponseFlags) {
        self.0 |= other.0;
    }

    /// The union of both sets.
    pub const fn union(self, other: ResponseFlags) -> ResponseFlags {
        ResponseFlags(self.0 | other.0)
    }

    /// The raw bits (stable within this build only; not a wire format).
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The short code of a single flag, `None` for an empty or multi-flag set.
    pub fn code(self) -> Option<&'static str> {
        Self::ALL.iter().find(|(f, _)| *f == self).map(|(_, c)| *c)
    }

    /// Writes the flags as Envoy does (`UF,URX`, or `-` when empty) without allocating.
    pub fn write_to(self, out: &mut impl fmt::Write) -> fmt::Result {
        if self.is_empty() {
            return out.write_str("-");
        }
        let mut first = true;
        for (flag, code) in Self::ALL {
            if self.contains(*flag) {
                if !first {
                    out.write_char(',')?;
                }
                out.write_str(code)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = ResponseFlags;
    fn bitor(self, rhs: ResponseFlags) -> ResponseFlags {
        self.union(rhs)
    }
}

impl std::ops::BitOrAssign for ResponseFlags {
    fn bitor_assign(&mut self, rhs: ResponseFlags) {
        self.insert(rhs);
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseFlags({self})")
    }
}

/// An unknown short code in [`ResponseFlags::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown response flag {0:?}; expected Envoy short codes such as UH, UF, URX, NR")]
pub struct UnknownFlag(pub String);

impl FromStr for ResponseFlags {
    type Err = UnknownFlag;

    /// Parses Envoy's printed form: `-` or comma-separated short codes (`UF,URX`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "-" || s.is_empty() {
            return Ok(ResponseFlags::NONE);
        }
        let mut flags = ResponseFlags::NONE;
        for code in s.split(',') {
            let code = code.trim();
            let (flag, _) = Self::ALL
                .iter()
                .find(|(_, c)| *c == code)
                .ok_or_else(|| UnknownFlag(code.to_owned()))?;
            flags.insert(*flag);
        }
        Ok(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_prints_dash() {
        assert_eq!(ResponseFlags::NONE.to_string(), "-");
        assert_eq!(ResponseFlags::default().to_string(), "-");
    }

    #[test]
    fn prints_in_envoy_order_regardless_of_insertion() {
        let f = ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED
            | ResponseFlags::UPSTREAM_CONNECTION_FAILURE;
        assert_eq!(f.to_string(), "UF,URX");
        let f =
            ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION | ResponseFlags::NO_HEALTHY_UPSTREAM;
        assert_eq!(f.to_string(), "UH,DC");
        let f = ResponseFlags::DELAY_INJECTED | ResponseFlags::FAULT_INJECTED;
        assert_eq!(f.to_string(), "DI,FI");
    }

    #[test]
    fn required_codes() {
        for code in [
            "UH", "UF", "URX", "NR", "UO", "UT", "DC", "UC", "UR", "DPE", "DI", "FI", "NC", "DT",
        ] {
            let f: ResponseFlags = code.parse().unwrap();
            assert_eq!(f.to_string(), code);
            assert_eq!(f.code(), Some(code));
        }
    }

    #[test]
    fn parse_round_trip_and_errors() {
        let f: ResponseFlags = "URX,UF".parse().unwrap();
        assert_eq!(f.to_string(), "UF,URX");
        assert_eq!("-".parse::<ResponseFlags>().unwrap(), ResponseFlags::NONE);
        assert!("XX".parse::<ResponseFlags>().is_err());
        let mut all = ResponseFlags::NONE;
        for (f, _) in ResponseFlags::ALL {
            all |= *f;
        }
        assert_eq!(all.to_string().parse::<ResponseFlags>().unwrap(), all);
        assert_eq!(ResponseFlags::ALL.len(), 28);
    }
}
