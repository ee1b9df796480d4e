//! The format versions of the data dir's payloads: which versions this release reads and writes,
//! and the payload codecs for each (a log record, a snapshot), behind one version dispatch.
//! Framing (headers, lengths, checksums) is `wal.rs`'s and `snapshot_file.rs`'s business.
//!
//! Architecture invariant: a release writes only [`VERSION`] and reads every version from
//! [`VERSION_OLDEST`] on, forever: an old version's types are frozen in their own file
//! (`v1.rs` to `v6.rs`), decode-only, and upgrade into the next version's. A version newer than this
//! release is refused with a message that names both, never guessed at. The core never sees a
//! byte: `convert.rs` maps today's core values to and from the current version's types.

mod convert;
#[cfg(test)]
mod golden;
pub mod v1;
pub mod v2;
pub mod v3;
pub mod v4;
pub mod v5;
pub mod v6;
pub mod v7;

use crate::core::entry::Entry;
use crate::core::snapshot::CoreSnapshot;

/// The version this release writes, in every log header and snapshot prefix.
pub const VERSION: u32 = 7;
/// The oldest version this release reads.
pub const VERSION_OLDEST: u32 = 1;

/// Why a file's header (a log's header, a snapshot's prefix) or payload is not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileError {
    /// Written in a format version this release does not read (a downgrade): the file is fine
    /// and must never be passed over or cut; the daemon refuses to start.
    Version(String),
    /// Not such a file, cut short, failing a checksum, or undecodable.
    Damaged(String),
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Version(detail) | FileError::Damaged(detail) => f.write_str(detail),
        }
    }
}

/// Whether this release reads `version`; the error says why not, naming the file's version and
/// the range read here. `what` names the file's kind ("log", "snapshot").
pub fn check_version(what: &str, version: u32) -> Result<(), String> {
    if version > VERSION {
        return Err(format!(
            "written by a newer agentkeeper ({what} format version {version}); this daemon reads \
             versions {VERSION_OLDEST} to {VERSION}: run the newer release"
        ));
    }
    if version < VERSION_OLDEST {
        return Err(format!(
            "{what} format version {version} was never written by agentkeeper; this daemon reads \
             versions {VERSION_OLDEST} to {VERSION}"
        ));
    }
    Ok(())
}

/// Appends the current version's encoding of `entry` (a record's payload) to `out`.
pub fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    let record = convert::record(entry);
    // A Vec grows as needed: postcard cannot fail to write into one.
    let written = postcard::to_io(&record, out);
    assert!(written.is_ok(), "a record always encodes: {written:?}");
}

/// Decodes a record's payload written in `version`.
pub fn decode_entry(version: u32, payload: &[u8]) -> Result<Entry, String> {
    check_version("log", version)?;
    let record = match version {
        1 => v7::upgrade_record(v6::upgrade_record(v5::upgrade_record(v4::upgrade_record(
            v2::upgrade_record(v1::upgrade_record(from_whole(payload)?)?),
        )))),
        2 => v7::upgrade_record(v6::upgrade_record(v5::upgrade_record(v4::upgrade_record(
            v2::upgrade_record(from_whole(payload)?),
        )))),
        3 => v7::upgrade_record(v6::upgrade_record(v5::upgrade_record(v4::upgrade_record(from_whole(
            payload,
        )?)))),
        4 => v7::upgrade_record(v6::upgrade_record(v5::upgrade_record(from_whole(payload)?))),
        5 => v7::upgrade_record(v6::upgrade_record(from_whole(payload)?)),
        6 => v7::upgrade_record(from_whole(payload)?),
        7 => from_whole::<v7::Record>(payload)?,
        other => unreachable!("check_version let version {other} through"),
    };
    Ok(convert::entry(record))
}

/// The current version's encoding of `snapshot` (a snapshot file's payload).
pub fn encode_snapshot(snapshot: &CoreSnapshot) -> Vec<u8> {
    postcard::to_stdvec(&convert::snapshot(snapshot)).expect("a snapshot always encodes")
}

/// Decodes a snapshot's payload written in `version`.
pub fn decode_snapshot(version: u32, payload: &[u8]) -> Result<CoreSnapshot, String> {
    check_version("snapshot", version)?;
    let snapshot = match version {
        1 => v6::upgrade_snapshot(v5::upgrade_snapshot(v4::upgrade_snapshot(v2::upgrade_snapshot(
            v1::upgrade_snapshot(from_whole(payload)?),
        )))),
        2 => v6::upgrade_snapshot(v5::upgrade_snapshot(v4::upgrade_snapshot(v2::upgrade_snapshot(
            from_whole(payload)?,
        )))),
        3 => v6::upgrade_snapshot(v5::upgrade_snapshot(v4::upgrade_snapshot(from_whole(payload)?))),
        4 => v6::upgrade_snapshot(v5::upgrade_snapshot(from_whole(payload)?)),
        5 => v6::upgrade_snapshot(from_whole(payload)?),
        // Version 7 changed the log's Register only: its snapshot is version 6's.
        6 | 7 => from_whole::<v7::Snapshot>(payload)?,
        other => unreachable!("check_version let version {other} through"),
    };
    Ok(convert::core_snapshot(snapshot))
}

/// Decodes a value that must fill `payload` exactly: bytes left over mean the payload is not
/// what its version says it is, which must not pass silently.
fn from_whole<'de, T: serde::Deserialize<'de>>(payload: &'de [u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes(payload).map_err(|e| format!("undecodable: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes left over after the value", rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_version_is_refused_naming_both_versions() {
        let error = check_version("log", VERSION + 1).unwrap_err();
        assert_eq!(
            error,
            format!(
                "written by a newer agentkeeper (log format version {}); this daemon reads versions 1 to {VERSION}: run the newer release",
                VERSION + 1
            )
        );
        assert!(
            decode_entry(VERSION + 1, &[2, 0])
                .unwrap_err()
                .contains("newer agentkeeper")
        );
        assert!(check_version("snapshot", 0).unwrap_err().contains("never written"));
        for version in VERSION_OLDEST..=VERSION {
            assert_eq!(check_version("log", version), Ok(()));
        }
    }

    #[test]
    fn a_version_1_read_in_a_log_is_refused() {
        // Apply, now 5, then Command 3 (GetAgent) with agent_id "a"; and 26 (ListElections).
        let get_agent = decode_entry(1, &[0, 5, 3, 1, b'a']).unwrap_err();
        assert!(
            get_agent.contains("a read-only command in the log: GetAgent"),
            "{get_agent}"
        );
        assert!(decode_entry(1, &[0, 5, 26]).unwrap_err().contains("ListElections"));
        assert!(decode_entry(1, &[0, 5, 28]).is_err(), "there were 28 commands");
        assert_eq!(decode_entry(1, &[1, 5]), Ok(Entry::Tick { now: 5 }));
    }

    #[test]
    fn bytes_left_after_a_record_are_refused() {
        let mut payload = Vec::new();
        encode_entry(&Entry::Tick { now: 5 }, &mut payload);
        assert_eq!(decode_entry(VERSION, &payload), Ok(Entry::Tick { now: 5 }));
        payload.push(0);
        assert!(decode_entry(VERSION, &payload).unwrap_err().contains("left over"));
    }
}
