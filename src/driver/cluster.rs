//! The engine of a cluster node: consensus and the replicated core (`cluster::Node`), the node's
//! consensus log on disk, and the outboxes to its peers. Writes a node made stable and syncs
//! them before anything after them leaves: a vote, an acknowledgement, a reply.
//!
//! Architecture invariant: nothing leaves the node ahead of the consensus records it emitted
//! before it that owe a sync (raft-rs counts them stable once emitted; `cluster::SyncGate`
//! keeps the order); a log that cannot be synced stops the node. Sending to a peer never
//! blocks: a full outbox drops (consensus retries what matters).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;

use super::Engine;
use super::outlets::Outlets;
use crate::cluster::{Addresses, ClusterView, Gated, MemberChange, Node, NodeInput, NodeOutput, PeerTraffic, SyncGate};
use crate::core::machine::Input;
use crate::core::types::Millis;
use crate::core::{Core, CoreError};
use crate::metrics::Metrics;
use crate::store::consensus_log::ConsensusLog;

/// How a peer's sender task last found the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Link {
    /// Not tried yet, or trying for the first time.
    Connecting = 0,
    Up = 1,
    /// The last attempt failed or the stream broke: what is queued now is dropped unsent.
    Down = 2,
}

/// One peer's way out: the bounded queue its sender task drains onto the network, and how
/// that task last found the connection.
pub struct PeerLink {
    pub queue: mpsc::Sender<PeerTraffic>,
    pub state: Arc<std::sync::atomic::AtomicU8>,
}

/// Opens the way out to peer `id` at `addr` (a sender task on the network's runtime, which
/// ends when the link's queue is dropped).
pub type Connect = Box<dyn Fn(u64, &str) -> PeerLink + Send>;

/// The way out to each peer.
pub struct PeerOutbox {
    me: u64,
    /// Per peer: the address its link goes to, and the link.
    peers: BTreeMap<u64, (String, PeerLink)>,
    connect: Connect,
    /// This node's applied index, for the senders to tell the peers.
    applied: Arc<AtomicU64>,
}

impl PeerOutbox {
    /// Ways out to every member of `addresses` but `me`.
    pub fn new(me: u64, addresses: &Addresses, connect: Connect, applied: Arc<AtomicU64>) -> PeerOutbox {
        let mut outbox = PeerOutbox {
            me,
            peers: BTreeMap::new(),
            connect,
            applied,
        };
        outbox.set_members(addresses);
        outbox
    }

    /// Follows the membership: a way out to each new member, none to a member gone (its
    /// sender ends), a new one to a member whose address changed.
    fn set_members(&mut self, addresses: &Addresses) {
        self.peers.retain(|id, (addr, _)| addresses.get(id) == Some(addr));
        for (&id, addr) in addresses {
            if id != self.me && !addr.is_empty() && !self.peers.contains_key(&id) {
                let link = (self.connect)(id, addr);
                self.peers.insert(id, (addr.clone(), link));
            }
        }
    }

    /// Queues `traffic` for its peer; dropped when the queue is full, the link down or the
    /// peer unknown. Returns a forwarded write surely not sent (its caller may send it again).
    fn send(&self, traffic: PeerTraffic, metrics: &Metrics) -> Option<crate::cluster::Forward> {
        let to = traffic.to();
        let Some((_, peer)) = self.peers.get(&to) else {
            tracing::debug!(to, "no such peer; dropped");
            return None;
        };
        let down = peer.state.load(Ordering::Relaxed) == Link::Down as u8;
        let unsent = match traffic {
            PeerTraffic::Forward(forward) if down => return Some(forward),
            traffic => match peer.queue.try_send(traffic) {
                Ok(()) => return None,
                Err(TrySendError::Full(traffic) | TrySendError::Closed(traffic)) => traffic,
            },
        };
        metrics.cluster_peer_dropped_total.inc();
        match unsent {
            PeerTraffic::Forward(forward) => Some(forward),
            PeerTraffic::Message(_) => None,
        }
    }
}

/// A cluster node as the driver runs it.
pub struct ClusterNode {
    node: Node,
    log: ConsensusLog,
    peers: PeerOutbox,
    /// Outputs waiting for the consensus records before them to be synced.
    gate: SyncGate,
    /// Membership changes waiting for their entry, by ticket.
    tickets: BTreeMap<u64, oneshot::Sender<Result<(), CoreError>>>,
    next_ticket: u64,
    /// Per peer: the applied index it last told this node, and when (this node's clock).
    heard: BTreeMap<u64, (u64, Millis)>,
    /// Said once: this node was removed from the cluster.
    told_removed: bool,
}

impl ClusterNode {
    /// `node` was started from what `log` holds.
    pub fn new(node: Node, log: ConsensusLog, peers: PeerOutbox) -> ClusterNode {
        ClusterNode {
            node,
            log,
            peers,
            gate: SyncGate::new(),
            tickets: BTreeMap::new(),
            next_ticket: 0,
            heard: BTreeMap::new(),
            told_removed: false,
        }
    }

    /// Lets one output leave the node: to a peer, to a caller, to an operator.
    fn release(&mut self, now: Millis, output: NodeOutput, outlets: &mut Outlets, metrics: &Metrics) {
        match output {
            NodeOutput::Send(message) => {
                let _ = self.peers.send(PeerTraffic::Message(message), metrics);
            }
            NodeOutput::Forward(forward) => {
                if let Some(unsent) = self.peers.send(PeerTraffic::Forward(forward), metrics) {
                    self.node.handle(now, NodeInput::ForwardFailed(unsent));
                }
            }
            NodeOutput::Machine(output) => {
                if let Some(input) = outlets.dispatch(output, metrics) {
                    self.node.handle(now, NodeInput::Local(input));
                }
            }
            NodeOutput::MembersChanged { ticket, outcome } => {
                if let Some(reply) = self.tickets.remove(&ticket) {
                    let _ = reply.send(outcome);
                }
            }
            NodeOutput::Peers(addresses) => {
                tracing::info!(?addresses, "the cluster's members changed");
                self.heard.retain(|id, _| addresses.contains_key(id));
                self.peers.set_members(&addresses);
            }
            NodeOutput::Persist { .. } | NodeOutput::Snapshot { .. } => {
                unreachable!("the log's records are the sync gate's, never released")
            }
        }
    }
}

impl Engine for ClusterNode {
    fn core(&self) -> &Core {
        self.node.machine().core()
    }

    fn deadline(&self) -> Option<Millis> {
        Some(self.node.poll_timeout())
    }

    fn handle(&mut self, now: Millis, input: Input) {
        let input = match input {
            Input::Call {
                caller,
                command,
                principal,
            } => NodeInput::Call {
                caller,
                command,
                principal,
            },
            Input::Tick => NodeInput::Tick,
            other => NodeInput::Local(other),
        };
        self.node.handle(now, input);
    }

    fn peer(&mut self, now: Millis, traffic: PeerTraffic) {
        self.node.handle(now, traffic.into());
    }

    fn heard(&mut self, now: Millis, from: u64, applied: u64) {
        let last = self.heard.entry(from).or_insert((0, now));
        *last = (last.0.max(applied), now);
    }

    fn change_members(&mut self, now: Millis, change: MemberChange, reply: oneshot::Sender<Result<(), CoreError>>) {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.tickets.insert(ticket, reply);
        self.node.handle(now, NodeInput::ChangeMembers { ticket, change });
    }

    /// Group commit: the consensus records the node emitted go into one write and one
    /// fdatasync; `SyncGate` says what leaves before it and what waits for it.
    #[allow(clippy::disallowed_methods)] // times the fsync for the latency histogram
    fn flush(&mut self, now: Millis, outlets: &mut Outlets, metrics: &Metrics) -> Result<(), String> {
        loop {
            while let Some(output) = self.node.poll() {
                match self.gate.admit(output) {
                    Gated::Append { entries, hard_state } => self.log.append(&entries, hard_state.as_ref()),
                    Gated::Replace {
                        snapshot,
                        entries,
                        hard_state,
                    } => {
                        outlets.deliver();
                        (self.log.replace(&snapshot, &entries, &hard_state))
                            .map_err(|error| format!("writing a snapshot: {error}"))?;
                        metrics.cluster_snapshots_total.inc();
                        for output in self.gate.synced() {
                            self.release(now, output, outlets, metrics);
                        }
                    }
                    Gated::Release(output) => self.release(now, output, outlets, metrics),
                    Gated::Held => {}
                }
            }
            if !self.gate.owes_sync() {
                return Ok(());
            }
            outlets.deliver();
            let started = Instant::now();
            let bytes = self.log.pending_bytes();
            self.log
                .sync()
                .map_err(|error| format!("{}: {error}", self.log.path().display()))?;
            metrics.observe_sync(bytes, started.elapsed());
            for output in self.gate.synced() {
                self.release(now, output, outlets, metrics);
            }
        }
    }

    fn after_batch(&mut self, metrics: &Arc<Metrics>) {
        if self.node.removed() && !self.told_removed {
            self.told_removed = true;
            tracing::warn!(
                "this node was removed from the cluster: it answers every call FAILED_PRECONDITION; stop it \
                 (its data dir cannot rejoin: a node joins afresh with an empty one)"
            );
        }
        let status = self.node.status();
        self.peers.applied.store(status.applied, Ordering::Relaxed);
        metrics.publish_cluster(&status);
        for answered in self.node.take_answered() {
            metrics.observe_proposal(answered.waited_ms);
        }
        // The simulator follows proposals into the log; here they only must not pile up.
        drop(self.node.take_proposed());
    }

    fn cluster(&self) -> Option<ClusterView> {
        let (mut view, now) = (self.node.view(), self.node.now());
        for member in &mut view.members {
            member.heard = (self.heard.get(&member.id)).map(|(applied, at)| (*applied, now.saturating_sub(*at)));
        }
        Some(view)
    }
}
