//! RequestAuthentication together with AuthorizationPolicy through real sidecars with mTLS
//! (`proxy::request_authn`, then `proxy::authz`): a client sidecar (`foo/sleep`) calls
//! httpbin's sidecar, which checks JWTs signed here with keys made here, the way Istio's
//! "JWT Token" and "Authorization with JWT" tasks do. Each answer is asserted on its status and
//! body, the server sidecar's `response_code_details`, the headers the app receives and the
//! headers the client sees; then gRPC's form of the denial, the realm's scheme, tokens in the
//! query string (off the app's path and the access log), audiences, `/stats` counters, a
//! rule's own token locations, `request.auth.*` conditions and config updates.

mod harness;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use bytes::Bytes;
use harness::{App, BoxBody, Mesh, Sidecar, h2_client, httpbin_yaml, json, server_yaml, vip};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use identity::tls::{ALPN_ISTIO_HTTP11, client_config, outbound_server_name};
use identity::{ExpectedPeer, IdentityManager};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proxy::admin::AdminSource;
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// The issuer (and subject) of Istio's demo token.
const ISSUER: &str = "testing@secure.istio.io";
/// Istio's request principal of the demo token: `iss/sub`.
const PRINCIPAL: &str = "testing@secure.istio.io/testing@secure.istio.io";
/// Envoy's body for `Bearer invalidToken`.
const NOT_A_JWT: &str =
    "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections";
/// The client's view of Envoy's `www-authenticate` for a bad token at `/headers`, sent through
/// a client sidecar: the realm is `http://` (see [`realm_scheme_is_envoys`]).
const REALM_HEADERS: &str =
    "Bearer realm=\"http://httpbin-service/headers\", error=\"invalid_token\"";

/// Envoy's response code details for a token that failed with `message`.
fn jwt_details(message: &str) -> String {
    format!("jwt_authn_access_denied{{{}}}", message.replace(' ', "_"))
}

/// An issuer: a P-256 key made here, and its key set.
struct Issuer {
    iss: String,
    key: EncodingKey,
    kid: String,
    jwks: String,
}

impl Issuer {
    fn new(iss: &str, kid: &str) -> Issuer {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key");
        let pkcs8 = pair.to_pkcs8v1().expect("PKCS#8 encoding");
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("public JWK");
        jwk.common.key_id = Some(kid.to_owned());
        let jwks = json!({ "keys": [jwk] }).to_string();
        Issuer {
            iss: iss.to_owned(),
            key,
            kid: kid.to_owned(),
            jwks,
        }
    }

    /// A token from this issuer for itself (as Istio's demo token), good for an hour, with
    /// `extra` claims added.
    fn token(&self, extra: Value) -> String {
        self.token_expiring(extra, now() + 3600)
    }

    /// A token that expired ten minutes ago (beyond Envoy's 60 s of clock skew).
    fn expired(&self) -> String {
        self.token_expiring(json!({}), now() - 600)
    }

    fn token_expiring(&self, extra: Value, exp: u64) -> String {
        let mut claims = json!({"iss": self.iss, "sub": self.iss, "iat": now() - 60, "exp": exp});
        if let (Some(c), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            c.extend(extra);
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("signing")
    }

    /// A JwtRule for this issuer with its key set inline, plus `extra` fields.
    fn rule(&self, extra: Value) -> Value {
        let mut rule = json!({"issuer": self.iss, "jwks": self.jwks});
        if let (Some(r), Value::Object(extra)) = (rule.as_object_mut(), extra) {
            r.extend(extra);
        }
        rule
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A RequestAuthentication as the control plane sends it.
fn request_authn(name: &str, namespace: &str, selector: Value, rules: Vec<Value>) -> Value {
    json!({
        "name": name,
        "namespace": namespace,
        "selector": selector,
        "requestAuthentication": {"jwtRules": rules},
    })
}

/// An AuthorizationPolicy selecting httpbin.
fn policy(name: &str, policy: Value) -> Value {
    json!({
        "name": name,
        "namespace": "default",
        "selector": {"app": "httpbin"},
        "policy": policy,
    })
}

fn httpbin() -> Value {
    json!({"app": "httpbin"})
}

/// What came back, and what the server sidecar and the app made of it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: String,
    /// The server sidecar's `response_code_details`.
    details: String,
    /// The headers the app received, when the request reached it.
    app_headers: Option<Value>,
}

impl Reply {
    fn app_header(&self, name: &str) -> Option<&str> {
        self.app_headers.as_ref()?.get(name)?.as_str()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts Envoy's jwt_authn 401 for `message` at `/headers`, never forwarded.
    #[track_caller]
    fn assert_unauthorized(&self, what: &str, message: &str) {
        assert_eq!(self.status, 401, "{what}: {self:?}");
        assert_eq!(self.body, message, "{what}");
        assert_eq!(self.header("content-type"), Some("text/plain"), "{what}");
        assert_eq!(self.details, jwt_details(message), "{what}");
        assert_eq!(
            self.header("www-authenticate"),
            Some(REALM_HEADERS),
            "{what}"
        );
        assert!(self.app_headers.is_none(), "{what}: reached the app");
    }

    /// Asserts the app's answer.
    #[track_caller]
    fn assert_passed(&self, what: &str) {
        assert_eq!(self.status, 200, "{what}: {self:?}");
        assert_eq!(self.details, "via_upstream", "{what}");
        assert!(self.app_headers.is_some(), "{what}: no app answer");
        assert!(self.header("www-authenticate").is_none(), "{what}");
    }

    /// Asserts Envoy's RBAC denial by no ALLOW policy.
    #[track_caller]
    fn assert_rbac_denied(&self, what: &str) {
        assert_eq!(self.status, 403, "{what}: {self:?}");
        assert_eq!(self.body, "RBAC: access denied", "{what}");
        assert_eq!(
            self.details, "rbac_access_denied_matched_policy[none]",
            "{what}"
        );
        assert!(self.header("www-authenticate").is_none(), "{what}");
        assert!(self.app_headers.is_none(), "{what}: reached the app");
    }
}

/// httpbin behind its sidecar (`default/default`) under `authorizations`, and a client
/// sidecar (`foo/sleep`) in front of it; all mTLS.
struct Setup {
    app: App,
    server: Sidecar,
    client: Sidecar,
    /// Server access-log lines seen so far.
    lines: usize,
}

async fn setup(mesh: &Mesh, authorizations: Vec<Value>) -> Setup {
    let app = App::start("httpbin").await;
    // JSON is YAML: the key sets go in as JSON strings.
    let resources = format!(
        "{}authorizations: {}\n",
        server_yaml(),
        Value::Array(authorizations)
    );
    let server = Sidecar::builder(&resources)
        .inbound_to(app.addr)
        .identity(mesh.identity("default", "default").await)
        .start()
        .await;
    let client = Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", ""))
        .identity(mesh.identity("foo", "sleep").await)
        .start()
        .await;
    Setup {
        app,
        server,
        client,
        lines: 0,
    }
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<BoxBody> {
    let mut req = Request::builder()
        .uri(path)
        .header("host", "httpbin-service");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Empty::<Bytes>::new().map_err(|n| match n {}).boxed())
        .expect("request")
}

impl Setup {
    /// `GET path` with `headers` through the client sidecar.
    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut tx = self.client.h1(vip()).await;
        let hits = self.app.hits.load(Ordering::SeqCst);
        let exchange = harness::send(&mut tx, get(path, headers));
        let (resp, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("answered within 30 s");
        self.reply(resp.status().as_u16(), resp.headers().clone(), body, hits)
            .await
    }

    /// Completes a reply with the server's log line and the app's view.
    async fn reply(&mut self, status: u16, headers: HeaderMap, body: Bytes, hits: usize) -> Reply {
        self.lines += 1;
        let line = self
            .server
            .log_lines(self.lines)
            .await
            .swap_remove(self.lines - 1);
        let reached = self.app.hits.load(Ordering::SeqCst) > hits;
        let app_headers = (reached && status == 200).then(|| json(&body)["headers"].clone());
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            details: line["response_code_details"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            app_headers,
        }
    }
}

/// Istio's "JWT Token" task: a RequestAuthentication alone rejects bad tokens and lets
/// requests without one through; a good token is taken off the request unless
/// `forwardOriginalToken`.
#[tokio::test]
async fn jwt_token_task() {
    let mesh = Mesh::new();
    let issuer = Issuer::new(ISSUER, "k1");
    let mut s = setup(
        &mesh,
        vec![request_authn(
            "jwt-example",
            "default",
            httpbin(),
            vec![issuer.rule(json!({}))],
        )],
    )
    .await;

    let r = s
        .get("/headers", &[("authorization", "Bearer invalidToken")])
        .await;
    r.assert_unauthorized("an invalid token", NOT_A_JWT);

    let r = s.get("/headers", &[]).await;
    r.assert_passed("no token");
    assert!(r.app_header("authorization").is_none());

    let token = issuer.token(json!({}));
    let r = s
        .get("/headers", &[("authorization", &bearer(&token))])
        .await;
    r.assert_passed("a valid token");
    assert_eq!(
        r.app_header("authorization"),
        None,
        "forwardOriginalToken is false: the token is taken off"
    );

    let r = s
        .get("/headers", &[("authorization", &bearer(&issuer.expired()))])
        .await;
    r.assert_unauthorized("an expired token", "Jwt is expired");

    // A token signed by a key not in the key set.
    let forger = Issuer::new(ISSUER, "k1");
    let r = s
        .get(
            "/headers",
            &[("authorization", &bearer(&forger.token(json!({}))))],
        )
        .await;
    r.assert_unauthorized("a forged token", "Jwt verification fails");
    assert_eq!(s.app.hits.load(Ordering::SeqCst), 2);

    let mut s = setup(
        &mesh,
        vec![request_authn(
            "jwt-example",
            "default",
            httpbin(),
            vec![issuer.rule(json!({"forwardOriginalToken": true}))],
        )],
    )
    .await;
    let r = s
        .get("/headers", &[("authorization", &bearer(&token))])
        .await;
    r.assert_passed("a valid token, forwardOriginalToken");
    assert_eq!(r.app_header("authorization"), Some(bearer(&token).as_str()));
}

/// Istio's "Authorization with JWT" task: `requestPrincipals` and a `when` on a claim.
#[tokio::test]
async fn request_principals_and_claims() {
    let mesh = Mesh::new();
    let issuer = Issuer::new(ISSUER, "k1");
    let authn = request_authn(
        "jwt-example",
        "default",
        httpbin(),
        vec![issuer.rule(json!({}))],
    );
    let token = issuer.token(json!({}));

    let mut s = setup(
        &mesh,
        vec![
            authn.clone(),
            policy(
                "require-jwt",
                json!({"action": "ALLOW", "rules": [{"from": [{"requestPrincipals": [PRINCIPAL]}]}]}),
            ),
        ],
    )
    .await;
    let r = s
        .get("/headers", &[("authorization", &bearer(&token))])
        .await;
    r.assert_passed("the demo principal");
    s.get("/headers", &[]).await.assert_rbac_denied("no token");
    let other = Issuer::new("other@secure.istio.io", "k2");
    let r = s
        .get(
            "/headers",
            &[("authorization", &bearer(&other.token(json!({}))))],
        )
        .await;
    r.assert_unauthorized(
        "a token of an issuer not configured",
        "Jwt issuer is not configured",
    );

    let mut s = setup(
        &mesh,
        vec![
            authn,
            policy(
                "require-jwt",
                json!({"action": "ALLOW", "rules": [{
                    "from": [{"requestPrincipals": [PRINCIPAL]}],
                    "when": [{"key": "request.auth.claims[groups]", "values": ["group1"]}],
                }]}),
            ),
        ],
    )
    .await;
    let grouped = issuer.token(json!({"groups": ["group1", "group2"]}));
    let r = s
        .get("/headers", &[("authorization", &bearer(&grouped))])
        .await;
    r.assert_passed("groups [group1, group2]");
    s.get("/headers", &[("authorization", &bearer(&token))])
        .await
        .assert_rbac_denied("no groups claim");
    let group2 = issuer.token(json!({"groups": ["group2"]}));
    s.get("/headers", &[("authorization", &bearer(&group2))])
        .await
        .assert_rbac_denied("groups [group2]");
    s.get("/headers", &[]).await.assert_rbac_denied("no token");
}

/// A path open to all and a path that needs any verified token; a bad token is refused by
/// RequestAuthentication before authorization, even where the policy asks for no token.
#[tokio::test]
async fn public_and_secret_paths() {
    let mesh = Mesh::new();
    let issuer = Issuer::new(ISSUER, "k1");
    let mut s = setup(
        &mesh,
        vec![
            request_authn("jwt", "default", httpbin(), vec![issuer.rule(json!({}))]),
            policy(
                "paths",
                json!({"action": "ALLOW", "rules": [
                    {"to": [{"paths": ["/public*"]}]},
                    {"from": [{"requestPrincipals": ["*"]}], "to": [{"paths": ["/secret*"]}]},
                ]}),
            ),
        ],
    )
    .await;
    let token = issuer.token(json!({}));
    let bad = [("authorization", "Bearer invalidToken")];
    s.get("/public/a", &[])
        .await
        .assert_passed("/public, no token");
    s.get("/secret/a", &[])
        .await
        .assert_rbac_denied("/secret, no token");
    let r = s
        .get("/secret/a", &[("authorization", &bearer(&token))])
        .await;
    r.assert_passed("/secret, a valid token");
    assert_eq!(r.app_header("authorization"), None);
    for path in ["/secret/a", "/public/a"] {
        let r = s.get(path, &bad).await;
        assert_eq!(r.status, 401, "{path}, an invalid token: {r:?}");
        assert_eq!(r.body, NOT_A_JWT);
        assert_eq!(r.details, jwt_details(NOT_A_JWT));
        assert_eq!(
            r.header("www-authenticate"),
            Some(
                format!("Bearer realm=\"http://httpbin-service{path}\", error=\"invalid_token\"")
                    .as_str()
            )
        );
    }
    assert_eq!(s.app.hits.load(Ordering::SeqCst), 2);
}

/// Which RequestAuthentications apply: by selector, namespace-wide, mesh-wide; several merge.
#[tokio::test]
async fn selection_and_merging() {
    let mesh = Mesh::new();
    let issuer = Issuer::new(ISSUER, "k1");
    let bad = [("authorization", "Bearer invalidToken")];
    let token = issuer.token(json!({}));

    // Not selected: the bad token passes untouched.
    for (what, authn) in [
        (
            "another workload's",
            request_authn(
                "other",
                "default",
                json!({"app": "other"}),
                vec![issuer.rule(json!({}))],
            ),
        ),
        (
            "another namespace's",
            request_authn("other-ns", "foo", json!({}), vec![issuer.rule(json!({}))]),
        ),
    ] {
        let mut s = setup(&mesh, vec![authn]).await;
        let r = s.get("/headers", &bad).await;
        r.assert_passed(what);
        assert_eq!(
            r.app_header("authorization"),
            Some("Bearer invalidToken"),
            "{what}"
        );
        // Nor is a good token checked or taken off.
        let r = s
            .get("/headers", &[("authorization", &bearer(&token))])
            .await;
        r.assert_passed(what);
        assert_eq!(
            r.app_header("authorization"),
            Some(bearer(&token).as_str()),
            "{what}"
        );
    }

    // Selected without a selector: namespace-wide and mesh-wide (the root namespace).
    for (what, namespace) in [("namespace-wide", "default"), ("mesh-wide", "istio-system")] {
        let mut s = setup(
            &mesh,
            vec![request_authn(
                "jwt",
                namespace,
                json!({}),
                vec![issuer.rule(json!({}))],
            )],
        )
        .await;
        s.get("/headers", &bad)
            .await
            .assert_unauthorized(what, NOT_A_JWT);
        let r = s
            .get("/headers", &[("authorization", &bearer(&token))])
            .await;
        r.assert_passed(what);
        assert_eq!(r.app_header("authorization"), None, "{what}");
        s.get("/headers", &[]).await.assert_passed(what);
    }

    // Two RequestAuthentications with different issuers: a token of either passes, and each
    // is its own request principal.
    let second = Issuer::new("second@secure.istio.io", "k2");
    let mut s = setup(
        &mesh,
        vec![
            request_authn("first", "default", httpbin(), vec![issuer.rule(json!({}))]),
            request_authn(
                "second",
                "istio-system",
                json!({}),
                vec![second.rule(json!({}))],
            ),
            policy(
                "second-only-on-admin",
                json!({"action": "DENY", "rules": [{
                    "from": [{"notRequestPrincipals": ["second@secure.istio.io/*"]}],
                    "to": [{"paths": ["/admin*"]}],
                }]}),
            ),
        ],
    )
    .await;
    for (who, tok) in [("first", &token), ("second", &second.token(json!({})))] {
        let r = s.get("/headers", &[("authorization", &bearer(tok))]).await;
        r.assert_passed(who);
        assert_eq!(r.app_header("authorization"), None, "{who}");
    }
    let r = s
        .get(
            "/admin",
            &[("authorization", &bearer(&second.token(json!({}))))],
        )
        .await;
    r.assert_passed("second's token on /admin");
    let r = s.get("/admin", &[("authorization", &bearer(&token))]).await;
    assert_eq!(r.status, 403, "first's token on /admin: {r:?}");
    assert_eq!(
        r.details,
        "rbac_access_denied_matched_policy[ns[default]-policy[second-only-on-admin]-rule[0]]"
    );
    let stranger = Issuer::new("stranger@secure.istio.io", "k3");
    s.get(
        "/headers",
        &[("authorization", &bearer(&stranger.token(json!({}))))],
    )
    .await
    .assert_unauthorized(
        "an issuer neither configures",
        "Jwt issuer is not configured",
    );
}

/// `outputPayloadToHeader` and `outputClaimToHeaders` reach the app; a client cannot set them
/// itself.
#[tokio::test]
async fn payload_and_claims_to_headers() {
    let mesh = Mesh::new();
    let issuer = Issuer::new(ISSUER, "k1");
    let mut s = setup(
        &mesh,
        vec![request_authn(
            "jwt",
            "default",
            httpbin(),
            vec![issuer.rule(json!({
                "outputPayloadToHeader": "x-jwt-payload",
                "outputClaimToHeaders": [
                    {"header": "x-jwt-sub", "claim": "sub"},
                    {"header": "x-jwt-team", "claim": "org.team"},
                ],
            }))],
        )],
    )
    .await;
    let token = issuer.token(json!({"org": {"team": "blue"}}));
    let r = s
        .get(
            "/headers",
            &[("authorization", &bearer(&token)), ("x-jwt-sub", "mallory")],
        )
        .await;
    r.assert_passed("a valid token");
    let payload = token.split('.').nth(1).expect("a payload section");
    assert_eq!(r.app_header("x-jwt-payload"), Some(payload));
    assert_eq!(r.app_header("x-jwt-sub"), Some(ISSUER));
    assert_eq!(r.app_header("x-jwt-team"), Some("blue"));
    assert_eq!(r.app_header("authorization"), None);

    // Without a token, what the client claims is taken off too.
    let r = s
        .get(
            "/headers",
            &[("x-jwt-sub", "mallory"), ("x-jwt-payload", "e30")],
        )
        .await;
    r.assert_passed("no token");
    assert_eq!(r.app_header("x-jwt-sub"), None);
    assert_eq!(r.app_header("x-jwt-payload"), None);
}

/// Envoy's `jwt_authn` answers with `sendLocalReply`, which answers a gRPC request in gRPC's
/// form: HTTP 200, `grpc-status: 16` (UNAUTHENTICATED, from 401), the message as
/// `grpc-message`, and the `www-authenticate` the filter adds.
#[tokio::test]
async fn grpc_gets_unauthenticated() {
    let mesh = Mesh::new();
    let issuer = Issuer::new(ISSUER, "k1");
    let mut s = setup(
        &mesh,
        vec![request_authn(
            "jwt",
            "default",
            httpbin(),
            vec![issuer.rule(json!({}))],
        )],
    )
    .await;
    let mut tx = h2_client(s.client.connect_outbound(vip()).await).await;
    let grpc = |auth: &str| {
        Request::builder()
            .method("POST")
            .uri("http://httpbin-service/grpc.health.v1.Health/Check")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", auth)
            .body(
                Full::new(Bytes::from_static(b"\0\0\0\0\0"))
                    .map_err(|n| match n {})
                    .boxed(),
            )
            .expect("request")
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        tx.send_request(grpc("Bearer invalidToken")),
    )
    .await
    .expect("answered within 30 s")
    .expect("response");
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("body within 30 s")
        .expect("body")
        .to_bytes();
    let r = s.reply(parts.status.as_u16(), parts.headers, body, 0).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert_eq!(r.header("grpc-status"), Some("16"));
    assert_eq!(r.header("grpc-message"), Some(NOT_A_JWT));
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            "Bearer realm=\"http://httpbin-service/grpc.health.v1.Health/Check\", error=\"invalid_token\""
        )
    );
    assert_eq!(r.details, jwt_details(NOT_A_JWT));
    assert_eq!(s.app.hits.load(Ordering::SeqCst), 0);

    // A valid token reaches the gRPC app.
    let token = issuer.token(json!({}));
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        tx.send_request(grpc(&bearer(&token))),
    )
    .await
    .expect("answered within 30 s")
    .expect("response");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("grpc-status").is_none(), "{resp:?}");
    assert_eq!(s.app.hits.load(Ordering::SeqCst), 1);
}

/// Connects straight to `addr` with mTLS as `id`, without a sidecar, speaking HTTP/1.1.
async fn mtls_h1(
    id: &Arc<IdentityManager>,
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let config = client_config(
        id,
        ExpectedPeer::AnyInMesh,
        vec![ALPN_ISTIO_HTTP11.to_vec()],
    )
    .expect("client config");
    let sni =
        outbound_server_name(80, "", "httpbin-service.default.svc.cluster.local").expect("sni");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(sni, tcp)
        .await
        .expect("mTLS handshake");
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    tx
}

/// The realm's scheme is Envoy's `:scheme`: the request's own (HTTP/2, or an absolute URI),
/// else `x-forwarded-proto` when it is `http` or `https`, else `https` over TLS. A client
/// sidecar sends `x-forwarded-proto: http` (what its app spoke), so a sidecar's call gets
/// `http://`; a mesh client without a sidecar speaking mTLS straight to the inbound gets
/// `https://`. The request the app gets is the same either way.
#[tokio::test]
async fn realm_scheme_is_envoys() {
    let mesh = Mesh::new();
    let issuer = Issuer::new(ISSUER, "k1");
    let mut s = setup(
        &mesh,
        vec![request_authn(
            "jwt",
            "default",
            httpbin(),
            vec![issuer.rule(json!({}))],
        )],
    )
    .await;
    let realm = |scheme: &str| {
        format!("Bearer realm=\"{scheme}://httpbin-service/headers?a=1\", error=\"invalid_token\"")
    };
    let bad = ("authorization", "Bearer invalidToken");
    let id = mesh.identity("bar", "sleep").await;
    for (what, proto, want) in [
        ("mTLS without x-forwarded-proto", None, "https"),
        ("mTLS with x-forwarded-proto: http", Some("http"), "http"),
        ("mTLS with x-forwarded-proto: junk", Some("junk"), "https"),
    ] {
        let mut tx = mtls_h1(&id, s.server.inbound).await;
        let mut headers = vec![bad];
        headers.extend(proto.map(|p| ("x-forwarded-proto", p)));
        let hits = s.app.hits.load(Ordering::SeqCst);
        let exchange = harness::send(&mut tx, get("/headers?a=1", &headers));
        let (resp, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("answered within 30 s");
        let r = s
            .reply(resp.status().as_u16(), resp.headers().clone(), body, hits)
            .await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some(realm(want).as_str()),
            "{what}"
        );
    }
    // Plaintext without a sidecar: `x-forwarded-proto` as the client says, else `http`.
    for (what, proto, want) in [
        ("plaintext", None, "http"),
        (
            "plaintext with x-forwarded-proto: https",
            Some("https"),
            "https",
        ),
    ] {
        let mut tx =
            harness::h1_client(TcpStream::connect(s.server.inbound).await.expect("connect")).await;
        let mut headers = vec![bad];
        headers.extend(proto.map(|p| ("x-forwarded-proto", p)));
        let hits = s.app.hits.load(Ordering::SeqCst);
        let exchange = harness::send(&mut tx, get("/headers?a=1", &headers));
        let (resp, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("answered within 30 s");
        let r = s
            .reply(resp.status().as_u16(), resp.headers().clone(), body, hits)
            .await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some(realm(want).as_str()),
            "{what}"
        );
    }
    // Through a client sidecar.
    let r = s.get("/headers?a=1", &[bad]).await;
    assert_eq!(r.header("www-authenticate"), Some(realm("http").as_str()));

    // A valid token over mTLS: the app gets the request as sent, origin-form, with the
    // `x-forwarded-proto` the sidecar set.
    let token = issuer.token(json!({}));
    let mut tx = mtls_h1(&id, s.server.inbound).await;
    let hits = s.app.hits.load(Ordering::SeqCst);
    let exchange = harness::send(
        &mut tx,
        get("/headers?a=1", &[("authorization", &bearer(&token))]),
    );
    let (resp, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("answered within 30 s");
    let app = json(&body);
    let r = s
        .reply(resp.status().as_u16(), resp.headers().clone(), body, hits)
        .await;
    r.assert_passed("a valid token over mTLS");
    assert_eq!(app["path"], "/headers");
    assert_eq!(r.app_header("x-forwarded-proto"), Some("https"));
    assert_eq!(r.app_header("host"), Some("httpbin-service"));
}

/// A token in `?access_token=` is taken off the path the app gets and the access log shows (as
/// Envoy's `jwt_authn` rewrites `:path` before the log reads it), unless `forwardOriginalToken`.
#[tokio::test]
async fn query_token_is_taken_off_the_path_and_the_log() {
    let mesh = Mesh::new();
    let issuer = Issuer::new(ISSUER, "k1");
    let token = issuer.token(json!({}));
    let path = format!("/headers?a=1&access_token={token}");
    for (forward, want) in [
        (false, "a=1".to_owned()),
        (true, format!("a=1&access_token={token}")),
    ] {
        let s = setup(
            &mesh,
            vec![request_authn(
                "jwt",
                "default",
                httpbin(),
                vec![issuer.rule(json!({"forwardOriginalToken": forward}))],
            )],
        )
        .await;
        let mut tx = s.client.h1(vip()).await;
        let exchange = harness::send(&mut tx, get(&path, &[]));
        let (resp, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("answered within 30 s");
        assert_eq!(resp.status(), 200, "forwardOriginalToken {forward}");
        assert_eq!(
            json(&body)["query"],
            want.as_str(),
            "forwardOriginalToken {forward}"
        );
        let line = &s.server.log_lines(1).await[0];
        assert_eq!(
            line["path"],
            format!("/headers?{want}"),
            "forwardOriginalToken {forward}"
        );
    }
}

/// A token for another audience is Envoy's 403 with `www-authenticate`; denials are counted as
/// the stats filter counts a local reply; a CORS preflight passes RequestAuthentication
/// without its token checked (Istio sets `bypass_cors_preflight`); `/stats` has Envoy's
/// jwt_authn counters.
#[tokio::test]
async fn audiences_metrics_and_preflights() {
    let mesh = Mesh::new();
    let issuer = Issuer::new(ISSUER, "k1");
    let mut s = setup(
        &mesh,
        vec![request_authn(
            "jwt",
            "default",
            httpbin(),
            vec![issuer.rule(json!({"audiences": ["httpbin.default"]}))],
        )],
    )
    .await;
    let other = issuer.token(json!({"aud": "ratings.default"}));
    let r = s
        .get("/headers", &[("authorization", &bearer(&other))])
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.body, "Audiences in Jwt are not allowed");
    assert_eq!(r.details, jwt_details("Audiences in Jwt are not allowed"));
    assert_eq!(r.header("www-authenticate"), Some(REALM_HEADERS));
    assert!(r.app_headers.is_none());
    // `https://` and a trailing `/` are ignored on both sides.
    let ours = issuer.token(json!({"aud": ["https://httpbin.default/"]}));
    s.get("/headers", &[("authorization", &bearer(&ours))])
        .await
        .assert_passed("our audience");
    s.get("/headers", &[("authorization", "Bearer invalidToken")])
        .await
        .assert_unauthorized("an invalid token", NOT_A_JWT);

    let preflight = [
        ("authorization", "Bearer invalidToken"),
        ("origin", "https://example.com"),
        ("access-control-request-method", "GET"),
    ];
    let mut tx = s.client.h1(vip()).await;
    let mut req = get("/headers", &preflight);
    *req.method_mut() = http::Method::OPTIONS;
    let hits = s.app.hits.load(Ordering::SeqCst);
    let (resp, body) = tokio::time::timeout(Duration::from_secs(30), harness::send(&mut tx, req))
        .await
        .expect("answered within 30 s");
    let r = s
        .reply(resp.status().as_u16(), resp.headers().clone(), body, hits)
        .await;
    r.assert_passed("a CORS preflight with a bad token");
    assert_eq!(r.app_header("authorization"), Some("Bearer invalidToken"));

    let prom = s.server.telemetry.encode_prometheus();
    for (code, want) in [("401", 1.0), ("403", 1.0), ("200", 2.0)] {
        let got = harness::metric(
            &prom,
            "istio_requests_total",
            &[
                r#"reporter="destination""#,
                &format!("response_code=\"{code}\""),
            ],
        );
        assert_eq!(
            got,
            Some(want),
            "istio_requests_total{{response_code={code}}}"
        );
    }
    // Envoy's jwt_authn counters under the inbound connection manager's prefix.
    let stats = proxy::dump::TrafficAdmin(s.server.inputs.clone()).cluster_stats();
    let prefix = format!("http.inbound_0.0.0.0_{};.jwt_authn.", s.app.addr.port());
    for (stat, want) in [
        ("allowed", 2),
        ("cors_preflight_bypassed", 1),
        ("denied", 2),
        ("jwks_fetch_failed", 0),
        ("jwks_fetch_success", 0),
    ] {
        let line = format!("{prefix}{stat}: {want}\n");
        assert!(stats.contains(&line), "/stats lacks {line:?}:\n{stats}");
    }
}

/// A new config snapshot brings its own JWT rules: a rotated key set takes effect at once (the
/// old key's tokens fail), and a RequestAuthentication removed stops applying.
#[tokio::test]
async fn rules_follow_config_updates() {
    let mesh = Mesh::new();
    let old = Issuer::new(ISSUER, "k1");
    let new = Issuer::new(ISSUER, "k2");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("resources.yaml");
    let write = |authorizations: Vec<Value>| {
        let resources = format!(
            "{}authorizations: {}\n",
            server_yaml(),
            Value::Array(authorizations)
        );
        std::fs::write(&path, resources).expect("write config");
    };
    write(vec![request_authn(
        "jwt",
        "default",
        httpbin(),
        vec![old.rule(json!({}))],
    )]);
    let app = App::start("httpbin").await;
    let server = Sidecar::builder("")
        .config_file(path.clone())
        .inbound_to(app.addr)
        .identity(mesh.identity("default", "default").await)
        .start()
        .await;
    let client = Sidecar::builder(&httpbin_yaml(&[server.inbound], "ROUND_ROBIN", ""))
        .identity(mesh.identity("foo", "sleep").await)
        .start()
        .await;
    let mut s = Setup {
        app,
        server,
        client,
        lines: 0,
    };
    let old_token = old.token(json!({}));
    let new_token = new.token(json!({}));
    s.get("/headers", &[("authorization", &bearer(&old_token))])
        .await
        .assert_passed("the old key, before the rotation");

    // Waits (bounded) until the server has taken in the file just written.
    async fn reloaded(server: &Sidecar, before: u64) {
        for _ in 0..500 {
            if server.store.load().version > before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server never reloaded its config");
    }

    let v = s.server.store.load().version;
    write(vec![request_authn(
        "jwt",
        "default",
        httpbin(),
        vec![new.rule(json!({}))],
    )]);
    reloaded(&s.server, v).await;
    s.get("/headers", &[("authorization", &bearer(&old_token))])
        .await
        .assert_unauthorized(
            "the old key, after the rotation",
            "Jwks doesn't have key to match kid or alg from Jwt",
        );
    s.get("/headers", &[("authorization", &bearer(&new_token))])
        .await
        .assert_passed("the new key");

    let v = s.server.store.load().version;
    write(vec![]);
    reloaded(&s.server, v).await;
    let r = s
        .get("/headers", &[("authorization", "Bearer invalidToken")])
        .await;
    r.assert_passed("no RequestAuthentication any more");
    assert_eq!(r.app_header("authorization"), Some("Bearer invalidToken"));
}

/// Tokens where a rule says to look (`fromHeaders`, `fromParams`), and only there; the
/// `request.auth.*` attributes of a verified token in a policy's conditions.
#[tokio::test]
async fn custom_locations_and_auth_conditions() {
    let mesh = Mesh::new();
    let issuer = Issuer::new(ISSUER, "k1");
    let mut s = setup(
        &mesh,
        vec![
            request_authn(
                "jwt",
                "default",
                httpbin(),
                vec![issuer.rule(json!({
                    "fromHeaders": [{"name": "x-jwt-assertion"}],
                    "fromParams": ["my_token"],
                }))],
            ),
            policy(
                "audience-and-presenter",
                json!({"action": "ALLOW", "rules": [{"when": [
                    {"key": "request.auth.principal", "values": [PRINCIPAL]},
                    {"key": "request.auth.audiences", "values": ["httpbin.default"]},
                    {"key": "request.auth.presenter", "values": ["sleep-app"]},
                    {"key": "request.auth.claims[iss]", "values": [ISSUER]},
                ]}]}),
            ),
        ],
    )
    .await;
    let good = issuer.token(json!({"aud": ["httpbin.default", "other"], "azp": "sleep-app"}));

    // Authorization is not one of the rule's locations: a bad token there is not looked at,
    // and no token in the rule's locations means no identity for the policy.
    let r = s
        .get("/headers", &[("authorization", "Bearer invalidToken")])
        .await;
    r.assert_rbac_denied("a bad token outside the rule's locations");

    let r = s.get("/headers", &[("x-jwt-assertion", &good)]).await;
    r.assert_passed("a good token in x-jwt-assertion");
    assert_eq!(r.app_header("x-jwt-assertion"), None, "taken off");
    let r = s
        .get(
            &format!("/headers?my_token={good}"),
            &[("authorization", "Bearer invalidToken")],
        )
        .await;
    r.assert_passed("a good token in ?my_token=");
    assert_eq!(
        r.app_header("authorization"),
        Some("Bearer invalidToken"),
        "not the rule's"
    );

    let r = s
        .get("/headers", &[("x-jwt-assertion", "invalidToken")])
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.body, NOT_A_JWT);

    for (what, claims) in [
        (
            "another audience",
            json!({"aud": "other", "azp": "sleep-app"}),
        ),
        (
            "another presenter",
            json!({"aud": "httpbin.default", "azp": "curl"}),
        ),
        ("no presenter", json!({"aud": "httpbin.default"})),
    ] {
        let token = issuer.token(claims);
        s.get("/headers", &[("x-jwt-assertion", &token)])
            .await
            .assert_rbac_denied(what);
    }
}
