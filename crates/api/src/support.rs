//! What Ama implements of the config it accepts, and a finding for everything else.
//!
//! Istio's API is large and Ama implements it in steps; whatever it does not implement must
//! never be accepted in silence. This module is the one place that says what Ama implements,
//! derived from what the control plane translates *and* the proxy acts on:
//!
//! - VirtualService (sidecars only, `gateways` empty or `mesh`): `hosts`, `exportTo`,
//!   `http[].name`, `http[].match[]` with `uri` and `headers` (exact, prefix), `route[]`
//!   (`destination.host`, `destination.port`, `weight`), `timeout`, `retries.attempts`
//!   (retries happen on connect failure, whatever `retryOn` says).
//! - DestinationRule: `host`, `exportTo`, `workloadSelector`, `trafficPolicy.loadBalancer.simple`
//!   (not PASSTHROUGH) and `trafficPolicy.connectionPool.http.http2MaxRequests`.
//! - PeerAuthentication: all of it.
//! - AuthorizationPolicy and RequestAuthentication: not enforced yet. A policy that selects
//!   sidecars is failed closed by the control plane: every request to the workloads it selects
//!   is denied (see [`denies_all`]).
//! - Gateway, ServiceEntry, Sidecar and the other Istio kinds: not implemented.
//! - Services and EndpointSlices: all but `type: ExternalName` and FQDN endpoints.
//! - Pods and pod templates: the injection annotations [`crate::overrides`] reads.
//! - The MeshConfig of the ConfigMap `istio`: `trustDomain`, `enablePrometheusMerge`,
//!   `accessLogFile`, `accessLogEncoding`, `enableAutoMtls: true` and `defaultConfig.{discoveryAddress, statusPort,
//!   interceptionMode, proxyMetadata, concurrency}`.
//! - Kinds Ama does not read at all (Secret, Telemetry, EnvoyFilter, …): one finding each, except
//!   ServiceAccount (its name, the pods' identity, needs no object).
//!
//! [`not_implemented`] walks the object as written (its JSON) against a tree of what is
//! implemented, so that every other field gets a finding with its path, including fields that
//! are added to the typed model later: nothing is implemented until it is listed here. Fields
//! outside Istio's schema never get here: the typed parse already rejected them.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::check::{Problem, Problems};
use crate::objects::Object;
use crate::security::authorization_policy::Action;

/// The consequence of most fields Ama does not implement.
const IGNORED: &str = "not implemented by Ama; ignored";
/// ... of a match condition Ama cannot evaluate: the match never applies, so no route matches
/// more than written.
const MATCH_DROPPED: &str = "not implemented by Ama; this match is dropped (it never matches)";
/// ... of a route action Ama does not have.
const ROUTE_DROPPED: &str = "not implemented by Ama; this route is dropped";
/// What a security policy that Ama cannot enforce does instead.
pub const NOT_ENFORCED: &str =
    "not enforced by Ama yet: denies every request to the workloads it selects";

/// What Ama does with a field (a node of the tree of what is implemented).
enum Node {
    /// Implemented, whatever the value.
    Done,
    /// Implemented for the values the check accepts; for others it says what happens.
    Value(fn(&Value) -> Option<String>),
    /// A mapping: these fields as given, any other one is reported with the consequence.
    Fields(&'static [(&'static str, Node)], &'static str),
    /// A list whose items are all of this shape.
    Each(&'static Node),
    /// A mapping with the user's keys (header names), each value of this shape.
    Keys(&'static Node),
    /// This shape, but an empty mapping (Istio's "present" header match) gets the message.
    NonEmpty(&'static Node, &'static str),
}

use Node::{Done, Each, Fields, Keys};

static VIRTUAL_SERVICE: Node = Fields(
    &[
        ("hosts", Done),
        ("exportTo", Done),
        ("gateways", Node::Value(gateways)),
        ("http", Each(&HTTP_ROUTE)),
    ],
    IGNORED,
);
static HTTP_ROUTE: Node = Fields(
    &[
        ("name", Done),
        ("match", Each(&HTTP_MATCH)),
        ("route", Each(&HTTP_DESTINATION)),
        ("timeout", Done),
        (
            "retries",
            Fields(
                &[("attempts", Done), ("retryOn", Node::Value(retry_on))],
                IGNORED,
            ),
        ),
        ("redirect", Fields(&[], ROUTE_DROPPED)),
        ("directResponse", Fields(&[], ROUTE_DROPPED)),
        ("delegate", Fields(&[], ROUTE_DROPPED)),
    ],
    IGNORED,
);
static HTTP_MATCH: Node = Fields(
    &[
        ("name", Done),
        (
            "uri",
            Fields(&[("exact", Done), ("prefix", Done)], MATCH_DROPPED),
        ),
        (
            "headers",
            Keys(&Node::NonEmpty(
                &STRING_MATCH,
                "a presence match is not implemented by Ama; this match is dropped (it never \
                 matches)",
            )),
        ),
    ],
    MATCH_DROPPED,
);
static STRING_MATCH: Node = Fields(&[("exact", Done), ("prefix", Done)], MATCH_DROPPED);
static HTTP_DESTINATION: Node = Fields(
    &[
        (
            "destination",
            Fields(&[("host", Done), ("port", Done)], IGNORED),
        ),
        ("weight", Done),
    ],
    IGNORED,
);

/// The MeshConfig of the ConfigMap `istio` (key `mesh`): what discovery, injection and the
/// proxies read of it.
static MESH_CONFIG: Node = Fields(
    &[
        ("trustDomain", Done),
        ("enablePrometheusMerge", Done),
        ("accessLogFile", Done),
        ("accessLogEncoding", Done),
        ("enableAutoMtls", Node::Value(auto_mtls)),
        (
            "defaultConfig",
            Fields(
                &[
                    ("discoveryAddress", Done),
                    ("statusPort", Done),
                    ("interceptionMode", Done),
                    ("proxyMetadata", Done),
                    ("concurrency", Done),
                ],
                IGNORED,
            ),
        ),
    ],
    IGNORED,
);

static DESTINATION_RULE: Node = Fields(
    &[
        ("host", Done),
        ("exportTo", Done),
        ("workloadSelector", Done),
        (
            "trafficPolicy",
            Fields(
                &[
                    (
                        "loadBalancer",
                        Fields(&[("simple", Node::Value(load_balancer))], IGNORED),
                    ),
                    (
                        "connectionPool",
                        Fields(
                            &[("http", Fields(&[("http2MaxRequests", Done)], IGNORED))],
                            IGNORED,
                        ),
                    ),
                ],
                IGNORED,
            ),
        ),
    ],
    IGNORED,
);

fn gateways(v: &Value) -> Option<String> {
    let list = v.as_array()?;
    let others: Vec<&str> = list
        .iter()
        .filter_map(Value::as_str)
        .filter(|g| *g != "mesh")
        .collect();
    if others.is_empty() {
        return None;
    }
    let consequence = if others.len() == list.len() {
        "this VirtualService is ignored"
    } else {
        "only its sidecar (mesh) routes are used"
    };
    Some(format!(
        "{}: gateways are not implemented by Ama; {consequence}",
        others.join(", ")
    ))
}

fn retry_on(v: &Value) -> Option<String> {
    let others: Vec<&str> = v
        .as_str()?
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && *c != "connect-failure")
        .collect();
    (!others.is_empty()).then(|| {
        format!(
            "\"{}\": not implemented by Ama (it retries on connect failure only); ignored",
            others.join(",")
        )
    })
}

fn auto_mtls(v: &Value) -> Option<String> {
    (v == &Value::Bool(false))
        .then(|| "false: not implemented by Ama (auto mTLS is always on); ignored".into())
}

fn load_balancer(v: &Value) -> Option<String> {
    (v.as_str() == Some("PASSTHROUGH"))
        .then(|| "PASSTHROUGH: not implemented by Ama; the service's default is used".into())
}

/// Records a finding for every field under `value` that `node` does not implement.
fn walk(value: &Value, node: &Node, at: &str, p: &mut Problems) {
    match (node, value) {
        (Done, _) => {}
        (Node::Value(check), v) => {
            if let Some(message) = check(v) {
                p.add(at, message);
            }
        }
        (Fields(known, otherwise), Value::Object(map)) => {
            for (key, v) in map {
                let path = join(at, key);
                match known.iter().find(|(k, _)| k == key) {
                    Some((_, node)) => walk(v, node, &path, p),
                    None => p.add(path, *otherwise),
                }
            }
        }
        (Each(node), Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, node, &format!("{at}[{i}]"), p);
            }
        }
        (Node::NonEmpty(_, message), Value::Object(map)) if map.is_empty() => p.add(at, *message),
        (Node::NonEmpty(node, _), v) => walk(v, node, at, p),
        (Keys(node), Value::Object(map)) => {
            for (key, v) in map {
                walk(v, node, &format!("{at}[\"{key}\"]"), p);
            }
        }
        // The typed parse accepted the shape: a scalar where a mapping is expected is Istio's
        // shorthand (none today), so there is nothing more to look at.
        _ => {}
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// Whether a security policy selects workloads that Ama must fail closed on: an
/// AuthorizationPolicy (ALLOW, DENY or CUSTOM; AUDIT decides nothing) or a RequestAuthentication,
/// bound by selector or to a whole namespace (not by `targetRef`, which binds gateways and
/// waypoints, never sidecars, in Istio as well).
pub fn denies_all(object: &Object) -> bool {
    match object {
        Object::AuthorizationPolicy(ap) => {
            ap.spec.target_ref.is_none()
                && ap.spec.target_refs.is_empty()
                && ap.spec.action != Some(Action::Audit)
        }
        Object::RequestAuthentication(ra) => {
            ra.spec.target_ref.is_none() && ra.spec.target_refs.is_empty()
        }
        _ => false,
    }
}

/// Every kind, field and value of `object` (as written: `value`) that Ama does not implement,
/// with its path and what Ama does instead.
pub fn not_implemented(object: &Object, value: &Value) -> Vec<Problem> {
    let mut p = Problems::default();
    let spec = value.get("spec").unwrap_or(&Value::Null);
    match object {
        Object::VirtualService(_) => walk(spec, &VIRTUAL_SERVICE, "spec", &mut p),
        Object::DestinationRule(_) => walk(spec, &DESTINATION_RULE, "spec", &mut p),
        Object::PeerAuthentication(_) => {}
        Object::AuthorizationPolicy(ap) => {
            if ap.spec.action == Some(Action::Audit) {
                p.add(
                    "spec.action",
                    "AUDIT: not implemented by Ama (no audit log); the policy is ignored (it \
                     never allows or denies)",
                );
            } else if denies_all(object) {
                p.add("spec", NOT_ENFORCED);
            } else {
                p.add("spec.targetRef", targets_ignored());
            }
        }
        Object::RequestAuthentication(_) => {
            if denies_all(object) {
                p.add("spec", NOT_ENFORCED);
            } else {
                p.add("spec.targetRef", targets_ignored());
            }
        }
        Object::Gateway(_) | Object::ServiceEntry(_) | Object::Sidecar(_) => p.add("kind", IGNORED),
        Object::Workload(w) => annotations(
            &w.template.metadata.annotations,
            "spec.template.metadata.annotations",
            &mut p,
        ),
        Object::Pod(pod) => annotations(&pod.metadata.annotations, "metadata.annotations", &mut p),
        Object::Other(o) => {
            if o.kind != "ServiceAccount" {
                // A ServiceAccount's only meaning to a mesh, its name as the identity of the
                // pods that run as it, needs no object.
                p.add("kind", IGNORED);
            }
        }
        Object::Service(svc) if svc.spec.service_type.as_deref() == Some("ExternalName") => p.add(
            "spec.type",
            "ExternalName: not implemented by Ama; this Service is ignored",
        ),
        Object::EndpointSlice(slice) if slice.slice.address_type == "FQDN" => p.add(
            "addressType",
            "FQDN: not implemented by Ama; this EndpointSlice is ignored",
        ),
        Object::ConfigMap(cm) if cm.mesh_config.is_some() => {
            let text = cm.data.get(crate::objects::MESH_CONFIG_KEY);
            // It parsed as a MeshConfig: it is YAML.
            if let Some(mesh) = text.and_then(|t| serde_saphyr::from_str::<Value>(t).ok()) {
                walk(&mesh, &MESH_CONFIG, "data.mesh", &mut p);
            }
        }
        Object::Namespace(_)
        | Object::Service(_)
        | Object::EndpointSlice(_)
        | Object::ConfigMap(_) => {}
    }
    p.into_vec()
}

fn targets_ignored() -> &'static str {
    "policies attached to gateways and waypoints are not implemented by Ama (sidecars never \
     apply them); ignored"
}

fn annotations(annotations: &BTreeMap<String, String>, at: &str, p: &mut Problems) {
    for key in crate::overrides::not_implemented(annotations) {
        p.add(format!("{at}[\"{key}\"]"), IGNORED);
    }
}

#[cfg(test)]
mod tests {
    use crate::objects::{Severity, parse};

    fn warnings(yaml: &str) -> Vec<String> {
        let parsed = parse(yaml, "x.yaml");
        assert!(
            parsed.errors().next().is_none(),
            "{:?}",
            parsed.errors().collect::<Vec<_>>()
        );
        parsed
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn virtual_service_fields_ama_does_not_implement() {
        let w = warnings(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - uri: {prefix: /a}
    - uri: {regex: '/b.*'}
      method: {exact: GET}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 100
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: 'connect-failure,5xx'}
    fault: {abort: {httpStatus: 500, percentage: {value: 10}}}
",
        );
        assert_eq!(
            w,
            [
                "x.yaml:doc 1: VirtualService default/reviews: spec.http[0].fault: not implemented by Ama; ignored",
                "x.yaml:doc 1: VirtualService default/reviews: spec.http[0].match[1].method: not implemented by Ama; this match is dropped (it never matches)",
                "x.yaml:doc 1: VirtualService default/reviews: spec.http[0].match[1].uri.regex: not implemented by Ama; this match is dropped (it never matches)",
                "x.yaml:doc 1: VirtualService default/reviews: spec.http[0].retries.perTryTimeout: not implemented by Ama; ignored",
                "x.yaml:doc 1: VirtualService default/reviews: spec.http[0].retries.retryOn: \"5xx\": not implemented by Ama (it retries on connect failure only); ignored",
                "x.yaml:doc 1: VirtualService default/reviews: spec.http[0].route[0].destination.subset: not implemented by Ama; ignored",
            ]
        );
    }

    #[test]
    fn destination_rule_and_whole_kinds() {
        let w = warnings(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool:
      http: {http2MaxRequests: 10, maxRequestsPerConnection: 1}
    outlierDetection: {consecutive5xxErrors: 1}
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing}
spec: {}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t}
spec: {}
",
        );
        assert_eq!(
            w,
            [
                "x.yaml:doc 1: DestinationRule default/reviews: spec.subsets: not implemented by Ama; ignored",
                "x.yaml:doc 1: DestinationRule default/reviews: spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection: not implemented by Ama; ignored",
                "x.yaml:doc 1: DestinationRule default/reviews: spec.trafficPolicy.outlierDetection: not implemented by Ama; ignored",
                "x.yaml:doc 2: Gateway default/gw: kind: not implemented by Ama; ignored",
                "x.yaml:doc 3: AuthorizationPolicy default/allow-nothing: spec: not enforced by Ama yet: denies every request to the workloads it selects",
                "x.yaml:doc 4: Telemetry default/t: kind: not implemented by Ama; ignored",
            ]
        );
    }

    #[test]
    fn presence_matches_and_mesh_config() {
        let w = warnings(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [r]
  http:
  - match: [{headers: {x-canary: {}}}]
    route: [{destination: {host: r}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    accessLogFile: /dev/stdout
    outboundTrafficPolicy: {mode: REGISTRY_ONLY}
    defaultConfig:
      holdApplicationUntilProxyStarts: true
      proxyMetadata: {A: b}
",
        );
        assert_eq!(
            w,
            [
                "x.yaml:doc 1: VirtualService default/r: spec.http[0].match[0].headers[\"x-canary\"]: a presence match is not implemented by Ama; this match is dropped (it never matches)",
                "x.yaml:doc 2: ConfigMap istio-system/istio: data.mesh.defaultConfig.holdApplicationUntilProxyStarts: not implemented by Ama; ignored",
                "x.yaml:doc 2: ConfigMap istio-system/istio: data.mesh.outboundTrafficPolicy: not implemented by Ama; ignored",
            ]
        );
    }

    #[test]
    fn external_name_services() {
        let w = warnings(
            "apiVersion: v1
kind: Service
metadata: {name: db}
spec: {type: ExternalName, externalName: db.example.com}
",
        );
        assert_eq!(
            w,
            [
                "x.yaml:doc 1: Service default/db: spec.type: ExternalName: not implemented by Ama; this Service is ignored"
            ]
        );
    }

    #[test]
    fn what_ama_implements_is_silent() {
        let w = warnings(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  gateways: [mesh]
  http:
  - name: r
    match:
    - uri: {exact: /a}
      headers: {x-user: {prefix: jason}}
    route:
    - destination: {host: reviews, port: {number: 9080}}
    retries: {attempts: 2, retryOn: connect-failure}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa}
",
        );
        assert_eq!(w, Vec::<String>::new());
    }
}
