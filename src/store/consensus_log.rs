//! A cluster node's consensus log on disk (`consensus.log` in its data dir): a header naming
//! the node, then raft-rs's entries and hard states as framed records (`wal::frame`), appended
//! in the order the node made them stable and read back into a `LogStore` at start-up, a torn
//! tail cut as the core's log does. With it, the latest snapshot (`consensus.snapshot`): when
//! one is taken or installed, it is written whole first, then the log is rewritten whole with
//! only the entries after the compaction point, so a crash between the two loses nothing.
//!
//! Architecture invariant: the driver syncs what it appended before anything that depends on
//! it leaves the node (`ConsensusLog::sync`); a data dir written for another node id is refused,
//! never adopted. What an entry's payload means is the cluster's business, not this file's.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};

use super::wal::{self, Damage};
use super::{StoreError, create_whole, io_error, lock_dir, truncate};
use crate::cluster::{ClusterIdentity, DiskRecord, LogStore};

pub(super) const FILE: &str = "consensus.log";
const SNAPSHOT_FILE: &str = "consensus.snapshot";
const SNAPSHOT_MAGIC: &[u8; 8] = b"AKCONSSN";
/// This node's incarnation count (see `cluster::ProposalId`): 8 bytes, little-endian.
const EPOCH_FILE: &str = "node.epoch";
/// Which cluster the node belongs to (`cluster::ClusterIdentity`): magic, cluster id, core
/// seed, founding (1 byte), CRC-32 of what precedes it.
const IDENTITY_FILE: &str = "cluster.identity";
const IDENTITY_MAGIC: &[u8; 8] = b"AKCLUSID";
const IDENTITY_BYTES: usize = 8 + 8 + 8 + 1 + 4;
const MAGIC: &[u8; 8] = b"AKCONSLG";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 24;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;

pub struct ConsensusLog {
    node_id: u64,
    file: File,
    path: PathBuf,
    /// Framed records appended since the last sync.
    pending: Vec<u8>,
    _lock: File,
}

fn header(node_id: u64) -> [u8; HEADER_BYTES] {
    let mut bytes = [0u8; HEADER_BYTES];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8..12].copy_from_slice(&VERSION.to_le_bytes());
    bytes[12..20].copy_from_slice(&node_id.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..20]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn check_header(bytes: &[u8], node_id: u64) -> Result<(), String> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err("not an agentkeeper consensus log".into());
    }
    let word = |range: std::ops::Range<usize>| u64::from_le_bytes(bytes[range].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!(
            "consensus log format version {version}; this daemon reads version {VERSION}"
        ));
    }
    if crc32fast::hash(&bytes[..20]) != u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes")) {
        return Err("the header's checksum does not match".into());
    }
    let written_for = word(12..20);
    if written_for != node_id {
        return Err(format!(
            "this data dir belongs to node {written_for}, not node {node_id}: start node {written_for} \
             with it, or give node {node_id} a data dir of its own"
        ));
    }
    Ok(())
}

/// The snapshot file: magic, format version, the payload's length and checksum, then raft-rs's
/// `Snapshot` (metadata and the replicated state) protobuf-encoded.
fn encode_snapshot_file(snapshot: &Snapshot) -> Vec<u8> {
    let payload = snapshot.write_to_bytes().expect("a snapshot always encodes");
    let mut bytes = Vec::with_capacity(24 + payload.len());
    bytes.extend_from_slice(SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

fn decode_snapshot_file(bytes: &[u8]) -> Result<Snapshot, String> {
    if bytes.len() < 24 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err("not an agentkeeper consensus snapshot".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!(
            "consensus snapshot format version {version}; this daemon reads version {VERSION}"
        ));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let payload = &bytes[24..];
    if payload.len() as u64 != len {
        return Err(format!("{} payload bytes where the header says {len}", payload.len()));
    }
    if crc32fast::hash(payload) != u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes")) {
        return Err("the payload's checksum does not match".into());
    }
    Snapshot::parse_from_bytes(payload).map_err(|e| e.to_string())
}

/// The identity kept in `dir`, if any; `Ok(None)` for a data dir that has none yet (new, or
/// written before identities were kept: then `has_log` tells which).
pub fn read_identity(dir: &Path) -> Result<Option<ClusterIdentity>, StoreError> {
    let path = dir.join(IDENTITY_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(StoreError::Io { path, error }),
    };
    let damaged = |detail: &str| StoreError::Damaged {
        path: path.clone(),
        detail: detail.to_string(),
    };
    if bytes.len() != IDENTITY_BYTES || &bytes[..8] != IDENTITY_MAGIC {
        return Err(damaged("not an agentkeeper cluster identity"));
    }
    let body = IDENTITY_BYTES - 4;
    if crc32fast::hash(&bytes[..body]) != u32::from_le_bytes(bytes[body..].try_into().expect("4 bytes")) {
        return Err(damaged("its checksum does not match"));
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Ok(Some(ClusterIdentity {
        cluster_id: word(8),
        core_seed: word(16),
        founding: bytes[24] == 1,
    }))
}

/// Whether `dir` holds a consensus log (a node that ran there before).
pub fn has_log(dir: &Path) -> bool {
    dir.join(FILE).exists()
}

fn decode(payload: &[u8]) -> Result<DiskRecord, String> {
    let (&kind, body) = payload.split_first().ok_or("an empty record")?;
    match kind {
        KIND_ENTRY => Entry::parse_from_bytes(body)
            .map(DiskRecord::Entry)
            .map_err(|e| e.to_string()),
        KIND_HARD_STATE => HardState::parse_from_bytes(body)
            .map(DiskRecord::HardState)
            .map_err(|e| e.to_string()),
        other => Err(format!("unknown record kind {other}")),
    }
}

impl ConsensusLog {
    /// Opens (or creates) node `node_id`'s consensus log in `dir`, locking the dir, and reads
    /// it back as the node's `LogStore` (its voters `voters`).
    pub fn open(dir: &Path, node_id: u64, voters: &[u64]) -> Result<(ConsensusLog, LogStore), StoreError> {
        let lock = lock_dir(dir)?;
        if !super::generations(dir, "wal-", ".log")?.is_empty() {
            return Err(StoreError::Version {
                path: dir.to_path_buf(),
                detail: "this data dir holds a single node's log, not a cluster node's: a single node \
                         does not become a cluster member by a restart; give this node an empty data dir"
                    .into(),
            });
        }
        let path = dir.join(FILE);
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let snapshot = match std::fs::read(&snapshot_path) {
            Ok(bytes) => Some(decode_snapshot_file(&bytes).map_err(|detail| StoreError::Damaged {
                path: snapshot_path.clone(),
                detail,
            })?),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                return Err(StoreError::Io {
                    path: snapshot_path,
                    error,
                });
            }
        };
        if !path.exists() {
            create_whole(dir, &path, &header(node_id))?;
        }
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        let damaged = |detail: String| StoreError::Damaged {
            path: path.clone(),
            detail,
        };
        check_header(&bytes, node_id).map_err(damaged)?;
        let frames = wal::scan_frames(&bytes, HEADER_BYTES, decode)
            .map_err(|d: Damage| damaged(format!("record {} at byte offset {}: {}", d.record, d.offset, d.reason)))?;
        if let Some(torn) = &frames.torn {
            tracing::warn!(path = %path.display(), %torn, "cutting the consensus log's torn tail");
            truncate(&path, frames.valid_len)?;
        }
        let log = LogStore::recover(voters, snapshot, frames.records).map_err(damaged)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        file.seek(SeekFrom::End(0)).map_err(io_error(&path))?;
        Ok((
            ConsensusLog {
                node_id,
                file,
                path,
                pending: Vec::new(),
                _lock: lock,
            },
            log,
        ))
    }

    /// Appends what a node made stable (written at the next `sync`: when that is owed,
    /// `cluster::SyncGate` says).
    pub fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>) {
        for entry in entries {
            wal::frame(&mut self.pending, |out| {
                out.push(KIND_ENTRY);
                entry.write_to_vec(out).expect("an entry always encodes");
            });
        }
        if let Some(hard_state) = hard_state {
            wal::frame(&mut self.pending, |out| {
                out.push(KIND_HARD_STATE);
                hard_state.write_to_vec(out).expect("a hard state always encodes");
            });
        }
    }

    /// Counts this start of the node (1 at its first) and keeps the count, durably, before it
    /// is used: no two incarnations of a node share a number, which proposal ids rely on.
    pub fn next_epoch(&mut self) -> Result<u64, StoreError> {
        let dir = self.path.parent().expect("the log is in its data dir").to_path_buf();
        let path = dir.join(EPOCH_FILE);
        let last = match std::fs::read(&path) {
            Ok(bytes) => u64::from_le_bytes(bytes.as_slice().try_into().map_err(|_| StoreError::Damaged {
                path: path.clone(),
                detail: format!("{} bytes, not 8", bytes.len()),
            })?),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(StoreError::Io { path, error }),
        };
        let epoch = last + 1;
        create_whole(&dir, &path, &epoch.to_le_bytes())?;
        Ok(epoch)
    }

    /// Keeps which cluster this node belongs to, durably (once, at its first start).
    pub fn keep_identity(&self, identity: &ClusterIdentity) -> Result<(), StoreError> {
        let dir = self.path.parent().expect("the log is in its data dir");
        let mut bytes = Vec::with_capacity(IDENTITY_BYTES);
        bytes.extend_from_slice(IDENTITY_MAGIC);
        bytes.extend_from_slice(&identity.cluster_id.to_le_bytes());
        bytes.extend_from_slice(&identity.core_seed.to_le_bytes());
        bytes.push(u8::from(identity.founding));
        bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
        create_whole(dir, &dir.join(IDENTITY_FILE), &bytes)?;
        Ok(())
    }

    /// The bytes appended and not yet synced.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Writes what was appended and makes it durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.file.write_all(&self.pending)?;
            self.file.sync_data()?;
            self.pending.clear();
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the log's contents: the snapshot written whole, then the log rewritten whole
    /// with `entries` (those after the compaction point) and `hard_state`. What was appended
    /// and not synced is part of `entries` already, and dropped.
    pub fn replace(
        &mut self,
        snapshot: &Snapshot,
        entries: &[Entry],
        hard_state: &HardState,
    ) -> Result<(), StoreError> {
        let dir = self.path.parent().expect("the log is in its data dir").to_path_buf();
        create_whole(&dir, &dir.join(SNAPSHOT_FILE), &encode_snapshot_file(snapshot))?;
        self.pending.clear();
        self.pending.extend_from_slice(&header(self.node_id));
        self.append(entries, Some(hard_state));
        let bytes = std::mem::take(&mut self.pending);
        let mut file = create_whole(&dir, &self.path, &bytes)?;
        file.seek(SeekFrom::End(0)).map_err(io_error(&self.path))?;
        self.file = file;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Entry::default()
        }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        }
    }

    #[test]
    fn what_was_synced_comes_back_with_overwritten_suffixes_replaced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, store) = ConsensusLog::open(dir.path(), 2, &[1, 2, 3]).unwrap();
            assert_eq!(store.last_index_held(), 0);
            log.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")], Some(&hard_state(1, 1, 1)));
            // A new leader overwrote entry 2.
            log.append(&[entry(2, 2, b"c")], Some(&hard_state(2, 3, 2)));
            log.sync().unwrap();
            log.append(&[entry(3, 2, b"never synced")], None);
        }
        let (_, store) = ConsensusLog::open(dir.path(), 2, &[1, 2, 3]).unwrap();
        assert_eq!(store.last_index_held(), 2);
        assert_eq!(store.term(2).unwrap(), 2);
        assert_eq!(&store.entries_held()[1].data[..], b"c");
        assert_eq!(*store.hard_state(), hard_state(2, 3, 2));
    }

    #[test]
    fn a_torn_last_record_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let (mut log, _) = ConsensusLog::open(dir.path(), 1, &[1]).unwrap();
            log.append(&[entry(1, 1, b"kept"), entry(2, 1, b"torn")], None);
            log.sync().unwrap();
            log.path().to_path_buf()
        };
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (mut log, store) = ConsensusLog::open(dir.path(), 1, &[1]).unwrap();
        assert_eq!(store.last_index_held(), 1);
        // Appending after the cut works and reads back.
        log.append(&[entry(2, 2, b"again")], None);
        log.sync().unwrap();
        drop(log);
        let (_, store) = ConsensusLog::open(dir.path(), 1, &[1]).unwrap();
        assert_eq!((store.last_index_held(), store.term(2).unwrap()), (2, 2));
    }

    #[test]
    fn a_snapshot_replaces_the_log_and_reads_back_with_what_was_appended_after_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = ConsensusLog::open(dir.path(), 1, &[1, 2, 3]).unwrap();
            log.append(&(1..=6).map(|i| entry(i, 1, b"x")).collect::<Vec<_>>(), None);
            log.sync().unwrap();
            let mut snapshot = Snapshot::default();
            snapshot.mut_metadata().index = 5;
            snapshot.mut_metadata().term = 1;
            snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
            snapshot.data = b"the state at 5".to_vec().into();
            // Kept after the compaction point (3): entries 4 to 6.
            let kept: Vec<Entry> = (4..=6).map(|i| entry(i, 1, b"x")).collect();
            log.append(&[entry(7, 1, b"appended, then replaced")], None);
            log.replace(&snapshot, &kept, &hard_state(1, 1, 5)).unwrap();
            log.append(&[entry(7, 2, b"after")], Some(&hard_state(2, 2, 6)));
            log.sync().unwrap();
        }
        let (_, store) = ConsensusLog::open(dir.path(), 1, &[1, 2, 3]).unwrap();
        assert_eq!(store.snapshot_held().get_metadata().index, 5);
        assert_eq!(&store.snapshot_held().data[..], b"the state at 5");
        assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (6, 7));
        assert_eq!(store.term(7).unwrap(), 2);
        assert_eq!(*store.hard_state(), hard_state(2, 2, 6));
    }

    /// The driver writes a snapshot, then the log after it, each whole: a crash between the two
    /// leaves the old log behind the new snapshot. Found by e2e_cluster under load: a follower
    /// killed right after its first snapshot (index 1) came back with the old log's hard state
    /// (commit 0, the commit-only hard state that said 1 not yet synced), and raft-rs refused
    /// to start ("hs.commit 0 is out of range [1, 1]").
    #[test]
    fn a_crash_between_the_snapshot_and_the_log_after_it_reads_back_a_log_raft_rs_starts_from() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = |index: u64, term: u64| {
            let mut snapshot = Snapshot::default();
            snapshot.mut_metadata().index = index;
            snapshot.mut_metadata().term = term;
            snapshot.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
            snapshot
        };
        {
            let (mut log, _) = ConsensusLog::open(dir.path(), 2, &[1, 2, 3]).unwrap();
            log.append(&[entry(1, 2, b"")], Some(&hard_state(2, 1, 0)));
            log.sync().unwrap();
            // The commit-only hard state, appended without a sync of its own, never written.
            log.append(&[], Some(&hard_state(2, 1, 1)));
        }
        // The snapshot file written whole; the crash came before the log file was replaced.
        create_whole(
            dir.path(),
            &dir.path().join(SNAPSHOT_FILE),
            &encode_snapshot_file(&snapshot(1, 2)),
        )
        .unwrap();
        let (_, store) = ConsensusLog::open(dir.path(), 2, &[1, 2, 3]).unwrap();
        assert_eq!(
            *store.hard_state(),
            hard_state(2, 1, 1),
            "commit moves up to the snapshot's index"
        );
        assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (2, 1));
        let config = raft::Config {
            id: 2,
            ..raft::Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = raft::RawNode::new(&config, store, &logger).expect("raft-rs starts from it");
        assert_eq!((node.raft.term, node.raft.raft_log.committed), (2, 1));

        // A leader's snapshot of a newer term, installed before the hard state of that term was
        // written: the term moves up to the snapshot's, with no vote (none left unsynced).
        create_whole(
            dir.path(),
            &dir.path().join(SNAPSHOT_FILE),
            &encode_snapshot_file(&snapshot(9, 4)),
        )
        .unwrap();
        let (_, store) = ConsensusLog::open(dir.path(), 2, &[1, 2, 3]).unwrap();
        assert_eq!(*store.hard_state(), hard_state(4, 0, 9));
        assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (10, 9));
        raft::RawNode::new(&config, store, &logger).expect("raft-rs starts from it");
    }

    #[test]
    fn a_commit_index_past_the_last_entry_is_a_damaged_log_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = ConsensusLog::open(dir.path(), 1, &[1]).unwrap();
            log.append(&[entry(1, 1, b"a")], Some(&hard_state(1, 1, 7)));
            log.sync().unwrap();
        }
        let err = ConsensusLog::open(dir.path(), 1, &[1])
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("commit index 7 is past the last entry held, 1"), "{err}");
    }

    #[test]
    fn a_damaged_snapshot_stops_the_start_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        drop(ConsensusLog::open(dir.path(), 1, &[1]).unwrap());
        std::fs::write(dir.path().join(SNAPSHOT_FILE), b"AKCONSSN garbage").unwrap();
        let err = ConsensusLog::open(dir.path(), 1, &[1])
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("consensus.snapshot") && err.contains("damaged"), "{err}");
    }

    #[test]
    fn another_nodes_data_dir_is_refused_naming_both_nodes() {
        let dir = tempfile::tempdir().unwrap();
        drop(ConsensusLog::open(dir.path(), 1, &[1, 2, 3]).unwrap());
        let err = ConsensusLog::open(dir.path(), 2, &[1, 2, 3]).err().expect("refused");
        let text = err.to_string();
        assert!(text.contains("belongs to node 1, not node 2"), "{text}");
    }

    #[test]
    fn a_data_dir_is_locked_while_its_node_runs() {
        let dir = tempfile::tempdir().unwrap();
        let _running = ConsensusLog::open(dir.path(), 1, &[1]).unwrap();
        assert!(matches!(
            ConsensusLog::open(dir.path(), 1, &[1]),
            Err(StoreError::Locked { .. })
        ));
    }
}
