//! Durable state under `--data-dir`: an append-only log of the core's inputs, written a batch
//! at a time with one write and one fdatasync (group commit), cut into generations by periodic
//! snapshots, and read back at start-up (latest whole snapshot + the logs after it).
//!
//! Files: `wal-<gen>.log` holds the inputs after `snapshot-<gen>.bin` (generation 0 has no
//! snapshot: it starts from the empty core its header describes). Older generations are deleted
//! only after a newer snapshot is durable. Every file names its format version (`format`); a
//! release reads older versions and appends only to a log in its own.
//!
//! Architecture invariant: a reply leaves the daemon only after the records of its batch are
//! durable; the directory is locked so that no two daemons share one log; the store holds bytes,
//! never core state, and the core never sees a file.

pub mod consensus_log;
pub mod format;
mod snapshot_file;
pub mod wal;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::core::entry::Entry;
use crate::core::snapshot::CoreSnapshot;
use crate::core::types::Millis;
use crate::core::{Core, CoreConfig};
use format::FileError;
pub use snapshot_file::{decode_snapshot, encode_snapshot};
use wal::Header;

const LOCK_FILE: &str = "LOCK";

fn log_name(generation: u64) -> String {
    format!("wal-{generation:08}.log")
}

fn snapshot_name(generation: u64) -> String {
    format!("snapshot-{generation:08}.bin")
}

/// The generations present in `dir` for files named `<prefix><gen><suffix>`, ascending.
fn generations(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<u64>, StoreError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let name = entry.map_err(io_error(dir))?.file_name();
        let name = name.to_string_lossy();
        if let Some(generation) = name.strip_prefix(prefix).and_then(|n| n.strip_suffix(suffix))
            && let Ok(generation) = generation.parse()
        {
            found.push(generation);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Why the store cannot open: each names the path and what to do.
#[derive(Debug)]
pub enum StoreError {
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    Locked {
        path: PathBuf,
    },
    Damaged {
        path: PathBuf,
        detail: String,
    },
    /// A file in a format version this release does not read (written by a newer one).
    Version {
        path: PathBuf,
        detail: String,
    },
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
            StoreError::Version { path, detail } => write!(f, "{}: {detail}", path.display()),
        }
    }
}

impl std::error::Error for StoreError {}

/// What was read back at start-up.
pub struct Recovered {
    pub header: Header,
    /// The latest whole snapshot, if any; `records` follow it.
    pub snapshot: Option<CoreSnapshot>,
    pub records: Vec<Entry>,
    /// Set when a torn last record was cut off: what was cut and where.
    pub torn: Option<String>,
}

impl Recovered {
    /// How many records recovery replays on top of the snapshot: the log written since it,
    /// which the next snapshot makes unnecessary. A driver counts towards that snapshot from
    /// here, not from zero, so that a daemon that restarts often still snapshots, and restart
    /// time and disk use stay bounded whatever the crash rate.
    pub fn replayed(&self) -> u64 {
        self.records.len() as u64
    }
}

pub struct Store {
    dir: PathBuf,
    header: Header,
    generation: u64,
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
    /// Opens (or creates) the store in `dir`, locks the directory, and reads back the latest
    /// whole snapshot and every record after it. A new store records `seed` and `now` in its
    /// header; an existing one keeps its own.
    pub fn open(dir: &Path, seed: u64, now: Millis) -> Result<(Store, Recovered), StoreError> {
        let lock = lock_dir(dir)?;
        if dir.join(consensus_log::FILE).exists() {
            return Err(StoreError::Version {
                path: dir.to_path_buf(),
                detail: "this data dir belongs to a cluster node (it holds a consensus log): start it with \
                         --node-id and --initial-cluster, or give this single node a data dir of its own"
                    .into(),
            });
        }
        let logs = generations(dir, "wal-", ".log")?;
        if logs.is_empty() {
            let header = Header { seed, created_at: now };
            let (log, log_path) = create_log(dir, 0, header)?;
            let durable_len = wal::HEADER_BYTES as u64;
            let store = Store {
                dir: dir.to_path_buf(),
                header,
                generation: 0,
                log,
                log_path,
                _lock: lock,
                durable_len,
            };
            return Ok((
                store,
                Recovered {
                    header,
                    snapshot: None,
                    records: Vec::new(),
                    torn: None,
                },
            ));
        }
        let (base, snapshot) = latest_snapshot(dir)?;
        let replay: Vec<u64> = logs.into_iter().filter(|&g| g >= base).collect();
        if replay.first() != Some(&base) {
            let missing = dir.join(log_name(base));
            return Err(StoreError::Damaged {
                path: missing,
                detail: "this log generation is missing".into(),
            });
        }
        let mut records = Vec::new();
        let mut header = None;
        let mut torn = None;
        let mut last_version = format::VERSION;
        let last = *replay.last().expect("at least one generation");
        for &generation in &replay {
            let path = dir.join(log_name(generation));
            let bytes = std::fs::read(&path).map_err(io_error(&path))?;
            let read = read_log(&path, &bytes)?;
            if let Some(cut) = &read.torn {
                if generation != last {
                    let detail = format!("a cut record in a log that is not the newest: {cut}");
                    return Err(StoreError::Damaged { path, detail });
                }
                truncate(&path, read.valid_len)?;
                torn = read.torn;
            }
            header.get_or_insert(read.header);
            last_version = read.version;
            records.extend(read.records);
        }
        let header = header.expect("at least one log was read");
        let log_path = dir.join(log_name(last));
        let mut log = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(io_error(&log_path))?;
        let durable_len = log.seek(SeekFrom::End(0)).map_err(io_error(&log_path))?;
        remove_generations_below(dir, base);
        let mut store = Store {
            dir: dir.to_path_buf(),
            header,
            generation: last,
            log,
            log_path,
            _lock: lock,
            durable_len,
        };
        if last_version != format::VERSION {
            // Never append to a log of another version: new records go to a new generation in
            // this one. The older files stay until a snapshot in this version is durable.
            store.rotate().map_err(io_error(dir))?;
            tracing::info!(
                from = last_version,
                to = format::VERSION,
                log = %store.log_path.display(),
                "upgrading the data dir's format: new records go to a new log generation"
            );
        }
        Ok((
            store,
            Recovered {
                header,
                snapshot,
                records,
                torn,
            },
        ))
    }

    /// Starts a new log generation; the caller then writes the snapshot of the state as of now
    /// with [`write_snapshot`] (off the core thread is fine: the older files stay until it lands).
    pub fn rotate(&mut self) -> std::io::Result<(PathBuf, u64)> {
        let generation = self.generation + 1;
        let (log, log_path) = create_log(&self.dir, generation, self.header).map_err(|e| match e {
            StoreError::Io { error, .. } => error,
            other => std::io::Error::other(other.to_string()),
        })?;
        self.log = log;
        self.log_path = log_path;
        self.generation = generation;
        self.durable_len = wal::HEADER_BYTES as u64;
        Ok((self.dir.clone(), generation))
    }

    /// Appends a batch of framed records with one write and one fdatasync. On failure the log
    /// is cut back to its last durable length, so a later append does not follow garbage.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let written = write_and_sync(&mut self.log, bytes);
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

/// One write and one fdatasync, with the fault points of a disk that is slow, full or failing
/// (`buggify`, debug builds only).
fn write_and_sync(log: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    use crate::buggify::{self, Site};
    if buggify::fire(Site::SlowDisk) {
        std::thread::sleep(std::time::Duration::from_millis(1 + buggify::below(40)));
    }
    if buggify::fire(Site::ShortWrite) {
        let cut = buggify::below(bytes.len() as u64) as usize;
        log.write_all(&bytes[..cut])?;
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "short write: no space left on device (fault injected)",
        ));
    }
    log.write_all(bytes)?;
    if buggify::fire(Site::FsyncFails) {
        return Err(std::io::Error::other("fdatasync: input/output error (fault injected)"));
    }
    log.sync_data()
}

/// Rebuilds the core the log describes: a new core from the header's seed and creation time,
/// then every record replayed in order. Events replayed here reach no subscriber (none exist yet)
/// but keep their sequence numbers in the retained ring.
pub fn replay(recovered: Recovered, mut config: CoreConfig) -> Core {
    config.seed = recovered.header.seed;
    let mut core = match recovered.snapshot {
        Some(snapshot) => Core::restore(config, snapshot),
        None => Core::new(config, recovered.header.created_at),
    };
    let mut discarded = Vec::new();
    for record in &recovered.records {
        match record {
            Entry::Apply {
                now,
                command,
                principal,
            } => {
                let _ = core.apply_as(*now, command.clone(), *principal);
            }
            Entry::Tick { now } => {
                let _ = core.tick(*now);
            }
            Entry::Grace { now } => core.restart_grace(*now),
        }
        core.drain_deliveries(&mut discarded);
        discarded.clear();
    }
    core
}

struct LogRead {
    header: Header,
    version: u32,
    records: Vec<Entry>,
    valid_len: u64,
    torn: Option<String>,
}

fn read_log(path: &Path, bytes: &[u8]) -> Result<LogRead, StoreError> {
    let damaged = |detail: String| StoreError::Damaged {
        path: path.to_path_buf(),
        detail,
    };
    let header = Header::decode(bytes).map_err(|error| match error {
        FileError::Version(detail) => StoreError::Version {
            path: path.to_path_buf(),
            detail,
        },
        FileError::Damaged(detail) => damaged(format!("header: {detail}")),
    })?;
    let scan = wal::scan(bytes)
        .map_err(|d| damaged(format!("record {} at byte offset {}: {}", d.record, d.offset, d.reason)))?;
    Ok(LogRead {
        header,
        version: scan.version,
        records: scan.records,
        valid_len: scan.valid_len,
        torn: scan.torn,
    })
}

fn truncate(path: &Path, len: u64) -> Result<(), StoreError> {
    let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
    file.set_len(len).and_then(|()| file.sync_all()).map_err(io_error(path))
}

/// Creates `dir` if need be and takes its lock (held as long as the file lives): one daemon a
/// data dir. Temp files left by a crash are removed then.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
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
    // The lock is ours, so nothing is being written: a temp file is a crash's leftover.
    remove_temps(dir);
    Ok(lock)
}

fn create_log(dir: &Path, generation: u64, header: Header) -> Result<(File, PathBuf), StoreError> {
    let path = dir.join(log_name(generation));
    if path.exists() {
        let error = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the log generation exists");
        return Err(StoreError::Io { path, error });
    }
    // The header goes into a temp file that is renamed into place: a crash at any moment leaves
    // either no new log or one with its whole header, never an empty one that would keep the
    // daemon from starting.
    let log = create_whole(dir, &path, &header.encode())?;
    Ok((log, path))
}

/// Creates `path` (in `dir`) holding `bytes`, whole or not at all: written to a temp file,
/// synced, renamed into place, the dir synced. Returns the file, open for reading and writing.
fn create_whole(dir: &Path, path: &Path, bytes: &[u8]) -> Result<File, StoreError> {
    let name = path.file_name().expect("a file's path").to_string_lossy();
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&temp)
        .map_err(io_error(&temp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(io_error(path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// The newest snapshot that reads back whole (a torn one, from a crash while writing it, is
/// passed over for the one before), and its generation; generation 0 without one.
fn latest_snapshot(dir: &Path) -> Result<(u64, Option<CoreSnapshot>), StoreError> {
    for generation in generations(dir, "snapshot-", ".bin")?.into_iter().rev() {
        let path = dir.join(snapshot_name(generation));
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        match decode_snapshot(&bytes) {
            Ok(snapshot) => return Ok((generation, Some(snapshot))),
            // Not torn: passing over it would replay from an older base, or find its logs gone.
            Err(FileError::Version(detail)) => return Err(StoreError::Version { path, detail }),
            Err(FileError::Damaged(reason)) => {
                tracing::warn!(path = %path.display(), %reason, "skipping an unreadable snapshot")
            }
        }
    }
    Ok((0, None))
}

/// Writes `bytes` as generation `generation`'s snapshot (temp file, fsync, rename, fsync dir),
/// then deletes every older generation. Runs off the core thread.
pub fn write_snapshot(dir: &Path, generation: u64, bytes: &[u8]) -> std::io::Result<()> {
    let final_path = dir.join(snapshot_name(generation));
    let temp_path = dir.join(format!("{}{TEMP_SUFFIX}", snapshot_name(generation)));
    let written = File::create(&temp_path).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(error) = written {
        // A full disk must not keep a half file: the next try writes a new one.
        let _ = std::fs::remove_file(&temp_path);
        return Err(error);
    }
    std::fs::rename(&temp_path, &final_path)?;
    File::open(dir)?.sync_all()?;
    remove_generations_below(dir, generation);
    Ok(())
}

const TEMP_SUFFIX: &str = ".tmp";

/// Deletes the temp files of snapshots and new logs, which only a crash while writing one leaves
/// behind (best effort, like every removal here: a leftover costs disk, never correctness).
fn remove_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with("snapshot-") || name.starts_with("wal-")) && name.ends_with(TEMP_SUFFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Deletes logs and snapshots older than `generation` (best effort: leftovers are harmless).
fn remove_generations_below(dir: &Path, generation: u64) {
    let remove = |prefix: &str, suffix: &str| {
        for old in generations(dir, prefix, suffix)
            .unwrap_or_default()
            .into_iter()
            .filter(|&g| g < generation)
        {
            let _ = std::fs::remove_file(dir.join(format!("{prefix}{old:08}{suffix}")));
        }
    };
    remove("wal-", ".log");
    remove("snapshot-", ".bin");
}

/// Makes a new file's directory entry durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Command;

    fn append(store: &mut Store, records: &[Entry]) {
        let mut bytes = Vec::new();
        for record in records {
            wal::encode_record(record, &mut bytes);
        }
        store.append(&bytes).unwrap();
    }

    #[test]
    fn records_survive_reopening_and_the_first_header_wins() {
        let dir = tempfile::tempdir().unwrap();
        let record = Entry::Apply {
            now: 5,
            command: Command::DeletePolicy { id: "p".into() },
            principal: None,
        };
        {
            let (mut store, recovered) = Store::open(dir.path(), 42, 1000).unwrap();
            assert!(recovered.records.is_empty());
            append(&mut store, &[record.clone(), Entry::Tick { now: 6 }]);
        }
        let (_, recovered) = Store::open(dir.path(), 99, 2000).unwrap();
        assert_eq!(
            recovered.header,
            Header {
                seed: 42,
                created_at: 1000
            }
        );
        assert_eq!(recovered.records, [record, Entry::Tick { now: 6 }]);
    }

    #[test]
    fn a_crash_while_a_new_log_gets_its_header_leaves_no_empty_log_and_the_leftover_goes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = Store::open(dir.path(), 1, 1).unwrap();
            append(&mut store, &[Entry::Tick { now: 2 }]);
            store.rotate().unwrap();
        }
        // What a kill between creating generation 2's file and writing its header leaves.
        let leftover = dir.path().join(format!("{}{TEMP_SUFFIX}", log_name(2)));
        std::fs::write(&leftover, b"").unwrap();
        assert!(!dir.path().join(log_name(2)).exists());
        let (store, recovered) = Store::open(dir.path(), 1, 1).expect("a leftover temp file does not stop a start");
        assert_eq!(recovered.records, [Entry::Tick { now: 2 }]);
        assert!(!leftover.exists(), "the leftover is removed");
        assert_eq!(store.log_path(), dir.path().join(log_name(1)));
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
            append(&mut store, &[Entry::Tick { now: 1 }, Entry::Tick { now: 2 }]);
        }
        let path = dir.path().join(log_name(0));
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        {
            let (mut store, recovered) = Store::open(dir.path(), 1, 1).unwrap();
            assert_eq!(recovered.records, [Entry::Tick { now: 1 }]);
            assert!(recovered.torn.is_some());
            append(&mut store, &[Entry::Tick { now: 3 }]);
        }
        let (_, recovered) = Store::open(dir.path(), 1, 1).unwrap();
        assert_eq!(recovered.records, [Entry::Tick { now: 1 }, Entry::Tick { now: 3 }]);
        assert!(recovered.torn.is_none());
    }

    #[test]
    fn damage_in_the_middle_refuses_to_open_naming_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = Store::open(dir.path(), 1, 1).unwrap();
            append(
                &mut store,
                &[Entry::Tick { now: 1 }, Entry::Tick { now: 2 }, Entry::Tick { now: 3 }],
            );
        }
        let path = dir.path().join(log_name(0));
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

#[cfg(test)]
mod recovery_tests {
    //! Recovery across format versions and crashes: what is read, replayed, refused and kept.

    use super::*;
    use crate::core::Command;

    fn tick_records(store: &mut Store, from: u64, n: u64) {
        let mut bytes = Vec::new();
        for now in from..from + n {
            wal::encode_record(&Entry::Tick { now }, &mut bytes);
        }
        store.append(&bytes).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_FILE)
            .collect();
        names.sort();
        names
    }

    fn empty_snapshot() -> Vec<u8> {
        encode_snapshot(&Core::new(CoreConfig::default(), 1).snapshot())
    }

    #[test]
    fn recovery_counts_the_records_since_the_last_snapshot_and_a_snapshot_resets_the_count() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, recovered) = Store::open(dir.path(), 1, 1).unwrap();
            assert_eq!(recovered.replayed(), 0);
            tick_records(&mut store, 1, 5);
        }
        {
            let (mut store, recovered) = Store::open(dir.path(), 1, 1).unwrap();
            assert_eq!(recovered.replayed(), 5);
            // Restarts add up: the count is the log since the snapshot, not since the start.
            tick_records(&mut store, 6, 3);
        }
        let (mut store, recovered) = Store::open(dir.path(), 1, 1).unwrap();
        assert_eq!(recovered.replayed(), 8);
        let (snapshot_dir, generation) = store.rotate().unwrap();
        tick_records(&mut store, 9, 2);
        write_snapshot(&snapshot_dir, generation, &empty_snapshot()).unwrap();
        drop(store);
        let (_, recovered) = Store::open(dir.path(), 1, 1).unwrap();
        assert_eq!(recovered.replayed(), 2, "only the records after the snapshot");
        assert_eq!(names(dir.path()), ["snapshot-00000001.bin", "wal-00000001.log"]);
    }

    #[test]
    fn a_crash_while_the_first_snapshot_after_start_is_written_keeps_every_older_generation() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = Store::open(dir.path(), 1, 1).unwrap();
            tick_records(&mut store, 1, 4);
            let (snapshot_dir, generation) = store.rotate().unwrap();
            tick_records(&mut store, 5, 2);
            // The crash: the snapshot's temp file is half written, never renamed.
            let temp = snapshot_dir.join(format!("{}{TEMP_SUFFIX}", snapshot_name(generation)));
            std::fs::write(temp, &empty_snapshot()[..10]).unwrap();
        }
        let (mut store, recovered) = Store::open(dir.path(), 1, 1).unwrap();
        assert_eq!(recovered.replayed(), 6, "both generations are replayed");
        assert!(recovered.snapshot.is_none());
        assert_eq!(
            names(dir.path()),
            ["wal-00000000.log", "wal-00000001.log"],
            "the temp file is gone, every log kept"
        );
        // The snapshot after this start lands: the older generations go.
        let (snapshot_dir, generation) = store.rotate().unwrap();
        write_snapshot(&snapshot_dir, generation, &empty_snapshot()).unwrap();
        assert_eq!(names(dir.path()), ["snapshot-00000002.bin", "wal-00000002.log"]);
    }

    #[test]
    fn a_log_from_a_newer_release_refuses_to_open_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), 1, 1).unwrap());
        let path = dir.path().join(log_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&(format::VERSION + 1).to_le_bytes());
        let crc = crc32fast::hash(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let error = Store::open(dir.path(), 1, 1).err().expect("refused").to_string();
        assert_eq!(
            error,
            format!(
                "{}: written by a newer agentkeeper (log format version {}); this daemon reads versions 1 to {}: \
                 run the newer release",
                path.display(),
                format::VERSION + 1,
                format::VERSION
            )
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file is left as it was");
    }

    #[test]
    fn a_snapshot_from_a_newer_release_is_refused_not_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = Store::open(dir.path(), 1, 1).unwrap();
            let (snapshot_dir, generation) = store.rotate().unwrap();
            let mut bytes = empty_snapshot();
            bytes[8..12].copy_from_slice(&(format::VERSION + 1).to_le_bytes());
            write_snapshot(&snapshot_dir, generation, &bytes).unwrap();
        }
        let error = Store::open(dir.path(), 1, 1).err().expect("refused").to_string();
        assert!(
            error.contains("snapshot-00000001.bin: written by a newer agentkeeper (snapshot format version"),
            "{error}"
        );
    }

    /// The data dir release 2dd3316 wrote (tests/fixtures/datadir-2dd3316, format version 1: a
    /// snapshot and records after it), copied to `dir`.
    fn release_2dd3316_data_dir(dir: &Path) {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/datadir-2dd3316");
        for entry in std::fs::read_dir(fixture).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }

    fn version_of(path: &Path) -> u32 {
        wal::Header::version(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn a_version_1_data_dir_reads_back_and_new_records_go_to_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        release_2dd3316_data_dir(dir.path());
        let old = dir.path().join("wal-00000001.log");
        let old_bytes = std::fs::read(&old).unwrap();
        let config = CoreConfig {
            dead_retention_ms: u64::MAX / 4,
            task_retention_ms: u64::MAX / 4,
            ..CoreConfig::default()
        };
        let (mut store, recovered) = Store::open(dir.path(), 1, 1).unwrap();
        assert!(recovered.snapshot.is_some() && recovered.replayed() > 0);
        assert_eq!(recovered.header.seed, 2026);
        let v1_records = recovered.records.clone();
        let stats = replay(recovered, config.clone()).stats();
        // What the manifest (tests/fixtures/datadir-2dd3316.json) lists.
        assert_eq!(
            (
                stats.agents_alive,
                stats.agents_dead,
                stats.leases,
                stats.policies,
                stats.groups
            ),
            (4, 1, 3, 2, 2)
        );
        assert_eq!(
            (
                stats.tasks_pending,
                stats.tasks_claimed,
                stats.tasks_completed,
                stats.tasks_dead
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(stats.fencing_token_last, 6);
        assert_eq!(store.log_path(), dir.path().join("wal-00000002.log"));
        assert_eq!(version_of(store.log_path()), format::VERSION);
        let heartbeat = Entry::Apply {
            now: u64::MAX / 8,
            command: Command::Heartbeat {
                agent_id: "41045ce156e5c2fb0acf1aacbc47a384".into(),
            },
            principal: None,
        };
        let mut bytes = Vec::new();
        wal::encode_record(&heartbeat, &mut bytes);
        store.append(&bytes).unwrap();
        drop(store);
        assert_eq!(
            std::fs::read(&old).unwrap(),
            old_bytes,
            "a version 1 log is never written to"
        );

        // Mixed: the version 1 snapshot and log, then the version 2 log.
        let (mut store, recovered) = Store::open(dir.path(), 1, 1).unwrap();
        assert_eq!(recovered.records[..v1_records.len()], v1_records[..]);
        assert_eq!(recovered.records[v1_records.len()..], [heartbeat]);
        assert_eq!(
            store.log_path(),
            dir.path().join("wal-00000002.log"),
            "no second rotation"
        );
        let core = replay(recovered, config);
        // The first snapshot in version 2 replaces every version 1 file.
        let (snapshot_dir, generation) = store.rotate().unwrap();
        write_snapshot(&snapshot_dir, generation, &encode_snapshot(&core.snapshot())).unwrap();
        assert_eq!(names(dir.path()), ["snapshot-00000003.bin", "wal-00000003.log"]);
        drop(store);
        let (_, recovered) = Store::open(dir.path(), 1, 1).unwrap();
        assert_eq!(recovered.replayed(), 0);
        assert_eq!(recovered.snapshot.as_ref(), Some(&core.snapshot()));
    }

    /// A log in format version 6 as that release wrote it (seed `seed`, created at 1): `card`'s
    /// Register, then its vector as `SetModelCardVector` (the only way version 6 had).
    fn version_6_log(seed: u64, card: &crate::core::types::AgentCard, agent_id: &str) -> Vec<u8> {
        use format::v6;
        use std::borrow::Cow;
        let mut header = Header { seed, created_at: 1 }.encode();
        header[8..12].copy_from_slice(&6u32.to_le_bytes());
        let crc = crc32fast::hash(&header[..28]);
        header[28..32].copy_from_slice(&crc.to_le_bytes());
        let mut bytes = header.to_vec();
        let register = v6::LoggedCommand::Register {
            card: v6::Card {
                name: Cow::Borrowed(&card.name),
                description: Cow::Borrowed(&card.description),
                version: Cow::Borrowed(""),
                capabilities: vec![],
                tools: Cow::Borrowed(&card.tools),
                metadata: vec![],
                a2a_card: Cow::Borrowed(""),
            },
            ttl_seconds: 600,
        };
        let vector = v6::LoggedCommand::SetModelCardVector {
            agent_id: Cow::Borrowed(agent_id),
            card_digest: crate::core::search::card_text::card_digest(card).0,
            model: Cow::Borrowed("old-model"),
            vector: Cow::Borrowed(&[3.0, 4.0]),
        };
        for (now, command) in [(10, register), (11, vector)] {
            let record = v6::Record::Apply {
                now,
                command,
                principal: None,
                request: None,
            };
            wal::frame(&mut bytes, |out| out.extend(postcard::to_stdvec(&record).unwrap()));
        }
        bytes
    }

    #[test]
    fn a_version_6_log_replays_unchanged_and_registers_with_vectors_follow_in_version_7() {
        use crate::core::search::card_text::card_digest;
        use crate::core::search::vectors::{CardVector, ModelVector};
        let seed = 6;
        let card = crate::core::types::AgentCard {
            name: "support-bot".into(),
            description: "answers tickets".into(),
            tools: vec!["zendesk".into()],
            ..Default::default()
        };
        let register = Command::Register {
            card: Box::new(card.clone()),
            ttl_seconds: 600,
            vector: None,
        };
        // The id a core of this seed gives the first agent: what version 6's second record names.
        let config = CoreConfig {
            seed,
            ..CoreConfig::default()
        };
        let agent_id = match Core::new(config.clone(), 1).apply(10, register.clone()) {
            Ok(crate::core::Reply::Registered { agent_id }) => agent_id.to_string(),
            other => panic!("{other:?}"),
        };
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("wal-00000000.log");
        let v6_bytes = version_6_log(seed, &card, &agent_id);
        std::fs::write(&old, &v6_bytes).unwrap();

        let (mut store, recovered) = Store::open(dir.path(), 1, 1).unwrap();
        let set_vector = Entry::Apply {
            now: 11,
            command: Command::SetCardVector {
                agent_id: agent_id.clone(),
                card_digest: card_digest(&card),
                vector: ModelVector::new("old-model", [3.0f32, 4.0]),
            },
            principal: None,
        };
        let v6_records = vec![
            Entry::Apply {
                now: 10,
                command: register,
                principal: None,
            },
            set_vector,
        ];
        assert_eq!(recovered.records, v6_records, "version 6's records, read as they were");
        let core = replay(recovered, config.clone());
        assert_eq!(core.card_vector_model(&agent_id).as_deref(), Some("old-model"));
        assert_eq!(version_of(store.log_path()), format::VERSION);
        assert_eq!(store.log_path(), dir.path().join("wal-00000001.log"));
        // A replica's Register with the vector inside, in version 7, beside the version 6 log.
        let replica = Entry::Apply {
            now: 12,
            command: Command::Register {
                card: Box::new(card.clone()),
                ttl_seconds: 600,
                vector: Some(std::sync::Arc::new(CardVector {
                    card_digest: card_digest(&card),
                    vector: ModelVector::new("old-model", [0.0f32, 2.0]),
                })),
            },
            principal: None,
        };
        let mut bytes = Vec::new();
        wal::encode_record(&replica, &mut bytes);
        store.append(&bytes).unwrap();
        drop(store);
        assert_eq!(
            std::fs::read(&old).unwrap(),
            v6_bytes,
            "a version 6 log is never written to"
        );

        let (_store, recovered) = Store::open(dir.path(), 1, 1).unwrap();
        assert_eq!(recovered.records[..2], v6_records[..]);
        assert_eq!(recovered.records[2..], [replica]);
        let core = replay(recovered, config);
        let stats = core.stats();
        assert_eq!((stats.agents_alive, stats.card_vectors), (2, 2));
        assert_eq!(core.card_vector_model(&agent_id).as_deref(), Some("old-model"));
    }
}
