//! A node's consensus log as raft-rs reads it (`raft::Storage`): the entries, the hard state
//! (term, vote, commit) and the membership, held in memory by the node's one thread and changed
//! only through `&mut self` (no lock: raft-rs reads through `&self`, we write between readies).
//!
//! Architecture invariant: entries are contiguous from `first_index()`; appending at an index
//! that exists cuts everything from there first (a new leader overwrote a stale suffix). What
//! reaches a disk, and when, is the driver's business: this type never touches one.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

#[derive(Clone, Debug)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The index and term just before the first entry held (0, 0: the log's start).
    offset: (u64, u64),
    entries: Vec<Entry>,
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
        }
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

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The log is never compacted yet, so a lagging peer always catches up from entries.
        Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
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

    #[test]
    #[should_panic(expected = "appending at 5")]
    fn a_gap_in_the_log_is_refused() {
        let mut log = LogStore::new(&[1]);
        log.append(&[entry(1, 1)]);
        log.append(&[entry(5, 1)]);
    }
}
