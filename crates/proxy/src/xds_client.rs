//! The sidecar's discovery client: resources pushed by `ama discovery` over Delta ADS.
//!
//! With Istio's injected `--discoveryAddress host:port` (and no `--config FILE`, which wins when
//! given) the sidecar runs an [`AdsClient`] that presents the pod as Istio's agent does (node id
//! `sidecar~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local`, metadata
//! from `ISTIO_META_*`). Each pushed [`ProxyResources`] goes through [`ConfigStore::apply`], the
//! same validation and atomic swap as a `--config` file: a push that fails validation is NACKed
//! with the validation message and the snapshot in force stays. The proxy reports ready only once
//! the first good config is in force. When the control plane is gone the last good config keeps
//! serving while the client reconnects with backoff.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use xds::ProxyResources;
use xds::ads::client::{ClientError, endpoint};
use xds::ads::node::META_CLUSTER_ID;
use xds::ads::{AdsClient, Node, ProxyId};

use crate::config::{ConfigStore, ProxyConfig};
use crate::drain::DrainWatcher;

/// Environment variables whose suffix becomes node metadata, as Istio's agent does
/// (`ISTIO_META_CLUSTER_ID=Kubernetes` → `CLUSTER_ID: Kubernetes`).
pub const META_ENV_PREFIX: &str = "ISTIO_META_";

/// The proxy's Istio id from its settings (`POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`); missing
/// parts become `unknown`, `default` and 127.0.0.1.
pub fn proxy_id(cfg: &ProxyConfig) -> ProxyId {
    ProxyId::sidecar(
        cfg.instance_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        cfg.pod_name.as_deref().unwrap_or("unknown"),
        cfg.pod_namespace.as_deref().unwrap_or("default"),
    )
}

/// Node metadata from `ISTIO_META_*` variables among `vars`.
pub fn metadata_from_env(
    vars: impl IntoIterator<Item = (String, String)>,
) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(META_ENV_PREFIX)
                .filter(|k| !k.is_empty())
                .map(|k| (k.to_string(), v))
        })
        .collect()
}

/// The xDS node of this proxy: its id, the standard metadata, the cluster id and `metadata`.
pub fn node(cfg: &ProxyConfig, metadata: &BTreeMap<String, String>) -> Node {
    let mut meta = BTreeMap::from([(META_CLUSTER_ID.to_string(), cfg.cluster_id.clone())]);
    meta.extend(metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    proxy_id(cfg).to_node(&meta)
}

/// A client for `address` (`host:port`, plain HTTP/2) presenting this proxy.
pub fn client(
    address: &str,
    cfg: &ProxyConfig,
    metadata: &BTreeMap<String, String>,
) -> Result<AdsClient, ClientError> {
    Ok(AdsClient::new(endpoint(address)?, node(cfg, metadata)))
}

/// Runs `client` until a drain starts, applying every push to `store`. `on_ready` is called
/// once, after the first config is in force.
pub async fn run(
    client: AdsClient,
    store: Arc<ConfigStore>,
    on_ready: impl FnOnce() + Send,
    drain: DrainWatcher,
) {
    let mut on_ready = Some(on_ready);
    let apply = move |resources: ProxyResources| -> Result<(), String> {
        let version = store.apply(resources).map_err(|e| e.to_string())?;
        tracing::info!(version, "config from the control plane applied");
        if let Some(ready) = on_ready.take() {
            ready();
        }
        Ok(())
    };
    tokio::select! {
        _ = drain.signaled() => {}
        _ = client.run(apply) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_from_settings_and_env() {
        let cfg = ProxyConfig {
            pod_name: Some("ubuntu-deployment-cc86cc647-vsvbh".into()),
            pod_namespace: Some("default".into()),
            instance_ip: Some("172.17.0.7".parse().expect("ip")),
            ..ProxyConfig::default()
        };
        let meta = metadata_from_env([
            (
                "ISTIO_META_MESH_ID".to_string(),
                "cluster.local".to_string(),
            ),
            ("ISTIO_META_".to_string(), "skipped".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ]);
        assert_eq!(
            meta,
            BTreeMap::from([("MESH_ID".to_string(), "cluster.local".to_string())])
        );
        let n = node(&cfg, &meta);
        assert_eq!(
            n.id,
            "sidecar~172.17.0.7~ubuntu-deployment-cc86cc647-vsvbh.default~default.svc.cluster.local"
        );
        let m = xds::ads::node::node_metadata(&n);
        assert_eq!(m["CLUSTER_ID"], "Kubernetes");
        assert_eq!(m["MESH_ID"], "cluster.local");
        assert_eq!(m["NAME"], "ubuntu-deployment-cc86cc647-vsvbh");
    }
}
