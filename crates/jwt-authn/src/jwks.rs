//! The keys of one rule: a JSON Web Key Set parsed as Envoy's `jwt_verify_lib` parses it
//! (`Jwks::createFrom`: keys it cannot use are skipped, a set left without keys is invalid), and
//! signature verification as its `verifyJwtWithoutTimeChecking` does it (keys filtered by `kid`
//! and `alg`, the first that verifies wins). The cryptography is `jsonwebtoken`'s, on aws-lc-rs.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::jwt::{Alg, BASE64URL, Jwt};
use crate::status::Status;

/// Why a key set has no usable key (Envoy's JWKS statuses, with our details).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    #[error("Jwks is an invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("Jwks does not have [keys] field")]
    NoKeys,
    #[error("[keys] in Jwks is not an array")]
    BadKeys,
    #[error("Jwks doesn't have any valid public key ({})", .0.join("; "))]
    NoValidKeys(Vec<String>),
}

/// The usable keys of a set, and why the others were skipped (`keys[1]: [kty] is missing`).
pub(crate) struct Jwks {
    keys: Vec<Key>,
    pub(crate) skipped: Vec<String>,
}

struct Key {
    /// Empty when the key has none.
    kid: String,
    /// Empty when the key has none.
    alg: String,
    kind: KeyKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    /// Accepted as Envoy does, but verifies nothing (`jsonwebtoken` has no P-521).
    P521,
}

enum KeyKind {
    Ec(Curve, DecodingKey),
    Rsa(DecodingKey),
    Oct(DecodingKey),
    Ed25519(DecodingKey),
}

impl Jwks {
    /// Parses a key set (`{"keys": [...]}`).
    pub(crate) fn parse(json: &str) -> Result<Jwks, JwksError> {
        let set: Map<String, Value> = serde_json::from_str(json).map_err(JwksError::Json)?;
        let keys = match set.get("keys") {
            None => return Err(JwksError::NoKeys),
            Some(Value::Array(keys)) => keys,
            Some(_) => return Err(JwksError::BadKeys),
        };
        let mut parsed = Jwks {
            keys: Vec::with_capacity(keys.len()),
            skipped: Vec::new(),
        };
        for (i, key) in keys.iter().enumerate() {
            // Envoy skips entries that are not objects without a word.
            let Value::Object(key) = key else { continue };
            match Key::parse(key) {
                Ok(key) => parsed.keys.push(key),
                Err(why) => parsed.skipped.push(format!("keys[{i}]: {why}")),
            }
        }
        if parsed.keys.is_empty() {
            return Err(JwksError::NoValidKeys(parsed.skipped));
        }
        Ok(parsed)
    }

    /// Verifies the signature of `jwt` over `signed` with the first key that matches its `kid`
    /// (when both have one) and `alg` (when the key has one) and verifies it.
    pub(crate) fn verify(&self, jwt: &Jwt<'_>, signed: &[u8]) -> Result<(), Status> {
        let mut matched = false;
        for key in &self.keys {
            if !jwt.kid.is_empty() && !key.kid.is_empty() && key.kid != jwt.kid {
                continue;
            }
            if !key.alg.is_empty() && key.alg != jwt.alg.as_str() {
                continue;
            }
            matched = true;
            let (algorithm, decoding) = match (&key.kind, jwt.alg) {
                (KeyKind::Ec(Curve::P256, k), Alg::Es256) => (Algorithm::ES256, k),
                (KeyKind::Ec(Curve::P384, k), Alg::Es384) => (Algorithm::ES384, k),
                (KeyKind::Rsa(k), Alg::Rs256) => (Algorithm::RS256, k),
                (KeyKind::Rsa(k), Alg::Rs384) => (Algorithm::RS384, k),
                (KeyKind::Rsa(k), Alg::Rs512) => (Algorithm::RS512, k),
                (KeyKind::Rsa(k), Alg::Ps256) => (Algorithm::PS256, k),
                (KeyKind::Rsa(k), Alg::Ps384) => (Algorithm::PS384, k),
                (KeyKind::Rsa(k), Alg::Ps512) => (Algorithm::PS512, k),
                (KeyKind::Oct(k), Alg::Hs256) => (Algorithm::HS256, k),
                (KeyKind::Oct(k), Alg::Hs384) => (Algorithm::HS384, k),
                (KeyKind::Oct(k), Alg::Hs512) => (Algorithm::HS512, k),
                // Envoy tries an Ed25519 key whatever the token's `alg`, and stops at a
                // signature of the wrong length.
                (KeyKind::Ed25519(k), _) => {
                    if jwt.signature.len() != 64 {
                        return Err(Status::JwtEd25519SignatureWrongLength);
                    }
                    (Algorithm::EdDSA, k)
                }
                // A key of another type (or curve) cannot verify this `alg`.
                _ => continue,
            };
            if verifies(algorithm, decoding, signed, &jwt.signature) {
                return Ok(());
            }
        }
        Err(if matched {
            Status::JwtVerificationFail
        } else {
            Status::JwksKidAlgMismatch
        })
    }
}

/// One signature check with `jsonwebtoken`'s aws-lc-rs verifiers.
fn verifies(algorithm: Algorithm, key: &DecodingKey, signed: &[u8], signature: &Vec<u8>) -> bool {
    match (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.verifier_factory)(&algorithm, key) {
        Ok(verifier) => verifier.verify(signed, signature).is_ok(),
        Err(_) => false,
    }
}

impl Key {
    /// One JWK, with Envoy's checks (`extractJwk`); the error is Envoy's message.
    fn parse(jwk: &Map<String, Value>) -> Result<Key, &'static str> {
        let kty = match jwk.get("kty") {
            None => return Err("[kty] is missing in [keys]"),
            Some(Value::String(kty)) => kty.as_str(),
            Some(_) => return Err("[kty] is bad in [keys]"),
        };
        // Envoy ignores a `kid` or `alg` that is not a string.
        let text = |name: &str| jwk.get(name).and_then(Value::as_str).unwrap_or_default();
        let kid = text("kid").to_owned();
        let alg = text("alg").to_owned();
        let kind = match kty {
            "EC" => ec(jwk, &alg)?,
            "RSA" => rsa(jwk, &alg)?,
            "oct" => oct(jwk, &alg)?,
            "OKP" => okp(jwk, &alg)?,
            _ => return Err("[kty] is not supported in [keys]"),
        };
        Ok(Key { kid, alg, kind })
    }
}

/// A required string member: `Err(missing)` when absent, `Err(bad)` when not a string.
fn member<'k>(
    jwk: &'k Map<String, Value>,
    name: &str,
    missing: &'static str,
    bad: &'static str,
) -> Result<&'k str, &'static str> {
    match jwk.get(name) {
        None => Err(missing),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad),
    }
}

fn ec(jwk: &Map<String, Value>, alg: &str) -> Result<KeyKind, &'static str> {
    if !alg.is_empty() && !alg.starts_with("ES") {
        return Err("[alg] is not started with [ES] for an EC key");
    }
    let crv = match jwk.get("crv") {
        None => "",
        Some(Value::String(crv)) => crv.as_str(),
        Some(_) => return Err("[crv] field is not string for an EC key"),
    };
    if !alg.is_empty()
        && !crv.is_empty()
        && !matches!(
            (alg, crv),
            ("ES256", "P-256") | ("ES384", "P-384") | ("ES512", "P-521")
        )
    {
        return Err("[crv] field specified is not compatible with [alg] for an EC key");
    }
    // Neither set: P-256, as Envoy assumes.
    let (curve, size) = if alg == "ES256" || crv == "P-256" || (alg.is_empty() && crv.is_empty()) {
        (Curve::P256, 32)
    } else if alg == "ES384" || crv == "P-384" {
        (Curve::P384, 48)
    } else if alg == "ES512" || crv == "P-521" {
        (Curve::P521, 66)
    } else {
        return Err("[crv] or [alg] field is not supported for an EC key");
    };
    let x = member(
        jwk,
        "x",
        "[x] field is missing for an EC key",
        "[x] field is not string for an EC key",
    )?;
    let y = member(
        jwk,
        "y",
        "[y] field is missing for an EC key",
        "[y] field is not string for an EC key",
    )?;
    let (Ok(x), Ok(y)) = (BASE64URL.decode(x), BASE64URL.decode(y)) else {
        return Err("Jwks EC [x] or [y] field is an invalid Base64.");
    };
    if x.len() != size || y.len() != size {
        return Err("Jwks EC [x] and [y] fields have a parse error.");
    }
    // The uncompressed point, as aws-lc-rs reads a public key.
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(KeyKind::Ec(curve, DecodingKey::from_ec_der(&point)))
}

fn rsa(jwk: &Map<String, Value>, alg: &str) -> Result<KeyKind, &'static str> {
    if !alg.is_empty() && !alg.starts_with("RS") && !alg.starts_with("PS") {
        return Err("[alg] is not started with [RS] or [PS] for an RSA key");
    }
    let n = member(
        jwk,
        "n",
        "[n] field is missing for a RSA key",
        "[n] field is not string for a RSA key",
    )?;
    let e = member(
        jwk,
        "e",
        "[e] field is missing for a RSA key",
        "[e] field is not string for a RSA key",
    )?;
    match (BASE64URL.decode(n), BASE64URL.decode(e)) {
        (Ok(n), Ok(e)) if !n.is_empty() && !e.is_empty() => {
            Ok(KeyKind::Rsa(DecodingKey::from_rsa_raw_components(&n, &e)))
        }
        _ => Err("Jwks RSA [n] or [e] field is missing or has a parse error"),
    }
}

fn oct(jwk: &Map<String, Value>, alg: &str) -> Result<KeyKind, &'static str> {
    if !alg.is_empty() && !matches!(alg, "HS256" | "HS384" | "HS512") {
        return Err("[alg] does not start with [HS] for an HMAC key");
    }
    let k = member(
        jwk,
        "k",
        "[k] field is missing for an HMAC key",
        "[k] field is not string for an HMAC key",
    )?;
    match BASE64URL.decode(k) {
        Ok(k) if !k.is_empty() => Ok(KeyKind::Oct(DecodingKey::from_secret(&k))),
        _ => Err("Jwks Oct key is an invalid Base64"),
    }
}

fn okp(jwk: &Map<String, Value>, alg: &str) -> Result<KeyKind, &'static str> {
    if !alg.is_empty() && alg != "EdDSA" {
        return Err("[alg] is not [EdDSA] for an OKP key");
    }
    let crv = member(
        jwk,
        "crv",
        "[crv] field is missing for an OKP key",
        "[crv] field is not string for an OKP key",
    )?;
    if crv != "Ed25519" {
        return Err("[crv] field is not supported for an OKP key");
    }
    let x = member(
        jwk,
        "x",
        "[x] field is missing for an OKP key",
        "[x] field is not string for an OKP key",
    )?;
    let x = BASE64URL
        .decode(x)
        .map_err(|_| "Jwks OKP [x] field is an invalid Base64.")?;
    if x.len() != 32 {
        return Err("Jwks OKP [x] field is wrong length.");
    }
    Ok(KeyKind::Ed25519(DecodingKey::from_ed_der(&x)))
}
