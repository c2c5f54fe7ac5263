//! `AdsClient` against `AdsServer` over loopback sockets: initial sync, deltas, removals, NACK,
//! server restart with resumption, and 100 clients at once.

mod ads_common;

use std::time::Duration;

use ads_common::{ServerProcess, Source, WAIT, mesh, node};
use tokio::sync::mpsc;
use xds::ProxyResources;
use xds::ads::client::endpoint;
use xds::ads::{AdsClient, Backoff, ClientStatus, ResourceType};

/// A client whose `apply` reports each config on a channel and rejects any config with a
/// workload labelled `reject: "yes"`.
struct Running {
    configs: mpsc::Receiver<ProxyResources>,
    status: tokio::sync::watch::Receiver<ClientStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(addr: std::net::SocketAddr, pod: &str, ip: u8) -> Running {
        let client = AdsClient::new(
            endpoint(&addr.to_string()).expect("endpoint"),
            node(pod, ip),
        )
        .with_backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        });
        let status = client.status();
        let (tx, configs) = mpsc::channel(64);
        let task = tokio::spawn(client.run(move |res: ProxyResources| {
            if res
                .workloads
                .iter()
                .any(|w| w.labels.get("reject").is_some_and(|v| v == "yes"))
            {
                return Err("workloads: label reject=yes is not allowed".to_string());
            }
            tx.try_send(res).map_err(|e| e.to_string())
        }));
        Running {
            configs,
            status,
            task,
        }
    }

    async fn next(&mut self) -> ProxyResources {
        tokio::time::timeout(WAIT, self.configs.recv())
            .await
            .expect("a config in time")
            .expect("client running")
    }

    async fn quiet(&mut self) {
        if let Ok(c) = tokio::time::timeout(Duration::from_millis(300), self.configs.recv()).await {
            panic!("expected no new config, got {c:?}");
        }
    }

    async fn wait_status(&mut self, pred: impl Fn(&ClientStatus) -> bool) -> ClientStatus {
        tokio::time::timeout(WAIT, self.status.wait_for(|s| pred(s)))
            .await
            .expect("status in time")
            .expect("client running")
            .clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn initial_sync_delivers_the_whole_snapshot_once() {
    let server = ServerProcess::start(Source::fixed(mesh(3)));
    let mut c = Running::start(server.addr, "pod-1", 1);
    assert_eq!(c.next().await, mesh(3));
    c.quiet().await;
    let st = c.wait_status(|s| s.connected).await;
    assert_eq!(st.applied, 1);
    let id = node("pod-1", 1).id;
    server
        .wait_status(&id, |p| {
            p.types.len() == ResourceType::ALL.len()
                && p.types.values().all(|t| t.acked.is_some() && !t.pending)
        })
        .await;
}

#[tokio::test]
async fn an_empty_snapshot_is_applied_too() {
    let server = ServerProcess::start(Source::fixed(ProxyResources::default()));
    let mut c = Running::start(server.addr, "pod-1", 1);
    assert_eq!(c.next().await, ProxyResources::default());
}

#[tokio::test]
async fn changes_and_removals_reach_the_client_as_deltas() {
    let source = Source::fixed(mesh(3));
    let server = ServerProcess::start(source.clone());
    let mut c = Running::start(server.addr, "pod-1", 1);
    c.next().await;
    let id = node("pod-1", 1).id;

    let mut next = mesh(3);
    next.workloads[1]
        .labels
        .insert("version".into(), "v2".into());
    next.http_routes.clear();
    source.set(None, next.clone());
    // One response per changed type; they may be applied together or one after the other.
    let mut got = c.next().await;
    while got != next {
        got = c.next().await;
    }
    let st = server
        .wait_status(&id, |p| {
            p.types[&ResourceType::Workload].pushes == 2
                && p.types[&ResourceType::HttpRoutes].pushes == 2
                && p.types.values().all(|t| !t.pending)
        })
        .await;
    assert_eq!(st.types[&ResourceType::Workload].resources_sent, 3 + 1);
    assert_eq!(st.types[&ResourceType::HttpRoutes].removals_sent, 1);
    assert_eq!(st.types[&ResourceType::HttpRoutes].resources, 0);
    assert_eq!(st.types[&ResourceType::Service].pushes, 1);
}

#[tokio::test]
async fn a_rejected_push_is_nacked_and_the_previous_config_stays() {
    let source = Source::fixed(mesh(2));
    let server = ServerProcess::start(source.clone());
    let mut c = Running::start(server.addr, "pod-1", 1);
    c.next().await;
    let id = node("pod-1", 1).id;
    let before = server
        .wait_status(&id, |p| p.types.values().all(|t| t.acked.is_some()))
        .await;

    let mut bad = mesh(2);
    bad.workloads[0]
        .labels
        .insert("reject".into(), "yes".into());
    source.set(None, bad);
    let st = server
        .wait_status(&id, |p| p.types[&ResourceType::Workload].nacked.is_some())
        .await;
    let w = &st.types[&ResourceType::Workload];
    assert_eq!(
        w.nacked.as_ref().map(|n| n.error.as_str()),
        Some("workloads: label reject=yes is not allowed")
    );
    assert_eq!(w.acked, before.types[&ResourceType::Workload].acked);
    let cs = c.wait_status(|s| s.rejected == 1).await;
    assert_eq!(
        cs.last_rejection.as_deref(),
        Some("workloads: label reject=yes is not allowed")
    );
    assert_eq!(cs.applied, 1);
    c.quiet().await;

    // A good change later applies on top of the previous (good) state.
    let mut good = mesh(2);
    good.workloads[1]
        .labels
        .insert("version".into(), "v2".into());
    source.set(None, good.clone());
    assert_eq!(c.next().await, good);
}

#[tokio::test]
async fn a_rejected_first_sync_is_applied_whole_once_fixed() {
    let mut bad = mesh(2);
    bad.workloads[0]
        .labels
        .insert("reject".into(), "yes".into());
    let source = Source::fixed(bad);
    let server = ServerProcess::start(source.clone());
    let mut c = Running::start(server.addr, "pod-1", 1);
    c.wait_status(|s| s.rejected >= 1).await;
    c.quiet().await;
    // Only a workload changes; every other type comes again with it, and the first config is
    // whole.
    source.set(None, mesh(2));
    assert_eq!(c.next().await, mesh(2));
    let st = c.wait_status(|s| s.applied == 1).await;
    assert_eq!(st.rejected, ResourceType::ALL.len() as u64);
    let id = node("pod-1", 1).id;
    server
        .wait_status(&id, |p| {
            p.types
                .values()
                .all(|t| t.acked.is_some() && t.latest == t.acked)
        })
        .await;
}

#[tokio::test]
async fn after_a_server_restart_the_client_resumes_with_its_versions_and_gets_the_difference() {
    let source = Source::fixed(mesh(3));
    let server = ServerProcess::start(source);
    let addr = server.addr;
    let mut c = Running::start(addr, "pod-1", 1);
    assert_eq!(c.next().await, mesh(3));
    c.wait_status(|s| s.connected).await;

    server.kill();
    let st = c.wait_status(|s| !s.connected).await;
    assert!(st.last_disconnect.is_some());
    // Nothing is applied while the server is gone: the last config stays in force.
    c.quiet().await;

    // The restarted control plane has one workload changed and one gone.
    let mut next = mesh(3);
    next.workloads[0]
        .labels
        .insert("version".into(), "v2".into());
    next.workloads.remove(2);
    let server = ServerProcess::start_on(addr, Source::fixed(next.clone()));
    assert_eq!(c.next().await, next);
    let id = node("pod-1", 1).id;
    let st = server
        .wait_status(&id, |p| {
            p.types.len() == ResourceType::ALL.len() && p.types.values().all(|t| !t.pending)
        })
        .await;
    let w = &st.types[&ResourceType::Workload];
    assert_eq!(w.resources_sent, 1, "only the changed workload is sent");
    assert_eq!(w.removals_sent, 1);
    assert_eq!(w.resources, 2);
    assert_eq!(st.types[&ResourceType::Service].resources_sent, 0);
    assert_eq!(c.wait_status(|s| s.connected).await.applied, 2);
}

#[tokio::test]
async fn a_restart_with_nothing_changed_applies_nothing() {
    let server = ServerProcess::start(Source::fixed(mesh(2)));
    let addr = server.addr;
    let mut c = Running::start(addr, "pod-1", 1);
    c.next().await;
    server.kill();
    c.wait_status(|s| !s.connected).await;
    let server = ServerProcess::start_on(addr, Source::fixed(mesh(2)));
    c.wait_status(|s| s.connected).await;
    let id = node("pod-1", 1).id;
    let st = server
        .wait_status(&id, |p| {
            p.types.len() == ResourceType::ALL.len() && p.types.values().all(|t| t.acked.is_some())
        })
        .await;
    assert!(st.types.values().all(|t| t.resources_sent == 0));
    c.quiet().await;
    assert_eq!(c.status.borrow().applied, 1);
}

#[tokio::test]
async fn a_hundred_clients_each_get_their_own_snapshot() {
    // Each proxy's snapshot holds just its own workload, named after its pod.
    let source = Source::per_node(|id| {
        let pod = id.split('~').nth(2).and_then(|n| n.split('.').next());
        let pod = pod.unwrap_or("unknown");
        ProxyResources::parse(&format!(
            "self: {{uid: {pod}}}\nworkloads: [{{uid: {pod}, name: {pod}, namespace: default}}]"
        ))
        .expect("valid")
    });
    let server = ServerProcess::start(source.clone());
    let mut clients: Vec<Running> = (0..100u8)
        .map(|i| Running::start(server.addr, &format!("pod-{i}"), i))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let res = c.next().await;
        assert_eq!(res.workloads.len(), 1);
        assert_eq!(res.workloads[0].uid, format!("pod-{i}"));
        assert_eq!(
            res.node.as_ref().and_then(|n| n.uid.clone()),
            Some(format!("pod-{i}"))
        );
    }
    assert_eq!(server.server.status().len(), 100);
    // A change for one proxy reaches only that proxy.
    let target = node("pod-42", 42).id;
    let mut changed = ProxyResources::parse(
        "self: {uid: pod-42}\nworkloads: [{uid: pod-42, name: pod-42, namespace: default, labels: {v: '2'}}]",
    )
    .expect("valid");
    changed.workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    source.set(Some(&target), changed.clone());
    assert_eq!(clients[42].next().await, changed);
    for (i, c) in clients.iter_mut().enumerate() {
        if i != 42 {
            assert!(c.configs.try_recv().is_err(), "client {i} got a push");
        }
    }
}
