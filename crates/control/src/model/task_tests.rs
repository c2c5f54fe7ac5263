//! Istio's own task YAML through `ama apply`'s parse and the model: bookinfo's
//! `samples/bookinfo/networking/*.yaml` and the YAML of the Request Routing, Traffic Shifting,
//! Fault Injection, Request Timeouts, Circuit Breaking and Mirroring tasks, as Istio publishes them (our own
//! copies of the texts, inline). Each must give no finding at all (it uses only what Ama
//! implements) and the resources that make the tasks behave as Istio's docs show.

use api::objects::{Object, parse};
use pretty_assertions::assert_eq;
use xds::{AbortStatus, FaultAbort, FaultDelay, HttpRouteMatch, RouteDestination, StringMatch};

use super::*;

/// The services the tasks call: bookinfo's four on 9080, httpbin on 8000 (as in Istio's
/// `samples/httpbin/httpbin.yaml`).
const SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: productpage, labels: {app: productpage}}
spec: {selector: {app: productpage}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, labels: {app: reviews}}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, labels: {app: ratings}}
spec: {selector: {app: ratings}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: details, labels: {app: details}}
spec: {selector: {app: details}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, labels: {app: httpbin}}
spec: {selector: {app: httpbin}, ports: [{name: http, port: 8000, targetPort: 8080}]}
";

/// Parses a task's YAML as `ama apply` does, asserts that nothing is reported, and builds the
/// model with the services.
fn translate(task: &str) -> Model {
    let parsed = parse(task, "task.yaml");
    let findings: Vec<String> = parsed.findings.iter().map(ToString::to_string).collect();
    assert_eq!(
        findings,
        Vec::<String>::new(),
        "findings of Istio's task YAML"
    );
    let services = parse(SERVICES, "services.yaml");
    assert!(services.findings.is_empty(), "{:?}", services.findings);
    let objects: Vec<&Object> = services.objects.iter().chain(&parsed.objects).collect();
    let m = Model::build(objects, &mut VipAllocator::new());
    assert_eq!(m.warnings, []);
    m
}

fn host(name: &str) -> String {
    format!("{name}.default.svc.cluster.local")
}

fn routes<'m>(m: &'m Model, name: &str) -> &'m xds::HttpRoutes {
    m.http_routes
        .iter()
        .map(|r| &r.resource)
        .find(|r| r.name == format!("default/{name}"))
        .unwrap_or_else(|| panic!("no HttpRoutes default/{name}"))
}

fn policy<'m>(m: &'m Model, name: &str) -> &'m xds::TrafficPolicy {
    m.traffic_policies
        .iter()
        .map(|r| &r.resource)
        .find(|r| r.name == format!("default/{name}"))
        .unwrap_or_else(|| panic!("no TrafficPolicy default/{name}"))
}

fn to_subset(service: &str, subset: &str, weight: u32) -> RouteDestination {
    RouteDestination {
        host: host(service),
        subset: Some(subset.into()),
        weight,
        ..Default::default()
    }
}

fn jason() -> Vec<HttpRouteMatch> {
    vec![HttpRouteMatch {
        headers: [("end-user".to_string(), StringMatch::Exact("jason".into()))].into(),
        ..Default::default()
    }]
}

/// `samples/bookinfo/networking/destination-rule-all.yaml`.
const DESTINATION_RULE_ALL: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: productpage
spec:
  host: productpage
  subsets:
  - name: v1
    labels:
      version: v1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
spec:
  host: ratings
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v2-mysql
    labels:
      version: v2-mysql
  - name: v2-mysql-vm
    labels:
      version: v2-mysql-vm
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: details
spec:
  host: details
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
";

/// `samples/bookinfo/networking/virtual-service-all-v1.yaml`.
const VIRTUAL_SERVICE_ALL_V1: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: productpage
spec:
  hosts:
  - productpage
  http:
  - route:
    - destination:
        host: productpage
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - route:
    - destination:
        host: ratings
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: details
spec:
  hosts:
  - details
  http:
  - route:
    - destination:
        host: details
        subset: v1
---
";

#[test]
fn destination_rule_all() {
    let m = translate(DESTINATION_RULE_ALL);
    assert_eq!(m.traffic_policies.len(), 4);
    let version = |v: &str| [("version".to_string(), v.to_string())].into();
    let subset = |name: &str| xds::Subset {
        name: name.into(),
        labels: version(name),
        policy: None,
    };
    assert_eq!(
        policy(&m, "reviews"),
        &xds::TrafficPolicy {
            name: "default/reviews".into(),
            host: host("reviews"),
            policy: xds::Policy::default(),
            subsets: vec![subset("v1"), subset("v2"), subset("v3")],
        }
    );
    assert_eq!(
        policy(&m, "ratings")
            .subsets
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["v1", "v2", "v2-mysql", "v2-mysql-vm"]
    );
    assert_eq!(policy(&m, "productpage").subsets, [subset("v1")]);
    assert_eq!(policy(&m, "details").subsets, [subset("v1"), subset("v2")]);
}

#[test]
fn virtual_service_all_v1() {
    let m = translate(&format!("{DESTINATION_RULE_ALL}{VIRTUAL_SERVICE_ALL_V1}"));
    for service in ["productpage", "reviews", "ratings", "details"] {
        assert_eq!(
            routes(&m, service),
            &xds::HttpRoutes {
                name: format!("default/{service}"),
                hosts: vec![host(service)],
                namespace: Some("default".into()),
                http: vec![xds::HttpRoute {
                    route: vec![to_subset(service, "v1", 100)],
                    ..Default::default()
                }],
                ..Default::default()
            },
            "{service}: everything to v1, Istio's default retries (none written)"
        );
    }
}

/// Request Routing: `virtual-service-reviews-test-v2.yaml`.
#[test]
fn reviews_test_v2() {
    let m = translate(&format!(
        "{DESTINATION_RULE_ALL}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
"
    ));
    assert_eq!(
        routes(&m, "reviews").http,
        [
            xds::HttpRoute {
                matches: jason(),
                route: vec![to_subset("reviews", "v2", 100)],
                ..Default::default()
            },
            xds::HttpRoute {
                route: vec![to_subset("reviews", "v1", 100)],
                ..Default::default()
            },
        ]
    );
}

/// Traffic Shifting: `virtual-service-reviews-80-20.yaml` and `virtual-service-reviews-50-v3.yaml`.
#[test]
fn reviews_weighted() {
    for (yaml, want) in [
        (
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 80
    - destination:
        host: reviews
        subset: v2
      weight: 20
",
            [("v1", 80), ("v2", 20)],
        ),
        (
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 50
    - destination:
        host: reviews
        subset: v3
      weight: 50
",
            [("v1", 50), ("v3", 50)],
        ),
    ] {
        let m = translate(&format!("{DESTINATION_RULE_ALL}{yaml}"));
        assert_eq!(
            routes(&m, "reviews").http,
            [xds::HttpRoute {
                route: want
                    .iter()
                    .map(|(s, w)| to_subset("reviews", s, *w))
                    .collect(),
                ..Default::default()
            }]
        );
    }
}

/// Fault Injection: `virtual-service-ratings-test-delay.yaml` and
/// `virtual-service-ratings-test-abort.yaml`.
#[test]
fn ratings_delay_and_abort() {
    let delay = translate(&format!(
        "{DESTINATION_RULE_ALL}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"
    ));
    let abort = translate(&format!(
        "{DESTINATION_RULE_ALL}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      abort:
        percentage:
          value: 100.0
        httpStatus: 500
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"
    ));
    for (m, fault) in [
        (
            delay,
            xds::Fault {
                delay: Some(FaultDelay {
                    fixed_delay_ms: 7000,
                    per_million: 1_000_000,
                }),
                abort: None,
            },
        ),
        (
            abort,
            xds::Fault {
                delay: None,
                abort: Some(FaultAbort {
                    status: AbortStatus::Http(500),
                    per_million: 1_000_000,
                }),
            },
        ),
    ] {
        assert_eq!(
            routes(&m, "ratings").http,
            [
                xds::HttpRoute {
                    matches: jason(),
                    route: vec![to_subset("ratings", "v1", 100)],
                    fault: Some(fault),
                    ..Default::default()
                },
                xds::HttpRoute {
                    route: vec![to_subset("ratings", "v1", 100)],
                    ..Default::default()
                },
            ]
        );
    }
}

/// Circuit Breaking: the task's DestinationRule for httpbin.
#[test]
fn circuit_breaking() {
    let m = translate(
        "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
",
    );
    let mut pool = xds::ConnectionPool::default();
    pool.tcp.max_connections = Some(1);
    pool.http.max_pending_requests = Some(1);
    pool.http.max_requests_per_connection = Some(1);
    assert_eq!(
        policy(&m, "httpbin"),
        &xds::TrafficPolicy {
            name: "default/httpbin".into(),
            host: host("httpbin"),
            policy: xds::Policy {
                settings: xds::Settings {
                    connection_pool: Some(pool),
                    outlier_detection: Some(xds::OutlierDetection {
                        consecutive_5xx_errors: Some(1),
                        interval_ms: Some(1000),
                        base_ejection_time_ms: Some(180_000),
                        max_ejection_percent: Some(100),
                        // Pilot sets Envoy's panic threshold to 0 when none is written.
                        min_health_percent: Some(0),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                port_level_settings: vec![],
            },
            subsets: vec![],
        }
    );
}

/// Mirroring: the task's default route to v1, then the mirror to v2.
#[test]
fn mirroring() {
    let default_route = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";
    let mirror = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
    mirror:
      host: httpbin
      subset: v2
    mirrorPercentage:
      value: 100.0
";
    let m = translate(default_route);
    assert_eq!(
        routes(&m, "httpbin").http,
        [xds::HttpRoute {
            route: vec![to_subset("httpbin", "v1", 100)],
            ..Default::default()
        }]
    );
    assert_eq!(
        policy(&m, "httpbin")
            .subsets
            .iter()
            .map(|s| (s.name.as_str(), s.labels["version"].as_str()))
            .collect::<Vec<_>>(),
        [("v1", "v1"), ("v2", "v2")]
    );
    let m = translate(mirror);
    assert_eq!(
        routes(&m, "httpbin").http,
        [xds::HttpRoute {
            route: vec![to_subset("httpbin", "v1", 100)],
            mirrors: vec![xds::Mirror {
                host: host("httpbin"),
                port: None,
                subset: Some("v2".into()),
                per_million: 1_000_000,
            }],
            ..Default::default()
        }]
    );
}

/// Request Timeouts: ratings delayed 2 s (the deprecated integer `percent`), reviews with a
/// 0.5 s timeout.
#[test]
fn request_timeouts() {
    let m = translate(&format!(
        "{DESTINATION_RULE_ALL}apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - fault:
      delay:
        percent: 100
        fixedDelay: 2s
    route:
    - destination:
        host: ratings
        subset: v1
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
    timeout: 0.5s
"
    ));
    assert_eq!(
        routes(&m, "ratings").http,
        [xds::HttpRoute {
            route: vec![to_subset("ratings", "v1", 100)],
            fault: Some(xds::Fault {
                delay: Some(FaultDelay {
                    fixed_delay_ms: 2000,
                    per_million: 1_000_000,
                }),
                abort: None,
            }),
            ..Default::default()
        }]
    );
    assert_eq!(
        routes(&m, "reviews").http,
        [xds::HttpRoute {
            route: vec![to_subset("reviews", "v2", 100)],
            timeout_ms: Some(500),
            ..Default::default()
        }]
    );
}
