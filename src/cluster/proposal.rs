//! What travels in a consensus entry: the core's input record (versioned, in the store's own
//! format, so replicas of different releases read each other's entries as they read old logs)
//! and the proposal's id, which tells the proposing node whose call the entry answers.
//!
//! Architecture invariant: bytes in, values out, nothing else; a malformed entry is an error to
//! report, never a panic (an entry may come from another release).

use crate::core::entry::Entry;
use crate::store::format;

/// Who proposed an entry: a node, in one incarnation of its process (the epoch is chosen anew
/// at each start, so a restarted node never mistakes an old proposal's commit for a new call's),
/// and the proposal's number in that incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId {
    pub origin: u64,
    pub epoch: u64,
    pub seq: u64,
}

const ID_BYTES: usize = 24;

impl ProposalId {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ID_BYTES);
        out.extend_from_slice(&self.origin.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ProposalId, String> {
        if bytes.len() != ID_BYTES {
            return Err(format!("a proposal id is {ID_BYTES} bytes, this one {}", bytes.len()));
        }
        let word = |i: usize| {
            let mut le = [0u8; 8];
            le.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(le)
        };
        Ok(ProposalId {
            origin: word(0),
            epoch: word(1),
            seq: word(2),
        })
    }
}

/// An entry's bytes: the format version (u32, little-endian), then the record's payload.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut out = format::VERSION.to_le_bytes().to_vec();
    format::encode_entry(entry, &mut out);
    out
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, String> {
    let Some((version, payload)) = bytes.split_first_chunk::<4>() else {
        return Err(format!("an entry of {} bytes has no format version", bytes.len()));
    };
    format::decode_entry(u32::from_le_bytes(*version), payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Command;

    #[test]
    fn an_entry_and_its_proposal_id_come_back_as_they_went() {
        let entry = Entry::Apply {
            now: 1_700_000_000_123,
            command: Command::AcquireLease {
                task_id: "k".into(),
                agent_id: "agent".into(),
                ttl_seconds: 10,
            },
            principal: None,
        };
        assert_eq!(decode_entry(&encode_entry(&entry)), Ok(entry));
        let id = ProposalId {
            origin: 3,
            epoch: u64::MAX,
            seq: 7,
        };
        assert_eq!(ProposalId::decode(&id.encode()), Ok(id));
    }

    #[test]
    fn a_malformed_entry_or_id_is_an_error_not_a_panic() {
        assert!(decode_entry(&[]).is_err());
        assert!(decode_entry(&[2, 0, 0, 0, 0xff, 0xff]).is_err());
        let newer = decode_entry(&[99, 0, 0, 0, 1]).unwrap_err();
        assert!(newer.contains("newer agentkeeper"), "{newer}");
        assert!(ProposalId::decode(&[1, 2, 3]).is_err());
    }
}
