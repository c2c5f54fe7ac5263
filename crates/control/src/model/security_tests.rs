//! AuthorizationPolicy and RequestAuthentication → `xds::Authorization`, with the shapes of
//! Istio's security tasks ("Authorization for HTTP traffic", "Authorization with custom
//! conditions", "JWT authentication").

use api::objects::{Object, parse_stream};
use pretty_assertions::assert_eq;
use xds::{Action, Authorization, AuthorizationPolicy, Condition, Operation, Rule, Source};

use super::security::{FetchedJwks, JwksSource, REQUEST_AUTHENTICATION_PREFIX};
use super::*;

fn objects(yaml: &str) -> Vec<Object> {
    let (objects, errors) = parse_stream(yaml, "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    objects
}

fn model_with(yaml: &str, jwks: &FetchedJwks) -> Model {
    let m = Model::build_with_jwks(&objects(yaml), &mut VipAllocator::new(), jwks);
    // What the model sends must pass the proxy's validation: a rejected push would keep the
    // proxies on their old policies.
    xds::ProxyResources {
        authorizations: m.authorizations.clone(),
        ..Default::default()
    }
    .validate()
    .unwrap_or_else(|e| panic!("{e}"));
    m
}

fn model(yaml: &str) -> Model {
    model_with(yaml, &FetchedJwks::new())
}

fn policy(m: &Model, ns: &str, name: &str) -> Authorization {
    m.authorizations
        .iter()
        .find(|a| a.namespace == ns && a.name == name)
        .unwrap_or_else(|| panic!("no {ns}/{name} in {:#?}", m.authorizations))
        .clone()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn allow_nothing_and_deny_all() {
    let m = model(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: istio-system}
spec:
  action: DENY
  rules: [{}]
",
    );
    assert_eq!(
        m.authorizations,
        [
            Authorization {
                name: "allow-nothing".into(),
                namespace: "default".into(),
                // An ALLOW policy without rules allows nothing.
                policy: Some(AuthorizationPolicy::default()),
                ..Default::default()
            },
            Authorization {
                name: "deny-all".into(),
                namespace: "istio-system".into(),
                // One empty rule matches every request, mesh-wide from the root namespace.
                policy: Some(AuthorizationPolicy {
                    action: Action::Deny,
                    provider: String::new(),
                    rules: vec![Rule::default()],
                    dry_run: false,
                }),
                ..Default::default()
            },
        ]
    );
    let anyone = labels(&[("app", "x")]);
    assert!(m.authorizations[0].selects(ROOT_NAMESPACE, Some("default"), &anyone));
    assert!(!m.authorizations[0].selects(ROOT_NAMESPACE, Some("foo"), &anyone));
    assert!(m.authorizations[1].selects(ROOT_NAMESPACE, Some("foo"), &anyone));
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
}

/// The `istio.io/dry-run` annotation as pilot reads it: Go's `ParseBool`, on ALLOW and DENY
/// policies only; anything else leaves the policy enforced (api::support reports it).
#[test]
fn dry_run_from_the_annotation() {
    let doc = |name: &str, value: &str, action: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: foo, annotations: {{istio.io/dry-run: '{value}'}}}}
spec: {{action: {action}, rules: [{{}}]}}
"
        )
    };
    let yaml = [
        doc("deny-true", "true", "DENY"),
        doc("allow-title", "True", "ALLOW"),
        doc("deny-one", "1", "DENY"),
        doc("deny-false", "false", "DENY"),
        doc("deny-odd-case", "tRue", "DENY"),
        doc("deny-yes", "yes", "DENY"),
        doc("audit-true", "true", "AUDIT"),
        doc("custom-true", "true", "CUSTOM"),
    ]
    .join("---\n");
    let m = model(&yaml);
    let dry = |name: &str| {
        policy(&m, "foo", name)
            .policy
            .expect("an AuthorizationPolicy")
            .dry_run
    };
    for name in ["deny-true", "allow-title", "deny-one"] {
        assert!(dry(name), "{name} is a dry run");
    }
    for name in [
        "deny-false",
        "deny-odd-case",
        "deny-yes",
        "audit-true",
        "custom-true",
    ] {
        assert!(!dry(name), "{name} is enforced");
    }
    let rules = policy(&m, "foo", "deny-true").policy.expect("policy").rules;
    assert_eq!(
        rules,
        [Rule::default()],
        "the rules are sent as for any policy"
    );
}

#[test]
fn rules_are_copied() {
    let m = model(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/bookinfo-productpage]
        notNamespaces: [dev]
        ipBlocks: [10.0.0.0/8]
        notRemoteIpBlocks: [10.1.0.0/16]
        requestPrincipals: ['testing@secure.istio.io/*']
    - source: {namespaces: [foo], notPrincipals: ['*/sa/admin']}
    to:
    - operation:
        hosts: ['details*']
        ports: ['9080']
        notPorts: ['15000']
        notMethods: [DELETE]
        paths: ['/details/{*}']
        notPaths: ['/admin*', '*/private']
    when:
    - key: request.headers[version]
      values: [v1, v2]
    - key: request.auth.claims[groups]
      values: [group1]
    - key: source.ip
      notValues: [10.0.0.9]
",
    );
    assert_eq!(
        policy(&m, "default", "productpage-viewer"),
        Authorization {
            name: "productpage-viewer".into(),
            namespace: "default".into(),
            selector: labels(&[("app", "productpage")]),
            policy: Some(AuthorizationPolicy {
                action: Action::Allow,
                provider: String::new(),
                rules: vec![Rule {
                    to: vec![Operation {
                        methods: strings(&["GET"]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                dry_run: false,
            }),
            ..Default::default()
        }
    );
    let details = policy(&m, "default", "details-viewer");
    assert_eq!(details.selector, labels(&[("app", "details")]));
    assert_eq!(
        details.policy.expect("policy").rules,
        [Rule {
            from: vec![
                Source {
                    principals: strings(&["cluster.local/ns/default/sa/bookinfo-productpage"]),
                    not_namespaces: strings(&["dev"]),
                    ip_blocks: strings(&["10.0.0.0/8"]),
                    not_remote_ip_blocks: strings(&["10.1.0.0/16"]),
                    request_principals: strings(&["testing@secure.istio.io/*"]),
                    ..Default::default()
                },
                Source {
                    namespaces: strings(&["foo"]),
                    not_principals: strings(&["*/sa/admin"]),
                    ..Default::default()
                },
            ],
            to: vec![Operation {
                hosts: strings(&["details*"]),
                ports: vec![9080],
                not_ports: vec![15000],
                not_methods: strings(&["DELETE"]),
                paths: strings(&["/details/{*}"]),
                not_paths: strings(&["/admin*", "*/private"]),
                ..Default::default()
            }],
            when: vec![
                Condition {
                    key: "request.headers[version]".into(),
                    values: strings(&["v1", "v2"]),
                    not_values: vec![],
                },
                Condition {
                    key: "request.auth.claims[groups]".into(),
                    values: strings(&["group1"]),
                    not_values: vec![],
                },
                Condition {
                    key: "source.ip".into(),
                    values: vec![],
                    not_values: strings(&["10.0.0.9"]),
                },
            ],
            unsupported: vec![],
        }]
    );
}

#[test]
fn custom_audit_and_conditions_ama_cannot_evaluate() {
    let m = model(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: CUSTOM
  provider: {name: sample-ext-authz-grpc}
  rules: [{to: [{operation: {paths: [/headers]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: foo}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: [/headers]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mysql, namespace: foo}
spec:
  action: DENY
  rules:
  - when:
    - {key: destination.port, values: ['3306']}
    - {key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]']}
",
    );
    let custom = policy(&m, "foo", "ext-authz").policy.expect("policy");
    assert_eq!(custom.action, Action::Custom);
    assert_eq!(custom.provider, "sample-ext-authz-grpc");
    assert_eq!(custom.rules[0].to[0].paths, ["/headers"]);
    assert_eq!(
        policy(&m, "foo", "audit").policy.map(|p| p.action),
        Some(Action::Audit)
    );
    let mysql = policy(&m, "foo", "mysql").policy.expect("policy");
    assert_eq!(
        mysql.rules,
        [Rule {
            when: vec![Condition {
                key: "destination.port".into(),
                values: strings(&["3306"]),
                not_values: vec![],
            }],
            unsupported: strings(&[
                "rules[0].when[1]: key experimental.envoy.filters.network.mysql_proxy[db.table]"
            ]),
            ..Default::default()
        }]
    );
}

#[test]
fn api_and_wire_agree_on_the_conditions_ama_evaluates() {
    // Every key Istio's validation accepts is either evaluated by the proxy or reported by
    // api::support (which marks exactly those api says it cannot evaluate).
    for key in xds::CONDITION_KEYS.iter().map(|k| k.to_string()).chain([
        "request.headers[x-a]".into(),
        "request.auth.claims[a][b]".into(),
    ]) {
        assert!(
            api::security::authorization_policy::condition_key_evaluated(&key)
                && xds::condition_key_known(&key),
            "{key}"
        );
    }
    let key = "experimental.envoy.filters.a[b]";
    assert!(!api::security::authorization_policy::condition_key_evaluated(key));
    assert!(!security::condition_evaluated(key));
    // Keys near the known ones: api's validation refuses each one the wire does not know, so
    // none reaches the model unreported.
    for key in [
        "request.headersX[a]",
        "request.auth.claims[a][]",
        "request.auth.claims",
        "request.headers[]",
        "source.ipx",
    ] {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\n\
             spec: {{rules: [{{when: [{{key: '{key}', values: [a]}}]}}]}}\n"
        );
        // Refused, the policy stands as one Ama cannot read: a DENY of everything it binds.
        let (objects, _) = parse_stream(&yaml, "t.yaml");
        assert!(
            matches!(&objects[..], [Object::UnreadablePolicy(_)])
                || security::condition_evaluated(key),
            "{key} accepted by api, unknown to the wire"
        );
        assert!(
            matches!(&objects[..], [Object::UnreadablePolicy(_)]),
            "{key}"
        );
    }
}

#[test]
fn target_refs_bind_the_pods_of_services() {
    let m = model(
        "apiVersion: v1
kind: Service
metadata: {name: productpage, namespace: default}
spec:
  selector: {app: productpage}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: manual, namespace: default}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: viewer, namespace: default}
spec:
  targetRefs:
  - {kind: Service, group: '', name: productpage}
  - {kind: Gateway, group: gateway.networking.k8s.io, name: ingress}
  - {kind: Service, group: core, name: reviews}
  - {kind: Service, name: missing}
  - {kind: Service, name: manual}
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gateway-only, namespace: default}
spec:
  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: ingress}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  targetRef: {kind: Service, name: productpage}
  jwtRules: [{issuer: a, jwks: '{\"keys\": []}'}]
",
    );
    let got: Vec<(&str, &Labels)> = m
        .authorizations
        .iter()
        .map(|a| (a.name.as_str(), &a.selector))
        .collect();
    let pp = labels(&[("app", "productpage")]);
    let rv = labels(&[("app", "reviews")]);
    assert_eq!(
        got,
        [
            ("converted_request_authentication_jwt", &pp),
            ("viewer", &pp),
            ("viewer#2", &rv),
        ],
        "a target that binds nothing never falls back to the namespace"
    );
    assert_eq!(
        m.warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "AuthorizationPolicy default/viewer: spec.targetRefs[3]: Service default/missing does not exist: this reference binds nothing",
            "AuthorizationPolicy default/viewer: spec.targetRefs[4]: Service default/manual has no selector: this reference binds nothing",
        ]
    );
}

const JWT: &str = "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-example, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  jwtRules:
  - issuer: testing@secure.istio.io
    jwksUri: http://127.0.0.1:1/jwks.json
    audiences: [a, b]
    fromHeaders: [{name: x-jwt-assertion, prefix: 'Bearer '}]
    fromParams: [my_token]
    fromCookies: [session]
    outputPayloadToHeader: x-jwt-payload
    forwardOriginalToken: true
    outputClaimToHeaders: [{header: x-jwt-group, claim: group}]
    timeout: 8s
  - issuer: inline
    jwks: '{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}'
  - issuer: broken
    jwks: '{\"keys\": 1}'
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-example, namespace: bar}
spec:
  jwtRules:
  - {issuer: other, jwksUri: 'http://127.0.0.1:1/jwks.json'}
  - {issuer: third, jwksUri: 'https://example.com/keys'}
  - {issuer: 'https://accounts.example.com/', timeout: 1s}
  - {issuer: testing@secure.istio.io}
";

#[test]
fn request_authentication_with_its_key_sets() {
    let uri = "http://127.0.0.1:1/jwks.json";
    let set = r#"{"keys": [{"kty": "RSA", "e": "AQAB", "n": "abc"}]}"#;
    // Not fetched yet: empty (every token of the issuer fails), and no warning.
    let m = model(JWT);
    assert_eq!(
        m.jwks_sources,
        [
            JwksSource {
                uri: "http://127.0.0.1:1/jwks.json".into(),
                timeout: std::time::Duration::from_secs(8),
                discover: false,
            },
            // Neither jwks nor jwksUri: the issuer's OpenID Connect discovery document (an
            // issuer that is no URL has none; api::support reports it).
            JwksSource {
                uri: "https://accounts.example.com/.well-known/openid-configuration".into(),
                timeout: std::time::Duration::from_secs(1),
                discover: true,
            },
            JwksSource {
                uri: "https://example.com/keys".into(),
                timeout: std::time::Duration::from_secs(5),
                discover: false,
            },
        ]
    );
    let name = format!("{REQUEST_AUTHENTICATION_PREFIX}jwt-example");
    let a = policy(&m, "foo", &name);
    assert_eq!(a.selector, labels(&[("app", "httpbin")]));
    assert!(a.policy.is_none());
    let rules = a
        .request_authentication
        .expect("requestAuthentication")
        .jwt_rules;
    assert_eq!(
        rules[0],
        xds::JwtRule {
            issuer: "testing@secure.istio.io".into(),
            audiences: strings(&["a", "b"]),
            jwks: String::new(),
            jwks_uri: uri.into(),
            from_headers: vec![xds::JwtHeader {
                name: "x-jwt-assertion".into(),
                prefix: "Bearer ".into(),
            }],
            from_params: strings(&["my_token"]),
            from_cookies: strings(&["session"]),
            output_payload_to_header: "x-jwt-payload".into(),
            forward_original_token: true,
            output_claim_to_headers: vec![xds::ClaimToHeader {
                header: "x-jwt-group".into(),
                claim: "group".into(),
            }],
        }
    );
    assert_eq!(
        rules[1].jwks,
        r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#
    );
    assert_eq!(
        rules[2].jwks, "",
        "not a key set: sent empty, so every token fails"
    );
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);

    // Fetched: the set goes inline; a failed fetch is a warning naming the rule.
    let fetched: FetchedJwks = [
        (uri.to_string(), Ok(set.to_string())),
        (
            "https://example.com/keys".to_string(),
            Err("404 Not Found".to_string()),
        ),
        (
            "https://accounts.example.com/.well-known/openid-configuration".to_string(),
            Ok(set.to_string()),
        ),
    ]
    .into_iter()
    .collect();
    let m = model_with(JWT, &fetched);
    let foo = policy(&m, "foo", &name).request_authentication.expect("ra");
    assert_eq!(foo.jwt_rules[0].jwks, set);
    let bar = policy(&m, "bar", &name).request_authentication.expect("ra");
    assert_eq!(bar.jwt_rules[0].jwks, set);
    assert_eq!(bar.jwt_rules[1].jwks, "");
    assert_eq!(
        bar.jwt_rules[2].jwks, set,
        "found through OpenID Connect discovery"
    );
    assert_eq!(bar.jwt_rules[3].jwks, "");
    assert_eq!(
        m.warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "RequestAuthentication bar/jwt-example: spec.jwtRules[1].jwksUri: https://example.com/keys: 404 Not Found: every token of issuer \"third\" is rejected (401) until the key set is fetched"
        ]
    );
}

#[test]
fn names_of_both_kinds_do_not_collide() {
    let m = model(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  jwtRules: [{issuer: a, jwks: '{\"keys\": []}'}]
",
    );
    let names: Vec<&str> = m.authorizations.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["converted_request_authentication_httpbin", "httpbin"]
    );
}

#[test]
fn policies_ama_cannot_read_deny_everything_they_bind() {
    let yaml = "apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {app: httpbin}
  ports: [{port: 8000}]
---
apiVersion: v1
kind: Service
metadata: {name: sleep, namespace: foo}
spec:
  selector: {app: sleep}
  ports: [{port: 80}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-selector, namespace: foo, annotations: {istio.io/dry-run: 'true'}}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{from: [{source: {bogus: [a]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: namespace-wide, namespace: foo}
spec:
  action: DENNY
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  rules: [{to: [{operation: {methods: GET}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-service, namespace: foo}
spec:
  targetRefs: [{kind: Service, name: httpbin}, {kind: Service, name: sleep}]
  rules: [{when: [{key: source.ip, values: 1}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: sleep}}
  jwtRules: [{issuer: a, bogus: b}]
";
    let m = model(yaml);
    let deny = |ns: &str, name: &str, selector: Labels| Authorization {
        name: name.into(),
        namespace: ns.into(),
        selector,
        policy: Some(AuthorizationPolicy {
            action: Action::Deny,
            rules: vec![Rule::default()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut got = m.authorizations.clone();
    got.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    assert_eq!(
        got,
        [
            deny("foo", "by-selector", labels(&[("app", "httpbin")])),
            deny("foo", "by-service", labels(&[("app", "httpbin")])),
            deny("foo", "by-service#1", labels(&[("app", "sleep")])),
            deny(
                "foo",
                &format!("{REQUEST_AUTHENTICATION_PREFIX}jwt"),
                labels(&[("app", "sleep")])
            ),
            // No selector: the whole namespace, or from the root namespace the whole mesh.
            deny("foo", "namespace-wide", Labels::new()),
            deny("istio-system", "mesh-wide", Labels::new()),
        ]
    );
    // Each denies what it binds, as the proxy reads it.
    let reads = |a: &Authorization, ns: &str, l: &[(&str, &str)]| {
        a.selects(ROOT_NAMESPACE, Some(ns), &labels(l))
    };
    let mesh_wide = policy(&m, "istio-system", "mesh-wide");
    assert!(reads(&mesh_wide, "bar", &[("app", "x")]));
    let namespace_wide = policy(&m, "foo", "namespace-wide");
    assert!(reads(&namespace_wide, "foo", &[("app", "x")]));
    assert!(!reads(&namespace_wide, "bar", &[("app", "x")]));
}

#[test]
fn service_accounts_reach_the_wire_as_written() {
    let m = model(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-account, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from:
    - source: {serviceAccounts: [bar/sleep, sleep], notServiceAccounts: [foo/curl]}
",
    );
    let policy = policy(&m, "foo", "by-account").policy.unwrap_or_default();
    assert_eq!(
        policy.rules,
        [Rule {
            from: vec![Source {
                // A bare name is resolved by the proxy, in the entry's namespace (foo).
                service_accounts: strings(&["bar/sleep", "sleep"]),
                not_service_accounts: strings(&["foo/curl"]),
                ..Default::default()
            }],
            ..Default::default()
        }]
    );
}

#[test]
fn a_peer_authentication_ama_cannot_read_takes_strict_for_what_it_selects() {
    let yaml = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec:
  mtls: {mode: DISABLED}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: bar}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {8080: {mode: DISABLE}}
  bogus: true
";
    let parsed = api::objects::parse(yaml, "pa.yaml");
    let lines: Vec<String> = parsed.findings.iter().map(|f| f.for_terminal()).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("error: pa.yaml:doc 1: PeerAuthentication foo/default: spec.mtls.mode")
            && l.ends_with("Ama cannot read this policy: the workloads it selects accept mutual TLS only (STRICT) until it is fixed")),
        "{lines:#?}"
    );
    let m = model(yaml);
    let modes: Vec<(&str, &str, Option<xds::PeerAuthentication>)> = m
        .authorizations
        .iter()
        .map(|a| {
            (
                a.namespace.as_str(),
                a.name.as_str(),
                a.peer_authentication.clone(),
            )
        })
        .collect();
    let strict = Some(xds::PeerAuthentication {
        mode: xds::MtlsMode::Strict,
        port_level_mtls: Default::default(),
    });
    assert_eq!(
        modes,
        [
            (
                "bar",
                "converted_peer_authentication_httpbin",
                strict.clone()
            ),
            ("foo", "converted_peer_authentication_default", strict),
        ],
        "an unreadable PeerAuthentication is STRICT, port-level modes and all (it cannot be \
         read which of them were meant)"
    );
    assert_eq!(
        policy(&m, "bar", "converted_peer_authentication_httpbin").selector,
        labels(&[("app", "httpbin")])
    );
}
