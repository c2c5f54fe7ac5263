//! The subset of Istio's Helm `values` that shapes the injected sidecar.
//!
//! Istio renders its injection template with these values (the `values` key of the ConfigMap
//! `istio-sidecar-injector`). Field names and defaults are those of Istio's default profile,
//! except the image: Istio's `docker.io/istio/proxyv2` runs Envoy and pilot-agent, ours runs the
//! `ama` binary, so the defaults are `global.hub: docker.io/ama`, `global.proxy.image: proxy` and
//! `global.tag:` this crate's version, giving `docker.io/ama/proxy:<version>`. As in Istio, an
//! image that contains `/` is taken as a full reference and `hub`/`tag` are not applied.
//! Unknown fields are accepted and ignored: a real Istio values file has hundreds. The values
//! serialise back under the same names (the `values` key `ama manifest generate` writes).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ConfigError;
use crate::validate::{CidrList, PortList, parse_quantity};

/// Default registry of Ama's images.
pub const DEFAULT_HUB: &str = "docker.io/ama";
/// Default name of the proxy image (it holds `ama` as `/usr/local/bin/ama`).
pub const DEFAULT_PROXY_IMAGE: &str = "proxy";
/// Default tag: the version of this build.
pub const DEFAULT_TAG: &str = env!("CARGO_PKG_VERSION");

/// Istio values used by injection.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub struct Values {
    /// `global.*`
    pub global: Global,
    /// `sidecarInjectorWebhook.*`
    pub sidecar_injector_webhook: SidecarInjectorWebhook,
    /// `revision`: the control-plane revision ("" is the default revision).
    #[serde(deserialize_with = "scalar_string")]
    pub revision: String,
    /// `pilot.*`
    pub pilot: Pilot,
}

/// `pilot.*`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct Pilot {
    /// `pilot.cni.*`: Istio's CNI plugin sets up capture, so injection adds the
    /// `istio-validation` init container instead of `istio-init`.
    pub cni: Cni,
    /// `pilot.env`: istiod's environment. Injection reads `ENABLE_NATIVE_SIDECARS`.
    pub env: BTreeMap<String, serde_json::Value>,
}

impl Pilot {
    /// `pilot.env.ENABLE_NATIVE_SIDECARS` is `true` (a boolean or the string): inject
    /// `istio-proxy` as a native sidecar.
    pub fn native_sidecars(&self) -> bool {
        match self.env.get("ENABLE_NATIVE_SIDECARS") {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }
}

/// `pilot.cni.*` (what `components.cni.enabled` sets).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct Cni {
    /// Whether the CNI plugin captures traffic.
    pub enabled: bool,
    /// `default` or `multus` (then the pod asks Multus for the `istio-cni` network).
    pub provider: String,
}

/// `global.*`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Global {
    /// Registry of the proxy image.
    #[serde(deserialize_with = "scalar_string")]
    pub hub: String,
    /// Tag of the proxy image.
    #[serde(deserialize_with = "scalar_string")]
    pub tag: String,
    /// `imagePullPolicy` of the injected containers (unset: Kubernetes' default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Secrets added to the pod's `imagePullSecrets`.
    pub image_pull_secrets: Vec<String>,
    /// Namespace of the control plane.
    pub istio_namespace: String,
    /// Address of the CA (default: the control plane, `istiod[-rev].<ns>.svc:15012`).
    pub ca_address: String,
    /// Mesh id (default: the trust domain).
    #[serde(rename = "meshID")]
    pub mesh_id: String,
    /// Trust domain, used when the MeshConfig does not set one.
    pub trust_domain: String,
    /// `multiCluster.clusterName` (default `Kubernetes`).
    pub multi_cluster: MultiCluster,
    /// `logging.level` of the agent (default `default:info`).
    pub logging: Logging,
    /// `proxy.*`
    pub proxy: Proxy,
    /// `sds.token.aud`: audience of the projected token (default `istio-ca`).
    pub sds: Sds,
    /// `pilotCertProvider` (default `istiod`): who signs the control plane's certificate.
    pub pilot_cert_provider: String,
    /// `network`: the network of the cluster's pods (`ISTIO_META_NETWORK`), if set.
    pub network: String,
    /// `mountMtlsCerts`: mount the secret `istio.<service account>` at `/etc/certs/` (Istio's
    /// old file-mounted certificates).
    pub mount_mtls_certs: bool,
}

impl Default for Global {
    fn default() -> Self {
        Global {
            hub: DEFAULT_HUB.to_string(),
            tag: DEFAULT_TAG.to_string(),
            image_pull_policy: None,
            image_pull_secrets: Vec::new(),
            istio_namespace: "istio-system".to_string(),
            ca_address: String::new(),
            mesh_id: String::new(),
            trust_domain: String::new(),
            multi_cluster: MultiCluster::default(),
            logging: Logging::default(),
            proxy: Proxy::default(),
            sds: Sds::default(),
            pilot_cert_provider: "istiod".to_string(),
            network: String::new(),
            mount_mtls_certs: false,
        }
    }
}

/// `global.multiCluster.*`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MultiCluster {
    /// Cluster id given to proxies.
    pub cluster_name: String,
}

impl Default for MultiCluster {
    fn default() -> Self {
        MultiCluster {
            cluster_name: "Kubernetes".to_string(),
        }
    }
}

/// `global.logging.*`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Logging {
    /// Agent log levels, `scope:level,…`.
    pub level: String,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            level: "default:info".to_string(),
        }
    }
}

/// `global.sds.*`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct Sds {
    /// `token.*`
    pub token: SdsToken,
}

/// `global.sds.token.*`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct SdsToken {
    /// Audience of the service-account token the proxy presents to the CA.
    pub aud: String,
}

impl Default for SdsToken {
    fn default() -> Self {
        SdsToken {
            aud: "istio-ca".to_string(),
        }
    }
}

/// `global.proxy.*`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Proxy {
    /// Image name (joined with hub and tag) or full reference (contains `/`).
    pub image: String,
    /// DNS suffix of the cluster.
    pub cluster_domain: String,
    /// Data-plane log level.
    pub log_level: String,
    /// Data-plane per-component log levels.
    pub component_log_level: String,
    /// Status port of the proxy (health, merged metrics, app probes).
    pub status_port: u16,
    /// Outbound ranges captured (`*` or CIDRs).
    #[serde(rename = "includeIPRanges")]
    pub include_ip_ranges: String,
    /// Outbound ranges not captured.
    #[serde(rename = "excludeIPRanges")]
    pub exclude_ip_ranges: String,
    /// Inbound ports captured (`*` or ports).
    pub include_inbound_ports: String,
    /// Inbound ports not captured.
    pub exclude_inbound_ports: String,
    /// Outbound ports always captured.
    pub include_outbound_ports: String,
    /// Outbound ports not captured.
    pub exclude_outbound_ports: String,
    /// Resources of the proxy and init containers.
    pub resources: Resources,
    /// Run the proxy privileged (debugging only).
    pub privileged: bool,
    /// Readiness probe of the proxy: initial delay.
    pub readiness_initial_delay_seconds: u32,
    /// Readiness probe of the proxy: period.
    pub readiness_period_seconds: u32,
    /// Readiness probe of the proxy: failures before unready.
    pub readiness_failure_threshold: u32,
    /// Start the apps only once the proxy is ready (the proxy first, with a postStart hook).
    pub hold_application_until_proxy_starts: bool,
    /// `startupProbe.*` of the proxy.
    pub startup_probe: StartupProbe,
}

/// `global.proxy.startupProbe.*`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StartupProbe {
    /// Whether the proxy gets a startup probe (default true).
    pub enabled: bool,
    /// Failures (one a second) before the kubelet restarts the proxy (default 600).
    pub failure_threshold: u32,
}

impl Default for StartupProbe {
    fn default() -> Self {
        StartupProbe {
            enabled: true,
            failure_threshold: 600,
        }
    }
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            image: DEFAULT_PROXY_IMAGE.to_string(),
            cluster_domain: "cluster.local".to_string(),
            log_level: "warning".to_string(),
            component_log_level: "misc:error".to_string(),
            status_port: 15020,
            include_ip_ranges: "*".to_string(),
            exclude_ip_ranges: String::new(),
            include_inbound_ports: "*".to_string(),
            exclude_inbound_ports: String::new(),
            include_outbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            resources: Resources::default(),
            privileged: false,
            readiness_initial_delay_seconds: 0,
            readiness_period_seconds: 15,
            readiness_failure_threshold: 4,
            hold_application_until_proxy_starts: false,
            startup_probe: StartupProbe::default(),
        }
    }
}

/// Container resources: quantities by resource name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Resources {
    /// `requests`
    #[serde(deserialize_with = "quantity_map")]
    pub requests: BTreeMap<String, String>,
    /// `limits`
    #[serde(deserialize_with = "quantity_map")]
    pub limits: BTreeMap<String, String>,
}

impl Default for Resources {
    fn default() -> Self {
        let map = |cpu: &str, memory: &str| {
            BTreeMap::from([
                ("cpu".to_string(), cpu.to_string()),
                ("memory".to_string(), memory.to_string()),
            ])
        };
        Resources {
            requests: map("100m", "128Mi"),
            limits: map("2", "1Gi"),
        }
    }
}

/// `sidecarInjectorWebhook.*`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct SidecarInjectorWebhook {
    /// Rewrite app probes to go through the proxy's status port (default true).
    #[serde(rename = "rewriteAppHTTPProbe")]
    pub rewrite_app_http_probe: bool,
}

impl Default for SidecarInjectorWebhook {
    fn default() -> Self {
        SidecarInjectorWebhook {
            rewrite_app_http_probe: true,
        }
    }
}

fn is_wrapped(value: &serde_json::Value) -> bool {
    value.as_object().is_some_and(is_wrapped_map)
}

fn is_wrapped_map(map: &serde_json::Map<String, serde_json::Value>) -> bool {
    map.contains_key("values") && !map.contains_key("global")
}

/// Accepts a string or a number (`tag: 1.24`) and keeps its text.
fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// Quantities may be written as numbers (`cpu: 2`); Kubernetes wants strings. A `null`
/// quantity is left out, as Istio's template does (`omitNil`): `limits: {cpu: null}` unsets the
/// default CPU limit.
fn quantity_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = Option::<BTreeMap<String, serde_json::Value>>::deserialize(d)?.unwrap_or_default();
    raw.into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "{k}: {other} is not a quantity"
                    )));
                }
            };
            parse_quantity(&text)
                .map(|q| (k, q))
                .map_err(serde::de::Error::custom)
        })
        .collect()
}

impl Values {
    /// Parses values from YAML or JSON: either the values themselves or a document with a
    /// top-level `values:` key holding them. Then checks the fields of small value languages.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let value: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::yaml("values", e))?;
        if is_wrapped(&value) || value.is_null() {
            return Self::from_value(value);
        }
        // Typed parse of the text itself, so that errors carry line and column.
        let values: Values =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::yaml("values", e))?;
        values.check()?;
        Ok(values)
    }

    /// Builds values from a parsed value.
    pub fn from_value(value: serde_json::Value) -> Result<Self, ConfigError> {
        let value = match value {
            serde_json::Value::Null => return Ok(Values::default()),
            serde_json::Value::Object(mut map) if is_wrapped_map(&map) => {
                map.remove("values").unwrap_or_default()
            }
            other => other,
        };
        let values: Values =
            serde_json::from_value(value).map_err(|e| ConfigError::yaml("values", e))?;
        values.check()?;
        Ok(values)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let p = &self.global.proxy;
        let field = |name: &str| format!("global.proxy.{name}");
        PortList::parse(&p.include_inbound_ports, true)
            .map_err(|m| ConfigError::field(field("includeInboundPorts"), m))?;
        for (name, v) in [
            ("excludeInboundPorts", &p.exclude_inbound_ports),
            ("includeOutboundPorts", &p.include_outbound_ports),
            ("excludeOutboundPorts", &p.exclude_outbound_ports),
        ] {
            PortList::parse(v, false).map_err(|m| ConfigError::field(field(name), m))?;
        }
        for (name, v) in [
            ("includeIPRanges", &p.include_ip_ranges),
            ("excludeIPRanges", &p.exclude_ip_ranges),
        ] {
            CidrList::parse(v).map_err(|m| ConfigError::field(field(name), m))?;
        }
        if let Some(policy) = &self.global.image_pull_policy
            && !matches!(policy.as_str(), "Always" | "IfNotPresent" | "Never" | "")
        {
            return Err(ConfigError::field(
                "global.imagePullPolicy",
                format!("\"{policy}\" is not Always, IfNotPresent or Never"),
            ));
        }
        Ok(())
    }

    /// The proxy image: `global.proxy.image` if it is a full reference, else
    /// `<global.hub>/<global.proxy.image>:<global.tag>`.
    pub fn proxy_image(&self) -> String {
        let image = &self.global.proxy.image;
        if image.contains('/') {
            image.clone()
        } else {
            format!("{}/{}:{}", self.global.hub, image, self.global.tag)
        }
    }

    /// Address of the CA: `global.caAddress`, else the control plane of this revision.
    pub fn ca_address(&self) -> String {
        if !self.global.ca_address.is_empty() {
            return self.global.ca_address.clone();
        }
        self.istiod_address()
    }

    /// The control plane of this revision: `istiod[-<revision>].<istioNamespace>.svc:15012`.
    pub fn istiod_address(&self) -> String {
        let rev = match self.revision.as_str() {
            "" | "default" => String::new(),
            r => format!("-{r}"),
        };
        format!("istiod{rev}.{}.svc:15012", self.global.istio_namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_istio_default_profile_with_our_image() {
        let v = Values::default();
        assert_eq!(
            v.proxy_image(),
            format!("docker.io/ama/proxy:{DEFAULT_TAG}")
        );
        assert_eq!(v.ca_address(), "istiod.istio-system.svc:15012");
        assert_eq!(v.global.proxy.resources.limits["cpu"], "2");
        assert!(v.sidecar_injector_webhook.rewrite_app_http_probe);
    }

    #[test]
    fn parses_partial_values() {
        let v = Values::from_yaml(
            "global:\n  hub: docker.io/istio\n  tag: 1.24\n  proxy:\n    image: proxyv2\n    resources:\n      limits: {cpu: 1}\nrevision: canary\n",
        )
        .unwrap();
        assert_eq!(v.proxy_image(), "docker.io/istio/proxyv2:1.24");
        assert_eq!(v.global.proxy.resources.limits["cpu"], "1");
        // Like Helm, fields not written keep their defaults.
        assert_eq!(v.global.proxy.resources.requests["cpu"], "100m");
        assert_eq!(v.ca_address(), "istiod-canary.istio-system.svc:15012");
        assert_eq!(v.global.proxy.status_port, 15020);
    }

    #[test]
    fn rejects_bad_fields() {
        let err = Values::from_yaml("global:\n  proxy:\n    excludeInboundPorts: \"80,abc\"\n")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "global.proxy.excludeInboundPorts: \"abc\" is not a port"
        );
        assert!(Values::from_yaml("global:\n  proxy:\n    statusPort: x\n").is_err());
        assert!(
            Values::from_yaml("global:\n  proxy:\n    resources:\n      limits: {cpu: lots}\n")
                .is_err()
        );
    }
}
