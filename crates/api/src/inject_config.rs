//! `--injectConfigFile`: mesh config and values from one file a cluster already has.
//!
//! Istio's injector is configured by two ConfigMaps in `istio-system`: `istio` (key `mesh`: the
//! MeshConfig) and `istio-sidecar-injector` (key `values`: the Helm values as JSON; key `config`:
//! the Go template and policy). An install is described by an `IstioOperator`, whose
//! `spec.meshConfig` and `spec.values` hold the same two things. This file accepts any of the
//! three, so `kubectl -n istio-system get cm istio-sidecar-injector -o yaml` or the operator file
//! used at install time can be passed as is. Ama's sidecar template is built in: the `config`
//! key of the injector ConfigMap is not read.

use serde_json::Value;

use crate::error::ConfigError;
use crate::mesh::MeshConfig;
use crate::values::Values;

/// What an injector config file provided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InjectConfigFile {
    /// The MeshConfig, if the file had one.
    pub mesh: Option<MeshConfig>,
    /// The values, if the file had them.
    pub values: Option<Values>,
}

impl InjectConfigFile {
    /// Parses a ConfigMap (`istio-sidecar-injector` or `istio`) or an `IstioOperator`.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let doc: Value =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::yaml("injector config", e))?;
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
        let mut out = InjectConfigFile::default();
        match kind {
            "ConfigMap" => {
                if let Some(values) = doc.pointer("/data/values") {
                    let text = values
                        .as_str()
                        .ok_or_else(|| ConfigError::field("data.values", "must be a string"))?;
                    out.values =
                        Some(Values::from_yaml(text).map_err(|e| e.nested("data.values"))?);
                }
                if let Some(mesh) = doc.pointer("/data/mesh") {
                    let text = mesh
                        .as_str()
                        .ok_or_else(|| ConfigError::field("data.mesh", "must be a string"))?;
                    out.mesh =
                        Some(MeshConfig::from_yaml(text).map_err(|e| e.nested("data.mesh"))?);
                }
            }
            "IstioOperator" => {
                if let Some(values) = doc.pointer("/spec/values") {
                    out.values = Some(
                        Values::from_value(values.clone()).map_err(|e| e.nested("spec.values"))?,
                    );
                }
                if let Some(mesh) = doc.pointer("/spec/meshConfig") {
                    out.mesh = Some(
                        MeshConfig::from_value(mesh.clone())
                            .map_err(|e| e.nested("spec.meshConfig"))?,
                    );
                }
            }
            other => {
                return Err(ConfigError::field(
                    "kind",
                    format!(
                        "\"{other}\": expected a ConfigMap (istio-sidecar-injector or istio) or an IstioOperator"
                    ),
                ));
            }
        }
        if out.mesh.is_none() && out.values.is_none() {
            return Err(ConfigError::field(
                if kind == "ConfigMap" { "data" } else { "spec" },
                "holds neither values nor a mesh config",
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injector_configmap_and_operator() {
        let cm = "apiVersion: v1\nkind: ConfigMap\ndata:\n  config: 'policy: enabled'\n  values: '{\"global\":{\"hub\":\"r.example\",\"tag\":\"t\"}}'\n";
        let f = InjectConfigFile::from_yaml(cm).unwrap();
        assert_eq!(f.values.unwrap().proxy_image(), "r.example/proxy:t");
        assert!(f.mesh.is_none());

        let iop = "kind: IstioOperator\nspec:\n  meshConfig:\n    trustDomain: td\n  values:\n    global:\n      meshID: m\n";
        let f = InjectConfigFile::from_yaml(iop).unwrap();
        assert_eq!(f.mesh.unwrap().trust_domain, "td");
        assert_eq!(f.values.unwrap().global.mesh_id, "m");

        assert!(InjectConfigFile::from_yaml("kind: Deployment\n").is_err());
        assert!(InjectConfigFile::from_yaml("kind: ConfigMap\ndata: {}\n").is_err());
    }
}
