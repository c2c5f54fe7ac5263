//! The kinds a YAML stream may hold: Kubernetes' built-in kinds, Gateway API's and Istio's, by
//! API group. A kind outside this table is an error, as `kubectl apply` fails on a kind its API
//! server does not serve ("no matches for kind"); the error names the nearest known kind, since
//! the usual cause is a typo (`Deploymnet`).

/// Every known kind by API group (`""` is the core group), with a version it is served at.
const KINDS: &[(&str, &str, &[&str])] = &[
    (
        "",
        "v1",
        &[
            "Namespace",
            "Service",
            "Pod",
            "ConfigMap",
            "Secret",
            "ServiceAccount",
            "Endpoints",
            "PersistentVolumeClaim",
            "PersistentVolume",
            "ReplicationController",
            "LimitRange",
            "ResourceQuota",
            "Node",
            "Event",
            "PodTemplate",
        ],
    ),
    (
        "apps",
        "v1",
        &[
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "ControllerRevision",
        ],
    ),
    ("batch", "v1", &["Job", "CronJob"]),
    ("discovery.k8s.io", "v1", &["EndpointSlice"]),
    (
        "networking.k8s.io",
        "v1",
        &["Ingress", "IngressClass", "NetworkPolicy"],
    ),
    ("policy", "v1", &["PodDisruptionBudget"]),
    ("autoscaling", "v2", &["HorizontalPodAutoscaler"]),
    (
        "rbac.authorization.k8s.io",
        "v1",
        &["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"],
    ),
    ("apiextensions.k8s.io", "v1", &["CustomResourceDefinition"]),
    (
        "admissionregistration.k8s.io",
        "v1",
        &[
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ],
    ),
    ("storage.k8s.io", "v1", &["StorageClass"]),
    ("scheduling.k8s.io", "v1", &["PriorityClass"]),
    ("coordination.k8s.io", "v1", &["Lease"]),
    ("certificates.k8s.io", "v1", &["CertificateSigningRequest"]),
    (
        "gateway.networking.k8s.io",
        "v1",
        &[
            "Gateway",
            "GatewayClass",
            "HTTPRoute",
            "GRPCRoute",
            "TCPRoute",
            "TLSRoute",
            "UDPRoute",
            "ReferenceGrant",
            "BackendTLSPolicy",
        ],
    ),
    (
        crate::networking::GROUP,
        "v1",
        &[
            "VirtualService",
            "DestinationRule",
            "Gateway",
            "ServiceEntry",
            "Sidecar",
            "WorkloadEntry",
            "WorkloadGroup",
            "EnvoyFilter",
            "ProxyConfig",
        ],
    ),
    (
        crate::security::GROUP,
        "v1",
        &[
            "PeerAuthentication",
            "AuthorizationPolicy",
            "RequestAuthentication",
        ],
    ),
    ("telemetry.istio.io", "v1", &["Telemetry"]),
    ("extensions.istio.io", "v1alpha1", &["WasmPlugin"]),
    ("install.istio.io", "v1alpha1", &["IstioOperator"]),
];

/// kubectl's short names of the kinds above (`kubectl api-resources`), with Istio's CRDs'.
const SHORT_NAMES: &[(&str, &str)] = &[
    ("ns", "Namespace"),
    ("svc", "Service"),
    ("po", "Pod"),
    ("cm", "ConfigMap"),
    ("sa", "ServiceAccount"),
    ("ep", "Endpoints"),
    ("pvc", "PersistentVolumeClaim"),
    ("pv", "PersistentVolume"),
    ("rc", "ReplicationController"),
    ("deploy", "Deployment"),
    ("rs", "ReplicaSet"),
    ("sts", "StatefulSet"),
    ("ds", "DaemonSet"),
    ("cj", "CronJob"),
    ("ing", "Ingress"),
    ("netpol", "NetworkPolicy"),
    ("pdb", "PodDisruptionBudget"),
    ("hpa", "HorizontalPodAutoscaler"),
    ("crd", "CustomResourceDefinition"),
    ("gtw", "Gateway"),
    ("vs", "VirtualService"),
    ("dr", "DestinationRule"),
    ("gw", "Gateway"),
    ("se", "ServiceEntry"),
    ("we", "WorkloadEntry"),
    ("wg", "WorkloadGroup"),
    ("pa", "PeerAuthentication"),
    ("ap", "AuthorizationPolicy"),
    ("ra", "RequestAuthentication"),
];

/// The kind a kubectl resource name stands for: the kind in any case (`serviceentry`), its
/// plural (`serviceentries`), a short name (`se`), each optionally with its group
/// (`serviceentries.networking.istio.io`). None for a name no known kind has.
pub fn resolve(resource: &str) -> Option<&'static str> {
    let (name, group) = match resource.split_once('.') {
        Some((name, group)) => (name, Some(group)),
        None => (resource, None),
    };
    let plural = |kind: &str| {
        let lower = kind.to_ascii_lowercase();
        if let Some(stem) = lower.strip_suffix('y') {
            format!("{stem}ies")
        } else if lower.ends_with('s') || lower.ends_with("ch") {
            format!("{lower}es")
        } else {
            format!("{lower}s")
        }
    };
    let candidates = KINDS
        .iter()
        .filter(|(g, _, _)| group.is_none_or(|want| want == *g))
        .flat_map(|(_, _, kinds)| kinds.iter().copied());
    for kind in candidates {
        if kind.eq_ignore_ascii_case(name)
            || plural(kind) == name.to_ascii_lowercase()
            || (kind == "Endpoints" && name.eq_ignore_ascii_case("endpoints"))
        {
            return Some(kind);
        }
    }
    SHORT_NAMES
        .iter()
        .find(|(short, _)| short.eq_ignore_ascii_case(name))
        .map(|(_, kind)| *kind)
}

/// Whether `kind` is a kind of API group `group`; else a message naming the nearest known kind
/// (or the group that serves it).
pub fn check(group: &str, kind: &str) -> Result<(), String> {
    if KINDS
        .iter()
        .any(|(g, _, kinds)| *g == group && kinds.contains(&kind))
    {
        return Ok(());
    }
    let version = |g: &str, v: &str| {
        if g.is_empty() {
            v.to_string()
        } else {
            format!("{g}/{v}")
        }
    };
    let in_group = if group.is_empty() {
        "the core API group (v1)".to_string()
    } else {
        format!("API group {group}")
    };
    let unknown = format!("unknown kind \"{kind}\" in {in_group}");
    // The same kind in another group: the apiVersion is what is wrong.
    if let Some((g, v, _)) = KINDS.iter().find(|(_, _, kinds)| kinds.contains(&kind)) {
        return Err(format!("{unknown}: {kind} is served by {}", version(g, v)));
    }
    let nearest = KINDS
        .iter()
        .flat_map(|(g, v, kinds)| kinds.iter().map(move |k| (*g, *v, *k)))
        .map(|(g, v, k)| (distance(kind, k), g != group, g, v, k))
        .min();
    match nearest {
        Some((d, _, g, v, k)) if d <= (kind.len() / 3).max(2) => {
            if g == group {
                Err(format!("{unknown}: did you mean {k}?"))
            } else {
                Err(format!("{unknown}: did you mean {k} ({})?", version(g, v)))
            }
        }
        _ => Err(format!(
            "{unknown}: not a kind Ama or Kubernetes knows (Deployment, Service, VirtualService, \
             DestinationRule, …)"
        )),
    }
}

/// The edit distance of two kinds, ignoring case (Levenshtein).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_ascii_lowercase().chars().collect();
    let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_resolve_as_kubectl_names_them() {
        for (resource, kind) in [
            ("serviceentry", "ServiceEntry"),
            ("serviceentries", "ServiceEntry"),
            ("se", "ServiceEntry"),
            ("serviceentries.networking.istio.io", "ServiceEntry"),
            ("ServiceEntry", "ServiceEntry"),
            ("deploy", "Deployment"),
            ("deployments.apps", "Deployment"),
            ("authorizationpolicies", "AuthorizationPolicy"),
            ("ap", "AuthorizationPolicy"),
            ("svc", "Service"),
            ("services", "Service"),
            ("secret", "Secret"),
            ("endpoints", "Endpoints"),
            ("gw", "Gateway"),
            ("ns", "Namespace"),
            ("namespaces", "Namespace"),
        ] {
            assert_eq!(resolve(resource), Some(kind), "{resource}");
        }
        assert_eq!(resolve("serviceentries.apps"), None);
        assert_eq!(resolve("deploymnet"), None);
    }

    #[test]
    fn typos_name_the_nearest_kind() {
        assert_eq!(check("apps", "Deployment"), Ok(()));
        assert_eq!(check("", "Secret"), Ok(()));
        assert_eq!(
            check("apps", "Deploymnet"),
            Err("unknown kind \"Deploymnet\" in API group apps: did you mean Deployment?".into())
        );
        assert_eq!(
            check("networking.istio.io", "VirtualServiceX"),
            Err(
                "unknown kind \"VirtualServiceX\" in API group networking.istio.io: did you mean \
                 VirtualService?"
                    .into()
            )
        );
        assert_eq!(
            check("networking.istio.io", "AuthorizationPolicy"),
            Err(
                "unknown kind \"AuthorizationPolicy\" in API group networking.istio.io: \
                 AuthorizationPolicy is served by security.istio.io/v1"
                    .into()
            )
        );
        assert!(
            check("example.com", "Widget")
                .unwrap_err()
                .contains("not a kind Ama or Kubernetes knows")
        );
    }
}
