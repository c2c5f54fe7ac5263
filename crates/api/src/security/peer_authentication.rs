//! PeerAuthentication: whether workloads accept plain text, mutual TLS or both (Istio's
//! `peer_authentication.proto`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::check::Problems;
use crate::networking::WorkloadSelector;

/// The spec of a PeerAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// Workloads it applies to (the namespace, or the mesh in the root namespace, when unset).
    pub selector: Option<WorkloadSelector>,
    /// The mode for every port.
    pub mtls: Option<MutualTls>,
    /// Modes for single ports, by port number (needs a selector).
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

/// An mTLS mode setting.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// The mode (inherited from the parent scope when unset).
    pub mode: Option<MtlsMode>,
}

/// The mTLS modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope (PERMISSIVE at the top).
    Unset,
    /// Plain text only.
    Disable,
    /// Plain text and mTLS.
    Permissive,
    /// mTLS only.
    Strict,
}

impl PeerAuthentication {
    /// Checks the spec (at path `at`, normally `spec`), as Istio's validation does.
    pub fn validate(&self, at: &str, p: &mut Problems) {
        if let Some(s) = &self.selector {
            p.selector_labels(&format!("{at}.selector.matchLabels"), &s.match_labels);
        }
        let has_selector = self
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        if !self.port_level_mtls.is_empty() && !has_selector {
            p.add(
                format!("{at}.portLevelMtls"),
                "needs a selector: port-level modes apply to selected workloads only",
            );
        }
        for port in self.port_level_mtls.keys() {
            p.port(format!("{at}.portLevelMtls[{port}]"), *port);
        }
    }
}
