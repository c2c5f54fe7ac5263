//! Istio's security tasks under `ama up`, with Istio's own YAML (`tests/fixtures/authz/`):
//!
//! 1. **Authorization for HTTP traffic** (bookinfo in `default`, the `sleep` client there):
//!    `allow-nothing` → productpage answers `403 RBAC: access denied`; `productpage-viewer` →
//!    GET answers but productpage's calls to details and reviews get 403 ("Error fetching
//!    product details/reviews"), and POST is still 403; `details-viewer` + `reviews-viewer` →
//!    details and reviews answer, reviews v2/v3's call to ratings gets 403 ("Ratings service
//!    currently unavailable"); `ratings-viewer` → every call answers.
//! 2. **JWT Token** (httpbin and sleep applied into `foo` with `ama apply -n foo`, as the task's
//!    `kubectl apply -n foo`): `jwt-example` → an invalid token is 401, no token 200;
//!    `require-jwt` → the task's token 200, no token 403; `require-jwt` with the `groups` claim →
//!    a token with `groups: [group1, group2]` 200, the plain token 403. Also, from the End-user
//!    authentication task: an expired token is 401. The tokens are signed by a key the test
//!    makes (ES256); its key set is served by a pod of the mesh (Service `jwks.jwks`, no
//!    sidecar) and fetched by `ama discovery` from the RequestAuthentication's `jwksUri` naming
//!    that Service, as istiod does.
//!
//! 3. **Fail closed** (ours): a DENY policy with a condition Ama cannot evaluate is reported by
//!    `ama apply` as an error naming the object and field, and denies every request it could
//!    cover, naming itself in the access log's `response_code_details`.
//!
//! "Authorization on ingress" waits for the ingress gateway.

#[path = "traffic/common.rs"]
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::Traffic;
use e2e::{Scratch, root_or_skip, venv_tool, wait_for};
use serde_json::{Value, json};

const TEST: &str = "istio_security_tasks_under_ama_up";
const ISSUER: &str = "testing@secure.istio.io";

/// A signing key of the test's own and its JSON Web Key Set.
struct Signer {
    key: jsonwebtoken::EncodingKey,
    jwks: Value,
}

impl Signer {
    fn new() -> Signer {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate a P-256 key");
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())
            .expect("the key as a JWT signing key");
        // The uncompressed point: 0x04, x, y.
        let point = pair.public_key_raw();
        assert_eq!(point.len(), 65, "an uncompressed P-256 point");
        let jwks = json!({"keys": [{
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": "ama-test",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]});
        Signer { key, jwks }
    }

    /// A token with `claims` (iss and sub are the task's unless `claims` sets them).
    fn token(&self, claims: Value) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let mut body =
            json!({"iss": ISSUER, "sub": ISSUER, "iat": now, "exp": 4685989700u64, "foo": "bar"});
        for (k, v) in claims.as_object().expect("claims are an object") {
            body[k] = v.clone();
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("ama-test".into());
        jsonwebtoken::encode(&header, &body, &self.key).expect("sign the token")
    }
}

#[test]
fn istio_security_tasks_under_ama_up() {
    if !root_or_skip(TEST) {
        return;
    }
    let python = venv_tool(TEST, "python");
    venv_tool(TEST, "gunicorn");
    let signer = Signer::new();
    let scratch = Scratch::new("sec");
    let jwks_dir = scratch.path().join("jwks");
    std::fs::create_dir_all(&jwks_dir).expect("create the key set's directory");
    std::fs::write(jwks_dir.join("jwks.json"), signer.jwks.to_string()).expect("write the JWKS");
    let jwks_dir = jwks_dir.display().to_string();
    let mut t = Traffic::start_in(
        scratch,
        "sec",
        &python,
        &[
            "namespace.yaml",
            "authz/bookinfo.yaml",
            "sleep.yaml",
            "authz/namespaces.yaml",
        ],
        8,
        &[("@JWKS_DIR@", &jwks_dir)],
    );
    for url in [
        "http://productpage:9080/",
        "http://details:9080/",
        "http://reviews:9080/",
        "http://ratings:9080/",
    ] {
        t.wait_answers(url);
    }

    authz_http(&mut t);
    jwt_token(&mut t, &signer);
    t.finish();
}

/// One page of bookinfo as the `sleep` client gets it: productpage's status, and the statuses
/// of its calls to details and reviews and of reviews' call to ratings (None when reviews v1
/// answered, which calls no ratings, or when a call was not made).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Page {
    productpage: u16,
    details: Option<u64>,
    reviews: Option<u64>,
    ratings: Option<u64>,
}

fn page(t: &Traffic, method: &str) -> (Page, common::Curl) {
    let got = t.curl(&["-X", method, "http://productpage:9080/chain/productpage"]);
    let calls = got.body["calls"].as_array().cloned().unwrap_or_default();
    let status = |c: Option<&Value>| c.and_then(|c| c["status"].as_u64());
    let reviews = calls.get(1);
    let page = Page {
        productpage: got.status,
        details: status(calls.first()),
        reviews: status(reviews),
        ratings: status(
            reviews
                .and_then(|r| r["calls"].as_array())
                .and_then(|c| c.first()),
        ),
    };
    (page, got)
}

/// `n` GETs of the page, tallied.
fn pages(t: &Traffic, n: usize) -> std::collections::BTreeMap<Page, usize> {
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        *out.entry(page(t, "GET").0).or_insert(0) += 1;
    }
    out
}

fn authz_http(t: &mut Traffic) {
    t.scenario("authz-http: before any policy every call answers", |t| {
        let seen = pages(t, 12);
        assert!(
            seen.keys().all(|p| p.productpage == 200
                && p.details == Some(200)
                && p.reviews == Some(200)
                && p.ratings.is_none_or(|r| r == 200)),
            "{seen:?}"
        );
        format!("{seen:?}")
    });

    t.scenario(
        "authz-http: allow-nothing → productpage answers 403 RBAC: access denied",
        |t| {
            t.apply("authz/allow-nothing.yaml", None);
            let (p, got) = page(t, "GET");
            assert_eq!(p.productpage, 403, "{got:?}");
            assert_eq!(got.raw, "RBAC: access denied", "{got:?}");
            let pod = t.pod("productpage-v1");
            let denied: Vec<Value> = t
                .access_log(&pod)
                .into_iter()
                .filter(|l| l["response_code"] == 403 || l["response_code"] == "403")
                .collect();
            let last = denied.last().cloned().unwrap_or_default();
            assert_eq!(
                last["response_code_details"], "rbac_access_denied_matched_policy[none]",
                "productpage's inbound access log: {last}"
            );
            format!("{p:?}, productpage's sidecar logged {last}")
        },
    );

    t.scenario(
        "authz-http: productpage-viewer → GET answers, details and reviews 403 (\"Error fetching product details/reviews\"), POST 403",
        |t| {
            t.apply("authz/productpage-viewer.yaml", None);
            let seen = pages(t, 6);
            let want = Page {
                productpage: 200,
                details: Some(403),
                reviews: Some(403),
                ratings: None,
            };
            assert_eq!(seen.keys().collect::<Vec<_>>(), [&want], "{seen:?}");
            let (post, got) = page(t, "POST");
            assert_eq!(post.productpage, 403, "POST: {got:?}");
            format!("GET: {seen:?}; POST: {}", post.productpage)
        },
    );

    t.scenario(
        "authz-http: details-viewer + reviews-viewer → details and reviews answer, ratings 403 (\"Ratings service currently unavailable\")",
        |t| {
            t.apply("authz/details-viewer.yaml", None);
            t.apply("authz/reviews-viewer.yaml", None);
            let seen = pages(t, 12);
            assert!(
                seen.keys().all(|p| p.productpage == 200
                    && p.details == Some(200)
                    && p.reviews == Some(200)
                    && p.ratings.is_none_or(|r| r == 403)),
                "{seen:?}"
            );
            assert!(
                seen.keys().any(|p| p.ratings == Some(403)),
                "reviews v2 or v3 answered at least once in 12: {seen:?}"
            );
            // The sleep client's own call to details is not productpage's: still denied.
            let direct = t.curl(&["http://details:9080/details/0"]);
            assert_eq!(direct.status, 403, "sleep → details: {direct:?}");
            format!("{seen:?}; sleep → details directly: {}", direct.status)
        },
    );

    t.scenario("authz-http: ratings-viewer → every call answers", |t| {
        t.apply("authz/ratings-viewer.yaml", None);
        let seen = pages(t, 12);
        assert!(
            seen.keys().all(|p| p.productpage == 200
                && p.details == Some(200)
                && p.reviews == Some(200)
                && p.ratings.is_none_or(|r| r == 200)),
            "{seen:?}"
        );
        assert!(
            seen.keys().any(|p| p.ratings == Some(200)),
            "reviews v2 or v3 answered at least once in 12: {seen:?}"
        );
        format!("{seen:?}")
    });
}

fn jwt_token(t: &mut Traffic, signer: &Signer) {
    // The task's workloads, applied as it does: `kubectl apply -f httpbin.yaml -n foo`.
    for file in ["httpbin.yaml", "sleep.yaml"] {
        let path = t.scratch.path().join(format!("foo-{file}"));
        std::fs::write(&path, common::fixture_text(file, &t.python)).expect("write the sample");
        let out = t
            .mesh
            .ok(&["apply", "-n", "foo", "-f", path.to_str().expect("utf-8")]);
        eprintln!("ama apply -n foo -f {file}: {}", out.trim());
    }
    let pods = t.mesh.wait_ready(10);
    let in_ns = |ns: &str, prefix: &str| {
        pods.iter()
            .find(|p| p["metadata"]["namespace"] == ns && e2e::up::name(p).starts_with(prefix))
            .map(e2e::up::name)
            .unwrap_or_else(|| panic!("a {prefix}… pod in {ns}"))
    };
    let sleep_foo = in_ns("foo", "sleep-");
    // The key set's server by its Service's name, as a cluster's istiod reaches it.
    let jwks_uri = "http://jwks.jwks.svc.cluster.local:8080/jwks.json".to_string();
    wait_for(
        "sleep.foo → httpbin.foo to answer 200",
        Duration::from_secs(30),
        || (call(t, &sleep_foo, None).0 == 200).then_some(()),
    );

    let token = signer.token(json!({}));
    let token_group =
        signer.token(json!({"groups": ["group1", "group2"], "scope": ["scope1", "scope2"]}));
    let expired = signer.token(json!({"exp": 1_000_000_000u64}));

    t.scenario(
        "authz-jwt: jwt-example → invalid token 401, no token 200, the task's token 200, expired 401",
        |t| {
            let yaml = common::fixture_text("authz/jwt-example.yaml", &t.python)
                .replace("@JWKS_URI@", &jwks_uri);
            t.apply("jwt-example.yaml", Some(&yaml));
            // Discovery fetches the key set, then pushes it: wait until a good token passes.
            wait_for(
                "the fetched key set to verify the task's token",
                Duration::from_secs(30),
                || (call(t, &sleep_foo, Some(&token)).0 == 200).then_some(()),
            );
            let invalid = call(t, &sleep_foo, Some("invalidToken"));
            assert_eq!(invalid.0, 401, "invalid token: {invalid:?}");
            let none = call(t, &sleep_foo, None);
            assert_eq!(none.0, 200, "no token: {none:?}");
            let old = call(t, &sleep_foo, Some(&expired));
            assert_eq!(old.0, 401, "expired token: {old:?}");
            format!(
                "invalidToken: {} {:?}; none: {}; token: 200; expired: {} {:?}",
                invalid.0, invalid.1, none.0, old.0, old.1
            )
        },
    );

    t.scenario(
        "authz-jwt: require-jwt → the task's token 200, no token 403",
        |t| {
            t.apply("authz/require-jwt.yaml", None);
            wait_for(
                "require-jwt to deny a request without a token",
                Duration::from_secs(15),
                || (call(t, &sleep_foo, None).0 == 403).then_some(()),
            );
            let with = call(t, &sleep_foo, Some(&token));
            assert_eq!(with.0, 200, "token: {with:?}");
            let without = call(t, &sleep_foo, None);
            assert_eq!(without.0, 403, "no token: {without:?}");
            assert_eq!(without.1, "RBAC: access denied");
            format!("token: {}; none: {} {:?}", with.0, without.0, without.1)
        },
    );

    t.scenario(
        "authz-jwt: require-jwt with request.auth.claims[groups] → groups token 200, plain token 403",
        |t| {
            t.apply("authz/require-jwt-groups.yaml", None);
            wait_for(
                "require-jwt with groups to deny the plain token",
                Duration::from_secs(15),
                || (call(t, &sleep_foo, Some(&token)).0 == 403).then_some(()),
            );
            let group = call(t, &sleep_foo, Some(&token_group));
            assert_eq!(group.0, 200, "groups token: {group:?}");
            let plain = call(t, &sleep_foo, Some(&token));
            assert_eq!(plain.0, 403, "plain token: {plain:?}");
            format!("groups token: {}; plain token: {}", group.0, plain.0)
        },
    );

    t.scenario(
        "fail closed: a DENY condition Ama cannot evaluate is reported by ama apply and denies",
        |t| {
            let path = t.scratch.path().join("ours-unsupported-deny.yaml");
            let yaml = common::fixture_text("authz/ours-unsupported-deny.yaml", &t.python);
            std::fs::write(&path, yaml).expect("write the policy");
            let out = t.mesh.ama(&["apply", "-f", path.to_str().expect("utf-8")]);
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(
                stderr.contains("AuthorizationPolicy foo/deny-table")
                    && stderr.contains("spec.rules[0].when[0]"),
                "ama apply names the object and the field: {stderr}"
            );
            wait_for(
                "deny-table to deny the groups token",
                Duration::from_secs(15),
                || (call(t, &sleep_foo, Some(&token_group)).0 == 403).then_some(()),
            );
            let httpbin = e2e::up::name(
                t.mesh
                    .pods()
                    .iter()
                    .find(|p| {
                        p["metadata"]["namespace"] == "foo"
                            && e2e::up::name(p).starts_with("httpbin-")
                    })
                    .expect("httpbin in foo"),
            );
            let last = t
                .access_log(&httpbin)
                .into_iter()
                .rfind(|l| l["response_code"] == 403 || l["response_code"] == "403")
                .unwrap_or_default();
            assert_eq!(
                last["response_code_details"],
                "rbac_access_denied_matched_policy[ns[foo]-policy[deny-table]-rule[0]]",
                "httpbin's inbound access log: {last}"
            );
            format!(
                "ama apply: {}; groups token now 403, logged {}",
                stderr.trim(),
                last["response_code_details"]
            )
        },
    );
}

/// What the task's `kubectl exec $(…sleep -n foo…) -- curl http://httpbin.foo:8000/headers -sS
/// -o /dev/null -H "Authorization: Bearer $TOKEN" -w "%{http_code}\n"` prints from `pod`, with
/// the response's body for the messages.
fn call(t: &Traffic, pod: &str, token: Option<&str>) -> (u16, String) {
    let auth;
    let mut argv = vec![
        "curl",
        "-s",
        "--max-time",
        "20",
        "-w",
        "\n%{http_code}",
        "http://httpbin.foo:8000/headers",
    ];
    if let Some(token) = token {
        auth = format!("Authorization: Bearer {token}");
        argv.extend(["-H", &auth]);
    }
    let out = t.in_pod(pod, &argv);
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
