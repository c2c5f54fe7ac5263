//! `Authorization`: PeerAuthentication and AuthorizationPolicy for the workloads they select.
//!
//! PeerAuthentication is enforced on the inbound path together with mTLS; the rules of an
//! AuthorizationPolicy are carried and validated but not evaluated yet, so the control plane
//! sends each policy it cannot enforce as `denyAll`, which the proxy enforces (fail closed).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::ValidationErrors;

/// PeerAuthentication mTLS mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent: port → workload → namespace → mesh; PERMISSIVE when nothing
    /// sets a mode (Istio's `UNSET`).
    #[default]
    Unset,
    /// Accept mTLS and plaintext (Istio's default).
    Permissive,
    /// mTLS only.
    Strict,
    /// Plaintext only.
    Disable,
}

/// PeerAuthentication: which mTLS mode the selected workloads accept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// Workload-wide mode; `UNSET` inherits the namespace's (then the mesh's).
    #[serde(default)]
    pub mode: MtlsMode,
    /// Per-port overrides, by the workload's (container) port; `UNSET` inherits `mode`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<u16, MtlsMode>,
}

/// The PeerAuthentication modes in force for one workload: the workload-wide mode and the
/// (workload) ports that override it, after Istio's inheritance: a port, then the workload
/// policy (a selector matching the workload's labels in its namespace), then the namespace
/// policy (no selector), then the mesh policy (no selector, in the root namespace); PERMISSIVE
/// when none sets a mode. Never `UNSET`. The proxy resolves its own inbound mode with it, and
/// discovery the mode of each endpoint it sends (auto mTLS sends plaintext to DISABLE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveMtls {
    /// Workload-wide mode.
    pub mode: MtlsMode,
    /// The workload policy's port-level overrides, by workload (container) port.
    pub ports: Vec<(u16, MtlsMode)>,
}

impl Default for EffectiveMtls {
    fn default() -> Self {
        EffectiveMtls {
            mode: MtlsMode::Permissive,
            ports: Vec::new(),
        }
    }
}

impl EffectiveMtls {
    /// Resolves the PeerAuthentications among `authorizations` for a workload in `namespace`
    /// with `labels`; mesh-wide ones live in `root_namespace`. Pure.
    pub fn resolve(
        authorizations: &[Authorization],
        root_namespace: &str,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> EffectiveMtls {
        let first = |pick: &dyn Fn(&Authorization) -> bool| -> Option<&PeerAuthentication> {
            authorizations
                .iter()
                .filter(|a| pick(a))
                .find_map(|a| a.peer_authentication.as_ref())
        };
        let in_ns = |a: &Authorization| Some(a.namespace.as_str()) == namespace;
        let mesh = first(&|a| a.namespace == root_namespace && a.selector.is_empty());
        let ns = first(&|a| in_ns(a) && a.selector.is_empty());
        let workload = first(&|a| {
            in_ns(a)
                && !a.selector.is_empty()
                && a.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        });
        let mode = [workload, ns, mesh]
            .into_iter()
            .flatten()
            .map(|p| p.mode)
            .find(|m| *m != MtlsMode::Unset)
            .unwrap_or(MtlsMode::Permissive);
        let ports = workload
            .map(|p| {
                p.port_level_mtls
                    .iter()
                    .filter(|(_, m)| **m != MtlsMode::Unset)
                    .map(|(port, m)| (*port, *m))
                    .collect()
            })
            .unwrap_or_default();
        EffectiveMtls { mode, ports }
    }

    /// The mode on (workload) port `port`.
    pub fn mode(&self, port: u16) -> MtlsMode {
        self.ports
            .iter()
            .find(|(p, _)| *p == port)
            .map_or(self.mode, |(_, m)| *m)
    }
}

/// What a policy does when a rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Allow matching requests (others are denied once any ALLOW policy exists).
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
}

/// Request attributes a rule matches on; each set list must contain the value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatch {
    /// Source SPIFFE principals (`cluster.local/ns/default/sa/sleep`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Source namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Paths (exact, or prefix when ending in `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Destination ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// One rule: matches when any of `from` and any of `to` match (empty lists match all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationRule {
    /// Source conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RequestMatch>,
    /// Operation conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RequestMatch>,
}

/// Authorization for the workloads a selector picks in a namespace (the root namespace's
/// policies apply mesh-wide).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Workload label selector; empty selects every workload of the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// mTLS mode, when this carries a PeerAuthentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_authentication: Option<PeerAuthentication>,
    /// Action of the rules.
    #[serde(default)]
    pub action: Action,
    /// Rules; for ALLOW an empty list allows nothing, for DENY it denies nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthorizationRule>,
    /// The policy cannot be enforced as written (Ama does not evaluate AuthorizationPolicy and
    /// RequestAuthentication yet): the selected workloads deny every request instead, as
    /// Envoy's RBAC filter denies (fail closed). `action` and `rules` are then not used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deny_all: bool,
}

impl Authorization {
    /// Whether this applies to a workload in `namespace` with `labels`: a selector in its own
    /// namespace, its namespace as a whole, or the whole mesh from `root_namespace`. Selectors
    /// in the root namespace select in the root namespace only, as in Istio.
    pub fn selects(
        &self,
        root_namespace: &str,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        if self.selector.is_empty() {
            self.namespace == root_namespace || Some(self.namespace.as_str()) == namespace
        } else {
            Some(self.namespace.as_str()) == namespace
                && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        }
    }

    pub(crate) fn validate(&self, path: &str, errs: &mut ValidationErrors) {
        if self.name.is_empty() {
            errs.push(format!("{path}.name"), "must not be empty");
        }
        if self.namespace.is_empty() {
            errs.push(format!("{path}.namespace"), "must not be empty");
        }
        for (i, r) in self.rules.iter().enumerate() {
            for (j, m) in r.to.iter().enumerate() {
                if m.ports.contains(&0) {
                    errs.push(
                        format!("{path}.rules[{i}].to[{j}].ports"),
                        "must be 1..65535",
                    );
                }
            }
        }
    }
}
