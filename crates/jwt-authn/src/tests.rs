//! Tokens signed here with keys generated here (aws-lc-rs), checked against what Envoy's
//! `jwt_authn` answers under Istio.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::request::Parts;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use xds::{ClaimToHeader, JwtHeader, JwtRule};

use super::*;

const ISSUER: &str = "https://issuer.example";
const OTHER_ISSUER: &str = "https://other.example";
const NOW: u64 = 1_800_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

/// A signing key and its public JWK.
struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: Option<&'static str>,
    jwk: Value,
}

fn rsa_signer(kid: &'static str) -> Signer {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
    let der = pair.as_der().expect("PKCS#8 encoding");
    let body = STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA PEM");
    signer(key, Algorithm::RS256, kid)
}

fn signer(key: EncodingKey, alg: Algorithm, kid: &'static str) -> Signer {
    let mut jwk = Jwk::from_encoding_key(&key, alg).expect("public JWK");
    jwk.common.key_id = Some(kid.to_owned());
    Signer {
        key,
        alg,
        kid: Some(kid),
        jwk: serde_json::to_value(jwk).expect("JWK as JSON"),
    }
}

/// The issuer's RSA key (`kid` rsa-1).
fn rsa() -> &'static Signer {
    static KEY: OnceLock<Signer> = OnceLock::new();
    KEY.get_or_init(|| rsa_signer("rsa-1"))
}

/// Another RSA key, not in any key set.
fn stranger() -> &'static Signer {
    static KEY: OnceLock<Signer> = OnceLock::new();
    KEY.get_or_init(|| rsa_signer("rsa-2"))
}

fn ec() -> &'static Signer {
    static KEY: OnceLock<Signer> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key");
        let pkcs8 = pair.to_pkcs8v1().expect("PKCS#8 encoding");
        signer(
            EncodingKey::from_ec_der(pkcs8.as_ref()),
            Algorithm::ES256,
            "ec-1",
        )
    })
}

fn ed() -> &'static Signer {
    static KEY: OnceLock<Signer> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = Ed25519KeyPair::generate().expect("Ed25519 key");
        let pkcs8 = pair.to_pkcs8().expect("PKCS#8 encoding");
        Signer {
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            alg: Algorithm::EdDSA,
            kid: Some("ed-1"),
            jwk: json!({
                "kid": "ed-1",
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            }),
        }
    })
}

fn sign_as(signer: &Signer, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(signer.alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &signer.key).expect("signing")
}

fn sign(signer: &Signer, claims: &Value) -> String {
    sign_as(signer, signer.kid, claims)
}

/// Good for an hour, from [`ISSUER`], for alice.
fn claims() -> Value {
    json!({"iss": ISSUER, "sub": "alice", "exp": NOW + 3600, "aud": "httpbin.default"})
}

fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn rule(issuer: &str, jwks: String) -> JwtRule {
    JwtRule {
        issuer: issuer.to_owned(),
        jwks,
        ..JwtRule::default()
    }
}

fn authn(rules: &[JwtRule]) -> JwtAuthn {
    JwtAuthn::new(rules)
}

/// The issuer's rule with its RSA, EC and Ed25519 keys.
fn default_authn() -> JwtAuthn {
    authn(&[rule(ISSUER, jwks(&[rsa(), ec(), ed()]))])
}

fn request(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = http::Request::builder()
        .uri(uri)
        .header("host", "httpbin:8000");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("request").into_parts().0
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn verified(outcome: Outcome) -> Verified {
    match outcome {
        Outcome::Verified(verified) => verified,
        other => panic!("expected a verified token, got {other:?}"),
    }
}

fn denied(outcome: Outcome) -> Denial {
    match outcome {
        Outcome::Denied(denial) => denial,
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// Authenticates `token` sent as `Authorization: Bearer` to the default rule.
fn outcome_of(token: &str) -> Outcome {
    let mut parts = request("/get", &[("authorization", &bearer(token))]);
    default_authn().authenticate(&mut parts, "http", now())
}

fn header<'p>(parts: &'p Parts, name: &str) -> Vec<&'p str> {
    parts
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ASCII header"))
        .collect()
}

#[test]
fn no_rule_and_no_token_pass_untouched() {
    let mut parts = request("/get?x=1", &[("x-jwt-payload", "forged")]);
    let empty = authn(&[]);
    assert!(empty.is_empty());
    assert_eq!(
        empty.authenticate(&mut parts, "http", now()),
        Outcome::NoToken
    );
    assert_eq!(header(&parts, "x-jwt-payload"), ["forged"]);

    let authn = default_authn();
    assert!(!authn.is_empty());
    assert_eq!(
        authn.authenticate(&mut parts, "http", now()),
        Outcome::NoToken
    );
    assert_eq!(parts.uri, "/get?x=1");
}

#[test]
fn valid_token_in_authorization_header() {
    let token = sign(rsa(), &claims());
    let mut parts = request("/get", &[("authorization", &bearer(&token))]);
    let verified = verified(default_authn().authenticate(&mut parts, "http", now()));
    assert_eq!(verified.issuer, ISSUER);
    assert_eq!(verified.subject, "alice");
    assert_eq!(verified.principal, "https://issuer.example/alice");
    assert_eq!(verified.audiences, ["httpbin.default"]);
    assert_eq!(verified.presenter, None);
    assert_eq!(verified.claims, claims());
    // Not forwarded: the whole header goes.
    assert!(parts.headers.get("authorization").is_none());
}

#[test]
fn ec_and_eddsa_tokens_verify() {
    verified(outcome_of(&sign(ec(), &claims())));
    verified(outcome_of(&sign(ed(), &claims())));
}

#[test]
fn valid_token_in_access_token_param() {
    let token = sign(rsa(), &claims());
    let mut parts = request(&format!("/get?a=1&access_token={token}&b=%2F"), &[]);
    verified(default_authn().authenticate(&mut parts, "http", now()));
    assert_eq!(parts.uri, "/get?a=1&b=%2F");

    let mut parts = request(&format!("/get?access_token={token}"), &[]);
    verified(default_authn().authenticate(&mut parts, "http", now()));
    assert_eq!(parts.uri, "/get");
}

#[test]
fn valid_token_in_custom_header_with_prefix() {
    let mut with_header = rule(ISSUER, jwks(&[rsa()]));
    with_header.from_headers = vec![JwtHeader {
        name: "X-Jwt-Assertion".to_owned(),
        prefix: "Token ".to_owned(),
    }];
    let authn = authn(&[with_header]);
    let token = sign(rsa(), &claims());

    let mut parts = request("/get", &[("x-jwt-assertion", &format!("Token {token}"))]);
    verified(authn.authenticate(&mut parts, "http", now()));
    assert!(parts.headers.get("x-jwt-assertion").is_none());

    // The default locations are no longer looked at.
    let mut parts = request("/get", &[("authorization", &bearer("garbage"))]);
    assert_eq!(
        authn.authenticate(&mut parts, "http", now()),
        Outcome::NoToken
    );
    // A value without the prefix is not a token.
    let mut parts = request("/get", &[("x-jwt-assertion", &token)]);
    assert_eq!(
        authn.authenticate(&mut parts, "http", now()),
        Outcome::NoToken
    );
    // Trailing junk after the token makes it fail (envoyproxy/envoy#27877).
    let mut parts = request("/get", &[("x-jwt-assertion", &format!("Token {token} x"))]);
    let denial = denied(authn.authenticate(&mut parts, "http", now()));
    assert_eq!(denial.body, "Jwt signature is an invalid Base64url encoded");
}

#[test]
fn valid_token_in_cookie_stays_there() {
    let mut with_cookie = rule(ISSUER, jwks(&[rsa()]));
    with_cookie.from_cookies = vec!["session".to_owned()];
    let authn = authn(&[with_cookie]);
    let token = sign(rsa(), &claims());
    let cookie = format!("theme=dark; session=\"{token}\"; other=1");
    let mut parts = request("/get", &[("cookie", &cookie)]);
    let verified = verified(authn.authenticate(&mut parts, "http", now()));
    assert_eq!(verified.subject, "alice");
    assert_eq!(header(&parts, "cookie"), [cookie.as_str()]);
}

#[test]
fn expired_and_not_yet_valid_honour_60s_of_skew() {
    let mut late = claims();
    late["exp"] = json!(NOW - 30);
    verified(outcome_of(&sign(rsa(), &late)));

    late["exp"] = json!(NOW - 61);
    let token = sign(rsa(), &late);
    let mut parts = request("/get?q=1", &[("authorization", &bearer(&token))]);
    let denial = denied(default_authn().authenticate(&mut parts, "http", now()));
    assert_eq!(
        denial,
        Denial {
            status: http::StatusCode::UNAUTHORIZED,
            body: "Jwt is expired",
            details: "jwt_authn_access_denied{Jwt_is_expired}".to_owned(),
            www_authenticate:
                "Bearer realm=\"http://httpbin:8000/get?q=1\", error=\"invalid_token\"".to_owned(),
        }
    );
    // A denied request keeps its token (it is not forwarded anyway).
    assert!(parts.headers.get("authorization").is_some());

    let mut early = claims();
    early["nbf"] = json!(NOW + 30);
    verified(outcome_of(&sign(rsa(), &early)));
    early["nbf"] = json!(NOW + 61);
    let denial = denied(outcome_of(&sign(rsa(), &early)));
    assert_eq!(denial.body, "Jwt not yet valid");
    assert_eq!(denial.details, "jwt_authn_access_denied{Jwt_not_yet_valid}");

    // No `exp`: never expires.
    let mut forever = claims();
    forever.as_object_mut().expect("object").remove("exp");
    verified(outcome_of(&sign(rsa(), &forever)));
}

#[test]
fn wrong_issuer_is_not_configured() {
    let mut other = claims();
    other["iss"] = json!(OTHER_ISSUER);
    let denial = denied(outcome_of(&sign(rsa(), &other)));
    assert_eq!(denial.status, http::StatusCode::UNAUTHORIZED);
    assert_eq!(denial.body, "Jwt issuer is not configured");
    assert_eq!(
        denial.details,
        "jwt_authn_access_denied{Jwt_issuer_is_not_configured}"
    );

    // No `iss` at all.
    let mut none = claims();
    none.as_object_mut().expect("object").remove("iss");
    assert_eq!(
        denied(outcome_of(&sign(rsa(), &none))).body,
        "Jwt issuer is not configured"
    );
}

#[test]
fn audiences() {
    let mut with_audiences = rule(ISSUER, jwks(&[rsa()]));
    with_audiences.audiences = vec!["https://httpbin.default/".to_owned(), "other".to_owned()];
    let authn = authn(&[with_audiences]);
    let check = |aud: Value| {
        let mut claims = claims();
        claims["aud"] = aud;
        let mut parts = request("/get", &[("authorization", &bearer(&sign(rsa(), &claims)))]);
        authn.authenticate(&mut parts, "http", now())
    };
    // `http(s)://` and a trailing `/` do not count, on either side.
    verified(check(json!("httpbin.default")));
    verified(check(json!("http://httpbin.default")));
    verified(check(json!(["nope", "other/"])));

    let denial = denied(check(json!("nope")));
    assert_eq!(denial.status, http::StatusCode::FORBIDDEN);
    assert_eq!(denial.body, "Audiences in Jwt are not allowed");
    assert_eq!(
        denial.details,
        "jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}"
    );
    // No `aud` when the rule wants one.
    let mut parts = request(
        "/get",
        &[(
            "authorization",
            &bearer(&sign(
                rsa(),
                &json!({"iss": ISSUER, "sub": "a", "exp": NOW + 60}),
            )),
        )],
    );
    denied(authn.authenticate(&mut parts, "http", now()));
}

#[test]
fn no_audiences_configured_accepts_any() {
    let mut claims = claims();
    claims["aud"] = json!(["anything", "at-all"]);
    let verified = verified(outcome_of(&sign(rsa(), &claims)));
    assert_eq!(verified.audiences, ["anything", "at-all"]);
}

#[test]
fn bad_signature_fails_verification() {
    // Signed by a key the issuer does not have, under the issuer's key id.
    let forged = sign_as(stranger(), Some("rsa-1"), &claims());
    assert_eq!(denied(outcome_of(&forged)).body, "Jwt verification fails");

    // A payload swapped under a valid signature.
    let good = sign(rsa(), &claims());
    let mut sections: Vec<&str> = good.split('.').collect();
    let mut evil = claims();
    evil["sub"] = json!("mallory");
    let payload = URL_SAFE_NO_PAD.encode(evil.to_string());
    sections[1] = &payload;
    assert_eq!(
        denied(outcome_of(&sections.join("."))).body,
        "Jwt verification fails"
    );
}

#[test]
fn kid_picks_the_key_or_every_key_is_tried() {
    let denial = denied(outcome_of(&sign_as(rsa(), Some("unknown"), &claims())));
    assert_eq!(
        denial.body,
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
    assert_eq!(
        denial.details,
        "jwt_authn_access_denied{Jwks_doesn't_have_key_to_match_kid_or_alg_from_Jwt}"
    );
    // Without a kid every key of a compatible algorithm is tried.
    verified(outcome_of(&sign_as(rsa(), None, &claims())));
    verified(outcome_of(&sign_as(ec(), None, &claims())));
    verified(outcome_of(&sign_as(ed(), None, &claims())));
    // Envoy tries an Ed25519 key whatever the token's `alg`, and gives up on a signature of
    // another length than Ed25519's.
    let ec_and_ed = authn(&[rule(ISSUER, jwks(&[ec(), ed()]))]);
    let mut parts = request(
        "/get",
        &[("authorization", &bearer(&sign_as(rsa(), None, &claims())))],
    );
    assert_eq!(
        denied(ec_and_ed.authenticate(&mut parts, "http", now())).body,
        "Jwt ED25519 signature is wrong length"
    );
    // The key's `alg` must match the token's: RS384 matches no key of the set (RS256, ES256).
    let mut header = Header::new(Algorithm::RS384);
    header.kid = Some("rsa-1".to_owned());
    let rs384 = jsonwebtoken::encode(&header, &claims(), &rsa().key).expect("signing");
    let authn = authn(&[rule(ISSUER, jwks(&[rsa(), ec()]))]);
    let mut parts = request("/get", &[("authorization", &bearer(&rs384))]);
    assert_eq!(
        denied(authn.authenticate(&mut parts, "http", now())).body,
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
}

#[test]
fn malformed_tokens() {
    let expect = |token: &str, body: &str| {
        assert_eq!(denied(outcome_of(token)).body, body, "token {token:?}");
    };
    let bad_format =
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections";
    expect("abc", bad_format);
    expect("a.b", bad_format);
    expect("a..b", bad_format);
    expect("a.b.c.d", bad_format);
    // (What cannot start a token is skipped after `Bearer `, so the junk is not first.)
    expect("a!!.e30.c2ln", "Jwt header is an invalid Base64url encoded");
    let header = |json: &str| URL_SAFE_NO_PAD.encode(json);
    expect(
        &format!("{}.e30.c2ln", header("[1]")),
        "Jwt header is an invalid JSON",
    );
    expect(
        &format!("{}.e30.c2ln", header(r#"{"typ":"JWT"}"#)),
        "Jwt header [alg] field is required and must be a string",
    );
    expect(
        &format!("{}.e30.c2ln", header(r#"{"alg":"none"}"#)),
        "Jwt header [alg] is not supported",
    );
    expect(
        &format!("{}.e30.c2ln", header(r#"{"alg":"RS256","kid":1}"#)),
        "Jwt header [kid] field is not a string",
    );
    let rs256 = header(r#"{"alg":"RS256"}"#);
    expect(
        &format!("{rs256}.{}.c2ln", header(r#"{"iss":1}"#)),
        "Jwt payload [iss] field is not a string",
    );
    expect(
        &format!("{rs256}.{}.c2ln", header(r#"{"exp":"soon"}"#)),
        "Jwt payload [exp] field is not an integer",
    );
    expect(
        &format!("{rs256}.{}.c2ln", header(r#"{"exp":-1}"#)),
        "Jwt payload [exp] field is not a positive 64 bit integer",
    );
    expect(
        &format!("{rs256}.{}.c2ln", header(r#"{"aud":[1]}"#)),
        "Jwt payload [aud] field is not a string or string list",
    );
    expect(
        &format!("{rs256}.{}.!!", header(r#"{"iss":"x"}"#)),
        "Jwt signature is an invalid Base64url encoded",
    );
    // `?access_token=` with nothing is a token, and a bad one.
    let mut parts = request("/get?access_token=", &[]);
    assert_eq!(
        denied(default_authn().authenticate(&mut parts, "http", now())).body,
        bad_format
    );
}

#[test]
fn empty_jwks_fails_every_token() {
    let authn = authn(&[rule(ISSUER, String::new())]);
    for token in [sign(rsa(), &claims()), sign(ec(), &claims())] {
        let mut parts = request("/get", &[("authorization", &bearer(&token))]);
        assert_eq!(
            denied(authn.authenticate(&mut parts, "http", now())).body,
            "Jwt verification fails"
        );
    }
    // The issuer is still checked first.
    let mut other = claims();
    other["iss"] = json!(OTHER_ISSUER);
    let mut parts = request("/get", &[("authorization", &bearer(&sign(rsa(), &other)))]);
    assert_eq!(
        denied(authn.authenticate(&mut parts, "http", now())).body,
        "Jwt issuer is not configured"
    );
}

#[test]
fn bad_jwks_fails_every_token_and_bad_keys_are_skipped() {
    let token = sign(rsa(), &claims());
    for bad in [
        "not json",
        r#"{"nokeys": []}"#,
        r#"{"keys": {}}"#,
        r#"{"keys": []}"#,
        r#"{"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}, {"kty": "XYZ"}, 7]}"#,
    ] {
        let authn = authn(&[rule(ISSUER, bad.to_owned())]);
        let mut parts = request("/get", &[("authorization", &bearer(&token))]);
        let denial = denied(authn.authenticate(&mut parts, "http", now()));
        assert_eq!(
            denial.body, "Jwks doesn't have any valid public key",
            "{bad}"
        );
    }
    // A bad key beside a good one: the good one verifies.
    let mixed = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA"}, rsa().jwk]});
    let authn = authn(&[rule(ISSUER, mixed.to_string())]);
    let mut parts = request("/get", &[("authorization", &bearer(&token))]);
    verified(authn.authenticate(&mut parts, "http", now()));
}

#[test]
fn forward_original_token() {
    let token = sign(rsa(), &claims());
    let mut keep = rule(ISSUER, jwks(&[rsa()]));
    keep.forward_original_token = true;
    let keep = authn(&[keep]);

    let mut parts = request(
        &format!("/get?access_token={token}"),
        &[("authorization", &bearer(&token))],
    );
    verified(keep.authenticate(&mut parts, "http", now()));
    assert_eq!(header(&parts, "authorization"), [bearer(&token).as_str()]);
    assert_eq!(
        parts.uri.query(),
        Some(format!("access_token={token}").as_str())
    );

    // Off (the default): both locations are cleared.
    let mut parts = request(
        &format!("/get?access_token={token}"),
        &[("authorization", &bearer(&token))],
    );
    verified(default_authn().authenticate(&mut parts, "http", now()));
    assert!(parts.headers.get("authorization").is_none());
    assert_eq!(parts.uri, "/get");
}

#[test]
fn output_payload_to_header_is_the_unpadded_payload() {
    let mut with_output = rule(ISSUER, jwks(&[rsa()]));
    with_output.output_payload_to_header = "X-Jwt-Payload".to_owned();
    let authn = authn(&[with_output]);
    // Payloads of three lengths mod 3, so that padding would show if there were any.
    for extra in ["", "a", "ab"] {
        let mut claims = claims();
        claims["x"] = json!(extra);
        let token = sign(rsa(), &claims);
        let payload = token.split('.').nth(1).expect("payload section");
        let mut parts = request(
            "/get",
            &[
                ("authorization", &bearer(&token)),
                ("x-jwt-payload", "forged"),
            ],
        );
        verified(authn.authenticate(&mut parts, "http", now()));
        assert_eq!(header(&parts, "x-jwt-payload"), [payload]);
        assert!(!payload.contains('='));
        let decoded: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url"))
                .expect("JSON");
        assert_eq!(decoded, claims);
    }
    // A client cannot set it, token or not.
    let mut parts = request("/get", &[("x-jwt-payload", "forged")]);
    assert_eq!(
        authn.authenticate(&mut parts, "http", now()),
        Outcome::NoToken
    );
    assert!(parts.headers.get("x-jwt-payload").is_none());
}

#[test]
fn output_claim_to_headers_as_envoy_formats_them() {
    let mut with_claims = rule(ISSUER, jwks(&[rsa()]));
    with_claims.output_claim_to_headers = [
        ("x-sub", "sub"),
        ("x-int", "int"),
        ("x-float", "float"),
        ("x-negative", "negative"),
        ("x-bool", "admin"),
        ("x-object", "realm"),
        ("x-list", "groups"),
        ("x-nested", "realm.name"),
        ("x-nested-number", "realm.level"),
        ("x-empty", "empty"),
        ("x-null", "nothing"),
        ("x-missing", "missing"),
        ("x-deep-missing", "sub.inner"),
    ]
    .into_iter()
    .map(|(header, claim)| ClaimToHeader {
        header: header.to_owned(),
        claim: claim.to_owned(),
    })
    .collect();
    let authn = authn(&[with_claims]);
    let mut claims = claims();
    let extra = json!({
        "int": 42,
        "float": 1.5,
        "negative": -3,
        "admin": true,
        "realm": {"name": "prod", "level": 7},
        "groups": ["a", "b"],
        "empty": "",
        "nothing": null,
    });
    for (k, v) in extra.as_object().expect("object") {
        claims[k] = v.clone();
    }
    let mut parts = request(
        "/get",
        &[
            ("authorization", &bearer(&sign(rsa(), &claims))),
            ("x-sub", "forged"),
        ],
    );
    verified(authn.authenticate(&mut parts, "http", now()));
    assert_eq!(header(&parts, "x-sub"), ["alice"]);
    assert_eq!(header(&parts, "x-int"), ["42"]);
    assert_eq!(header(&parts, "x-float"), ["1.500000"]);
    assert_eq!(header(&parts, "x-negative"), ["-3.000000"]);
    assert_eq!(header(&parts, "x-bool"), ["true"]);
    assert_eq!(
        header(&parts, "x-object"),
        [STANDARD.encode(r#"{"level":7,"name":"prod"}"#).as_str()]
    );
    assert_eq!(
        header(&parts, "x-list"),
        [STANDARD.encode(r#"["a","b"]"#).as_str()]
    );
    assert_eq!(header(&parts, "x-nested"), ["prod"]);
    assert_eq!(header(&parts, "x-nested-number"), ["7"]);
    for absent in ["x-empty", "x-null", "x-missing", "x-deep-missing"] {
        assert!(parts.headers.get(absent).is_none(), "{absent}");
    }
}

#[test]
fn claims_keep_nesting_and_split_scopes() {
    let mut claims = claims();
    claims["realm_access"] = json!({"roles": ["admin", "user"], "meta": {"tier": 2}});
    claims["scope"] = json!("read  write");
    claims["permission"] = json!("");
    claims["azp"] = json!("frontend");
    let verified = verified(outcome_of(&sign(rsa(), &claims)));
    assert_eq!(verified.claims["realm_access"]["roles"][1], "user");
    assert_eq!(verified.claims["realm_access"]["meta"]["tier"], 2);
    assert_eq!(verified.claims["scope"], json!(["read", "write"]));
    assert_eq!(verified.claims["permission"], json!(""));
    assert_eq!(verified.presenter.as_deref(), Some("frontend"));
}

#[test]
fn two_tokens_for_one_rule_must_both_verify() {
    let alice = sign(rsa(), &claims());
    let mut bob = claims();
    bob["sub"] = json!("bob");
    let bob = sign(rsa(), &bob);
    let mut parts = request(
        &format!("/get?access_token={bob}"),
        &[("authorization", &bearer(&alice))],
    );
    // The query parameter was found last, so it is verified first; the header's token last.
    let verified = verified(default_authn().authenticate(&mut parts, "http", now()));
    assert_eq!(verified.subject, "alice");
    assert!(parts.headers.get("authorization").is_none());
    assert_eq!(parts.uri, "/get");

    let mut expired = claims();
    expired["exp"] = json!(NOW - 3600);
    let mut parts = request(
        &format!("/get?access_token={}", sign(rsa(), &expired)),
        &[("authorization", &bearer(&alice))],
    );
    assert_eq!(
        denied(default_authn().authenticate(&mut parts, "http", now())).body,
        "Jwt is expired"
    );
    // Each value of a header is a token of its own.
    let mut parts = request(
        "/get",
        &[
            ("authorization", &bearer(&alice)),
            ("authorization", "Bearer x.y.z"),
        ],
    );
    denied(default_authn().authenticate(&mut parts, "http", now()));
}

#[test]
fn several_rules_the_issuer_picks_the_rule() {
    let other = rule(OTHER_ISSUER, jwks(&[ec()]));
    let authn = authn(&[rule(ISSUER, jwks(&[rsa()])), other]);
    let mut from_other = claims();
    from_other["iss"] = json!(OTHER_ISSUER);

    let mut parts = request(
        "/get",
        &[("authorization", &bearer(&sign(ec(), &from_other)))],
    );
    let verified = verified(authn.authenticate(&mut parts, "http", now()));
    assert_eq!(verified.principal, "https://other.example/alice");

    let mut parts = request(
        "/get",
        &[("authorization", &bearer(&sign(rsa(), &claims())))],
    );
    verified_issuer(authn.authenticate(&mut parts, "http", now()), ISSUER);

    // Nobody's issuer.
    let mut stranger = claims();
    stranger["iss"] = json!("https://nobody.example");
    let mut parts = request(
        "/get",
        &[("authorization", &bearer(&sign(rsa(), &stranger)))],
    );
    assert_eq!(
        denied(authn.authenticate(&mut parts, "http", now())).body,
        "Jwt issuer is not configured"
    );

    // A real error wins over "not configured" from the other rule.
    let mut expired = from_other.clone();
    expired["exp"] = json!(NOW - 3600);
    let mut parts = request("/get", &[("authorization", &bearer(&sign(ec(), &expired)))]);
    assert_eq!(
        denied(authn.authenticate(&mut parts, "http", now())).body,
        "Jwt is expired"
    );
}

fn verified_issuer(outcome: Outcome, issuer: &str) {
    assert_eq!(verified(outcome).issuer, issuer);
}

#[test]
fn token_in_another_rules_location_is_not_configured() {
    let mut first = rule(ISSUER, jwks(&[rsa()]));
    first.from_headers = vec![JwtHeader {
        name: "x-first".to_owned(),
        prefix: String::new(),
    }];
    let mut second = rule(OTHER_ISSUER, jwks(&[ec()]));
    second.from_headers = vec![JwtHeader {
        name: "x-second".to_owned(),
        prefix: String::new(),
    }];
    let authn = authn(&[first, second]);
    // ISSUER's token in the second rule's header.
    let mut parts = request("/get", &[("x-second", &sign(rsa(), &claims()))]);
    assert_eq!(
        denied(authn.authenticate(&mut parts, "http", now())).body,
        "Jwt issuer is not configured"
    );
    // In its own rule's header it verifies.
    let mut parts = request("/get", &[("x-first", &sign(rsa(), &claims()))]);
    verified_issuer(authn.authenticate(&mut parts, "http", now()), ISSUER);

    // Envoy stops at the first rule that verifies: a bad token in the second rule's header is
    // neither checked nor removed.
    let mut parts = request(
        "/get",
        &[
            ("x-first", &sign(rsa(), &claims())),
            ("x-second", "garbage"),
        ],
    );
    verified_issuer(authn.authenticate(&mut parts, "http", now()), ISSUER);
    assert_eq!(header(&parts, "x-second"), ["garbage"]);
    assert!(parts.headers.get("x-first").is_none());
}

#[test]
fn cors_preflight_passes_unauthenticated() {
    let mut parts = http::Request::builder()
        .method("OPTIONS")
        .uri("/get")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("authorization", "Bearer garbage")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    assert_eq!(
        default_authn().authenticate(&mut parts, "http", now()),
        Outcome::Preflight
    );
    // An OPTIONS that is not a preflight is authenticated.
    let mut parts = http::Request::builder()
        .method("OPTIONS")
        .uri("/get")
        .header("authorization", "Bearer garbage")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    denied(default_authn().authenticate(&mut parts, "http", now()));
}

#[test]
fn realm_is_the_request_uri_cut_at_256_bytes() {
    let long = format!("/{}", "p".repeat(300));
    let mut parts = request(&long, &[("authorization", "Bearer garbage")]);
    let denial = denied(default_authn().authenticate(&mut parts, "http", now()));
    let path = &long[..256];
    assert_eq!(
        denial.www_authenticate,
        format!("Bearer realm=\"http://httpbin:8000{path}\", error=\"invalid_token\"")
    );
    // An absolute URI (HTTP/2's :authority) gives the host; the scheme is the caller's.
    let mut parts = request(
        "https://httpbin.default:8000/status/200",
        &[("authorization", "Bearer garbage")],
    );
    let denial = denied(default_authn().authenticate(&mut parts, "https", now()));
    assert_eq!(
        denial.www_authenticate,
        "Bearer realm=\"https://httpbin.default:8000/status/200\", error=\"invalid_token\""
    );
}

#[test]
fn hmac_keys_verify_hs_tokens() {
    let secret = b"a secret of the issuer, 32 bytes";
    let jwks = json!({"keys": [{"kty": "oct", "kid": "hs", "k": URL_SAFE_NO_PAD.encode(secret)}]});
    let authn = authn(&[rule(ISSUER, jwks.to_string())]);
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("hs".to_owned());
    let token = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(secret))
        .expect("signing");
    let mut parts = request("/get", &[("authorization", &bearer(&token))]);
    verified(authn.authenticate(&mut parts, "http", now()));

    let forged = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(b"guess"))
        .expect("signing");
    let mut parts = request("/get", &[("authorization", &bearer(&forged))]);
    assert_eq!(
        denied(authn.authenticate(&mut parts, "http", now())).body,
        "Jwt verification fails"
    );
}

#[test]
fn rule_without_issuer_accepts_any_issuer() {
    let authn = authn(&[rule("", jwks(&[rsa()]))]);
    let mut other = claims();
    other["iss"] = json!(OTHER_ISSUER);
    let mut parts = request("/get", &[("authorization", &bearer(&sign(rsa(), &other)))]);
    verified_issuer(authn.authenticate(&mut parts, "http", now()), OTHER_ISSUER);
}

#[test]
fn bad_header_names_in_the_rules_are_left_out() {
    let mut odd = rule(ISSUER, jwks(&[rsa()]));
    odd.from_headers = vec![JwtHeader {
        name: "bad header".to_owned(),
        prefix: String::new(),
    }];
    odd.output_payload_to_header = "no\nway".to_owned();
    odd.output_claim_to_headers = vec![
        ClaimToHeader {
            header: "(x)".to_owned(),
            claim: "sub".to_owned(),
        },
        ClaimToHeader {
            header: "x-sub".to_owned(),
            claim: "sub".to_owned(),
        },
    ];
    let authn = authn(&[odd]);
    let mut parts = request(
        "/get",
        &[("authorization", &bearer(&sign(rsa(), &claims())))],
    );
    // `fromHeaders` is set, so `Authorization` is not a location of this rule.
    assert_eq!(
        authn.authenticate(&mut parts, "http", now()),
        Outcome::NoToken
    );
    assert!(parts.headers.get("authorization").is_some());
}

#[test]
fn shared_between_workers() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<JwtAuthn>();
    send_sync::<Outcome>();
}
