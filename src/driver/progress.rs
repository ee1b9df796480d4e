//! The core thread's sign of life: one counter it bumps as it starts and as it finishes each
//! batch, read lock-free from other threads (the systemd watchdog in `crate::watchdog`).
//!
//! Owns only the counter; never blocks, never reads the core or a clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Odd while the core thread runs a batch, even while it waits for work: every batch adds two.
/// A reader that sees the same odd value twice, a while apart, knows the thread is stuck in one
/// batch; an even value means it is idle, which is healthy however long it lasts.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<AtomicU64>);

/// One reading of [`Progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat(u64);

impl Beat {
    /// True while the core thread is inside a batch, false while it waits for work.
    pub fn busy(self) -> bool {
        self.0 % 2 == 1
    }

    /// True if the core thread is inside the very batch it was in at `earlier`: it neither
    /// finished it nor went idle since.
    pub fn stalled_since(self, earlier: Beat) -> bool {
        self == earlier && self.busy()
    }
}

impl Progress {
    pub fn read(&self) -> Beat {
        Beat(self.0.load(Ordering::Relaxed))
    }

    /// The core thread starts a batch. Called by that thread only.
    pub fn batch_started(&self) {
        let before = self.0.fetch_add(1, Ordering::Relaxed);
        debug_assert!(before.is_multiple_of(2), "a batch starts while another runs");
    }

    /// The core thread finished its batch. Called by that thread only.
    pub fn batch_finished(&self) {
        let before = self.0.fetch_add(1, Ordering::Relaxed);
        debug_assert!(before % 2 == 1, "a batch finishes that never started");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_that_does_not_finish_is_stalled_and_an_idle_thread_is_not() {
        let progress = Progress::default();
        let idle = progress.read();
        assert!(!idle.busy());
        assert!(!progress.read().stalled_since(idle), "idle for any time is healthy");

        progress.batch_started();
        let inside = progress.read();
        assert!(inside.busy());
        assert!(!inside.stalled_since(idle), "it started a batch since");
        assert!(progress.read().stalled_since(inside), "still in the same batch");

        progress.batch_finished();
        assert!(!progress.read().stalled_since(inside), "it finished that batch");
        progress.batch_started();
        progress.batch_finished();
        progress.batch_started();
        assert!(!progress.read().stalled_since(inside), "a later batch is another batch");
    }
}
