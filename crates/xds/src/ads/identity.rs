//! Whether a proxy's node is the workload its credentials name: Istio's connection identity
//! check (`checkConnectionIdentity` in pilot's xDS server).
//!
//! A transport that authenticates its callers (the secure gRPC port's bearer tokens) puts a
//! [`PeerIdentity`] into each request's extensions; [`crate::ads::AdsServer`] then refuses a
//! stream whose node claims another namespace or service account with `PermissionDenied`,
//! before asking for any resources. A stream without an identity (the plaintext port) is not
//! checked, as in Istio.
//!
//! The rules, Istio's with one addition:
//!
//! - the node's namespace (metadata `NAMESPACE`, else the one in its id) must be the identity's;
//! - our control plane picks a proxy's config by the namespace in its *id*
//!   (`sidecar~ip~pod.<ns>~…`), so that one must match as well, whatever the metadata says;
//! - a node that names no namespace at all is refused (Istio parses the id first and fails
//!   there);
//! - if the metadata carries `SERVICE_ACCOUNT`, it must be the identity's; if not, only the
//!   namespace is checked.

use std::fmt;

use envoy_types::pb::envoy::config::core::v3::Node;

use super::node::{META_NAMESPACE, META_SERVICE_ACCOUNT, ProxyId, node_metadata};

/// The workload a stream's caller authenticated as, put into the request's extensions by the
/// transport that checked its credentials. Holds no credential itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service account.
    pub service_account: String,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

/// A node that is not the workload the stream authenticated as. The message names both sides
/// (`no identities (shop/httpbin) matched other/httpbin: …`), never a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no identities ({identity}) matched {}/{}: {reason}",
    node_namespace.as_deref().unwrap_or(""),
    node_service_account.as_deref().unwrap_or("")
)]
pub struct IdentityMismatch {
    /// Who the stream authenticated as.
    pub identity: PeerIdentity,
    /// The node's namespace that did not match (or the one it claims, when the service account
    /// is what differs); `None` when it names none.
    pub node_namespace: Option<String>,
    /// The node's `SERVICE_ACCOUNT` metadata, if any.
    pub node_service_account: Option<String>,
    /// What differs.
    pub reason: &'static str,
}

/// Checks that `node` claims no namespace or service account other than `identity`'s.
pub fn check_node(identity: &PeerIdentity, node: &Node) -> Result<(), IdentityMismatch> {
    let meta = node_metadata(node);
    let non_empty = |k: &str| meta.get(k).filter(|v| !v.is_empty()).cloned();
    let meta_namespace = non_empty(META_NAMESPACE);
    let service_account = non_empty(META_SERVICE_ACCOUNT);
    let id_namespace = node.id.parse::<ProxyId>().ok().map(|id| id.namespace);
    let mismatch = |ns: Option<&String>, reason| IdentityMismatch {
        identity: identity.clone(),
        node_namespace: ns.cloned(),
        node_service_account: service_account.clone(),
        reason,
    };
    // Istio's config namespace first, then the id's, which is what our control plane serves.
    let config_namespace = meta_namespace.as_ref().or(id_namespace.as_ref());
    let Some(config_namespace) = config_namespace else {
        return Err(mismatch(None, "the node names no namespace"));
    };
    if *config_namespace != identity.namespace {
        return Err(mismatch(Some(config_namespace), "the namespace differs"));
    }
    if let Some(ns) = id_namespace
        .as_ref()
        .filter(|ns| **ns != identity.namespace)
    {
        return Err(mismatch(Some(ns), "the namespace in the node id differs"));
    }
    if service_account
        .as_ref()
        .is_some_and(|sa| *sa != identity.service_account)
    {
        return Err(mismatch(
            Some(config_namespace),
            "the service account differs",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn identity(namespace: &str, service_account: &str) -> PeerIdentity {
        PeerIdentity {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// A sidecar node in `namespace` (id and `NAMESPACE`) with `extra` metadata.
    fn node(namespace: &str, extra: &[(&str, &str)]) -> Node {
        let extra: BTreeMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyId::sidecar("10.244.0.9".parse().expect("ip"), "httpbin-0", namespace).to_node(&extra)
    }

    #[test]
    fn matching_namespace_and_service_account_pass() {
        let id = identity("shop", "httpbin");
        assert_eq!(check_node(&id, &node("shop", &[])), Ok(()));
        assert_eq!(
            check_node(&id, &node("shop", &[(META_SERVICE_ACCOUNT, "httpbin")])),
            Ok(())
        );
    }

    #[test]
    fn another_namespace_is_refused() {
        let err = check_node(&identity("shop", "httpbin"), &node("bank", &[])).expect_err("ns");
        assert_eq!(err.node_namespace.as_deref(), Some("bank"));
        assert_eq!(
            err.to_string(),
            "no identities (shop/httpbin) matched bank/: the namespace differs"
        );
    }

    #[test]
    fn another_service_account_is_refused() {
        let err = check_node(
            &identity("shop", "httpbin"),
            &node("shop", &[(META_SERVICE_ACCOUNT, "sleep")]),
        )
        .expect_err("sa");
        assert_eq!(
            err.to_string(),
            "no identities (shop/httpbin) matched shop/sleep: the service account differs"
        );
    }

    #[test]
    fn without_service_account_metadata_only_the_namespace_counts() {
        // Any service account of the namespace may claim a node that names none.
        assert_eq!(
            check_node(&identity("shop", "other-sa"), &node("shop", &[])),
            Ok(())
        );
        // An empty value is no value, as in Istio.
        assert_eq!(
            check_node(
                &identity("shop", "other-sa"),
                &node("shop", &[(META_SERVICE_ACCOUNT, "")])
            ),
            Ok(())
        );
        assert!(check_node(&identity("bank", "httpbin"), &node("shop", &[])).is_err());
    }

    #[test]
    fn the_metadata_namespace_counts_before_the_id() {
        // NAMESPACE metadata is Istio's config namespace: a node whose id says `shop` but whose
        // metadata says `bank` is refused for a `shop` identity...
        let n = node("shop", &[(META_NAMESPACE, "bank")]);
        let err = check_node(&identity("shop", "httpbin"), &n).expect_err("metadata");
        assert_eq!(err.node_namespace.as_deref(), Some("bank"));
        // ...and, since our control plane serves the id's namespace, also for a `bank` one.
        let err = check_node(&identity("bank", "httpbin"), &n).expect_err("id");
        assert_eq!(err.node_namespace.as_deref(), Some("shop"));
        assert_eq!(err.reason, "the namespace in the node id differs");
    }

    #[test]
    fn the_id_namespace_counts_without_metadata() {
        let mut n = node("shop", &[]);
        n.metadata = None;
        assert_eq!(check_node(&identity("shop", "httpbin"), &n), Ok(()));
        assert!(check_node(&identity("bank", "httpbin"), &n).is_err());
    }

    #[test]
    fn a_node_without_a_namespace_is_refused() {
        let n = Node {
            id: "not-an-istio-id".to_string(),
            ..Node::default()
        };
        let err = check_node(&identity("shop", "httpbin"), &n).expect_err("no namespace");
        assert_eq!(err.node_namespace, None);
        assert_eq!(err.reason, "the node names no namespace");
    }
}
