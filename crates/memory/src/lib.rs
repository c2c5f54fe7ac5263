//! Keeps the control plane's resident memory close to what it uses: the allocator's settings
//! for a process holding thousands of connections, and the heap given back after a burst.
//!
//! **A low mmap threshold** ([`tune_allocator`]). Each ADS connection keeps HTTP/2 buffers for
//! its life (h2's 16 KB write buffer, tokio-util's 8 KB read buffer), of which an idle
//! connection has written a few hundred bytes. From the heap they sit on pages that earlier
//! work (a first sync) had touched, so all of them are resident. With glibc's mmap threshold at
//! 8 KB (its default starts at 128 KB and rises to the largest block freed), they are mappings
//! of their own, and only the pages written are resident: at 10k proxies × 1k services,
//! `malloc_info` counted 19.9k mapped blocks of 335 MB in all, while the whole process had
//! 381 MB of anonymous memory resident, 282 MB of it the heap's blocks in use. Discovery held
//! 388 MB idle against 450 MB with a fixed 128 KB threshold (and 491–525 MB before this and the
//! pooled response pieces of `xds::ads`). Large responses are written from a few reused
//! buffers, so the threshold does not cost a fresh mapping per first sync.
//!
//! **Heap trim after bursts** (`trim_after_activity`). A first sync or a push allocates a
//! response per proxy and frees it once sent. glibc keeps what was freed in its arenas,
//! scattered between live connection state, so the resident size stays at the burst's
//! high-water mark: at 2k proxies × 1k services, 260 MB resident for 138 MB in use. `malloc_trim(0)` returns the free pages inside the arenas (`MADV_DONTNEED`),
//! not only the top of the heap. It runs on a blocking thread, once a second while the server is
//! busy and once more after it goes quiet; an idle server is not trimmed again.
//!
//! **Heap trim after a flood, and when idle** ([`trim_after_fall`]), for the sidecar. Each open
//! connection holds its task and buffers; after a flood of connections closes (5,000 idle
//! connections took a debug sidecar from 26 to 65 MB, which it kept after they closed), glibc
//! keeps the freed memory. The sidecar is trimmed once the connections it holds have fallen to
//! half their peak, and once they are all closed again (after the bench's 16 connections, the
//! worker threads' arenas held about 0.5 MB of free pages), never under steady load, where a
//! trim each second would cost the data path CPU time.

#![allow(unsafe_code)]

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often activity is checked.
const INTERVAL: Duration = Duration::from_secs(1);

/// Allocations of at least this many bytes get their own mapping (glibc's `M_MMAP_THRESHOLD`).
const MMAP_THRESHOLD: i32 = 8 * 1024;

/// Sets glibc's mmap threshold to [`MMAP_THRESHOLD`] for this process, unless the environment
/// sets it (`MALLOC_MMAP_THRESHOLD_`). For `ama discovery` only, before its runtime starts: the
/// sidecar, in the same binary, keeps glibc's defaults. About two mapped blocks per connected
/// proxy; the kernel merges neighbours (1.5k VMAs at 10k proxies), and past glibc's
/// `M_MMAP_MAX` (65536 blocks) or `vm.max_map_count` glibc serves them from the heap again.
pub fn tune_allocator() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return;
    }
    set_mmap_threshold(MMAP_THRESHOLD);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_mmap_threshold(bytes: i32) {
    // SAFETY: mallopt only changes glibc's parameters, under the arena lock.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) } == 1;
    if !ok {
        tracing::debug!(bytes, "mallopt(M_MMAP_THRESHOLD) refused");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_mmap_threshold(_bytes: i32) {}

/// Trims the heap after each interval in which `activity()` moved, until `stop`.
pub async fn trim_after_activity(
    activity: impl Fn() -> u64 + Send + 'static,
    stop: CancellationToken,
) {
    run(activity, trim, stop).await
}

async fn run(
    activity: impl Fn() -> u64 + Send + 'static,
    trim: fn() -> bool,
    stop: CancellationToken,
) {
    let mut trimmed_at = activity();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = activity();
        if now == trimmed_at {
            continue;
        }
        trimmed_at = now;
        let started = std::time::Instant::now();
        let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        tracing::debug!(released, took = ?started.elapsed(), "heap trimmed");
    }
}

/// How often [`trim_after_fall`] looks at the connection count.
const FALL_INTERVAL: Duration = Duration::from_secs(5);

/// A fall of fewer connections than this is not worth a trim.
const MIN_FALL: usize = 256;

/// Trims the heap once `open()` (the connections a proxy holds) has fallen to half its peak
/// since the last trim, by at least [`MIN_FALL`], or back to the fewest it has ever been (the
/// proxy's own listeners and streams: the pod is idle again); looks every few seconds, until
/// `stop`.
pub async fn trim_after_fall(open: impl Fn() -> usize + Send + 'static, stop: CancellationToken) {
    run_on_fall(open, trim, FALL_INTERVAL, stop).await
}

async fn run_on_fall(
    open: impl Fn() -> usize + Send + 'static,
    trim: fn() -> bool,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut peak = open();
    let mut fewest = peak;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = open();
        peak = peak.max(now);
        fewest = fewest.min(now);
        let fell = now <= peak / 2 && peak - now >= MIN_FALL;
        let idle_again = now == fewest && peak > fewest;
        if !fell && !idle_again {
            continue;
        }
        let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        tracing::debug!(released, peak, now, "heap trimmed after connections closed");
        peak = now;
    }
}

/// Returns free heap pages to the kernel; true when some were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim only walks glibc's own arenas, under their locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_returns_freed_pages() {
        // 64 MB in 16 KB blocks (below the mmap threshold, so in the heap), every other one kept
        // so that the freed half lies between live blocks and cannot be given back by shrinking
        // the heap top alone.
        let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 16 * 1024]).collect();
        let kept: Vec<Vec<u8>> = blocks.into_iter().step_by(2).collect();
        assert!(trim(), "the freed half was given back");
        assert_eq!(kept.len(), 2048);
        assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (2 * i) as u8));
    }

    static TRIMS: AtomicU64 = AtomicU64::new(0);

    fn count_trim() -> bool {
        TRIMS.fetch_add(1, Ordering::Relaxed);
        true
    }

    static FALL_TRIMS: AtomicU64 = AtomicU64::new(0);

    fn count_fall_trim() -> bool {
        FALL_TRIMS.fetch_add(1, Ordering::Relaxed);
        true
    }

    #[tokio::test(start_paused = true)]
    async fn trims_once_after_a_flood_of_connections_closes() {
        let open = Arc::new(AtomicU64::new(20));
        let stop = CancellationToken::new();
        let task = {
            let open = Arc::clone(&open);
            tokio::spawn(run_on_fall(
                move || open.load(Ordering::Relaxed) as usize,
                count_fall_trim,
                INTERVAL,
                stop.clone(),
            ))
        };
        let trims = || FALL_TRIMS.load(Ordering::Relaxed);
        let step = |n: u64| {
            open.store(n, Ordering::Relaxed);
            tokio::time::sleep(INTERVAL * 2)
        };
        step(20).await; // the proxy's own, at start
        step(5_000).await;
        step(4_000).await;
        assert_eq!(trims(), 0, "no trim while the connections are held");
        step(30).await;
        assert_eq!(trims(), 1, "one trim once they closed");
        step(25).await;
        assert_eq!(trims(), 1, "none while quiet");
        step(200).await;
        step(150).await;
        assert_eq!(trims(), 1, "a small fall is not worth a trim");
        step(20).await;
        assert_eq!(
            trims(),
            2,
            "back to the fewest ever held: idle again, one trim"
        );
        step(20).await;
        step(21).await;
        step(20).await;
        assert_eq!(trims(), 3, "idle again after one more connection");
        step(20).await;
        assert_eq!(trims(), 3, "none while idle");
        stop.cancel();
        task.await.expect("the task ends on stop");
    }

    #[tokio::test(start_paused = true)]
    async fn trims_once_after_each_busy_spell() {
        let work = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let task = {
            let work = Arc::clone(&work);
            tokio::spawn(run(
                move || work.load(Ordering::Relaxed),
                count_trim,
                stop.clone(),
            ))
        };
        let trims = || TRIMS.load(Ordering::Relaxed);
        tokio::time::sleep(INTERVAL * 3).await;
        assert_eq!(trims(), 0, "a quiet server is not trimmed");
        work.store(7, Ordering::Relaxed);
        tokio::time::sleep(INTERVAL * 3).await;
        assert_eq!(
            trims(),
            1,
            "one trim after the work, none while quiet again"
        );
        work.store(9, Ordering::Relaxed);
        tokio::time::sleep(INTERVAL * 2).await;
        assert_eq!(trims(), 2);
        stop.cancel();
        task.await.expect("the task ends on stop");
    }
}
