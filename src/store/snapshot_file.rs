//! The snapshot file's framing: `"AKSNAPSH" | format version u32 | payload length u64 |
//! crc32(payload) u32 | payload (the snapshot in that version)`, and its decoder, which tells a
//! file from a newer release (refused) from a torn or damaged one.
//!
//! Architecture invariant: the length and the payload are trusted only after the checksum
//! matches; what the payload means is `format`'s business.

use super::format::{self, FileError};
use crate::core::snapshot::CoreSnapshot;

const MAGIC: &[u8; 8] = b"AKSNAPSH";
const PREFIX_BYTES: usize = 8 + 4 + 8 + 4;

/// Encodes a snapshot file in the current format version.
pub fn encode_snapshot(snapshot: &CoreSnapshot) -> Vec<u8> {
    let payload = format::encode_snapshot(snapshot);
    let mut bytes = Vec::with_capacity(PREFIX_BYTES + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&format::VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    debug_assert_eq!(bytes.len(), PREFIX_BYTES + payload.len());
    bytes
}

/// Decodes a snapshot file in any format version this release reads, checking its magic,
/// version, length and checksum before trusting the payload. Public so that the simulator can
/// recover from the in-memory image of a data dir through the same decoder the daemon uses.
pub fn decode_snapshot(bytes: &[u8]) -> Result<CoreSnapshot, FileError> {
    let damaged = |detail: &str| FileError::Damaged(detail.to_string());
    if bytes.len() < PREFIX_BYTES || &bytes[..8] != MAGIC {
        return Err(damaged("not a snapshot file"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    format::check_version("snapshot", version).map_err(FileError::Version)?;
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let payload = usize::try_from(len)
        .ok()
        .and_then(|len| bytes.get(PREFIX_BYTES..PREFIX_BYTES.checked_add(len)?))
        .ok_or_else(|| damaged("cut short"))?;
    if crc32fast::hash(payload) != crc {
        return Err(damaged("checksum mismatch"));
    }
    if bytes.len() != PREFIX_BYTES + payload.len() {
        return Err(damaged("bytes after the payload"));
    }
    format::decode_snapshot(version, payload).map_err(FileError::Damaged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Core, CoreConfig};

    fn file() -> Vec<u8> {
        encode_snapshot(&Core::new(CoreConfig::default(), 1_000).snapshot())
    }

    #[test]
    fn a_snapshot_round_trips_in_the_current_version() {
        let snapshot = Core::new(CoreConfig::default(), 1_000).snapshot();
        let bytes = encode_snapshot(&snapshot);
        assert_eq!(bytes[8..12], format::VERSION.to_le_bytes());
        assert_eq!(decode_snapshot(&bytes), Ok(snapshot));
    }

    #[test]
    fn a_snapshot_from_a_newer_release_is_refused_naming_both_versions() {
        let mut bytes = file();
        bytes[8..12].copy_from_slice(&(format::VERSION + 1).to_le_bytes());
        let expected = format!(
            "written by a newer agentkeeper (snapshot format version {}); this daemon reads versions 1 to {}: \
             run the newer release",
            format::VERSION + 1,
            format::VERSION
        );
        assert_eq!(decode_snapshot(&bytes), Err(FileError::Version(expected)));
    }

    #[test]
    fn a_cut_or_flipped_snapshot_is_damaged() {
        let whole = file();
        for cut in [0, 10, PREFIX_BYTES, whole.len() - 1] {
            assert!(
                matches!(decode_snapshot(&whole[..cut]), Err(FileError::Damaged(_))),
                "cut at {cut}"
            );
        }
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode_snapshot(&flipped),
            Err(FileError::Damaged("checksum mismatch".into()))
        );
        let mut longer = whole;
        longer.push(0);
        assert!(matches!(decode_snapshot(&longer), Err(FileError::Damaged(_))));
    }
}
