//! The settings injection runs with: the mesh config and the values, as Istio's injector has.

use api::mesh::DEFAULT_TRUST_DOMAIN;
use api::{MeshConfig, Values};

/// Mesh-wide inputs of injection. `Default` is Istio's default profile (with Ama's image).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InjectConfig {
    /// The MeshConfig (ConfigMap `istio`, key `mesh`).
    pub mesh: MeshConfig,
    /// The injector's values (ConfigMap `istio-sidecar-injector`, key `values`).
    pub values: Values,
}

impl InjectConfig {
    /// The revision injected pods are labelled with (`default` when none is set).
    pub fn revision(&self) -> &str {
        match self.values.revision.as_str() {
            "" => "default",
            r => r,
        }
    }

    /// The trust domain: the MeshConfig's, unless only the values set one.
    pub fn trust_domain(&self) -> &str {
        let from_values = self.values.global.trust_domain.as_str();
        if self.mesh.trust_domain == DEFAULT_TRUST_DOMAIN && !from_values.is_empty() {
            from_values
        } else {
            &self.mesh.trust_domain
        }
    }

    /// The mesh id: `global.meshID`, else the trust domain.
    pub fn mesh_id(&self) -> &str {
        match self.values.global.mesh_id.as_str() {
            "" => self.trust_domain(),
            id => id,
        }
    }

    /// Whether `istio-proxy` is injected as a native sidecar (an init container with
    /// `restartPolicy: Always`, Kubernetes 1.29+) when the pod does not say
    /// (`sidecar.istio.io/nativeSidecar`). Istio decides from its `ENABLE_NATIVE_SIDECARS`
    /// feature and the nodes' kubelet versions; Ama has no nodes to ask, so it is off unless the
    /// values set `pilot.env.ENABLE_NATIVE_SIDECARS: "true"`.
    pub fn native_sidecars(&self) -> bool {
        self.values.pilot.native_sidecars()
    }

    /// The cluster id: `global.multiCluster.clusterName`, else `Kubernetes`.
    pub fn cluster_id(&self) -> &str {
        match self.values.global.multi_cluster.cluster_name.as_str() {
            "" => "Kubernetes",
            id => id,
        }
    }
}
