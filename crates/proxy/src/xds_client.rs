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
//!
//! To Istio's secure port (15012, what injection puts in `PROXY_CONFIG`) the client talks as
//! Istio's agent does ([`XdsTls`], [`crate::control_plane`]): TLS 1.3 verified against the mesh
//! root file for the host of the address, and `authorization: Bearer <token>` on the stream, the
//! root and the token read again at every (re)connection. A wrong root, a missing or refused
//! token is logged with what to check, and retried with backoff like any lost connection.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use tonic::metadata::MetadataMap;
use xds::ProxyResources;
use xds::ads::client::{ChannelFuture, ClientError, Connect, MetadataFuture, endpoint};
use xds::ads::node::{META_CLUSTER_ID, META_SERVICE_ACCOUNT};
use xds::ads::{AdsClient, Node, ProxyId};

use crate::config::{ConfigStore, ProxyConfig};
use crate::control_plane::{SECURE_PORT, SecureConnector, bearer, port_of};
use crate::drain::DrainWatcher;
use crate::identity_source::{ISTIO_CA_ROOT_FILE, ISTIO_TOKEN_FILE};

/// Environment variables whose suffix becomes node metadata, as Istio's agent does
/// (`ISTIO_META_CLUSTER_ID=Kubernetes` → `CLUSTER_ID: Kubernetes`).
pub const META_ENV_PREFIX: &str = "ISTIO_META_";

/// The proxy's Istio id from its settings (`POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`); missing
/// parts become `unknown`, `default` and 127.0.0.1. A gateway's kind is `router`.
pub fn proxy_id(cfg: &ProxyConfig) -> ProxyId {
    let mut id = ProxyId::sidecar(
        cfg.instance_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        cfg.pod_name.as_deref().unwrap_or("unknown"),
        cfg.pod_namespace.as_deref().unwrap_or("default"),
    );
    if cfg.router {
        id.kind = "router".to_string();
    }
    id
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

/// The xDS node of this proxy: its id, the standard metadata, the cluster id, the service
/// account and `metadata` (an `ISTIO_META_*` key wins over the settings).
///
/// The secure port checks `SERVICE_ACCOUNT` against the token's (`xds::ads::identity`), so a
/// pod whose token belongs to another account is refused rather than served its config.
pub fn node(cfg: &ProxyConfig, metadata: &BTreeMap<String, String>) -> Node {
    let mut meta = BTreeMap::from([(META_CLUSTER_ID.to_string(), cfg.cluster_id.clone())]);
    if let Some(sa) = &cfg.service_account {
        meta.insert(META_SERVICE_ACCOUNT.to_string(), sa.clone());
    }
    meta.extend(metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    proxy_id(cfg).to_node(&meta)
}

/// `--xds-tls`: whether the discovery connection uses TLS and a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XdsTls {
    /// TLS when the address's port is Istio's secure one (15012), as Istio's agent decides.
    #[default]
    Auto,
    /// Always TLS + token.
    On,
    /// Never: plain HTTP/2 (Istio's 15010).
    Off,
}

impl FromStr for XdsTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(XdsTls::Auto),
            "on" => Ok(XdsTls::On),
            "off" => Ok(XdsTls::Off),
            _ => Err(format!("{s:?}: expected auto, on or off")),
        }
    }
}

/// Where and how the sidecar reaches the control plane's ADS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// `host:port` (Istio's `--discoveryAddress`, or `discoveryAddress` of `PROXY_CONFIG`), or
    /// an `http://` URI (plaintext).
    pub address: String,
    /// TLS or not.
    pub tls: XdsTls,
    /// The mesh root the server's certificate must chain to (`--ca-root-file`).
    pub root_file: PathBuf,
    /// The token sent as `authorization: Bearer` (`--token-file`).
    pub token_file: PathBuf,
}

impl DiscoveryOptions {
    /// `address` with TLS decided by its port, Istio's root and token files.
    pub fn new(address: impl Into<String>) -> DiscoveryOptions {
        DiscoveryOptions {
            address: address.into(),
            tls: XdsTls::Auto,
            root_file: PathBuf::from(ISTIO_CA_ROOT_FILE),
            token_file: PathBuf::from(ISTIO_TOKEN_FILE),
        }
    }

    /// Whether the connection uses TLS + token: `on`, or `auto` with port 15012 (never for an
    /// `http://` URI).
    pub fn uses_tls(&self) -> bool {
        match self.tls {
            XdsTls::On => true,
            XdsTls::Off => false,
            XdsTls::Auto => {
                !self.address.contains("://") && port_of(&self.address) == Some(SECURE_PORT)
            }
        }
    }
}

/// The discovery server's secure port: TLS ([`SecureConnector`]) and the token, both read again
/// at every connection attempt.
#[derive(Debug, Clone)]
pub struct SecureXds {
    connector: SecureConnector,
    endpoint: tonic::transport::Endpoint,
    token_file: Arc<Path>,
}

impl SecureXds {
    /// For `address` (`host:port`), verified against `root_file`, with the token of
    /// `token_file`. Nothing is read or dialled yet.
    pub fn new(address: &str, root_file: &Path, token_file: &Path) -> Result<Self, ClientError> {
        let bad = |message: String| ClientError::Address {
            address: address.to_string(),
            message,
        };
        let connector = SecureConnector::new(address, root_file).map_err(bad)?;
        let endpoint = connector.endpoint().map_err(bad)?;
        Ok(SecureXds {
            connector,
            endpoint,
            token_file: Arc::from(token_file),
        })
    }
}

impl Connect for SecureXds {
    fn connect(&self) -> ChannelFuture {
        let endpoint = self.endpoint.clone();
        let connector = self.connector.clone();
        Box::pin(async move { endpoint.connect_with_connector(connector).await })
    }

    fn metadata(&self) -> MetadataFuture {
        let token_file = self.token_file.clone();
        Box::pin(async move {
            let token = bearer(&token_file)
                .await
                .map_err(|e| ClientError::Credentials(e.to_string()))?;
            let mut metadata = MetadataMap::new();
            metadata.insert("authorization", token);
            Ok(metadata)
        })
    }

    fn credentials_hint(&self) -> Option<String> {
        Some(format!(
            "that {} holds this pod's current token, and that the control plane accepts it \
             (file-mode tokens: <state>/tokens; Kubernetes: TokenReview of the istio-ca audience)",
            self.token_file.display()
        ))
    }
}

/// A client for `address` (`host:port`, plain HTTP/2) presenting this proxy.
pub fn client(
    address: &str,
    cfg: &ProxyConfig,
    metadata: &BTreeMap<String, String>,
) -> Result<AdsClient, ClientError> {
    Ok(AdsClient::new(endpoint(address)?, node(cfg, metadata)))
}

/// A client as `opts` say (TLS + token, or plain HTTP/2) presenting this proxy.
pub fn client_for(
    opts: &DiscoveryOptions,
    cfg: &ProxyConfig,
    metadata: &BTreeMap<String, String>,
) -> Result<AdsClient, ClientError> {
    let node = node(cfg, metadata);
    if opts.uses_tls() {
        tracing::info!(
            address = %opts.address,
            root = %opts.root_file.display(),
            token = %opts.token_file.display(),
            "discovery over TLS with a token"
        );
        let secure = SecureXds::new(&opts.address, &opts.root_file, &opts.token_file)?;
        Ok(AdsClient::new(secure, node))
    } else {
        tracing::info!(address = %opts.address, "discovery over plaintext");
        Ok(AdsClient::new(endpoint(&opts.address)?, node))
    }
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
    fn tls_when_the_port_is_15012_or_asked() {
        let opts = |address: &str, tls| DiscoveryOptions {
            tls,
            ..DiscoveryOptions::new(address)
        };
        assert!(opts("istiod.istio-system.svc:15012", XdsTls::Auto).uses_tls());
        assert!(opts("10.0.0.1:15012", XdsTls::Auto).uses_tls());
        assert!(opts("[::1]:15012", XdsTls::Auto).uses_tls());
        assert!(!opts("istiod.istio-system.svc:15010", XdsTls::Auto).uses_tls());
        assert!(!opts("http://istiod:15012", XdsTls::Auto).uses_tls());
        assert!(opts("127.0.0.1:4000", XdsTls::On).uses_tls());
        assert!(!opts("istiod:15012", XdsTls::Off).uses_tls());
        assert_eq!("auto".parse(), Ok(XdsTls::Auto));
        assert_eq!("on".parse(), Ok(XdsTls::On));
        assert_eq!("off".parse(), Ok(XdsTls::Off));
        assert!("yes".parse::<XdsTls>().is_err());
        let d = DiscoveryOptions::new("istiod.istio-system.svc:15012");
        assert_eq!(d.root_file, Path::new(ISTIO_CA_ROOT_FILE));
        assert_eq!(d.token_file, Path::new(ISTIO_TOKEN_FILE));
    }

    #[test]
    fn node_from_settings_and_env() {
        let cfg = ProxyConfig {
            pod_name: Some("ubuntu-deployment-cc86cc647-vsvbh".into()),
            pod_namespace: Some("default".into()),
            instance_ip: Some("172.17.0.7".parse().expect("ip")),
            service_account: Some("default".into()),
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
        assert_eq!(m["SERVICE_ACCOUNT"], "default");
        // Without the setting there is no key: the control plane then checks the namespace only.
        let bare = node(&ProxyConfig::default(), &BTreeMap::new());
        assert!(!xds::ads::node::node_metadata(&bare).contains_key("SERVICE_ACCOUNT"));
        // ISTIO_META_SERVICE_ACCOUNT wins, as every ISTIO_META_* key does.
        let overridden = BTreeMap::from([("SERVICE_ACCOUNT".to_string(), "sleep".to_string())]);
        let m = xds::ads::node::node_metadata(&node(&cfg, &overridden));
        assert_eq!(m["SERVICE_ACCOUNT"], "sleep");
    }
}
