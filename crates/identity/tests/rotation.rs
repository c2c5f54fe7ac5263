//! Rotation: a new certificate reaches new handshakes, established connections keep working,
//! failures keep the old certificate in force.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::{configs, handshake, manager, mesh_ca, sa};
use identity::manager::BoxFuture;
use identity::tls::peer_identity;
use identity::{
    CertChain, CertificateAuthority, CertificateProvider, Error, ExpectedPeer, IdentityManager,
    LocalCaProvider, RotationOptions,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn serial(der: &[u8]) -> Vec<u8> {
    x509_parser::parse_x509_certificate(der)
        .unwrap()
        .1
        .raw_serial()
        .to_vec()
}

async fn echo<A, B>(a: &mut A, b: &mut B, msg: &[u8])
where
    A: tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + Unpin,
{
    a.write_all(msg).await.unwrap();
    a.flush().await.unwrap();
    let mut buf = vec![0; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), b.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, msg);
}

#[tokio::test]
async fn established_connections_survive_rotation_and_new_ones_get_the_new_cert() {
    let ca = mesh_ca();
    let httpbin = manager(&ca, sa("httpbin")).await;
    let sleep = manager(&ca, sa("sleep")).await;
    let (server, client) = configs(&httpbin, &sleep, ExpectedPeer::exactly(sa("httpbin")));

    let (s, c) = handshake(server.clone(), client.clone()).await;
    let (mut s1, mut c1) = (s.unwrap(), c.unwrap());
    let old_server_serial = serial(&peer_identity(c1.get_ref().1).unwrap().leaf);
    let old_client_serial = serial(&peer_identity(s1.get_ref().1).unwrap().leaf);
    assert_eq!(old_server_serial, httpbin.current().serial());
    echo(&mut c1, &mut s1, b"before").await;

    let new_server = httpbin.rotate_now().await.unwrap();
    let new_client = sleep.rotate_now().await.unwrap();
    assert_ne!(new_server.serial(), old_server_serial.as_slice());
    assert_ne!(new_client.serial(), old_client_serial.as_slice());
    assert_eq!(httpbin.current().serial(), new_server.serial());

    // The connection made before the rotation still carries traffic both ways.
    echo(&mut c1, &mut s1, b"after rotation, old connection").await;
    echo(&mut s1, &mut c1, b"and back").await;

    // A new handshake on the same configs presents the new certificates on both sides.
    let (s, c) = handshake(server, client).await;
    let (mut s2, mut c2) = (s.unwrap(), c.unwrap());
    assert_eq!(
        serial(&peer_identity(c2.get_ref().1).unwrap().leaf),
        new_server.serial()
    );
    assert_eq!(
        serial(&peer_identity(s2.get_ref().1).unwrap().leaf),
        new_client.serial()
    );
    echo(&mut c2, &mut s2, b"new connection").await;
    echo(&mut c1, &mut s1, b"old connection still fine").await;
}

#[tokio::test]
async fn rotation_task_renews_at_half_life() {
    let ca = mesh_ca();
    let provider = Arc::new(LocalCaProvider::new(ca.clone(), sa("sleep")));
    let options = RotationOptions {
        ttl: Duration::from_secs(4),
        jitter: 0.0,
        ..RotationOptions::default()
    };
    let m = IdentityManager::new(sa("sleep"), provider, options)
        .await
        .unwrap();
    let first = m.current();
    let mut updates = m.subscribe();
    let task = m.spawn_rotation();
    let started = SystemTime::now();
    tokio::time::timeout(Duration::from_secs(10), updates.changed())
        .await
        .unwrap()
        .unwrap();
    let waited = started.elapsed().unwrap();
    // Half of a (whole-second truncated) 4 s lifetime is 1.5 s to 2 s; allow for a busy machine,
    // but it must come well before expiry.
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(3500),
        "{waited:?}"
    );
    assert_ne!(m.current().serial(), first.serial());
    task.abort();
}

#[tokio::test]
async fn rotation_task_ends_with_the_manager() {
    let ca = mesh_ca();
    let m = manager(&ca, sa("sleep")).await;
    let task = m.spawn_rotation();
    drop(m);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

/// Fails `failures` times, then signs.
struct Flaky {
    ca: Arc<CertificateAuthority>,
    failures: AtomicUsize,
    calls: AtomicUsize,
}

impl CertificateProvider for Flaky {
    fn fetch<'a>(
        &'a self,
        csr_pem: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<CertChain, Error>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            // The first call (start-up) succeeds; then `failures` calls fail.
            if call >= 1 && call <= self.failures.load(Ordering::SeqCst) {
                return Err(Error::Provider("control plane unavailable".into()));
            }
            self.ca.sign_csr(csr_pem, &sa("sleep"), ttl)
        })
    }
}

#[tokio::test]
async fn failed_renewal_keeps_the_old_certificate_and_retries() {
    let flaky = Arc::new(Flaky {
        ca: mesh_ca(),
        failures: AtomicUsize::new(2),
        calls: AtomicUsize::new(0),
    });
    let options = RotationOptions {
        ttl: Duration::from_secs(2),
        jitter: 0.0,
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(200),
    };
    let m = IdentityManager::new(sa("sleep"), flaky.clone(), options)
        .await
        .unwrap();
    let first = m.current();

    let err = m.rotate_now().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "certificate provider: control plane unavailable"
    );
    assert_eq!(
        m.current().serial(),
        first.serial(),
        "the old certificate stays in force"
    );

    let mut updates = m.subscribe();
    let task = m.spawn_rotation();
    tokio::time::timeout(Duration::from_secs(10), updates.changed())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(m.current().serial(), first.serial());
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        4,
        "start, manual failure, task failure, success"
    );
    task.abort();
}

#[tokio::test]
async fn a_provider_that_returns_someone_else_is_refused() {
    let ca = mesh_ca();
    let provider = Arc::new(LocalCaProvider::new(ca, sa("httpbin")));
    let err = IdentityManager::new(sa("sleep"), provider, RotationOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongIdentity { .. }), "{err}");
}

#[tokio::test]
async fn renewal_time_is_half_life_with_bounded_jitter() {
    let m = manager(&mesh_ca(), sa("sleep")).await;
    let cert = m.current();
    let start = cert.received_at();
    let life = cert.not_after().duration_since(start).unwrap();
    let at = |draw| cert.renewal_time(0.1, draw).duration_since(start).unwrap();
    // Within a microsecond: 0.5 * (1 + 0.1) is not exactly 0.55 in floating point, so the two
    // products may round a nanosecond apart depending on the lifetime.
    let near = |got: Duration, want: Duration| {
        let diff = got.abs_diff(want);
        assert!(diff < Duration::from_micros(1), "{got:?} vs {want:?}");
    };
    near(at(0.0), life / 2);
    near(at(-1.0), life.mul_f64(0.45));
    near(at(1.0), life.mul_f64(0.55));
    near(at(7.0), life.mul_f64(0.55)); // draw is clamped
    // A NaN jitter falls back to the plain half life.
    near(
        cert.renewal_time(f64::NAN, 0.3)
            .duration_since(start)
            .unwrap(),
        life / 2,
    );
}
