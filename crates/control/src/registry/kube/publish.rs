//! What the control plane writes to the API server: the mesh's root certificate in every
//! namespace, and the CA bundle of the injection webhook.
//!
//! - ConfigMap `istio-ca-root-cert` (key `root-cert.pem`, label `istio.io/config: "true"`), as
//!   istiod's namespace controller publishes it: proxies mount it to verify the control plane.
//!   Create, then on `409 AlreadyExists` read and replace (with the read `resourceVersion`, so
//!   a concurrent writer makes us read again) only when the content differs: the verbs of
//!   Istio's ClusterRole (`create`, `get`, `update`), which `ama manifest generate` grants too.
//!   Kubernetes' own namespaces ([`SKIPPED_NAMESPACES`]) and terminating ones are left alone.
//! - The `caBundle` of each webhook of the MutatingWebhookConfiguration
//!   (`INJECTION_WEBHOOK_CONFIG_NAME`, default `istio-sidecar-injector`), patched by name
//!   (strategic merge on `webhooks`) only when it differs.

use std::collections::BTreeMap;

use ::kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use ::kube::{Client, ResourceExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use serde_json::{Value, json};

use super::KubeError;

/// Name of the ConfigMap holding the root certificate in every namespace.
pub const ROOT_CERT_CONFIG_MAP: &str = "istio-ca-root-cert";
/// Its key.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// Label Istio puts on the config maps it owns.
pub const CONFIG_LABEL: &str = "istio.io/config";
/// Field manager of everything the control plane writes.
pub const FIELD_MANAGER: &str = "ama-discovery";
/// Environment variable naming the injection webhook configuration (Istio's).
pub const WEBHOOK_CONFIG_NAME_ENV: &str = "INJECTION_WEBHOOK_CONFIG_NAME";
/// Its default.
pub const DEFAULT_WEBHOOK_CONFIG_NAME: &str = "istio-sidecar-injector";
/// Namespaces that never get the root certificate (Istio's list).
pub const SKIPPED_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// The injection webhook configuration's name: `$INJECTION_WEBHOOK_CONFIG_NAME`, else
/// `istio-sidecar-injector`.
pub fn injection_webhook_config_name() -> String {
    std::env::var(WEBHOOK_CONFIG_NAME_ENV)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_WEBHOOK_CONFIG_NAME.to_string())
}

/// Whether namespace `name` gets the root certificate.
pub fn publishes_to(name: &str) -> bool {
    !SKIPPED_NAMESPACES.contains(&name)
}

/// Writes `istio-ca-root-cert` into every namespace that gets it (one list, then one
/// server-side apply per namespace). Returns the namespaces written. Stops at the first
/// failure: the caller retries, and applying again is harmless.
pub async fn publish_root(client: &Client, root_pem: &str) -> Result<Vec<String>, KubeError> {
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&Default::default())
        .await
        .map_err(|error| KubeError::Api {
            what: "listing namespaces".into(),
            error,
        })?;
    let mut written = Vec::new();
    for ns in namespaces {
        let terminating =
            ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
        let name = ns.name_any();
        if terminating || !publishes_to(&name) {
            continue;
        }
        publish_root_to(client, &name, root_pem).await?;
        written.push(name);
    }
    Ok(written)
}

/// What [`publish_root_to`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The ConfigMap was created.
    Created,
    /// It existed with other content and was replaced.
    Updated,
    /// It already held the root.
    Unchanged,
}

/// Replace attempts when another writer keeps changing the ConfigMap between read and write.
const REPLACE_ATTEMPTS: usize = 3;

/// Writes `istio-ca-root-cert` into `namespace`: create, else read and replace when it differs.
pub async fn publish_root_to(
    client: &Client,
    namespace: &str,
    root_pem: &str,
) -> Result<Published, KubeError> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let what = |verb: &str| format!("{verb} ConfigMap {namespace}/{ROOT_CERT_CONFIG_MAP}");
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PostParams::default()
    };
    match api
        .create(&params, &root_config_map(namespace, root_pem))
        .await
    {
        Ok(_) => {
            tracing::debug!(namespace, "{ROOT_CERT_CONFIG_MAP} created");
            return Ok(Published::Created);
        }
        Err(::kube::Error::Api(s)) if s.code == 409 => {}
        Err(error) => {
            return Err(KubeError::Api {
                what: what("creating"),
                error,
            });
        }
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut current = api
            .get(ROOT_CERT_CONFIG_MAP)
            .await
            .map_err(|error| KubeError::Api {
                what: what("reading"),
                error,
            })?;
        let labelled = current
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(CONFIG_LABEL))
            .is_some_and(|v| v == "true");
        let current_pem = current.data.as_ref().and_then(|d| d.get(ROOT_CERT_KEY));
        if labelled && current_pem.map(String::as_str) == Some(root_pem) {
            return Ok(Published::Unchanged);
        }
        current
            .data
            .get_or_insert_default()
            .insert(ROOT_CERT_KEY.to_string(), root_pem.to_string());
        current
            .metadata
            .labels
            .get_or_insert_default()
            .insert(CONFIG_LABEL.to_string(), "true".to_string());
        match api.replace(ROOT_CERT_CONFIG_MAP, &params, &current).await {
            Ok(_) => {
                tracing::info!(namespace, "{ROOT_CERT_CONFIG_MAP} updated");
                return Ok(Published::Updated);
            }
            // Changed since we read it: read again.
            Err(::kube::Error::Api(s)) if s.code == 409 && attempt < REPLACE_ATTEMPTS => {}
            Err(error) => {
                return Err(KubeError::Api {
                    what: what("replacing"),
                    error,
                });
            }
        }
    }
}

/// The root ConfigMap of `namespace`, as created.
pub fn root_config_map(namespace: &str, root_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CERT_CONFIG_MAP.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                CONFIG_LABEL.to_string(),
                "true".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CERT_KEY.to_string(),
            root_pem.to_string(),
        )])),
        ..ConfigMap::default()
    }
}

/// Sets the `caBundle` of every webhook of the MutatingWebhookConfiguration `name` to
/// `ca_pem` (the CA that signed the webhook's serving certificate). Returns whether it patched:
/// nothing is written when every webhook already has it.
pub async fn patch_webhook_ca_bundle(
    client: &Client,
    name: &str,
    ca_pem: &str,
) -> Result<bool, KubeError> {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let config = api.get(name).await.map_err(|error| KubeError::Api {
        what: format!("reading MutatingWebhookConfiguration {name}"),
        error,
    })?;
    let wanted = ByteString(ca_pem.as_bytes().to_vec());
    let stale: Vec<&str> = config
        .webhooks
        .iter()
        .flatten()
        .filter(|w| w.client_config.ca_bundle.as_ref() != Some(&wanted))
        .map(|w| w.name.as_str())
        .collect();
    if stale.is_empty() {
        return Ok(false);
    }
    let body = ca_bundle_patch(&stale, ca_pem);
    api.patch(name, &PatchParams::default(), &Patch::Strategic(&body))
        .await
        .map_err(|error| KubeError::Api {
            what: format!("patching the caBundle of MutatingWebhookConfiguration {name}"),
            error,
        })?;
    tracing::info!(
        "MutatingWebhookConfiguration {name}: caBundle set on {}",
        stale.join(", ")
    );
    Ok(true)
}

/// The strategic-merge patch setting `caBundle` (base64 of the PEM) on the webhooks `names`
/// (merged by name, so the other fields of each webhook are kept).
pub fn ca_bundle_patch(names: &[&str], ca_pem: &str) -> Value {
    // ByteString serialises as the API server expects a []byte: base64.
    let bundle =
        serde_json::to_value(ByteString(ca_pem.as_bytes().to_vec())).unwrap_or(Value::Null);
    json!({
        "webhooks": names.iter().map(|name| json!({
            "name": name,
            "clientConfig": { "caBundle": bundle },
        })).collect::<Vec<_>>(),
    })
}
