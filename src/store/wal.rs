//! The write-ahead log's framing: a versioned header, then records of
//! `[payload length u32 LE][crc32 of payload u32 LE][payload: the record in the file's format
//! version]`, and the scan that reads them back, telling a torn tail from damage.
//!
//! Architecture invariant: decoding never trusts a length or a payload before its checksum;
//! damage anywhere but the tail is reported with its offset and record number, never skipped.
//! What a payload means is `format`'s business: the header's version picks its decoder.

use super::format::{self, FileError};
use crate::core::entry::Entry;
use crate::core::types::Millis;

pub const MAGIC: &[u8; 8] = b"AGENTKPR";
pub const HEADER_BYTES: usize = 32;
const RECORD_PREFIX_BYTES: usize = 8;
/// A record's payload at most: the largest command (a 4 MiB task input) with room to spare.
pub const RECORD_BYTES_MAX: usize = 8 * 1024 * 1024;

/// What the log knows about the core it rebuilds: its seed and the time it was created. A log
/// is always written in the current format version; [`Header::version`] tells which one an
/// existing file was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub seed: u64,
    pub created_at: Millis,
}

impl Header {
    /// The header of a new log, in the current format version.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..12].copy_from_slice(&format::VERSION.to_le_bytes());
        bytes[12..20].copy_from_slice(&self.seed.to_le_bytes());
        bytes[20..28].copy_from_slice(&self.created_at.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Reads a log's header, in any format version this release reads.
    pub fn decode(bytes: &[u8]) -> Result<Header, FileError> {
        Header::decode_versioned(bytes).map(|(header, _)| header)
    }

    /// The format version a log was written in (its header checked first).
    pub fn version(bytes: &[u8]) -> Result<u32, FileError> {
        Header::decode_versioned(bytes).map(|(_, version)| version)
    }

    fn decode_versioned(bytes: &[u8]) -> Result<(Header, u32), FileError> {
        if bytes.len() < HEADER_BYTES {
            return Err(FileError::Damaged(format!(
                "the header is {} bytes, expected {HEADER_BYTES}",
                bytes.len()
            )));
        }
        if &bytes[..8] != MAGIC {
            return Err(FileError::Damaged("not an agentkeeper log (bad magic)".to_string()));
        }
        let word = |range: std::ops::Range<usize>| -> [u8; 8] { bytes[range].try_into().expect("8 bytes") };
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(bytes[28..32].try_into().expect("4 bytes"));
        let crc_matches = crc == crc32fast::hash(&bytes[..28]);
        if let Err(refused) = format::check_version("log", version) {
            // A newer release may lay the rest of its header out differently, so the version
            // is named whatever the checksum says; the damage is mentioned when it fails.
            let detail = if crc_matches {
                refused
            } else {
                format!("{refused} (or the header is damaged: its checksum does not match)")
            };
            return Err(FileError::Version(detail));
        }
        if !crc_matches {
            return Err(FileError::Damaged("the header's checksum does not match".to_string()));
        }
        let header = Header {
            seed: u64::from_le_bytes(word(12..20)),
            created_at: u64::from_le_bytes(word(20..28)),
        };
        Ok((header, version))
    }
}

/// Appends one framed record, in the current format version, to `out`.
pub fn encode_record(record: &Entry, out: &mut Vec<u8>) {
    frame(out, |out| format::encode_entry(record, out));
}

/// Appends one frame to `out`: the prefix, then what `write` appends as the payload. The
/// consensus log (`consensus_log.rs`) frames its records the same way.
pub fn frame(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_PREFIX_BYTES]);
    write(out);
    let payload = &out[start + RECORD_PREFIX_BYTES..];
    assert!(
        !payload.is_empty() && payload.len() <= RECORD_BYTES_MAX,
        "record of {} bytes is outside 1..={RECORD_BYTES_MAX}",
        payload.len()
    );
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(payload).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + RECORD_PREFIX_BYTES].copy_from_slice(&crc);
}

/// What a scan of the log's records found.
#[derive(Debug, PartialEq)]
pub struct Scan {
    /// The format version the log was written in.
    pub version: u32,
    pub records: Vec<Entry>,
    /// Bytes of the file (from its start) that hold the header and whole, valid records.
    pub valid_len: u64,
    /// Why the tail after `valid_len` was cut, if it was.
    pub torn: Option<String>,
}

/// Damage in the middle of the log: where, and what.
#[derive(Debug, PartialEq)]
pub struct Damage {
    pub offset: u64,
    pub record: usize,
    pub reason: String,
}

/// Reads every record after the header, each decoded in the header's format version. A bad
/// record at the very end (cut short, or failing its checksum with nothing after it but zeros)
/// is a torn tail; anywhere else it is damage. A bad header is damage at offset 0.
pub fn scan(bytes: &[u8]) -> Result<Scan, Damage> {
    let version = Header::version(bytes).map_err(|reason| Damage {
        offset: 0,
        record: 0,
        reason: format!("header: {reason}"),
    })?;
    let frames = scan_frames(bytes, HEADER_BYTES, |payload| format::decode_entry(version, payload))?;
    Ok(Scan {
        version,
        records: frames.records,
        valid_len: frames.valid_len,
        torn: frames.torn,
    })
}

/// The frames of a file from `start` on, each payload decoded by `decode`.
#[derive(Debug, PartialEq)]
pub struct Frames<T> {
    pub records: Vec<T>,
    /// Bytes of the file (from its start) that hold whole, valid frames.
    pub valid_len: u64,
    /// Why the tail after `valid_len` was cut, if it was.
    pub torn: Option<String>,
}

/// Reads frames from `start` to the end of `bytes`, telling a torn tail (cut) from damage
/// (reported), as `scan` describes.
pub fn scan_frames<T>(
    bytes: &[u8],
    start: usize,
    decode: impl Fn(&[u8]) -> Result<T, String>,
) -> Result<Frames<T>, Damage> {
    let mut records = Vec::new();
    let mut offset = start;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        match read_frame(rest, &decode) {
            Ok((record, used)) => {
                records.push(record);
                offset += used;
            }
            Err((reason, claimed_end)) => {
                let at_tail = claimed_end >= rest.len() || rest[claimed_end.min(rest.len())..].iter().all(|&b| b == 0);
                // A damaged length can point past the end; whole records after the bad spot
                // prove it is damage, not a write the crash cut short.
                let torn = at_tail && !(1..rest.len()).any(|p| read_frame(&rest[p..], &decode).is_ok());
                if !torn {
                    return Err(Damage {
                        offset: offset as u64,
                        record: records.len(),
                        reason,
                    });
                }
                let reason = format!("record {} at offset {offset}: {reason}", records.len());
                return Ok(Frames {
                    records,
                    valid_len: offset as u64,
                    torn: Some(reason),
                });
            }
        }
    }
    Ok(Frames {
        records,
        valid_len: offset as u64,
        torn: None,
    })
}

/// One frame from the front of `bytes`: its decoded payload and the bytes it used, or why it is
/// bad and where it claims to end.
fn read_frame<T>(bytes: &[u8], decode: impl Fn(&[u8]) -> Result<T, String>) -> Result<(T, usize), (String, usize)> {
    if bytes.len() < RECORD_PREFIX_BYTES {
        return Err((
            format!("only {} bytes of a record prefix", bytes.len()),
            RECORD_PREFIX_BYTES,
        ));
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let end = RECORD_PREFIX_BYTES.saturating_add(len);
    if len == 0 || len > RECORD_BYTES_MAX {
        return Err((format!("impossible record length {len}"), end));
    }
    if bytes.len() < end {
        return Err((
            format!(
                "cut short: {} of {len} payload bytes",
                bytes.len() - RECORD_PREFIX_BYTES
            ),
            end,
        ));
    }
    let payload = &bytes[RECORD_PREFIX_BYTES..end];
    if crc32fast::hash(payload) != crc {
        return Err(("checksum mismatch".to_string(), end));
    }
    let record = decode(payload).map_err(|e| (format!("undecodable payload: {e}"), end))?;
    Ok((record, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Command;

    fn log(records: &[Entry]) -> Vec<u8> {
        let mut bytes = Header {
            seed: 7,
            created_at: 1000,
        }
        .encode()
        .to_vec();
        for record in records {
            encode_record(record, &mut bytes);
        }
        bytes
    }

    fn sample() -> Vec<Entry> {
        vec![
            Entry::Apply {
                now: 1,
                command: Command::Heartbeat {
                    agent_id: "a".repeat(32),
                },
                principal: None,
            },
            Entry::Tick { now: 2 },
            Entry::Apply {
                now: 3,
                command: Command::DeletePolicy { id: "p".into() },
                principal: None,
            },
            Entry::Grace { now: 4 },
        ]
    }

    #[test]
    fn header_and_records_round_trip() {
        let bytes = log(&sample());
        assert_eq!(
            Header::decode(&bytes).unwrap(),
            Header {
                seed: 7,
                created_at: 1000
            }
        );
        let scan = scan(&bytes).unwrap();
        assert_eq!(scan.records, sample());
        assert_eq!((scan.valid_len, scan.torn), (bytes.len() as u64, None));
    }

    #[test]
    fn a_log_cut_anywhere_in_its_last_record_is_a_torn_tail() {
        let whole = log(&sample());
        let before_last = log(&sample()[..3]).len();
        for cut in before_last + 1..whole.len() {
            let scan = scan(&whole[..cut]).unwrap_or_else(|d| panic!("cut at {cut} reported as damage: {d:?}"));
            assert_eq!(scan.records, sample()[..3], "cut at {cut}");
            assert_eq!(scan.valid_len, before_last as u64);
            assert!(scan.torn.is_some());
        }
    }

    #[test]
    fn a_zero_filled_tail_is_torn_not_damage() {
        let mut bytes = log(&sample());
        let valid = bytes.len();
        bytes.extend_from_slice(&[0u8; 100]);
        let scan = scan(&bytes).unwrap();
        assert_eq!((scan.records.len(), scan.valid_len), (4, valid as u64));
    }

    #[test]
    fn a_flipped_byte_in_the_middle_is_damage_naming_offset_and_record() {
        let mut bytes = log(&sample());
        let second = log(&sample()[..1]).len();
        bytes[second + 9] ^= 0x40;
        let damage = scan(&bytes).unwrap_err();
        assert_eq!((damage.offset, damage.record), (second as u64, 1));
        assert!(damage.reason.contains("checksum"), "{}", damage.reason);
    }

    #[test]
    fn a_damaged_length_in_the_middle_is_damage_not_a_torn_tail() {
        let mut bytes = log(&sample());
        let second = log(&sample()[..1]).len();
        bytes[second + 2] = 0x7f;
        let damage = scan(&bytes).unwrap_err();
        assert_eq!((damage.offset, damage.record), (second as u64, 1));
    }

    #[test]
    fn a_damaged_header_is_refused() {
        let mut bytes = log(&sample());
        bytes[13] ^= 1;
        assert!(Header::decode(&bytes).unwrap_err().to_string().contains("checksum"));
        assert!(Header::decode(b"NOTALOG!").is_err());
    }
}
