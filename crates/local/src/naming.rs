//! Names as Kubernetes makes them, so pods under `ama up` look like the article's
//! (`httpbin-deployment-9bfd96975-px5lv`), and the names of what the runtime creates on the host.
//!
//! - `pod-template-hash`: FNV-1a (32 bit) of the pod template, its decimal digits spelled in the
//!   alphabet of Kubernetes' `rand.SafeEncodeString` (no vowels, no look-alikes), as the
//!   Deployment controller does. The local-mode annotations (`local.ama.dev/*`) are left out, so
//!   changing a local command does not look like a rollout.
//! - The pod suffix: 5 random characters of the same alphabet (`utilrand.String(5)`).

use rand::Rng;
use serde_json::Value;

/// Kubernetes' alphabet for generated names.
pub const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Prefix of the local-mode annotations, left out of the template hash.
pub const LOCAL_PREFIX: &str = "local.ama.dev/";
/// Length of a generated pod suffix.
const SUFFIX_LEN: usize = 5;

/// The `pod-template-hash` of a pod template (`{metadata, spec}`).
pub fn template_hash(template: &Value) -> String {
    let mut template = template.clone();
    if let Some(Value::Object(metadata)) = template.get_mut("metadata") {
        if let Some(Value::Object(annotations)) = metadata.get_mut("annotations") {
            annotations.retain(|k, _| !k.starts_with(LOCAL_PREFIX));
        }
        // No annotations and an empty list of them are the same template.
        if metadata
            .get("annotations")
            .and_then(Value::as_object)
            .is_some_and(|a| a.is_empty())
        {
            metadata.remove("annotations");
        }
    }
    // serde_json writes object keys in sorted order: the hash does not depend on the YAML's order.
    let text = canonical_json(&template);
    safe_encode(&fnv1a32(text.as_bytes()).to_string())
}

/// `<owner>-<hash>-<5 random>`: the name of a pod of a Deployment's ReplicaSet.
pub fn replica_pod_name(owner: &str, hash: &str, rng: &mut impl Rng) -> String {
    format!("{owner}-{hash}-{}", random_suffix(rng))
}

/// `<owner>-<5 random>`: the name of a DaemonSet's pod.
pub fn daemon_pod_name(owner: &str, rng: &mut impl Rng) -> String {
    format!("{owner}-{}", random_suffix(rng))
}

/// 5 characters of [`SAFE_ALPHABET`].
pub fn random_suffix(rng: &mut impl Rng) -> String {
    (0..SUFFIX_LEN)
        .map(|_| char::from(SAFE_ALPHABET[rng.random_range(0..SAFE_ALPHABET.len())]))
        .collect()
}

/// The network namespace of a pod: `ama.<mesh>.<namespace>.<pod>` (a file name under
/// `/run/netns`, so only its length is limited, to 255). Mesh and namespace names have no
/// dots, so [`netns_prefix`] tells the namespaces of one mesh from another's.
pub fn pod_netns(cluster: &str, namespace: &str, pod: &str) -> String {
    let name = format!("{}{namespace}.{pod}", netns_prefix(cluster));
    name.chars().take(200).collect()
}

/// The namespace that holds the mesh's bridge: `ama.<mesh>.lan`.
pub fn lan_netns(cluster: &str) -> String {
    format!("{}lan", netns_prefix(cluster))
}

/// The start of the name of every network namespace of mesh `cluster`: `ama.<mesh>.`.
pub fn netns_prefix(cluster: &str) -> String {
    format!("ama.{cluster}.")
}

/// Whether `name` can name a mesh: 1 to 20 of `[a-z0-9-]`, not starting or ending with '-'.
pub fn valid_cluster_name(name: &str) -> bool {
    (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// JSON with keys sorted at every level, whatever serde_json's map order is.
fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Kubernetes' `rand.SafeEncodeString`: each byte mapped into [`SAFE_ALPHABET`].
fn safe_encode(text: &str) -> String {
    text.bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use serde_json::json;

    #[test]
    fn hash_is_stable_and_ignores_local_annotations_and_key_order() {
        let a = json!({"metadata": {"labels": {"app": "httpbin", "v": "1"},
            "annotations": {"local.ama.dev/command": "ama sample httpbin"}},
            "spec": {"containers": [{"name": "httpbin"}]}});
        let b = json!({"spec": {"containers": [{"name": "httpbin"}]},
            "metadata": {"labels": {"v": "1", "app": "httpbin"}}});
        let h = template_hash(&a);
        assert_eq!(h, template_hash(&b));
        assert!((1..=10).contains(&h.len()), "{h}");
        assert!(h.bytes().all(|c| SAFE_ALPHABET.contains(&c)), "{h}");
        let c = json!({"metadata": {"labels": {"app": "httpbin", "v": "2"}},
            "spec": {"containers": [{"name": "httpbin"}]}});
        assert_ne!(h, template_hash(&c));
    }

    #[test]
    fn pod_names_look_like_kubernetes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let name = replica_pod_name("httpbin-deployment", "9bfd96975", &mut rng);
        let suffix = name.strip_prefix("httpbin-deployment-9bfd96975-").unwrap();
        assert_eq!(suffix.len(), 5);
        assert!(suffix.bytes().all(|c| SAFE_ALPHABET.contains(&c)));
        assert_ne!(
            name,
            replica_pod_name("httpbin-deployment", "9bfd96975", &mut rng)
        );
        assert!(daemon_pod_name("agent", &mut rng).starts_with("agent-"));
    }

    #[test]
    fn cluster_names() {
        assert!(valid_cluster_name("ama"));
        assert!(valid_cluster_name("e2e-1234"));
        for bad in ["", "-a", "a-", "A", "a_b", "a/b", "abcdefghijklmnopqrstu"] {
            assert!(!valid_cluster_name(bad), "{bad}");
        }
        assert_eq!(pod_netns("ama", "default", "p-1"), "ama.ama.default.p-1");
        assert_eq!(lan_netns("ama"), "ama.ama.lan");
        assert!(!pod_netns("ama-x", "default", "p").starts_with(&netns_prefix("ama")));
    }
}
