//! The Delta ADS server at the protocol level, over loopback sockets with a hand-driven stream:
//! initial sync, deltas, removals, NACKs, flow control, reconnect with initial versions, explicit
//! subscriptions.

mod ads_common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ads_common::{RawStream, ServerProcess, Source, mesh, names, node, versions};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tokio::sync::watch;
use xds::ProxyResources;
use xds::ads::codec::{AnyResource, version_of};
use xds::ads::{Node, ResourceType, Snapshot, SnapshotSource};

const ALL: [ResourceType; 7] = ResourceType::ALL;

/// Reads one response per type in `types` (in any order), keyed by type.
async fn one_each(
    s: &mut RawStream,
    types: &[ResourceType],
) -> BTreeMap<ResourceType, DeltaDiscoveryResponse> {
    let mut out = BTreeMap::new();
    while out.len() < types.len() {
        let r = s.next().await;
        let ty = ResourceType::from_type_url(&r.type_url).expect("our type");
        assert!(out.insert(ty, r).is_none(), "two responses for {ty}");
    }
    out
}

async fn ack_all(s: &RawStream, rs: &BTreeMap<ResourceType, DeltaDiscoveryResponse>) {
    for r in rs.values() {
        s.ack(r).await;
    }
}

#[tokio::test]
async fn initial_sync_sends_every_type_once_even_when_empty() {
    let mut res = mesh(3);
    res.authorizations.clear();
    let server = ServerProcess::start(Source::fixed(res.clone()));
    let n = node("pod-1", 1);
    let mut s = RawStream::open(server.addr, n.clone(), &ALL, &BTreeMap::new()).await;
    let rs = one_each(&mut s, &ALL).await;
    assert_eq!(names(&rs[&ResourceType::Workload]), ["w1", "w2", "w3"]);
    assert_eq!(
        names(&rs[&ResourceType::Service]),
        ["default/a.default.svc.cluster.local"]
    );
    assert_eq!(names(&rs[&ResourceType::HttpRoutes]), ["default/a"]);
    assert_eq!(names(&rs[&ResourceType::TrafficPolicy]), ["default/a"]);
    // Empty types still answer, so the proxy knows it is in sync.
    assert!(rs[&ResourceType::Authorization].resources.is_empty());
    assert!(rs[&ResourceType::Node].resources.is_empty());
    // Versions are the hash of the canonical JSON; bodies decode to what was given.
    let w1 = &rs[&ResourceType::Workload].resources[0];
    let body = w1.resource.as_ref().expect("body");
    assert_eq!(w1.version, version_of(&body.value));
    assert_eq!(
        AnyResource::decode(ResourceType::Workload, "w1", body).expect("decodes"),
        AnyResource::Workload(res.workloads[0].clone())
    );
    for r in rs.values() {
        assert!(!r.nonce.is_empty());
        assert!(!r.system_version_info.is_empty());
    }
    ack_all(&s, &rs).await;
    let st = server
        .wait_status(&n.id, |p| p.types.values().all(|t| t.acked.is_some()))
        .await;
    assert_eq!(st.types[&ResourceType::Workload].resources, 3);
    for t in st.types.values() {
        assert_eq!(t.latest, t.acked, "in sync");
    }
    assert_eq!(
        st.types[&ResourceType::Workload].acked,
        Some(rs[&ResourceType::Workload].system_version_info.clone())
    );
    s.quiet().await;
}

#[tokio::test]
async fn a_change_pushes_only_the_changed_resource_and_a_removal_its_name() {
    let source = Source::fixed(mesh(3));
    let server = ServerProcess::start(source.clone());
    let n = node("pod-1", 1);
    let mut s = RawStream::open(server.addr, n.clone(), &ALL, &BTreeMap::new()).await;
    let rs = one_each(&mut s, &ALL).await;
    ack_all(&s, &rs).await;

    let mut next = mesh(3);
    next.workloads[1]
        .labels
        .insert("version".into(), "v2".into());
    source.set(None, next.clone());
    let r = s.next().await;
    assert_eq!(r.type_url, ResourceType::Workload.type_url());
    assert_eq!(names(&r), ["w2"]);
    assert!(r.removed_resources.is_empty());
    assert_ne!(
        versions(&r)["w2"],
        versions(&rs[&ResourceType::Workload])["w2"]
    );
    s.ack(&r).await;
    s.quiet().await;

    next.workloads.remove(2);
    source.set(None, next);
    let r = s.next().await;
    assert_eq!(r.type_url, ResourceType::Workload.type_url());
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["w3"]);
    s.ack(&r).await;
    let st = server
        .wait_status(&n.id, |p| {
            p.types[&ResourceType::Workload].resources == 2
                && !p.types[&ResourceType::Workload].pending
        })
        .await;
    assert_eq!(st.types[&ResourceType::Workload].pushes, 3);
    assert_eq!(st.types[&ResourceType::Workload].resources_sent, 4);
    assert_eq!(st.types[&ResourceType::Workload].removals_sent, 1);
    s.quiet().await;
}

#[tokio::test]
async fn a_nack_is_recorded_and_the_rejected_resource_is_sent_again_with_the_next_change() {
    let source = Source::fixed(mesh(2));
    let server = ServerProcess::start(source.clone());
    let n = node("pod-1", 1);
    let mut s = RawStream::open(server.addr, n.clone(), &ALL, &BTreeMap::new()).await;
    let rs = one_each(&mut s, &ALL).await;
    ack_all(&s, &rs).await;

    let mut bad = mesh(2);
    bad.workloads[0].labels.insert("bad".into(), "yes".into());
    source.set(None, bad.clone());
    let r = s.next().await;
    assert_eq!(names(&r), ["w1"]);
    s.nack(&r, "workloads[0].labels: bad").await;
    let st = server
        .wait_status(&n.id, |p| p.types[&ResourceType::Workload].nacked.is_some())
        .await;
    let t = &st.types[&ResourceType::Workload];
    let nack = t.nacked.as_ref().expect("nack");
    assert_eq!(nack.error, "workloads[0].labels: bad");
    assert_eq!(nack.version, r.system_version_info);
    assert_eq!(nack.nonce, r.nonce);
    assert_eq!(
        t.acked,
        Some(rs[&ResourceType::Workload].system_version_info.clone())
    );
    assert!(!t.pending);
    assert_ne!(
        t.latest, t.acked,
        "out of sync while the proxy rejects the latest"
    );
    // No retry of the same thing on its own.
    s.quiet().await;

    // The next change carries the new resource and the one the proxy still lacks.
    let mut next = bad;
    next.workloads[1]
        .labels
        .insert("version".into(), "v2".into());
    source.set(None, next);
    let r = s.next().await;
    assert_eq!(names(&r), ["w1", "w2"]);
    s.ack(&r).await;
    server
        .wait_status(&n.id, |p| {
            p.types[&ResourceType::Workload].acked == Some(r.system_version_info.clone())
        })
        .await;
}

#[tokio::test]
async fn no_push_while_one_is_unacked_and_changes_meanwhile_are_coalesced() {
    let source = Source::fixed(mesh(3));
    let server = ServerProcess::start(source.clone());
    let mut s = RawStream::open(server.addr, node("pod-1", 1), &ALL, &BTreeMap::new()).await;
    let rs = one_each(&mut s, &ALL).await;
    ack_all(&s, &rs).await;

    let mut v2 = mesh(3);
    v2.workloads[0].labels.insert("v".into(), "2".into());
    source.set(None, v2.clone());
    let first = s.next().await;
    assert_eq!(names(&first), ["w1"]);
    // Two more changes before the ACK: nothing is sent for Workload meanwhile.
    let mut v3 = v2.clone();
    v3.workloads[1].labels.insert("v".into(), "3".into());
    source.set(None, v3.clone());
    let mut v4 = v3.clone();
    v4.workloads[0].labels.insert("v".into(), "4".into());
    v4.workloads.remove(2);
    source.set(None, v4.clone());
    s.quiet().await;
    s.ack(&first).await;
    // One response with the difference to the latest snapshot.
    let r = s.next().await;
    assert_eq!(names(&r), ["w1", "w2"]);
    assert_eq!(r.removed_resources, ["w3"]);
    let w1 = r
        .resources
        .iter()
        .find(|x| x.name == "w1")
        .and_then(|x| x.resource.as_ref())
        .expect("w1");
    assert_eq!(
        AnyResource::decode(ResourceType::Workload, "w1", w1).expect("decodes"),
        AnyResource::Workload(v4.workloads[0].clone())
    );
    s.ack(&r).await;
    s.quiet().await;
}

#[tokio::test]
async fn a_reconnecting_proxy_gets_only_what_differs_from_its_initial_versions() {
    let source = Source::fixed(mesh(3));
    let server = ServerProcess::start(source.clone());
    let n = node("pod-1", 1);
    let mut s = RawStream::open(server.addr, n.clone(), &ALL, &BTreeMap::new()).await;
    let rs = one_each(&mut s, &ALL).await;
    ack_all(&s, &rs).await;
    let had: BTreeMap<ResourceType, HashMap<String, String>> =
        rs.iter().map(|(t, r)| (*t, versions(r))).collect();
    drop(s);

    // Meanwhile: w2 changed, w3 gone, w4 new.
    let mut next = mesh(4);
    next.workloads.remove(2);
    next.workloads[1].labels.insert("v".into(), "2".into());
    source.set(None, next);
    let mut s = RawStream::open(server.addr, n.clone(), &ALL, &had).await;
    let rs2 = one_each(&mut s, &ALL).await;
    let w = &rs2[&ResourceType::Workload];
    assert_eq!(names(w), ["w2", "w4"]);
    assert_eq!(w.removed_resources, ["w3"]);
    for ty in [
        ResourceType::Service,
        ResourceType::HttpRoutes,
        ResourceType::TrafficPolicy,
        ResourceType::Authorization,
        ResourceType::Node,
    ] {
        assert!(rs2[&ty].resources.is_empty(), "{ty}: {:?}", rs2[&ty]);
        assert!(rs2[&ty].removed_resources.is_empty(), "{ty}");
        // The same set has the same version on every stream.
        assert_eq!(
            rs2[&ty].system_version_info, rs[&ty].system_version_info,
            "{ty}"
        );
    }
}

#[tokio::test]
async fn explicit_names_get_only_those_and_unsubscribe_drops_them() {
    let source = Source::fixed(mesh(3));
    let server = ServerProcess::start(source.clone());
    let mut s = RawStream::open(server.addr, node("pod-1", 1), &[], &BTreeMap::new()).await;
    s.send(DeltaDiscoveryRequest {
        node: Some(node("pod-1", 1)),
        type_url: ResourceType::Workload.type_url().to_string(),
        resource_names_subscribe: vec!["w2".into(), "w9".into()],
        ..Default::default()
    })
    .await;
    let r = s.next().await;
    assert_eq!(names(&r), ["w2"]);
    s.ack(&r).await;
    // A change to a resource not subscribed to is not sent.
    let mut next = mesh(3);
    next.workloads[0].labels.insert("v".into(), "2".into());
    source.set(None, next.clone());
    s.quiet().await;
    // Subscribing to another name sends it.
    s.send(DeltaDiscoveryRequest {
        type_url: ResourceType::Workload.type_url().to_string(),
        resource_names_subscribe: vec!["w3".into()],
        ..Default::default()
    })
    .await;
    let r = s.next().await;
    assert_eq!(names(&r), ["w3"]);
    s.ack(&r).await;
    // Unsubscribing: later changes to it are not sent.
    s.send(DeltaDiscoveryRequest {
        type_url: ResourceType::Workload.type_url().to_string(),
        resource_names_unsubscribe: vec!["w3".into()],
        ..Default::default()
    })
    .await;
    // (The stream reads requests and snapshot changes concurrently: let it read this first.)
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    next.workloads[2].labels.insert("v".into(), "2".into());
    source.set(None, next);
    s.quiet().await;
}

#[tokio::test]
async fn status_lists_connected_proxies_and_forgets_closed_streams() {
    let server = ServerProcess::start(Source::fixed(mesh(1)));
    let (a, b) = (node("pod-a", 1), node("pod-b", 2));
    let mut sa = RawStream::open(server.addr, a.clone(), &ALL, &BTreeMap::new()).await;
    let mut sb = RawStream::open(server.addr, b.clone(), &ALL, &BTreeMap::new()).await;
    let ra = one_each(&mut sa, &ALL).await;
    ack_all(&sa, &ra).await;
    let rb = one_each(&mut sb, &ALL).await;
    ack_all(&sb, &rb).await;
    server
        .wait_status(&a.id, |p| p.types.values().all(|t| t.acked.is_some()))
        .await;
    server
        .wait_status(&b.id, |p| p.types.values().all(|t| t.acked.is_some()))
        .await;
    let ids: Vec<String> = server
        .server
        .status()
        .into_iter()
        .map(|p| p.node_id)
        .collect();
    assert_eq!(ids, [a.id.clone(), b.id.clone()]);
    drop(sa);
    for _ in 0..500 {
        if server.server.status().len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let ids: Vec<String> = server
        .server
        .status()
        .into_iter()
        .map(|p| p.node_id)
        .collect();
    assert_eq!(ids, [b.id]);
}

#[tokio::test]
async fn a_stream_without_a_node_is_refused() {
    let server = ServerProcess::start(Source::fixed(mesh(1)));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client =
        envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(channel);
    let req = DeltaDiscoveryRequest {
        type_url: ResourceType::Workload.type_url().to_string(),
        ..Default::default()
    };
    let mut stream = client
        .delta_aggregated_resources(futures_util::stream::iter([req]))
        .await
        .expect("the stream starts")
        .into_inner();
    let err = stream.message().await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("node"), "{err}");
}

#[tokio::test]
async fn a_proxy_that_stops_reading_does_not_hold_up_the_others() {
    let source = Source::fixed(mesh(2));
    let server = ServerProcess::start(source.clone());
    // This one subscribes and then neither reads nor ACKs.
    let _stuck = RawStream::open(server.addr, node("stuck", 1), &ALL, &BTreeMap::new()).await;
    let mut ok = RawStream::open(server.addr, node("ok", 2), &ALL, &BTreeMap::new()).await;
    let rs = one_each(&mut ok, &ALL).await;
    ack_all(&ok, &rs).await;
    for i in 0..50 {
        let mut next = mesh(2);
        next.workloads[0].labels.insert("i".into(), i.to_string());
        // Big enough that the stuck stream's HTTP/2 window fills up.
        next.workloads[1]
            .labels
            .insert("pad".into(), "x".repeat(16 * 1024) + &i.to_string());
        source.set(None, next.clone());
        let r = ok.next().await;
        assert_eq!(r.type_url, ResourceType::Workload.type_url());
        let w1 = r
            .resources
            .iter()
            .find(|x| x.name == "w1")
            .and_then(|x| x.resource.as_ref())
            .expect("w1 changed");
        assert_eq!(
            AnyResource::decode(ResourceType::Workload, "w1", w1).expect("decodes"),
            AnyResource::Workload(next.workloads[0].clone())
        );
        ok.ack(&r).await;
    }
    let stuck = node("stuck", 1).id;
    let st = server
        .wait_status(&stuck, |p| p.types.len() == ALL.len())
        .await;
    assert!(st.types.values().all(|t| t.pending && t.acked.is_none()));
    assert!(st.types.values().all(|t| t.pushes == 1), "{st:#?}");
}

/// Encoded views shared by every proxy, as the control plane serves them.
struct SharedSource(watch::Sender<Snapshot>);

impl SharedSource {
    fn new(res: &ProxyResources) -> Arc<SharedSource> {
        Arc::new(SharedSource(watch::Sender::new(Snapshot::encode(res).0)))
    }

    fn set(&self, res: &ProxyResources) {
        self.0.send_replace(Snapshot::encode(res).0);
    }
}

impl SnapshotSource for SharedSource {
    fn watch_snapshots(
        &self,
        _node: &Node,
    ) -> Result<Option<watch::Receiver<Snapshot>>, tonic::Status> {
        Ok(Some(self.0.subscribe()))
    }
}

#[tokio::test]
async fn a_large_first_sync_is_the_whole_view_for_every_proxy_and_deltas_follow_from_it() {
    // 40 workloads: a view large enough to be sent as its shared encoding, shared as the
    // control plane shares it.
    let source = SharedSource::new(&mesh(40));
    let server = ServerProcess::start(source.clone());
    let mut expected: Vec<String> = (1..=40).map(|i| format!("w{i}")).collect();
    expected.sort();
    let (n1, n2) = (node("pod-1", 1), node("pod-2", 2));
    let mut s1 = RawStream::open(server.addr, n1.clone(), &ALL, &BTreeMap::new()).await;
    let mut s2 = RawStream::open(server.addr, n2.clone(), &ALL, &BTreeMap::new()).await;
    let rs1 = one_each(&mut s1, &ALL).await;
    let rs2 = one_each(&mut s2, &ALL).await;
    let (w1, w2) = (&rs1[&ResourceType::Workload], &rs2[&ResourceType::Workload]);
    // In name order, as a listed response has them, each body's version its hash.
    let order: Vec<String> = w1.resources.iter().map(|r| r.name.clone()).collect();
    assert_eq!(order, expected);
    assert_eq!(w1.resources, w2.resources);
    assert_eq!(w1.system_version_info, w2.system_version_info);
    assert_ne!(w1.nonce, w2.nonce);
    for r in &w1.resources {
        let body = r.resource.as_ref().expect("body");
        assert_eq!(r.version, version_of(&body.value), "{}", r.name);
    }
    assert!(w1.removed_resources.is_empty());
    ack_all(&s2, &rs2).await;

    // The first proxy rejects its first sync; the second ACKs it.
    s1.nack(w1, "rejected").await;
    for r in rs1.values().filter(|r| r.type_url != w1.type_url) {
        s1.ack(r).await;
    }
    server
        .wait_status(&n1.id, |p| {
            p.types[&ResourceType::Workload].nacked.is_some()
        })
        .await;
    let mut next = mesh(40);
    next.workloads[1]
        .labels
        .insert("version".into(), "v2".into());
    source.set(&next);
    // The proxy that holds the view gets the one change; the one that rejected it all of it.
    let r2 = s2.next().await;
    assert_eq!(r2.type_url, ResourceType::Workload.type_url());
    assert_eq!(names(&r2), [w1.resources[1].name.clone()]);
    let r1 = s1.next().await;
    assert_eq!(r1.type_url, ResourceType::Workload.type_url());
    assert_eq!(names(&r1), expected);
    assert_eq!(r1.system_version_info, r2.system_version_info);
    s1.ack(&r1).await;
    s2.ack(&r2).await;
    let st = server
        .wait_status(&n2.id, |p| !p.types[&ResourceType::Workload].pending)
        .await;
    assert_eq!(st.types[&ResourceType::Workload].resources, 40);
    assert_eq!(st.types[&ResourceType::Workload].resources_sent, 41);
    let st = server
        .wait_status(&n1.id, |p| !p.types[&ResourceType::Workload].pending)
        .await;
    assert_eq!(st.types[&ResourceType::Workload].resources_sent, 80);
    s1.quiet().await;
    s2.quiet().await;
}
