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
    /// One record's bytes, before they are torn.
    scratch: Vec<u8>,
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
            scratch: Vec::new(),
        }
    }

    /// Appends one whole record, as a batch's durable write does.
    pub fn append(&mut self, record: &Entry) {
        self.log.truncate(self.whole_len);
        wal::encode_record(record, &mut self.log);
        self.whole_len = self.log.len();
        self.records += 1;
        self.since_snapshot += 1;
    }

    /// Writes `record` as a crash mid-write leaves it: torn as `tear` says.
    pub fn append_torn(&mut self, record: &Entry, tear: Tear) {
        self.scratch.clear();
        wal::encode_record(record, &mut self.scratch);
        self.log.truncate(self.whole_len);
        self.log.extend_from_slice(&tear.apply(&self.scratch));
    }

    /// Flips one byte of the log, as a disk that damaged a record already written would: for
    /// the simulator's own tests of the recovery checks.
    #[cfg(test)]
    pub fn damage(&mut self, offset: usize) {
        self.log[offset] ^= 0xff;
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

    /// The recovery's `Entry::Grace`, made durable before the restarted daemon serves. Its
    /// driver counts records towards the next snapshot from what the log already holds since
    /// the last one (those replayed and this grace), as `Durability::new` is told.
    pub fn append_grace(&mut self, now: Millis) {
        self.append(&Entry::Grace { now });
        self.since_snapshot = self.records as u64;
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
        image.append(&heartbeat(1001));
        image.append(&Entry::Tick { now: 1002 });
        let whole = image.whole_len();
        image.append_torn(&heartbeat(1003), Tear::Zeros { per_mille: 300 });
        let (recovered, reading) = image.read().expect("a torn tail is not damage");
        assert_eq!(recovered.records, [heartbeat(1001), Entry::Tick { now: 1002 }]);
        assert_eq!((reading.records, reading.valid_len), (2, whole));
        assert!(reading.torn.is_some() && !reading.from_snapshot);
        image.append_grace(1004);
        assert_eq!(image.since_snapshot(), 3, "the replayed records and the grace count");
        let (recovered, reading) = image.read().unwrap();
        assert_eq!(recovered.records.last(), Some(&Entry::Grace { now: 1004 }));
        assert_eq!((reading.records, reading.torn), (3, None));
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
            card: agentkeeper::core::types::AgentCard {
                name: "a".into(),
                ..Default::default()
            },
            ttl_seconds: 10,
        };
        image.append(&Entry::Apply {
            now: 1000,
            command: register.clone(),
            principal: None,
        });
        core.apply(1000, register).unwrap();
        image.take_snapshot(&core);
        assert_eq!((image.records(), image.since_snapshot()), (0, 0));
        image.append(&Entry::Tick { now: 12_000 });
        core.tick(12_000);
        let (recovered, reading) = image.read().unwrap();
        assert!(reading.from_snapshot);
        assert_eq!(reading.records, 1);
        let replayed = store::replay(recovered, config);
        assert_eq!(replayed.snapshot(), core.snapshot());
    }
}
