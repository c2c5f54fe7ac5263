//! `istioctl analyze`'s checks over a set of parsed objects, with Istio's message codes, and the
//! code of each kind of [`Finding`] the parser and [`crate::support`] report (so `ama analyze`
//! shows the same findings as `ama up` and `ama apply`, from the same one list).
//!
//! Istio's codes (`pkg/config/analysis/msg/messages.yaml`) where a check is Istio's:
//!
//! - IST0101 ReferencedResourceNotFound (Error): a VirtualService's destination host (of
//!   `http`, `tcp`, `tls` routes and mirrors) that no Service or ServiceEntry declares, a subset
//!   no DestinationRule of that host declares, a gateway that does not exist; a
//!   DestinationRule's host that nothing declares.
//! - IST0102 NamespaceNotInjected (Info): a namespace with workloads and no `istio-injection`
//!   or `istio.io/rev` label.
//! - IST0106 SchemaValidationError (Error): a document the parser leaves out.
//! - IST0128 NoServerCertificateVerificationDestinationLevel and IST0129 (…PortLevel)
//!   (Warning, as recent istioctl): a DestinationRule's `SIMPLE` or `MUTUAL` TLS, for the
//!   host or a port, without `caCertificates` (nor a `credentialName` that may carry them, nor
//!   `insecureSkipVerify`).
//!
//! Ama's own, one per kind of [`crate::support`] finding:
//!
//! - AMA0001 NotImplemented (Warning): a kind, field or value Ama accepts but does not
//!   implement.
//! - AMA0002 FailsClosed (Error): a security policy (or part) Ama cannot enforce as written
//!   and enforces more strictly instead.
//!
//! Host names resolve as istiod resolves them: a short name in the object's namespace
//! (`reviews` → `reviews.<ns>.svc.cluster.local`); `name.ns` and `name.ns.svc` as written or
//! completed to the cluster's domain (a resolver's search path would); ServiceEntry hosts may
//! be wildcards. Wildcard references are not checked.

use std::collections::{BTreeMap, BTreeSet};

use crate::networking::Destination;
use crate::networking::destination_rule::{ClientTlsMode, ClientTlsSettings, DestinationRule};
use crate::objects::{Finding, Object, Severity};

/// The cluster's DNS domain (Istio's default `cluster.local`).
const DOMAIN: &str = "svc.cluster.local";

/// How serious a message is, as istioctl names levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Worth knowing.
    Info,
    /// Probably not what was meant.
    Warning,
    /// Broken.
    Error,
}

impl Level {
    /// `Info`, `Warning` or `Error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "Info",
            Level::Warning => "Warning",
            Level::Error => "Error",
        }
    }
}

/// A kind of message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// IST0101.
    ReferencedResourceNotFound,
    /// IST0102.
    NamespaceNotInjected,
    /// IST0106.
    SchemaValidationError,
    /// IST0128.
    NoServerCertificateVerificationDestinationLevel,
    /// IST0129.
    NoServerCertificateVerificationPortLevel,
    /// AMA0001.
    NotImplemented,
    /// AMA0002.
    FailsClosed,
}

impl Code {
    /// `IST0101`, `AMA0001`, ...
    pub fn id(self) -> &'static str {
        match self {
            Code::ReferencedResourceNotFound => "IST0101",
            Code::NamespaceNotInjected => "IST0102",
            Code::SchemaValidationError => "IST0106",
            Code::NoServerCertificateVerificationDestinationLevel => "IST0128",
            Code::NoServerCertificateVerificationPortLevel => "IST0129",
            Code::NotImplemented => "AMA0001",
            Code::FailsClosed => "AMA0002",
        }
    }

    /// The message's name (`ReferencedResourceNotFound`).
    pub fn name(self) -> &'static str {
        match self {
            Code::ReferencedResourceNotFound => "ReferencedResourceNotFound",
            Code::NamespaceNotInjected => "NamespaceNotInjected",
            Code::SchemaValidationError => "SchemaValidationError",
            Code::NoServerCertificateVerificationDestinationLevel => {
                "NoServerCertificateVerificationDestinationLevel"
            }
            Code::NoServerCertificateVerificationPortLevel => {
                "NoServerCertificateVerificationPortLevel"
            }
            Code::NotImplemented => "NotImplemented",
            Code::FailsClosed => "FailsClosed",
        }
    }

    /// Its level.
    pub fn level(self) -> Level {
        match self {
            Code::ReferencedResourceNotFound | Code::SchemaValidationError | Code::FailsClosed => {
                Level::Error
            }
            Code::NotImplemented
            | Code::NoServerCertificateVerificationDestinationLevel
            | Code::NoServerCertificateVerificationPortLevel => Level::Warning,
            Code::NamespaceNotInjected => Level::Info,
        }
    }

    /// Where Istio documents it (`None` for Ama's own codes).
    pub fn documentation_url(self) -> Option<String> {
        self.id().starts_with("IST").then(|| {
            format!(
                "https://istio.io/latest/docs/reference/config/analysis/{}/?ref=istioctl",
                self.id().to_ascii_lowercase()
            )
        })
    }
}

/// One message about one object (or a namespace that has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// What kind.
    pub code: Code,
    /// The object it is about: `Kind namespace/name` (`Namespace default`).
    pub origin: String,
    /// The origin's namespace (for `-n`); the namespace itself for a Namespace.
    pub namespace: String,
    /// The index of the object among those analysed, when it is one of them.
    pub object: Option<usize>,
    /// The text, Istio's where the code is Istio's.
    pub text: String,
}

/// The code and text of a parser or [`crate::support`] finding.
pub fn finding_message(f: &Finding) -> (Code, String) {
    let at = if f.field.is_empty() {
        String::new()
    } else {
        format!("{}: ", f.field)
    };
    match f.severity {
        Severity::Error => (
            Code::SchemaValidationError,
            format!("Schema validation error: {at}{}", f.message),
        ),
        // The support finding says what Ama does instead; the code says what kind it is.
        Severity::Warning => (Code::NotImplemented, format!("{at}{}", f.message)),
        Severity::FailClosed => (Code::FailsClosed, format!("{at}{}", f.message)),
    }
}

/// The fully qualified names `host`, as written in an object of namespace `ns`, may stand for:
/// a short name is in the namespace; `name.ns` and `name.ns.svc` may be completed by the
/// resolver's search path, or be names of their own (a ServiceEntry's `foo.com`).
fn candidates(host: &str, ns: &str) -> Vec<String> {
    if !host.contains('.') {
        return vec![format!("{host}.{ns}.{DOMAIN}")];
    }
    let mut out = vec![host.to_string()];
    if host.matches('.').count() == 1 {
        out.push(format!("{host}.{DOMAIN}"));
    } else if let Some(name_ns) = host.strip_suffix(".svc") {
        out.push(format!("{name_ns}.{DOMAIN}"));
    }
    out
}

/// Whether `pattern` (a declared host, possibly `*.suffix`) covers `host`.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// What the objects declare, for the references to be checked against.
struct Declared<'a> {
    hosts: Vec<String>,
    /// Subsets by the DestinationRule's resolved host.
    subsets: BTreeMap<String, BTreeSet<&'a str>>,
    gateways: BTreeSet<(&'a str, &'a str)>,
}

impl Declared<'_> {
    /// The declared host `host` (as written in namespace `ns`) stands for, if any.
    fn host(&self, host: &str, ns: &str) -> Option<String> {
        candidates(host, ns)
            .into_iter()
            .find(|c| self.hosts.iter().any(|h| host_matches(h, c)))
    }
}

fn declared(objects: &[Object]) -> Declared<'_> {
    let mut d = Declared {
        hosts: Vec::new(),
        subsets: BTreeMap::new(),
        gateways: BTreeSet::new(),
    };
    for o in objects {
        let m = o.metadata();
        match o {
            Object::Service(_) => d.hosts.push(format!("{}.{}.{DOMAIN}", m.name, m.namespace)),
            Object::ServiceEntry(se) => d.hosts.extend(se.spec.hosts.iter().map(|h| {
                // A ServiceEntry's short name is in its namespace; others are as written.
                if h.contains('.') {
                    h.clone()
                } else {
                    format!("{h}.{}.{DOMAIN}", m.namespace)
                }
            })),
            Object::DestinationRule(dr) => {
                for c in candidates(&dr.spec.host, &m.namespace) {
                    d.subsets
                        .entry(c)
                        .or_default()
                        .extend(dr.spec.subsets.iter().map(|s| s.name.as_str()));
                }
            }
            Object::Gateway(_) => {
                d.gateways.insert((m.namespace.as_str(), m.name.as_str()));
            }
            _ => {}
        }
    }
    d
}

/// The namespaces Istio never asks to inject.
const SYSTEM_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "istio-system",
];

/// Istio's cross-reference checks ([`Code::ReferencedResourceNotFound`],
/// [`Code::NamespaceNotInjected`]) over `objects`, in their order.
pub fn analyze(objects: &[Object]) -> Vec<Message> {
    let d = declared(objects);
    let mut out = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let m = o.metadata();
        let mut missing = |what: &str, name: &str| {
            out.push(Message {
                code: Code::ReferencedResourceNotFound,
                origin: o.display(),
                namespace: m.namespace.clone(),
                object: Some(i),
                text: format!("Referenced {what} not found: {name:?}"),
            });
        };
        match o {
            Object::VirtualService(vs) => {
                let s = &vs.spec;
                let destinations = s
                    .http
                    .iter()
                    .flat_map(|r| {
                        r.route
                            .iter()
                            .map(|d| &d.destination)
                            .chain(&r.mirror)
                            .chain(r.mirrors.iter().map(|m| &m.destination))
                    })
                    .chain(
                        s.tcp
                            .iter()
                            .flat_map(|r| r.route.iter().map(|d| &d.destination)),
                    )
                    .chain(
                        s.tls
                            .iter()
                            .flat_map(|r| r.route.iter().map(|d| &d.destination)),
                    );
                let mut seen = BTreeSet::new();
                for dest in destinations {
                    if seen.insert((&dest.host, &dest.subset)) {
                        check_destination(dest, &m.namespace, &d, &mut missing);
                    }
                }
                for g in &s.gateways {
                    if g == "mesh" {
                        continue;
                    }
                    // `ns/name`, `name` (the VirtualService's namespace), or the older
                    // `name.ns[.svc.cluster.local]` istiod still reads.
                    let (ns, name) = match (g.split_once('/'), g.split_once('.')) {
                        (Some((ns, name)), _) => (ns, name),
                        (None, Some((name, rest))) => {
                            (rest.split('.').next().unwrap_or(rest), name)
                        }
                        (None, None) => (m.namespace.as_str(), g.as_str()),
                    };
                    if !d.gateways.contains(&(ns, name)) {
                        missing("gateway", g);
                    }
                }
            }
            Object::DestinationRule(dr) => {
                let host = &dr.spec.host;
                if !host.contains('*') && d.host(host, &m.namespace).is_none() {
                    missing("host", host);
                }
                out.extend(unverified_servers(i, o, &dr.spec));
            }
            _ => {}
        }
    }
    out.extend(namespaces_not_injected(objects));
    out
}

/// IST0128 and IST0129: the rule's TLS origination (for the host, and per port) that verifies
/// no server certificate against a CA of its own.
fn unverified_servers(i: usize, o: &Object, dr: &DestinationRule) -> Vec<Message> {
    let m = o.metadata();
    let unverified = |tls: Option<&ClientTlsSettings>| {
        let tls = tls?;
        let mode = match tls.mode? {
            ClientTlsMode::Simple => "SIMPLE",
            ClientTlsMode::Mutual => "MUTUAL",
            _ => return None,
        };
        (tls.ca_certificates.is_empty()
            && tls.credential_name.is_empty()
            && tls.insecure_skip_verify != Some(true))
        .then_some(mode)
    };
    let text = |mode: &str| {
        format!(
            "DestinationRule {}/{} in namespace {} has TLS mode set to {mode} but no \
             caCertificates are set to validate server identity for host: {}",
            m.namespace, m.name, m.namespace, dr.host
        )
    };
    let message = |code, text| Message {
        code,
        origin: o.display(),
        namespace: m.namespace.clone(),
        object: Some(i),
        text,
    };
    let policy = dr.traffic_policy.as_ref();
    let mut out = Vec::new();
    if let Some(mode) = unverified(policy.and_then(|p| p.tls.as_ref())) {
        out.push(message(
            Code::NoServerCertificateVerificationDestinationLevel,
            text(mode),
        ));
    }
    for port in policy.iter().flat_map(|p| &p.port_level_settings) {
        if let Some(mode) = unverified(port.tls.as_ref()) {
            let number = port.port.as_ref().map_or(0, |p| p.number);
            out.push(message(
                Code::NoServerCertificateVerificationPortLevel,
                format!("{} at port number:{number}", text(mode)),
            ));
        }
    }
    out
}

fn check_destination(
    dest: &Destination,
    ns: &str,
    d: &Declared<'_>,
    missing: &mut impl FnMut(&str, &str),
) {
    if dest.host.contains('*') {
        return;
    }
    let Some(fqdn) = d.host(&dest.host, ns) else {
        missing("host", &dest.host);
        return;
    };
    if !dest.subset.is_empty()
        && !d
            .subsets
            .get(&fqdn)
            .is_some_and(|s| s.contains(dest.subset.as_str()))
    {
        missing(
            "host+subset in destinationrule",
            &format!("{}+{}", dest.host, dest.subset),
        );
    }
}

/// IST0102 for each namespace with pods or workloads whose Namespace (if any) has neither
/// `istio-injection` nor `istio.io/rev`.
fn namespaces_not_injected(objects: &[Object]) -> Vec<Message> {
    let with_pods: BTreeSet<&str> = objects
        .iter()
        .filter(|o| matches!(o, Object::Pod(_) | Object::Workload(_)))
        .map(|o| o.metadata().namespace.as_str())
        .filter(|ns| !SYSTEM_NAMESPACES.contains(ns))
        .collect();
    with_pods
        .into_iter()
        .filter_map(|ns| {
            let object = objects
                .iter()
                .position(|o| matches!(o, Object::Namespace(n) if n.metadata.name == ns));
            let labelled = object.is_some_and(|i| {
                let labels = &objects[i].metadata().labels;
                labels.contains_key("istio-injection") || labels.contains_key("istio.io/rev")
            });
            (!labelled).then(|| Message {
                code: Code::NamespaceNotInjected,
                origin: format!("Namespace {ns}"),
                namespace: ns.to_string(),
                object,
                text: format!(
                    "The namespace is not enabled for Istio injection. Run 'kubectl label \
                     namespace {ns} istio-injection=enabled' to enable it, or 'kubectl label \
                     namespace {ns} istio-injection=disabled' to explicitly mark it as not \
                     needing injection."
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::parse;

    fn messages(yaml: &str) -> Vec<String> {
        let parsed = parse(yaml, "x.yaml");
        assert!(
            parsed.errors().next().is_none(),
            "{:?}",
            parsed.errors().collect::<Vec<_>>()
        );
        analyze(&parsed.objects)
            .iter()
            .map(|m| format!("{} ({}) {}", m.code.id(), m.origin, m.text))
            .collect()
    }

    const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec: {ports: [{port: 9080, name: http}], selector: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: ['*.example.com']
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]
";

    #[test]
    fn resolved_references_are_silent() {
        let yaml = format!(
            "{MESH}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  gateways: [mesh, istio-system/gw, gw.istio-system.svc.cluster.local]
  http:
  - route:
    - destination: {{host: reviews.default.svc.cluster.local, subset: v1}}
      weight: 50
    - destination: {{host: reviews.default}}
      weight: 50
    mirror: {{host: api.example.com}}
"
        );
        assert_eq!(messages(&yaml), Vec::<String>::new());
    }

    #[test]
    fn missing_hosts_subsets_and_gateways() {
        let yaml = format!(
            "{MESH}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  gateways: [gw, istio-system/gw]
  http:
  - route:
    - destination: {{host: reviews, subset: v9}}
      weight: 50
    - destination: {{host: ratings}}
      weight: 50
  tcp:
  - route:
    - destination: {{host: reviews, subset: v9}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: details, namespace: default}}
spec: {{host: details.default.svc.cluster.local}}
"
        );
        assert_eq!(
            messages(&yaml),
            [
                "IST0101 (VirtualService default/reviews) Referenced host+subset in \
                 destinationrule not found: \"reviews+v9\"",
                "IST0101 (VirtualService default/reviews) Referenced host not found: \"ratings\"",
                "IST0101 (VirtualService default/reviews) Referenced gateway not found: \"gw\"",
                "IST0101 (DestinationRule default/details) Referenced host not found: \
                 \"details.default.svc.cluster.local\"",
            ]
        );
    }

    #[test]
    fn tls_origination_without_a_ca() {
        let yaml = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}, {number: 8443, name: tls2, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db-tls, namespace: default}
spec:
  host: db.example.com
  trafficPolicy:
    tls: {mode: SIMPLE}
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}
    - port: {number: 8443}
      tls: {mode: SIMPLE, caCertificates: /ca.pem}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db-ok, namespace: default}
spec:
  host: db.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: db-credential}
";
        assert_eq!(
            messages(yaml),
            [
                "IST0128 (DestinationRule default/db-tls) DestinationRule default/db-tls in \
                 namespace default has TLS mode set to SIMPLE but no caCertificates are set to \
                 validate server identity for host: db.example.com",
                "IST0129 (DestinationRule default/db-tls) DestinationRule default/db-tls in \
                 namespace default has TLS mode set to MUTUAL but no caCertificates are set to \
                 validate server identity for host: db.example.com at port number:443",
            ]
        );
        assert_eq!(
            Code::NoServerCertificateVerificationPortLevel.level(),
            Level::Warning
        );
    }

    #[test]
    fn namespace_without_injection_label() {
        let yaml = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx}]}
---
apiVersion: v1
kind: Pod
metadata: {name: tool, namespace: kube-system}
spec: {containers: [{name: t, image: busybox}]}
";
        let m = messages(yaml);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].starts_with(
            "IST0102 (Namespace shop) The namespace is not enabled for Istio injection. Run \
             'kubectl label namespace shop istio-injection=enabled'"
        ));
    }

    #[test]
    fn findings_get_their_codes() {
        let parsed = parse(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      localityLbSetting: {enabled: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualServce
metadata: {name: typo}
",
            "x.yaml",
        );
        let codes: Vec<(Code, String)> = parsed.findings.iter().map(finding_message).collect();
        assert!(
            codes.iter().any(|(c, t)| *c == Code::NotImplemented
                && t.starts_with(
                    "spec.trafficPolicy.loadBalancer.localityLbSetting: not implemented"
                )),
            "{codes:?}"
        );
        assert!(
            codes.iter().any(|(c, t)| *c == Code::SchemaValidationError
                && t.starts_with("Schema validation error: ")),
            "{codes:?}"
        );
        assert_eq!(Code::FailsClosed.level(), Level::Error);
        assert_eq!(
            Code::ReferencedResourceNotFound
                .documentation_url()
                .as_deref(),
            Some("https://istio.io/latest/docs/reference/config/analysis/ist0101/?ref=istioctl")
        );
        assert_eq!(Code::NotImplemented.documentation_url(), None);
    }
}
