//! A Delta ADS response as a stream queues it ([`Outgoing`]) and as the transport writes it
//! ([`Chunks`]): the gRPC message, in pieces of at most [`CHUNK`] bytes, encoded as HTTP/2 asks
//! for them.
//!
//! Written by hand, not through prost's `Message::encode`, for two reasons. The queued response
//! holds the shared encodings (`Arc`s), not a `DeltaDiscoveryResponse` that would own a copy of
//! every resource. And a first sync is a message of a few MB per proxy: as one buffer it is a
//! fresh mapping (`ama discovery` maps allocations from 8 KB, see `control::memory`),
//! page-faulted and unmapped per proxy, and held whole until the proxy has read it all. A
//! message larger than [`CHUNK`] goes in pieces of that size, whose buffers come back to a
//! small pool once HTTP/2 has written them, so a sync burst reuses a few MB of buffers instead
//! of mapping a new one per proxy. A smaller message (a push) is one buffer of its exact size.
//! A first sync of a whole shared view ([`Resources::Whole`]) copies nothing: its resources go
//! as slices of the view's own encoding of them ([`TypeView::wire`]), made once for every proxy.
//! The bytes are prost's, field for field (a unit test compares them).

use std::sync::{Arc, Mutex, PoisonError};

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::codegen::Bytes;

use super::codec::EncodedResource;
use super::view::TypeView;
use crate::grpc;

/// Size of a piece of a large message (a piece is larger only for one larger resource).
pub(crate) const CHUNK: usize = 64 * 1024;

/// Piece buffers kept for reuse, at most [`POOL_MAX`] (4 MB).
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// How many piece buffers [`POOL`] keeps.
const POOL_MAX: usize = 64;

/// A piece buffer from [`POOL`], or a new one.
fn piece_buffer() -> Vec<u8> {
    let reused = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop();
    reused.unwrap_or_else(|| Vec::with_capacity(CHUNK))
}

/// A written piece: its buffer goes back to [`POOL`] when HTTP/2 drops it.
struct Piece(Vec<u8>);

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() != CHUNK {
            return;
        }
        buf.clear();
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    }
}

/// The resources of a queued response.
#[derive(Clone)]
pub(crate) enum Resources {
    /// Some resources, by their shared encodings: a pointer pair per resource and no copy.
    Listed(Vec<(Arc<str>, Arc<EncodedResource>)>),
    /// Every resource of a view, in name order: a proxy's first sync of a type it wants whole.
    /// Its `resources` fields are the view's [`TypeView::wire`], encoded once for every proxy
    /// that syncs this view and written as slices of those bytes, so a first sync costs no
    /// per-proxy list and no per-proxy copy of the resources.
    Whole(Arc<TypeView>),
}

impl Resources {
    /// How many resources.
    pub(crate) fn len(&self) -> usize {
        match self {
            Resources::Listed(list) => list.len(),
            Resources::Whole(view) => view.len(),
        }
    }
}

/// A response as queued: its resources are the shared encodings themselves ([`Resources`]), so a
/// queued response copies no resource. During a first sync, a proxy's queue holds a response per
/// type while the first is still being written.
pub(crate) struct Outgoing {
    pub(crate) version: Arc<str>,
    pub(crate) type_url: &'static str,
    pub(crate) resources: Resources,
    pub(crate) removed: Vec<String>,
    pub(crate) nonce: String,
}

impl Outgoing {
    /// The response as envoy-types' message.
    pub(crate) fn into_response(self) -> DeltaDiscoveryResponse {
        let resources = match &self.resources {
            Resources::Listed(list) => list.iter().map(|(n, e)| e.to_resource(n)).collect(),
            Resources::Whole(view) => view.iter().map(|(n, e)| e.to_resource(n)).collect(),
        };
        DeltaDiscoveryResponse {
            system_version_info: self.version.to_string(),
            resources,
            type_url: self.type_url.to_string(),
            removed_resources: self.removed,
            nonce: self.nonce,
            ..DeltaDiscoveryResponse::default()
        }
    }

    /// The gRPC message of [`Outgoing::into_response`] (header, then the body prost would write),
    /// in pieces.
    pub(crate) fn into_chunks(self) -> Chunks {
        let resources = match &self.resources {
            Resources::Listed(list) => list.iter().map(|(n, e)| resource_field_len(n, e)).sum(),
            Resources::Whole(view) => view.wire().len(),
        };
        let body = string_field_len(1, self.version.len())
            + resources
            + string_field_len(4, self.type_url.len())
            + string_field_len(5, self.nonce.len())
            + self
                .removed
                .iter()
                .map(|n| key_len(6) + len_delimited(n.len()))
                .sum::<usize>();
        Chunks {
            out: self,
            body,
            written: 0,
            next: Part::Start,
        }
    }
}

/// Where [`Chunks`] is in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The gRPC header and `system_version_info`.
    Start,
    /// `resources[i]` of [`Resources::Listed`].
    Resource(usize),
    /// The [`TypeView::wire`] of [`Resources::Whole`] from this offset on.
    Shared(usize),
    /// `type_url` and `nonce`.
    Names,
    /// `removed_resources[i]`.
    Removed(usize),
    Done,
}

/// The pieces of one response's gRPC message, in order; see [`Outgoing::into_chunks`].
pub(crate) struct Chunks {
    out: Outgoing,
    /// Length of the message body (after the gRPC header).
    body: usize,
    /// Bytes of the message (header included) in the pieces returned so far.
    written: usize,
    next: Part,
}

impl Chunks {
    /// Length of `part` as encoded.
    fn len_of(&self, part: Part) -> usize {
        let out = &self.out;
        match part {
            Part::Start => grpc::HEADER_LEN + string_field_len(1, out.version.len()),
            Part::Resource(i) => match &out.resources {
                Resources::Listed(list) => resource_field_len(&list[i].0, &list[i].1),
                Resources::Whole(_) => 0,
            },
            Part::Shared(at) => self.shared().map_or(0, |wire| wire.len() - at),
            Part::Names => {
                string_field_len(4, out.type_url.len()) + string_field_len(5, out.nonce.len())
            }
            Part::Removed(i) => key_len(6) + len_delimited(out.removed[i].len()),
            Part::Done => 0,
        }
    }

    fn encode(&self, part: Part, buf: &mut Vec<u8>) {
        let out = &self.out;
        match part {
            Part::Start => {
                buf.extend_from_slice(&grpc::header(self.body));
                put_string_field(1, &out.version, buf);
            }
            Part::Resource(i) => {
                if let Resources::Listed(list) = &out.resources {
                    put_resource_field(&list[i].0, &list[i].1, buf);
                }
            }
            // Written as a slice of the shared bytes, never into a buffer (`next`).
            Part::Shared(_) => {}
            Part::Names => {
                put_string_field(4, out.type_url, buf);
                put_string_field(5, &out.nonce, buf);
            }
            Part::Removed(i) => {
                // Repeated: written even when empty.
                let name = &out.removed[i];
                encode_key(6, WireType::LengthDelimited, buf);
                encode_varint(name.len() as u64, buf);
                buf.extend_from_slice(name.as_bytes());
            }
            Part::Done => {}
        }
    }

    /// The shared bytes of [`Resources::Whole`].
    fn shared(&self) -> Option<&Bytes> {
        match &self.out.resources {
            Resources::Listed(_) => None,
            Resources::Whole(view) => Some(view.wire()),
        }
    }

    fn after(&self, part: Part) -> Part {
        let removed = self.out.removed.len();
        let resource_or_names = |i: usize| match &self.out.resources {
            Resources::Listed(list) if i < list.len() => Part::Resource(i),
            Resources::Whole(view) if i == 0 && !view.wire().is_empty() => Part::Shared(0),
            _ => Part::Names,
        };
        let removed_or_done = |i: usize| {
            if i < removed {
                Part::Removed(i)
            } else {
                Part::Done
            }
        };
        match part {
            Part::Start => resource_or_names(0),
            Part::Resource(i) => resource_or_names(i + 1),
            Part::Shared(_) => Part::Names,
            Part::Names => removed_or_done(0),
            Part::Removed(i) => removed_or_done(i + 1),
            Part::Done => Part::Done,
        }
    }
}

impl Iterator for Chunks {
    type Item = Bytes;

    /// The next piece: [`CHUNK`] bytes of the shared resources of [`Resources::Whole`] as a
    /// slice of them; else what is left (up to those shared bytes) when it fits in [`CHUNK`]
    /// bytes, else whole parts up to [`CHUNK`] bytes in a pooled buffer (or one part alone when
    /// it is larger).
    fn next(&mut self) -> Option<Bytes> {
        if let Part::Shared(at) = self.next {
            let wire = self.shared().cloned().unwrap_or_default();
            let end = wire.len().min(at + CHUNK);
            self.next = if end < wire.len() {
                Part::Shared(end)
            } else {
                self.after(self.next)
            };
            self.written += end - at;
            return Some(wire.slice(at..end));
        }
        if self.next == Part::Done {
            return None;
        }
        // The shared bytes still to come are not written into a buffer.
        let shared = match self.next {
            Part::Start => self.shared().map_or(0, Bytes::len),
            _ => 0,
        };
        let left = grpc::HEADER_LEN + self.body - self.written - shared;
        let mut buf = if left > CHUNK {
            piece_buffer()
        } else {
            Vec::with_capacity(left)
        };
        while !matches!(self.next, Part::Done | Part::Shared(_)) {
            let len = self.len_of(self.next);
            if buf.len() + len > buf.capacity() {
                if !buf.is_empty() {
                    break;
                }
                buf.reserve_exact(len);
            }
            self.encode(self.next, &mut buf);
            self.next = self.after(self.next);
        }
        self.written += buf.len();
        Some(if buf.capacity() == CHUNK {
            Bytes::from_owner(Piece(buf))
        } else {
            Bytes::from(buf)
        })
    }
}

/// The `resources` fields of `entries`, in their order, as [`Outgoing::into_chunks`] writes
/// them: what [`TypeView::wire`] keeps.
pub(crate) fn resources_wire<'a>(
    entries: impl Iterator<Item = (&'a Arc<str>, &'a Arc<EncodedResource>)> + Clone,
) -> Vec<u8> {
    let len = entries.clone().map(|(n, e)| resource_field_len(n, e)).sum();
    let mut buf = Vec::with_capacity(len);
    for (name, e) in entries {
        put_resource_field(name, e, &mut buf);
    }
    buf
}

/// One element of `resources`, with its key and length.
fn put_resource_field(name: &str, e: &EncodedResource, buf: &mut Vec<u8>) {
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(resource_len(name, e) as u64, buf);
    // envoy's Resource, fields by tag: version 1, resource 2 (an Any: type_url 1, value 2),
    // name 3.
    put_string_field(1, &e.version, buf);
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(any_len(e) as u64, buf);
    put_string_field(1, &e.any.type_url, buf);
    if !e.any.value.is_empty() {
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(e.any.value.len() as u64, buf);
        buf.extend_from_slice(&e.any.value);
    }
    put_string_field(3, name, buf);
}

/// A length-delimited value of `len` bytes: its length prefix and itself.
fn len_delimited(len: usize) -> usize {
    encoded_len_varint(len as u64) + len
}

/// A proto3 string field (absent when empty).
fn string_field_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(tag) + len_delimited(len)
    }
}

fn put_string_field(tag: u32, value: &str, buf: &mut Vec<u8>) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.extend_from_slice(value.as_bytes());
    }
}

/// Body of the `Any`: `type_url` and `value`, each absent when empty.
fn any_len(e: &EncodedResource) -> usize {
    string_field_len(1, e.any.type_url.len()) + string_field_len(2, e.any.value.len())
}

/// Body of one `Resource`; its `resource` field is always present.
fn resource_len(name: &str, e: &EncodedResource) -> usize {
    string_field_len(1, e.version.len())
        + key_len(2)
        + len_delimited(any_len(e))
        + string_field_len(3, name.len())
}

/// One element of `resources`, with its key and length.
fn resource_field_len(name: &str, e: &EncodedResource) -> usize {
    key_len(2) + len_delimited(resource_len(name, e))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    use super::super::codec::ResourceType;
    use super::*;

    fn encoded(version: &str, value: &[u8]) -> Arc<EncodedResource> {
        Arc::new(EncodedResource {
            version: version.to_string(),
            any: Any {
                type_url: ResourceType::Service.type_url().to_string(),
                value: value.to_vec(),
            },
        })
    }

    /// The pieces, checked for size, joined; and what prost writes for the same response.
    fn wire_and_prost(out: Outgoing) -> (Vec<u8>, Vec<u8>) {
        let copy = Outgoing {
            version: Arc::clone(&out.version),
            type_url: out.type_url,
            resources: out.resources.clone(),
            removed: out.removed.clone(),
            nonce: out.nonce.clone(),
        };
        let chunks: Vec<Bytes> = out.into_chunks().collect();
        for (i, c) in chunks.iter().enumerate() {
            assert!(!c.is_empty(), "piece {i} is empty");
            // Whole parts up to CHUNK; only the test's one larger resource goes alone.
            assert!(
                c.len() <= CHUNK || c.len() > 3 * CHUNK,
                "piece {i}: {}",
                c.len()
            );
        }
        (chunks.concat(), copy.into_response().encode_to_vec())
    }

    #[test]
    fn a_queued_response_encodes_as_prost_encodes_the_message() {
        let (wire, body) = wire_and_prost(Outgoing {
            version: Arc::from("v7"),
            type_url: ResourceType::Service.type_url(),
            resources: Resources::Listed(vec![
                (Arc::from("default/a"), encoded("1", br#"{"a":1}"#)),
                (Arc::from("default/b"), encoded("2", &[b'x'; 300])),
                (Arc::from(""), encoded("", b"")),
            ]),
            removed: vec!["default/c".to_string(), String::new()],
            nonce: "3-9".to_string(),
        });
        let header = grpc::parse_header(&wire).expect("header");
        assert!(!header.compressed);
        assert_eq!(header.len, body.len());
        assert_eq!(wire[grpc::HEADER_LEN..], body[..]);
        let decoded =
            DeltaDiscoveryResponse::decode(&body[..]).expect("prost reads its own bytes back");
        assert_eq!(decoded.resources[1].name, "default/b");
        assert_eq!(decoded.removed_resources, ["default/c", ""]);
    }

    #[test]
    fn an_empty_response_encodes_as_prost_encodes_it() {
        let (wire, body) = wire_and_prost(Outgoing {
            version: Arc::from(""),
            type_url: ResourceType::Workload.type_url(),
            resources: Resources::Listed(Vec::new()),
            removed: Vec::new(),
            nonce: "1-1".to_string(),
        });
        assert_eq!(wire[grpc::HEADER_LEN..], body[..]);
    }

    /// 2000 resources of 150 bytes to 1.1 KB, one of them (the 700th) 3 [`CHUNK`]s.
    fn many_resources() -> impl Iterator<Item = (Arc<str>, Arc<EncodedResource>)> {
        (0..2000).map(|i| {
            let size = if i == 700 { 3 * CHUNK } else { 150 + i % 997 };
            (
                Arc::from(format!("default/w{i}")),
                encoded(&format!("{i:016x}"), &vec![b'a' + (i % 26) as u8; size]),
            )
        })
    }

    #[test]
    fn a_whole_view_encodes_as_prost_encodes_the_message_from_bytes_shared_by_every_response() {
        let view = Arc::new(TypeView::new(many_resources().collect()));
        let whole = |nonce: &str| Outgoing {
            version: Arc::clone(view.shared_version()),
            type_url: ResourceType::Workload.type_url(),
            resources: Resources::Whole(Arc::clone(&view)),
            removed: Vec::new(),
            nonce: nonce.to_string(),
        };
        let (wire, body) = wire_and_prost(whole("1-1"));
        assert_eq!(grpc::parse_header(&wire).map(|h| h.len), Some(body.len()));
        assert_eq!(wire[grpc::HEADER_LEN..], body[..]);
        let decoded = DeltaDiscoveryResponse::decode(&body[..]).expect("prost reads it");
        assert_eq!(decoded.resources.len(), 2000);
        assert_eq!(decoded.nonce, "1-1");
        // The same bytes as the list of every entry would give.
        let listed = Outgoing {
            resources: Resources::Listed(
                view.iter()
                    .map(|(n, e)| (Arc::clone(n), Arc::clone(e)))
                    .collect(),
            ),
            ..whole("1-1")
        };
        assert_eq!(listed.into_chunks().collect::<Vec<_>>().concat(), wire);
        // A second proxy's response is written from the same memory, not a copy.
        let shared = view.wire().as_ptr_range();
        let pieces: Vec<Bytes> = whole("2-1").into_chunks().collect();
        let in_shared = pieces
            .iter()
            .filter(|p| shared.contains(&p.as_ptr()))
            .map(Bytes::len)
            .sum::<usize>();
        assert_eq!(in_shared, view.wire().len());
        assert_eq!(pieces.len(), 2 + view.wire().len().div_ceil(CHUNK));
    }

    #[test]
    fn a_large_response_goes_in_pieces_that_join_to_prost_bytes() {
        let resources = many_resources().collect();
        let removed = (0..500).map(|i| format!("default/gone{i}")).collect();
        let out = Outgoing {
            version: Arc::from("0123456789abcdef"),
            type_url: ResourceType::Workload.type_url(),
            resources: Resources::Listed(resources),
            removed,
            nonce: "12-345".to_string(),
        };
        let (wire, body) = wire_and_prost(out);
        assert_eq!(grpc::parse_header(&wire).map(|h| h.len), Some(body.len()));
        assert_eq!(wire[grpc::HEADER_LEN..], body[..]);
        let pooled = POOL.lock().unwrap_or_else(PoisonError::into_inner).len();
        assert!(pooled > 0, "the written pieces' buffers are kept for reuse");
    }
}
