//! The file registry and the debounced push: files in, store and pushes out.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::registry::file::{ApplySource, FileRegistry};
use control::registry::{ConfigStore, Snapshot};
use control::{PushOptions, Pusher};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

const SERVICE_A: &str =
    "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n";
const SERVICE_B: &str =
    "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: 81}]}\n";
/// A weight over 100: the document is left out.
const BAD_VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad}\nspec:\n  hosts: [a]\n  http: [{route: [{destination: {host: a}, weight: 300}]}]\n";

fn names(snapshot: &Snapshot) -> Vec<String> {
    let (objects, _) = snapshot.objects();
    let mut names: Vec<String> = objects.iter().map(|o| o.display()).collect();
    names.sort();
    names
}

fn registry(dir: &Path) -> (Arc<ConfigStore>, FileRegistry) {
    let (store, _changes) = ConfigStore::new();
    let registry = FileRegistry::new(dir, Arc::clone(&store)).expect("registry");
    (store, registry)
}

#[test]
fn bad_document_does_not_hide_good_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("mesh.yaml"),
        format!("{SERVICE_A}---\n{BAD_VS}---\n{SERVICE_B}"),
    )
    .expect("write");
    let (store, registry) = registry(dir.path());
    let report = registry.scan();
    assert_eq!(report.changed, ["mesh.yaml"]);
    assert_eq!(
        names(&store.snapshot()),
        ["Service default/a", "Service default/b"]
    );
    assert_eq!(report.errors.len(), 1);
    let e = &report.errors[0];
    assert_eq!(e.source_name, "mesh.yaml");
    assert_eq!(e.doc, 2);
    assert_eq!(e.object.as_deref(), Some("VirtualService default/bad"));
    assert!(e.field.contains("weight"), "{e}");
    assert_eq!(registry.errors().len(), 1);
    // An unchanged file is not read again and not reported again.
    assert!(registry.scan().changed.is_empty());
}

#[test]
fn all_bad_file_keeps_nothing_bad_and_wipes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("a.yaml"), SERVICE_A).expect("write");
    fs::write(dir.path().join("b.yaml"), SERVICE_B).expect("write");
    fs::write(dir.path().join("bad.yaml"), BAD_VS).expect("write");
    let (store, registry) = registry(dir.path());
    registry.scan();
    assert_eq!(
        names(&store.snapshot()),
        ["Service default/a", "Service default/b"]
    );
    // A good file broken whole (a syntax error) keeps its last good objects.
    fs::write(
        dir.path().join("b.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: b\n",
    )
    .expect("write");
    let report = registry.scan();
    assert_eq!(report.changed, ["b.yaml"]);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(
        names(&store.snapshot()),
        ["Service default/a", "Service default/b"]
    );
    // Fixed: read again.
    fs::write(
        dir.path().join("b.yaml"),
        SERVICE_B.replace("name: b", "name: b2"),
    )
    .expect("write");
    registry.scan();
    assert_eq!(
        names(&store.snapshot()),
        ["Service default/a", "Service default/b2"]
    );
}

#[test]
fn edits_and_deletes_propagate() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(dir.path().join("nested/deeper")).expect("mkdir");
    fs::write(dir.path().join("nested/deeper/a.yml"), SERVICE_A).expect("write");
    fs::write(dir.path().join("b.json"), r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}, "spec": {"ports": [{"port": 81}]}}"#).expect("write");
    fs::write(
        dir.path().join("notes.txt"),
        SERVICE_A.replace("name: a", "name: txt"),
    )
    .expect("write");
    fs::write(
        dir.path().join(".hidden.yaml"),
        SERVICE_A.replace("name: a", "name: hidden"),
    )
    .expect("write");
    let (store, registry) = registry(dir.path());
    registry.scan();
    assert_eq!(
        names(&store.snapshot()),
        ["Service default/a", "Service default/b"]
    );
    fs::write(
        dir.path().join("nested/deeper/a.yml"),
        SERVICE_A.replace("name: a", "name: a2"),
    )
    .expect("write");
    let report = registry.scan();
    assert_eq!(report.changed, ["nested/deeper/a.yml"]);
    assert_eq!(
        names(&store.snapshot()),
        ["Service default/a2", "Service default/b"]
    );
    fs::remove_file(dir.path().join("b.json")).expect("rm");
    let report = registry.scan();
    assert_eq!(report.removed, ["b.json"]);
    assert_eq!(names(&store.snapshot()), ["Service default/a2"]);
}

#[test]
fn duplicates_across_files_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("1.yaml"), SERVICE_A).expect("write");
    fs::write(
        dir.path().join("2.yaml"),
        SERVICE_A.replace("port: 80", "port: 8080"),
    )
    .expect("write");
    let (store, registry) = registry(dir.path());
    registry.scan();
    let snapshot = store.snapshot();
    let (objects, warnings) = snapshot.objects();
    assert_eq!(objects.len(), 1);
    assert_eq!(
        warnings[0].to_string(),
        "Service default/a: defined in 1.yaml and 2.yaml: the one in 2.yaml is used"
    );
}

#[test]
fn apply_writes_good_documents() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, registry) = registry(dir.path());
    let report = registry
        .apply(ApplySource::Text {
            name: "<stdin>".into(),
            text: format!("{SERVICE_A}---\n{BAD_VS}"),
        })
        .expect("applied");
    assert_eq!(report.applied, ["Service default/a"]);
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].doc, 2);
    assert_eq!(report.errors[0].line, 6);
    assert!(dir.path().join("applied/service-default-a.yaml").is_file());
    assert_eq!(names(&store.snapshot()), ["Service default/a"]);
    // Applying again replaces the object.
    registry
        .apply(ApplySource::Text {
            name: "<stdin>".into(),
            text: SERVICE_A.replace("port: 80", "port: 8080"),
        })
        .expect("applied");
    let text = fs::read_to_string(dir.path().join("applied/service-default-a.yaml")).expect("read");
    assert!(text.contains("8080"));
    // Nothing good: an error, nothing written.
    let err = registry
        .apply(ApplySource::Text {
            name: "<stdin>".into(),
            text: BAD_VS.into(),
        })
        .expect_err("invalid");
    assert!(
        err.to_string()
            .contains("<stdin>:doc 1: VirtualService default/bad"),
        "{err}"
    );
}

/// A DENY policy with a field Ama does not know.
const UNREADABLE_AP: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-get}\nspec:\n  selector: {matchLabels: {app: a}}\n  action: DENY\n  rules: [{from: [{source: {bogus: [x]}}]}]\n";

#[test]
fn a_security_policy_ama_cannot_read_is_kept_to_deny() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("mesh.yaml"),
        format!("{SERVICE_A}---\n{UNREADABLE_AP}"),
    )
    .expect("write");
    let (store, registry) = registry(dir.path());
    let report = registry.scan();
    // Kept, not an error of a document left out (it is logged at ERROR all the same).
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        names(&store.snapshot()),
        ["AuthorizationPolicy default/deny-get", "Service default/a"]
    );
    let snapshot = store.snapshot();
    let (objects, _) = snapshot.objects();
    let model = control::model::Model::build(
        objects.iter().copied(),
        &mut control::model::VipAllocator::new(),
    );
    let deny = model
        .authorizations
        .iter()
        .find(|a| a.name == "deny-get")
        .expect("the policy standing in");
    let policy = deny.policy.clone().unwrap_or_default();
    assert_eq!(policy.action, xds::Action::Deny);
    assert_eq!(
        policy.rules,
        [xds::Rule::default()],
        "matches every request"
    );
    assert_eq!(deny.selector.get("app").map(String::as_str), Some("a"));

    // `ama apply` writes it, to deny.
    let report = registry
        .apply(ApplySource::Text {
            name: "<stdin>".into(),
            text: UNREADABLE_AP.replace("deny-get", "deny-put"),
        })
        .expect("applied");
    assert_eq!(report.applied, ["AuthorizationPolicy default/deny-put"]);
}

/// Starts a registry polling every 5 ms and a pusher over it; returns the pusher.
fn start(dir: &Path, stop: &CancellationToken) -> Arc<Pusher> {
    let (store, changes) = ConfigStore::new();
    let registry = Arc::new(FileRegistry::new(dir, Arc::clone(&store)).expect("registry"));
    let pusher = Arc::new(Pusher::new(
        store,
        PushOptions::default(),
        &mut Registry::default(),
    ));
    tokio::spawn(Arc::clone(&registry).run(Duration::from_millis(5), stop.clone()));
    tokio::spawn(Arc::clone(&pusher).run(changes, stop.clone()));
    pusher
}

async fn wait_for_push(pusher: &Pusher, seq: u64) -> control::PushStats {
    let mut pushes = pusher.pushes();
    let wait = pushes.wait_for(|s| s.as_ref().is_some_and(|s| s.seq >= seq));
    let stats = tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("a push in time")
        .expect("pusher alive");
    stats.clone().expect("stats")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_edits_is_one_push() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("svc.yaml");
    fs::write(&file, SERVICE_A).expect("write");
    let stop = CancellationToken::new();
    let pusher = start(dir.path(), &stop);
    let first = wait_for_push(&pusher, 1).await;
    assert_eq!(first.seq, 1);

    // 50 edits, 2 ms apart: far below the 100 ms quiet period.
    for i in 0..50 {
        fs::write(
            &file,
            SERVICE_A.replace("port: 80", &format!("port: {}", 1000 + i)),
        )
        .expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let done = Instant::now();
    let push = wait_for_push(&pusher, 2).await;
    let published = done.elapsed();
    // Let a straggler push (if any) happen before counting.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let last = pusher.pushes().borrow().clone().expect("stats");
    let pushes = last.seq - 1;
    println!(
        "burst of 50 edits: {pushes} push(es), {} changes in the first, published {:?} after the burst",
        push.changes, published
    );
    assert!(pushes <= 2, "{pushes} pushes for one burst");
    let model = pusher.model();
    assert_eq!(
        model.services[0].resource.ports[0].port, 1049,
        "the last edit wins"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_changes_push_at_least_every_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("svc.yaml");
    fs::write(&file, SERVICE_A).expect("write");
    let stop = CancellationToken::new();
    let pusher = start(dir.path(), &stop);
    wait_for_push(&pusher, 1).await;
    // An edit every 30 ms for 2.5 s never leaves 100 ms of quiet: the 1 s cap pushes anyway.
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        fs::write(
            &file,
            SERVICE_A.replace("port: 80", &format!("port: {}", 2000 + i)),
        )
        .expect("write");
        i += 1;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let seen = pusher.pushes().borrow().clone().expect("stats").seq - 1;
    assert!((2..=4).contains(&seen), "{seen} pushes in 2.5 s of changes");
    let stats = wait_for_push(&pusher, seen + 2).await;
    assert!(
        stats
            .convergence
            .is_some_and(|c| c < Duration::from_millis(1500)),
        "{stats:?}"
    );
    stop.cancel();
}

/// Waits (up to 10 s) until the store's objects are `want`.
async fn wait_for_names(store: &ConfigStore, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = names(&store.snapshot());
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the store holds {got:?}, not {want:?}, 10 s after the change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_directory_is_read_when_it_changes_not_when_polled() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("a.yaml"), SERVICE_A).expect("write");
    let (store, _changes) = ConfigStore::new();
    let registry = Arc::new(FileRegistry::new(dir.path(), Arc::clone(&store)).expect("registry"));
    let stop = CancellationToken::new();
    // A poll interval far beyond the test: only the watch can bring the changes in.
    tokio::spawn(Arc::clone(&registry).run(Duration::from_secs(3600), stop.clone()));
    wait_for_names(&store, &["Service default/a"]).await;

    // A file in a sub-directory made after the watch began (as `ama apply` makes `applied/`).
    let sub = dir.path().join("team");
    fs::create_dir(&sub).expect("mkdir");
    fs::write(sub.join("b.yaml"), SERVICE_B).expect("write");
    wait_for_names(&store, &["Service default/a", "Service default/b"]).await;

    // An edit of that file, a rename over a file (an atomic write), and a delete.
    fs::write(sub.join("b.yaml"), SERVICE_B.replace("name: b", "name: c")).expect("write");
    wait_for_names(&store, &["Service default/a", "Service default/c"]).await;
    let tmp = dir.path().join(".a.yaml.tmp");
    fs::write(&tmp, SERVICE_A.replace("name: a", "name: d")).expect("write");
    fs::rename(&tmp, dir.path().join("a.yaml")).expect("rename");
    wait_for_names(&store, &["Service default/c", "Service default/d"]).await;
    fs::remove_file(sub.join("b.yaml")).expect("remove");
    wait_for_names(&store, &["Service default/d"]).await;
    stop.cancel();
}
