//! PeerAuthentication on the inbound side: which connections this workload accepts on a port.
//!
//! Istio's precedence, most specific first: the port's `portLevelMtls` of the workload policy,
//! then the workload policy (a selector matching our labels in our namespace), then the
//! namespace policy (no selector, our namespace), then the mesh policy (no selector, the root
//! namespace, `istio-system` by default). `UNSET` at any level inherits the next one; with
//! nothing set the mode is PERMISSIVE. Where several policies sit at one level, the first in the
//! resources wins (Istio takes the oldest; the control plane sends them oldest first). Port-level
//! modes count only in a workload policy, as in Istio.
//!
//! - STRICT: mTLS only; plaintext connections are closed.
//! - PERMISSIVE: Istio mTLS (an `istio*` ALPN) is terminated; anything else, plaintext or other
//!   TLS, goes to the app as it came.
//! - DISABLE: no mTLS termination; TLS goes to the app as opaque bytes.
//!
//! The resolution runs once per config snapshot and is cached ([`PeerAuthn`], with
//! [`crate::per_snapshot`]); a connection pays one atomic load and a short scan of the ports
//! that have overrides.

use std::collections::BTreeMap;
use std::sync::Arc;

use xds::{Authorization, MtlsMode};

use crate::config::{ProxyConfig, Snapshot};
use crate::per_snapshot::{PerSnapshot, workload_scope};

/// Istio's default root namespace, home of mesh-wide policies (MeshConfig `rootNamespace`).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// An effective inbound mode (never `UNSET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundMode {
    /// mTLS only.
    Strict,
    /// mTLS and plaintext.
    Permissive,
    /// Plaintext only (TLS is passed to the app).
    Disable,
}

impl InboundMode {
    fn from_set(mode: MtlsMode) -> Option<Self> {
        match mode {
            MtlsMode::Unset => None,
            MtlsMode::Permissive => Some(InboundMode::Permissive),
            MtlsMode::Strict => Some(InboundMode::Strict),
            MtlsMode::Disable => Some(InboundMode::Disable),
        }
    }
}

/// The modes of one workload ([`xds::EffectiveMtls`]), as the inbound side reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundMtls(xds::EffectiveMtls);

impl InboundMtls {
    /// Resolves the policies in `authorizations` for a workload in `namespace` with `labels`,
    /// the mesh-wide ones living in `root_namespace`. Pure.
    pub fn resolve(
        authorizations: &[Authorization],
        root_namespace: &str,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> InboundMtls {
        InboundMtls(xds::EffectiveMtls::resolve(
            authorizations,
            root_namespace,
            namespace,
            labels,
        ))
    }

    /// The mode on (workload) port `port`.
    pub fn mode(&self, port: u16) -> InboundMode {
        // Resolved modes are never UNSET.
        InboundMode::from_set(self.0.mode(port)).unwrap_or(InboundMode::Permissive)
    }
}

/// The inbound modes of the current snapshot, resolved once per snapshot version.
#[derive(Debug)]
pub struct PeerAuthn {
    root_namespace: Arc<str>,
    resolved: PerSnapshot<InboundMtls>,
}

impl Default for PeerAuthn {
    fn default() -> Self {
        PeerAuthn::new(DEFAULT_ROOT_NAMESPACE)
    }
}

impl PeerAuthn {
    /// Mesh-wide policies live in `root_namespace`.
    pub fn new(root_namespace: &str) -> PeerAuthn {
        PeerAuthn {
            root_namespace: Arc::from(root_namespace),
            resolved: PerSnapshot::default(),
        }
    }

    /// The modes for this workload under `snap`.
    pub fn policy(&self, snap: &Snapshot, cfg: &ProxyConfig) -> Arc<InboundMtls> {
        self.resolved
            .get(snap.version, || {
                let no_labels = BTreeMap::new();
                let (namespace, labels) = workload_scope(snap, cfg, &no_labels);
                Some(InboundMtls::resolve(
                    &snap.resources.authorizations,
                    &self.root_namespace,
                    namespace,
                    labels,
                ))
            })
            .unwrap_or_default()
    }

    /// The mode for inbound port `port` under `snap`.
    pub fn mode(&self, snap: &Snapshot, cfg: &ProxyConfig, port: u16) -> InboundMode {
        self.policy(snap, cfg).mode(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds::PeerAuthentication;

    fn pa(
        ns: &str,
        selector: &[(&str, &str)],
        mode: MtlsMode,
        ports: &[(u16, MtlsMode)],
    ) -> Authorization {
        Authorization {
            name: format!("pa-{ns}"),
            namespace: ns.to_string(),
            selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            peer_authentication: Some(PeerAuthentication {
                mode,
                port_level_mtls: ports.iter().copied().collect(),
            }),
            ..Default::default()
        }
    }

    fn labels() -> BTreeMap<String, String> {
        [("app".to_string(), "httpbin".to_string())].into()
    }

    fn resolve(list: &[Authorization]) -> InboundMtls {
        InboundMtls::resolve(list, DEFAULT_ROOT_NAMESPACE, Some("default"), &labels())
    }

    #[test]
    fn nothing_configured_is_permissive() {
        assert_eq!(resolve(&[]).mode(80), InboundMode::Permissive);
        let authz_only = Authorization {
            name: "deny".into(),
            namespace: "default".into(),
            ..Default::default()
        };
        assert_eq!(resolve(&[authz_only]).mode(80), InboundMode::Permissive);
    }

    #[test]
    fn mesh_then_namespace_then_workload_then_port() {
        let mesh = pa("istio-system", &[], MtlsMode::Strict, &[]);
        assert_eq!(
            resolve(std::slice::from_ref(&mesh)).mode(80),
            InboundMode::Strict
        );
        let ns = pa("default", &[], MtlsMode::Permissive, &[]);
        assert_eq!(
            resolve(&[mesh.clone(), ns.clone()]).mode(80),
            InboundMode::Permissive
        );
        let wl = pa("default", &[("app", "httpbin")], MtlsMode::Disable, &[]);
        assert_eq!(
            resolve(&[wl.clone(), mesh.clone(), ns.clone()]).mode(80),
            InboundMode::Disable
        );
        let wl_ports = pa(
            "default",
            &[("app", "httpbin")],
            MtlsMode::Unset,
            &[(8080, MtlsMode::Disable), (9090, MtlsMode::Unset)],
        );
        let r = resolve(&[mesh.clone(), wl_ports]);
        assert_eq!(r.mode(8080), InboundMode::Disable);
        assert_eq!(r.mode(9090), InboundMode::Strict, "UNSET port inherits");
        assert_eq!(r.mode(80), InboundMode::Strict, "UNSET workload inherits");
    }

    #[test]
    fn other_namespaces_and_selectors_do_not_apply() {
        let other_ns = pa("other", &[], MtlsMode::Strict, &[]);
        let other_app = pa("default", &[("app", "sleep")], MtlsMode::Strict, &[]);
        let root_selector = pa("istio-system", &[("app", "httpbin")], MtlsMode::Strict, &[]);
        assert_eq!(
            resolve(&[other_ns, other_app, root_selector]).mode(80),
            InboundMode::Permissive
        );
        // Port-level modes of a namespace-wide policy are ignored, as in Istio.
        let ns_ports = pa("default", &[], MtlsMode::Unset, &[(80, MtlsMode::Strict)]);
        assert_eq!(resolve(&[ns_ports]).mode(80), InboundMode::Permissive);
    }

    #[test]
    fn first_policy_of_a_level_wins() {
        let a = pa("default", &[], MtlsMode::Strict, &[]);
        let b = pa("default", &[], MtlsMode::Disable, &[]);
        assert_eq!(resolve(&[a, b]).mode(80), InboundMode::Strict);
    }
}
