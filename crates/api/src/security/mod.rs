//! `security.istio.io`: PeerAuthentication, AuthorizationPolicy and RequestAuthentication.
//!
//! As for [`crate::networking`], the types follow Istio's protos
//! (`security/v1beta1/*.proto`, served unchanged as `v1` and `v1beta1`): unknown fields are
//! errors with their path, and `validate` applies Istio's single-object checks.

pub mod authorization_policy;
pub mod peer_authentication;
pub mod request_authentication;

pub use authorization_policy::AuthorizationPolicy;
pub use peer_authentication::PeerAuthentication;
pub use request_authentication::RequestAuthentication;

/// The API group of these kinds.
pub const GROUP: &str = "security.istio.io";
/// The versions Istio serves for this group, newest first; both share one schema.
pub const VERSIONS: [&str; 2] = ["v1", "v1beta1"];

use serde::Deserialize;

use crate::check::Problems;
use crate::networking::WorkloadSelector;
use authorization_policy::{PolicyTargetReference, validate_targets};

/// The security policies that say which requests a workload accepts, and so must fail closed
/// when Ama cannot read them ([`crate::objects::UnreadablePolicy`]): an AuthorizationPolicy or
/// RequestAuthentication then denies every request to what it selects, a PeerAuthentication
/// takes mutual TLS only (STRICT) there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// AuthorizationPolicy.
    AuthorizationPolicy,
    /// RequestAuthentication.
    RequestAuthentication,
    /// PeerAuthentication.
    PeerAuthentication,
}

impl PolicyKind {
    /// The kind of `kind` in `group`, if it is one of the two.
    pub fn of(group: &str, kind: &str) -> Option<PolicyKind> {
        match (group, kind) {
            (GROUP, "AuthorizationPolicy") => Some(PolicyKind::AuthorizationPolicy),
            (GROUP, "RequestAuthentication") => Some(PolicyKind::RequestAuthentication),
            (GROUP, "PeerAuthentication") => Some(PolicyKind::PeerAuthentication),
            _ => None,
        }
    }

    /// The kind as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::AuthorizationPolicy => "AuthorizationPolicy",
            PolicyKind::RequestAuthentication => "RequestAuthentication",
            PolicyKind::PeerAuthentication => "PeerAuthentication",
        }
    }

    /// What Ama does instead of a policy of this kind it cannot read.
    pub fn fail_closed(self) -> &'static str {
        match self {
            PolicyKind::AuthorizationPolicy | PolicyKind::RequestAuthentication => {
                "Ama cannot read this policy: every request to the workloads it selects is \
                 denied until it is fixed"
            }
            PolicyKind::PeerAuthentication => {
                "Ama cannot read this policy: the workloads it selects accept mutual TLS only \
                 (STRICT) until it is fixed"
            }
        }
    }
}

/// Which workloads a policy binds: the fields AuthorizationPolicy and RequestAuthentication
/// share. All unset: the policy's namespace (the mesh, from the root namespace).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")] // the rest of the spec is not read here
pub struct PolicyBinding {
    /// `selector`.
    pub selector: Option<WorkloadSelector>,
    /// `targetRef`.
    pub target_ref: Option<PolicyTargetReference>,
    /// `targetRefs`.
    pub target_refs: Vec<PolicyTargetReference>,
}

impl PolicyBinding {
    /// Checks the binding (at path `at`, normally `spec`) as Istio's validation does.
    pub fn validate(&self, at: &str, p: &mut Problems) {
        validate_targets(
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            &self.target_refs,
            at,
            p,
        );
    }
}
