//! One token, parsed as Envoy's `jwt_verify_lib` parses it (`Jwt::parseFromString`): the checks
//! run in the same order and fail with the same statuses, so a malformed token gets the message
//! Envoy would send. Nothing here verifies a signature ([`crate::jwks`] does).

use std::borrow::Cow;

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use crate::status::Status;

/// Envoy's clock skew: `exp` and `nbf` are honoured 60 s either way.
const CLOCK_SKEW_SECS: u64 = 60;

/// Base64url as `absl::WebSafeBase64Unescape` reads it: padding optional.
pub(crate) const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The `alg` values Envoy implements. `ES512` parses (Envoy knows it) but no key verifies it:
/// `jsonwebtoken` has no P-521.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    Es256,
    Es384,
    Es512,
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    EdDsa,
}

impl Alg {
    fn parse(alg: &str) -> Option<Alg> {
        Some(match alg {
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "ES512" => Alg::Es512,
            "HS256" => Alg::Hs256,
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Es512 => "ES512",
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// A parsed (not yet verified) token.
#[derive(Debug)]
pub(crate) struct Jwt<'t> {
    pub(crate) alg: Alg,
    /// Empty when the header has none (Envoy's `kid_`).
    pub(crate) kid: String,
    header_b64: &'t str,
    /// The payload as it stands in the token (what `outputPayloadToHeader` forwards).
    pub(crate) payload_b64: &'t str,
    pub(crate) signature: Vec<u8>,
    pub(crate) payload: Map<String, Value>,
    /// Empty when absent.
    pub(crate) iss: String,
    /// Empty when absent.
    pub(crate) sub: String,
    /// 0 when absent.
    nbf: u64,
    /// 0 when absent (never expires).
    exp: u64,
    pub(crate) audiences: Vec<String>,
}

impl<'t> Jwt<'t> {
    /// Parses `token` (`Header.Payload.Signature`, base64url JSON objects).
    pub(crate) fn parse(token: &'t str) -> Result<Jwt<'t>, Status> {
        // Envoy splits skipping empty pieces: `a..b` has 2 sections, `.a.b.c` has 3.
        let mut sections = token.split('.').filter(|s| !s.is_empty());
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) = (
            sections.next(),
            sections.next(),
            sections.next(),
            sections.next(),
        ) else {
            return Err(Status::JwtBadFormat);
        };

        let header = BASE64URL
            .decode(header_b64)
            .map_err(|_| Status::JwtHeaderParseErrorBadBase64)?;
        let header: Map<String, Value> =
            serde_json::from_slice(&header).map_err(|_| Status::JwtHeaderParseErrorBadJson)?;
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => alg,
            _ => return Err(Status::JwtHeaderBadAlg),
        };
        let alg = Alg::parse(alg).ok_or(Status::JwtHeaderNotImplementedAlg)?;
        let kid = string_field(&header, "kid")
            .map_err(|()| Status::JwtHeaderBadKid)?
            .unwrap_or_default()
            .to_owned();

        let payload = BASE64URL
            .decode(payload_b64)
            .map_err(|_| Status::JwtPayloadParseErrorBadBase64)?;
        let payload: Map<String, Value> =
            serde_json::from_slice(&payload).map_err(|_| Status::JwtPayloadParseErrorBadJson)?;
        let iss = string_field(&payload, "iss")
            .map_err(|()| Status::JwtPayloadParseErrorIssNotString)?
            .unwrap_or_default()
            .to_owned();
        let sub = string_field(&payload, "sub")
            .map_err(|()| Status::JwtPayloadParseErrorSubNotString)?
            .unwrap_or_default()
            .to_owned();
        seconds_field(
            &payload,
            "iat",
            Status::JwtPayloadParseErrorIatNotInteger,
            Status::JwtPayloadParseErrorIatOutOfRange,
        )?;
        let nbf = seconds_field(
            &payload,
            "nbf",
            Status::JwtPayloadParseErrorNbfNotInteger,
            Status::JwtPayloadParseErrorNbfOutOfRange,
        )?;
        let exp = seconds_field(
            &payload,
            "exp",
            Status::JwtPayloadParseErrorExpNotInteger,
            Status::JwtPayloadParseErrorExpOutOfRange,
        )?;
        string_field(&payload, "jti").map_err(|()| Status::JwtPayloadParseErrorJtiNotString)?;
        let audiences = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(aud)) => vec![aud.clone()],
            Some(Value::Array(auds)) => auds
                .iter()
                .map(|a| a.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(Status::JwtPayloadParseErrorAudNotString)?,
            Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
        };

        let signature = BASE64URL
            .decode(signature_b64)
            .map_err(|_| Status::JwtSignatureParseErrorBadBase64)?;

        Ok(Jwt {
            alg,
            kid,
            header_b64,
            payload_b64,
            signature,
            payload,
            iss,
            sub,
            nbf,
            exp,
            audiences,
        })
    }

    /// `nbf` and `exp` against `now` (Unix seconds), with Envoy's 60 s skew; `nbf` first.
    pub(crate) fn check_time(&self, now: u64) -> Result<(), Status> {
        if now.saturating_add(CLOCK_SKEW_SECS) < self.nbf {
            return Err(Status::JwtNotYetValid);
        }
        if self.exp != 0 && now > self.exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(Status::JwtExpired);
        }
        Ok(())
    }

    /// What the signature signs: `header.payload` as Envoy rebuilds it from the sections (a
    /// slice of `token` unless it had empty sections).
    pub(crate) fn signed_data(&self, token: &'t str) -> Cow<'t, str> {
        let rebuilt = token
            .strip_prefix(self.header_b64)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|rest| rest.starts_with(self.payload_b64));
        if rebuilt {
            let end = self.header_b64.len() + 1 + self.payload_b64.len();
            Cow::Borrowed(&token[..end])
        } else {
            Cow::Owned(format!("{}.{}", self.header_b64, self.payload_b64))
        }
    }
}

/// A string field: `Ok(None)` when absent, `Err` when of another type (`null` included, as in
/// a protobuf `Struct`).
fn string_field<'m>(map: &'m Map<String, Value>, name: &str) -> Result<Option<&'m str>, ()> {
    match map.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(()),
    }
}

/// A time field as Envoy reads it (`GetUInt64`): any JSON number, fractions truncated; 0 when
/// absent.
fn seconds_field(
    map: &Map<String, Value>,
    name: &str,
    not_integer: Status,
    out_of_range: Status,
) -> Result<u64, Status> {
    let Some(value) = map.get(name) else {
        return Ok(0);
    };
    let Some(number) = value.as_f64() else {
        return Err(not_integer);
    };
    if !(0.0..u64::MAX as f64).contains(&number) {
        return Err(out_of_range);
    }
    // In range and non-negative: the cast truncates, as Envoy's static_cast does.
    Ok(number as u64)
}
