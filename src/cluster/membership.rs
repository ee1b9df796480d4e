//! Membership changes: what `ctl cluster add` and `ctl cluster remove` ask for, how it travels
//! in a consensus entry (raft-rs's `ConfChangeV2`, a new member's peer address in its context),
//! whether a committed one may take effect, and the members' addresses a consensus snapshot
//! carries beside the core's state.
//!
//! Architecture invariant: whether a change takes effect is decided from the replicated members
//! alone, at its entry's index, so every replica decides alike; bytes from another release or a
//! damaged snapshot are an error to report, never a panic.

use std::collections::BTreeMap;

use protobuf::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState};

use super::members::{VOTERS_MAX, check_addr};
use crate::core::{CoreError, ErrorCode};

/// The members' peer addresses, by node id (voters and learners alike).
pub type Addresses = BTreeMap<u64, String>;

/// A change an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// A new node joins as a learner (it receives the log but does not vote); the leader
    /// promotes it to a voter once it has caught up.
    Add { id: u64, peer_addr: String },
    /// A member leaves (a leader that is removed steps down).
    Remove { id: u64 },
}

impl MemberChange {
    /// The node the change is about.
    pub fn id(&self) -> u64 {
        match self {
            MemberChange::Add { id, .. } | MemberChange::Remove { id } => *id,
        }
    }

    /// Whether the change may take effect on members `addresses` with configuration `conf`;
    /// the error names what is wrong. The same answer on every replica at the same index.
    pub fn check(&self, addresses: &Addresses, conf: &ConfState) -> Result<(), CoreError> {
        let refused = |code: ErrorCode, message: String| Err(CoreError::new(code, message));
        match self {
            MemberChange::Add { id, peer_addr } => {
                if *id == 0 {
                    return refused(ErrorCode::InvalidArgument, "a node id is a whole number above 0".into());
                }
                if let Err(error) = check_addr(peer_addr) {
                    return refused(
                        ErrorCode::InvalidArgument,
                        format!("peer address {peer_addr:?}: {error}"),
                    );
                }
                if is_member(conf, *id) {
                    return refused(ErrorCode::FailedPrecondition, format!("node {id} is already a member"));
                }
                if let Some((other, _)) = addresses
                    .iter()
                    .find(|(other, addr)| *addr == peer_addr && **other != *id)
                {
                    return refused(
                        ErrorCode::FailedPrecondition,
                        format!("node {other} already has the peer address {peer_addr}"),
                    );
                }
                let members = conf.voters.len() + conf.learners.len();
                if members >= VOTERS_MAX {
                    return refused(
                        ErrorCode::FailedPrecondition,
                        format!("the cluster has {members} members; it has at most {VOTERS_MAX}"),
                    );
                }
                Ok(())
            }
            MemberChange::Remove { id } => {
                if !is_member(conf, *id) {
                    return refused(ErrorCode::NotFound, format!("node {id} is not a member"));
                }
                if conf.voters == [*id] {
                    return refused(
                        ErrorCode::FailedPrecondition,
                        format!("node {id} is the only voter: a cluster cannot remove its last voter"),
                    );
                }
                Ok(())
            }
        }
    }

    /// The consensus entry's change; a new member's peer address rides in its context.
    pub fn to_conf_change(&self) -> ConfChangeV2 {
        match self {
            MemberChange::Add { id, peer_addr } => {
                single(ConfChangeType::AddLearnerNode, *id, peer_addr.as_bytes().to_vec())
            }
            MemberChange::Remove { id } => single(ConfChangeType::RemoveNode, *id, Vec::new()),
        }
    }

    /// The change a committed entry carries, if it is one of ours (a promotion is not: it is
    /// the leader's, never an operator's).
    pub fn from_conf_change(change: &ConfChangeV2) -> Result<Option<MemberChange>, String> {
        let [single] = change.changes.as_slice() else {
            return Err(format!(
                "a membership change of {} steps; ours have one",
                change.changes.len()
            ));
        };
        Ok(match single.get_change_type() {
            ConfChangeType::AddLearnerNode => {
                let peer_addr = String::from_utf8(change.context.to_vec())
                    .map_err(|_| "a new member's peer address is not UTF-8".to_string())?;
                Some(MemberChange::Add {
                    id: single.node_id,
                    peer_addr,
                })
            }
            ConfChangeType::RemoveNode => Some(MemberChange::Remove { id: single.node_id }),
            ConfChangeType::AddNode => None,
        })
    }
}

/// The leader's promotion of a learner that has caught up.
pub fn promotion(id: u64) -> ConfChangeV2 {
    single(ConfChangeType::AddNode, id, Vec::new())
}

/// Whether a committed promotion may take effect: the node is still a learner.
pub fn check_promotion(id: u64, conf: &ConfState) -> Result<(), String> {
    if conf.learners.contains(&id) {
        Ok(())
    } else {
        Err(format!("node {id} is not a learner (any more)"))
    }
}

fn single(change_type: ConfChangeType, node_id: u64, context: Vec<u8>) -> ConfChangeV2 {
    let mut step = ConfChangeSingle::default();
    step.set_change_type(change_type);
    step.node_id = node_id;
    let mut change = ConfChangeV2::default();
    change.set_changes(vec![step].into());
    change.context = context.into();
    change
}

fn is_member(conf: &ConfState, id: u64) -> bool {
    conf.voters.contains(&id) || conf.learners.contains(&id)
}

pub fn encode_conf_change(change: &ConfChangeV2) -> Vec<u8> {
    change.write_to_bytes().expect("a membership change always encodes")
}

pub fn decode_conf_change(bytes: &[u8]) -> Result<ConfChangeV2, String> {
    ConfChangeV2::parse_from_bytes(bytes).map_err(|error| format!("a membership change does not decode: {error}"))
}

/// A consensus snapshot's data: this magic and format version, the members' addresses, then the
/// core's snapshot (the store's versioned encoding). Data without the magic is a bare core
/// snapshot, as the first cluster release wrote it.
const SNAPSHOT_MAGIC: &[u8; 8] = b"AKCLSNAP";
const SNAPSHOT_VERSION: u32 = 1;

pub fn encode_snapshot_data(addresses: &Addresses, core: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + core.len() + 32 * addresses.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&(addresses.len() as u32).to_le_bytes());
    for (id, addr) in addresses {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(addr.len() as u32).to_le_bytes());
        out.extend_from_slice(addr.as_bytes());
    }
    out.extend_from_slice(core);
    out
}

/// The members' addresses (None: a bare core snapshot, which names none) and the core's bytes.
pub fn decode_snapshot_data(data: &[u8]) -> Result<(Option<Addresses>, &[u8]), String> {
    let Some(rest) = data.strip_prefix(SNAPSHOT_MAGIC) else {
        return Ok((None, data));
    };
    let mut rest = rest;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err("the snapshot's member list is cut short".into());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let word = |bytes: &[u8]| u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
    let version = word(take(4)?);
    if version != SNAPSHOT_VERSION {
        return Err(format!(
            "cluster snapshot format version {version}; this daemon reads version {SNAPSHOT_VERSION} \
             (a newer agentkeeper wrote it?)"
        ));
    }
    let count = word(take(4)?) as usize;
    if count > 64 {
        return Err(format!("the snapshot names {count} members"));
    }
    let mut addresses = Addresses::new();
    for _ in 0..count {
        let id = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let len = word(take(4)?) as usize;
        let addr = String::from_utf8(take(len)?.to_vec()).map_err(|_| "a member's address is not UTF-8".to_string())?;
        addresses.insert(id, addr);
    }
    Ok((Some(addresses), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        }
    }

    fn addresses(ids: &[u64]) -> Addresses {
        ids.iter().map(|id| (*id, format!("h{id}:7071"))).collect()
    }

    #[test]
    fn a_change_travels_in_a_conf_change_and_comes_back_as_it_went() {
        for change in [
            MemberChange::Add {
                id: 4,
                peer_addr: "10.0.0.4:7071".into(),
            },
            MemberChange::Remove { id: 2 },
        ] {
            let bytes = encode_conf_change(&change.to_conf_change());
            let back = MemberChange::from_conf_change(&decode_conf_change(&bytes).unwrap()).unwrap();
            assert_eq!(back, Some(change));
        }
        assert_eq!(MemberChange::from_conf_change(&promotion(4)).unwrap(), None);
        assert!(decode_conf_change(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn a_change_that_cannot_work_is_refused_with_its_reason_and_code() {
        let members = addresses(&[1, 2, 3]);
        let three = conf(&[1, 2, 3], &[]);
        let add = |id: u64, addr: &str| MemberChange::Add {
            id,
            peer_addr: addr.into(),
        };
        assert!(add(4, "h4:7071").check(&members, &three).is_ok());
        let code = |result: Result<(), CoreError>| result.unwrap_err().code;
        assert_eq!(
            code(add(2, "h9:7071").check(&members, &three)),
            ErrorCode::FailedPrecondition
        );
        assert_eq!(
            code(add(4, "h2:7071").check(&members, &three)),
            ErrorCode::FailedPrecondition
        );
        assert_eq!(
            code(add(4, "nohost").check(&members, &three)),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(add(0, "h4:7071").check(&members, &three)),
            ErrorCode::InvalidArgument
        );
        let seven = conf(&[1, 2, 3, 4, 5], &[6, 7]);
        assert_eq!(
            code(add(8, "h8:7071").check(&addresses(&[1, 2, 3, 4, 5, 6, 7]), &seven)),
            ErrorCode::FailedPrecondition
        );
        let remove = |id: u64| MemberChange::Remove { id };
        assert!(remove(2).check(&members, &three).is_ok());
        assert_eq!(code(remove(9).check(&members, &three)), ErrorCode::NotFound);
        assert_eq!(
            code(remove(1).check(&addresses(&[1]), &conf(&[1], &[]))),
            ErrorCode::FailedPrecondition
        );
        assert!(check_promotion(4, &conf(&[1, 2, 3], &[4])).is_ok());
        assert!(check_promotion(4, &conf(&[1, 2, 3, 4], &[])).is_err());
    }

    #[test]
    fn snapshot_data_carries_the_members_and_a_bare_core_snapshot_still_reads() {
        let members = addresses(&[1, 2, 7]);
        let data = encode_snapshot_data(&members, b"core bytes");
        let (back, core) = decode_snapshot_data(&data).unwrap();
        assert_eq!(back, Some(members));
        assert_eq!(core, b"core bytes");
        let (none, bare) = decode_snapshot_data(b"AKSNAP.. an older snapshot").unwrap();
        assert_eq!(none, None);
        assert_eq!(bare, b"AKSNAP.. an older snapshot");
        assert!(decode_snapshot_data(&data[..20]).is_err());
        let mut newer = data.clone();
        newer[8] = 9;
        assert!(decode_snapshot_data(&newer).unwrap_err().contains("version 9"));
    }
}
