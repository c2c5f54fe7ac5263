//! What Ama implements of the config it accepts, and a finding for everything else.
//!
//! Istio's API is large and Ama implements it in steps; whatever it does not implement must
//! never be accepted in silence. This module is the one place that says what Ama implements,
//! derived from what the control plane translates *and* the proxy acts on:
//!
//! - VirtualService (bound to sidecars when `gateways` is empty or names `mesh`, and to the
//!   Gateways it names, per route match too): all of `http` (every match
//!   condition, destinations with subsets, ports, weights and headers, rewrite, redirect, direct
//!   response, header edits, mirrors, timeout, retries, fault delay and HTTP or gRPC abort, CORS),
//!   `tcp` and `tls`, except `delegate`, `retries.retryRemoteLocalities` (no localities),
//!   `fault.abort.http2Error` (Istio's sidecars ignore it as well), `match.statPrefix` and the
//!   deprecated `tcp[].match[].sourceSubnet`.
//! - DestinationRule: all of it (host, port-level and subset policies, load balancing with
//!   consistent hashing, connection pool, outlier detection, TLS (Istio mTLS, and TLS
//!   origination with `SIMPLE` and `MUTUAL`), `workloadSelector`,
//!   `exportTo`), except `localityLbSetting` (no localities), `warmup`/`warmupDurationSecs`,
//!   `tunnel`, `proxyProtocol`, `connectionPool.http.maxConcurrentStreams`,
//!   `httpCookie.attributes`, `tls.caCrl`, and the deprecated
//!   `outlierDetection.consecutiveErrors` (which Istio ignores too). `tls.credentialName` is
//!   read for sidecars only in a rule with a `workloadSelector` (as Istio): in a rule without
//!   one it is a fail-closed finding (a sidecar's connections fail, never in plaintext; gateway
//!   proxies read the Secret in their own namespace).
//! - PeerAuthentication: all of it.
//! - AuthorizationPolicy: all of it (selector, namespace- and mesh-wide policies, `targetRef(s)`
//!   to a Service, ALLOW, DENY and AUDIT, every field of `from`, `to` and `when`, the
//!   `istio.io/dry-run` annotation of ALLOW and DENY policies), except what the sidecars cannot
//!   do, each reported with what happens instead: CUSTOM (no ext_authz provider: the requests it
//!   matches are denied), conditions on `experimental.envoy.filters.*` (the rule errs on the side
//!   of denying), a dry-run annotation Istio rejects (no boolean, or on AUDIT or CUSTOM: the
//!   policy is enforced), and targets other than Services (they bind nothing). AUDIT differs from Istio's and says so:
//!   Ama's sidecar logs the requests it matches.
//! - RequestAuthentication: all of it (every JWT rule field, `jwks` inline, `jwksUri` fetched by
//!   discovery, else the issuer's OpenID Connect discovery document, as istiod), except an
//!   inline `jwks` that is no JSON Web Key Set and a rule with neither `jwks` nor `jwksUri` whose
//!   issuer is no URL: both reject every token of their issuer (401). Targets as for
//!   AuthorizationPolicy.
//! - ServiceEntry: `hosts` (wildcards too), `addresses` (IPs and one-address CIDRs),
//!   `ports` (all but UDP), `location`, `resolution` (NONE, STATIC, DNS, DNS_ROUND_ROBIN),
//!   `endpoints` (`address` by IP or name, `ports`, `labels`, `serviceAccount`),
//!   `workloadSelector`, `exportTo` and `subjectAltNames` (TLS origination; Istio mTLS with
//!   one SPIFFE name); not endpoint `network`, `locality` and `weight`, unix socket endpoints,
//!   wider CIDRs.
//! - Sidecar: `workloadSelector`, `egress[].hosts` (which services, VirtualServices and
//!   DestinationRules its proxies receive) and `outboundTrafficPolicy.mode`; not `ingress`,
//!   `inboundConnectionPool`, `outboundTrafficPolicy.egressProxy`, nor an egress listener's
//!   `port` (its hosts are then seen on every port), `bind` and `captureMode`.
//! - Gateway: `selector`, and of each server `port`, `hosts`, `name` and of its `tls`
//!   `httpsRedirect`, `mode` (all but AUTO_PASSTHROUGH), `credentialName` (certificate files,
//!   `serverCertificate`, `privateKey`, `caCertificates`, are reported: not served); a server restricting its clients by
//!   `subjectAltNames`, `verifyCertificateSpki`, `verifyCertificateHash` or `caCrl` is not
//!   served (failing closed); `minProtocolVersion` and `maxProtocolVersion` within TLS 1.2 and
//!   1.3 (below: reported); other TLS fields (`cipherSuites`, ...) are reported and not
//!   applied.
//! - The other Istio kinds: not implemented.
//! - Services and EndpointSlices: all but `type: ExternalName` and FQDN endpoints.
//! - Pods and pod templates: the injection annotations [`crate::overrides`] reads.
//! - The MeshConfig of the ConfigMap `istio`: `trustDomain`, `enablePrometheusMerge`,
//!   `accessLogFile`, `accessLogEncoding`, `enableAutoMtls: true`, `outboundTrafficPolicy.mode`,
//!   `inboundTrafficPolicy.mode` and `defaultConfig.{discoveryAddress, statusPort,
//!   interceptionMode, proxyMetadata, concurrency, holdApplicationUntilProxyStarts}`.
//! - Secrets: read for the `credentialName` of Gateways and of DestinationRules.
//! - Telemetry: `selector`, `tracing[].{providers, randomSamplingPercentage,
//!   disableSpanReporting, customTags}`, `accessLogging[].{match.mode, providers, disabled,
//!   filter.expression}` and `metrics[].{providers, overrides[].{match.{metric, mode}, disabled,
//!   tagOverrides}}`; MeshConfig `extensionProviders[].{zipkin, opentelemetry,
//!   envoyFileAccessLog, prometheus}`, `defaultProviders.{tracing, accessLogging, metrics}` and
//!   `defaultConfig.tracing`.
//! - Kinds Ama does not read at all (EnvoyFilter, …): one finding each, except
//!   ServiceAccount (its name, the pods' identity, needs no object).
//!
//! [`not_implemented`] walks the object as written (its JSON) against a tree of what is
//! implemented, so that every other field gets a finding with its path, including fields that
//! are added to the typed model later: nothing is implemented until it is listed here. Fields
//! outside Istio's schema never get here: the typed parse already rejected them.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::check::{Problem, Problems};
use crate::objects::{IstioConfig, Object, Severity};
use crate::security::PolicyKind;
use crate::security::authorization_policy::{
    Action, AuthorizationPolicy, DRY_RUN_ANNOTATION, PolicyTargetReference, parse_dry_run, targets,
    unevaluable_consequence,
};
use crate::security::request_authentication::{RequestAuthentication, jwks_problem};

/// The consequence of most fields Ama does not implement.
const IGNORED: &str = "not implemented by Ama; ignored";
/// ... of a condition of a match that Ama does not evaluate.
const CONDITION_IGNORED: &str =
    "not implemented by Ama; this condition is ignored (the match is wider than written)";

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
}

use Node::{Done, Each, Fields};

static GATEWAY: Node = Fields(
    &[
        ("selector", Done),
        (
            "servers",
            Each(&Fields(
                &[
                    ("port", Done),
                    ("hosts", Done),
                    ("name", Done),
                    (
                        "tls",
                        Fields(
                            &[
                                ("httpsRedirect", Done),
                                ("mode", Node::Value(gateway_tls_mode)),
                                ("serverCertificate", Node::Value(certificate_file)),
                                ("privateKey", Node::Value(certificate_file)),
                                ("caCertificates", Node::Value(certificate_file)),
                                ("credentialName", Done),
                                ("minProtocolVersion", Node::Value(min_tls)),
                                ("maxProtocolVersion", Node::Value(max_tls)),
                                ("subjectAltNames", Node::Value(client_restriction)),
                                ("verifyCertificateSpki", Node::Value(client_restriction)),
                                ("verifyCertificateHash", Node::Value(client_restriction)),
                                ("caCrl", Node::Value(client_restriction)),
                            ],
                            "not implemented by Ama; ignored (the server's TLS is served without it)",
                        ),
                    ),
                ],
                IGNORED,
            )),
        ),
    ],
    IGNORED,
);

/// A restriction of a Gateway server's clients that Ama cannot apply: the server is left out
/// (failing closed) rather than served to clients it must refuse.
fn client_restriction(v: &Value) -> Option<String> {
    let set = match v {
        Value::Array(a) => !a.is_empty(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    };
    set.then(|| "not implemented by Ama; this server is not served".to_string())
}

/// Certificate files of a Gateway server: the control plane cannot read the gateway pod's
/// files, so only `credentialName` Secrets are served.
fn certificate_file(v: &Value) -> Option<String> {
    v.as_str().is_some_and(|s| !s.is_empty()).then(|| {
        "certificate files are not implemented by Ama (use credentialName); without a \
         credentialName this server is not served"
            .to_string()
    })
}

/// A Gateway server's lowest TLS version: Ama serves TLS 1.2 and 1.3.
fn min_tls(v: &Value) -> Option<String> {
    matches!(v.as_str()?, "TLSV1_0" | "TLSV1_1").then(|| {
        format!(
            "{}: TLS below 1.2 is not served by Ama; the minimum is TLS 1.2",
            v.as_str().unwrap_or_default()
        )
    })
}

/// A Gateway server's highest TLS version: below 1.2 leaves nothing Ama serves.
fn max_tls(v: &Value) -> Option<String> {
    matches!(v.as_str()?, "TLSV1_0" | "TLSV1_1").then(|| {
        format!(
            "{}: TLS below 1.2 is not served by Ama; this server is not served",
            v.as_str().unwrap_or_default()
        )
    })
}

/// The Gateway TLS modes the gateway proxy does not serve.
fn gateway_tls_mode(v: &Value) -> Option<String> {
    (v.as_str()? == "AUTO_PASSTHROUGH")
        .then(|| "AUTO_PASSTHROUGH: not implemented by Ama; this server is not served".to_string())
}

static VIRTUAL_SERVICE: Node = Fields(
    &[
        ("hosts", Done),
        ("exportTo", Done),
        ("gateways", Done),
        ("http", Each(&HTTP_ROUTE)),
        ("tcp", Each(&TCP_ROUTE)),
        ("tls", Each(&TLS_ROUTE)),
    ],
    IGNORED,
);
static HTTP_ROUTE: Node = Fields(
    &[
        ("name", Done),
        ("match", Each(&HTTP_MATCH)),
        ("route", Each(&HTTP_DESTINATION)),
        ("redirect", Done),
        ("directResponse", Done),
        ("delegate", Node::Value(delegate)),
        ("rewrite", Done),
        ("timeout", Done),
        (
            "retries",
            Fields(
                &[
                    ("attempts", Done),
                    ("perTryTimeout", Done),
                    ("retryOn", Done),
                    ("retryIgnorePreviousHosts", Done),
                    ("backoff", Done),
                    ("retryRemoteLocalities", Node::Value(no_localities)),
                ],
                IGNORED,
            ),
        ),
        (
            "fault",
            Fields(
                &[
                    ("delay", Done),
                    (
                        "abort",
                        Fields(
                            &[
                                ("httpStatus", Done),
                                ("grpcStatus", Done),
                                ("percentage", Done),
                            ],
                            "not implemented by Ama (nor by Istio's sidecars); this abort is \
                             ignored",
                        ),
                    ),
                ],
                IGNORED,
            ),
        ),
        ("mirror", Done),
        ("mirrors", Done),
        ("mirrorPercentage", Done),
        ("mirrorPercent", Done),
        ("corsPolicy", Done),
        ("headers", Done),
    ],
    IGNORED,
);
static HTTP_MATCH: Node = Fields(
    &[
        ("name", Done),
        ("uri", Done),
        ("scheme", Done),
        ("method", Done),
        ("authority", Done),
        ("headers", Node::Value(jwt_claims)),
        ("withoutHeaders", Done),
        ("queryParams", Done),
        ("port", Done),
        ("sourceLabels", Done),
        ("sourceNamespace", Done),
        ("ignoreUriCase", Done),
        ("gateways", Done),
        ("statPrefix", Node::Value(ignored)),
    ],
    CONDITION_IGNORED,
);
static HTTP_DESTINATION: Node = Fields(
    &[
        ("destination", DESTINATION),
        ("weight", Done),
        ("headers", Done),
    ],
    IGNORED,
);
const DESTINATION: Node = Fields(&[("host", Done), ("subset", Done), ("port", Done)], IGNORED);
static L4_DESTINATION: Node = Fields(&[("destination", DESTINATION), ("weight", Done)], IGNORED);
static TCP_ROUTE: Node = Fields(
    &[
        (
            "match",
            Each(&Fields(
                &[
                    ("destinationSubnets", Done),
                    ("port", Done),
                    ("sourceLabels", Done),
                    ("sourceNamespace", Done),
                    ("gateways", Done),
                ],
                CONDITION_IGNORED,
            )),
        ),
        ("route", Each(&L4_DESTINATION)),
    ],
    IGNORED,
);
static TLS_ROUTE: Node = Fields(
    &[
        (
            "match",
            Each(&Fields(
                &[
                    ("sniHosts", Done),
                    ("destinationSubnets", Done),
                    ("port", Done),
                    ("sourceLabels", Done),
                    ("sourceNamespace", Done),
                    ("gateways", Done),
                ],
                CONDITION_IGNORED,
            )),
        ),
        ("route", Each(&L4_DESTINATION)),
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
        ("outboundTrafficPolicy", Fields(&[("mode", Done)], IGNORED)),
        ("inboundTrafficPolicy", Fields(&[("mode", Done)], IGNORED)),
        ("enableTracing", Done),
        (
            "defaultProviders",
            Fields(
                &[
                    ("tracing", Done),
                    ("accessLogging", Done),
                    ("metrics", Done),
                ],
                IGNORED,
            ),
        ),
        (
            "extensionProviders",
            Each(&Fields(
                &[
                    ("name", Done),
                    (
                        "zipkin",
                        Fields(
                            &[("service", Done), ("port", Done), ("maxTagLength", Done)],
                            IGNORED,
                        ),
                    ),
                    (
                        "opentelemetry",
                        Fields(
                            &[
                                ("service", Done),
                                ("port", Done),
                                ("maxTagLength", Done),
                                ("http", Fields(&[("path", Done)], IGNORED)),
                            ],
                            IGNORED,
                        ),
                    ),
                    (
                        "envoyFileAccessLog",
                        Fields(
                            &[
                                ("path", Done),
                                (
                                    "logFormat",
                                    Fields(&[("text", Done), ("labels", Done)], IGNORED),
                                ),
                            ],
                            IGNORED,
                        ),
                    ),
                    ("prometheus", Done),
                ],
                IGNORED,
            )),
        ),
        (
            "defaultConfig",
            Fields(
                &[
                    (
                        "tracing",
                        Fields(
                            &[
                                ("sampling", Done),
                                ("zipkin", Fields(&[("address", Done)], IGNORED)),
                                ("custom_tags", Done),
                                ("customTags", Done),
                                ("max_path_tag_length", Done),
                                ("maxPathTagLength", Done),
                            ],
                            IGNORED,
                        ),
                    ),
                    ("discoveryAddress", Done),
                    ("statusPort", Done),
                    ("interceptionMode", Done),
                    ("proxyMetadata", Done),
                    ("concurrency", Done),
                    ("holdApplicationUntilProxyStarts", Done),
                ],
                IGNORED,
            ),
        ),
    ],
    IGNORED,
);

/// Telemetry (`telemetry.istio.io`): tracing, access logging and metrics ([`crate::telemetry`]).
static TELEMETRY: Node = Fields(
    &[
        ("selector", Done),
        (
            "accessLogging",
            Each(&Fields(
                &[
                    ("match", Fields(&[("mode", Done)], IGNORED)),
                    ("providers", Done),
                    ("disabled", Done),
                    (
                        "filter",
                        Fields(&[("expression", Node::Value(cel_named_time_zone))], IGNORED),
                    ),
                ],
                IGNORED,
            )),
        ),
        (
            "metrics",
            Each(&Fields(
                &[
                    ("providers", Done),
                    (
                        "overrides",
                        Each(&Fields(
                            &[
                                (
                                    "match",
                                    Fields(
                                        &[("metric", Done), ("mode", Done)],
                                        "not implemented by Ama (custom metrics); this override \
                                         is ignored",
                                    ),
                                ),
                                ("disabled", Done),
                                ("tagOverrides", Node::Value(cel_named_time_zone)),
                            ],
                            IGNORED,
                        )),
                    ),
                    (
                        "reportingInterval",
                        Node::Value(|_| {
                            Some("ignored: Ama's TCP metrics count bytes as they flow".to_string())
                        }),
                    ),
                ],
                IGNORED,
            )),
        ),
        (
            "tracing",
            Each(&Fields(
                &[
                    ("providers", Done),
                    ("randomSamplingPercentage", Done),
                    ("disableSpanReporting", Done),
                    ("customTags", Done),
                ],
                IGNORED,
            )),
        ),
    ],
    IGNORED,
);

static SERVICE_ENTRY: Node = Fields(
    &[
        ("hosts", Done),
        ("addresses", Each(&Node::Value(service_entry_address))),
        (
            "ports",
            Each(&Fields(
                &[
                    ("number", Done),
                    ("protocol", Node::Value(service_entry_protocol)),
                    ("name", Done),
                    ("targetPort", Done),
                ],
                IGNORED,
            )),
        ),
        ("location", Done),
        ("resolution", Done),
        (
            "endpoints",
            Each(&Fields(
                &[
                    ("address", Node::Value(service_entry_endpoint)),
                    ("ports", Done),
                    ("labels", Done),
                    ("serviceAccount", Done),
                ],
                IGNORED,
            )),
        ),
        ("workloadSelector", Done),
        ("exportTo", Done),
        ("subjectAltNames", Done),
    ],
    IGNORED,
);

fn service_entry_address(v: &Value) -> Option<String> {
    let a = v.as_str()?;
    let (ip, len) = a.split_once('/')?;
    let full = if ip.contains(':') { "128" } else { "32" };
    (len != full).then(|| {
        format!(
            "{a}: a CIDR range of more than one address is not implemented by Ama (routing by \
             destination subnet); this address is left out"
        )
    })
}

/// CEL's timestamp accessors with a named time zone (`request.time.getHours('Europe/Paris')`):
/// Ama's CEL has only the fixed `Etc/` zones and offsets (the IANA tables would cost every sidecar
/// about 1 MB of memory; see `.cargo/config.toml`), so such a call fails, as an unknown zone does
/// in Envoy: a filter then writes nothing, a tag value is left out. `v` is an expression, or any
/// JSON holding expressions (a `tagOverrides` map).
fn cel_named_time_zone(v: &Value) -> Option<String> {
    const ACCESSORS: [&str; 10] = [
        "getFullYear(",
        "getMonth(",
        "getDayOfYear(",
        "getDayOfMonth(",
        "getDate(",
        "getDayOfWeek(",
        "getHours(",
        "getMinutes(",
        "getSeconds(",
        "getMilliseconds(",
    ];
    let mut zones = Vec::new();
    let mut texts = Vec::new();
    collect_strings(v, &mut texts);
    for text in texts {
        for accessor in ACCESSORS {
            for (at, _) in text.match_indices(accessor) {
                let arg = text[at + accessor.len()..].trim_start();
                let Some(quote) = arg.chars().next().filter(|c| *c == '\'' || *c == '"') else {
                    continue;
                };
                let Some(zone) = arg[1..].split(quote).next() else {
                    continue;
                };
                let fixed = zone == "UTC"
                    || zone == "GMT"
                    || zone.starts_with("Etc/")
                    || zone.starts_with(['+', '-'])
                    || zone.chars().all(|c| c.is_ascii_digit() || c == ':');
                if !fixed && !zones.contains(&zone) {
                    zones.push(zone);
                }
            }
        }
    }
    (!zones.is_empty()).then(|| {
        format!(
            "time zone {}: not built into Ama's CEL (only UTC, Etc/* and fixed offsets such as \
             \"+05:30\"); the call fails where it is evaluated",
            zones
                .iter()
                .map(|z| format!("{z:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn collect_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        Value::Object(map) => map.values().for_each(|i| collect_strings(i, out)),
        _ => {}
    }
}

fn service_entry_protocol(v: &Value) -> Option<String> {
    v.as_str()
        .filter(|p| p.eq_ignore_ascii_case("UDP"))
        .map(|p| format!("{p}: not implemented by Ama; the port is left out"))
}

fn service_entry_endpoint(v: &Value) -> Option<String> {
    v.as_str()
        .filter(|a| a.starts_with("unix://"))
        .map(|a| format!("{a}: unix socket endpoints are not implemented by Ama; left out"))
}

static SIDECAR: Node = Fields(
    &[
        ("workloadSelector", Done),
        (
            "egress",
            Each(&Fields(
                &[("hosts", Done), ("port", Node::Value(egress_port))],
                IGNORED,
            )),
        ),
        ("outboundTrafficPolicy", Fields(&[("mode", Done)], IGNORED)),
    ],
    IGNORED,
);

fn egress_port(_: &Value) -> Option<String> {
    Some(
        "not implemented by Ama; the listener's hosts are seen on every port (wider than \
         written)"
            .into(),
    )
}

static DESTINATION_RULE: Node = Fields(
    &[
        ("host", Done),
        ("exportTo", Done),
        ("workloadSelector", Done),
        ("trafficPolicy", TRAFFIC_POLICY),
        (
            "subsets",
            Each(&Fields(
                &[
                    ("name", Done),
                    ("labels", Done),
                    ("trafficPolicy", TRAFFIC_POLICY),
                ],
                IGNORED,
            )),
        ),
    ],
    IGNORED,
);
const TRAFFIC_POLICY: Node = Fields(
    &[
        ("loadBalancer", LOAD_BALANCER),
        ("connectionPool", CONNECTION_POOL),
        ("outlierDetection", OUTLIER_DETECTION),
        ("tls", CLIENT_TLS),
        (
            "portLevelSettings",
            Each(&Fields(
                &[
                    ("port", Done),
                    ("loadBalancer", LOAD_BALANCER),
                    ("connectionPool", CONNECTION_POOL),
                    ("outlierDetection", OUTLIER_DETECTION),
                    ("tls", CLIENT_TLS),
                ],
                IGNORED,
            )),
        ),
    ],
    IGNORED,
);
const LOAD_BALANCER: Node = Fields(
    &[
        ("simple", Done),
        (
            "consistentHash",
            Fields(
                &[
                    ("httpHeaderName", Done),
                    (
                        "httpCookie",
                        Fields(&[("name", Done), ("path", Done), ("ttl", Done)], IGNORED),
                    ),
                    ("useSourceIp", Done),
                    ("httpQueryParameterName", Done),
                    ("ringHash", Done),
                    ("maglev", Done),
                    ("minimumRingSize", Done),
                ],
                IGNORED,
            ),
        ),
        ("localityLbSetting", Node::Value(no_localities)),
    ],
    IGNORED,
);
const CONNECTION_POOL: Node = Fields(
    &[
        (
            "tcp",
            Fields(
                &[
                    ("maxConnections", Done),
                    ("connectTimeout", Done),
                    ("tcpKeepalive", Done),
                    ("maxConnectionDuration", Done),
                    ("idleTimeout", Done),
                ],
                IGNORED,
            ),
        ),
        (
            "http",
            Fields(
                &[
                    ("http1MaxPendingRequests", Done),
                    ("http2MaxRequests", Done),
                    ("maxRequestsPerConnection", Done),
                    ("maxRetries", Done),
                    ("idleTimeout", Done),
                    ("h2UpgradePolicy", Done),
                    ("useClientProtocol", Done),
                ],
                IGNORED,
            ),
        ),
    ],
    IGNORED,
);
const OUTLIER_DETECTION: Node = Fields(
    &[
        ("consecutive5xxErrors", Done),
        ("consecutiveGatewayErrors", Done),
        ("consecutiveLocalOriginFailures", Done),
        ("splitExternalLocalOriginErrors", Done),
        ("interval", Done),
        ("baseEjectionTime", Done),
        ("maxEjectionPercent", Done),
        ("minHealthPercent", Done),
        ("consecutiveErrors", Node::Value(consecutive_errors)),
    ],
    IGNORED,
);
const CLIENT_TLS: Node = Fields(
    &[
        ("mode", Done),
        ("sni", Done),
        ("subjectAltNames", Done),
        ("caCertificates", Done),
        ("clientCertificate", Done),
        ("privateKey", Done),
        ("insecureSkipVerify", Done),
        // Without a workloadSelector: [`credential_names`].
        ("credentialName", Done),
    ],
    IGNORED,
);

/// Header matches on `@request.auth.claims.…` route on a validated JWT's claims.
fn jwt_claims(v: &Value) -> Option<String> {
    let claims: Vec<&str> = v
        .as_object()?
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("@request.auth.claims"))
        .collect();
    (!claims.is_empty()).then(|| {
        format!(
            "{}: routing on JWT claims is not implemented by Ama (it validates no JWT); this \
             condition never holds",
            claims.join(", ")
        )
    })
}

fn ignored(_: &Value) -> Option<String> {
    Some(IGNORED.into())
}

fn delegate(_: &Value) -> Option<String> {
    Some("not implemented by Ama; this route is dropped".into())
}

fn no_localities(v: &Value) -> Option<String> {
    (v != &Value::Bool(false))
        .then(|| "not implemented by Ama (its endpoints have no localities); ignored".to_string())
}

fn consecutive_errors(_: &Value) -> Option<String> {
    Some(
        "deprecated, and ignored by Istio since 1.8 (use consecutiveGatewayErrors or \
         consecutive5xxErrors); ignored"
            .into(),
    )
}

/// The `tls.credentialName`s of a DestinationRule without `workloadSelector`: Istio reads a
/// rule's Secret for sidecars only with one, and the proxy fails those connections.
fn credential_names(v: &Value, at: &str, fail_closed: &mut Problems) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let path = join(at, k);
                if k == "credentialName" && at.ends_with(".tls") {
                    if v.as_str().is_some_and(|n| !n.is_empty()) {
                        fail_closed.add(
                            &path,
                            "read for sidecars only in a DestinationRule with a \
                             workloadSelector (as Istio); without one, a sidecar's connections \
                             with these TLS settings fail (503 UF), never in plaintext \
                             (gateway proxies read the Secret in their own namespace)",
                        );
                    }
                } else {
                    credential_names(v, &path, fail_closed);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                credential_names(v, &format!("{at}[{i}]"), fail_closed);
            }
        }
        _ => {}
    }
}

fn auto_mtls(v: &Value) -> Option<String> {
    (v == &Value::Bool(false))
        .then(|| "false: not implemented by Ama (auto mTLS is always on); ignored".into())
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

/// Every kind, field and value of `object` (as written: `value`) that Ama does not implement,
/// with its path and what Ama does instead: a [`Severity::Warning`], or a
/// [`Severity::FailClosed`] where a security policy denies more than written.
pub fn not_implemented(object: &Object, value: &Value) -> Vec<(Severity, Problem)> {
    let mut p = Problems::default();
    let mut fail_closed = Problems::default();
    let spec = value.get("spec").unwrap_or(&Value::Null);
    match object {
        Object::VirtualService(_) => walk(spec, &VIRTUAL_SERVICE, "spec", &mut p),
        Object::DestinationRule(dr) => {
            walk(spec, &DESTINATION_RULE, "spec", &mut p);
            if dr.spec.workload_selector.is_none() {
                credential_names(spec, "spec", &mut fail_closed);
            }
        }
        Object::PeerAuthentication(_) => {}
        Object::AuthorizationPolicy(ap) => authorization_policy(ap, &mut p, &mut fail_closed),
        Object::RequestAuthentication(ra) => {
            request_authentication(&ra.spec, &mut p, &mut fail_closed);
        }
        // Its problems are reported (as fail-closed errors) by the parser; what is left is which
        // of its targets bind no sidecar.
        Object::UnreadablePolicy(u) => {
            if u.kind == PolicyKind::AuthorizationPolicy {
                dry_run(&u.metadata.annotations, None, &mut fail_closed);
            }
            policy_targets(
                u.binding.target_ref.as_ref(),
                &u.binding.target_refs,
                &mut p,
            );
        }
        Object::ServiceEntry(_) => walk(spec, &SERVICE_ENTRY, "spec", &mut p),
        Object::Sidecar(_) => walk(spec, &SIDECAR, "spec", &mut p),
        Object::Gateway(_) => walk(spec, &GATEWAY, "spec", &mut p),
        Object::Workload(w) => annotations(
            &w.template.metadata.annotations,
            "spec.template.metadata.annotations",
            &mut p,
        ),
        Object::Pod(pod) => annotations(&pod.metadata.annotations, "metadata.annotations", &mut p),
        Object::Other(o) if o.kind == "Telemetry" => walk(&o.spec, &TELEMETRY, "spec", &mut p),
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
        | Object::ConfigMap(_)
        | Object::Secret(_) => {}
    }
    let warnings = p.into_vec().into_iter().map(|p| (Severity::Warning, p));
    let errors = fail_closed
        .into_vec()
        .into_iter()
        .map(|p| (Severity::FailClosed, p));
    warnings.chain(errors).collect()
}

/// What the sidecars cannot do of an AuthorizationPolicy: warnings in `p`, what denies more
/// than written in `fail_closed`.
fn authorization_policy(
    ap: &IstioConfig<AuthorizationPolicy>,
    p: &mut Problems,
    fail_closed: &mut Problems,
) {
    let spec = &ap.spec;
    let action = spec.action();
    match action {
        Action::Custom => fail_closed.add(
            "spec.action",
            format!(
                "CUSTOM (provider \"{}\"): no ext_authz provider in Ama: the requests this \
                 CUSTOM policy matches are denied",
                spec.provider.as_ref().map_or("", |p| p.name.as_str())
            ),
        ),
        Action::Audit => p.add(
            "spec.action",
            "AUDIT: Ama's sidecar logs the requests this policy matches in its own log (Istio's \
             do something visible with AUDIT only when a telemetry provider, such as \
             Stackdriver, is configured); it allows or denies nothing",
        ),
        Action::Allow | Action::Deny => {}
    }
    for u in spec.unevaluable() {
        // An AUDIT policy decides nothing: what it cannot evaluate changes no request's fate.
        let to = if action == Action::Audit {
            &mut *p
        } else {
            &mut *fail_closed
        };
        to.add(
            format!("spec.{}", u.field),
            format!(
                "{}: Ama cannot evaluate this condition: {}",
                u.what.trim_start_matches("key "),
                unevaluable_consequence(action)
            ),
        );
    }
    policy_targets(spec.target_ref.as_ref(), &spec.target_refs, p);
    dry_run(&ap.metadata.annotations, Some(action), fail_closed);
}

/// What Istio would reject of the `istio.io/dry-run` annotation of an AuthorizationPolicy with
/// `action` (`None`: a policy Ama cannot read, enforced whatever it says), all of it enforced:
/// a value no boolean, or a dry run of an action other than ALLOW and DENY.
fn dry_run(
    annotations: &BTreeMap<String, String>,
    action: Option<Action>,
    fail_closed: &mut Problems,
) {
    let Some(value) = annotations.get(DRY_RUN_ANNOTATION) else {
        return;
    };
    let at = format!("metadata.annotations[\"{DRY_RUN_ANNOTATION}\"]");
    match (parse_dry_run(value), action) {
        (None, _) => fail_closed.add(
            at,
            format!(
                "\"{value}\" is not a boolean (Istio accepts 1, t, T, TRUE, true, True, 0, f, F, \
                 FALSE, false, False): this policy is enforced, not only logged"
            ),
        ),
        (Some(false), _) | (Some(true), Some(Action::Allow | Action::Deny)) => {}
        (Some(true), Some(a)) => fail_closed.add(
            at,
            format!(
                "Istio supports a dry run of ALLOW and DENY policies only, not {}: this policy is \
                 enforced, not only logged",
                a.name()
            ),
        ),
        (Some(true), None) => fail_closed.add(
            at,
            "Ama cannot read this policy: it is enforced as a policy that denies every request, \
             not only logged",
        ),
    }
}

/// What the sidecars cannot do of a RequestAuthentication.
fn request_authentication(
    spec: &RequestAuthentication,
    p: &mut Problems,
    fail_closed: &mut Problems,
) {
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let at = format!("spec.jwtRules[{i}]");
        if !rule.jwks.is_empty()
            && let Some(why) = jwks_problem(&rule.jwks)
        {
            fail_closed.add(
                format!("{at}.jwks"),
                format!(
                    "not a JSON Web Key Set ({why}): every token of issuer \"{}\" is rejected \
                     (401)",
                    rule.issuer
                ),
            );
        }
        // Istio finds the key set through the issuer's OpenID Connect discovery document, which
        // an issuer that is no URL does not have.
        if rule.jwks.is_empty()
            && rule.jwks_uri.is_empty()
            && crate::security::request_authentication::jwks_uri(&rule.issuer).is_err()
        {
            fail_closed.add(
                at,
                format!(
                    "neither jwks nor jwksUri, and the issuer \"{}\" is no http or https URL to \
                     discover the key set from (OpenID Connect discovery): every token of this \
                     issuer is rejected (401)",
                    rule.issuer
                ),
            );
        }
    }
    policy_targets(spec.target_ref.as_ref(), &spec.target_refs, p);
}

/// Target references that bind no sidecar: a Service's bind its pods (the control plane
/// resolves them), others wait for what Ama does not implement yet.
fn policy_targets(
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
    p: &mut Problems,
) {
    for (field, t) in targets(target_ref, target_refs, "spec") {
        let why = match t.kind.as_str() {
            _ if t.is_service() => continue,
            "Gateway" | "GatewayClass" => "gateways are not implemented by Ama yet",
            _ => {
                "waypoints, which apply policies attached to ServiceEntries, are not implemented by Ama"
            }
        };
        p.add(
            field,
            format!("{} {}: {why}; this reference binds nothing", t.kind, t.name),
        );
    }
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

    /// Every finding of the objects kept, as the CLI prints them.
    fn printed(yaml: &str) -> Vec<String> {
        let parsed = parse(yaml, "x.yaml");
        assert!(
            parsed.errors().next().is_none(),
            "{:?}",
            parsed.errors().collect::<Vec<_>>()
        );
        parsed.findings.iter().map(|f| f.for_terminal()).collect()
    }

    #[test]
    fn security_policies_ama_implements_are_silent() {
        let p = printed(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing}
spec: {}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: istio-system}
spec: {action: DENY, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: viewer}
spec:
  targetRefs: [{kind: Service, group: '', name: productpage}]
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/sleep], notNamespaces: [dev], remoteIpBlocks: [10.0.0.0/8]}
    to:
    - operation: {methods: [GET], notPaths: ['/admin*'], ports: ['9080'], hosts: ['*.example.com']}
    when:
    - {key: 'request.headers[version]', values: [v1]}
    - {key: 'request.auth.claims[groups]', values: [group1]}
    - {key: source.serviceAccount, notValues: [default/admin]}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  selector: {matchLabels: {app: httpbin}}
  jwtRules:
  - issuer: testing@secure.istio.io
    jwksUri: https://raw.githubusercontent.com/istio/istio/master/security/tools/jwt/samples/jwks.json
    timeout: 2s
    fromHeaders: [{name: x-jwt, prefix: 'Bearer '}]
    fromParams: [token]
    outputPayloadToHeader: x-payload
    forwardOriginalToken: true
    outputClaimToHeaders: [{header: x-group, claim: group}]
  - issuer: inline
    jwks: '{\"keys\": [{\"kty\": \"RSA\", \"e\": \"AQAB\", \"n\": \"xyz\"}]}'
",
        );
        assert_eq!(p, Vec::<String>::new());
    }

    #[test]
    fn security_policies_ama_cannot_do_as_written() {
        let p = printed(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: my-ext-authz}
  rules: [{to: [{operation: {paths: [/headers]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: foo, annotations: {istio.io/dry-run: 'true'}}
spec:
  action: AUDIT
  rules: [{when: [{key: 'experimental.envoy.filters.a.b[c]', values: [d]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mysql, namespace: foo, annotations: {istio.io/dry-run: 'true'}}
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: ingress}
  - {kind: ServiceEntry, group: networking.istio.io, name: db}
  rules:
  - when:
    - {key: source.ip, values: [10.0.0.1]}
    - {key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]']}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-mysql, namespace: foo, annotations: {istio.io/dry-run: 'tRue'}}
spec:
  action: DENY
  rules:
  - when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]']}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  jwtRules:
  - {issuer: a, jwks: '{\"keys\": [{\"e\": \"AQAB\"}]}'}
  - {issuer: b, jwks: 'not json'}
  - {issuer: https://accounts.example.com}
  - {issuer: testing@secure.istio.io}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: unreadable, namespace: foo, annotations: {istio.io/dry-run: 'True'}}
spec: {action: DENY, bogus: 1}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: dry-allow, namespace: foo, annotations: {istio.io/dry-run: '1'}}
spec: {rules: [{}]}
",
        );
        assert_eq!(
            p,
            [
                "error: x.yaml:doc 1: AuthorizationPolicy foo/ext-authz: spec.action: CUSTOM (provider \"my-ext-authz\"): no ext_authz provider in Ama: the requests this CUSTOM policy matches are denied",
                "Warning: x.yaml:doc 2: AuthorizationPolicy foo/audit: spec.action: AUDIT: Ama's sidecar logs the requests this policy matches in its own log (Istio's do something visible with AUDIT only when a telemetry provider, such as Stackdriver, is configured); it allows or denies nothing",
                "Warning: x.yaml:doc 2: AuthorizationPolicy foo/audit: spec.rules[0].when[0].key: experimental.envoy.filters.a.b[c]: Ama cannot evaluate this condition: in this AUDIT policy the rule logs nothing",
                "error: x.yaml:doc 2: AuthorizationPolicy foo/audit: metadata.annotations[\"istio.io/dry-run\"]: Istio supports a dry run of ALLOW and DENY policies only, not AUDIT: this policy is enforced, not only logged",
                "Warning: x.yaml:doc 3: AuthorizationPolicy foo/mysql: spec.targetRefs[0]: Gateway ingress: gateways are not implemented by Ama yet; this reference binds nothing",
                "Warning: x.yaml:doc 3: AuthorizationPolicy foo/mysql: spec.targetRefs[1]: ServiceEntry db: waypoints, which apply policies attached to ServiceEntries, are not implemented by Ama; this reference binds nothing",
                "error: x.yaml:doc 3: AuthorizationPolicy foo/mysql: spec.rules[0].when[1].key: experimental.envoy.filters.network.mysql_proxy[db.table]: Ama cannot evaluate this condition: in this ALLOW policy the rule allows nothing",
                "error: x.yaml:doc 4: AuthorizationPolicy foo/deny-mysql: spec.rules[0].when[0].key: experimental.envoy.filters.network.mysql_proxy[db.table]: Ama cannot evaluate this condition: in this DENY policy the condition is taken as matching: the rule denies more than written",
                "error: x.yaml:doc 4: AuthorizationPolicy foo/deny-mysql: metadata.annotations[\"istio.io/dry-run\"]: \"tRue\" is not a boolean (Istio accepts 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False): this policy is enforced, not only logged",
                "error: x.yaml:doc 5: RequestAuthentication foo/jwt: spec.jwtRules[0].jwks: not a JSON Web Key Set (keys[0] is not a JSON Web Key (no \"kty\")): every token of issuer \"a\" is rejected (401)",
                "error: x.yaml:doc 5: RequestAuthentication foo/jwt: spec.jwtRules[1].jwks: not a JSON Web Key Set (not JSON: expected ident at line 1 column 2): every token of issuer \"b\" is rejected (401)",
                "error: x.yaml:doc 5: RequestAuthentication foo/jwt: spec.jwtRules[3]: neither jwks nor jwksUri, and the issuer \"testing@secure.istio.io\" is no http or https URL to discover the key set from (OpenID Connect discovery): every token of this issuer is rejected (401)",
                "error: x.yaml:doc 6: AuthorizationPolicy foo/unreadable: spec.bogus: unknown field `bogus` (known fields: selector, targetRef, targetRefs, rules, action, provider): Ama cannot read this policy: every request to the workloads it selects is denied until it is fixed",
                "error: x.yaml:doc 6: AuthorizationPolicy foo/unreadable: metadata.annotations[\"istio.io/dry-run\"]: Ama cannot read this policy: it is enforced as a policy that denies every request, not only logged",
                // doc 7, a dry run of an ALLOW policy (\"1\" is Go's true): nothing to report.
            ]
        );
        let parsed = parse(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: c}\nspec: {action: CUSTOM, provider: {name: x}, rules: [{}]}\n",
            "x.yaml",
        );
        assert_eq!(
            parsed.objects.len(),
            1,
            "kept: leaving it out would fail open"
        );
        assert!(parsed.errors().next().is_none());
        assert_eq!(parsed.findings[0].severity, Severity::FailClosed);
    }

    #[test]
    fn gateway_fields_ama_does_not_implement() {
        let w = warnings(
            "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [\"*\"]
    tls: {mode: MUTUAL, credentialName: cred, subjectAltNames: [a], minProtocolVersion: TLSV1_1, cipherSuites: [X]}
  - port: {number: 8444, name: https2, protocol: HTTPS}
    hosts: [\"*\"]
    tls: {mode: AUTO_PASSTHROUGH}
  - port: {number: 8445, name: https3, protocol: HTTPS}
    hosts: [\"*\"]
    tls: {mode: SIMPLE, serverCertificate: /etc/cert.pem, privateKey: /etc/key.pem}
---
apiVersion: v1
kind: Secret
metadata: {name: cred}
stringData: {tls.crt: x}
",
        );
        assert_eq!(
            w,
            [
                "x.yaml:doc 1: Gateway default/gw: spec.servers[0].tls.cipherSuites: not implemented by Ama; ignored (the server's TLS is served without it)",
                "x.yaml:doc 1: Gateway default/gw: spec.servers[0].tls.minProtocolVersion: TLSV1_1: TLS below 1.2 is not served by Ama; the minimum is TLS 1.2",
                "x.yaml:doc 1: Gateway default/gw: spec.servers[0].tls.subjectAltNames: not implemented by Ama; this server is not served",
                "x.yaml:doc 1: Gateway default/gw: spec.servers[1].tls.mode: AUTO_PASSTHROUGH: not implemented by Ama; this server is not served",
                "x.yaml:doc 1: Gateway default/gw: spec.servers[2].tls.privateKey: certificate files are not implemented by Ama (use credentialName); without a credentialName this server is not served",
                "x.yaml:doc 1: Gateway default/gw: spec.servers[2].tls.serverCertificate: certificate files are not implemented by Ama (use credentialName); without a credentialName this server is not served",
            ]
        );
    }

    #[test]
    fn virtual_service_fields_ama_does_not_implement() {
        let w = warnings(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  gateways: [mesh, istio-system/ingress]
  http:
  - match:
    - uri: {prefix: /a}
      statPrefix: a
    - uri: {prefix: /b}
      gateways: [istio-system/ingress]
    - headers: {'@request.auth.claims.group': {exact: admin}, x-a: {exact: b}}
    route:
    - destination: {host: reviews, subset: v1}
    retries: {attempts: 3, retryRemoteLocalities: true}
    fault: {abort: {http2Error: REFUSED_STREAM, percentage: {value: 10}}}
  - delegate: {name: reviews-v2}
  tcp:
  - match: [{port: 27017, sourceSubnet: 10.0.0.0/8}]
    route: [{destination: {host: mongo}}]
",
        );
        assert_eq!(
            w,
            [
                "x.yaml:doc 1: VirtualService default/reviews: spec.http[0].fault.abort.http2Error: not implemented by Ama (nor by Istio's sidecars); this abort is ignored",
                "x.yaml:doc 1: VirtualService default/reviews: spec.http[0].match[0].statPrefix: not implemented by Ama; ignored",
                "x.yaml:doc 1: VirtualService default/reviews: spec.http[0].match[2].headers: @request.auth.claims.group: routing on JWT claims is not implemented by Ama (it validates no JWT); this condition never holds",
                "x.yaml:doc 1: VirtualService default/reviews: spec.http[0].retries.retryRemoteLocalities: not implemented by Ama (its endpoints have no localities); ignored",
                "x.yaml:doc 1: VirtualService default/reviews: spec.http[1].delegate: not implemented by Ama; this route is dropped",
                "x.yaml:doc 1: VirtualService default/reviews: spec.tcp[0].match[0].sourceSubnet: not implemented by Ama; this condition is ignored (the match is wider than written)",
            ]
        );
    }

    #[test]
    fn destination_rule_credential_name_needs_a_workload_selector() {
        let rule = |selector: &str| {
            format!(
                "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: nginx}}
spec:
  {selector}
  host: my-nginx.mesh-external.svc.cluster.local
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: MUTUAL, credentialName: client-credential}}
"
            )
        };
        assert_eq!(
            printed(&rule("")),
            ["error: x.yaml:doc 1: DestinationRule default/nginx: \
              spec.trafficPolicy.portLevelSettings[0].tls.credentialName: read for sidecars only \
              in a DestinationRule with a workloadSelector (as Istio); without one, a sidecar's \
              connections with these TLS settings fail (503 UF), never in plaintext (gateway \
              proxies read the Secret in their own namespace)"]
        );
        assert_eq!(
            printed(&rule("workloadSelector: {matchLabels: {app: sleep}}")),
            Vec::<String>::new()
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
    loadBalancer:
      consistentHash: {httpCookie: {name: c, ttl: 0s, attributes: [{name: SameSite, value: Strict}]}}
      localityLbSetting: {enabled: true}
      warmupDurationSecs: 10s
    connectionPool:
      http: {http2MaxRequests: 10, maxConcurrentStreams: 5}
    outlierDetection: {consecutiveErrors: 1}
    tunnel: {protocol: CONNECT, targetHost: a.example.com, targetPort: 443}
    proxyProtocol: {version: V1}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      portLevelSettings:
      - port: {number: 9080}
        tls: {mode: SIMPLE, credentialName: cred, caCrl: /crl.pem}
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
spec:
  tracing:
  - providers: [{name: zipkin}]
    randomSamplingPercentage: 10
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: \"response.code >= 400 || request.time.getHours('Europe/Paris') > 20 || request.time.getHours('+01:00') > 20 || request.time.getHours() > 20\"}
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, customMetric: my_total}
      tagOverrides: {request_host: {value: request.host}, hour: {value: 'string(request.time.getHours(\"America/New_York\"))'}}
    reportingInterval: 5s
",
        );
        assert_eq!(
            w,
            [
                "x.yaml:doc 1: DestinationRule default/reviews: spec.subsets[0].trafficPolicy.portLevelSettings[0].tls.caCrl: not implemented by Ama; ignored",
                "x.yaml:doc 1: DestinationRule default/reviews: spec.trafficPolicy.connectionPool.http.maxConcurrentStreams: not implemented by Ama; ignored",
                "x.yaml:doc 1: DestinationRule default/reviews: spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes: not implemented by Ama; ignored",
                "x.yaml:doc 1: DestinationRule default/reviews: spec.trafficPolicy.loadBalancer.localityLbSetting: not implemented by Ama (its endpoints have no localities); ignored",
                "x.yaml:doc 1: DestinationRule default/reviews: spec.trafficPolicy.loadBalancer.warmupDurationSecs: not implemented by Ama; ignored",
                "x.yaml:doc 1: DestinationRule default/reviews: spec.trafficPolicy.outlierDetection.consecutiveErrors: deprecated, and ignored by Istio since 1.8 (use consecutiveGatewayErrors or consecutive5xxErrors); ignored",
                "x.yaml:doc 1: DestinationRule default/reviews: spec.trafficPolicy.proxyProtocol: not implemented by Ama; ignored",
                "x.yaml:doc 1: DestinationRule default/reviews: spec.trafficPolicy.tunnel: not implemented by Ama; ignored",
                "x.yaml:doc 4: Telemetry default/t: spec.accessLogging[0].filter.expression: time zone \"Europe/Paris\": not built into Ama's CEL (only UTC, Etc/* and fixed offsets such as \"+05:30\"); the call fails where it is evaluated",
                "x.yaml:doc 4: Telemetry default/t: spec.metrics[0].overrides[0].match.customMetric: not implemented by Ama (custom metrics); this override is ignored",
                "x.yaml:doc 4: Telemetry default/t: spec.metrics[0].overrides[0].tagOverrides: time zone \"America/New_York\": not built into Ama's CEL (only UTC, Etc/* and fixed offsets such as \"+05:30\"); the call fails where it is evaluated",
                "x.yaml:doc 4: Telemetry default/t: spec.metrics[0].reportingInterval: ignored: Ama's TCP metrics count bytes as they flow",
            ]
        );
    }

    #[test]
    fn mesh_config() {
        let w = warnings(
            "apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    accessLogFile: /dev/stdout
    outboundTrafficPolicy: {mode: REGISTRY_ONLY}
    enableTracing: false
    defaultProviders: {tracing: [zipkin], accessLogging: [envoy]}
    extensionProviders:
    - name: zipkin
      zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
    - name: otel
      opentelemetry: {service: otel.observability, port: 4318, http: {path: /v1/traces, timeout: 5s}}
    - name: envoy
      envoyFileAccessLog: {path: /dev/stdout, omitEmptyValues: true}
    - name: otel-als
      envoyOtelAls: {service: otel.observability, port: 4317}
    defaultConfig:
      holdApplicationUntilProxyStarts: true
      terminationDrainDuration: 5s
      proxyMetadata: {A: b}
      tracing: {sampling: 10, zipkin: {address: zipkin:9411}, custom_tags: {a: {literal: {value: b}}}, tlsSettings: {mode: SIMPLE}}
",
        );
        assert_eq!(
            w,
            [
                "x.yaml:doc 1: ConfigMap istio-system/istio: data.mesh.defaultConfig.terminationDrainDuration: not implemented by Ama; ignored",
                "x.yaml:doc 1: ConfigMap istio-system/istio: data.mesh.defaultConfig.tracing.tlsSettings: not implemented by Ama; ignored",
                "x.yaml:doc 1: ConfigMap istio-system/istio: data.mesh.extensionProviders[1].opentelemetry.http.timeout: not implemented by Ama; ignored",
                "x.yaml:doc 1: ConfigMap istio-system/istio: data.mesh.extensionProviders[2].envoyFileAccessLog.omitEmptyValues: not implemented by Ama; ignored",
                "x.yaml:doc 1: ConfigMap istio-system/istio: data.mesh.extensionProviders[3].envoyOtelAls: not implemented by Ama; ignored",
            ]
        );
    }

    #[test]
    fn sidecar() {
        let w = warnings(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  workloadSelector: {labels: {app: a}}
  ingress:
  - {port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: 127.0.0.1:8080}
  egress:
  - {port: {number: 80, protocol: HTTP, name: http}, bind: 127.0.0.1, captureMode: NONE, hosts: [./*]}
  - {hosts: [istio-system/*]}
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
",
        );
        assert_eq!(
            w,
            [
                "x.yaml:doc 1: Sidecar default/default: spec.egress[0].bind: not implemented by Ama; ignored",
                "x.yaml:doc 1: Sidecar default/default: spec.egress[0].captureMode: not implemented by Ama; ignored",
                "x.yaml:doc 1: Sidecar default/default: spec.egress[0].port: not implemented by Ama; the listener's hosts are seen on every port (wider than written)",
                "x.yaml:doc 1: Sidecar default/default: spec.ingress: not implemented by Ama; ignored",
            ]
        );
    }

    #[test]
    fn service_entry() {
        let w = warnings(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com, '*.example.org']
  addresses: [240.0.0.1, 240.0.0.2/32, 240.0.1.0/24]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
  - {number: 53, name: dns, protocol: UDP}
  endpoints:
  - {address: api.example.com, ports: {http: 8081}, labels: {v: a}, locality: r/z, weight: 2}
  subjectAltNames: [api.example.com]
  exportTo: ['.']
",
        );
        assert_eq!(
            w,
            [
                "x.yaml:doc 1: ServiceEntry default/ext: spec.addresses[2]: 240.0.1.0/24: a CIDR range of more than one address is not implemented by Ama (routing by destination subnet); this address is left out",
                "x.yaml:doc 1: ServiceEntry default/ext: spec.endpoints[0].locality: not implemented by Ama; ignored",
                "x.yaml:doc 1: ServiceEntry default/ext: spec.endpoints[0].weight: not implemented by Ama; ignored",
                "x.yaml:doc 1: ServiceEntry default/ext: spec.ports[1].protocol: UDP: not implemented by Ama; the port is left out",
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
  exportTo: ['.']
  http:
  - name: r
    match:
    - name: m
      uri: {regex: '/a/[0-9]+'}
      scheme: {exact: http}
      method: {exact: GET}
      authority: {prefix: reviews}
      headers: {x-user: {prefix: jason}, x-canary: {}}
      withoutHeaders: {x-debug: {regex: '*'}}
      queryParams: {v: {exact: '2'}}
      port: 9080
      sourceLabels: {app: productpage}
      sourceNamespace: default
      ignoreUriCase: true
      gateways: [mesh]
    route:
    - destination: {host: reviews, port: {number: 9080}, subset: v1}
      weight: 80
      headers: {request: {set: {x-v: '1'}}}
    - destination: {host: reviews, subset: v2}
      weight: 20
    rewrite: {uri: /b, authority: b}
    headers:
      request: {set: {a: b}, add: {c: d}, remove: [e]}
      response: {set: {f: g}}
    mirrors: [{destination: {host: reviews, subset: v3}, percentage: {value: 50}}]
    timeout: 2s
    retries: {attempts: 2, perTryTimeout: 1s, retryOn: 'connect-failure,5xx,503', retryIgnorePreviousHosts: false, backoff: 50ms, retryRemoteLocalities: false}
    fault:
      delay: {fixedDelay: 7s, percentage: {value: 100}}
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 50}}
    corsPolicy:
      allowOrigins: [{exact: 'https://a.example.com'}]
      allowMethods: [GET]
      allowHeaders: [x-a]
      exposeHeaders: [x-b]
      maxAge: 24h
      allowCredentials: true
      unmatchedPreflights: IGNORE
  - route: [{destination: {host: reviews}}]
    mirror: {host: reviews, subset: v2}
    mirrorPercentage: {value: 10}
  - redirect: {uri: /c, authority: c, derivePort: FROM_PROTOCOL_DEFAULT, scheme: https, redirectCode: 308}
  - directResponse: {status: 503, body: {bytes: aGVsbG8=}}
  tcp:
  - match: [{port: 27017, destinationSubnets: [10.0.0.0/8], sourceLabels: {app: a}, sourceNamespace: default}]
    route: [{destination: {host: mongo, port: {number: 27017}}, weight: 100}]
  tls:
  - match: [{sniHosts: [a.example.com], port: 443}]
    route: [{destination: {host: a.example.com}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  exportTo: ['*']
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 2048}}}
    connectionPool:
      tcp: {maxConnections: 1, connectTimeout: 1s, tcpKeepalive: {probes: 3, time: 10s, interval: 5s}, maxConnectionDuration: 1h, idleTimeout: 1m}
      http: {http1MaxPendingRequests: 1, http2MaxRequests: 1, maxRequestsPerConnection: 1, maxRetries: 3, idleTimeout: 30s, h2UpgradePolicy: UPGRADE, useClientProtocol: true}
    outlierDetection: {consecutive5xxErrors: 1, consecutiveGatewayErrors: 2, consecutiveLocalOriginFailures: 3, splitExternalLocalOriginErrors: true, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100, minHealthPercent: 10}
    tls: {mode: DISABLE, sni: reviews, subjectAltNames: [reviews], caCertificates: /ca.pem, insecureSkipVerify: false}
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {simple: PASSTHROUGH}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {consistentHash: {httpCookie: {name: user, path: /, ttl: 0s}, maglev: {tableSize: 65537}}}
      portLevelSettings:
      - port: {number: 9080}
        tls: {mode: ISTIO_MUTUAL}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: LEAST_CONN}}}
  - {name: v3, labels: {version: v3}, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 64}}}}
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
