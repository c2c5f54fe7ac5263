//! The pods the objects ask for, grouped by the object that owns them: a Deployment or
//! ReplicaSet (`replicas` pods named `<name>-<pod-template-hash>-<random>`), a StatefulSet
//! (`<name>-0`, `<name>-1` …), a DaemonSet (one pod: this machine is its one node) or a Pod.
//!
//! Kinds that run to completion (Job, CronJob) are not run locally; they are reported.
//!
//! A Deployment's pods are replaced as its `spec.strategy` says ([`Strategy`], [`rollout_step`]):
//! `RollingUpdate` (the default: maxSurge and maxUnavailable 25 %) adds new pods and removes old
//! ones only as far as the ready pods allow; `Recreate` removes every old pod first. The other
//! kinds replace their pods at once.

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
    /// How a new template replaces the pods.
    pub strategy: Strategy,
    /// `spec.terminationGracePeriodSeconds` of the template (Kubernetes' default 30).
    pub termination_grace: std::time::Duration,
}

/// How a new template replaces the pods of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Every old pod at once (ReplicaSet, StatefulSet, DaemonSet, Pod here).
    Replace,
    /// A Deployment's `Recreate`: every old pod is gone before a new one starts.
    Recreate,
    /// A Deployment's `RollingUpdate`, its bounds resolved against `replicas`.
    RollingUpdate {
        /// Pods above `replicas` there may be (maxSurge, rounded up).
        max_surge: u32,
        /// Pods below `replicas` that may be unavailable (maxUnavailable, rounded down).
        max_unavailable: u32,
    },
}

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_TERMINATION_GRACE: u64 = 30;
/// Kubernetes' default maxSurge and maxUnavailable.
const DEFAULT_BOUND: &str = "25%";

/// The strategy of a Deployment's `spec.strategy`, resolved for `replicas`. A value that is
/// not an integer or a percentage gives a note and Kubernetes' default.
fn deployment_strategy(
    raw: &Value,
    replicas: u32,
    display: &str,
    notes: &mut Vec<String>,
) -> Strategy {
    let strategy = raw.pointer("/spec/strategy");
    let kind = strategy
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    match kind {
        "Recreate" => return Strategy::Recreate,
        "RollingUpdate" => {}
        other => notes.push(format!(
            "{display}: spec.strategy.type {other:?} is not RollingUpdate or Recreate: rolling \
             update with the defaults"
        )),
    }
    let mut bound = |field: &str, round_up: bool| -> u32 {
        let value = strategy.and_then(|s| s.pointer(&format!("/rollingUpdate/{field}")));
        match value.map(|v| resolve_bound(v, replicas, round_up)) {
            None => resolve_bound(&Value::from(DEFAULT_BOUND), replicas, round_up).unwrap_or(1),
            Some(Ok(n)) => n,
            Some(Err(())) => {
                notes.push(format!(
                    "{display}: spec.strategy.rollingUpdate.{field} {} is not an integer or a \
                     percentage: {DEFAULT_BOUND} is used",
                    value.map(Value::to_string).unwrap_or_default()
                ));
                resolve_bound(&Value::from(DEFAULT_BOUND), replicas, round_up).unwrap_or(1)
            }
        }
    };
    let max_surge = bound("maxSurge", true);
    let mut max_unavailable = bound("maxUnavailable", false);
    if max_surge == 0 && max_unavailable == 0 {
        // Kubernetes refuses both at 0; its controller would otherwise never make progress.
        notes.push(format!(
            "{display}: spec.strategy.rollingUpdate: maxSurge and maxUnavailable cannot both be 0: \
             maxUnavailable 1 is used"
        ));
        max_unavailable = 1;
    }
    Strategy::RollingUpdate {
        max_surge,
        max_unavailable,
    }
}

/// An IntOrString bound (`1`, `"25%"`) against `replicas`; percentages round up (maxSurge) or
/// down (maxUnavailable), as Kubernetes' `GetScaledValueFromIntOrPercent` is called.
fn resolve_bound(value: &Value, replicas: u32, round_up: bool) -> Result<u32, ()> {
    if let Some(n) = value.as_u64() {
        return u32::try_from(n).map_err(|_| ());
    }
    let percent: u64 = value
        .as_str()
        .and_then(|s| s.strip_suffix('%'))
        .and_then(|p| p.parse().ok())
        .ok_or(())?;
    let scaled = percent * u64::from(replicas);
    let n = if round_up {
        scaled.div_ceil(100)
    } else {
        scaled / 100
    };
    u32::try_from(n).map_err(|_| ())
}

/// One pod of a group, as [`rollout_step`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodView {
    /// Of the group's current template.
    pub current: bool,
    /// Ready (every container, readiness probes included).
    pub ready: bool,
}

/// What to do now for a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// New pods of the current template to create.
    pub create: u32,
    /// Indexes (into the slice given) of the pods to delete.
    pub delete: Vec<usize>,
}

/// The next step towards `replicas` pods of the current template, from the pods of the group
/// that are not terminating (oldest first). Terminating pods count for nothing, as in
/// Kubernetes, except that `Recreate` waits until `terminating` is 0.
///
/// RollingUpdate follows Kubernetes' deployment controller: new pods up to
/// `replicas + maxSurge` in all; old pods removed (the unready first) while at least
/// `replicas - maxUnavailable` pods stay ready.
pub fn rollout_step(
    strategy: Strategy,
    replicas: u32,
    pods: &[PodView],
    terminating: usize,
) -> Step {
    let want = replicas as usize;
    let (new, old): (Vec<usize>, Vec<usize>) = (0..pods.len()).partition(|i| pods[*i].current);
    let mut step = Step::default();
    // The newest go first when there are too many of the current template.
    let mut extra_new: Vec<usize> = new.iter().copied().skip(want).collect();
    extra_new.reverse();
    let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    match strategy {
        Strategy::Replace => {
            step.delete = old.into_iter().chain(extra_new).collect();
            step.create = to_u32(want.saturating_sub(new.len()));
        }
        Strategy::Recreate => {
            if !old.is_empty() {
                step.delete = old;
            } else if terminating == 0 {
                step.delete = extra_new;
                step.create = to_u32(want.saturating_sub(new.len()));
            }
        }
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } => {
            if old.is_empty() {
                step.delete = extra_new;
                step.create = to_u32(want.saturating_sub(new.len()));
                return step;
            }
            let total = pods.len();
            let ceiling = want + max_surge as usize;
            let create = ceiling
                .saturating_sub(total)
                .min(want.saturating_sub(new.len()));
            step.create = to_u32(create);
            let min_available = want.saturating_sub(max_unavailable as usize);
            let ready_new = new.iter().filter(|i| pods[**i].ready).count();
            let ready_old = old.iter().filter(|i| pods[**i].ready).count();
            let new_unavailable = new.len() - ready_new;
            // Unready old pods first: removing them costs no availability.
            let mut budget = total.saturating_sub(min_available + new_unavailable);
            for &i in old.iter().filter(|i| !pods[**i].ready) {
                if budget == 0 {
                    break;
                }
                step.delete.push(i);
                budget -= 1;
            }
            let mut spare = (ready_new + ready_old).saturating_sub(min_available);
            for &i in old.iter().filter(|i| pods[**i].ready) {
                if spare == 0 || budget == 0 {
                    break;
                }
                step.delete.push(i);
                spare -= 1;
                budget -= 1;
            }
        }
    }
    step
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
        let mut strategy = Strategy::Replace;
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
                    WorkloadKind::Deployment => {
                        let replicas = w.replicas.unwrap_or(1);
                        strategy = deployment_strategy(
                            &doc.raw,
                            replicas,
                            &doc.object.display(),
                            &mut notes,
                        );
                        (replicas, Naming::Replica)
                    }
                    WorkloadKind::ReplicaSet => (w.replicas.unwrap_or(1), Naming::Replica),
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
        let termination_grace = std::time::Duration::from_secs(
            template
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_TERMINATION_GRACE),
        );
        groups.push(PodGroup {
            strategy,
            termination_grace,
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

    fn view(current: bool, ready: bool) -> PodView {
        PodView { current, ready }
    }

    #[test]
    fn bounds_round_as_kubernetes_does() {
        let b = |v: Value, n, up| resolve_bound(&v, n, up);
        assert_eq!(b(json!("25%"), 2, true), Ok(1));
        assert_eq!(b(json!("25%"), 2, false), Ok(0));
        assert_eq!(b(json!("50%"), 3, true), Ok(2));
        assert_eq!(b(json!("50%"), 3, false), Ok(1));
        assert_eq!(b(json!(3), 2, false), Ok(3));
        assert_eq!(b(json!("x"), 2, false), Err(()));
        assert_eq!(b(json!("-1%"), 2, false), Err(()));
        let mut notes = Vec::new();
        let d = json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}}});
        assert_eq!(
            deployment_strategy(&d, 4, "Deployment default/web", &mut notes),
            Strategy::RollingUpdate {
                max_surge: 0,
                max_unavailable: 1
            }
        );
        let d = json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": "lots"}}}});
        assert_eq!(
            deployment_strategy(&d, 4, "Deployment default/web", &mut notes),
            Strategy::RollingUpdate {
                max_surge: 1,
                max_unavailable: 1
            }
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[1].contains("spec.strategy.rollingUpdate.maxSurge \"lots\""),
            "{notes:?}"
        );
        let d = json!({"spec": {"strategy": {"type": "Recreate"}}});
        assert_eq!(
            deployment_strategy(&d, 4, "d", &mut notes),
            Strategy::Recreate
        );
    }

    #[test]
    fn a_rolling_update_of_two_replicas_keeps_two_ready() {
        // Kubernetes' defaults for 2 replicas: maxSurge 1, maxUnavailable 0.
        let s = Strategy::RollingUpdate {
            max_surge: 1,
            max_unavailable: 0,
        };
        let old = view(false, true);
        let step = |pods: &[PodView]| rollout_step(s, 2, pods, 0);
        assert_eq!(
            step(&[old, old]),
            Step {
                create: 1,
                delete: vec![]
            }
        );
        // The new pod is not ready yet: nothing more.
        assert_eq!(step(&[old, old, view(true, false)]), Step::default());
        // Ready: the oldest goes.
        assert_eq!(
            step(&[old, old, view(true, true)]),
            Step {
                create: 0,
                delete: vec![0]
            }
        );
        assert_eq!(
            step(&[old, view(true, true)]),
            Step {
                create: 1,
                delete: vec![]
            }
        );
        assert_eq!(
            step(&[old, view(true, true), view(true, false)]),
            Step::default()
        );
        assert_eq!(
            step(&[old, view(true, true), view(true, true)]),
            Step {
                create: 0,
                delete: vec![0]
            }
        );
        assert_eq!(step(&[view(true, true), view(true, true)]), Step::default());
        // An unready old pod goes first, and at once.
        assert_eq!(
            step(&[old, view(false, false), view(true, true)]),
            Step {
                create: 0,
                delete: vec![1]
            }
        );
    }

    #[test]
    fn unavailability_and_recreate_and_scaling() {
        let s = Strategy::RollingUpdate {
            max_surge: 0,
            max_unavailable: 1,
        };
        let old = view(false, true);
        assert_eq!(
            rollout_step(s, 3, &[old, old, old], 0),
            Step {
                create: 0,
                delete: vec![0]
            }
        );
        assert_eq!(
            rollout_step(s, 3, &[old, old], 0),
            Step {
                create: 1,
                delete: vec![]
            }
        );
        // Recreate: every old pod, then nothing until they are gone.
        let r = Strategy::Recreate;
        assert_eq!(
            rollout_step(r, 2, &[old, old], 0),
            Step {
                create: 0,
                delete: vec![0, 1]
            }
        );
        assert_eq!(rollout_step(r, 2, &[], 2), Step::default());
        assert_eq!(
            rollout_step(r, 2, &[], 0),
            Step {
                create: 2,
                delete: vec![]
            }
        );
        // Scaling without a new template: the newest go first.
        let new = view(true, true);
        assert_eq!(
            rollout_step(s, 1, &[new, new, new], 0),
            Step {
                create: 0,
                delete: vec![2, 1]
            }
        );
        assert_eq!(
            rollout_step(Strategy::Replace, 2, &[old, new], 0),
            Step {
                create: 1,
                delete: vec![0]
            }
        );
    }
}
