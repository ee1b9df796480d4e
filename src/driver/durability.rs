//! Group commit and snapshots for the driver: a batch's entries go out in one write and one
//! fdatasync; after every `--snapshot-every` entries a new log generation starts and the state
//! as of then is written as a snapshot by another thread.
//!
//! Architecture invariant: an entry is acknowledged to the machine only once it is durable; a
//! snapshot is taken only when everything emitted is durable; this holds bytes, never state.

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crate::core::entry::Entry;
use crate::core::machine::Machine;
use crate::metrics::Metrics;
use crate::store::{Store, wal};

/// The store and the entries of this batch not yet written.
pub struct Durability {
    store: Store,
    batch: Vec<u8>,
    /// The index of the last entry in `batch` (0: the batch is empty).
    batch_last: u64,
    batch_entries: u64,
    /// Entries logged since the last snapshot, and how many make the next one due.
    since_snapshot: u64,
    snapshot_every: u64,
    /// The snapshot being written off this thread, if one is.
    writer: Option<thread::JoinHandle<std::io::Result<()>>>,
}

impl Durability {
    /// `replayed` counts the entries the log already holds since the last snapshot (what
    /// recovery replayed), so that a daemon that restarts often still snapshots.
    pub fn new(store: Store, snapshot_every: u64, replayed: u64) -> Self {
        assert!(snapshot_every > 0, "a snapshot is due after at least one entry");
        Durability {
            store,
            batch: Vec::new(),
            batch_last: 0,
            batch_entries: 0,
            since_snapshot: replayed,
            snapshot_every,
            writer: None,
        }
    }

    /// Adds an entry the machine emitted to this batch's write.
    pub(super) fn add(&mut self, index: u64, entry: &Entry) {
        assert!(index > self.batch_last, "entries come in index order");
        wal::encode_record(entry, &mut self.batch);
        self.batch_last = index;
        self.batch_entries += 1;
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Group commit: the batch in one write and one fdatasync. Returns the index now durable,
    /// or why the write failed (the store has cut the log back to its last durable length).
    #[allow(clippy::disallowed_methods)] // times the fsync for the latency histogram
    pub(super) fn commit(&mut self, metrics: &Metrics) -> Result<u64, String> {
        debug_assert!(self.has_pending());
        let started = Instant::now();
        let written = self.store.append(&self.batch);
        metrics.observe_sync(self.batch.len(), started.elapsed());
        self.batch.clear();
        self.since_snapshot += std::mem::take(&mut self.batch_entries);
        match written {
            Ok(()) => Ok(self.batch_last),
            Err(error) => {
                tracing::error!(%error, log = %self.store.log_path().display(), "log write failed; serving reads only");
                Err(error.to_string())
            }
        }
    }

    /// Every `snapshot_every` entries: a new log generation, and the state as of now copied
    /// here (the pause, measured) and encoded and written by another thread. The older
    /// generation stays until that write is durable, so a crash in between loses nothing.
    #[allow(clippy::disallowed_methods)] // times the snapshot pause for its histogram
    pub(super) fn snapshot_if_due(&mut self, machine: &Machine, metrics: &Arc<Metrics>) {
        let busy = self.writer.as_ref().is_some_and(|w| !w.is_finished());
        if self.since_snapshot < self.snapshot_every || busy || machine.failed().is_some() {
            return;
        }
        assert!(
            machine.is_durable(),
            "a snapshot is taken only when the log holds everything"
        );
        if let Some(writer) = self.writer.take() {
            match writer.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "writing a snapshot failed; the logs are kept"),
                Err(_) => tracing::error!("the snapshot writer panicked; the logs are kept"),
            }
        }
        let started = Instant::now();
        let (dir, generation) = match self.store.rotate() {
            Ok(rotated) => rotated,
            Err(error) => {
                tracing::error!(%error, "cannot start a new log generation; continuing in the current one");
                return;
            }
        };
        let snapshot = machine.core().snapshot();
        metrics.observe_snapshot(started.elapsed());
        self.since_snapshot = 0;
        let metrics = Arc::clone(metrics);
        let spawned = thread::Builder::new()
            .name("agentkeeper-snapshot".into())
            .spawn(move || {
                let bytes = crate::store::encode_snapshot(&snapshot);
                metrics
                    .snapshot_bytes
                    .set(i64::try_from(bytes.len()).unwrap_or(i64::MAX));
                crate::store::write_snapshot(&dir, generation, &bytes)
            });
        match spawned {
            Ok(writer) => self.writer = Some(writer),
            Err(error) => tracing::error!(%error, "cannot start the snapshot writer"),
        }
    }
}
