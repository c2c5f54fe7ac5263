//! Tests of `parse_stream`: every kind parsed, and each validation error with its exact
//! message.

use std::time::Duration as Std;

use super::*;
use crate::networking::destination_rule::{ClientTlsMode, SimpleLb};
use crate::networking::service_entry::Resolution;
use crate::security::authorization_policy::Action;
use crate::security::peer_authentication::MtlsMode;

/// Parses a stream that must be free of errors and hold one object.
fn one(yaml: &str) -> Object {
    let (objects, errors) = parse_stream(yaml, "t.yaml");
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    assert_eq!(objects.len(), 1, "{objects:#?}");
    objects.into_iter().next().unwrap_or_else(|| unreachable!())
}

/// The errors of a stream, as the user sees them.
fn errors(yaml: &str) -> Vec<String> {
    let (_, errors) = parse_stream(yaml, "t.yaml");
    errors.iter().map(ToString::to_string).collect()
}

/// The errors of a stream, fail-closed ones included (the user sees both as `error:`).
fn refusals(yaml: &str) -> Vec<String> {
    let parsed = parse(yaml, "t.yaml");
    let refused = parsed
        .findings
        .iter()
        .filter(|f| f.severity != Severity::Warning);
    refused.map(ToString::to_string).collect()
}

/// What an AuthorizationPolicy or RequestAuthentication Ama cannot read becomes.
const DENIED: &str = ": Ama cannot read this policy: every request to the workloads it selects \
                      is denied until it is fixed";
/// What a PeerAuthentication Ama cannot read becomes.
const STRICT: &str = ": Ama cannot read this policy: the workloads it selects accept mutual TLS \
                      only (STRICT) until it is fixed";
/// … when even its binding cannot be read.
const UNBOUND: &str = ": Ama cannot read this policy, nor which workloads it selects: nothing \
                       could be bound to deny in its place; it is left out";

/// The single error of a stream.
fn error(yaml: &str) -> String {
    let e = errors(yaml);
    assert_eq!(e.len(), 1, "expected one error: {e:#?}");
    e.into_iter().next().unwrap_or_default()
}

const VS: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
      uri: {prefix: /api}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1, port: {number: 9080}}
      weight: 75
    - destination: {host: reviews, subset: v3}
      weight: 25
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 100ms, retryOn: 5xx,connect-failure}
    fault:
      delay: {fixedDelay: 7s, percentage: {value: 10}}
      abort: {httpStatus: 500, percentage: {value: 0.5}}
";

fn vs_with(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

#[test]
fn virtual_service_in_every_version() {
    for version in ["v1", "v1beta1", "v1alpha3"] {
        let yaml = VS.replace(
            "networking.istio.io/v1",
            &format!("networking.istio.io/{version}"),
        );
        let Object::VirtualService(vs) = one(&yaml) else {
            panic!("not a VirtualService")
        };
        assert_eq!(vs.api_version, format!("networking.istio.io/{version}"));
        assert_eq!(vs.metadata.namespace, "default");
        let route = &vs.spec.http[1];
        assert_eq!(route.route[0].weight, Some(75));
        assert_eq!(route.timeout.map(|d| d.get()), Some(Std::from_millis(1500)));
        let retries = route
            .retries
            .as_ref()
            .map(|r| (r.attempts, r.per_try_timeout));
        assert_eq!(
            retries,
            Some((3, Some(crate::Duration(Std::from_millis(100)))))
        );
        assert_eq!(
            vs.spec.http[0].r#match[0].headers["end-user"]
                .exact
                .as_deref(),
            Some("jason")
        );
    }
    let vs = one(VS);
    assert_eq!(vs.display(), "VirtualService default/reviews");
}

#[test]
fn virtual_service_weight_out_of_range() {
    let yaml = vs_with(
        "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: -10\n    - destination: {host: reviews, subset: v2}\n      weight: 150\n",
    );
    assert_eq!(
        errors(&yaml),
        [
            "t.yaml:doc 1: VirtualService default/reviews: spec.http[0].route[0].weight: must be 0..100",
            "t.yaml:doc 1: VirtualService default/reviews: spec.http[0].route[1].weight: must be 0..100",
        ]
    );
}

#[test]
fn virtual_service_weights_must_add_up() {
    let yaml = vs_with(
        "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 50\n    - destination: {host: reviews, subset: v2}\n      weight: 40\n",
    );
    assert_eq!(
        error(&yaml),
        "t.yaml:doc 1: VirtualService default/reviews: spec.http[0].route: the weights of the \
         destinations add up to 90: they must add up to 100"
    );
}

#[test]
fn virtual_service_unknown_field_has_its_path() {
    let yaml = vs_with("  - route:\n    - destination: {host: reviews}\n      wieght: 100\n");
    let e = error(&yaml);
    assert!(
        e.starts_with(
            "t.yaml:doc 1: VirtualService default/reviews: spec.http[0].route[0].wieght: unknown field `wieght` (known fields: destination, weight, headers)"
        ),
        "{e}"
    );
}

#[test]
fn virtual_service_bad_duration() {
    let yaml = vs_with("  - route:\n    - destination: {host: reviews}\n    timeout: 1.5x\n");
    assert_eq!(
        error(&yaml),
        "t.yaml:doc 1: VirtualService default/reviews: spec.http[0].timeout: \"1.5x\" is not a \
         duration (such as 1.5s, 100ms or 1m30s)"
    );
}

#[test]
fn virtual_service_semantic_errors() {
    let yaml = vs_with(
        "  - name: nothing\n  - route:\n    - destination: {host: \"*.example.com\", port: {number: 0}}\n    redirect: {uri: /x, redirectCode: 200}\n    fault: {abort: {httpStatus: 700, percentage: {value: 101}}}\n    retries: {attempts: -1, retryOn: sometimes}\n    timeout: 0s\n",
    );
    let at = "t.yaml:doc 1: VirtualService default/reviews: spec.http";
    assert_eq!(
        errors(&yaml),
        [
            format!("{at}[0]: needs one of route, redirect, directResponse or delegate"),
            format!(
                "{at}[1]: route, redirect, directResponse and delegate exclude each other: set one"
            ),
            format!(
                "{at}[1].route[0].destination.host: \"*.example.com\": a destination host cannot be a wildcard"
            ),
            format!("{at}[1].route[0].destination.port.number: 0 is not a port: must be 1..65535"),
            format!(
                "{at}[1].redirect.redirectCode: 200 is not a redirect status: must be 300..399"
            ),
            format!("{at}[1].timeout: 0s is too short: must be at least 1ms"),
            format!("{at}[1].retries.attempts: -1 must be 0 or more"),
            format!(
                "{at}[1].retries.retryOn: \"sometimes\" is not a retry condition (such as 5xx, connect-failure, gateway-error or a status code)"
            ),
            format!("{at}[1].fault.abort.httpStatus: 700 is not an HTTP status: must be 200..599"),
            format!("{at}[1].fault.abort.percentage.value: 101 must be 0..100 (a percentage)"),
        ]
    );
}

#[test]
fn virtual_service_hosts_and_gateways() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\nspec:\n  hosts: [\"a.*.com\"]\n  gateways: [\"a/b/c\", mesh]\n  tcp:\n  - route: []\n";
    assert_eq!(
        errors(yaml),
        [
            "t.yaml:doc 1: VirtualService shop/r: spec.hosts[0]: \"a.*.com\": a wildcard is allowed only as the first label (\"*.example.com\")",
            "t.yaml:doc 1: VirtualService shop/r: spec.gateways[0]: \"a/b/c\" is not a gateway reference (\"mesh\", \"name\" or \"namespace/name\")",
            "t.yaml:doc 1: VirtualService shop/r: spec.tcp[0].route: missing: a route needs a destination",
        ]
    );
}

#[test]
fn unserved_version_and_unknown_top_level_field() {
    let yaml = VS.replace("networking.istio.io/v1", "networking.istio.io/v2");
    assert_eq!(
        error(&yaml),
        "t.yaml:doc 1: VirtualService default/reviews: apiVersion: \"networking.istio.io/v2\" \
         does not serve VirtualService (expected networking.istio.io/v1, \
         networking.istio.io/v1beta1, networking.istio.io/v1alpha3)"
    );
    let yaml = "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {}\n";
    let refused = refusals(yaml);
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(
        refused[0].contains("expected security.istio.io/v1, security.istio.io/v1beta1")
            && refused[0].ends_with(STRICT),
        "{refused:#?}"
    );
    let yaml = format!("{VS}specs: {{}}\n");
    assert_eq!(
        error(&yaml),
        "t.yaml:doc 1: VirtualService default/reviews: specs: unknown field (an Istio object has \
         apiVersion, kind, metadata, spec and status)"
    );
}

const DR: &str = "\
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
    outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 100}
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {consistentHash: {httpHeaderName: x-user}}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: RANDOM}}
";

#[test]
fn destination_rule() {
    let Object::DestinationRule(dr) = one(DR) else {
        panic!("not a DestinationRule")
    };
    let tp = dr.spec.traffic_policy.as_ref().expect("traffic policy");
    assert_eq!(
        tp.load_balancer.as_ref().and_then(|l| l.simple),
        Some(SimpleLb::RoundRobin)
    );
    assert_eq!(
        tp.tls.as_ref().and_then(|t| t.mode),
        Some(ClientTlsMode::IstioMutual)
    );
    let od = tp.outlier_detection.as_ref().expect("outlier detection");
    assert_eq!(od.consecutive_5xx_errors, Some(7));
    assert_eq!(od.interval.map(|d| d.get()), Some(Std::from_secs(300)));
    assert_eq!(dr.spec.subsets.len(), 2);
}

#[test]
fn destination_rule_errors() {
    let yaml = DR
        .replace("ROUND_ROBIN", "ROUND_ROBINN")
        .replace("maxEjectionPercent: 100", "maxEjectionPercent: 120");
    let e = errors(&yaml);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with(
            "t.yaml:doc 1: DestinationRule shop/reviews: spec.trafficPolicy.loadBalancer.simple: unknown variant `ROUND_ROBINN`, expected one of"
        ),
        "{}",
        e[0]
    );
    // Once the types are right, the semantic checks run.
    let yaml = DR
        .replace("maxEjectionPercent: 100", "maxEjectionPercent: 120")
        .replace("name: v2", "name: v1")
        .replace("{mode: ISTIO_MUTUAL}", "{mode: MUTUAL}")
        .replace("{number: 9080}", "{number: 70000}");
    let at = "t.yaml:doc 1: DestinationRule shop/reviews: spec";
    assert_eq!(
        errors(&yaml),
        [
            format!(
                "{at}.trafficPolicy.outlierDetection.maxEjectionPercent: 120 must be 0..100 (a percentage)"
            ),
            format!(
                "{at}.trafficPolicy.tls.clientCertificate: missing: MUTUAL needs a client certificate (or a credentialName)"
            ),
            format!(
                "{at}.trafficPolicy.tls.privateKey: missing: MUTUAL needs a private key (or a credentialName)"
            ),
            format!(
                "{at}.trafficPolicy.portLevelSettings[0].port.number: 70000 is not a port: must be 1..65535"
            ),
            format!("{at}.subsets[1].name: \"v1\" is defined twice"),
        ]
    );
}

const GATEWAY: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [\"bookinfo/*.example.com\"]
    tls: {mode: SIMPLE, credentialName: bookinfo-cert}
";

#[test]
fn gateway() {
    let Object::Gateway(gw) = one(GATEWAY) else {
        panic!("not a Gateway")
    };
    assert_eq!(gw.spec.servers.len(), 2);
    assert_eq!(gw.spec.selector["istio"], "ingressgateway");
}

#[test]
fn gateway_errors() {
    let yaml = GATEWAY
        .replace(
            "number: 80, name: http, protocol: HTTP",
            "number: 80800, name: http, protocol: HTTPX",
        )
        .replace(
            "    tls: {mode: SIMPLE, credentialName: bookinfo-cert}\n",
            "",
        )
        .replace("hosts: [\"*\"]", "hosts: []");
    let at = "t.yaml:doc 1: Gateway default/bookinfo-gateway: spec.servers";
    assert_eq!(
        errors(&yaml),
        [
            format!("{at}[0].port.number: 80800 is not a port: must be 1..65535"),
            format!(
                "{at}[0].port.protocol: \"HTTPX\" is not a protocol (HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP, TLS, UDP, REDIS, MYSQL)"
            ),
            format!("{at}[0].hosts: missing: a server needs at least one host"),
            format!("{at}[1].tls: missing: a HTTPS server needs TLS settings"),
        ]
    );
}

const SERVICE_ENTRY: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 443, name: https, protocol: TLS}
";

#[test]
fn service_entry() {
    let Object::ServiceEntry(se) = one(SERVICE_ENTRY) else {
        panic!("not a ServiceEntry")
    };
    assert_eq!(se.spec.resolution, Some(Resolution::Dns));
    assert_eq!(se.spec.ports[1].number, 443);
}

#[test]
fn service_entry_errors() {
    let yaml = SERVICE_ENTRY.replace("resolution: DNS", "resolution: STATIC");
    assert_eq!(
        error(&yaml),
        "t.yaml:doc 1: ServiceEntry default/httpbin-ext: spec.endpoints: missing: STATIC \
         resolution needs endpoints or a workloadSelector"
    );
    let yaml = format!(
        "{}  endpoints:\n  - address: example.com\n    ports: {{grpc: 8080}}\n",
        SERVICE_ENTRY
            .replace("resolution: DNS", "resolution: STATIC")
            .replace("name: https", "name: http")
    );
    let at = "t.yaml:doc 1: ServiceEntry default/httpbin-ext: spec";
    assert_eq!(
        errors(&yaml),
        [
            format!("{at}.ports[1].name: \"http\" names two ports"),
            format!(
                "{at}.endpoints[0].address: \"example.com\" is not an IP address: STATIC endpoints are IPs"
            ),
            format!(
                "{at}.endpoints[0].ports[\"grpc\"]: \"grpc\" is not the name of a port of this ServiceEntry"
            ),
        ]
    );
    let yaml = SERVICE_ENTRY.replace("resolution: DNS", "resolution: DNS_ROUND_ROBINS");
    assert!(error(&yaml).contains("spec.resolution: unknown variant `DNS_ROUND_ROBINS`"));
}

const SIDECAR: &str = "\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  egress:
  - hosts: [\"./*\", \"istio-system/*\"]
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:8080
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
";

#[test]
fn sidecar() {
    let Object::Sidecar(sc) = one(SIDECAR) else {
        panic!("not a Sidecar")
    };
    assert_eq!(sc.spec.egress[0].hosts.len(), 2);
}

#[test]
fn sidecar_errors() {
    let yaml = SIDECAR
        .replace("\"./*\"", "\"reviews\"")
        .replace("127.0.0.1:8080", "10.0.0.1:8080")
        .replace("REGISTRY_ONLY", "DENY");
    let e = errors(&yaml);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].contains("spec.outboundTrafficPolicy.mode: unknown variant `DENY`"),
        "{}",
        e[0]
    );
    let yaml = yaml.replace("DENY", "ALLOW_ANY");
    let at = "t.yaml:doc 1: Sidecar shop/default: spec";
    assert_eq!(
        errors(&yaml),
        [
            format!(
                "{at}.ingress[0].defaultEndpoint: \"10.0.0.1:8080\" is not a default endpoint (127.0.0.1:PORT, 0.0.0.0:PORT, [::1]:PORT, [::]:PORT or unix://path)"
            ),
            format!(
                "{at}.egress[0].hosts[0]: \"reviews\" must be namespace/host (\"*/\", \"./\" or a namespace, then a host)"
            ),
        ]
    );
}

const PEER_AUTHN: &str = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
";

#[test]
fn peer_authentication() {
    for version in ["v1", "v1beta1"] {
        let yaml = PEER_AUTHN.replace(
            "security.istio.io/v1",
            &format!("security.istio.io/{version}"),
        );
        let Object::PeerAuthentication(pa) = one(&yaml) else {
            panic!("not a PeerAuthentication")
        };
        assert_eq!(pa.spec.mtls.and_then(|m| m.mode), Some(MtlsMode::Strict));
    }
}

#[test]
fn peer_authentication_errors() {
    // A PeerAuthentication Ama cannot read is kept as STRICT for what it selects (fail closed).
    let refused = refusals(&PEER_AUTHN.replace("STRICT", "STRICTT"));
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(
        refused[0].starts_with("t.yaml:doc 1: PeerAuthentication istio-system/default: spec.mtls.mode: unknown variant `STRICTT`")
            && refused[0].ends_with(STRICT),
        "{refused:#?}"
    );
    assert!(errors(&PEER_AUTHN.replace("STRICT", "STRICTT")).is_empty());
    let yaml = format!("{PEER_AUTHN}  portLevelMtls:\n    0: {{mode: DISABLE}}\n");
    let at = "t.yaml:doc 1: PeerAuthentication istio-system/default: spec.portLevelMtls";
    assert_eq!(
        refusals(&yaml),
        [
            format!(
                "{at}: needs a selector: port-level modes apply to selected workloads only{STRICT}"
            ),
            format!("{at}[0]: 0 is not a port: must be 1..65535{STRICT}"),
        ]
    );
}

const AUTHZ: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin, version: v1}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/sleep]
        ipBlocks: [10.0.0.0/8]
    to:
    - operation: {methods: [GET], paths: [/info*], ports: [\"8000\"]}
    when:
    - key: request.headers[x-token]
      values: [secret]
";

#[test]
fn authorization_policy() {
    let Object::AuthorizationPolicy(ap) = one(AUTHZ) else {
        panic!("not an AuthorizationPolicy")
    };
    assert_eq!(ap.spec.action, Some(Action::Allow));
    assert_eq!(ap.spec.rules[0].when[0].key, "request.headers[x-token]");
}

#[test]
fn authorization_policy_errors() {
    let yaml = AUTHZ
        .replace("action: ALLOW", "action: CUSTOM")
        .replace("10.0.0.0/8", "10.0.0.0/40")
        .replace("\"8000\"", "\"http\"")
        .replace("request.headers[x-token]", "request.header")
        .replace("version: v1", "version: \"v1*\"");
    let at = "t.yaml:doc 1: AuthorizationPolicy foo/httpbin: spec";
    assert_eq!(
        errors(&yaml),
        [
            format!(
                "{at}.selector.matchLabels[\"version\"]: \"v1*\": wildcards are not allowed in selectors"
            ),
            format!("{at}.provider: missing: a CUSTOM action needs a provider"),
            format!(
                "{at}.rules[0].from[0].source.ipBlocks[0]: \"10.0.0.0/40\" is not an IP address or CIDR range"
            ),
            format!(
                "{at}.rules[0].from[0].source.principals: not supported with the CUSTOM action"
            ),
            format!(
                "{at}.rules[0].to[0].operation.ports[0]: \"http\" is not a port: must be 1..65535"
            ),
            format!(
                "{at}.rules[0].when[0].key: \"request.header\" is not a condition key (such as source.ip, request.headers[NAME] or request.auth.claims[NAME])"
            ),
        ]
        .map(|e| format!("{e}{UNBOUND}"))
    );
}

#[test]
fn security_policy_values_istio_rejects() {
    let yaml = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  targetRefs:
  - {kind: Deployment, group: apps, name: a}
  - {kind: Service, name: b, namespace: bar}
  action: DENY
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: q, namespace: foo}
spec:
  rules:
  - to: [{operation: {paths: ['/a/{**}/{*}', '/c/{x}'], methods: ['']}}]
    when:
    - {key: 'request.headers[]', values: [a]}
    - {key: source.serviceAccount, values: ['a/b/c']}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: r, namespace: foo}
spec:
  jwtRules:
  - {issuer: a, jwksUri: 'ftp://example.com/keys', audiences: [''], outputClaimToHeaders: [{header: 'x y', claim: c}]}
";
    let ap = "t.yaml:doc 1: AuthorizationPolicy foo/p: spec";
    let aq = "t.yaml:doc 2: AuthorizationPolicy foo/q: spec.rules[0]";
    let ra = "t.yaml:doc 3: RequestAuthentication foo/r: spec.jwtRules[0]";
    let unbound = [
        format!(
            "{ap}.targetRefs[0].kind: \"apps/Deployment\": a policy can target a Service, a \
                 ServiceEntry (networking.istio.io), a Gateway or a GatewayClass \
                 (gateway.networking.k8s.io)"
        ),
        format!(
            "{ap}.targetRefs[1].namespace: must not be set: a policy targets resources of its \
                 own namespace only"
        ),
        format!(
            "{ap}.rules: missing: a DENY policy without rules never matches; add an empty \
                 rule `{{}}` to match every request"
        ),
    ]
    .map(|e| format!("{e}{UNBOUND}"));
    let denied = [
        format!("{aq}.to[0].operation.methods[0]: must not be empty"),
        format!(
            "{aq}.to[0].operation.paths[0]: \"/a/{{**}}/{{*}}\": {{**}} must be the last operator \
                 of a path template"
        ),
        format!(
            "{aq}.to[0].operation.paths[1]: \"/c/{{x}}\": '{{' and '}}' are allowed only in the \
                 operators {{*}} and {{**}}, each a whole segment"
        ),
        format!(
            "{aq}.when[0].key: \"request.headers[]\" is not a condition key (such as \
                 source.ip, request.headers[NAME] or request.auth.claims[NAME])"
        ),
        format!(
            "{aq}.when[1].values[0]: \"a/b/c\" is not a service account: 'name' or \
                 'namespace/name', without wildcards"
        ),
        format!("{ra}.jwksUri: \"ftp://example.com/keys\" is not an http or https URL"),
        format!("{ra}.audiences[0]: must not be empty"),
        format!(
            "{ra}.outputClaimToHeaders[0].header: \"x y\" is not a header name: letters, \
                 digits and '-' only"
        ),
    ]
    .map(|e| format!("{e}{DENIED}"));
    assert_eq!(refusals(yaml), [&unbound[..], &denied[..]].concat());
    // The two it can bind stand in for the policies, as DENY of everything they select; the
    // one with a bad target is left out.
    let (objects, _) = parse_stream(yaml, "t.yaml");
    let names: Vec<String> = objects.iter().map(Object::display).collect();
    assert_eq!(
        names,
        ["AuthorizationPolicy foo/q", "RequestAuthentication foo/r"]
    );
}

const KUBE: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio-injection: enabled}
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: shop}
spec:
  selector: {app: httpbin}
  ports:
  - {name: http, port: 8000, targetPort: 80}
  - {name: grpc, port: 9000, targetPort: grpc, appProtocol: grpc}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: httpbin, namespace: shop}
spec:
  selector: {matchLabels: {app: httpbin}}
  template:
    metadata:
      labels: {app: httpbin, version: v1}
      annotations: {local.ama.dev/command: ama sample httpbin}
    spec:
      serviceAccountName: httpbin
      containers:
      - name: httpbin
        image: docker.io/kennethreitz/httpbin
        ports: [{containerPort: 80, name: http}]
        env: [{name: A, value: a}, {name: B, valueFrom: {fieldRef: {fieldPath: status.podIP}}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: agent}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 3
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: db}]}
---
apiVersion: v1
kind: Pod
metadata: {generateName: sleep-, labels: {app: sleep}}
spec:
  containers: [{name: sleep, image: curl}]
status: {podIP: 10.244.0.7, phase: Running}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: httpbin-abc
  namespace: shop
  labels: {kubernetes.io/service-name: httpbin}
addressType: IPv4
endpoints:
- addresses: [10.244.0.7]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: httpbin-1, namespace: shop}
ports:
- {name: http, port: 80, protocol: TCP}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    accessLogFile: /dev/stdout
    accessLogEncoding: JSON
    trustDomain: example.org
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: httpbin}
";

#[test]
fn kubernetes_objects() {
    let (objects, errors) = parse_stream(KUBE, "app.yaml");
    assert!(errors.is_empty(), "{errors:#?}");
    let names: Vec<String> = objects.iter().map(Object::display).collect();
    assert_eq!(
        names,
        [
            "Namespace shop",
            "Service shop/httpbin",
            "Deployment shop/httpbin",
            "DaemonSet default/agent",
            "StatefulSet default/db",
            "Pod default/<unnamed>",
            "EndpointSlice shop/httpbin-abc",
            "ConfigMap istio-system/istio",
            "ServiceAccount default/httpbin",
        ]
    );
    let Object::Namespace(ns) = &objects[0] else {
        panic!()
    };
    assert_eq!(ns.metadata.labels["istio-injection"], "enabled");
    let Object::Service(svc) = &objects[1] else {
        panic!()
    };
    assert_eq!(
        svc.spec.ports[1].target_port,
        Some(crate::k8s::IntOrString::String("grpc".into()))
    );
    let Object::Workload(deploy) = &objects[2] else {
        panic!()
    };
    assert_eq!(deploy.replicas, Some(1));
    assert_eq!(
        deploy.template.metadata.annotations["local.ama.dev/command"],
        "ama sample httpbin"
    );
    let env = &deploy.template.spec.containers[0].env;
    assert_eq!(
        (env[0].value.as_deref(), env[1].value.as_deref()),
        (Some("a"), None)
    );
    let Object::Workload(ds) = &objects[3] else {
        panic!()
    };
    assert_eq!(ds.replicas, None);
    let Object::Workload(sts) = &objects[4] else {
        panic!()
    };
    assert_eq!(
        (sts.replicas, sts.service_name.as_deref()),
        (Some(3), Some("db"))
    );
    let Object::Pod(pod) = &objects[5] else {
        panic!()
    };
    assert_eq!(pod.status.pod_ip.as_deref(), Some("10.244.0.7"));
    let Object::EndpointSlice(slice) = &objects[6] else {
        panic!()
    };
    assert_eq!(slice.service_name(), Some("httpbin"));
    assert_eq!(slice.slice.endpoints[0].conditions.ready, Some(true));
    let Object::ConfigMap(cm) = &objects[7] else {
        panic!()
    };
    assert_eq!(
        cm.mesh_config.as_ref().map(|m| m.trust_domain.as_str()),
        Some("example.org")
    );
    assert!(matches!(&objects[8], Object::Other(o) if o.api_version == "v1"));
}

#[test]
fn kubernetes_object_errors() {
    let yaml = "\
apiVersion: v1
kind: Service
metadata: {name: httpbin}
spec:
  ports:
  - {port: 0, protocol: tcp}
  - {port: 80, targetPort: HTTP}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: -1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: other}}
    spec: {containers: [{name: web, ports: [{containerPort: 70000}]}, {name: web}]}
---
apiVersion: extensions/v1beta1
kind: Deployment
metadata: {name: old}
spec: {}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s}
addressType: IPv4
endpoints: [{addresses: [\"fd00::1\"]}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    trustDomain: [a]
";
    assert_eq!(
        errors(yaml),
        [
            "t.yaml:doc 1: Service default/httpbin: spec.ports[0].port: 0 is not a port: must be 1..65535",
            "t.yaml:doc 1: Service default/httpbin: spec.ports[0].protocol: \"tcp\" is not a protocol (TCP, UDP or SCTP)",
            "t.yaml:doc 1: Service default/httpbin: spec.ports[0].name: missing: every port needs a name when there are several",
            "t.yaml:doc 1: Service default/httpbin: spec.ports[1].name: missing: every port needs a name when there are several",
            "t.yaml:doc 1: Service default/httpbin: spec.ports[1].targetPort: \"HTTP\" is not a port name (1 to 15 lower-case letters, digits and '-', with a letter)",
            "t.yaml:doc 2: Deployment default/web: spec.replicas: -1 must be 0 or more",
            "t.yaml:doc 2: Deployment default/web: spec.template.spec.containers[0].ports[0].containerPort: 70000 is not a port: must be 1..65535",
            "t.yaml:doc 2: Deployment default/web: spec.template.spec.containers[1].name: \"web\" names two containers",
            "t.yaml:doc 2: Deployment default/web: spec.template.metadata.labels: do not match spec.selector: the workload would not own its pods",
            "t.yaml:doc 3: Deployment default/old: apiVersion: \"extensions/v1beta1\" does not serve Deployment (expected apps/v1)",
            "t.yaml:doc 3: Deployment default/old: spec.template: missing: a Deployment needs a pod template",
            "t.yaml:doc 4: EndpointSlice default/s: endpoints[0].addresses[0]: \"fd00::1\" is not an IPv4 address",
            "t.yaml:doc 5: ConfigMap istio-system/istio: data.mesh.trustDomain: [\"a\"] is not valid: invalid type: sequence, expected a string",
        ]
    );
}

#[test]
fn metadata_errors() {
    let yaml = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  namespace: Shop
  labels: {version: 1, \"bad key!\": x}
spec: {host: reviews}
";
    assert_eq!(
        errors(yaml),
        [
            "t.yaml:doc 1: DestinationRule Shop/<unnamed>: metadata.name: missing: a DestinationRule needs a name",
            "t.yaml:doc 1: DestinationRule Shop/<unnamed>: metadata.namespace: \"Shop\" is not a DNS name: labels hold letters, digits and '-', and do not start or end with '-'",
            "t.yaml:doc 1: DestinationRule Shop/<unnamed>: metadata.labels[\"version\"]: 1 is not a string (quote it)",
            "t.yaml:doc 1: DestinationRule Shop/<unnamed>: metadata.labels[\"bad key!\"]: \"bad key!\" is not a label key: the name must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        ]
    );
}

#[test]
fn a_bad_document_does_not_hide_the_others() {
    let stream = format!("{VS}---\nkind: [unclosed\n---\n{DR}---\n- a list\n---\napiVersion: v1\n");
    let (objects, errors) = parse_stream(&stream, "mixed.yaml");
    let kinds: Vec<&str> = objects.iter().map(Object::kind).collect();
    assert_eq!(kinds, ["VirtualService", "DestinationRule"]);
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 3, "{messages:#?}");
    assert!(
        messages[0].starts_with("mixed.yaml:doc 2: not YAML: line 25 column 7: unclosed bracket"),
        "{}",
        messages[0]
    );
    assert_eq!(errors[0].line, 25);
    assert_eq!(
        messages[1],
        "mixed.yaml:doc 4: not a Kubernetes object: expected a mapping with apiVersion and kind"
    );
    assert_eq!(
        messages[2],
        "mixed.yaml:doc 5: kind: missing: not a Kubernetes object"
    );
}

#[test]
fn lists_are_flattened_with_item_paths() {
    let yaml = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: a}
- apiVersion: networking.istio.io/v1
  kind: Gateway
  metadata: {name: gw}
  spec: {servers: []}
";
    let (objects, errors) = parse_stream(yaml, "list.yaml");
    assert_eq!(objects.len(), 1);
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "list.yaml:doc 1: Gateway default/gw: items[1].spec.servers: missing: a Gateway needs at least one server"
        ]
    );
}

#[test]
fn nulls_are_dropped_as_the_api_server_does() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s, labels: ~}\nspec:\n  egress:\n  - hosts: [\"*/*\"]\n    port:\n  ingress:\n";
    let Object::Sidecar(sc) = one(yaml) else {
        panic!("not a Sidecar")
    };
    assert!(sc.spec.egress[0].port.is_none());
}

#[test]
fn virtual_service_values_istio_rejects() {
    let yaml = vs_with(
        "  - match:
    - uri: {regex: '/a('}
      method: {prefix: ''}
      headers: {x-a: {prefix: ''}, x-b: {regex: '*'}}
      queryParams: {q: {regex: '[z'}}
    route: [{destination: {host: reviews}, weight: -5}]
    rewrite: {uriRegexRewrite: {match: '(?P<', rewrite: /}}
    fault:
      delay: {fixedDelay: 1s, percent: 101}
      abort: {grpcStatus: UNAVAIL, percentage: {value: -1}}
    mirror: {host: reviews}
    mirrorPercentage: {value: 150}
    corsPolicy: {allowOrigins: [{prefix: ''}]}
  - directResponse: {status: 200, body: {bytes: '!!not base64'}}
  - route: [{destination: {host: reviews}}]
    mirrors: [{destination: {host: reviews}, percentage: {value: 100.5}}]
",
    );
    let at = "t.yaml:doc 1: VirtualService default/reviews: spec.http";
    let e = errors(&yaml);
    let want = [
        format!(
            "{at}[0].match[0].uri.regex: \"/a(\" is not a regular expression (RE2 syntax): error: unclosed group"
        ),
        format!("{at}[0].match[0].method.prefix: must not be empty"),
        format!("{at}[0].match[0].headers[\"x-a\"].prefix: must not be empty"),
        format!(
            "{at}[0].match[0].headers[\"x-b\"].regex: \"*\" is not a regular expression (RE2 syntax): error: repetition operator missing expression"
        ),
        format!(
            "{at}[0].match[0].queryParams[\"q\"].regex: \"[z\" is not a regular expression (RE2 syntax): error: unclosed character class"
        ),
        format!("{at}[0].route[0].weight: must be 0..100"),
        format!(
            "{at}[0].rewrite.uriRegexRewrite.match: \"(?P<\" is not a regular expression (RE2 syntax): error: unclosed capture group name"
        ),
        format!("{at}[0].fault.delay.percent: 101 must be 0..100 (a percentage)"),
        format!(
            "{at}[0].fault.abort.grpcStatus: \"UNAVAIL\" is not a gRPC status (OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED)"
        ),
        format!("{at}[0].fault.abort.percentage.value: -1 must be 0..100 (a percentage)"),
        format!("{at}[0].mirrorPercentage.value: 150 must be 0..100 (a percentage)"),
        format!("{at}[0].corsPolicy.allowOrigins[0].prefix: must not be empty"),
        format!("{at}[1].directResponse.body.bytes: not base64: Invalid symbol 33, offset 0."),
        format!("{at}[2].mirrors[0].percentage.value: 100.5 must be 0..100 (a percentage)"),
    ];
    assert_eq!(e, want);
}

#[test]
fn destination_rule_values_istio_rejects() {
    let yaml = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 1024}, maglev: {tableSize: 65536}}
    connectionPool:
      tcp: {maxConnections: -1}
      http: {http1MaxPendingRequests: -2, maxRetries: -3}
    outlierDetection: {consecutive5xxErrors: -1, minHealthPercent: 101}
";
    let at = "t.yaml:doc 1: DestinationRule default/reviews: spec.trafficPolicy";
    assert_eq!(
        errors(yaml),
        [
            format!(
                "{at}.loadBalancer.consistentHash: ringHash and maglev exclude each other: set one"
            ),
            format!(
                "{at}.loadBalancer.consistentHash.maglev.tableSize: 65536 must be a prime number"
            ),
            format!("{at}.connectionPool.tcp.maxConnections: -1 must be 0 or more"),
            format!("{at}.connectionPool.http.http1MaxPendingRequests: -2 must be 0 or more"),
            format!("{at}.connectionPool.http.maxRetries: -3 must be 0 or more"),
            format!("{at}.outlierDetection.consecutive5xxErrors: -1 must be 0 or more"),
            format!("{at}.outlierDetection.minHealthPercent: 101 must be 0..100 (a percentage)"),
        ]
    );
    // A negative count where the proto has an unsigned one is a type error naming the field.
    let yaml = yaml.replace(
        "    outlierDetection: {consecutive5xxErrors: -1, minHealthPercent: 101}\n",
        "    outlierDetection: {consecutive5xxErrors: 1}\n      tcp: {tcpKeepalive: {probes: -1}}\n",
    );
    let yaml = yaml.replace(
        "    connectionPool:\n      tcp: {maxConnections: -1}\n      http: {http1MaxPendingRequests: -2, maxRetries: -3}\n",
        "",
    ).replace("    outlierDetection: {consecutive5xxErrors: 1}\n      tcp:", "    connectionPool:\n      tcp:");
    let e = errors(&yaml);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].contains("spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.probes"),
        "{e:#?}"
    );
}

#[test]
fn maglev_table_sizes_and_the_deprecated_ring_size() {
    let dr = |hash: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: r}}
spec:
  host: r
  trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: x, {hash}}}}}}}
"
        )
    };
    let at =
        "t.yaml:doc 1: DestinationRule default/r: spec.trafficPolicy.loadBalancer.consistentHash";
    assert_eq!(
        errors(&dr("maglev: {tableSize: 65537}")),
        Vec::<String>::new()
    );
    assert_eq!(errors(&dr("maglev: {tableSize: 2}")), Vec::<String>::new());
    assert_eq!(
        errors(&dr("maglev: {}")),
        [format!(
            "{at}.maglev.tableSize: missing: maglev needs a tableSize"
        )]
    );
    assert_eq!(
        errors(&dr("maglev: {tableSize: 5000011}")),
        [format!(
            "{at}.maglev.tableSize: 5000011 must be less than 5000011"
        )]
    );
    assert_eq!(
        errors(&dr("maglev: {tableSize: 65535}")),
        [format!(
            "{at}.maglev.tableSize: 65535 must be a prime number"
        )]
    );
    assert_eq!(
        errors(&dr(
            "minimumRingSize: 64, ringHash: {minimumRingSize: 1024}"
        )),
        [format!(
            "{at}.minimumRingSize: the deprecated minimumRingSize excludes ringHash and maglev: set one"
        )]
    );
}

#[test]
fn the_authority_is_rewritten_in_one_place() {
    let yaml = vs_with(
        "  - route: [{destination: {host: reviews}}]
    rewrite: {authority: a}
    headers: {request: {set: {Host: b}, add: {':authority': c}}}
  - route: [{destination: {host: reviews}}]
    headers: {request: {set: {host: b}}}
",
    );
    assert_eq!(
        errors(&yaml),
        [
            "t.yaml:doc 1: VirtualService default/reviews: spec.http[0]: the authority is \
             rewritten in several places (rewrite.authority, headers.request.set[\"Host\"], \
             headers.request.add[\":authority\"]): set one"
        ]
    );
}

#[test]
fn security_policies_ama_cannot_read_fail_closed() {
    let yaml = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-get, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from: [{source: {bogus: [a]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-wide, namespace: foo}
spec:
  action: DENNY
---
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  targetRef: {kind: Service, name: httpbin}
  jwtRules: {issuer: a}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {namespace: foo}
spec:
  action: DENNY
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-selector, namespace: foo}
spec:
  selector: {matchLabels: {app: [httpbin]}}
  rules: [{bogus: 1}]
";
    let refusals = refusals(yaml);
    assert_eq!(
        refusals,
        [
            format!(
                "t.yaml:doc 1: AuthorizationPolicy foo/deny-get: spec.rules[0].from[0].source.bogus: \
                 unknown field `bogus` (known fields: principals, notPrincipals, requestPrincipals, \
                 notRequestPrincipals, namespaces, notNamespaces, serviceAccounts, \
                 notServiceAccounts, ipBlocks, notIpBlocks, remoteIpBlocks, \
                 notRemoteIpBlocks){DENIED}"
            ),
            format!(
                "t.yaml:doc 2: AuthorizationPolicy foo/ns-wide: spec.action: unknown variant \
                 `DENNY`, expected one of `ALLOW`, `DENY`, `AUDIT`, `CUSTOM`{DENIED}"
            ),
            format!(
                "t.yaml:doc 3: RequestAuthentication foo/jwt: spec.jwtRules: invalid type: map, \
                 expected a sequence{DENIED}"
            ),
            format!(
                "t.yaml:doc 4: AuthorizationPolicy foo/<unnamed>: metadata.name: missing: a \
                 AuthorizationPolicy needs a name{UNBOUND}"
            ),
            format!(
                "t.yaml:doc 4: AuthorizationPolicy foo/<unnamed>: spec.action: unknown variant \
                 `DENNY`, expected one of `ALLOW`, `DENY`, `AUDIT`, `CUSTOM`{UNBOUND}"
            ),
            format!(
                "t.yaml:doc 5: AuthorizationPolicy foo/bad-selector: spec.rules[0].bogus: unknown \
                 field `bogus` (known fields: from, to, when){UNBOUND}"
            ),
            // Read for the binding alone after the typed parse stopped at the first problem.
            format!(
                "t.yaml:doc 5: AuthorizationPolicy foo/bad-selector: spec.selector.matchLabels.app: \
                 invalid type: sequence, expected a string{UNBOUND}"
            ),
        ]
    );
    let parsed = parse(yaml, "t.yaml");
    // Printed as errors, but the objects are kept: they deny.
    assert!(
        parsed.findings[..3]
            .iter()
            .all(|f| f.severity == Severity::FailClosed && f.for_terminal().starts_with("error: "))
    );
    assert!(parsed.findings[3..].iter().all(Finding::is_error));
    let unreadable: Vec<&UnreadablePolicy> = parsed
        .objects
        .iter()
        .map(|o| match o {
            Object::UnreadablePolicy(u) => u,
            other => panic!("not an unreadable policy: {other:?}"),
        })
        .collect();
    assert_eq!(unreadable.len(), 3);
    let [selector, namespace, target] = &unreadable[..] else {
        unreachable!()
    };
    assert_eq!(selector.kind, PolicyKind::AuthorizationPolicy);
    assert_eq!(
        selector.binding.selector.as_ref().map(|s| &s.match_labels),
        Some(&BTreeMap::from([(
            "app".to_string(),
            "httpbin".to_string()
        )]))
    );
    assert_eq!(namespace.binding, PolicyBinding::default());
    assert_eq!(namespace.metadata.name, "ns-wide");
    assert_eq!(target.kind, PolicyKind::RequestAuthentication);
    assert_eq!(target.api_version, "security.istio.io/v1beta1");
    assert_eq!(target.metadata.namespace, "foo");
    assert_eq!(
        target.binding.target_ref.as_ref().map(|t| t.name.as_str()),
        Some("httpbin")
    );
    // Other kinds are left out as before.
    assert_eq!(
        parse_stream(&vs_with("  - bogus: 1\n"), "t.yaml").0,
        Vec::<Object>::new()
    );
}

#[test]
fn service_accounts_of_a_source() {
    // Istio 1.24's serviceAccounts and notServiceAccounts.
    let Object::AuthorizationPolicy(ap) = one(&AUTHZ.replace(
        "principals: [cluster.local/ns/default/sa/sleep]",
        "serviceAccounts: [default/sleep, sleep]\n        notServiceAccounts: [other]",
    )) else {
        panic!("not an AuthorizationPolicy")
    };
    let source = ap.spec.rules[0].from[0].source.clone().unwrap_or_default();
    assert_eq!(source.service_accounts, ["default/sleep", "sleep"]);
    assert_eq!(source.not_service_accounts, ["other"]);

    let yaml = AUTHZ.replace(
        "principals: [cluster.local/ns/default/sa/sleep]",
        "principals: [a]\n        serviceAccounts: ['ns/*', '', a/b/c]",
    );
    let at = "t.yaml:doc 1: AuthorizationPolicy foo/httpbin: spec.rules[0].from[0].source";
    assert_eq!(
        refusals(&yaml),
        [
            format!(
                "{at}: serviceAccounts and notServiceAccounts exclude principals, notPrincipals, \
                 namespaces and notNamespaces: set one kind{DENIED}"
            ),
            format!(
                "{at}.serviceAccounts[0]: \"ns/*\" is not a service account: 'name' or \
                 'namespace/name', without wildcards{DENIED}"
            ),
            format!(
                "{at}.serviceAccounts[2]: \"a/b/c\" is not a service account: 'name' or \
                 'namespace/name', without wildcards{DENIED}"
            ),
            format!("{at}.serviceAccounts[1]: must not be empty{DENIED}"),
        ]
    );
    let many = format!("[{}]", vec!["a"; 17].join(", "));
    let yaml = AUTHZ.replace(
        "principals: [cluster.local/ns/default/sa/sleep]",
        &format!("notServiceAccounts: {many}"),
    );
    assert_eq!(
        refusals(&yaml),
        [format!(
            "{at}.notServiceAccounts: at most 16 service accounts{DENIED}"
        )]
    );
}

#[test]
fn secret_data_is_decoded_and_string_data_wins() {
    let Object::Secret(s) = one("apiVersion: v1
kind: Secret
metadata: {name: cred, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: Y2VydA==, tls.key: a2V5}
stringData: {tls.key: newkey}
")
    else {
        panic!("not a Secret")
    };
    assert_eq!(s.secret_type, "kubernetes.io/tls");
    assert_eq!(s.data["tls.crt"], b"cert");
    assert_eq!(s.data["tls.key"], b"newkey");
    // Its Debug names the keys, never the values.
    let shown = format!("{s:?}");
    assert!(
        shown.contains("tls.key") && !shown.contains("newkey"),
        "{shown}"
    );
    assert_eq!(
        errors("apiVersion: v1\nkind: Secret\nmetadata: {name: bad}\ndata: {k: '!!'}\n"),
        ["t.yaml:doc 1: Secret default/bad: data.k: not base64: Invalid symbol 33, offset 0."]
    );
}

/// Istio's validation of a Telemetry refuses the object, naming the field; a good one passes.
#[test]
fn a_telemetry_istio_would_refuse_is_an_error() {
    let (objects, errors) = parse_stream(
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: bad, namespace: default}
spec:
  metrics:
  - overrides:
    - tagOverrides: {request_host: {operation: UPSERT}}
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: good, namespace: default}
spec:
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: response.code >= 400}
",
        "t.yaml",
    );
    assert_eq!(objects.len(), 1, "the good one is kept");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0].to_string();
    assert!(
        e.contains("Telemetry default/bad")
            && e.contains("spec.metrics[0].overrides[0].tagOverrides.request_host.value"),
        "{e}"
    );
}
