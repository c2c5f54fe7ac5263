//! Encoded resources shared between proxies: what lets one control plane serve thousands.
//!
//! A [`TypeView`] is the encoded resources of one type that some proxies should have, by name;
//! a [`Snapshot`] is one `Arc<TypeView>` per [`ResourceType`]: everything one proxy should have.
//! Proxies that see the same thing hold the same `Arc`s (every proxy shares the workloads, the
//! proxies of a namespace share its services, routes, policies and authorizations; only the
//! tiny node resource is the proxy's own), and each resource is encoded once per change, not
//! once per proxy ([`Encoder`]).
//!
//! A view built for the same proxies as an earlier one ([`TypeView::build`]) keeps the earlier
//! `Arc` when nothing changed, so "did it change?" is a pointer comparison; otherwise it records
//! the difference from the earlier one ([`ViewDelta`]) so that every stream that held the
//! earlier view sends the change without comparing every entry itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, Weak};

use tonic::codegen::Bytes;

use super::codec::{AnyResource, EncodedResource, ResourceType, set_version, split};
use super::response::resources_wire;
use crate::ProxyResources;

/// The names that differ between two views of one type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewDelta {
    /// Added, or present in both with another body.
    pub changed: Vec<Arc<str>>,
    /// In the old view only.
    pub removed: Vec<Arc<str>>,
}

impl ViewDelta {
    /// Whether the two views hold the same resources.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The encoded resources of one type, by name (in name order), with the version of the set.
#[derive(Debug, Default)]
pub struct TypeView {
    entries: BTreeMap<Arc<str>, Arc<EncodedResource>>,
    /// Shared with the streams that hold this view, as the version they sent and had ACKed.
    version: Arc<str>,
    /// The view this one replaced for the same proxies, and what changed since.
    base: Option<(Weak<TypeView>, Arc<ViewDelta>)>,
    /// Every entry as a Delta ADS response's `resources` fields, made by the first response that
    /// sends the whole view ([`TypeView::wire`]).
    wire: OnceLock<Bytes>,
}

impl TypeView {
    /// A view of `entries`, unrelated to any earlier one.
    pub fn new(entries: BTreeMap<Arc<str>, Arc<EncodedResource>>) -> TypeView {
        let version = Arc::from(set_version(
            entries.iter().map(|(n, e)| (&**n, &*e.version)),
        ));
        TypeView {
            entries,
            version,
            base: None,
            wire: OnceLock::new(),
        }
    }

    /// The view of `entries` for the proxies that had `previous`: `previous` itself when every
    /// entry is the same `Arc` (so an unchanged view stays pointer-equal across pushes), else a
    /// new view that records its difference from `previous`.
    pub fn build(
        entries: BTreeMap<Arc<str>, Arc<EncodedResource>>,
        previous: Option<&Arc<TypeView>>,
    ) -> Arc<TypeView> {
        let Some(previous) = previous else {
            return Arc::new(TypeView::new(entries));
        };
        let same = previous.entries.len() == entries.len()
            && previous
                .entries
                .iter()
                .zip(&entries)
                .all(|((n1, e1), (n2, e2))| n1 == n2 && Arc::ptr_eq(e1, e2));
        if same {
            return Arc::clone(previous);
        }
        let mut view = TypeView::new(entries);
        let delta = previous.diff(&view);
        view.base = Some((Arc::downgrade(previous), Arc::new(delta)));
        Arc::new(view)
    }

    /// Every entry, in name order, as the `resources` fields of a Delta ADS response: encoded
    /// once, by the first response that sends the whole view, and then shared by every proxy
    /// that syncs it (the bytes live as long as the view). A first sync of 5k services is a few
    /// MB per type, which was otherwise encoded again for each proxy.
    pub(crate) fn wire(&self) -> &Bytes {
        self.wire
            .get_or_init(|| Bytes::from(resources_wire(self.entries.iter())))
    }

    /// The resource named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<EncodedResource>> {
        self.entries.get(name)
    }

    /// The resource named `name`, with its shared name.
    pub fn get_entry(&self, name: &str) -> Option<(&Arc<str>, &Arc<EncodedResource>)> {
        self.entries.get_key_value(name)
    }

    /// Every resource, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<EncodedResource>)> {
        self.entries.iter()
    }

    /// How many resources.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The version of the whole set ([`set_version`] of its names and versions).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// [`TypeView::version`], to keep without a copy.
    pub(crate) fn shared_version(&self) -> &Arc<str> {
        &self.version
    }

    /// The recorded difference from `old`, when this view was built to replace it.
    pub fn delta_from(&self, old: &Arc<TypeView>) -> Option<&Arc<ViewDelta>> {
        let (base, delta) = self.base.as_ref()?;
        std::ptr::eq(base.as_ptr(), Arc::as_ptr(old)).then_some(delta)
    }

    /// What differs from `self` to `new`: one walk over both, comparing bodies by pointer first.
    pub fn diff(&self, new: &TypeView) -> ViewDelta {
        let mut delta = ViewDelta::default();
        let mut old = self.entries.iter().peekable();
        let mut cur = new.entries.iter().peekable();
        loop {
            match (old.peek(), cur.peek()) {
                (None, None) => break,
                (Some((n, _)), None) => {
                    delta.removed.push(Arc::clone(n));
                    old.next();
                }
                (None, Some((n, _))) => {
                    delta.changed.push(Arc::clone(n));
                    cur.next();
                }
                (Some((on, oe)), Some((nn, ne))) => match on.cmp(nn) {
                    std::cmp::Ordering::Less => {
                        delta.removed.push(Arc::clone(on));
                        old.next();
                    }
                    std::cmp::Ordering::Greater => {
                        delta.changed.push(Arc::clone(nn));
                        cur.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if !Arc::ptr_eq(oe, ne) && oe.version != ne.version {
                            delta.changed.push(Arc::clone(nn));
                        }
                        old.next();
                        cur.next();
                    }
                },
            }
        }
        delta
    }
}

/// What one proxy should have: a view per type, usually shared with other proxies.
#[derive(Debug, Clone)]
pub struct Snapshot {
    types: [Arc<TypeView>; ResourceType::ALL.len()],
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        let empty = Arc::new(TypeView::default());
        Snapshot::new(|_| Arc::clone(&empty))
    }
}

impl Snapshot {
    /// A snapshot with `view(ty)` for each type.
    pub fn new(mut view: impl FnMut(ResourceType) -> Arc<TypeView>) -> Snapshot {
        Snapshot {
            types: ResourceType::ALL.map(&mut view),
        }
    }

    /// The view of `ty`.
    pub fn get(&self, ty: ResourceType) -> &Arc<TypeView> {
        &self.types[ty as usize]
    }

    /// Whether both hold the same views (pointer comparison).
    pub fn same(&self, other: &Snapshot) -> bool {
        self.types
            .iter()
            .zip(&other.types)
            .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// Encodes one proxy's whole [`ProxyResources`] on its own (nothing shared), reporting
    /// resources that cannot travel (see [`Encoder::view`]).
    pub fn encode(res: &ProxyResources) -> (Snapshot, Vec<String>) {
        let mut by_type: BTreeMap<ResourceType, Vec<AnyResource>> = BTreeMap::new();
        for r in split(res) {
            by_type.entry(r.resource_type()).or_default().push(r);
        }
        let mut encoder = Encoder::default();
        let mut problems = Vec::new();
        let snap = Snapshot::new(|ty| {
            let (view, p) = encoder.view(by_type.remove(&ty).unwrap_or_default(), None);
            problems.extend(p);
            view
        });
        (snap, problems)
    }
}

/// Encodes resources once and reuses the encoding while a resource does not change.
///
/// A resource asked for again with an equal value gets the same `Arc` as before, so views
/// built from it compare by pointer. Call [`Encoder::begin_push`] at the start of each push:
/// what the previous push (and anything since) used stays reusable, the rest is forgotten.
#[derive(Debug)]
pub struct Encoder {
    previous: HashMap<(ResourceType, String), Vec<Encoded>>,
    current: HashMap<(ResourceType, String), Vec<Encoded>>,
    /// The keys of [`Encoder::fingerprint`], random per encoder.
    keys: (std::hash::RandomState, std::hash::RandomState),
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder {
            previous: HashMap::new(),
            current: HashMap::new(),
            keys: (std::hash::RandomState::new(), std::hash::RandomState::new()),
        }
    }
}

#[derive(Debug, Clone)]
struct Encoded {
    /// What the resource's value hashes to: an encoding is reused for an equal fingerprint.
    /// Keeping the value itself to compare was a whole second copy of every resource (at
    /// 5k services about a fifth of discovery's heap at a push's peak).
    fingerprint: u128,
    name: Arc<str>,
    encoded: Arc<EncodedResource>,
}

impl Encoder {
    /// Starts a push: encodings used since the last call stay reusable, older ones are dropped.
    pub fn begin_push(&mut self) {
        self.previous = std::mem::take(&mut self.current);
    }

    /// The shared name and encoding of `r`.
    pub fn encode(
        &mut self,
        r: AnyResource,
    ) -> Result<(Arc<str>, Arc<EncodedResource>), serde_json::Error> {
        let key = (r.resource_type(), r.name());
        let fingerprint = self.fingerprint(&r);
        if let Some(e) = self
            .current
            .get(&key)
            .and_then(|v| v.iter().find(|e| e.fingerprint == fingerprint))
        {
            return Ok((Arc::clone(&e.name), Arc::clone(&e.encoded)));
        }
        // Moved, not cloned: a later request for the same value finds it in `current`.
        let found = self.previous.get_mut(&key).and_then(|v| {
            let i = v.iter().position(|e| e.fingerprint == fingerprint)?;
            Some(v.swap_remove(i))
        });
        let e = match found {
            Some(e) => e,
            None => Encoded {
                encoded: Arc::new(r.encode()?),
                name: Arc::from(key.1.as_str()),
                fingerprint,
            },
        };
        let out = (Arc::clone(&e.name), Arc::clone(&e.encoded));
        // A name has one value almost always: room for exactly one, where a first `push` would
        // make room for four `Encoded`s (when each held a whole resource, that spare room was
        // most of the encoder's memory at 5k services).
        let values = self.current.entry(key).or_default();
        values.reserve_exact(1);
        values.push(e);
        Ok(out)
    }

    /// Two 64-bit SipHash-1-3 hashes of `r`'s value under this encoder's two random keys, as one
    /// 128-bit number. Values that hash alike are taken as equal: by chance that happens once
    /// in 2^128 comparisons, and the random keys keep anyone who writes config from choosing a
    /// collision.
    fn fingerprint(&self, r: &AnyResource) -> u128 {
        use std::hash::BuildHasher;
        let high = u128::from(self.keys.0.hash_one(r));
        let low = u128::from(self.keys.1.hash_one(r));
        high << 64 | low
    }

    /// The view of `resources` (all of one type) for the proxies that had `previous` (see
    /// [`TypeView::build`]). Two resources with the same name cannot both travel: the first is
    /// kept and the other reported, as is a resource that does not encode.
    pub fn view(
        &mut self,
        resources: impl IntoIterator<Item = AnyResource>,
        previous: Option<&Arc<TypeView>>,
    ) -> (Arc<TypeView>, Vec<String>) {
        let mut entries = BTreeMap::new();
        let mut problems = Vec::new();
        for r in resources {
            let (ty, name) = (r.resource_type(), r.name());
            if entries.contains_key(name.as_str()) {
                problems.push(format!(
                    "{ty} {name:?}: duplicate name; the first one is sent"
                ));
                continue;
            }
            match self.encode(r) {
                Ok((name, encoded)) => {
                    entries.insert(name, encoded);
                }
                Err(e) => problems.push(format!("{ty} {name:?}: {e}")),
            }
        }
        (TypeView::build(entries, previous), problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Service;

    fn service(name: &str, port: u16) -> AnyResource {
        AnyResource::Service(
            serde_json::from_value::<Service>(serde_json::json!({
                "hostname": format!("{name}.default.svc.cluster.local"),
                "name": name,
                "namespace": "default",
                "ports": [{"port": port}],
            }))
            .expect("service"),
        )
    }

    fn names(v: &[Arc<str>]) -> Vec<&str> {
        v.iter().map(|n| &**n).collect()
    }

    #[test]
    fn unchanged_view_is_the_same_arc_and_encodings_are_shared() {
        let mut enc = Encoder::default();
        let (a, p) = enc.view([service("a", 80), service("b", 80)], None);
        assert!(p.is_empty(), "{p:?}");
        enc.begin_push();
        let (b, _) = enc.view([service("a", 80), service("b", 80)], Some(&a));
        assert!(Arc::ptr_eq(&a, &b));
        // Another group of proxies seeing one of the same services shares its encoding.
        let (c, _) = enc.view([service("a", 80)], None);
        let name = "default/a.default.svc.cluster.local";
        assert!(Arc::ptr_eq(
            c.get(name).expect("a"),
            a.get(name).expect("a")
        ));
    }

    #[test]
    fn a_kept_encoding_moves_to_the_next_push_and_a_name_holds_no_spare_values() {
        let mut enc = Encoder::default();
        let (a, _) = enc.view([service("a", 80), service("b", 80)], None);
        enc.begin_push();
        let (b, _) = enc.view([service("a", 80), service("b", 81)], Some(&a));
        let name = "default/a.default.svc.cluster.local";
        assert!(Arc::ptr_eq(
            a.get(name).expect("a"),
            b.get(name).expect("a")
        ));
        let key = (ResourceType::Service, name.to_string());
        assert!(enc.previous[&key].is_empty(), "moved from the last push");
        for values in enc.current.values() {
            assert_eq!((values.len(), values.capacity()), (1, 1));
        }
        // The same name with another value (another group of proxies) is a second entry.
        let (c, _) = enc.view([service("a", 81)], None);
        assert!(!Arc::ptr_eq(
            c.get(name).expect("a"),
            a.get(name).expect("a")
        ));
        assert_eq!(enc.current[&key].len(), 2);
    }

    #[test]
    fn a_value_that_encodes_differently_is_encoded_again() {
        // The encoder recognises a value by its fingerprint; every difference that reaches the
        // wire must change it, down to nested fields.
        let variants = [
            serde_json::json!({"hostname": "a.default.svc.cluster.local", "name": "a",
                "namespace": "default", "ports": [{"port": 80}]}),
            serde_json::json!({"hostname": "a.default.svc.cluster.local", "name": "a",
                "namespace": "default", "ports": [{"port": 80, "name": "http"}]}),
            serde_json::json!({"hostname": "a.default.svc.cluster.local", "name": "a",
                "namespace": "default", "ports": [{"port": 80, "name": "http"}, {"port": 81}]}),
            serde_json::json!({"hostname": "a.default.svc.cluster.local", "name": "a",
                "namespace": "default", "ports": [{"port": 80, "name": "grpc"}]}),
        ];
        let mut enc = Encoder::default();
        let mut seen: Vec<Arc<EncodedResource>> = Vec::new();
        for v in variants {
            let r = AnyResource::Service(serde_json::from_value::<Service>(v).expect("service"));
            enc.begin_push();
            let (_, e) = enc.encode(r.clone()).expect("encodes");
            assert_eq!(e.any.value, r.encode().expect("encodes").any.value);
            assert!(
                seen.iter().all(|s| s.version != e.version),
                "a new encoding"
            );
            seen.push(e);
        }
        // Two encoders (two discovery processes) key their fingerprints differently.
        let other = Encoder::default();
        let r = service("a", 80);
        assert_ne!(enc.fingerprint(&r), other.fingerprint(&r));
        assert_eq!(enc.fingerprint(&r), enc.fingerprint(&r.clone()));
    }

    #[test]
    fn delta_between_views_includes_removals() {
        let mut enc = Encoder::default();
        let (old, _) = enc.view([service("a", 80), service("b", 80), service("c", 80)], None);
        enc.begin_push();
        let (new, _) = enc.view(
            [service("a", 80), service("b", 81), service("d", 80)],
            Some(&old),
        );
        assert!(!Arc::ptr_eq(&old, &new));
        let delta = new.delta_from(&old).expect("recorded");
        assert_eq!(
            names(&delta.changed),
            [
                "default/b.default.svc.cluster.local",
                "default/d.default.svc.cluster.local"
            ]
        );
        assert_eq!(
            names(&delta.removed),
            ["default/c.default.svc.cluster.local"]
        );
        assert_eq!(**delta, old.diff(&new));
        // The recorded delta is only for the view it replaced.
        let (other, _) = enc.view([service("a", 80)], None);
        assert!(new.delta_from(&other).is_none());
        assert_ne!(old.version(), new.version());
    }

    #[test]
    fn duplicates_are_reported_and_the_first_kept() {
        let mut enc = Encoder::default();
        let (v, p) = enc.view([service("a", 80), service("a", 81)], None);
        assert_eq!(v.len(), 1);
        assert_eq!(p.len(), 1, "{p:?}");
    }
}
