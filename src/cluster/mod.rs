//! A cluster node, sans-IO: one raft-rs `RawNode` (consensus) and one replicated `Machine` (the
//! core) stepped together by one thread. The leader stamps each write with its own clock and
//! proposes it (a follower forwards its callers' writes to the leader, and answers them when it
//! applies their entry); every replica applies what is committed, in log order; reads wait for
//! a ReadIndex to be applied, so they are linearizable on any node.
//!
//! Architecture invariant: nothing changes the core but a committed entry, and every replica
//! applies the same entries at the same indexes. No clock, socket, file or OS randomness here:
//! time and an RNG seed are handed in, and raft-rs's one hidden randomness (its election
//! timeout's `thread_rng` draw) is overwritten from our seeded RNG before any tick can read it.

pub mod log_store;
pub mod members;
pub mod membership;
pub mod proposal;
pub mod sync_gate;

use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::{ConfChangeV2, EntryType};
use raft::{RawNode, ReadOnlyOption, Storage};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::core::entry::Entry;
use crate::core::machine::{CallerId, Input, Machine, Output};
use crate::core::types::{Millis, TokenId};
use crate::core::{Command, Core, CoreConfig, CoreError, ErrorCode};

pub use log_store::{DiskRecord, LogStore};
pub use members::{ClusterIdentity, InitialCluster};
pub use membership::{Addresses, MemberChange};
pub use proposal::ProposalId;
/// The consensus types a driver touches, from the one raft-rs this crate builds with.
pub use raft::StateRole;
pub use raft::eraftpb::{Entry as RaftEntry, HardState, Message, Snapshot};
pub use sync_gate::{Gated, SyncGate};

/// Deliberate consensus misuses, for proving the simulator's checks catch one. Never set
/// outside the simulator's tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterPlanted {
    #[default]
    None,
    /// Apply entries as soon as they are appended, before they are committed.
    ApplyBeforeCommit,
    /// Propose a forwarded write each time it arrives (a doubled message commits it twice).
    ForwardTwice,
    /// Answer reads from the local state at once, without a ReadIndex (stale on a deposed
    /// leader or a lagging follower).
    StaleReads,
    /// Let every output leave before the consensus records ahead of it are durable (the
    /// driver's `SyncGate` planted to ignore syncs: an acknowledgement of an entry a crash
    /// then loses). The node itself runs as ever.
    IgnoreSyncs,
}

/// A node's settings; everything but `id` and `epoch` is the same on every node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    /// The voters the cluster starts with (none: this node joins a running cluster, which
    /// sends it a snapshot).
    pub voters: Vec<u64>,
    /// The members' peer addresses as this node starts (its snapshot's, once it has one).
    pub members: Addresses,
    /// This incarnation of the node's process, unique among its restarts (see `ProposalId`).
    pub epoch: u64,
    /// Seeds the election jitter (a node's own; the core's seed is in `core`).
    pub seed: u64,
    /// One consensus tick.
    pub tick_ms: u64,
    /// A follower that hears no leader for this many ticks (plus jitter) campaigns.
    pub election_ticks: usize,
    /// A leader's heartbeat interval, in ticks.
    pub heartbeat_ticks: usize,
    /// A proposal or a read not answered by then is answered UNAVAILABLE (its outcome unknown).
    pub request_timeout_ms: Millis,
    /// What a new leader grants every live lease and agent whose deadline is near: at most
    /// this, at most its TTL (`Core::failover_grace`). The same on every node.
    pub failover_grace_ms: Millis,
    /// The replicated core's settings (its seed included): the same on every node.
    pub core: CoreConfig,
    /// The cluster's creation time: the replicated core's clock starts there on every node.
    pub created_at: Millis,
    /// A snapshot of the replicated state is taken after this many applied entries, and the
    /// log compacted behind it.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot: a follower lagging by fewer catches up from entries.
    pub snapshot_keep: u64,
    /// Keep every entry applied for `take_applied` (the simulator's checks see each one, even
    /// those compacted away within a step); off in the daemon.
    pub observe_applied: bool,
    pub planted: ClusterPlanted,
}

impl NodeConfig {
    /// Settings a cluster of `voters` runs with by default, for node `id`.
    pub fn new(id: u64, voters: Vec<u64>, core: CoreConfig, created_at: Millis) -> NodeConfig {
        NodeConfig {
            id,
            members: voters.iter().map(|id| (*id, String::new())).collect(),
            voters,
            epoch: 0,
            seed: 0,
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            request_timeout_ms: 5_000,
            // Two election timeouts: about what a failover takes.
            failover_grace_ms: 2_000,
            core,
            created_at,
            snapshot_every: 10_000,
            snapshot_keep: 1_000,
            observe_applied: false,
            planted: ClusterPlanted::None,
        }
    }
}

/// Everything that can happen to a node.
#[derive(Debug)]
pub enum NodeInput {
    /// A client's command (a write goes through consensus, a read through a ReadIndex).
    Call {
        caller: CallerId,
        command: Command,
        principal: Option<TokenId>,
    },
    /// A consensus message from a peer.
    Peer(Box<Message>),
    /// A write a follower forwarded to this node, as leader.
    Forwarded(Forward),
    /// A write this node forwarded surely never left it (the leader was unreachable, or its
    /// queue full): its caller is told so, and may send it again.
    ForwardFailed(Forward),
    /// An operator's membership change; answered by `NodeOutput::MembersChanged` with the
    /// same ticket once its entry is applied here (or refused).
    ChangeMembers { ticket: u64, change: MemberChange },
    /// Time passed (the driver comes at `poll_timeout()`).
    Tick,
    /// What a single node's machine takes as well: a hang-up, an undelivered reply, a gone
    /// subscriber, shutdown.
    Local(Input),
}

/// One thing for the driver to do.
#[must_use = "an output is a duty of the driver"]
#[derive(Debug)]
pub enum NodeOutput {
    /// Make these consensus records durable (`store::consensus_log`) before any output after
    /// this one leaves the node: raft-rs counts them stable from now on. Unless `sync` is false:
    /// then only the commit index moved (raft-rs's `must_sync()`), the record may be written
    /// lazily, and nothing waits for it. What came before a `Persist` may leave at once (a
    /// leader's appends go out while its own disk writes them, as raft-rs allows).
    Persist {
        entries: Vec<RaftEntry>,
        hard_state: Option<HardState>,
        sync: bool,
    },
    /// Replace what the consensus log holds with this: the snapshot, the entries after it that
    /// are kept, and the hard state (a snapshot this node took, or one its leader sent). Later
    /// `Persist` outputs append to it.
    Snapshot {
        snapshot: Box<Snapshot>,
        entries: Vec<RaftEntry>,
        hard_state: HardState,
    },
    /// Send a consensus message to peer `msg.to` (best effort: consensus copes with losses).
    Send(Box<Message>),
    /// Hand a caller's write to the leader, peer `forward.to` (best effort: a lost one times
    /// out UNAVAILABLE here).
    Forward(Forward),
    /// A reply, a park, a delivery or a stream's end, as a single node's machine hands them.
    Machine(Output),
    /// The outcome of `NodeInput::ChangeMembers` with this ticket.
    MembersChanged {
        ticket: u64,
        outcome: Result<(), CoreError>,
    },
    /// The members and their peer addresses changed (a member added or removed, a snapshot
    /// installed): the driver opens or closes its ways to them.
    Peers(Addresses),
}

/// A write on its way from a follower to the leader: the leader stamps it with its own clock and
/// proposes it under the follower's proposal id, so the follower answers its caller when the
/// entry is applied there.
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    pub to: u64,
    pub id: ProposalId,
    pub payload: Forwarded,
}

/// What a follower hands its leader.
#[derive(Clone, Debug, PartialEq)]
pub enum Forwarded {
    /// `proposal::encode_entry` of an `Entry::Apply` (its time is the leader's to set).
    Write(Vec<u8>),
    /// An operator's membership change.
    Members(MemberChange),
}

/// What a node knows of the cluster, for status pages and checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub term: u64,
    pub role: StateRole,
    /// The leader this node knows of (0: none).
    pub leader: u64,
    pub commit: u64,
    pub applied: u64,
}

/// One member of the cluster as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub id: u64,
    /// Its peer address, as the replicated membership has it.
    pub peer_addr: String,
    /// A voter (false: a learner, catching up before it votes).
    pub voter: bool,
    /// The last index the leader knows the member holds: known on the leader only.
    pub matched: Option<u64>,
    /// The applied index the member last reported to this node, and how many ms ago (the
    /// driver fills it in; None: never heard from, or this node itself).
    pub heard: Option<(u64, Millis)>,
}

/// The cluster as one node sees it: its own status and the members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    pub status: NodeStatus,
    pub members: Vec<MemberView>,
}

/// What one node sends another: consensus messages, and writes forwarded to the leader.
#[derive(Debug)]
pub enum PeerTraffic {
    Message(Box<Message>),
    Forward(Forward),
}

impl PeerTraffic {
    /// The node this goes to.
    pub fn to(&self) -> u64 {
        match self {
            PeerTraffic::Message(message) => message.to,
            PeerTraffic::Forward(forward) => forward.to,
        }
    }
}

impl From<PeerTraffic> for NodeInput {
    fn from(traffic: PeerTraffic) -> NodeInput {
        match traffic {
            PeerTraffic::Message(message) => NodeInput::Peer(message),
            PeerTraffic::Forward(forward) => NodeInput::Forwarded(forward),
        }
    }
}

/// A call answered by a committed entry: which entry (for the simulator's checks that nothing
/// acknowledged is lost, and for proposal latency).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answered {
    pub caller: CallerId,
    pub index: u64,
    pub term: u64,
    /// From the write's proposal (or forward) here to its entry applied here.
    pub waited_ms: Millis,
}

/// Who waits for a proposal's entry to be applied.
#[derive(Clone, Copy, Debug)]
enum Waiter {
    Call(CallerId),
    /// An operator's membership change (`NodeInput::ChangeMembers`).
    Members(u64),
}

struct Pending {
    caller: Option<Waiter>,
    /// When it was proposed or forwarded (for the proposal latency).
    proposed_at: Millis,
    deadline: Millis,
    /// The leader a follower forwarded the write to.
    forwarded_to: Option<u64>,
}

/// A call that came while this node knew no leader: handled once one is known, or answered
/// UNAVAILABLE at its deadline.
struct Waiting {
    caller: CallerId,
    command: Command,
    principal: Option<TokenId>,
    deadline: Millis,
}

struct PendingRead {
    caller: CallerId,
    command: Command,
    principal: Option<TokenId>,
    deadline: Millis,
    /// The ReadIndex request it waits on (None: not asked yet).
    asked: Option<u64>,
    /// The commit index the read must see applied, once consensus confirmed it.
    index: Option<u64>,
}

pub struct Node {
    config: NodeConfig,
    raw: RawNode<LogStore>,
    machine: Machine,
    rng: ChaCha8Rng,
    now: Millis,
    next_tick_at: Millis,
    next_seq: u64,
    /// Proposals of this incarnation not yet seen committed.
    proposals: BTreeMap<u64, Pending>,
    reads: BTreeMap<u64, PendingRead>,
    /// Reads came that no ReadIndex request covers yet: the next `poll` asks one for them all
    /// (one consensus round per batch of reads, not per read).
    reads_unasked: bool,
    /// The tick proposal in flight, if any: one at a time.
    tick_in_flight: Option<u64>,
    /// (term, role) when last looked at: a new leader proposes its grace.
    seen: (u64, StateRole),
    /// The leader when last looked at: a change re-routes what waited on the old one.
    seen_leader: u64,
    /// Calls that came while no leader was known, in order.
    waiting: VecDeque<Waiting>,
    applied: u64,
    /// The index of the latest snapshot (taken here or installed).
    snapshot_at: u64,
    /// Snapshots taken here and installed from a leader, since this node started.
    snapshots: (u64, u64),
    /// With `observe_applied`: the entries applied since the last `take_applied`.
    applied_entries: Vec<RaftEntry>,
    /// Peers sent a snapshot in the ready being handled.
    snapshots_sent: Vec<u64>,
    outbox: VecDeque<NodeOutput>,
    /// Calls answered by committed entries since the driver last took them.
    answered: Vec<Answered>,
    /// Callers' writes proposed or forwarded since the driver last took them, with the id
    /// each got (a call that waited for a leader gets its id later than its call).
    proposed: Vec<(CallerId, ProposalId)>,
    /// Forwarded proposals this node proposed as leader, by origin and epoch, newest last: a
    /// forward that arrives twice is proposed once.
    forwarded: BTreeMap<(u64, u64), VecDeque<u64>>,
    /// The members' peer addresses, replicated: changed by committed membership changes and
    /// installed snapshots only.
    members: Addresses,
    /// This node was removed from the cluster: it serves nothing more.
    removed: bool,
    /// A member was added: a snapshot is taken now, whose configuration names it (raft-rs on
    /// the new node refuses a snapshot from before it was added).
    snapshot_now: bool,
}

/// Forwarded proposal numbers remembered per origin incarnation.
const FORWARDED_REMEMBERED: usize = 4096;

/// The replicated state a consensus snapshot carries: the members' addresses (None from a
/// release that kept none) and the core's state (the store's snapshot encoding: versioned and
/// checksummed, so releases read each other's).
fn snapshot_state(snapshot: &Snapshot) -> Result<(Option<Addresses>, crate::core::snapshot::CoreSnapshot), String> {
    let index = snapshot.get_metadata().index;
    let (addresses, core) = membership::decode_snapshot_data(&snapshot.data)
        .map_err(|error| format!("the consensus snapshot at index {index}: {error}"))?;
    let state = crate::store::decode_snapshot(core)
        .map_err(|error| format!("the consensus snapshot at index {index} does not decode: {error:?}"))?;
    Ok((addresses, state))
}

/// A learner this close to the leader's commit index (in entries) is promoted to a voter.
const PROMOTE_LAG_MAX: u64 = 64;

/// Removes and returns, in order, the entries of `map` that `pick` picks.
fn take_where<T>(map: &mut BTreeMap<u64, T>, pick: impl Fn(&T) -> bool) -> Vec<(u64, T)> {
    let picked: Vec<u64> = map.iter().filter(|(_, v)| pick(v)).map(|(k, _)| *k).collect();
    picked
        .into_iter()
        .map(|k| (k, map.remove(&k).expect("picked from the map")))
        .collect()
}

/// How many consensus ticks one input may run at most (a long pause is not replayed tick by
/// tick: an election timeout's worth shows the same).
const TICKS_PER_INPUT_MAX: u64 = 64;

impl Node {
    /// Starts node `config.id` from its consensus log (new or kept across a restart): the core
    /// is rebuilt by applying the committed entries again.
    pub fn new(config: NodeConfig, log: LogStore, now: Millis) -> Result<Node, String> {
        let election = config.election_ticks;
        let raft_config = raft::Config {
            id: config.id,
            election_tick: election,
            heartbeat_tick: config.heartbeat_ticks,
            // raft-rs draws in [min, max) at every reset; `redraw` overwrites that draw.
            min_election_tick: election,
            max_election_tick: 2 * election,
            check_quorum: true,
            pre_vote: true,
            read_only_option: ReadOnlyOption::Safe,
            max_size_per_msg: 1 << 20,
            // Two appends in flight per follower at most: what the leader appends while they
            // are out goes in the next one, together (up to `max_size_per_msg`), so under load a
            // follower gets an append per disk sync or two instead of one per leader batch. On
            // 3 local nodes (BENCHMARKS.md, "Two appends in flight") SetPolicy at 4x64 went from
            // 47k to 73k writes/s and a follower from 8 to 4 µs of CPU per write, with lower p50
            // and p99 at every load tried. One would do as well under load, but a commit the
            // leader learns while a follower's only slot is taken reaches that follower a round
            // trip later (a leader that applies its own removal at once never sends it at all).
            // A lost append holds its slot until the next heartbeat's answer (raft-rs).
            max_inflight_msgs: 2,
            applied: log.snapshot_held().get_metadata().index,
            ..raft::Config::default()
        };
        raft_config.validate().map_err(|e| format!("consensus settings: {e}"))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let snapshot = log.snapshot_held().clone();
        let raw = RawNode::new(&raft_config, log, &logger).map_err(|e| format!("consensus: {e}"))?;
        let applied = snapshot.get_metadata().index;
        let (members, core) = match applied {
            0 => (
                config.members.clone(),
                Core::new(config.core.clone(), config.created_at),
            ),
            _ => {
                let (addresses, state) = snapshot_state(&snapshot)?;
                let members = addresses.unwrap_or_else(|| config.members.clone());
                (members, Core::restore(config.core.clone(), state))
            }
        };
        let rng = ChaCha8Rng::seed_from_u64(config.seed ^ config.id.rotate_left(32) ^ config.epoch);
        let mut node = Node {
            seen: (raw.raft.term, raw.raft.state),
            seen_leader: raw.raft.leader_id,
            waiting: VecDeque::new(),
            raw,
            machine: Machine::replicated(core, config.failover_grace_ms),
            rng,
            now,
            next_tick_at: now,
            next_seq: 0,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            reads_unasked: false,
            tick_in_flight: None,
            applied,
            snapshot_at: applied,
            snapshots: (0, 0),
            applied_entries: Vec::new(),
            snapshots_sent: Vec::new(),
            outbox: VecDeque::new(),
            answered: Vec::new(),
            forwarded: BTreeMap::new(),
            proposed: Vec::new(),
            members,
            removed: false,
            snapshot_now: false,
            config,
        };
        node.redraw();
        node.process_ready();
        Ok(node)
    }

    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            id: self.config.id,
            term: self.raw.raft.term,
            role: self.raw.raft.state,
            leader: self.raw.raft.leader_id,
            commit: self.raw.raft.raft_log.committed,
            applied: self.applied,
        }
    }

    /// The cluster as this node sees it: itself, and each member with its progress as far as
    /// this node knows it (a leader knows every member's; a follower none).
    pub fn view(&self) -> ClusterView {
        let status = self.status();
        let leading = status.role == StateRole::Leader;
        let progress = self.raw.raft.prs();
        let configuration = progress.conf().to_conf_state();
        let mut members: Vec<MemberView> = (configuration.voters.iter().map(|id| (*id, true)))
            .chain(configuration.learners.iter().map(|id| (*id, false)))
            .map(|(id, voter)| MemberView {
                id,
                peer_addr: self.members.get(&id).cloned().unwrap_or_default(),
                voter,
                matched: progress.get(id).filter(|_| leading).map(|p| p.matched),
                heard: None,
            })
            .collect();
        members.sort_by_key(|member| member.id);
        ClusterView { status, members }
    }

    /// The latest time this node was handed.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// The members' peer addresses, as the replicated membership has them.
    pub fn members(&self) -> &Addresses {
        &self.members
    }

    /// Whether this node was removed from the cluster (it serves nothing more).
    pub fn removed(&self) -> bool {
        self.removed
    }

    /// The replicated state machine, for reads that are not commands (stats, checks).
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The consensus log, as the driver must keep it across a restart.
    pub fn log(&self) -> &LogStore {
        self.raw.store()
    }

    /// The calls committed entries answered since the last take (the driver takes them after
    /// each batch).
    pub fn take_answered(&mut self) -> Vec<Answered> {
        std::mem::take(&mut self.answered)
    }

    /// The callers' writes proposed or forwarded since the last take, with their proposal ids:
    /// the simulator follows them into the committed log (the driver only drops them).
    pub fn take_proposed(&mut self) -> Vec<(CallerId, ProposalId)> {
        std::mem::take(&mut self.proposed)
    }

    /// With `observe_applied`, the entries applied since the last take, in order (a snapshot
    /// installed skips those it covers).
    pub fn take_applied(&mut self) -> Vec<RaftEntry> {
        std::mem::take(&mut self.applied_entries)
    }

    /// Snapshots this node took and installed from a leader since it started.
    pub fn snapshots(&self) -> (u64, u64) {
        self.snapshots
    }

    /// When time next matters: the next consensus tick.
    pub fn poll_timeout(&self) -> Millis {
        self.next_tick_at
    }

    pub fn handle(&mut self, now: Millis, input: NodeInput) {
        self.now = self.now.max(now);
        self.run_ticks();
        match input {
            NodeInput::Call {
                caller,
                command,
                principal,
            } => self.call(caller, command, principal),
            NodeInput::Peer(message) => {
                // A message from a stale term or an unknown peer is refused inside; the
                // sender retries what matters.
                let _ = self.raw.step(*message);
                self.redraw();
            }
            NodeInput::Forwarded(forward) => self.forwarded(forward),
            NodeInput::ForwardFailed(forward) => self.forward_failed(forward),
            NodeInput::ChangeMembers { ticket, change } => self.change_members(ticket, change),
            NodeInput::Tick => {}
            NodeInput::Local(input) => self.machine.handle(self.now, input),
        }
        self.leader_duties();
        self.expire();
        self.process_ready();
    }

    /// The next thing to do: consensus messages and the machine's outputs, in order.
    #[must_use = "an output is a duty of the driver"]
    pub fn poll(&mut self) -> Option<NodeOutput> {
        self.ask_read_index();
        loop {
            if let Some(output) = self.outbox.pop_front() {
                return Some(output);
            }
            match self.machine.poll()? {
                Output::Propose { entry } => {
                    // Only a leader's own writes count; a follower's lapse is the new
                    // leader's to clean up (its grace drops every waiting claim).
                    if self.raw.raft.state == StateRole::Leader {
                        self.propose(None, entry);
                        self.process_ready();
                    }
                }
                Output::Persist { .. } => unreachable!("a replicated machine persists nothing itself"),
                output => return Some(NodeOutput::Machine(output)),
            }
        }
    }

    fn run_ticks(&mut self) {
        if self.next_tick_at > self.now {
            return;
        }
        let due = (self.now - self.next_tick_at) / self.config.tick_ms + 1;
        for _ in 0..due.min(TICKS_PER_INPUT_MAX) {
            self.raw.tick();
            self.redraw();
        }
        self.next_tick_at += due * self.config.tick_ms;
        self.process_ready();
    }

    /// The time a leader stamps on what it proposes: its clock, never before the applied
    /// entries' (cluster time does not go back across a failover).
    fn cluster_now(&self) -> Millis {
        self.now.max(self.machine.core().now())
    }

    fn call(&mut self, caller: CallerId, command: Command, principal: Option<TokenId>) {
        if self.removed {
            let message = self.removed_message();
            return self.answer(caller, ErrorCode::FailedPrecondition, message);
        }
        if !command.is_logged() && self.config.planted == ClusterPlanted::StaleReads {
            let input = Input::Call {
                caller,
                command,
                principal,
            };
            return self.machine.handle(self.now, input);
        }
        if self.raw.raft.leader_id == 0 {
            // An election is under way (or this node just started): the call waits for its
            // outcome rather than failing at once; a client sees a slower answer, not an error.
            self.waiting.push_back(Waiting {
                caller,
                command,
                principal,
                deadline: self.now + self.config.request_timeout_ms,
            });
            return;
        }
        if !command.is_logged() {
            let seq = self.next_seq();
            self.reads.insert(
                seq,
                PendingRead {
                    caller,
                    command,
                    principal,
                    deadline: self.now + self.config.request_timeout_ms,
                    asked: None,
                    index: None,
                },
            );
            self.reads_unasked = true;
            return;
        }
        if self.raw.raft.state != StateRole::Leader {
            let entry = Entry::Apply {
                now: 0,
                command,
                principal,
            };
            let id = self.forward(Waiter::Call(caller), Forwarded::Write(proposal::encode_entry(&entry)));
            self.proposed.push((caller, id));
            return;
        }
        let entry = Entry::Apply {
            now: self.cluster_now(),
            command,
            principal,
        };
        if let Some(seq) = self.propose(Some(Waiter::Call(caller)), entry) {
            self.proposed.push((caller, self.proposal_id(seq)));
        }
    }

    /// Remembers proposal `seq` (proposed here, or forwarded to `forwarded_to`) until its entry
    /// is applied or its deadline passes; `caller` waits for it.
    fn track(&mut self, seq: u64, caller: Option<Waiter>, forwarded_to: Option<u64>) {
        let pending = Pending {
            caller,
            proposed_at: self.now,
            deadline: self.now + self.config.request_timeout_ms,
            forwarded_to,
        };
        self.proposals.insert(seq, pending);
    }

    /// Hands `payload` to the leader under a new proposal id; `waiter` waits for its entry.
    fn forward(&mut self, waiter: Waiter, payload: Forwarded) -> ProposalId {
        let leader = self.raw.raft.leader_id;
        let seq = self.next_seq();
        self.track(seq, Some(waiter), Some(leader));
        let id = self.proposal_id(seq);
        self.outbox.push_back(NodeOutput::Forward(Forward {
            to: leader,
            id,
            payload,
        }));
        id
    }

    fn removed_message(&self) -> String {
        format!(
            "node {} was removed from the cluster: it serves nothing more; call another member",
            self.config.id
        )
    }

    /// An operator's membership change: checked here first (a clear answer at once for what
    /// surely cannot work), proposed by the leader (a follower forwards it), and answered when
    /// its entry is applied here, where the replicated check decides.
    fn change_members(&mut self, ticket: u64, change: MemberChange) {
        let waiter = Waiter::Members(ticket);
        if self.removed {
            let message = self.removed_message();
            return self.answer_waiter(waiter, ErrorCode::FailedPrecondition, message);
        }
        let conf = self.raw.raft.prs().conf().to_conf_state();
        if let Err(error) = change.check(&self.members, &conf) {
            return self.outbox.push_back(NodeOutput::MembersChanged {
                ticket,
                outcome: Err(error),
            });
        }
        if self.raw.raft.leader_id == 0 {
            let message = format!(
                "node {} knows no leader (an election is under way?): retry",
                self.config.id
            );
            return self.answer_waiter(waiter, ErrorCode::Unavailable, message);
        }
        if self.raw.raft.state != StateRole::Leader {
            self.forward(waiter, Forwarded::Members(change));
            return;
        }
        let seq = self.next_seq();
        let id = self.proposal_id(seq);
        if self.propose_conf_change(id, change.to_conf_change()) {
            self.track(seq, Some(waiter), None);
        } else {
            let message = "another membership change is under way: retry once it is applied".to_string();
            self.answer_waiter(waiter, ErrorCode::Unavailable, message);
        }
    }

    /// Proposes a membership change under `id`, unless one is still under way (raft-rs takes
    /// one at a time, and would silently turn a second into an empty entry).
    fn propose_conf_change(&mut self, id: ProposalId, change: ConfChangeV2) -> bool {
        if self.raw.raft.has_pending_conf() {
            return false;
        }
        self.raw.propose_conf_change(id.encode(), change).is_ok()
    }

    /// A follower's write, if this node still leads: stamped with this clock, proposed under
    /// the follower's id (once, however often it arrives). Otherwise dropped: the follower's
    /// caller times out UNAVAILABLE, and retries.
    fn forwarded(&mut self, forward: Forward) {
        let stranger = !self.members.contains_key(&forward.id.origin);
        if self.raw.raft.state != StateRole::Leader || forward.id.origin == self.config.id || stranger {
            return;
        }
        let seen = self.forwarded.entry((forward.id.origin, forward.id.epoch)).or_default();
        if seen.contains(&forward.id.seq) && self.config.planted != ClusterPlanted::ForwardTwice {
            return;
        }
        if seen.len() == FORWARDED_REMEMBERED {
            seen.pop_front();
        }
        seen.push_back(forward.id.seq);
        let entry = match forward.payload {
            Forwarded::Write(entry) => entry,
            Forwarded::Members(change) => {
                // Whether it may take effect is decided where it is applied (every replica
                // alike, and the follower's caller told); one under way makes this one wait
                // for the caller's retry.
                let _ = self.propose_conf_change(forward.id, change.to_conf_change());
                return;
            }
        };
        let Ok(Entry::Apply { command, principal, .. }) = proposal::decode_entry(&entry) else {
            tracing::warn!(from = forward.id.origin, "a forwarded write does not decode; dropped");
            return;
        };
        if !command.is_logged() {
            return;
        }
        let entry = Entry::Apply {
            now: self.cluster_now(),
            command,
            principal,
        };
        // The follower waits for it; nobody here does.
        let _ = self.raw.propose(forward.id.encode(), proposal::encode_entry(&entry));
    }

    fn forward_failed(&mut self, forward: Forward) {
        let id = forward.id;
        if id.origin != self.config.id || id.epoch != self.config.epoch {
            return;
        }
        let Some(pending) = self.proposals.remove(&id.seq) else {
            return;
        };
        if let Some(waiter) = pending.caller {
            let message = format!(
                "node {} could not reach the leader (node {}): the write was not sent; retry",
                self.config.id, forward.to
            );
            self.answer_waiter(waiter, ErrorCode::Unavailable, message);
        }
    }

    fn answer_waiter(&mut self, waiter: Waiter, code: ErrorCode, message: String) {
        match waiter {
            Waiter::Call(caller) => self.answer(caller, code, message),
            Waiter::Members(ticket) => self.outbox.push_back(NodeOutput::MembersChanged {
                ticket,
                outcome: Err(CoreError::new(code, message)),
            }),
        }
    }

    fn answer(&mut self, caller: CallerId, code: ErrorCode, message: String) {
        self.outbox.push_back(NodeOutput::Machine(Output::Reply {
            caller,
            outcome: Err(CoreError::new(code, message)),
        }));
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn proposal_id(&self, seq: u64) -> ProposalId {
        ProposalId {
            origin: self.config.id,
            epoch: self.config.epoch,
            seq,
        }
    }

    /// Proposes `entry`; its commit answers `caller`. Returns the proposal's number.
    fn propose(&mut self, caller: Option<Waiter>, entry: Entry) -> Option<u64> {
        let seq = self.next_seq();
        let id = self.proposal_id(seq);
        match self.raw.propose(id.encode(), proposal::encode_entry(&entry)) {
            Ok(()) => {
                self.track(seq, caller, None);
                Some(seq)
            }
            Err(error) => {
                if let Some(waiter) = caller {
                    let message = format!("the cluster refused the write ({error}): retry");
                    self.answer_waiter(waiter, ErrorCode::Unavailable, message);
                }
                None
            }
        }
    }

    /// A leader proposes what only it may: a grace when it takes over, time when a deadline
    /// of the replicated state falls due.
    fn leader_duties(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        self.promote_caught_up();
        if self.tick_in_flight.is_some() {
            return;
        }
        if let Some(due) = self.machine.poll_timeout()
            && due <= self.now
        {
            let now = self.cluster_now();
            self.tick_in_flight = self.propose(None, Entry::Tick { now });
        }
    }

    /// A learner that has caught up becomes a voter (one change at a time).
    fn promote_caught_up(&mut self) {
        let progress = self.raw.raft.prs();
        let committed = self.raw.raft.raft_log.committed;
        // The lowest id first (raft-rs keeps learners in a hash set, whose order is its own).
        let caught_up = (progress.conf().learners().iter())
            .filter(|id| {
                progress
                    .get(**id)
                    .is_some_and(|p| p.matched > 0 && p.matched + PROMOTE_LAG_MAX >= committed)
            })
            .min();
        if let Some(&learner) = caught_up {
            let seq = self.next_seq();
            let id = self.proposal_id(seq);
            if self.propose_conf_change(id, membership::promotion(learner)) {
                tracing::info!(node = learner, "a learner caught up: proposing it as a voter");
            }
        }
    }

    /// Answers UNAVAILABLE what waited too long: the write may still commit (its outcome is
    /// unknown to the caller), the read is simply not served.
    fn expire(&mut self) {
        let now = self.now;
        for (seq, pending) in take_where(&mut self.proposals, |p| p.deadline <= now) {
            if self.tick_in_flight == Some(seq) {
                self.tick_in_flight = None;
            }
            if let Some(waiter) = pending.caller {
                let message = "the write was not committed in time (no quorum?); it may yet take effect".to_string();
                self.answer_waiter(waiter, ErrorCode::Unavailable, message);
            }
        }
        for (_, read) in take_where(&mut self.reads, |r| r.deadline <= now) {
            let message = "the read could not be confirmed by a quorum in time: retry".to_string();
            self.answer(read.caller, ErrorCode::Unavailable, message);
        }
        while self.waiting.front().is_some_and(|w| w.deadline <= now) {
            let waited = self.waiting.pop_front().expect("looked at");
            let message = format!(
                "node {} has known no leader for {} ms (no quorum reachable?): retry",
                self.config.id, self.config.request_timeout_ms
            );
            self.answer(waited.caller, ErrorCode::Unavailable, message);
        }
    }

    /// Does what raft-rs's ready says, in its order: send, apply what is committed, make the
    /// log stable, send what waited for that, advance; then serve the reads now confirmed.
    fn process_ready(&mut self) {
        self.redraw();
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            self.send(ready.take_messages());
            if !ready.snapshot().is_empty() {
                self.install(ready.snapshot().clone());
            }
            let committed = ready.take_committed_entries();
            self.apply(committed);
            if self.config.planted == ClusterPlanted::ApplyBeforeCommit {
                let appended = ready.entries().clone();
                self.apply(appended);
            }
            self.raw.mut_store().append(ready.entries());
            let hard_state = ready.hs().cloned();
            if let Some(hard_state) = &hard_state {
                self.raw.mut_store().set_hard_state(hard_state.clone());
            }
            if !ready.entries().is_empty() || hard_state.is_some() {
                let sync = ready.must_sync();
                debug_assert!(sync || ready.entries().is_empty(), "entries always owe a sync");
                self.outbox.push_back(NodeOutput::Persist {
                    entries: ready.entries().clone(),
                    hard_state,
                    sync,
                });
            }
            self.send(ready.take_persisted_messages());
            for state in ready.take_read_states() {
                if let Ok(id) = ProposalId::decode(&state.request_ctx)
                    && id.origin == self.config.id
                    && id.epoch == self.config.epoch
                {
                    for read in self.reads.values_mut().filter(|read| read.asked == Some(id.seq)) {
                        read.index = Some(state.index);
                    }
                }
            }
            let mut light = self.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().set_commit(commit);
            }
            self.send(light.take_messages());
            let committed = light.take_committed_entries();
            self.apply(committed);
            self.raw.advance_apply();
            self.report_snapshots_sent();
        }
        self.snapshot_if_due();
        self.serve_reads();
        self.role_changes();
        self.leader_changes();
    }

    /// A leader's snapshot, for a node too far behind for entries: the state becomes the
    /// snapshot's, the log starts after it.
    fn install(&mut self, snapshot: Snapshot) {
        let index = snapshot.get_metadata().index;
        assert!(
            index > self.applied,
            "a snapshot at {index} behind the applied index {}",
            self.applied
        );
        // A snapshot that does not decode cannot be skipped (this replica would differ from
        // every other): stop rather than diverge.
        let (addresses, state) = snapshot_state(&snapshot).unwrap_or_else(|error| panic!("{error}"));
        self.machine.install(Core::restore(self.config.core.clone(), state));
        if let Some(addresses) = addresses
            && addresses != self.members
        {
            self.members = addresses;
            self.outbox.push_back(NodeOutput::Peers(self.members.clone()));
        }
        self.applied = index;
        self.snapshot_at = index;
        self.snapshots.1 += 1;
        self.raw.mut_store().apply_snapshot(snapshot);
        self.outbox.push_back(self.snapshot_output());
    }

    /// Every `snapshot_every` applied entries: the replicated state as of the applied index
    /// becomes the log's snapshot, and the entries more than `snapshot_keep` behind it go. The
    /// first is taken at the first entry applied, and the log always starts after one: a node
    /// that joins later has no configuration of its own and must begin from a snapshot, which
    /// carries it (raft-rs sends one only where the entries a peer needs are compacted); and one
    /// is taken when a member is added, so that the snapshot it is sent names it.
    fn snapshot_if_due(&mut self) {
        let first = self.snapshot_at == 0 && self.applied > 0;
        let now = std::mem::take(&mut self.snapshot_now) && self.applied > self.snapshot_at;
        if !first && !now && self.applied < self.snapshot_at + self.config.snapshot_every {
            return;
        }
        let index = self.applied;
        let term = self.raw.store().term(index).expect("an applied entry is held");
        let mut snapshot = Snapshot::default();
        let core = crate::store::encode_snapshot(&self.machine.core().snapshot());
        snapshot.data = membership::encode_snapshot_data(&self.members, &core).into();
        let metadata = snapshot.mut_metadata();
        metadata.index = index;
        metadata.term = term;
        metadata.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        self.snapshot_at = index;
        self.snapshots.0 += 1;
        let store = self.raw.mut_store();
        store.set_snapshot(snapshot);
        store.compact(index.saturating_sub(self.config.snapshot_keep).max(1));
        self.outbox.push_back(self.snapshot_output());
    }

    fn snapshot_output(&self) -> NodeOutput {
        let store = self.raw.store();
        NodeOutput::Snapshot {
            snapshot: Box::new(store.snapshot_held().clone()),
            entries: store.entries_held().to_vec(),
            hard_state: store.hard_state().clone(),
        }
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                self.snapshots_sent.push(message.to);
            }
            self.outbox.push_back(NodeOutput::Send(Box::new(message)));
        }
    }

    /// raft-rs sends a peer nothing more after a snapshot until told how sending it went; the
    /// network is best effort and says nothing, so every snapshot counts as sent: the peer is
    /// probed from just after it, and one that never got it refuses the probe and is sent the
    /// snapshot again (without this, one lost snapshot message stalls that peer for good).
    fn report_snapshots_sent(&mut self) {
        for to in std::mem::take(&mut self.snapshots_sent) {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
    }

    fn apply(&mut self, entries: Vec<RaftEntry>) {
        for raft_entry in entries {
            if raft_entry.index <= self.applied {
                // Only the planted misuse applies an entry twice (appended, then committed).
                continue;
            }
            self.applied = raft_entry.index;
            if self.config.observe_applied {
                self.applied_entries.push(raft_entry.clone());
            }
            if raft_entry.entry_type == EntryType::EntryConfChangeV2 {
                self.apply_conf_change(&raft_entry);
                continue;
            }
            if raft_entry.entry_type != EntryType::EntryNormal || raft_entry.data.is_empty() {
                // A new leader's empty entry (or a v1 membership change, which we never make).
                continue;
            }
            let entry = match proposal::decode_entry(&raft_entry.data) {
                Ok(entry) => entry,
                Err(error) => {
                    // Every replica skips it alike, so they stay equal; say so loudly.
                    tracing::error!(index = raft_entry.index, %error, "a committed entry does not decode; skipped");
                    continue;
                }
            };
            let caller = self.take_pending(&raft_entry.context);
            let waited_ms = caller.as_ref().map_or(0, |p| self.now.saturating_sub(p.proposed_at));
            let caller = match caller.and_then(|p| p.caller) {
                Some(Waiter::Call(caller)) => Some(caller),
                _ => None,
            };
            if let Some(caller) = caller {
                self.answered.push(Answered {
                    caller,
                    index: raft_entry.index,
                    term: raft_entry.term,
                    waited_ms,
                });
            }
            self.machine.handle(self.now, Input::Committed { entry, caller });
        }
    }

    /// The proposal an applied entry's `context` names, if this incarnation proposed (or
    /// forwarded) it and still tracks it: no longer pending, nor in flight as the tick.
    fn take_pending(&mut self, context: &[u8]) -> Option<Pending> {
        let id = ProposalId::decode(context).ok()?;
        if id.origin != self.config.id || id.epoch != self.config.epoch {
            return None;
        }
        if self.tick_in_flight == Some(id.seq) {
            self.tick_in_flight = None;
        }
        self.proposals.remove(&id.seq)
    }

    /// A committed membership change: every replica decides alike from the replicated members
    /// whether it takes effect (raft-rs is told only of those that do), and the addresses
    /// follow; a removed leader steps down.
    fn apply_conf_change(&mut self, raft_entry: &RaftEntry) {
        let waiter = self
            .take_pending(&raft_entry.context)
            .and_then(|pending| pending.caller);
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let decided = membership::decode_conf_change(&raft_entry.data).and_then(|change| {
            let ours = MemberChange::from_conf_change(&change)?;
            Ok((change, ours))
        });
        let verdict = match decided {
            Err(error) => Err(CoreError::new(ErrorCode::InvalidArgument, error)),
            Ok((change, Some(ours))) => ours.check(&self.members, &conf).map(|()| (change, Some(ours))),
            Ok((change, None)) => (membership::check_promotion(change.changes[0].node_id, &conf))
                .map(|()| (change, None))
                .map_err(|error| CoreError::new(ErrorCode::FailedPrecondition, error)),
        };
        let outcome = verdict.and_then(|(change, ours)| {
            let conf = (self.raw.apply_conf_change(&change)).map_err(|error| {
                CoreError::new(ErrorCode::FailedPrecondition, format!("consensus refused it: {error}"))
            })?;
            self.raw.mut_store().set_conf_state(conf);
            let Some(ours) = ours else {
                return Ok(());
            };
            match ours {
                MemberChange::Add { id, peer_addr } => {
                    self.members.insert(id, peer_addr);
                    self.snapshot_now = true;
                }
                MemberChange::Remove { id } => {
                    self.members.remove(&id);
                    self.removed |= id == self.config.id;
                }
            }
            self.outbox.push_back(NodeOutput::Peers(self.members.clone()));
            Ok(())
        });
        if let Err(error) = &outcome {
            tracing::warn!(index = raft_entry.index, error = %error.message, "a membership change did not take effect");
        }
        if self.removed && self.raw.raft.state == StateRole::Leader {
            // raft-rs leaves a removed leader leading; it must not (the others elect anew).
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
        }
        if let Some(waiter) = waiter {
            match (waiter, outcome) {
                (Waiter::Members(ticket), outcome) => {
                    self.outbox.push_back(NodeOutput::MembersChanged { ticket, outcome });
                }
                (Waiter::Call(caller), _) => {
                    let message = "a call was answered by a membership change".to_string();
                    self.answer(caller, ErrorCode::FailedPrecondition, message);
                }
            }
        }
    }

    /// One ReadIndex request for every read that waits for one (the batch's reads share its
    /// consensus round); none while no leader is known (a new one is asked then).
    fn ask_read_index(&mut self) {
        if !self.reads_unasked || self.raw.raft.leader_id == 0 {
            return;
        }
        self.reads_unasked = false;
        let seq = self.next_seq();
        for read in self.reads.values_mut().filter(|read| read.asked.is_none()) {
            read.asked = Some(seq);
        }
        self.raw.read_index(self.proposal_id(seq).encode());
        self.process_ready();
    }

    fn serve_reads(&mut self) {
        let applied = self.applied;
        for (_, read) in take_where(&mut self.reads, |r| r.index.is_some_and(|index| index <= applied)) {
            self.machine.handle(
                self.now,
                Input::Call {
                    caller: read.caller,
                    command: read.command,
                    principal: read.principal,
                },
            );
        }
    }

    /// On a change of term or role: no tick is in flight any more; a new leader's grace.
    fn role_changes(&mut self) {
        let now_seen = (self.raw.raft.term, self.raw.raft.state);
        if now_seen == self.seen {
            return;
        }
        let was_leading = self.seen.1 == StateRole::Leader;
        self.seen = now_seen;
        self.tick_in_flight = None;
        if was_leading && now_seen.1 != StateRole::Leader {
            // Deposed: what this node proposed for its own callers may still commit under the
            // next leader, or never; its callers hear so now rather than at their timeout (as
            // a follower's callers do when the leader they forwarded to changes).
            let id = self.config.id;
            for (_, pending) in take_where(&mut self.proposals, |p| p.forwarded_to.is_none()) {
                if let Some(waiter) = pending.caller {
                    let message =
                        format!("node {id} stopped leading before the write was committed; it may yet take effect");
                    self.answer_waiter(waiter, ErrorCode::Unavailable, message);
                }
            }
        }
        if now_seen.1 == StateRole::Leader {
            // Nobody is punished for the time without a leader, and nobody is given more than
            // a failover's worth: see `Core::failover_grace`.
            let now = self.cluster_now();
            self.propose(None, Entry::Grace { now });
            self.process_ready();
        }
    }

    /// On a change of leader: writes forwarded to the old one are answered UNAVAILABLE at once
    /// (they may yet commit, or not: the client decides whether to retry, as after a timeout,
    /// but without waiting for one); reads waiting for the old one's ReadIndex ask the new one;
    /// calls that waited for any leader go to the new one.
    fn leader_changes(&mut self) {
        let leader = self.raw.raft.leader_id;
        if leader == self.seen_leader {
            return;
        }
        let old = std::mem::replace(&mut self.seen_leader, leader);
        for (_, pending) in take_where(&mut self.proposals, |p| p.forwarded_to.is_some_and(|to| to == old)) {
            if let Some(waiter) = pending.caller {
                let message = format!(
                    "the leader changed (node {old} to {}) before the write was committed; it may yet take effect",
                    if leader == 0 {
                        "none yet".to_string()
                    } else {
                        format!("node {leader}")
                    }
                );
                self.answer_waiter(waiter, ErrorCode::Unavailable, message);
            }
        }
        if leader == 0 {
            return;
        }
        for read in self.reads.values_mut().filter(|read| read.index.is_none()) {
            read.asked = None;
            self.reads_unasked = true;
        }
        for waited in std::mem::take(&mut self.waiting) {
            self.call(waited.caller, waited.command, waited.principal);
        }
        self.process_ready();
    }

    /// raft-rs re-draws its randomized election timeout with `thread_rng` whenever it resets
    /// the election clock (`election_elapsed` back to 0); we overwrite that draw with ours
    /// before the next tick reads it, so a seed decides elections. (A heartbeat zeroes the
    /// clock too: drawing again then is harmless, every draw is within raft-rs's range.)
    fn redraw(&mut self) {
        if self.raw.raft.election_elapsed != 0 {
            return;
        }
        let election = self.config.election_ticks as u64;
        let timeout = election + self.rng.next_u64() % election;
        self.raw.raft.set_randomized_election_timeout(timeout as usize);
    }

    /// The node's own invariants, beside the machine's (the simulator calls them).
    pub fn check_invariants(&self) {
        let status = self.status();
        if self.config.planted != ClusterPlanted::ApplyBeforeCommit {
            assert!(status.applied <= status.commit, "applied beyond the commit index");
        }
        assert!(
            status.commit <= self.raw.store().last_index_held(),
            "committed beyond the stable log"
        );
        self.machine.check_invariants();
    }
}

#[cfg(test)]
mod tests;
