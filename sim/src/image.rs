//! The simulated data dir: the bytes the daemon's store would hold (the newest snapshot file and
//! the log written after it), produced with the store's own encoders and read back at a crash
//! with its own header check, scan and snapshot decoder, the way `Store::open` reads a dir.
//!
//! Architecture invariant: this module holds bytes, never core state, and interprets them only
//! through `agentkeeper::store`; it never touches a file, a clock or an RNG.

use agentkeeper::core::Core;
use agentkeeper::core::entry::Entry;
use agentkeeper::core::types::Millis;
use agentkeeper::store::wal::{self, Header};
use agentkeeper::store::{self, Recovered};

use crate::step::Tear;

pub struct StoreImage {
    /// The newest snapshot file; `log` holds what came after it (none yet: generation 0).
    snapshot: Option<Vec<u8>>,
    /// The current generation's log file: the header, then framed records, maybe a torn one.
    log: Vec<u8>,
    /// Bytes of `log` that hold the header and whole records (a torn tail lies beyond).
    whole_len: usize,
    /// Whole records in `log`.
    records: usize,
    /// Records written since the last snapshot (the driver's `since_snapshot`).
    since_snapshot: u64,
    /// The entries the machine handed out for the next write, framed, and where each starts;
    /// with the machine's index of the last one.
    staged: Vec<u8>,
    staged_starts: Vec<usize>,
    staged_last: u64,
    /// The machine's index of the last entry made durable.
    durable_index: u64,
}

/// What reading the image back found, besides the recovered state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Whole records the scan read after the snapshot.
    pub records: usize,
    /// Log bytes kept: the header and the whole records.
    pub valid_len: u64,
    /// Why the tail after `valid_len` was cut, if it was.
    pub torn: Option<String>,
    pub from_snapshot: bool,
}

/// Why the image could not be read back; the daemon would refuse to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The scan found damage that is not a torn tail: records before it would be lost.
    Damaged(String),
    /// The header or the snapshot does not decode.
    Undecodable(String),
}

impl StoreImage {
    /// A new data dir: generation 0's log with only its header.
    pub fn new(seed: u64, created_at: Millis) -> StoreImage {
        let header = Header { seed, created_at };
        StoreImage {
            snapshot: None,
            log: header.encode().to_vec(),
            whole_len: wal::HEADER_BYTES,
            records: 0,
            since_snapshot: 0,
            staged: Vec::new(),
            staged_starts: Vec::new(),
            staged_last: 0,
            durable_index: 0,
        }
    }

    /// Adds an entry the machine emitted to the next write (the driver's batch).
    pub fn stage(&mut self, index: u64, entry: &Entry) {
        assert!(
            index > self.staged_last.max(self.durable_index),
            "entries come in index order"
        );
        self.staged_starts.push(self.staged.len());
        wal::encode_record(entry, &mut self.staged);
        self.staged_last = index;
    }

    pub fn has_staged(&self) -> bool {
        !self.staged_starts.is_empty()
    }

    /// The machine's index of the last entry made durable.
    pub fn durable_index(&self) -> u64 {
        self.durable_index
    }

    /// The staged entries written whole and made durable (one write, one fdatasync); returns the
    /// index now durable.
    pub fn commit(&mut self) -> u64 {
        assert!(self.has_staged(), "a write of nothing");
        self.log.truncate(self.whole_len);
        self.log.extend_from_slice(&self.staged);
        self.whole_len = self.log.len();
        self.records += self.staged_starts.len();
        self.since_snapshot += self.staged_starts.len() as u64;
        self.durable_index = self.staged_last;
        self.discard_staged();
        self.durable_index
    }

    /// The process died with these entries unwritten.
    pub fn discard_staged(&mut self) {
        self.staged.clear();
        self.staged_starts.clear();
        self.staged_last = self.durable_index;
    }

    /// The write failed at its fsync; the store cut the log back to its durable length, so
    /// nothing of the batch remains.
    pub fn fail_fsync(&mut self) {
        self.log.truncate(self.whole_len);
        self.discard_staged();
    }

    /// A short write: the first bytes of the batch's first entry reached the disk before the
    /// error, and stayed there (a torn tail the next start-up cuts).
    pub fn fail_short(&mut self, per_mille: u16) {
        let first_end = self.staged_starts.get(1).copied().unwrap_or(self.staged.len());
        let torn = Tear::Cut { per_mille }.apply(&self.staged[..first_end]);
        self.log.truncate(self.whole_len);
        self.log.extend_from_slice(&torn);
        self.discard_staged();
    }

    /// A crash while writing the batch: every staged entry but the last lands whole, the last
    /// lands torn as `tear` says, and none of it was acknowledged.
    pub fn commit_torn(&mut self, tear: Tear) {
        let last_start = *self.staged_starts.last().expect("a torn write of nothing");
        self.log.truncate(self.whole_len);
        self.log.extend_from_slice(&self.staged[..last_start]);
        self.whole_len = self.log.len();
        self.records += self.staged_starts.len() - 1;
        self.log.extend_from_slice(&tear.apply(&self.staged[last_start..]));
        self.discard_staged();
    }

    /// Flips one byte of the log, as a disk that damaged a record already written would: for
    /// the simulator's own tests of the recovery checks.
    #[cfg(test)]
    pub fn damage(&mut self, offset: usize) {
        self.log[offset] ^= 0xff;
    }

    /// True when bytes beyond the whole records lie in the log (a torn write's or a short
    /// write's): the next start-up must cut them.
    pub fn torn_tail(&self) -> bool {
        self.log.len() > self.whole_len
    }

    /// Bytes of the log that hold the header and whole records.
    pub fn whole_len(&self) -> u64 {
        self.whole_len as u64
    }

    /// Whole records in the current log.
    pub fn records(&self) -> usize {
        self.records
    }

    pub fn since_snapshot(&self) -> u64 {
        self.since_snapshot
    }

    /// A new generation: the snapshot file of `core`'s state, and a log that starts over.
    pub fn take_snapshot(&mut self, core: &Core) {
        self.snapshot = Some(store::encode_snapshot(&core.snapshot()));
        self.log.truncate(wal::HEADER_BYTES);
        self.whole_len = wal::HEADER_BYTES;
        self.records = 0;
        self.since_snapshot = 0;
    }

    /// Reads the image back as `Store::open` does: the snapshot, the log's header, every whole
    /// record, a torn tail cut off (and the log truncated to its whole records, as the store
    /// truncates the file), damage elsewhere refused.
    pub fn read(&mut self) -> Result<(Recovered, Reading), ReadError> {
        let snapshot = match &self.snapshot {
            Some(bytes) => {
                Some(store::decode_snapshot(bytes).map_err(|e| ReadError::Undecodable(format!("the snapshot: {e}")))?)
            }
            None => None,
        };
        let header = Header::decode(&self.log).map_err(|e| ReadError::Undecodable(format!("the log header: {e}")))?;
        let scan = wal::scan(&self.log).map_err(|d| {
            ReadError::Damaged(format!("record {} at byte offset {}: {}", d.record, d.offset, d.reason))
        })?;
        let reading = Reading {
            records: scan.records.len(),
            valid_len: scan.valid_len,
            torn: scan.torn,
            from_snapshot: snapshot.is_some(),
        };
        let valid_len = usize::try_from(scan.valid_len).expect("the log is in memory");
        self.log.truncate(valid_len);
        self.whole_len = valid_len;
        self.records = reading.records;
        // A new process: its machine numbers entries from 1 again, and its driver counts them
        // towards the next snapshot from what the log holds since the last one (the replayed
        // records; `Durability::new` is told them).
        self.since_snapshot = self.records as u64;
        self.durable_index = 0;
        self.discard_staged();
        let recovered = Recovered {
            header,
            snapshot,
            records: scan.records,
            torn: reading.torn.clone(),
        };
        Ok((recovered, reading))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkeeper::core::{Command, CoreConfig};

    fn heartbeat(now: Millis) -> Entry {
        Entry::Apply {
            now,
            command: Command::Heartbeat {
                agent_id: "a".repeat(32),
            },
            principal: None,
        }
    }

    #[test]
    fn whole_records_read_back_and_a_torn_one_is_cut_and_overwritten() {
        let mut image = StoreImage::new(5, 1000);
        image.stage(1, &heartbeat(1001));
        image.stage(2, &Entry::Tick { now: 1002 });
        assert_eq!(image.commit(), 2);
        let whole = image.whole_len();
        image.stage(3, &heartbeat(1003));
        image.commit_torn(Tear::Zeros { per_mille: 300 });
        let (recovered, reading) = image.read().expect("a torn tail is not damage");
        assert_eq!(recovered.records, [heartbeat(1001), Entry::Tick { now: 1002 }]);
        assert_eq!((reading.records, reading.valid_len), (2, whole));
        assert!(reading.torn.is_some() && !reading.from_snapshot);
        assert_eq!(image.since_snapshot(), 2, "a new process counts the replayed records");
        image.stage(4, &Entry::Grace { now: 1004 });
        image.commit();
        assert_eq!(image.since_snapshot(), 3, "the replayed records and the grace count");
        let (recovered, reading) = image.read().unwrap();
        assert_eq!(recovered.records.last(), Some(&Entry::Grace { now: 1004 }));
        assert_eq!((reading.records, reading.torn), (3, None));
    }

    #[test]
    fn a_failed_fsync_leaves_nothing_and_a_short_write_leaves_a_torn_tail_of_its_first_entry() {
        let mut image = StoreImage::new(5, 1000);
        image.stage(1, &heartbeat(1001));
        image.commit();
        let whole = image.whole_len();
        image.stage(2, &heartbeat(1002));
        image.stage(3, &heartbeat(1003));
        image.fail_fsync();
        assert_eq!(
            (image.whole_len(), image.durable_index(), image.has_staged()),
            (whole, 1, false)
        );
        image.stage(4, &heartbeat(1004));
        image.stage(5, &heartbeat(1005));
        image.fail_short(600);
        let (recovered, reading) = image.read().expect("a short write's tail is torn, not damage");
        assert_eq!(recovered.records, [heartbeat(1001)]);
        assert!(reading.torn.is_some());
    }

    #[test]
    fn a_snapshot_starts_the_log_over_and_recovery_starts_from_it() {
        let config = CoreConfig {
            seed: 5,
            ..CoreConfig::default()
        };
        let mut core = Core::new(config.clone(), 1000);
        let mut image = StoreImage::new(5, 1000);
        let register = Command::Register {
            card: Box::new(agentkeeper::core::types::AgentCard {
                name: "a".into(),
                ..Default::default()
            }),
            ttl_seconds: 10,
            vector: None,
        };
        image.stage(
            1,
            &Entry::Apply {
                now: 1000,
                command: register.clone(),
                principal: None,
            },
        );
        image.commit();
        core.apply(1000, register).unwrap();
        image.take_snapshot(&core);
        assert_eq!((image.records(), image.since_snapshot()), (0, 0));
        image.stage(2, &Entry::Tick { now: 12_000 });
        image.commit();
        core.tick(12_000);
        let (recovered, reading) = image.read().unwrap();
        assert!(reading.from_snapshot);
        assert_eq!(reading.records, 1);
        let replayed = store::replay(recovered, config);
        assert_eq!(replayed.snapshot(), core.snapshot());
    }
}
