//! The MutatingWebhookConfiguration `istio-sidecar-injector`: Istio's four injection webhooks,
//! each sending pod creations to `istiod`'s `/inject`.
//!
//! | webhook | namespace | pod |
//! | --- | --- | --- |
//! | `rev.namespace.sidecar-injector.istio.io` | `istio.io/rev=default`, no `istio-injection` | `sidecar.istio.io/inject` not `false` |
//! | `rev.object.sidecar-injector.istio.io` | neither label | `istio.io/rev=default`, `sidecar.istio.io/inject` not `false` |
//! | `namespace.sidecar-injector.istio.io` | `istio-injection=enabled` | `sidecar.istio.io/inject` not `false` |
//! | `object.sidecar-injector.istio.io` | neither label | `sidecar.istio.io/inject=true`, no `istio.io/rev` |
//!
//! The same rules, applied without an API server, are `inject::injection_required`.

use base64::Engine;
use serde_json::{Value, json};

use crate::control_plane::ISTIOD;
use crate::{ManifestError, Settings};

/// Name of the MutatingWebhookConfiguration.
pub const WEBHOOK_CONFIGURATION_NAME: &str = "istio-sidecar-injector";
/// Path of the injection endpoint on the control plane.
pub const INJECT_PATH: &str = "/inject";

/// The configuration and the notes for the user.
pub fn configuration(s: &Settings) -> Result<(Value, Vec<String>), ManifestError> {
    let mut notes = Vec::new();
    let ca_bundle = match &s.ca_cert_pem {
        Some(pem) => {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ManifestError::CaNotPem);
            }
            Some(base64::engine::general_purpose::STANDARD.encode(pem.as_bytes()))
        }
        None => {
            notes.push(format!(
                "MutatingWebhookConfiguration {WEBHOOK_CONFIGURATION_NAME} has no caBundle: \
                 `ama discovery` patches it with its CA at start-up, as istiod does (pass \
                 --ca-cert to set it now)"
            ));
            None
        }
    };
    let expression = |key: &str, operator: &str, values: &[&str]| {
        let mut e = json!({"key": key, "operator": operator});
        if !values.is_empty() {
            e["values"] = json!(values);
        }
        e
    };
    let not_false = expression("sidecar.istio.io/inject", "NotIn", &["false"]);
    let webhooks = [
        (
            "rev.namespace.sidecar-injector.istio.io",
            vec![
                expression("istio.io/rev", "In", &["default"]),
                expression("istio-injection", "DoesNotExist", &[]),
            ],
            vec![not_false.clone()],
        ),
        (
            "rev.object.sidecar-injector.istio.io",
            vec![
                expression("istio.io/rev", "DoesNotExist", &[]),
                expression("istio-injection", "DoesNotExist", &[]),
            ],
            vec![
                not_false.clone(),
                expression("istio.io/rev", "In", &["default"]),
            ],
        ),
        (
            "namespace.sidecar-injector.istio.io",
            vec![expression("istio-injection", "In", &["enabled"])],
            vec![not_false],
        ),
        (
            "object.sidecar-injector.istio.io",
            vec![
                expression("istio-injection", "DoesNotExist", &[]),
                expression("istio.io/rev", "DoesNotExist", &[]),
            ],
            vec![
                expression("sidecar.istio.io/inject", "In", &["true"]),
                expression("istio.io/rev", "DoesNotExist", &[]),
            ],
        ),
    ];
    let webhooks: Vec<Value> = webhooks
        .into_iter()
        .map(|(name, namespace, object)| {
            let mut client = json!({
                "service": {
                    "name": ISTIOD,
                    "namespace": s.namespace(),
                    "path": INJECT_PATH,
                    "port": 443,
                },
            });
            if let Some(bundle) = &ca_bundle {
                client["caBundle"] = json!(bundle);
            }
            json!({
                "name": name,
                "clientConfig": client,
                "rules": [{
                    "operations": ["CREATE"],
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["pods"],
                }],
                "namespaceSelector": {"matchExpressions": namespace},
                "objectSelector": {"matchExpressions": object},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "reinvocationPolicy": "Never",
                "admissionReviewVersions": ["v1"],
            })
        })
        .collect();
    let configuration = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {
            "name": WEBHOOK_CONFIGURATION_NAME,
            "labels": {"app": "sidecar-injector", "istio.io/rev": "default"},
        },
        "webhooks": webhooks,
    });
    Ok((configuration, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_bundle_is_base64_of_the_pem_or_absent_with_a_note() {
        let mut s = Settings::default();
        let (config, notes) = configuration(&s).unwrap();
        assert_eq!(notes.len(), 1);
        assert!(
            config["webhooks"][0]["clientConfig"]
                .get("caBundle")
                .is_none()
        );
        let names: Vec<&str> = config["webhooks"]
            .as_array()
            .map(|w| w.iter().filter_map(|w| w["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(names.contains(&"namespace.sidecar-injector.istio.io"));
        assert!(names.contains(&"object.sidecar-injector.istio.io"));

        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        s.ca_cert_pem = Some(pem.to_string());
        let (config, notes) = configuration(&s).unwrap();
        assert!(notes.is_empty());
        let bundle = config["webhooks"][3]["clientConfig"]["caBundle"]
            .as_str()
            .unwrap_or_default();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(bundle)
            .unwrap_or_default();
        assert_eq!(decoded, pem.as_bytes());

        s.ca_cert_pem = Some("not a certificate".into());
        assert_eq!(configuration(&s).unwrap_err(), ManifestError::CaNotPem);
    }
}
