//! A node's consensus log as raft-rs reads it (`raft::Storage`): the entries, the hard state
//! (term, vote, commit) and the membership, held in memory by the node's one thread and changed
//! only through `&mut self` (no lock: raft-rs reads through `&self`, we write between readies).
//!
//! Architecture invariant: entries are contiguous from `first_index()`, and the snapshot held
//! covers everything before it; appending at an index that exists cuts everything from there
//! first (a new leader overwrote a stale suffix). What reaches a disk, and when, is the
//! driver's business: this type never touches one.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// One record of a node's log file, as written and as read back.
#[derive(Clone, Debug)]
pub enum DiskRecord {
    Entry(Entry),
    HardState(HardState),
}

#[derive(Clone, Debug)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The index and term just before the first entry held (0, 0: the log's start).
    offset: (u64, u64),
    entries: Vec<Entry>,
    /// The latest snapshot (empty: none yet): the state up to its index, which entries before
    /// `first_index()` need not be kept for.
    snapshot: Snapshot,
}

impl LogStore {
    /// A new cluster's log: empty, its voters `voters`.
    pub fn new(voters: &[u64]) -> LogStore {
        let conf_state = ConfState {
            voters: voters.to_vec(),
            ..ConfState::default()
        };
        LogStore {
            hard_state: HardState::default(),
            conf_state,
            offset: (0, 0),
            entries: Vec::new(),
            snapshot: Snapshot::default(),
        }
    }

    /// Keeps `snapshot` as the latest (this node made it from its applied state); entries are
    /// dropped separately, by `compact`.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        assert!(
            snapshot.get_metadata().index >= self.snapshot.get_metadata().index,
            "snapshots only move forward"
        );
        self.snapshot = snapshot;
    }

    /// Installs a snapshot a leader sent (or one read back at start-up): the log restarts just
    /// after it, its membership and commit index are the snapshot's at least.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) {
        let metadata = snapshot.get_metadata();
        let (index, term) = (metadata.index, metadata.term);
        // Entries past it stay if the log agrees with it at its index (a restart reads back
        // the log written after its snapshot); otherwise the log starts again after it.
        let agrees = index >= self.offset.0 && self.term(index).is_ok_and(|t| t == term);
        if agrees {
            self.entries.drain(..(index - self.offset.0) as usize);
        } else {
            self.entries.clear();
        }
        self.offset = (index, term);
        self.conf_state = metadata.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.hard_state.term = self.hard_state.term.max(term);
        self.snapshot = snapshot;
    }

    /// Drops the entries up to `index` (covered by the snapshot held).
    pub fn compact(&mut self, index: u64) {
        if index <= self.offset.0 {
            return;
        }
        assert!(
            index <= self.snapshot.get_metadata().index && index <= self.last(),
            "compacting to {index} beyond the snapshot ({}) or the log ({})",
            self.snapshot.get_metadata().index,
            self.last()
        );
        let term = self.term(index).expect("held");
        self.entries.drain(..(index - self.offset.0) as usize);
        self.offset = (index, term);
    }

    /// The snapshot held (empty: none).
    pub fn snapshot_held(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The membership as of the last entry (or snapshot) applied to it.
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// Appends entries raft-rs made stable, cutting any suffix they replace.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        assert!(
            first.index > self.offset.0 && first.index <= self.last() + 1,
            "appending at {} to a log holding {}..={}",
            first.index,
            self.offset.0 + 1,
            self.last()
        );
        self.entries.truncate((first.index - self.offset.0 - 1) as usize);
        self.entries.extend_from_slice(entries);
        debug_assert!(
            self.entries.windows(2).all(|w| w[1].index == w[0].index + 1),
            "the log stays contiguous"
        );
    }

    /// Rebuilds a node's log as a restart finds it on disk: its snapshot (if any), then the
    /// records of its log file in the order they were written. The driver writes a snapshot
    /// and then the log that follows it, each whole; a crash between the two leaves the log
    /// from before the snapshot behind it. So entries the snapshot covers are skipped, and a
    /// hard state whose commit index is behind the snapshot's index is moved up to it (a
    /// snapshot holds only committed entries; raft-rs refuses a commit index behind its log's
    /// start). What cannot be (a gap in the entries, a commit index past the last entry) is an
    /// error, never a panic.
    pub fn recover(
        voters: &[u64],
        snapshot: Option<Snapshot>,
        records: impl IntoIterator<Item = DiskRecord>,
    ) -> Result<LogStore, String> {
        let mut log = LogStore::new(voters);
        if let Some(snapshot) = snapshot {
            log.apply_snapshot(snapshot);
        }
        for record in records {
            match record {
                DiskRecord::Entry(entry) => log.read_back(entry)?,
                DiskRecord::HardState(hard_state) => log.read_back_hard_state(hard_state),
            }
        }
        if log.hard_state.commit > log.last() {
            return Err(format!(
                "the commit index {} is past the last entry held, {}",
                log.hard_state.commit,
                log.last()
            ));
        }
        Ok(log)
    }

    /// Reads back a hard state written before or after the snapshot held (see `recover`). One
    /// of a term older than the snapshot's (a leader's snapshot installed in a new term, the
    /// crash before the log that carried the new term was written) moves to the snapshot's
    /// term with no vote: no vote in that term left this node, for a vote leaves only once its
    /// hard state is synced.
    fn read_back_hard_state(&mut self, mut hard_state: HardState) {
        let metadata = self.snapshot.get_metadata();
        if hard_state.term < metadata.term {
            hard_state.term = metadata.term;
            hard_state.vote = 0;
        }
        hard_state.commit = hard_state.commit.max(metadata.index);
        self.hard_state = hard_state;
    }

    /// Reads back one entry of a log written after its snapshot (at a restart): an entry at or
    /// before the snapshot is skipped (a crash came between writing the two), a later one
    /// replaces what it overwrote; one past the end would leave a gap and is refused.
    fn read_back(&mut self, entry: Entry) -> Result<(), String> {
        let at = entry.index;
        if at != 0 && at <= self.snapshot.get_metadata().index {
            return Ok(());
        }
        if at == 0 || at > self.last() + 1 {
            return Err(format!("entry {at} follows entry {}: the log has a gap", self.last()));
        }
        self.append(&[entry]);
        Ok(())
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The index of the last entry held.
    pub fn last_index_held(&self) -> u64 {
        self.last()
    }

    /// Every entry held, in order.
    pub fn entries_held(&self) -> &[Entry] {
        &self.entries
    }

    fn last(&self) -> u64 {
        self.offset.0 + self.entries.len() as u64
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.offset.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let from = (low - self.offset.0 - 1) as usize;
        let to = (high - self.offset.0 - 1) as usize;
        let mut entries = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.offset.0 {
            return Ok(self.offset.1);
        }
        if index < self.offset.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entries.get((index - self.offset.0 - 1) as usize) {
            Some(entry) => Ok(entry.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.offset.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The latest snapshot is always as new as the compaction: a peer that needs entries
        // before `first_index()` gets it.
        if self.snapshot.get_metadata().index < request_index.max(1) {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    #[test]
    fn appending_over_a_suffix_replaces_it_and_terms_answer_per_index() {
        let mut log = LogStore::new(&[1, 2, 3]);
        assert_eq!((log.first_index().unwrap(), log.last_index().unwrap()), (1, 0));
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
        log.append(&[entry(2, 2)]);
        assert_eq!(log.last_index().unwrap(), 2);
        assert_eq!(log.term(0).unwrap(), 0);
        assert_eq!(log.term(2).unwrap(), 2);
        assert!(log.term(3).is_err());
        let held = log.entries(1, 3, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(
            held.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            [(1, 1), (2, 2)]
        );
        assert!(log.entries(1, 4, None, GetEntriesContext::empty(false)).is_err());
    }

    fn snapshot(index: u64, term: u64, voters: &[u64]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = index;
        snapshot.mut_metadata().term = term;
        snapshot.mut_metadata().mut_conf_state().voters = voters.to_vec();
        snapshot.data = b"state".to_vec().into();
        snapshot
    }

    #[test]
    fn compacting_behind_a_snapshot_drops_entries_and_a_peer_that_needs_them_gets_the_snapshot() {
        let mut log = LogStore::new(&[1, 2, 3]);
        log.append(&(1..=10).map(|i| entry(i, 1 + i / 6)).collect::<Vec<_>>());
        assert!(log.snapshot(0, 2).is_err(), "no snapshot yet");
        log.set_snapshot(snapshot(8, 2, &[1, 2, 3]));
        log.compact(6);
        assert_eq!((log.first_index().unwrap(), log.last_index().unwrap()), (7, 10));
        assert_eq!(log.term(6).unwrap(), 2);
        assert!(matches!(log.term(5), Err(raft::Error::Store(StorageError::Compacted))));
        assert!(log.entries(6, 8, None, GetEntriesContext::empty(false)).is_err());
        assert_eq!(
            log.entries(7, 11, None, GetEntriesContext::empty(false)).unwrap().len(),
            4
        );
        assert_eq!(log.snapshot(0, 2).unwrap().get_metadata().index, 8);
    }

    #[test]
    fn an_installed_snapshot_keeps_the_entries_that_agree_with_it_and_drops_the_others() {
        let mut agreeing = LogStore::new(&[1, 2, 3]);
        agreeing.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>());
        agreeing.apply_snapshot(snapshot(3, 1, &[1, 2, 3]));
        assert_eq!(
            (agreeing.first_index().unwrap(), agreeing.last_index().unwrap()),
            (4, 5)
        );
        assert_eq!(agreeing.hard_state().commit, 3);

        let mut behind = LogStore::new(&[1, 2, 3]);
        behind.append(&[entry(1, 1), entry(2, 1)]);
        behind.apply_snapshot(snapshot(7, 3, &[1, 2, 3, 4]));
        assert_eq!((behind.first_index().unwrap(), behind.last_index().unwrap()), (8, 7));
        assert_eq!(behind.term(7).unwrap(), 3);
        assert_eq!(behind.initial_state().unwrap().conf_state.voters, vec![1, 2, 3, 4]);
        behind.append(&[entry(8, 3)]);
        assert_eq!(behind.last_index().unwrap(), 8);
    }

    #[test]
    #[should_panic(expected = "appending at 5")]
    fn a_gap_in_the_log_is_refused() {
        let mut log = LogStore::new(&[1]);
        log.append(&[entry(1, 1)]);
        log.append(&[entry(5, 1)]);
    }
}
