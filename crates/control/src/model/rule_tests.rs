//! One test per translation rule of [`super::routes`] and [`super::policy`]: YAML in, `xds`
//! resources and warnings out.

use api::objects::{Object, parse};
use pretty_assertions::assert_eq;
use xds::StringMatch as M;

use super::*;

const SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: reviews}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: prod}
spec: {selector: {app: ratings}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: mongo}
spec: {selector: {app: mongo}, ports: [{name: tcp, port: 27017}]}
";

/// The model of `yaml` with the services, and the `ama apply` warnings of `yaml`.
fn build(yaml: &str) -> (Model, Vec<String>) {
    let parsed = parse(yaml, "t.yaml");
    assert_eq!(parsed.errors().count(), 0, "{:?}", parsed.findings);
    let findings = parsed.warnings().map(ToString::to_string).collect();
    let services = parse(SERVICES, "s.yaml");
    let objects: Vec<&Object> = services.objects.iter().chain(&parsed.objects).collect();
    (Model::build(objects, &mut VipAllocator::new()), findings)
}

/// The routes of the only VirtualService of `http` (the `http:` list of a VirtualService for
/// `reviews`), asserting no warning of any kind.
fn http(http: &str) -> Vec<xds::HttpRoute> {
    let (m, findings) = build(&format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
{http}"
    ));
    assert_eq!(findings, Vec::<String>::new());
    assert_eq!(m.warnings, []);
    assert_eq!(m.http_routes.len(), 1);
    m.http_routes[0].resource.http.clone()
}

/// The policy of the only DestinationRule (for `reviews`, with `spec` after `host`).
fn policy(spec: &str) -> xds::TrafficPolicy {
    let (m, findings) = build(&format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
{spec}"
    ));
    // TLS origination is translated but refused by the proxy, and reported as such.
    let unexpected: Vec<&String> = findings
        .iter()
        .filter(|f| !f.contains("tls.mode: SIMPLE:") && !f.contains("tls.mode: MUTUAL:"))
        .collect();
    assert_eq!(unexpected, Vec::<&String>::new());
    assert_eq!(m.warnings, []);
    assert_eq!(m.traffic_policies.len(), 1);
    m.traffic_policies[0].resource.clone()
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

#[test]
fn every_match_condition() {
    let r = http(
        "  - name: r
    match:
    - name: m
      uri: {regex: '/a/[0-9]+'}
      scheme: {exact: https}
      method: {prefix: PO}
      authority: {exact: reviews:9080}
      headers: {X-User: {exact: jason}, x-canary: {}, x-re: {regex: 'a|b'}}
      withoutHeaders: {x-debug: {}, x-any: {regex: '*'}, x-env: {prefix: dev}}
      queryParams: {Version: {exact: '2'}, beta: {regex: 'y.*'}, p: {prefix: x}, flag: {}}
      port: 9080
      sourceLabels: {app: productpage}
      sourceNamespace: front
      ignoreUriCase: true
    - uri: {exact: /b}
    route: [{destination: {host: reviews}}]
",
    );
    let hm = |pairs: &[(&str, M)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    assert_eq!(
        r[0].matches,
        [
            xds::HttpRouteMatch {
                name: Some("m".into()),
                uri: Some(M::Regex("/a/[0-9]+".into())),
                scheme: Some(M::Exact("https".into())),
                method: Some(M::Prefix("PO".into())),
                authority: Some(M::Exact("reviews:9080".into())),
                headers: hm(&[
                    ("x-user", M::Exact("jason".into())),
                    ("x-canary", M::Present),
                    ("x-re", M::Regex("a|b".into())),
                ]),
                // `regex: "*"` is presence (Istio allows it in withoutHeaders only).
                without_headers: hm(&[
                    ("x-debug", M::Present),
                    ("x-any", M::Present),
                    ("x-env", M::Prefix("dev".into())),
                ]),
                // Names keep their case; prefix is what Envoy gets from pilot.
                query_params: hm(&[
                    ("Version", M::Exact("2".into())),
                    ("beta", M::Regex("y.*".into())),
                    ("p", M::Prefix("x".into())),
                    ("flag", M::Present),
                ]),
                port: Some(9080),
                source_labels: [("app".to_string(), "productpage".to_string())].into(),
                source_namespace: Some("front".into()),
                ignore_uri_case: true,
            },
            xds::HttpRouteMatch {
                uri: Some(M::Exact("/b".into())),
                ..Default::default()
            },
        ]
    );
    assert_eq!(r[0].name.as_deref(), Some("r"));
}

#[test]
fn matches_bound_to_gateways_only_are_not_for_sidecars() {
    let (m, findings) = build(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  gateways: [mesh, istio-system/ingress]
  http:
  - match:
    - {uri: {prefix: /gw}, gateways: [istio-system/ingress]}
    route: [{destination: {host: reviews, subset: gw}}]
  - match:
    - {uri: {prefix: /both}, gateways: [istio-system/ingress, mesh]}
    - {uri: {prefix: /gw2}, gateways: [istio-system/ingress]}
    route: [{destination: {host: reviews, subset: both}}]
  - route: [{destination: {host: reviews}}]
",
    );
    // Gateways are implemented: binding to them is no finding.
    assert!(findings.is_empty(), "{findings:#?}");
    let r = &m.http_routes[0].resource.http;
    // The route whose only match is for a gateway is left out, not widened to match all.
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[0].matches,
        [xds::HttpRouteMatch {
            uri: Some(M::Prefix("/both".into())),
            ..Default::default()
        }]
    );
    assert!(r[1].matches.is_empty());
}

#[test]
fn destinations_ports_weights_and_headers() {
    let r = http(
        "  - route:
    - destination: {host: reviews, subset: v1, port: {number: 9080}}
      weight: 75
      headers:
        request: {set: {X-Version: v1}, add: {x-a: b}, remove: [X-Drop]}
        response: {set: {x-served-by: v1}}
    - destination: {host: ratings.prod.svc.cluster.local}
      weight: 25
    headers:
      request: {set: {x-route: r}}
      response: {remove: [server]}
",
    );
    let d = &r[0].route;
    assert_eq!(d[0].host, REVIEWS);
    assert_eq!(
        (d[0].port, d[0].subset.as_deref(), d[0].weight),
        (Some(9080), Some("v1"), 75)
    );
    assert_eq!(
        d[0].headers.request,
        xds::HeaderOps {
            set: [("x-version".to_string(), "v1".to_string())].into(),
            add: [("x-a".to_string(), "b".to_string())].into(),
            remove: vec!["x-drop".into()],
        }
    );
    assert_eq!(d[0].headers.response.set["x-served-by"], "v1");
    assert_eq!(
        (d[1].host.as_str(), d[1].weight),
        ("ratings.prod.svc.cluster.local", 25)
    );
    assert_eq!(r[0].headers.request.set["x-route"], "r");
    assert_eq!(r[0].headers.response.remove, ["server"]);
}

#[test]
fn rewrite_redirect_and_direct_response() {
    let r = http(
        "  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new, authority: reviews.internal}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /re}}]
    rewrite: {uriRegexRewrite: {match: '^/re/(.*)$', rewrite: '/\\1'}}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /moved}}]
    redirect: {uri: /here, authority: other, port: 8443, scheme: https, redirectCode: 302}
  - match: [{uri: {prefix: /derived}}]
    redirect: {scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}
  - match: [{uri: {prefix: /same}}]
    redirect: {authority: x, derivePort: FROM_REQUEST_PORT}
  - match: [{uri: {prefix: /text}}]
    directResponse: {status: 503, body: {string: unavailable}}
  - directResponse: {status: 200, body: {bytes: aGVsbG8=}}
",
    );
    assert_eq!(
        r[0].rewrite,
        Some(xds::Rewrite {
            uri: Some("/new".into()),
            authority: Some("reviews.internal".into()),
            uri_regex: None,
        })
    );
    assert_eq!(
        r[1].rewrite.as_ref().and_then(|rw| rw.uri_regex.clone()),
        Some(xds::RegexRewrite {
            regex: "^/re/(.*)$".into(),
            substitution: "/\\1".into(),
        })
    );
    assert_eq!(
        r[2].redirect,
        Some(xds::Redirect {
            uri: Some("/here".into()),
            authority: Some("other".into()),
            port: Some(xds::RedirectPort::Port(8443)),
            scheme: Some("https".into()),
            code: 302,
        })
    );
    assert!(r[2].route.is_empty());
    assert_eq!(
        r[3].redirect.as_ref().map(|rd| (rd.port.clone(), rd.code)),
        Some((Some(xds::RedirectPort::FromProtocolDefault), 0))
    );
    assert_eq!(r[4].redirect.as_ref().and_then(|rd| rd.port.clone()), None);
    assert_eq!(
        r[5].direct_response,
        Some(xds::DirectResponse {
            status: 503,
            body: Some("unavailable".into()),
        })
    );
    assert_eq!(
        r[6].direct_response,
        Some(xds::DirectResponse {
            status: 200,
            body: Some("hello".into()),
        })
    );
}

#[test]
fn binary_direct_response_body_is_a_warning() {
    let (m, findings) = build(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - directResponse: {status: 200, body: {bytes: /w==}}
",
    );
    assert_eq!(findings, Vec::<String>::new());
    assert_eq!(
        m.warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "VirtualService default/reviews: spec.http[0].directResponse.body.bytes: not UTF-8 \
          text, which is all Ama's direct responses carry: sent with U+FFFD in place of the \
          invalid bytes"
        ]
    );
}

#[test]
fn retries_as_pilot_converts_them() {
    let r = http(
        "  - match: [{uri: {prefix: /none}}]
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /off}}]
    route: [{destination: {host: reviews}}]
    retries: {attempts: 0, retryOn: 5xx}
  - match: [{uri: {prefix: /default-on}}]
    route: [{destination: {host: reviews}}]
    retries: {attempts: 3}
  - route: [{destination: {host: reviews}}]
    retries:
      attempts: 5
      perTryTimeout: 250ms
      retryOn: 'gateway-error,connect-failure,unavailable,503'
      retryIgnorePreviousHosts: false
      backoff: 100ms
",
    );
    assert_eq!(
        r[0].retries, None,
        "none written: the proxy applies Istio's default"
    );
    assert_eq!(
        r[1].retries,
        Some(xds::RetryPolicy {
            attempts: 0,
            ..Default::default()
        }),
        "attempts 0 turns retries off"
    );
    assert_eq!(
        r[2].retries,
        Some(xds::RetryPolicy {
            attempts: 3,
            per_try_timeout_ms: None,
            retry_on: Some(
                "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
                    .into()
            ),
            backoff_ms: None,
            retry_other_hosts: true,
        })
    );
    assert_eq!(
        r[3].retries,
        Some(xds::RetryPolicy {
            attempts: 5,
            per_try_timeout_ms: Some(250),
            retry_on: Some("gateway-error,connect-failure,unavailable,503".into()),
            backoff_ms: Some(100),
            retry_other_hosts: false,
        })
    );
}

#[test]
fn faults_percentages_and_grpc_status_names() {
    let r = http(
        "  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: reviews}}]
    fault:
      delay: {fixedDelay: 1.5s, percentage: {value: 0.0001}}
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 50}}
  - match: [{uri: {prefix: /b}}]
    route: [{destination: {host: reviews}}]
    fault:
      delay: {fixedDelay: 2s, percent: 30}
      abort: {grpcStatus: DEADLINE_EXCEEDED}
  - match: [{uri: {prefix: /c}}]
    route: [{destination: {host: reviews}}]
    fault:
      delay: {fixedDelay: 2s}
      abort: {httpStatus: 418, percentage: {value: 12.34567}}
  - route: [{destination: {host: reviews}}]
    fault: {abort: {grpcStatus: OK, percentage: {value: 100}}}
",
    );
    let fault = |i: usize| r[i].fault.clone().expect("fault");
    let a = fault(0);
    assert_eq!(
        a.delay,
        Some(xds::FaultDelay {
            fixed_delay_ms: 1500,
            per_million: 1,
        })
    );
    assert_eq!(
        a.abort,
        Some(xds::FaultAbort {
            status: xds::AbortStatus::Grpc(14),
            per_million: 500_000,
        })
    );
    let b = fault(1);
    assert_eq!(
        b.delay.map(|d| d.per_million),
        Some(300_000),
        "deprecated percent"
    );
    assert_eq!(
        b.abort,
        Some(xds::FaultAbort {
            status: xds::AbortStatus::Grpc(4),
            // No percentage: Envoy's unset fraction, no request is aborted (Istio's docs).
            per_million: 0,
        })
    );
    let c = fault(2);
    assert_eq!(
        c.delay.map(|d| d.per_million),
        Some(0),
        "no percentage: none delayed"
    );
    assert_eq!(
        c.abort,
        Some(xds::FaultAbort {
            status: xds::AbortStatus::Http(418),
            per_million: 123_456,
        })
    );
    assert_eq!(
        fault(3).abort.map(|a| a.status),
        Some(xds::AbortStatus::Grpc(0))
    );
}

#[test]
fn http2_error_abort_is_reported_and_left_out() {
    let (m, findings) = build(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    fault: {abort: {http2Error: REFUSED_STREAM, percentage: {value: 100}}}
",
    );
    assert_eq!(
        findings,
        [
            "t.yaml:doc 1: VirtualService default/reviews: spec.http[0].fault.abort.http2Error: not \
          implemented by Ama (nor by Istio's sidecars); this abort is ignored"
        ]
    );
    assert_eq!(m.http_routes[0].resource.http[0].fault, None);
}

#[test]
fn mirrors_and_their_percentages() {
    let r = http(
        "  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v2}
  - match: [{uri: {prefix: /b}}]
    route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: ratings.prod.svc.cluster.local, port: {number: 9080}}
    mirrorPercent: 40
  - match: [{uri: {prefix: /c}}]
    route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 0}
  - route: [{destination: {host: reviews, subset: v1}}]
    mirrors:
    - destination: {host: reviews, subset: v2}
    - destination: {host: reviews, subset: v3}
      percentage: {value: 25.5}
    - destination: {host: reviews, subset: v4}
      percentage: {value: 0}
",
    );
    let mirror = |subset: &str, per_million: u32| xds::Mirror {
        host: REVIEWS.into(),
        port: None,
        subset: Some(subset.into()),
        per_million,
    };
    assert_eq!(
        r[0].mirrors,
        [mirror("v2", 1_000_000)],
        "no percentage: 100%"
    );
    assert_eq!(
        r[1].mirrors,
        [xds::Mirror {
            host: "ratings.prod.svc.cluster.local".into(),
            port: Some(9080),
            subset: None,
            per_million: 400_000,
        }]
    );
    assert_eq!(r[2].mirrors, [], "an explicit 0 mirrors nothing");
    assert_eq!(
        r[3].mirrors,
        [mirror("v2", 1_000_000), mirror("v3", 255_000)]
    );
}

#[test]
fn timeout_and_cors() {
    let r = http(
        "  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: reviews}}]
    timeout: 0.5s
    corsPolicy:
      allowOrigins: [{exact: 'https://a.example.com'}, {regex: 'https://.*\\.b\\.com'}]
      allowMethods: [GET, POST]
      allowHeaders: [x-a]
      exposeHeaders: [x-b]
      maxAge: 24h
      allowCredentials: true
      unmatchedPreflights: IGNORE
  - route: [{destination: {host: reviews}}]
    corsPolicy: {allowOrigin: ['https://old.example.com']}
",
    );
    assert_eq!(r[0].timeout_ms, Some(500));
    assert_eq!(
        r[0].cors,
        Some(xds::Cors {
            allow_origins: vec![
                M::Exact("https://a.example.com".into()),
                M::Regex("https://.*\\.b\\.com".into()),
            ],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["x-a".into()],
            expose_headers: vec!["x-b".into()],
            max_age_s: Some(86_400),
            allow_credentials: Some(true),
            unmatched_preflights: xds::UnmatchedPreflights::Ignore,
        })
    );
    assert_eq!(r[1].timeout_ms, None);
    assert_eq!(
        r[1].cors
            .as_ref()
            .map(|c| (c.allow_origins.clone(), c.unmatched_preflights)),
        Some((
            vec![M::Exact("https://old.example.com".into())],
            xds::UnmatchedPreflights::Forward
        ))
    );
}

#[test]
fn tcp_and_tls_routes() {
    let (m, findings) = build(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mongo}
spec:
  hosts: [mongo]
  tcp:
  - match: [{port: 27017, destinationSubnets: [10.0.0.0/8], sourceLabels: {app: a}, sourceNamespace: front}]
    route:
    - {destination: {host: mongo, subset: v1, port: {number: 27017}}, weight: 70}
    - {destination: {host: mongo, subset: v2}, weight: 30}
  - match: [{gateways: [istio-system/ingress]}]
    route: [{destination: {host: mongo, subset: gw}}]
  - route: [{destination: {host: mongo}}]
  tls:
  - match: [{sniHosts: [Mongo.Example.com], port: 443}]
    route: [{destination: {host: mongo, subset: tls}}]
",
    );
    assert!(findings.is_empty(), "the gateway-bound match: {findings:?}");
    let r = &m.http_routes[0].resource;
    let mongo = "mongo.default.svc.cluster.local";
    assert!(r.http.is_empty());
    assert_eq!(
        r.tcp,
        [
            xds::L4Route {
                matches: vec![xds::L4Match {
                    port: Some(27017),
                    sni_hosts: vec![],
                    destination_subnets: vec!["10.0.0.0/8".into()],
                    source_labels: [("app".to_string(), "a".to_string())].into(),
                    source_namespace: Some("front".into()),
                }],
                route: vec![
                    xds::RouteDestination {
                        host: mongo.into(),
                        port: Some(27017),
                        subset: Some("v1".into()),
                        weight: 70,
                        ..Default::default()
                    },
                    xds::RouteDestination {
                        host: mongo.into(),
                        subset: Some("v2".into()),
                        weight: 30,
                        ..Default::default()
                    },
                ],
            },
            xds::L4Route {
                matches: vec![],
                route: vec![xds::RouteDestination {
                    host: mongo.into(),
                    weight: 100,
                    ..Default::default()
                }],
            },
        ]
    );
    assert_eq!(
        r.tls,
        [xds::L4Route {
            matches: vec![xds::L4Match {
                port: Some(443),
                sni_hosts: vec!["mongo.example.com".into()],
                ..Default::default()
            }],
            route: vec![xds::RouteDestination {
                host: mongo.into(),
                subset: Some("tls".into()),
                weight: 100,
                ..Default::default()
            }],
        }]
    );
}

#[test]
fn several_virtual_services_for_one_host() {
    let (m, _) = build(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: b}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-reviews}
spec:
  hosts: [reviews, mongo]
  http: [{route: [{destination: {host: reviews, subset: a}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: prod}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http: [{route: [{destination: {host: reviews.default.svc.cluster.local, subset: p}}]}]
",
    );
    assert_eq!(
        m.warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "VirtualService default/b-reviews: spec.hosts: reviews.default.svc.cluster.local is \
             also routed by VirtualService default/a-reviews, which wins (Istio uses one \
             VirtualService per host for sidecars, the oldest, and does not merge them): it is \
             not used for this host",
            "VirtualService prod/reviews: spec.hosts: reviews.default.svc.cluster.local is also \
             routed by VirtualService default/a-reviews, which wins (Istio uses one \
             VirtualService per host for sidecars, the oldest, and does not merge them): only \
             proxies in namespace prod use this one for it",
        ]
    );
}

#[test]
fn subsets_with_their_own_and_port_level_policies() {
    let tp = policy(
        "  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: LEAST_CONN}
      connectionPool: {http: {http2MaxRequests: 7}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      connectionPool: {tcp: {maxConnections: 3}}
      portLevelSettings:
      - port: {number: 9080}
        loadBalancer: {simple: PASSTHROUGH}
  - name: v2
    labels: {version: v2, track: stable}
",
    );
    let lb = |p: xds::LbPolicy| {
        Some(xds::LoadBalancer {
            simple: Some(p),
            consistent_hash: None,
        })
    };
    assert_eq!(tp.policy.settings.load_balancer, lb(xds::LbPolicy::Random));
    let port = &tp.policy.port_level_settings[0];
    assert_eq!(port.port, 9080);
    assert_eq!(port.settings.load_balancer, lb(xds::LbPolicy::LeastRequest));
    assert_eq!(
        port.settings
            .connection_pool
            .as_ref()
            .and_then(|p| p.http.max_requests),
        Some(7)
    );
    let v1 = tp.subset("v1").expect("v1");
    assert_eq!(v1.labels["version"], "v1");
    let v1p = v1.policy.as_ref().expect("v1's policy");
    assert_eq!(
        v1p.settings
            .connection_pool
            .as_ref()
            .and_then(|p| p.tcp.max_connections),
        Some(3)
    );
    assert_eq!(
        v1p.port_level_settings[0].settings.load_balancer,
        lb(xds::LbPolicy::Passthrough)
    );
    let v2 = tp.subset("v2").expect("v2");
    assert_eq!(v2.labels.len(), 2);
    assert_eq!(v2.policy, None);
    // Istio's precedence, by the contract's `effective`.
    assert_eq!(
        tp.effective(9080, Some("v1")).load_balancer,
        lb(xds::LbPolicy::Passthrough)
    );
    assert_eq!(
        tp.effective(80, Some("v1")).load_balancer,
        lb(xds::LbPolicy::Random)
    );
    assert_eq!(
        tp.effective(9080, Some("v2")).load_balancer,
        lb(xds::LbPolicy::LeastRequest)
    );
}

#[test]
fn consistent_hash_keys_and_algorithms() {
    let tp = policy(
        "  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: X-User}}
  subsets:
  - name: cookie
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpCookie: {name: session, path: /, ttl: 0s}
          ringHash: {minimumRingSize: 2048}
  - name: ip
    trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}}
  - name: query
    trafficPolicy: {loadBalancer: {consistentHash: {httpQueryParameterName: user, minimumRingSize: 64}}}
  - name: ttl
    trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: c, ttl: 10s}}}}
",
    );
    let hash = |subset: Option<&str>| {
        tp.effective(9080, subset)
            .load_balancer
            .and_then(|lb| lb.consistent_hash)
            .map(|ch| (ch.key, ch.algorithm))
    };
    let ring = |minimum_ring_size| xds::HashAlgorithm::Ring { minimum_ring_size };
    assert_eq!(
        hash(None),
        Some((xds::HashKey::Header("x-user".into()), ring(0)))
    );
    assert_eq!(
        hash(Some("cookie")),
        Some((
            xds::HashKey::Cookie {
                name: "session".into(),
                path: Some("/".into()),
                ttl_ms: Some(0),
            },
            ring(2048)
        ))
    );
    assert_eq!(
        hash(Some("ip")),
        Some((
            xds::HashKey::SourceIp,
            xds::HashAlgorithm::Maglev { table_size: 65537 }
        ))
    );
    assert_eq!(
        hash(Some("query")),
        Some((xds::HashKey::QueryParameter("user".into()), ring(64)))
    );
    assert_eq!(
        hash(Some("ttl")).map(|(k, _)| k),
        Some(xds::HashKey::Cookie {
            name: "c".into(),
            path: None,
            ttl_ms: Some(10_000),
        })
    );
}

#[test]
fn connection_pool_outlier_detection_and_tls() {
    let tp = policy(
        "  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 0
        connectTimeout: 250ms
        tcpKeepalive: {probes: 3, time: 10s, interval: 2s}
        maxConnectionDuration: 1h
        idleTimeout: 5m
      http:
        http1MaxPendingRequests: 2
        http2MaxRequests: 10
        maxRequestsPerConnection: 1
        maxRetries: 4
        h2UpgradePolicy: UPGRADE
        useClientProtocol: true
    outlierDetection:
      consecutive5xxErrors: 0
      consecutiveGatewayErrors: 2
      consecutiveLocalOriginFailures: 3
      splitExternalLocalOriginErrors: true
      interval: 5s
      baseEjectionTime: 30s
      maxEjectionPercent: 0
      minHealthPercent: 20
    tls:
      mode: MUTUAL
      sni: reviews.example.com
      subjectAltNames: [spiffe://example.com/reviews]
      caCertificates: /etc/certs/ca.pem
      clientCertificate: /etc/certs/cert.pem
      privateKey: /etc/certs/key.pem
      insecureSkipVerify: true
  subsets:
  - name: tcp-idle
    trafficPolicy:
      connectionPool: {tcp: {idleTimeout: 1m}, http: {h2UpgradePolicy: DO_NOT_UPGRADE}}
      outlierDetection: {consecutiveLocalOriginFailures: 3}
      tls: {mode: ISTIO_MUTUAL}
",
    );
    let s = &tp.policy.settings;
    let pool = s.connection_pool.clone().expect("pool");
    assert_eq!(
        pool.tcp,
        xds::TcpPool {
            max_connections: None,
            connect_timeout_ms: Some(250),
            tcp_keepalive: Some(xds::TcpKeepalive {
                probes: Some(3),
                time_ms: Some(10_000),
                interval_ms: Some(2_000),
            }),
            max_connection_duration_ms: Some(3_600_000),
            idle_timeout_ms: Some(300_000),
        }
    );
    assert_eq!(
        pool.http,
        xds::HttpPool {
            max_pending_requests: Some(2),
            max_requests: Some(10),
            max_requests_per_connection: Some(1),
            max_retries: Some(4),
            // The TCP idle timeout, as pilot falls back to it.
            idle_timeout_ms: Some(300_000),
            h2_upgrade: Some(true),
            use_client_protocol: true,
        }
    );
    assert_eq!(
        s.outlier_detection,
        Some(xds::OutlierDetection {
            consecutive_5xx_errors: Some(0),
            consecutive_gateway_errors: Some(2),
            consecutive_local_origin_failures: Some(3),
            split_external_local_origin_errors: true,
            interval_ms: Some(5_000),
            base_ejection_time_ms: Some(30_000),
            max_ejection_percent: None,
            min_health_percent: Some(20),
        })
    );
    assert_eq!(
        s.tls,
        Some(xds::ClientTls {
            mode: xds::ClientTlsMode::Mutual,
            sni: Some("reviews.example.com".into()),
            subject_alt_names: vec!["spiffe://example.com/reviews".into()],
            ca_certificates: Some("/etc/certs/ca.pem".into()),
            client_certificate: Some("/etc/certs/cert.pem".into()),
            private_key: Some("/etc/certs/key.pem".into()),
            insecure_skip_verify: true,
            credential_name: None,
            credential: None,
        })
    );
    let sub = tp
        .subset("tcp-idle")
        .and_then(|s| s.policy.clone())
        .expect("subset policy")
        .settings;
    let sub_pool = sub.connection_pool.expect("pool");
    assert_eq!(sub_pool.http.idle_timeout_ms, Some(60_000));
    assert_eq!(sub_pool.http.h2_upgrade, Some(false));
    assert_eq!(
        sub.outlier_detection
            .map(|o| (o.consecutive_local_origin_failures, o.min_health_percent)),
        Some((None, Some(0))),
        "local-origin failures count only when split; panic threshold 0 when unset"
    );
    assert_eq!(
        sub.tls.map(|t| t.mode),
        Some(xds::ClientTlsMode::IstioMutual)
    );
}

#[test]
fn mutual_tls_from_a_secret_without_selector_fails_closed() {
    let (m, findings) = build(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: reviews-client}
",
    );
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(
        findings[0].contains("spec.trafficPolicy.tls.credentialName"),
        "{findings:?}"
    );
    // The TLS settings stay, naming the Secret without its credential: the proxy fails these
    // connections rather than sending plaintext.
    let tls = m.traffic_policies[0]
        .resource
        .policy
        .settings
        .tls
        .clone()
        .expect("tls kept");
    assert_eq!(tls.mode, xds::ClientTlsMode::Mutual);
    assert_eq!(
        tls.credential_name.as_deref(),
        Some("default/reviews-client")
    );
    assert_eq!(tls.credential, None);
    assert_eq!(
        m.warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "DestinationRule default/reviews: tls.credentialName: reviews-client: Istio reads a \
             DestinationRule's Secret for sidecars only when the rule has a workloadSelector: \
             on sidecars, connections with these TLS settings fail (503 UF), never in plaintext \
             (gateway proxies read it in their own namespace)"
        ]
    );
}

#[test]
fn destination_rules_for_one_host_merge_as_pilot_merges_them() {
    let (m, _) = build(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets:
  - {name: v1, labels: {version: other}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: c}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: only-front}
spec:
  host: reviews
  exportTo: [front]
  subsets: [{name: v9, labels: {version: v9}}]
",
    );
    // a (first by name) takes b's v3 and b's policy (a has none); c's policy comes too late.
    assert_eq!(m.traffic_policies.len(), 2);
    let a = &m.traffic_policies[0].resource;
    assert_eq!(a.name, "default/a");
    assert_eq!(
        a.subsets
            .iter()
            .map(|s| (s.name.as_str(), s.labels["version"].as_str()))
            .collect::<Vec<_>>(),
        [("v1", "v1"), ("v2", "v2"), ("v3", "v3")]
    );
    assert_eq!(
        a.policy
            .settings
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.simple),
        Some(xds::LbPolicy::Random)
    );
    // Another exportTo is not merged.
    assert_eq!(m.traffic_policies[1].resource.name, "default/only-front");
    assert_eq!(
        m.warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "DestinationRule default/b: spec.subsets[0]: subset \"v1\" of \
             reviews.default.svc.cluster.local is already defined by DestinationRule default/a, \
             which Istio merges this rule into (the oldest first): ignored",
            "DestinationRule default/c: spec.trafficPolicy: DestinationRule default/a for the \
             same host reviews.default.svc.cluster.local has one, and Istio keeps the first when \
             it merges rules: ignored",
        ]
    );
}

#[test]
fn destination_rule_lookup_per_proxy() {
    let dr = |ns: &str, name: &str, host: &str, export: &str, lb: &str| {
        format!(
            "---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {ns}}}
spec:
  host: '{host}'
  exportTo: [{export}]
  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}
"
        )
    };
    let yaml = [
        dr(
            "default",
            "a-wild",
            "*.default.svc.cluster.local",
            "'.'",
            "RANDOM",
        ),
        dr("default", "reviews", "reviews", "'.'", "ROUND_ROBIN"),
        dr("istio-system", "mesh", REVIEWS, "'*'", "LEAST_REQUEST"),
        dr("aaa", "other", REVIEWS, "'*'", "PASSTHROUGH"),
        dr("front", "local", REVIEWS, "'*'", "RANDOM"),
    ]
    .concat();
    let (m, _) = build(&yaml);
    let lb_for = |namespace: &str| {
        let key = crate::translate::ProxyKey {
            ip: "10.9.9.9".parse().expect("ip"),
            pod_name: "p".into(),
            namespace: namespace.into(),
        };
        let r = crate::translate::proxy_resources(&m, &key);
        let p = r
            .traffic_policies
            .iter()
            .find(|p| p.host == REVIEWS)
            .expect("a policy for reviews");
        (
            p.name.clone(),
            p.policy
                .settings
                .load_balancer
                .as_ref()
                .and_then(|lb| lb.simple),
        )
    };
    // The host named wins over the wildcard that covers it, whatever the names.
    assert_eq!(
        lb_for("default"),
        ("default/reviews".into(), Some(xds::LbPolicy::RoundRobin))
    );
    assert_eq!(
        lb_for("front"),
        ("front/local".into(), Some(xds::LbPolicy::Random))
    );
    // Neither the proxy's nor the host's namespace has one it sees: the root namespace's, never
    // aaa's.
    assert_eq!(
        lb_for("back"),
        (
            "istio-system/mesh".into(),
            Some(xds::LbPolicy::LeastRequest)
        )
    );
}

#[test]
fn delegation_is_reported_on_both_sides() {
    let (m, findings) = build(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /v2}}]
    delegate: {name: reviews-v2}
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-v2}
spec:
  http: [{route: [{destination: {host: reviews, subset: v2}}]}]
",
    );
    assert_eq!(
        findings,
        [
            "t.yaml:doc 1: VirtualService default/reviews: spec.http[0].delegate: not implemented \
          by Ama; this route is dropped"
        ]
    );
    assert_eq!(m.http_routes.len(), 1);
    assert_eq!(
        m.http_routes[0].resource.http,
        [xds::HttpRoute {
            route: vec![xds::RouteDestination {
                host: REVIEWS.into(),
                weight: 100,
                ..Default::default()
            }],
            ..Default::default()
        }]
    );
    assert_eq!(
        m.warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "VirtualService default/reviews-v2: spec.hosts: none: this is a delegate \
          VirtualService, and delegation is not implemented by Ama: ignored"
        ]
    );
}

#[test]
fn a_virtual_service_with_nothing_for_sidecars_gives_no_routes() {
    let (m, findings) = build(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /}, gateways: [istio-system/ingress]}]
    route: [{destination: {host: reviews, subset: v2}}]
",
    );
    assert_eq!(findings, Vec::<String>::new());
    assert_eq!(m.http_routes, [], "the host keeps its default route");
}

#[test]
fn authority_set_as_a_header_is_a_rewrite() {
    let r = http(
        "  - match: [{uri: {prefix: /a}}]
    headers: {request: {set: {Host: route.example, ':path': /x}, remove: [host, x-a]}}
    route: [{destination: {host: reviews, subset: v1}, headers: {request: {set: {host: dest.example}}}}]
  - match: [{uri: {prefix: /b}}]
    rewrite: {authority: rewritten.example}
    route: [{destination: {host: reviews}, headers: {request: {set: {host: dest.example}}}}]
  - match: [{uri: {prefix: /c}}]
    route: [{destination: {host: reviews}, headers: {request: {add: {':authority': lone.example}}}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50, headers: {request: {set: {host: one.example}}}}
    - {destination: {host: reviews, subset: v2}, weight: 50}
",
    );
    let authority = |i: usize| r[i].rewrite.as_ref().and_then(|rw| rw.authority.clone());
    assert_eq!(authority(0).as_deref(), Some("route.example"));
    assert_eq!(
        r[0].headers.request,
        xds::HeaderOps {
            remove: vec!["x-a".into()],
            ..Default::default()
        },
        "host and pseudo-headers are not header edits"
    );
    assert_eq!(r[0].route[0].headers, xds::Headers::default());
    assert_eq!(authority(1).as_deref(), Some("rewritten.example"));
    assert_eq!(r[1].route[0].headers, xds::Headers::default());
    assert_eq!(authority(2).as_deref(), Some("lone.example"));
    assert_eq!(authority(3), None);
    assert_eq!(r[3].route[0].headers.request.set["host"], "one.example");
    assert_eq!(r[3].route[1].headers, xds::Headers::default());
}

#[test]
fn a_host_named_exactly_is_not_routed_by_a_wildcard() {
    let (m, _) = build(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: all}
spec:
  hosts: ['*.default.svc.cluster.local']
  http: [{route: [{destination: {host: mongo}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v1}}]}]
",
    );
    assert_eq!(
        m.warnings,
        [],
        "not a conflict: the most specific domain wins"
    );
    let hosts = |name: &str| {
        m.http_routes
            .iter()
            .find(|r| r.resource.name == name)
            .map(|r| r.resource.hosts.clone())
    };
    assert_eq!(
        hosts("default/all"),
        Some(vec!["mongo.default.svc.cluster.local".to_string()])
    );
    assert_eq!(hosts("default/reviews"), Some(vec![REVIEWS.to_string()]));
}
