//! The install manifests of the mesh, as `istioctl manifest generate` prints Istio's: what
//! `kubectl apply -f -` needs to run Ama's control plane in a cluster.
//!
//! [`generate`] returns the objects in apply order:
//!
//! 1. the CustomResourceDefinitions of the Istio kinds Ama reads ([`crds`]): `networking.istio.io`
//!    VirtualService, DestinationRule, Gateway, ServiceEntry, Sidecar and `security.istio.io`
//!    PeerAuthentication, AuthorizationPolicy, with Istio's names, versions and printer columns;
//! 2. the control plane ([`control_plane`]): Namespace `istio-system`, ServiceAccount, RBAC,
//!    the ConfigMaps `istio` (key `mesh`: the MeshConfig) and `istio-sidecar-injector` (key
//!    `values`: the injector's values, which `ama kube-inject --injectConfigFile` reads), the
//!    Deployment `istiod` running `ama discovery` and its Service;
//! 3. the MutatingWebhookConfiguration `istio-sidecar-injector` ([`webhook`]) with Istio's four
//!    selectors, pointing at `istiod`'s `/inject`;
//! 4. the gateways of the profile ([`gateways`], `--set profile=default|demo|minimal` as
//!    istioctl takes it): `istio-ingressgateway` (default and demo) and `istio-egressgateway`
//!    (demo), Deployments of Istio's gateway shape for the injector's `gateway` template.
//!
//! Names are Istio's wherever users or tools rely on them (`istiod`, `istio-system`, the
//! ConfigMaps, the webhook names, the ports); the image is Ama's (`docker.io/ama/proxy:<version>`,
//! the one image holding the `ama` binary). [`render`] writes the objects as one YAML stream.
//!
//! Pure: no I/O. The CLI reads `--ca-cert` and passes the PEM in.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod control_plane;
pub mod crds;
pub mod gateways;
pub mod webhook;

use api::Values;
pub use gateways::Profile;
use serde_json::Value;

/// The settings a manifest is generated from: Istio's default profile unless `--set` changed
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The Istio values (`global.hub`, `global.tag`, `global.istioNamespace` …); they also go,
    /// whole, into the `istio-sidecar-injector` ConfigMap.
    pub values: Values,
    /// MeshConfig `accessLogFile` (empty: no access log).
    pub access_log_file: String,
    /// MeshConfig `accessLogEncoding` (`TEXT` or `JSON`); unset leaves Istio's default (TEXT).
    pub access_log_encoding: Option<String>,
    /// MeshConfig `trustDomain`.
    pub trust_domain: String,
    /// PEM of the CA that signed the webhook's serving certificate; its base64 goes into the
    /// webhook's `caBundle`. Without it the control plane patches `caBundle` at start-up.
    pub ca_cert_pem: Option<String>,
    /// The installation profile: which gateways come with the control plane.
    pub profile: Profile,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            values: Values::default(),
            access_log_file: String::new(),
            access_log_encoding: None,
            trust_domain: api::mesh::DEFAULT_TRUST_DOMAIN.to_string(),
            ca_cert_pem: None,
            profile: Profile::Default,
        }
    }
}

/// The keys `--set` understands, as `istioctl --set` spells them.
pub const SET_KEYS: [&str; 9] = [
    "profile",
    "hub",
    "tag",
    "values.global.hub",
    "values.global.tag",
    "values.global.istioNamespace",
    "meshConfig.accessLogFile",
    "meshConfig.accessLogEncoding",
    "meshConfig.trustDomain",
];

/// Why a manifest could not be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// `--set` with a key not in [`SET_KEYS`].
    #[error("--set {key}: unknown key (known: {})", SET_KEYS.join(", "))]
    UnknownKey {
        /// The key as given.
        key: String,
    },
    /// `--set` without `=`.
    #[error("--set {0}: expected key=value")]
    NotKeyValue(String),
    /// A value outside its language.
    #[error("--set {key}={value}: {message}")]
    BadValue {
        /// The key.
        key: String,
        /// The value as given.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// The CA certificate is not PEM.
    #[error("the CA certificate is not PEM (no \"-----BEGIN CERTIFICATE-----\" block)")]
    CaNotPem,
}

impl Settings {
    /// Applies one `--set key=value`.
    pub fn set(&mut self, assignment: &str) -> Result<(), ManifestError> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| ManifestError::NotKeyValue(assignment.to_string()))?;
        let bad = |message: &str| ManifestError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            message: message.to_string(),
        };
        match key {
            "profile" => {
                self.profile = Profile::parse(value).ok_or_else(|| {
                    bad(&format!(
                        "unknown profile (known: {})",
                        Profile::NAMES.join(", ")
                    ))
                })?;
            }
            "hub" | "values.global.hub" => {
                if value.is_empty() || value.contains(char::is_whitespace) {
                    return Err(bad("not an image registry (such as docker.io/ama)"));
                }
                self.values.global.hub = value.to_string();
            }
            "tag" | "values.global.tag" => {
                if value.is_empty() || value.contains(['/', ':', ' ']) {
                    return Err(bad("not an image tag"));
                }
                self.values.global.tag = value.to_string();
            }
            "values.global.istioNamespace" => {
                api::check::dns_name(value, false).map_err(|m| bad(&m))?;
                if value.contains('.') {
                    return Err(bad("not a namespace name (no dots)"));
                }
                self.values.global.istio_namespace = value.to_string();
            }
            "meshConfig.accessLogFile" => self.access_log_file = value.to_string(),
            "meshConfig.accessLogEncoding" => match value {
                "TEXT" | "JSON" => self.access_log_encoding = Some(value.to_string()),
                _ => return Err(bad("must be TEXT or JSON")),
            },
            "meshConfig.trustDomain" => {
                api::check::dns_name(value, true).map_err(|m| bad(&m))?;
                self.trust_domain = value.to_string();
            }
            _ => {
                return Err(ManifestError::UnknownKey {
                    key: key.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The control plane's namespace (`istio-system` by default).
    pub fn namespace(&self) -> &str {
        &self.values.global.istio_namespace
    }
}

/// The generated objects, and what the user should know about them.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The objects, in apply order.
    pub objects: Vec<Value>,
    /// Notes for the user (such as the missing `caBundle`), one sentence each.
    pub notes: Vec<String>,
}

/// Generates the install manifests.
pub fn generate(settings: &Settings) -> Result<Manifest, ManifestError> {
    let mut objects = crds::all();
    objects.extend(control_plane::objects(settings));
    let (webhook, notes) = webhook::configuration(settings)?;
    objects.push(webhook);
    objects.extend(gateways::objects(settings.profile, settings.namespace()));
    Ok(Manifest { objects, notes })
}

/// Writes objects as one YAML stream, `---` between documents, keys sorted as Kubernetes tools
/// print them.
pub fn render(objects: &[Value]) -> String {
    objects
        .iter()
        // A Value of strings, numbers, booleans, lists and maps always serialises.
        .map(|o| api::yaml::to_yaml(o).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_keys() {
        let mut s = Settings::default();
        s.set("hub=registry.example/mesh").unwrap();
        s.set("tag=1.2.3").unwrap();
        s.set("meshConfig.accessLogFile=/dev/stdout").unwrap();
        s.set("meshConfig.accessLogEncoding=JSON").unwrap();
        s.set("values.global.istioNamespace=mesh-system").unwrap();
        assert_eq!(s.values.proxy_image(), "registry.example/mesh/proxy:1.2.3");
        assert_eq!(s.namespace(), "mesh-system");
        assert_eq!(
            s.set("meshConfig.accessLogEncoding=XML")
                .unwrap_err()
                .to_string(),
            "--set meshConfig.accessLogEncoding=XML: must be TEXT or JSON"
        );
        assert!(matches!(
            s.set("profiles=demo"),
            Err(ManifestError::UnknownKey { .. })
        ));
        s.set("profile=demo").unwrap();
        assert_eq!(s.profile, Profile::Demo);
        assert_eq!(
            s.set("profile=ambient").unwrap_err().to_string(),
            "--set profile=ambient: unknown profile (known: default, demo, minimal)"
        );
        assert_eq!(
            s.set("hub").unwrap_err(),
            ManifestError::NotKeyValue("hub".into())
        );
        assert!(s.set("values.global.istioNamespace=Bad_NS").is_err());
    }
}
