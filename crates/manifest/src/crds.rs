//! The CustomResourceDefinitions of the Istio kinds Ama reads, with Istio's groups, names,
//! short names, categories, versions and printer columns.
//!
//! Every version is served and shares one schema, as in Istio; `v1` is the storage version. The
//! schema is structural but open (`x-kubernetes-preserve-unknown-fields` on `spec` and
//! `status`): the control plane validates specs itself ([`api::objects`]) with messages that
//! name the field, rather than the API server with a generated schema.

use serde_json::{Value, json};

use api::{networking, security};

/// One Istio kind as a CRD describes it.
struct Kind {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    short_names: &'static [&'static str],
    /// `kubectl get` columns besides the name: (name, JSON path, description).
    columns: &'static [(&'static str, &'static str, &'static str)],
}

const KINDS: [Kind; 7] = [
    Kind {
        group: networking::GROUP,
        kind: "DestinationRule",
        plural: "destinationrules",
        short_names: &["dr"],
        columns: &[(
            "Host",
            ".spec.host",
            "The name of a service from the service registry",
        )],
    },
    Kind {
        group: networking::GROUP,
        kind: "Gateway",
        plural: "gateways",
        short_names: &["gw"],
        columns: &[],
    },
    Kind {
        group: networking::GROUP,
        kind: "ServiceEntry",
        plural: "serviceentries",
        short_names: &["se"],
        columns: &[
            (
                "Hosts",
                ".spec.hosts",
                "The hosts associated with the ServiceEntry",
            ),
            (
                "Location",
                ".spec.location",
                "Whether the service is external to the mesh or part of the mesh \
                 (MESH_EXTERNAL or MESH_INTERNAL)",
            ),
            (
                "Resolution",
                ".spec.resolution",
                "Service resolution mode for the hosts (NONE, STATIC, or DNS)",
            ),
        ],
    },
    Kind {
        group: networking::GROUP,
        kind: "Sidecar",
        plural: "sidecars",
        short_names: &[],
        columns: &[],
    },
    Kind {
        group: networking::GROUP,
        kind: "VirtualService",
        plural: "virtualservices",
        short_names: &["vs"],
        columns: &[
            (
                "Gateways",
                ".spec.gateways",
                "The names of gateways and sidecars that should apply these routes",
            ),
            (
                "Hosts",
                ".spec.hosts",
                "The destination hosts to which traffic is being sent",
            ),
        ],
    },
    Kind {
        group: security::GROUP,
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        short_names: &["ap"],
        columns: &[("Action", ".spec.action", "The operation to take.")],
    },
    Kind {
        group: security::GROUP,
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        short_names: &["pa"],
        columns: &[(
            "Mode",
            ".spec.mtls.mode",
            "Defines the mTLS mode used for peer authentication.",
        )],
    },
];

/// The served versions of a group, with `v1` (the storage version) first.
fn versions(group: &str) -> &'static [&'static str] {
    if group == networking::GROUP {
        &networking::VERSIONS
    } else {
        &security::VERSIONS
    }
}

/// Every CRD, in a stable order (networking, then security; by kind).
pub fn all() -> Vec<Value> {
    KINDS.iter().map(crd).collect()
}

fn crd(k: &Kind) -> Value {
    let category = format!("{}-istio-io", k.group.trim_end_matches(".istio.io"));
    let mut columns: Vec<Value> = k
        .columns
        .iter()
        .map(|(name, path, description)| {
            json!({"name": name, "jsonPath": path, "type": "string", "description": description})
        })
        .collect();
    columns.push(json!({
        "name": "Age",
        "jsonPath": ".metadata.creationTimestamp",
        "type": "date",
        "description": "CreationTimestamp is the time the object was created.",
    }));
    let versions: Vec<Value> = versions(k.group)
        .iter()
        .map(|version| {
            json!({
                "name": version,
                "served": true,
                "storage": *version == "v1",
                "additionalPrinterColumns": columns,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "description": format!("Spec of the {}: see Istio's reference.", k.kind),
                            "x-kubernetes-preserve-unknown-fields": true,
                        },
                        "status": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                        },
                    },
                }},
            })
        })
        .collect();
    let mut names = json!({
        "kind": k.kind,
        "listKind": format!("{}List", k.kind),
        "plural": k.plural,
        "singular": k.kind.to_lowercase(),
        "categories": ["istio-io", category],
    });
    if !k.short_names.is_empty() {
        names["shortNames"] = json!(k.short_names);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{}", k.plural, k.group),
            "labels": {"app": "istio-pilot", "chart": "istio", "release": "istio"},
            "annotations": {"helm.sh/resource-policy": "keep"},
        },
        "spec": {
            "group": k.group,
            "names": names,
            "scope": "Namespaced",
            "versions": versions,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_versions_and_storage_are_istios() {
        let crds = all();
        let names: Vec<&str> = crds
            .iter()
            .filter_map(|c| c["metadata"]["name"].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "destinationrules.networking.istio.io",
                "gateways.networking.istio.io",
                "serviceentries.networking.istio.io",
                "sidecars.networking.istio.io",
                "virtualservices.networking.istio.io",
                "authorizationpolicies.security.istio.io",
                "peerauthentications.security.istio.io",
            ]
        );
        let vs = &crds[4]["spec"];
        assert_eq!(vs["names"]["shortNames"], json!(["vs"]));
        assert_eq!(
            vs["names"]["categories"],
            json!(["istio-io", "networking-istio-io"])
        );
        let versions: Vec<(&str, bool)> = vs["versions"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|v| (v["name"].as_str().unwrap_or(""), v["storage"] == true))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            versions,
            [("v1", true), ("v1beta1", false), ("v1alpha3", false)]
        );
        let pa = &crds[6]["spec"]["versions"];
        assert_eq!(pa[0]["name"], "v1");
        assert_eq!(pa[0]["storage"], true);
        assert_eq!(pa[1]["name"], "v1beta1");
    }
}
