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

/// The two security policies that say which requests a workload accepts, and so must fail
/// closed when Ama cannot read them ([`crate::objects::UnreadablePolicy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// AuthorizationPolicy.
    AuthorizationPolicy,
    /// RequestAuthentication.
    RequestAuthentication,
}

impl PolicyKind {
    /// The kind of `kind` in `group`, if it is one of the two.
    pub fn of(group: &str, kind: &str) -> Option<PolicyKind> {
        match (group, kind) {
            (GROUP, "AuthorizationPolicy") => Some(PolicyKind::AuthorizationPolicy),
            (GROUP, "RequestAuthentication") => Some(PolicyKind::RequestAuthentication),
            _ => None,
        }
    }

    /// The kind as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::AuthorizationPolicy => "AuthorizationPolicy",
            PolicyKind::RequestAuthentication => "RequestAuthentication",
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
