//! Metric labels of requests: who called whom, resolved once per connection and route.

use std::sync::{Arc, Mutex, OnceLock};

use crate::config::{PeerInfo, Snapshot};
use crate::route::Target;
use crate::telemetry::{MetricLabels, SecurityPolicy};

use super::{ConnCtx, Direction};

/// The label sets the last request of a connection resolved, before and after it had an
/// endpoint, so the next request that goes the same way reuses them instead of building 19
/// labels and interning them again.
#[derive(Default)]
pub struct LabelMemo {
    routed: Mutex<Option<Memo>>,
    upstream: Mutex<Option<Memo>>,
}

impl std::fmt::Debug for LabelMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LabelMemo")
    }
}

/// What [`labels_for`] read to make `labels`. The `Arc`s are held, so comparing by identity
/// cannot mistake a new value at a reused address for the old one.
struct Memo {
    version: u64,
    peer: Option<Arc<PeerInfo>>,
    service_host: Arc<str>,
    service_name: Arc<str>,
    service_namespace: Arc<str>,
    dest: Option<Arc<PeerInfo>>,
    server: Option<Arc<str>>,
    labels: Arc<MetricLabels>,
}

impl Memo {
    fn matches(
        &self,
        snap: &Snapshot,
        target: &Target,
        dest: &Option<Arc<PeerInfo>>,
        server: Option<&Arc<str>>,
    ) -> bool {
        fn same<T: ?Sized>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        self.version == snap.version
            && same(&self.peer, &target.peer)
            && Arc::ptr_eq(&self.service_host, &target.service_host)
            && Arc::ptr_eq(&self.service_name, &target.service_name)
            && Arc::ptr_eq(&self.service_namespace, &target.service_namespace)
            && same(&self.dest, dest)
            && self.server.as_deref() == server.map(|s| &**s)
    }
}

/// The shared labels of a request of `ctx` to `target` ([`labels_for`] with the endpoint's
/// workload `dest`, and the principal the upstream's certificate proved, `server`), from the
/// connection's memo when the last request went the same way.
pub(super) fn request_labels(
    ctx: &ConnCtx,
    snap: &Snapshot,
    target: &Target,
    dest: Option<Arc<PeerInfo>>,
    server: Option<&Arc<str>>,
) -> Arc<MetricLabels> {
    let slot = if dest.is_some() || server.is_some() {
        &ctx.labels.upstream
    } else {
        &ctx.labels.routed
    };
    let mut memo = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = memo.as_ref()
        && m.matches(snap, target, &dest, server)
    {
        return m.labels.clone();
    }
    let mut labels = labels_for(ctx, snap, Some(target), dest.clone());
    if let Some(server) = server {
        labels.destination_principal = server.clone();
    }
    let labels = ctx.pi.telemetry.labels(labels);
    *memo = Some(Memo {
        version: snap.version,
        peer: target.peer.clone(),
        service_host: target.service_host.clone(),
        service_name: target.service_name.clone(),
        service_namespace: target.service_namespace.clone(),
        dest,
        server: server.cloned(),
        labels: labels.clone(),
    });
    labels
}

/// The labels of a request that has not been routed yet: every peer `unknown`, reported by
/// the side that received it (so an inbound request refused early counts, and is logged, on
/// the server side).
pub(super) fn unrouted_labels(direction: Direction) -> Arc<MetricLabels> {
    static UNROUTED: [OnceLock<Arc<MetricLabels>>; 2] = [OnceLock::new(), OnceLock::new()];
    let slot = match direction {
        Direction::Outbound => &UNROUTED[0],
        Direction::Inbound => &UNROUTED[1],
    };
    slot.get_or_init(|| Arc::new(MetricLabels::unknown(direction.reporter())))
        .clone()
}

/// Metric labels for a connection or request of `ctx` going to `target`, whose chosen endpoint
/// runs `dest` (if known).
pub fn labels_for(
    ctx: &ConnCtx,
    snap: &Snapshot,
    target: Option<&Target>,
    dest: Option<Arc<PeerInfo>>,
) -> MetricLabels {
    let me = &snap.me_info;
    let mut l = MetricLabels::unknown(ctx.direction.reporter());
    let (src, dst): (Arc<PeerInfo>, Option<Arc<PeerInfo>>) = match ctx.direction {
        Direction::Outbound => (
            me.clone(),
            dest.or_else(|| target.and_then(|t| t.peer.clone())),
        ),
        Direction::Inbound => (
            snap.peer_by_ip(ctx.client.get().ip())
                .cloned()
                .unwrap_or_else(|| Arc::new(PeerInfo::unknown())),
            Some(me.clone()),
        ),
    };
    l.source_workload = src.workload.clone();
    l.source_workload_namespace = src.namespace.clone();
    // Inbound, a principal is what a client proves in the mTLS handshake (below), never what
    // its address suggests: a plaintext client is `unknown`, as Envoy reports a connection
    // without a peer certificate.
    if ctx.direction == Direction::Outbound {
        l.source_principal = src.principal.clone();
    }
    l.source_app = src.app.clone();
    l.source_version = src.version.clone();
    l.source_canonical_service = src.canonical_service.clone();
    l.source_canonical_revision = src.canonical_revision.clone();
    l.source_cluster = src.cluster.clone();
    if let Some(dst) = dst {
        l.destination_workload = dst.workload.clone();
        l.destination_workload_namespace = dst.namespace.clone();
        l.destination_principal = dst.principal.clone();
        l.destination_app = dst.app.clone();
        l.destination_version = dst.version.clone();
        l.destination_canonical_service = dst.canonical_service.clone();
        l.destination_canonical_revision = dst.canonical_revision.clone();
        l.destination_cluster = dst.cluster.clone();
    }
    if let Some(t) = target {
        l.destination_service = t.service_host.clone();
        l.destination_service_name = t.service_name.clone();
        l.destination_service_namespace = t.service_namespace.clone();
    }
    l.connection_security_policy = match ctx.direction {
        Direction::Outbound => SecurityPolicy::Unknown,
        Direction::Inbound => SecurityPolicy::None,
    };
    if let Some(peer) = &ctx.peer {
        // Proven by the handshake: these win over what the addresses suggest.
        l.source_principal = peer.principal.clone();
        if let Some(tls) = &ctx.pi.tls {
            l.destination_principal = tls.own_principal().clone();
        }
        l.connection_security_policy = SecurityPolicy::MutualTls;
    }
    l
}
