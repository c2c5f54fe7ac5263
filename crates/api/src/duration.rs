//! Durations as Istio config writes them: `1.5s`, `100ms`, `1m30s`, `1h`.
//!
//! Istio's protos use `google.protobuf.Duration`, whose JSON form is seconds with an `s` suffix
//! (`1.5s`); Istio's YAML reader also takes Go's `time.ParseDuration` syntax, which is what
//! users write (`timeout: 10s`, `interval: 1m`, `perTryTimeout: 500ms`). Both are accepted here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// A non-negative duration from Istio config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The duration as the standard type.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;

    /// Parses a sequence of decimal numbers, each with a unit (`ns`, `us`, `µs`, `ms`, `s`,
    /// `m`, `h`): `1.5s`, `1m30s`, `100ms`. `0` alone is zero. Negative durations are refused.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("\"{s}\" is not a duration (such as 1.5s, 100ms or 1m30s)");
        if s == "0" {
            return Ok(Duration::default());
        }
        if s.is_empty() || s.starts_with('-') {
            return Err(bad());
        }
        let mut rest = s.strip_prefix('+').unwrap_or(s);
        let mut total_nanos: f64 = 0.0;
        while !rest.is_empty() {
            let number_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            let (number, after) = rest.split_at(number_end);
            if number.is_empty() || number == "." || number.matches('.').count() > 1 {
                return Err(bad());
            }
            let value: f64 = number.parse().map_err(|_| bad())?;
            let unit_end = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_end);
            let nanos_per_unit = match unit {
                "ns" => 1.0,
                "us" | "µs" | "μs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                _ => return Err(bad()),
            };
            total_nanos += value * nanos_per_unit;
            rest = next;
        }
        if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(Duration(std::time::Duration::from_nanos(
            total_nanos.round() as u64,
        )))
    }
}

impl fmt::Display for Duration {
    /// Writes the protobuf JSON form: seconds with up to 9 decimals and an `s` (`1.5s`, `0.1s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn parses_proto_and_go_forms() {
        let d = |s: &str| s.parse::<Duration>().map(Duration::get);
        assert_eq!(d("1.5s"), Ok(Std::from_millis(1500)));
        assert_eq!(d("100ms"), Ok(Std::from_millis(100)));
        assert_eq!(d("1m30s"), Ok(Std::from_secs(90)));
        assert_eq!(d("2h"), Ok(Std::from_secs(7200)));
        assert_eq!(d("250us"), Ok(Std::from_micros(250)));
        assert_eq!(d("0"), Ok(Std::ZERO));
        for bad in ["", "10", "1.5", "-1s", "1x", "s", "1..5s", "ms100"] {
            assert!(d(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn displays_as_proto_json() {
        assert_eq!(Duration(Std::from_millis(1500)).to_string(), "1.5s");
        assert_eq!(Duration(Std::from_secs(10)).to_string(), "10s");
        assert_eq!(Duration(Std::from_millis(100)).to_string(), "0.1s");
    }
}
