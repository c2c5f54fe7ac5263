//! The pods the objects ask for, grouped by the object that owns them: a Deployment or
//! ReplicaSet (`replicas` pods named `<name>-<pod-template-hash>-<random>`), a StatefulSet
//! (`<name>-0`, `<name>-1` …), a DaemonSet (one pod: this machine is its one node) or a Pod.
//!
//! Kinds that run to completion (Job, CronJob) are not run locally; they are reported.

use api::k8s::WorkloadKind;
use api::objects::Object;
use inject::WorkloadMeta;
use rand::Rng;
use serde_json::{Value, json};

use crate::manifests::{Labels, Manifests};
use crate::naming;

/// Kubernetes' label of the pods of a ReplicaSet.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// How the pods of a group are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `<name>-<hash>-<random>` (Deployment, ReplicaSet).
    Replica,
    /// `<name>-<ordinal>` (StatefulSet).
    Ordinal,
    /// `<name>-<random>` (DaemonSet).
    Daemon,
    /// The object's own name (Pod).
    Fixed,
}

/// The pods of one object.
#[derive(Debug, Clone)]
pub struct PodGroup {
    /// The owner, as injection names it (`ISTIO_META_OWNER`, `ISTIO_META_WORKLOAD_NAME`).
    pub owner: WorkloadMeta,
    /// The owner's own annotations (a `local.ama.dev/command` may be there).
    pub owner_annotations: Labels,
    /// The pod template, `{metadata: {labels, annotations}, spec}`.
    pub template: Value,
    /// Its `pod-template-hash`.
    pub template_hash: String,
    /// How many pods.
    pub replicas: u32,
    /// How they are named.
    pub naming: Naming,
}

impl PodGroup {
    /// `Kind namespace/name` of the owner.
    pub fn display(&self) -> String {
        self.owner.display()
    }

    /// What identifies the group across reconciliations (`Deployment/default/httpbin`).
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.owner.kind, self.owner.namespace, self.owner.name
        )
    }

    /// A name for a new pod; `ordinal` is used by StatefulSets.
    pub fn pod_name(&self, ordinal: u32, rng: &mut impl Rng) -> String {
        match self.naming {
            Naming::Replica => naming::replica_pod_name(&self.owner.name, &self.template_hash, rng),
            Naming::Ordinal => format!("{}-{ordinal}", self.owner.name),
            Naming::Daemon => naming::daemon_pod_name(&self.owner.name, rng),
            Naming::Fixed => self.owner.name.clone(),
        }
    }

    /// The labels of a pod of this group (the template's, plus `pod-template-hash` for a
    /// ReplicaSet's pods, `statefulset.kubernetes.io/pod-name` for a StatefulSet's).
    pub fn pod_labels(&self, pod_name: &str) -> Labels {
        let mut labels = string_map(self.template.pointer("/metadata/labels"));
        match self.naming {
            Naming::Replica => {
                labels.insert(POD_TEMPLATE_HASH.into(), self.template_hash.clone());
            }
            Naming::Ordinal => {
                labels.insert("statefulset.kubernetes.io/pod-name".into(), pod_name.into());
            }
            Naming::Daemon | Naming::Fixed => {}
        }
        labels
    }
}

/// The pod groups of `manifests`, and a sentence for each object that runs no pod here.
pub fn pod_groups(manifests: &Manifests) -> (Vec<PodGroup>, Vec<String>) {
    let mut groups = Vec::new();
    let mut notes = Vec::new();
    for doc in &manifests.docs {
        let owner = WorkloadMeta::of_object(&doc.raw);
        let owner_annotations = doc.object.metadata().annotations.clone();
        let (template, replicas, naming) = match &doc.object {
            Object::Workload(w) => {
                let Some(template) = doc.raw.pointer("/spec/template").cloned() else {
                    notes.push(format!(
                        "{}: no spec.template: no pods",
                        doc.object.display()
                    ));
                    continue;
                };
                let (replicas, naming) = match w.kind {
                    WorkloadKind::Deployment | WorkloadKind::ReplicaSet => {
                        (w.replicas.unwrap_or(1), Naming::Replica)
                    }
                    WorkloadKind::StatefulSet => (w.replicas.unwrap_or(1), Naming::Ordinal),
                    WorkloadKind::DaemonSet => (1, Naming::Daemon),
                };
                (template, replicas, naming)
            }
            Object::Pod(_) => {
                let metadata = doc.raw.get("metadata").cloned().unwrap_or(json!({}));
                let template = json!({
                    "metadata": {
                        "labels": metadata.get("labels").cloned().unwrap_or(json!({})),
                        "annotations": metadata.get("annotations").cloned().unwrap_or(json!({})),
                    },
                    "spec": doc.raw.get("spec").cloned().unwrap_or(json!({})),
                });
                (template, 1, Naming::Fixed)
            }
            Object::Other(o)
                if ["Job", "CronJob", "ReplicationController"].contains(&o.kind.as_str()) =>
            {
                notes.push(format!(
                    "{}: {} is not run by ama up (Deployments, StatefulSets, DaemonSets, \
                     ReplicaSets and Pods are)",
                    doc.object.display(),
                    o.kind
                ));
                continue;
            }
            _ => continue,
        };
        let template_hash = naming::template_hash(&template);
        groups.push(PodGroup {
            owner,
            owner_annotations,
            template,
            template_hash,
            replicas,
            naming,
        });
    }
    (groups, notes)
}

/// The string entries of a labels or annotations mapping.
pub fn string_map(value: Option<&Value>) -> Labels {
    value
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::parse_ok;
    use rand::SeedableRng;

    #[test]
    fn groups_of_each_kind() {
        let yaml = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: data}
spec:
  replicas: 3
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: postgres}]}
---
apiVersion: v1
kind: Pod
metadata: {name: solo, labels: {app: solo}}
spec: {containers: [{name: solo, image: busybox}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec: {template: {spec: {containers: [{name: once, image: busybox}]}}}
";
        let mut m = Manifests::default();
        m.merge(parse_ok(yaml, "t.yaml"));
        let (groups, notes) = pod_groups(&m);
        assert_eq!(groups.len(), 3);
        assert_eq!(notes.len(), 1, "{notes:?}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let web = &groups[0];
        assert_eq!(web.key(), "Deployment/default/web");
        assert_eq!(web.replicas, 2);
        let name = web.pod_name(0, &mut rng);
        assert!(
            name.starts_with(&format!("web-{}-", web.template_hash)),
            "{name}"
        );
        assert_eq!(web.pod_labels(&name)[POD_TEMPLATE_HASH], web.template_hash);
        assert_eq!(groups[1].pod_name(2, &mut rng), "db-2");
        assert_eq!(groups[1].owner.namespace, "data");
        assert_eq!(groups[2].pod_name(0, &mut rng), "solo");
        assert_eq!(groups[2].pod_labels("solo")["app"], "solo");
    }
}
