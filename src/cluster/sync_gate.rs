//! The order of a node's outputs against its disk: what the node emitted after a consensus
//! record that owes a sync waits for that sync; what came before it leaves at once (a leader's
//! appends travel while its own disk writes them, as raft-rs allows). One rule for the driver
//! (a real log and fdatasync) and the simulator (a simulated disk that crashes mid-write).
//!
//! Never does IO itself: its caller writes, syncs, and then calls `synced`.

use raft::eraftpb::{HardState, Snapshot};

use super::{NodeOutput, RaftEntry};

/// What to do with one output of the node.
#[derive(Debug)]
pub enum Gated {
    /// Let it leave now (to a peer, a caller, an operator), after what was released before it.
    Release(NodeOutput),
    /// Append these records to the log. Whether they owe a sync the gate keeps: see
    /// [`SyncGate::owes_sync`].
    Append {
        entries: Vec<RaftEntry>,
        hard_state: Option<HardState>,
    },
    /// Rewrite the log whole from this snapshot, entries and hard state, durably; then call
    /// [`SyncGate::synced`] (what was appended and not synced is part of `entries`).
    Replace {
        snapshot: Box<Snapshot>,
        entries: Vec<RaftEntry>,
        hard_state: HardState,
    },
    /// Kept until the next sync: it came after a record that owes one.
    Held,
}

/// Holds a node's outputs that must not leave before the log records ahead of them are durable.
#[derive(Debug, Default)]
pub struct SyncGate {
    held: Vec<NodeOutput>,
    owed: bool,
    /// A planted misuse for the simulator to catch: everything leaves at once, synced or not.
    ignore_syncs: bool,
}

impl SyncGate {
    pub fn new() -> SyncGate {
        SyncGate::default()
    }

    /// A gate that lets every output leave before the records ahead of it are durable: the
    /// consensus misuse the simulator's crashes must catch (an acknowledgement of an entry the
    /// follower then loses).
    pub fn planted_ignoring_syncs() -> SyncGate {
        SyncGate {
            ignore_syncs: true,
            ..SyncGate::default()
        }
    }

    /// Sorts one output of the node, in the order the node emitted them.
    pub fn admit(&mut self, output: NodeOutput) -> Gated {
        match output {
            NodeOutput::Persist {
                entries,
                hard_state,
                sync,
            } => {
                // A hard state that only moved the commit index owes no sync: a commit index
                // lost in a crash is learnt again from the leader.
                self.owed |= sync && !self.ignore_syncs;
                Gated::Append { entries, hard_state }
            }
            NodeOutput::Snapshot {
                snapshot,
                entries,
                hard_state,
            } => Gated::Replace {
                snapshot,
                entries,
                hard_state,
            },
            // Opening or closing the links to changed members answers nobody.
            NodeOutput::Peers(_) => Gated::Release(output),
            other if self.owed => {
                self.held.push(other);
                Gated::Held
            }
            other => Gated::Release(other),
        }
    }

    /// Whether a record appended since the last sync must be durable before what is held leaves.
    pub fn owes_sync(&self) -> bool {
        debug_assert!(self.owed || self.held.is_empty(), "outputs held with no sync owed");
        self.owed
    }

    /// The log is durable up to its last record (synced, or rewritten whole): what was held
    /// leaves now, in the order the node emitted it.
    pub fn synced(&mut self) -> Vec<NodeOutput> {
        self.owed = false;
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Message;

    fn send(to: u64) -> NodeOutput {
        NodeOutput::Send(Box::new(Message {
            to,
            ..Message::default()
        }))
    }

    fn persist(sync: bool) -> NodeOutput {
        NodeOutput::Persist {
            entries: Vec::new(),
            hard_state: Some(HardState::default()),
            sync,
        }
    }

    fn released_to(gated: &Gated) -> Option<u64> {
        match gated {
            Gated::Release(NodeOutput::Send(message)) => Some(message.to),
            _ => None,
        }
    }

    #[test]
    fn what_came_before_a_record_owing_a_sync_leaves_at_once_and_what_came_after_waits_for_it() {
        let mut gate = SyncGate::new();
        assert_eq!(released_to(&gate.admit(send(1))), Some(1));
        assert!(matches!(gate.admit(persist(true)), Gated::Append { .. }));
        assert!(gate.owes_sync());
        assert!(matches!(gate.admit(send(2)), Gated::Held));
        assert!(matches!(gate.admit(send(3)), Gated::Held));
        let held: Vec<u64> = (gate.synced().iter())
            .map(|o| match o {
                NodeOutput::Send(m) => m.to,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(held, vec![2, 3], "held outputs leave in the order they came");
        assert!(!gate.owes_sync());
        assert_eq!(released_to(&gate.admit(send(4))), Some(4));
    }

    #[test]
    fn a_commit_only_hard_state_owes_no_sync_and_holds_nothing_back() {
        let mut gate = SyncGate::new();
        assert!(matches!(gate.admit(persist(false)), Gated::Append { .. }));
        assert!(!gate.owes_sync());
        assert_eq!(released_to(&gate.admit(send(1))), Some(1));
    }

    #[test]
    fn a_rewritten_log_releases_what_waited() {
        let mut gate = SyncGate::new();
        let _ = gate.admit(persist(true));
        assert!(matches!(gate.admit(send(1)), Gated::Held));
        let snapshot = NodeOutput::Snapshot {
            snapshot: Box::default(),
            entries: Vec::new(),
            hard_state: HardState::default(),
        };
        assert!(matches!(gate.admit(snapshot), Gated::Replace { .. }));
        assert_eq!(gate.synced().len(), 1);
        assert!(!gate.owes_sync());
    }

    #[test]
    fn the_planted_gate_holds_nothing() {
        let mut gate = SyncGate::planted_ignoring_syncs();
        let _ = gate.admit(persist(true));
        assert!(!gate.owes_sync());
        assert_eq!(released_to(&gate.admit(send(1))), Some(1));
    }
}
