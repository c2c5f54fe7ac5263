//! kubectl's output of `get`: a table per kind with kubectl's columns (padded by three spaces,
//! ages as kubectl prints them), and the objects for `-o json|yaml|name`.
//!
//! [`table`] lists one kind of a [`Snapshot`] (the state file and `resources.json`) in every
//! namespace; the caller filters its rows (namespace, name, labels) and [`render`]s one block per
//! kind, as `kubectl get pods,services` and `kubectl get all` print them. Pods and Services come
//! from the state file (their status is `ama up`'s); Deployments and ReplicaSets add the status
//! their pods give them; Istio's kinds have the printer columns of Istio's CRDs
//! ([`manifest::crds`]); other kinds NAME and AGE.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::naming;
use crate::state::{ContainerState, PodRecord, ServiceRecord, State};

/// kubectl's age: `88s`, `5m3s`, `60m`, `4h24m`, `2d3h`, `45d`, `2y100d`.
pub fn age(seconds: u64) -> String {
    let s = seconds;
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        return match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return match h % 24 {
            0 => format!("{}d", h / 24),
            r => format!("{}d{r}h", h / 24),
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    let y = h / (24 * 365);
    if h < 24 * 365 * 8 {
        return format!("{y}y{}d", (h / 24) % 365);
    }
    format!("{y}y")
}

/// Rows as kubectl's tabwriter prints them: left-aligned, three spaces between columns.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut out = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 3;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// What `ama get` lists from: the state file, `resources.json`, the time and the node's name.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// The state file.
    pub state: &'a State,
    /// `resources.json`: the user's objects and the EndpointSlices.
    pub objects: &'a [Value],
    /// Now, in seconds since the epoch.
    pub now: u64,
    /// The node's name (the NODE column of `-o wide`).
    pub node: &'a str,
}

/// One kind as `ama get` takes it (`deployments`, `deploy`, `vs`,
/// `gateways.gateway.networking.k8s.io`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The kind (`VirtualService`).
    pub kind: &'static str,
    /// The API group asked for, when the name said (`gtw` and `*.gateway.networking.k8s.io`
    /// for Gateway API's Gateway; a plain `gateway` or `gw` is Istio's, as its short name is).
    pub group: Option<&'static str>,
}

/// Istio's networking group.
const ISTIO_NETWORKING: &str = "networking.istio.io";
/// Gateway API's group.
const GATEWAY_API: &str = "gateway.networking.k8s.io";

impl Resource {
    /// The kind `name` stands for, as kubectl reads it ([`api::kinds::resolve`]).
    pub fn resolve(name: &str) -> Option<Resource> {
        let kind = api::kinds::resolve(name)?;
        let group = match name.split_once('.') {
            _ if kind != "Gateway" => None,
            Some((_, GATEWAY_API)) => Some(GATEWAY_API),
            None if name.eq_ignore_ascii_case("gtw") => Some(GATEWAY_API),
            _ => Some(ISTIO_NETWORKING),
        };
        Some(Resource { kind, group })
    }

    /// Whether `object` is of this kind.
    fn holds(&self, object: &Value) -> bool {
        object.get("kind").and_then(Value::as_str) == Some(self.kind)
            && self.group.is_none_or(|g| group_of(object) == g)
    }

    /// Whether its objects have no namespace.
    pub fn cluster_scoped(&self) -> bool {
        matches!(
            self.kind,
            "Namespace"
                | "Node"
                | "PersistentVolume"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "CustomResourceDefinition"
                | "StorageClass"
                | "PriorityClass"
                | "IngressClass"
                | "GatewayClass"
                | "MutatingWebhookConfiguration"
                | "ValidatingWebhookConfiguration"
        )
    }
}

/// The kinds of `kubectl get all` that `ama up` runs, in kubectl's order.
pub const ALL: [&str; 6] = [
    "pods",
    "services",
    "daemonsets",
    "deployments",
    "replicasets",
    "statefulsets",
];

/// One kind's rows, in every namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// How kubectl names the kind in `kind/name` (`deployment.apps`, `pod`).
    pub prefix: String,
    /// Cluster-scoped: no NAMESPACE column.
    pub cluster_scoped: bool,
    /// The columns after NAME (and before them NAMESPACE with `-A`).
    pub header: Vec<String>,
    /// The rows, by namespace and name.
    pub rows: Vec<Row>,
}

/// One object of a [`Table`].
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Its namespace (empty when cluster-scoped).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The cells after NAME.
    pub cells: Vec<String>,
    /// The object as `-o json` prints it (with its status).
    pub object: Value,
}

impl Row {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.object
            .pointer("/metadata/labels")
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
    }
}

/// The table of `resource` in every namespace. `wide`: `-o wide`'s columns.
pub fn table(snapshot: &Snapshot<'_>, resource: &Resource, wide: bool) -> Table {
    let (header, mut rows) = match resource.kind {
        "Pod" => pods(snapshot, wide),
        "Service" => services(snapshot, wide),
        "Deployment" => deployments(snapshot, wide),
        "ReplicaSet" => replicasets(snapshot, wide),
        "StatefulSet" => statefulsets(snapshot, wide),
        "DaemonSet" => daemonsets(snapshot, wide),
        "Endpoints" => endpoints(snapshot),
        "EndpointSlice" => endpoint_slices(snapshot),
        "Namespace" => namespaces(snapshot),
        "ConfigMap" => objects(snapshot, resource, &["DATA", "AGE"], |o, age| {
            vec![data_count(o).to_string(), age]
        }),
        "Secret" => objects(snapshot, resource, &["TYPE", "DATA", "AGE"], |o, age| {
            vec![
                text(o, "/type").unwrap_or("Opaque").to_string(),
                data_count(o).to_string(),
                age,
            ]
        }),
        _ => printer_columns(snapshot, resource),
    };
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let group = match resource.kind {
        "Pod" | "Service" | "Endpoints" | "Namespace" | "ConfigMap" | "Secret" => "",
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => "apps",
        "EndpointSlice" => "discovery.k8s.io",
        _ => resource.group.unwrap_or_else(|| {
            snapshot
                .objects
                .iter()
                .find(|o| resource.holds(o))
                .map_or("", group_of)
        }),
    };
    let kind = resource.kind.to_ascii_lowercase();
    Table {
        prefix: if group.is_empty() {
            kind
        } else {
            format!("{kind}.{group}")
        },
        cluster_scoped: resource.cluster_scoped(),
        header,
        rows,
    }
}

/// How a block is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One kind: `NAME ...`.
    Plain,
    /// Several kinds (`get all`, `get pods,services`): each name as `kind/name`, a blank line
    /// between blocks, as kubectl prints them.
    WithKind,
    /// `-o name`: `kind/name` lines only.
    Names,
}

/// The blocks of `tables` (empty ones left out) as kubectl prints them. `namespace`: the one
/// listed, None with `-A` (a NAMESPACE column). Nothing at all is [`no_resources`]' line.
pub fn print(tables: &[Table], layout: Layout, namespace: Option<&str>) -> String {
    let mut blocks = Vec::new();
    for t in tables.iter().filter(|t| !t.rows.is_empty()) {
        let name = |r: &Row| match layout {
            Layout::Plain => r.name.clone(),
            _ => format!("{}/{}", t.prefix, r.name),
        };
        if layout == Layout::Names {
            blocks.push(t.rows.iter().map(|r| name(r) + "\n").collect::<String>());
            continue;
        }
        let with_ns = namespace.is_none() && !t.cluster_scoped;
        let mut header: Vec<&str> = Vec::new();
        if with_ns {
            header.push("NAMESPACE");
        }
        header.push("NAME");
        header.extend(t.header.iter().map(String::as_str));
        let rows: Vec<Vec<String>> = t
            .rows
            .iter()
            .map(|r| {
                let mut row = Vec::with_capacity(header.len());
                if with_ns {
                    row.push(r.namespace.clone());
                }
                row.push(name(r));
                row.extend(r.cells.iter().cloned());
                row
            })
            .collect();
        blocks.push(render(&header, &rows));
    }
    if blocks.is_empty() {
        return no_resources(namespace);
    }
    let separator = if layout == Layout::Names { "" } else { "\n" };
    blocks.join(separator)
}

fn pods(snapshot: &Snapshot<'_>, wide: bool) -> (Vec<String>, Vec<Row>) {
    let mut header = vec!["READY", "STATUS", "RESTARTS", "AGE"];
    if wide {
        header.extend(["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]);
    }
    let node_ip = crate::ipam::GATEWAY.to_string();
    let now = snapshot.now;
    let rows = snapshot
        .state
        .pods
        .iter()
        .map(|p| {
            let (ready, total) = p.ready();
            let mut cells = vec![
                format!("{ready}/{total}"),
                p.status(),
                restarts(p, now),
                age(now.saturating_sub(p.created_at)),
            ];
            if wide {
                cells.extend([
                    p.ip.to_string(),
                    snapshot.node.to_string(),
                    "<none>".into(),
                    "<none>".into(),
                ]);
            }
            Row {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                cells,
                object: pod_object(p, &node_ip),
            }
        })
        .collect();
    (strings(&header), rows)
}

/// The EXTERNAL-IP column as kubectl fills it: a LoadBalancer's address, `<pending>` while it
/// has none, `<none>` for the other types.
fn external_ip(s: &ServiceRecord) -> String {
    let address = s
        .object
        .pointer("/status/loadBalancer/ingress/0/ip")
        .and_then(Value::as_str);
    match (s.service_type.as_str(), address) {
        (_, Some(ip)) => ip.to_string(),
        ("LoadBalancer", None) => "<pending>".into(),
        _ => "<none>".into(),
    }
}

fn services(snapshot: &Snapshot<'_>, wide: bool) -> (Vec<String>, Vec<Row>) {
    let mut header = vec!["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"];
    if wide {
        header.push("SELECTOR");
    }
    let rows = snapshot
        .state
        .services
        .iter()
        .map(|s| {
            let mut cells = vec![
                s.service_type.clone(),
                s.cluster_ip.map_or("None".into(), |ip| ip.to_string()),
                external_ip(s),
                if s.ports.is_empty() {
                    "<none>".into()
                } else {
                    s.ports.join(",")
                },
                age(snapshot.now.saturating_sub(s.created_at)),
            ];
            if wide {
                cells.push(selector_text(s.object.pointer("/spec/selector")));
            }
            Row {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                cells,
                object: service_object(s),
            }
        })
        .collect();
    (strings(&header), rows)
}

/// A label map as kubectl prints a selector: `app=httpbin,version=v1`, or `<none>`.
fn selector_text(map: Option<&Value>) -> String {
    map.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".into())
}

/// The pods of the group `Kind/namespace/name` that are not being deleted.
fn live_pods<'a>(state: &'a State, group: &str) -> impl Iterator<Item = &'a PodRecord> {
    let group = group.to_string();
    state
        .pods
        .iter()
        .filter(move |p| p.group == group && !p.terminating)
}

/// The `-o wide` columns of a workload: CONTAINERS IMAGES SELECTOR.
fn workload_wide(template: Option<&Value>, selector: Option<&Value>) -> [String; 3] {
    let containers: Vec<&Value> = template
        .and_then(|t| t.pointer("/spec/containers"))
        .and_then(Value::as_array)
        .map(|c| c.iter().collect())
        .unwrap_or_default();
    let field = |f: &str| {
        containers
            .iter()
            .map(|c| c.get(f).and_then(Value::as_str).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(",")
    };
    [field("name"), field("image"), selector_text(selector)]
}

/// The Deployments of the snapshot.
fn deployment_objects<'a>(snapshot: &'a Snapshot<'_>) -> impl Iterator<Item = &'a Value> {
    snapshot
        .objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some("Deployment"))
}

fn replicas_of(o: &Value) -> u64 {
    o.pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1)
}

fn deployments(snapshot: &Snapshot<'_>, wide: bool) -> (Vec<String>, Vec<Row>) {
    let mut header = vec!["READY", "UP-TO-DATE", "AVAILABLE", "AGE"];
    if wide {
        header.extend(["CONTAINERS", "IMAGES", "SELECTOR"]);
    }
    let rows = deployment_objects(snapshot)
        .map(|o| {
            let (namespace, name) = namespace_and_name(o);
            let template = o.pointer("/spec/template");
            let hash = template.map(naming::template_hash).unwrap_or_default();
            let pods: Vec<&PodRecord> =
                live_pods(snapshot.state, &format!("Deployment/{namespace}/{name}")).collect();
            let ready = pods.iter().filter(|p| p.is_ready()).count();
            let updated = pods.iter().filter(|p| p.template_hash == hash).count();
            let replicas = replicas_of(o);
            let mut cells = vec![
                format!("{ready}/{replicas}"),
                updated.to_string(),
                ready.to_string(),
                age_of(o, snapshot.now),
            ];
            if wide {
                cells.extend(workload_wide(
                    template,
                    o.pointer("/spec/selector/matchLabels"),
                ));
            }
            let mut object = o.clone();
            object["status"] = json!({
                "observedGeneration": 1,
                "replicas": pods.len(),
                "updatedReplicas": updated,
                "readyReplicas": ready,
                "availableReplicas": ready,
            });
            Row {
                namespace,
                name,
                cells,
                object,
            }
        })
        .collect();
    (strings(&header), rows)
}

/// The objects of `kind` in the snapshot.
fn of_kind<'a>(snapshot: &'a Snapshot<'_>, kind: &'a str) -> impl Iterator<Item = &'a Value> {
    snapshot
        .objects
        .iter()
        .filter(move |o| o.get("kind").and_then(Value::as_str) == Some(kind))
}

/// A workload's rows from its pods: `cells(object, live pods, ready pods)`, and its object with
/// the status of its pods.
fn workload_rows(
    snapshot: &Snapshot<'_>,
    kind: &str,
    cells: impl Fn(&Value, usize, usize) -> Vec<String>,
) -> Vec<Row> {
    of_kind(snapshot, kind)
        .map(|o| {
            let (namespace, name) = namespace_and_name(o);
            let pods: Vec<&PodRecord> =
                live_pods(snapshot.state, &format!("{kind}/{namespace}/{name}")).collect();
            let ready = pods.iter().filter(|p| p.is_ready()).count();
            let mut object = o.clone();
            object["status"] = json!({
                "replicas": pods.len(),
                "readyReplicas": ready,
                "availableReplicas": ready,
            });
            Row {
                namespace,
                name,
                cells: cells(o, pods.len(), ready),
                object,
            }
        })
        .collect()
}

/// StatefulSets: NAME READY AGE.
fn statefulsets(snapshot: &Snapshot<'_>, wide: bool) -> (Vec<String>, Vec<Row>) {
    let mut header = vec!["READY", "AGE"];
    if wide {
        header.extend(["CONTAINERS", "IMAGES"]);
    }
    let rows = workload_rows(snapshot, "StatefulSet", |o, _, ready| {
        let mut cells = vec![
            format!("{ready}/{}", replicas_of(o)),
            age_of(o, snapshot.now),
        ];
        if wide {
            let [containers, images, _] = workload_wide(o.pointer("/spec/template"), None);
            cells.extend([containers, images]);
        }
        cells
    });
    (strings(&header), rows)
}

/// DaemonSets (one node: one pod each): NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE
/// NODE SELECTOR AGE.
fn daemonsets(snapshot: &Snapshot<'_>, wide: bool) -> (Vec<String>, Vec<Row>) {
    let mut header = vec![
        "DESIRED",
        "CURRENT",
        "READY",
        "UP-TO-DATE",
        "AVAILABLE",
        "NODE SELECTOR",
        "AGE",
    ];
    if wide {
        header.extend(["CONTAINERS", "IMAGES", "SELECTOR"]);
    }
    let rows = workload_rows(snapshot, "DaemonSet", |o, current, ready| {
        let node_selector = selector_text(o.pointer("/spec/template/spec/nodeSelector"));
        let mut cells = vec![
            "1".into(),
            current.to_string(),
            ready.to_string(),
            current.to_string(),
            ready.to_string(),
            node_selector,
            age_of(o, snapshot.now),
        ];
        if wide {
            cells.extend(workload_wide(
                o.pointer("/spec/template"),
                o.pointer("/spec/selector/matchLabels"),
            ));
        }
        cells
    });
    (strings(&header), rows)
}

/// The ReplicaSets: a Deployment's, one per template its pods have (`<name>-<hash>`, the
/// current one wanting `replicas`, older ones 0, as a rollout leaves them), and the
/// ReplicaSets applied as such.
fn replicasets(snapshot: &Snapshot<'_>, wide: bool) -> (Vec<String>, Vec<Row>) {
    let mut header = vec!["DESIRED", "CURRENT", "READY", "AGE"];
    if wide {
        header.extend(["CONTAINERS", "IMAGES", "SELECTOR"]);
    }
    let mut rows = Vec::new();
    let mut push = |namespace: String,
                    name: String,
                    desired: u64,
                    pods: Vec<&PodRecord>,
                    created: String,
                    object: Value| {
        let ready = pods.iter().filter(|p| p.is_ready()).count();
        let mut cells = vec![
            desired.to_string(),
            pods.len().to_string(),
            ready.to_string(),
            created,
        ];
        if wide {
            cells.extend(workload_wide(
                object.pointer("/spec/template"),
                object.pointer("/spec/selector/matchLabels"),
            ));
        }
        let mut object = object;
        object["status"] = json!({
            "replicas": pods.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
        });
        rows.push(Row {
            namespace,
            name,
            cells,
            object,
        });
    };
    for o in deployment_objects(snapshot) {
        let (namespace, name) = namespace_and_name(o);
        let template = o.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let current = naming::template_hash(&template);
        let pods: Vec<&PodRecord> =
            live_pods(snapshot.state, &format!("Deployment/{namespace}/{name}")).collect();
        let hashes: BTreeSet<&str> = std::iter::once(current.as_str())
            .chain(pods.iter().map(|p| p.template_hash.as_str()))
            .collect();
        for hash in hashes {
            let of_hash: Vec<&PodRecord> = pods
                .iter()
                .copied()
                .filter(|p| p.template_hash == hash)
                .collect();
            let desired = if hash == current { replicas_of(o) } else { 0 };
            // An older template's own spec is gone; its pods' labels stand for it.
            let mut labels = o
                .pointer("/spec/template/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            labels[crate::plan::POD_TEMPLATE_HASH] = json!(hash);
            let mut selector = o
                .pointer("/spec/selector/matchLabels")
                .cloned()
                .unwrap_or(json!({}));
            selector[crate::plan::POD_TEMPLATE_HASH] = json!(hash);
            let rs_name = format!("{name}-{hash}");
            let object = json!({
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name,
                    "namespace": namespace,
                    "labels": labels,
                    "creationTimestamp": o.pointer("/metadata/creationTimestamp"),
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                        "name": name, "controller": true}],
                },
                "spec": {
                    "replicas": desired,
                    "selector": {"matchLabels": selector},
                    "template": if hash == current { template.clone() } else { json!({"metadata": {"labels": labels}}) },
                },
            });
            let created = of_hash.iter().map(|p| p.created_at).min().map_or_else(
                || age_of(o, snapshot.now),
                |at| age(snapshot.now.saturating_sub(at)),
            );
            push(
                namespace.clone(),
                rs_name,
                desired,
                of_hash,
                created,
                object,
            );
        }
    }
    for o in snapshot
        .objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some("ReplicaSet"))
    {
        let (namespace, name) = namespace_and_name(o);
        let pods = live_pods(snapshot.state, &format!("ReplicaSet/{namespace}/{name}")).collect();
        let created = age_of(o, snapshot.now);
        push(namespace, name, replicas_of(o), pods, created, o.clone());
    }
    (strings(&header), rows)
}

/// The EndpointSlices of the snapshot that belong to Service `namespace/name`.
fn slices_of<'a>(
    snapshot: &'a Snapshot<'_>,
    namespace: &'a str,
    name: &'a str,
) -> impl Iterator<Item = &'a Value> {
    snapshot.objects.iter().filter(move |o| {
        o.get("kind").and_then(Value::as_str) == Some("EndpointSlice")
            && text(o, "/metadata/namespace") == Some(namespace)
            && text(o, "/metadata/labels/kubernetes.io~1service-name") == Some(name)
    })
}

/// kubectl's list of at most three items, then ` + N more...`.
fn at_most_three(items: &[String]) -> String {
    match items.len() {
        0 => "<none>".into(),
        n if n <= 3 => items.join(","),
        n => format!("{} + {} more...", items[..3].join(","), n - 3),
    }
}

/// Endpoints, as the endpoints controller makes them from the Services with a selector: the
/// ready addresses of their EndpointSlices, `ip:port` for each port.
fn endpoints(snapshot: &Snapshot<'_>) -> (Vec<String>, Vec<Row>) {
    let header = vec!["ENDPOINTS", "AGE"];
    let rows = snapshot
        .state
        .services
        .iter()
        .filter(|s| {
            s.object
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
        })
        .map(|s| {
            let mut addresses: Vec<Ipv4Addr> = Vec::new();
            let mut ports: Vec<(String, u64, String)> = Vec::new();
            for slice in slices_of(snapshot, &s.namespace, &s.name) {
                for e in slice["endpoints"].as_array().into_iter().flatten() {
                    if e.pointer("/conditions/ready").and_then(Value::as_bool) != Some(true) {
                        continue;
                    }
                    addresses.extend(
                        e["addresses"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| a.as_str()?.parse::<Ipv4Addr>().ok()),
                    );
                }
                for p in slice["ports"].as_array().into_iter().flatten() {
                    let port = (
                        text(p, "/name").unwrap_or_default().to_string(),
                        p["port"].as_u64().unwrap_or(0),
                        text(p, "/protocol").unwrap_or("TCP").to_string(),
                    );
                    if !ports.contains(&port) {
                        ports.push(port);
                    }
                }
            }
            addresses.sort();
            addresses.dedup();
            let items: Vec<String> = ports
                .iter()
                .flat_map(|(_, port, _)| addresses.iter().map(move |a| format!("{a}:{port}")))
                .collect();
            let subsets = if addresses.is_empty() {
                json!([])
            } else {
                json!([{
                    "addresses": addresses.iter().map(|a| json!({"ip": a.to_string()})).collect::<Vec<_>>(),
                    "ports": ports.iter().map(|(name, port, protocol)| json!({"name": name, "port": port, "protocol": protocol})).collect::<Vec<_>>(),
                }])
            };
            let object = json!({
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {
                    "name": s.name,
                    "namespace": s.namespace,
                    "labels": s.object.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                    "creationTimestamp": rfc3339(s.created_at),
                },
                "subsets": subsets,
            });
            Row {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                cells: vec![
                    at_most_three(&items),
                    age(snapshot.now.saturating_sub(s.created_at)),
                ],
                object,
            }
        })
        .collect();
    (strings(&header), rows)
}

fn endpoint_slices(snapshot: &Snapshot<'_>) -> (Vec<String>, Vec<Row>) {
    let resource = Resource {
        kind: "EndpointSlice",
        group: None,
    };
    objects(
        snapshot,
        &resource,
        &["ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
        |o, age| {
            let ports: Vec<String> = o["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["port"].as_u64().map(|n| n.to_string()))
                .collect();
            let addresses: Vec<String> = o["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            vec![
                text(o, "/addressType").unwrap_or("IPv4").to_string(),
                if ports.is_empty() {
                    "<unset>".into()
                } else {
                    ports.join(",")
                },
                at_most_three(&addresses),
                age,
            ]
        },
    )
}

/// The namespaces: the declared ones, `default`, and every one an object or a pod is in (the
/// API server would hold those too).
fn namespaces(snapshot: &Snapshot<'_>) -> (Vec<String>, Vec<Row>) {
    let header = vec!["STATUS", "AGE"];
    let mut rows: Vec<Row> = snapshot
        .objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some("Namespace"))
        .map(|o| {
            let mut object = o.clone();
            object["status"] = json!({"phase": "Active"});
            Row {
                namespace: String::new(),
                name: text(o, "/metadata/name").unwrap_or_default().to_string(),
                cells: vec!["Active".into(), age_of(o, snapshot.now)],
                object,
            }
        })
        .collect();
    let implied: BTreeSet<&str> = std::iter::once("default")
        .chain(
            snapshot
                .objects
                .iter()
                .filter_map(|o| text(o, "/metadata/namespace")),
        )
        .chain(snapshot.state.pods.iter().map(|p| p.namespace.as_str()))
        .chain(snapshot.state.services.iter().map(|s| s.namespace.as_str()))
        .filter(|n| !n.is_empty())
        .collect();
    for name in implied {
        if rows.iter().any(|r| r.name == name) {
            continue;
        }
        let created = snapshot.state.started_at;
        rows.push(Row {
            namespace: String::new(),
            name: name.to_string(),
            cells: vec!["Active".into(), age(snapshot.now.saturating_sub(created))],
            object: json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "creationTimestamp": rfc3339(created),
                    "labels": {"kubernetes.io/metadata.name": name}},
                "status": {"phase": "Active"},
            }),
        });
    }
    (strings(&header), rows)
}

/// The objects of `resource` from `resources.json`, with `cells(object, age)`.
fn objects(
    snapshot: &Snapshot<'_>,
    resource: &Resource,
    header: &[&str],
    cells: impl Fn(&Value, String) -> Vec<String>,
) -> (Vec<String>, Vec<Row>) {
    let rows = snapshot
        .objects
        .iter()
        .filter(|o| resource.holds(o))
        .map(|o| {
            let (namespace, name) = namespace_and_name(o);
            Row {
                namespace,
                name,
                cells: cells(o, age_of(o, snapshot.now)),
                object: o.clone(),
            }
        })
        .collect();
    (strings(header), rows)
}

/// A kind's columns from its CRD's `additionalPrinterColumns` (Istio's kinds, [`manifest::crds`]
/// and the few Istio kinds Ama serves no CRD of), else NAME and AGE, as kubectl prints a kind
/// without printer columns.
fn printer_columns(snapshot: &Snapshot<'_>, resource: &Resource) -> (Vec<String>, Vec<Row>) {
    let group = resource.group.unwrap_or_else(|| {
        snapshot
            .objects
            .iter()
            .find(|o| resource.holds(o))
            .map_or("", group_of)
    });
    let columns = crd_columns(group, resource.kind);
    let header: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
    objects(snapshot, resource, &header, |o, age| {
        columns
            .iter()
            .map(|(name, path)| {
                if name == "AGE" {
                    return age.clone();
                }
                let pointer = path.replace('.', "/");
                match o.pointer(&pointer) {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                }
            })
            .collect()
    })
}

/// `(HEADER, .json.path)` of the printer columns of `group`'s `kind`.
fn crd_columns(group: &str, kind: &str) -> Vec<(String, String)> {
    let age = ("AGE".to_string(), ".metadata.creationTimestamp".to_string());
    if let Some(crd) = manifest::crds::all().into_iter().find(|c| {
        c.pointer("/spec/group").and_then(Value::as_str) == Some(group)
            && c.pointer("/spec/names/kind").and_then(Value::as_str) == Some(kind)
    }) {
        return crd
            .pointer("/spec/versions/0/additionalPrinterColumns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let name = c.get("name")?.as_str()?.to_ascii_uppercase();
                let path = c.get("jsonPath")?.as_str()?.to_string();
                Some((name, path))
            })
            .collect();
    }
    match (group, kind) {
        // Istio's CRD lists the address after the age.
        (ISTIO_NETWORKING, "WorkloadEntry") => {
            vec![age, ("ADDRESS".to_string(), ".spec.address".to_string())]
        }
        _ => vec![age],
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The number of keys of `data` and `binaryData` (kubectl's DATA column).
fn data_count(o: &Value) -> usize {
    ["data", "binaryData", "stringData"]
        .iter()
        .filter_map(|f| o.get(*f).and_then(Value::as_object))
        .map(|m| m.len())
        .sum()
}

fn text<'a>(o: &'a Value, pointer: &str) -> Option<&'a str> {
    o.pointer(pointer).and_then(Value::as_str)
}

fn namespace_and_name(o: &Value) -> (String, String) {
    (
        text(o, "/metadata/namespace")
            .unwrap_or_default()
            .to_string(),
        text(o, "/metadata/name").unwrap_or_default().to_string(),
    )
}

/// The API group of an object's `apiVersion` (`""` for the core group).
fn group_of(o: &Value) -> &str {
    text(o, "/apiVersion")
        .and_then(|v| v.rsplit_once('/'))
        .map_or("", |(g, _)| g)
}

/// The AGE of an object with a `creationTimestamp`.
fn age_of(o: &Value, now: u64) -> String {
    text(o, "/metadata/creationTimestamp")
        .and_then(parse_rfc3339)
        .map_or_else(|| "<unknown>".into(), |at| age(now.saturating_sub(at)))
}

/// kubectl's RESTARTS: `0`, or `2 (15s ago)` with the time of the last exit.
fn restarts(p: &PodRecord, now: u64) -> String {
    match (p.restarts(), p.last_restart_at()) {
        (0, _) => "0".into(),
        (n, Some(at)) => format!("{n} ({} ago)", age(now.saturating_sub(at))),
        (n, None) => n.to_string(),
    }
}

/// kubectl's line when nothing was found (on standard error).
pub fn no_resources(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("No resources found in {ns} namespace.\n"),
        None => "No resources found\n".to_string(),
    }
}

/// A pod object with its status, as `kubectl get pod -o json` shows it.
pub fn pod_object(p: &PodRecord, node_ip: &str) -> Value {
    let mut o = p.object.clone();
    let status = |c: &crate::state::ContainerRecord| {
        let state = match &c.state {
            ContainerState::Waiting { reason } => json!({"waiting": {"reason": reason}}),
            ContainerState::Running { started_at } => {
                json!({"running": {"startedAt": rfc3339(*started_at)}})
            }
            ContainerState::Terminated { exit_code, reason } => {
                json!({"terminated": {"exitCode": exit_code, "reason": reason}})
            }
        };
        json!({"name": c.name, "ready": c.ready, "restartCount": c.restarts,
            "started": matches!(c.state, ContainerState::Running { .. }), "state": state})
    };
    let phase = match p.status().as_str() {
        "Running" => "Running",
        s if s.starts_with("Init:") || s == "Pending" => "Pending",
        _ => "Running",
    };
    let ready = p.is_ready();
    let condition =
        |t: &str, ok: bool| json!({"type": t, "status": if ok { "True" } else { "False" }});
    if let Value::Object(map) = &mut o {
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.insert("creationTimestamp".into(), json!(rfc3339(p.created_at)));
            if let Some(at) = p.deleted_at {
                meta.insert("deletionTimestamp".into(), json!(rfc3339(at)));
            }
        }
        map.insert(
            "status".into(),
            json!({
                "phase": phase,
                "podIP": p.ip.to_string(),
                "podIPs": [{"ip": p.ip.to_string()}],
                "hostIP": node_ip,
                "conditions": [condition("Initialized", p.init.iter().all(|c| matches!(c.state, ContainerState::Terminated { exit_code: 0, .. }))),
                    condition("Ready", ready), condition("ContainersReady", ready)],
                "initContainerStatuses": p.init.iter().map(status).collect::<Vec<_>>(),
                "containerStatuses": p.containers.iter().map(status).collect::<Vec<_>>(),
            }),
        );
    }
    o
}

/// A Service object with its creation time.
pub fn service_object(s: &ServiceRecord) -> Value {
    let mut o = s.object.clone();
    if let Some(Value::Object(meta)) = o.get_mut("metadata") {
        meta.insert("creationTimestamp".into(), json!(rfc3339(s.created_at)));
    }
    o
}

/// kubectl's list wrapper.
pub fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}})
}

/// Seconds since the epoch as RFC 3339 (`2020-03-07T06:44:22Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// RFC 3339 `2020-03-07T06:44:22Z` (UTC, as [`rfc3339`] writes it) as seconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time
        .splitn(3, ':')
        .map(|p| p.split('.').next().unwrap_or(p).parse::<u64>());
    let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Howard Hinnant's days-from-civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_as_kubectl_prints_them() {
        assert_eq!(age(88), "88s");
        assert_eq!(age(5 * 60 + 3), "5m3s");
        assert_eq!(age(60 * 60), "60m");
        assert_eq!(age(4 * 3600 + 24 * 60), "4h24m");
        assert_eq!(age(10 * 3600), "10h");
        assert_eq!(age(51 * 3600), "2d3h");
        assert_eq!(age(45 * 86_400), "45d");
    }

    #[test]
    fn columns_padded_by_three_spaces() {
        let out = render(
            &["NAME", "READY", "STATUS"],
            &[vec![
                "httpbin-deployment-9bfd96975-px5lv".into(),
                "2/2".into(),
                "Running".into(),
            ]],
        );
        assert_eq!(
            out,
            "NAME                                 READY   STATUS\n\
             httpbin-deployment-9bfd96975-px5lv   2/2     Running\n"
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(1_583_563_462), "2020-03-07T06:44:22Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}

#[cfg(test)]
mod golden {
    //! Each table on a fixed mesh, compared with what kubectl prints for the same objects.

    use std::path::PathBuf;

    use pretty_assertions::assert_eq;

    use super::*;
    use crate::launch::{Probe, Role};
    use crate::state::ContainerRecord;

    /// The epoch second everything is listed at.
    const NOW: u64 = 1_700_000_000;

    fn container(name: &str, role: Role, ready: bool, restarts: u32) -> ContainerRecord {
        ContainerRecord {
            name: name.into(),
            role,
            pid: Some(42),
            log: PathBuf::from("/dev/null"),
            ready,
            restarts,
            last_exit_at: (restarts > 0).then_some(NOW - 15),
            state: ContainerState::Running {
                started_at: NOW - 15,
            },
            user: None,
            env: Vec::new(),
            probe: Probe::None,
            readiness: Default::default(),
            liveness: None,
            startup: None,
            last_state: None,
            sandbox: None,
        }
    }

    fn pod(name: &str, hash: &str, ip: [u8; 4], ready: bool) -> PodRecord {
        PodRecord {
            name: name.into(),
            namespace: "default".into(),
            ip: Ipv4Addr::from(ip),
            netns: format!("ama-t-{name}"),
            group: "Deployment/default/httpbin".into(),
            template_hash: hash.into(),
            created_at: NOW - 300,
            sidecar: true,
            terminating: false,
            deleted_at: None,
            init: Vec::new(),
            containers: vec![
                container("httpbin", Role::App, ready, if ready { 0 } else { 2 }),
                container("istio-proxy", Role::Sidecar, true, 0),
            ],
            object: json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default",
                    "labels": {"app": "httpbin", "pod-template-hash": hash}}}),
            events: Vec::new(),
        }
    }

    fn created(seconds_ago: u64) -> String {
        rfc3339(NOW - seconds_ago)
    }

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "httpbin", "namespace": "default", "creationTimestamp": created(600)},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "httpbin"}},
                "template": {"metadata": {"labels": {"app": "httpbin"}},
                    "spec": {"containers": [{"name": "httpbin", "image": "docker.io/kong/httpbin"}]}}}})
    }

    fn fixture() -> (State, Vec<Value>) {
        let hash = naming::template_hash(&deployment()["spec"]["template"]);
        let state = State {
            started_at: NOW - 3600,
            pods: vec![
                pod(
                    &format!("httpbin-{hash}-b7x2q"),
                    &hash,
                    [10, 244, 0, 3],
                    true,
                ),
                pod(
                    &format!("httpbin-{hash}-a9k4z"),
                    &hash,
                    [10, 244, 0, 2],
                    false,
                ),
            ],
            services: vec![ServiceRecord {
                name: "httpbin".into(),
                namespace: "default".into(),
                service_type: "ClusterIP".into(),
                cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 10)),
                ports: vec!["8000/TCP".into()],
                created_at: NOW - 600,
                object: json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "httpbin", "namespace": "default", "labels": {"app": "httpbin"}},
                    "spec": {"selector": {"app": "httpbin"}, "clusterIP": "10.96.0.10",
                        "ports": [{"name": "http", "port": 8000, "targetPort": 8080}]}}),
            }],
            ..State::default()
        };
        let slice = |pod: &str, ip: &str, ready: bool| {
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("httpbin-{pod}"), "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "httpbin"}, "creationTimestamp": created(300)},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
        };
        let objects = vec![
            deployment(),
            json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "foo", "creationTimestamp": created(7200)}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "settings", "namespace": "default", "creationTimestamp": created(60)},
                "data": {"a": "1", "b": "2"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "cert", "namespace": "istio-system", "creationTimestamp": created(60)},
                "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}}),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "httpbin", "namespace": "default", "creationTimestamp": created(90)},
                "spec": {"hosts": ["httpbin.example.com"], "gateways": ["httpbin-gateway"]}}),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "reviews", "namespace": "default", "creationTimestamp": created(90)},
                "spec": {"hosts": ["reviews"]}}),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "reviews", "namespace": "default", "creationTimestamp": created(90)},
                "spec": {"host": "reviews"}}),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                "metadata": {"name": "httpbin-gateway", "namespace": "default", "creationTimestamp": created(90)},
                "spec": {"selector": {"istio": "ingressgateway"}}}),
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "api-gateway", "namespace": "default", "creationTimestamp": created(90)},
                "spec": {"gatewayClassName": "istio"}}),
            json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                "metadata": {"name": "cnn", "namespace": "default", "creationTimestamp": created(90)},
                "spec": {"hosts": ["edition.cnn.com"], "location": "MESH_EXTERNAL", "resolution": "DNS"}}),
            json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": "istio-system", "creationTimestamp": created(90)},
                "spec": {"mtls": {"mode": "STRICT"}}}),
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "deny", "namespace": "default", "creationTimestamp": created(90)},
                "spec": {"action": "DENY"}}),
            json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
                "metadata": {"name": "jwt", "namespace": "default", "creationTimestamp": created(90)},
                "spec": {}}),
            slice("a9k4z", "10.244.0.2", false),
            slice("b7x2q", "10.244.0.3", true),
        ];
        (state, objects)
    }

    /// `kubectl get KINDS` in namespace `namespace` (None: `-A`).
    fn get(kinds: &[&str], namespace: Option<&str>, wide: bool) -> String {
        let (state, objects) = fixture();
        let snapshot = Snapshot {
            state: &state,
            objects: &objects,
            now: NOW,
            node: "node1",
        };
        let tables: Vec<Table> = kinds
            .iter()
            .map(|k| {
                let mut t = table(&snapshot, &Resource::resolve(k).unwrap(), wide);
                t.rows
                    .retain(|r| t.cluster_scoped || namespace.is_none_or(|n| n == r.namespace));
                t
            })
            .collect();
        let layout = if kinds.len() > 1 {
            Layout::WithKind
        } else {
            Layout::Plain
        };
        print(&tables, layout, namespace)
    }

    #[test]
    fn deployments_and_replicasets() {
        let hash = naming::template_hash(&deployment()["spec"]["template"]);
        assert_eq!(
            get(&["deploy"], Some("default"), false),
            "NAME      READY   UP-TO-DATE   AVAILABLE   AGE\n\
             httpbin   1/2     2            1           10m\n"
        );
        assert_eq!(
            get(&["deployments.apps"], Some("default"), true),
            "NAME      READY   UP-TO-DATE   AVAILABLE   AGE   CONTAINERS   IMAGES                   SELECTOR\n\
             httpbin   1/2     2            1           10m   httpbin      docker.io/kong/httpbin   app=httpbin\n"
        );
        let rs = format!("httpbin-{hash}");
        let pad = " ".repeat(rs.len() - 4);
        assert_eq!(
            get(&["rs"], Some("default"), false),
            format!(
                "NAME{pad}   DESIRED   CURRENT   READY   AGE\n\
                 {rs}   2         2         1       5m\n"
            )
        );
    }

    #[test]
    fn get_all_prints_a_block_per_kind_with_kind_slash_name() {
        let hash = naming::template_hash(&deployment()["spec"]["template"]);
        let out = get(&ALL, Some("default"), false);
        let blocks: Vec<&str> = out.split("\n\n").collect();
        assert_eq!(blocks.len(), 4, "{out}");
        assert!(blocks[0].starts_with("NAME "), "{out}");
        assert!(
            blocks[0].contains(&format!(
                "pod/httpbin-{hash}-a9k4z   1/2     Running   2 (15s ago)   5m"
            )),
            "{out}"
        );
        assert_eq!(
            blocks[1],
            "NAME              TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)    AGE\n\
             service/httpbin   ClusterIP   10.96.0.10   <none>        8000/TCP   10m"
        );
        assert_eq!(
            blocks[2],
            "NAME                      READY   UP-TO-DATE   AVAILABLE   AGE\n\
             deployment.apps/httpbin   1/2     2            1           10m"
        );
        assert!(
            blocks[3].starts_with("NAME ")
                && blocks[3].contains(&format!("replicaset.apps/httpbin-{hash}   2 ")),
            "{out}"
        );
        // Pods sorted by name, as the API server lists them.
        let a = out.find("a9k4z").unwrap();
        let b = out.find("b7x2q").unwrap();
        assert!(a < b);
        assert_eq!(
            get(&ALL, Some("nowhere"), false),
            "No resources found in nowhere namespace.\n"
        );
    }

    #[test]
    fn endpoints_namespaces_configmaps_secrets() {
        assert_eq!(
            get(&["ep"], Some("default"), false),
            "NAME      ENDPOINTS         AGE\n\
             httpbin   10.244.0.3:8080   10m\n"
        );
        assert_eq!(
            get(&["endpointslices"], Some("default"), false),
            "NAME            ADDRESSTYPE   PORTS   ENDPOINTS    AGE\n\
             httpbin-a9k4z   IPv4          8080    10.244.0.2   5m\n\
             httpbin-b7x2q   IPv4          8080    10.244.0.3   5m\n"
        );
        assert_eq!(
            get(&["ns"], Some("default"), false),
            "NAME           STATUS   AGE\n\
             default        Active   60m\n\
             foo            Active   120m\n\
             istio-system   Active   60m\n"
        );
        assert_eq!(
            get(&["cm"], Some("default"), false),
            "NAME       DATA   AGE\n\
             settings   2      60s\n"
        );
        let secrets = get(&["secrets"], None, false);
        assert_eq!(
            secrets,
            "NAMESPACE      NAME   TYPE                DATA   AGE\n\
             istio-system   cert   kubernetes.io/tls   2      60s\n"
        );
        assert!(!secrets.contains("Y2VydA=="));
        assert_eq!(
            at_most_three(&["a".into(), "b".into(), "c".into(), "d".into(), "e".into()]),
            "a,b,c + 2 more..."
        );
    }

    #[test]
    fn istio_kinds_have_their_crds_printer_columns() {
        assert_eq!(
            get(&["vs"], Some("default"), false),
            "NAME      GATEWAYS              HOSTS                     AGE\n\
             httpbin   [\"httpbin-gateway\"]   [\"httpbin.example.com\"]   90s\n\
             reviews                         [\"reviews\"]               90s\n"
        );
        assert_eq!(
            get(&["destinationrules"], Some("default"), false),
            "NAME      HOST      AGE\nreviews   reviews   90s\n"
        );
        assert_eq!(
            get(&["gw"], Some("default"), false),
            "NAME              AGE\nhttpbin-gateway   90s\n"
        );
        assert_eq!(
            get(&["gtw"], Some("default"), false),
            "NAME          AGE\napi-gateway   90s\n"
        );
        assert_eq!(
            get(&["se"], Some("default"), false),
            "NAME   HOSTS                 LOCATION        RESOLUTION   AGE\n\
             cnn    [\"edition.cnn.com\"]   MESH_EXTERNAL   DNS          90s\n"
        );
        assert_eq!(
            get(&["pa"], None, false),
            "NAMESPACE      NAME      MODE     AGE\nistio-system   default   STRICT   90s\n"
        );
        assert_eq!(
            get(&["ap"], Some("default"), false),
            "NAME   ACTION   AGE\ndeny   DENY     90s\n"
        );
        assert_eq!(
            get(&["ra"], Some("default"), false),
            "NAME   AGE\njwt    90s\n"
        );
        assert_eq!(
            get(&["sidecars"], Some("default"), false),
            "No resources found in default namespace.\n"
        );
        let (state, objects) = fixture();
        let snapshot = Snapshot {
            state: &state,
            objects: &objects,
            now: NOW,
            node: "n",
        };
        let vs = table(&snapshot, &Resource::resolve("vs").unwrap(), false);
        assert_eq!(vs.prefix, "virtualservice.networking.istio.io");
        assert_eq!(
            print(&[vs], Layout::Names, Some("default")),
            "virtualservice.networking.istio.io/httpbin\nvirtualservice.networking.istio.io/reviews\n"
        );
    }

    #[test]
    fn statefulsets_and_daemonsets() {
        let mut db = pod("db-0", "h", [10, 244, 0, 9], true);
        db.group = "StatefulSet/default/db".into();
        let mut agent = pod("agent-x7k2p", "h", [10, 244, 0, 8], false);
        agent.group = "DaemonSet/default/agent".into();
        let state = State {
            pods: vec![db, agent],
            ..State::default()
        };
        let objects = vec![
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "db", "namespace": "default", "creationTimestamp": created(60)},
                "spec": {"replicas": 2}}),
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "agent", "namespace": "default", "creationTimestamp": created(60)},
                "spec": {}}),
        ];
        let snapshot = Snapshot {
            state: &state,
            objects: &objects,
            now: NOW,
            node: "n",
        };
        let tables: Vec<Table> = ALL
            .iter()
            .map(|k| table(&snapshot, &Resource::resolve(k).unwrap(), false))
            .collect();
        let out = print(&tables, Layout::WithKind, Some("default"));
        let blocks: Vec<&str> = out.split("\n\n").collect();
        assert_eq!(blocks.len(), 3, "{out}");
        assert_eq!(
            blocks[1],
            "NAME                   DESIRED   CURRENT   READY   UP-TO-DATE   AVAILABLE   NODE SELECTOR   AGE\n\
             daemonset.apps/agent   1         1         0       1            0           <none>          60s"
        );
        assert_eq!(
            blocks[2],
            "NAME                  READY   AGE\nstatefulset.apps/db   1/2     60s\n"
        );
    }

    #[test]
    fn timestamps_read_back() {
        for t in [0, 1_583_563_462, NOW] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
        assert_eq!(
            parse_rfc3339("2020-03-07T06:44:22.123Z"),
            Some(1_583_563_462)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
