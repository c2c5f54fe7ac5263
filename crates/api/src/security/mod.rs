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
