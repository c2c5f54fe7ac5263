//! `ama sample sleep`: sleeps until SIGTERM or SIGINT, then exits 0 (a pod's idle client, as
//! the article's `sleep infinity`, but one that stops at once when asked).

use nix::sys::signal::{SigSet, Signal};

/// Blocks the calling thread until SIGTERM or SIGINT arrives; returns the signal.
pub fn until_signal() -> nix::Result<Signal> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    // Blocked signals stay pending until sigwait takes them.
    set.thread_block()?;
    set.wait()
}
