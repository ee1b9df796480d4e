//! Durable state under `--data-dir`: an append-only log of the core's inputs, written a batch
//! at a time with one write and one fdatasync (group commit), and read back at start-up.
//!
//! Architecture invariant: a reply leaves the daemon only after the records of its batch are
//! durable; the directory is locked so that no two daemons share one log; the store holds bytes,
//! never core state, and the core never sees a file.

pub mod wal;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::core::types::Millis;
use crate::core::{Core, CoreConfig};
use wal::{Header, Record};

const LOG_FILE: &str = "wal.log";
const LOCK_FILE: &str = "LOCK";

/// Why the store cannot open: each names the path and what to do.
#[derive(Debug)]
pub enum StoreError {
    Io { path: PathBuf, error: std::io::Error },
    Locked { path: PathBuf },
    Damaged { path: PathBuf, detail: String },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            StoreError::Locked { path } => {
                write!(
                    f,
                    "data dir {} is in use by another agentkeeper (its LOCK is held)",
                    path.display()
                )
            }
            StoreError::Damaged { path, detail } => {
                write!(
                    f,
                    "{} is damaged: {detail}; refusing to start rather than drop data",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// What was read back at start-up.
pub struct Recovered {
    pub header: Header,
    pub records: Vec<Record>,
    /// Set when a torn last record was cut off: what was cut and where.
    pub torn: Option<String>,
}

pub struct Store {
    log: File,
    log_path: PathBuf,
    /// Held for the daemon's life: the flock on it keeps a second daemon out.
    _lock: File,
    /// Bytes of the log known durable; a failed append is cut back to here.
    durable_len: u64,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    }
}

impl Store {
    /// Opens (or creates) the log in `dir`, locks the directory, and reads back every record.
    /// A new log records `seed` and `now` in its header; an existing one keeps its own.
    pub fn open(dir: &Path, seed: u64, now: Millis) -> Result<(Store, Recovered), StoreError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: dir.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(StoreError::Io { path: lock_path, error }),
        }
        let log_path = dir.join(LOG_FILE);
        let mut log = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(io_error(&log_path))?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes).map_err(io_error(&log_path))?;
        let recovered = if bytes.is_empty() {
            let header = Header { seed, created_at: now };
            log.write_all(&header.encode()).map_err(io_error(&log_path))?;
            log.sync_all().map_err(io_error(&log_path))?;
            sync_dir(dir)?;
            Recovered {
                header,
                records: Vec::new(),
                torn: None,
            }
        } else {
            Self::read_back(&mut log, &log_path, &bytes)?
        };
        let durable_len = log.seek(SeekFrom::End(0)).map_err(io_error(&log_path))?;
        Ok((
            Store {
                log,
                log_path,
                _lock: lock,
                durable_len,
            },
            recovered,
        ))
    }

    fn read_back(log: &mut File, path: &Path, bytes: &[u8]) -> Result<Recovered, StoreError> {
        let damaged = |detail: String| StoreError::Damaged {
            path: path.to_path_buf(),
            detail,
        };
        let header = Header::decode(bytes).map_err(|e| damaged(format!("header: {e}")))?;
        let scan = wal::scan(bytes)
            .map_err(|d| damaged(format!("record {} at byte offset {}: {}", d.record, d.offset, d.reason)))?;
        if scan.torn.is_some() {
            // Cut the torn tail so that new records follow the last whole one.
            log.set_len(scan.valid_len).map_err(io_error(path))?;
            log.sync_all().map_err(io_error(path))?;
        }
        Ok(Recovered {
            header,
            records: scan.records,
            torn: scan.torn,
        })
    }

    /// Appends a batch of framed records with one write and one fdatasync. On failure the log
    /// is cut back to its last durable length, so a later append does not follow garbage.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let written = self.log.write_all(bytes).and_then(|()| self.log.sync_data());
        match written {
            Ok(()) => {
                self.durable_len += bytes.len() as u64;
                Ok(())
            }
            Err(error) => {
                let _ = self.log.set_len(self.durable_len);
                let _ = self.log.seek(SeekFrom::Start(self.durable_len));
                Err(error)
            }
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn len(&self) -> u64 {
        self.durable_len
    }

    pub fn is_empty(&self) -> bool {
        self.durable_len == 0
    }
}

/// Rebuilds the core the log describes: a new core from the header's seed and creation time,
/// then every record replayed in order. Events replayed here reach no subscriber (none exist yet)
/// but keep their sequence numbers in the retained ring.
pub fn replay(recovered: &Recovered, mut config: CoreConfig) -> Core {
    config.seed = recovered.header.seed;
    let mut core = Core::new(config, recovered.header.created_at);
    let mut discarded = Vec::new();
    for record in &recovered.records {
        match record {
            Record::Apply { now, command } => {
                let _ = core.apply(*now, command.clone());
            }
            Record::Tick { now } => {
                let _ = core.tick(*now);
            }
            Record::Grace { now } => core.restart_grace(*now),
        }
        core.drain_deliveries(&mut discarded);
        discarded.clear();
    }
    core
}

/// Makes a new file's directory entry durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Command;

    fn append(store: &mut Store, records: &[Record]) {
        let mut bytes = Vec::new();
        for record in records {
            wal::encode_record(record, &mut bytes);
        }
        store.append(&bytes).unwrap();
    }

    #[test]
    fn records_survive_reopening_and_the_first_header_wins() {
        let dir = tempfile::tempdir().unwrap();
        let record = Record::Apply {
            now: 5,
            command: Command::DeletePolicy { id: "p".into() },
        };
        {
            let (mut store, recovered) = Store::open(dir.path(), 42, 1000).unwrap();
            assert!(recovered.records.is_empty());
            append(&mut store, &[record.clone(), Record::Tick { now: 6 }]);
        }
        let (_, recovered) = Store::open(dir.path(), 99, 2000).unwrap();
        assert_eq!(
            recovered.header,
            Header {
                seed: 42,
                created_at: 1000
            }
        );
        assert_eq!(recovered.records, [record, Record::Tick { now: 6 }]);
    }

    #[test]
    fn a_second_store_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), 1, 1).unwrap();
        match Store::open(dir.path(), 1, 1) {
            Err(StoreError::Locked { .. }) => {}
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_appending_continues_after_the_last_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = Store::open(dir.path(), 1, 1).unwrap();
            append(&mut store, &[Record::Tick { now: 1 }, Record::Tick { now: 2 }]);
        }
        let path = dir.path().join(LOG_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        {
            let (mut store, recovered) = Store::open(dir.path(), 1, 1).unwrap();
            assert_eq!(recovered.records, [Record::Tick { now: 1 }]);
            assert!(recovered.torn.is_some());
            append(&mut store, &[Record::Tick { now: 3 }]);
        }
        let (_, recovered) = Store::open(dir.path(), 1, 1).unwrap();
        assert_eq!(recovered.records, [Record::Tick { now: 1 }, Record::Tick { now: 3 }]);
        assert!(recovered.torn.is_none());
    }

    #[test]
    fn damage_in_the_middle_refuses_to_open_naming_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = Store::open(dir.path(), 1, 1).unwrap();
            append(
                &mut store,
                &[
                    Record::Tick { now: 1 },
                    Record::Tick { now: 2 },
                    Record::Tick { now: 3 },
                ],
            );
        }
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[wal::HEADER_BYTES + 9] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let error = Store::open(dir.path(), 1, 1)
            .err()
            .expect("damage is refused")
            .to_string();
        assert!(error.contains("record 0 at byte offset 32"), "{error}");
    }
}
