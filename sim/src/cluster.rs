//! The cluster simulator: 3 or 5 real `agentkeeper::cluster::Node`s (raft-rs and the replicated
//! core) in one thread, on a seeded network that loses, delays, reorders and doubles messages
//! and splits into partitions, with nodes paused, crashed and restarted and clocks skewed;
//! each node's disk keeps what was synced, and a crash (also one in the middle of a write, after
//! the outputs ahead of it left) keeps only a prefix of the rest, as `cluster::SyncGate` orders
//! it for the real driver, and one between a snapshot and the log after it leaves the old log
//! behind the new snapshot; restarts read the disk back with the real log's `LogStore::recover`;
//! clients call random nodes. After every step: one leader per term, committed entries equal
//! on every node, replicas equal at equal applied indexes, fencing tokens rising, nothing
//! acknowledged before it is committed. At the end every fault heals, and the cluster must
//! converge and take a write.
//!
//! Architecture invariant: nothing here reads a clock or the OS RNG; one seed, one run, bit for
//! bit (the digest covers every reply). Panics inside a node are caught and reported.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use agentkeeper::cluster::{
    ClusterPlanted, DiskRecord, Forward, Gated, HardState, LogStore, Message, Node, NodeConfig, NodeInput, NodeOutput,
    ProposalId, RaftEntry, Snapshot, StateRole, SyncGate,
};
use agentkeeper::core::machine::{CallerId, Output};
use agentkeeper::core::search::card_text::card_digest;
use agentkeeper::core::search::vectors::CardVector;
use agentkeeper::core::types::{AgentCard, Millis};
use agentkeeper::core::{Command, CoreConfig, ErrorCode, Outcome, Reply};
use agentkeeper::store::format::encode_snapshot;

use agentkeeper::core::PolicyInput;
use agentkeeper::core::types::Effect;
use agentkeeper_linearizability::policies::{self, Policies, PolicyOp, PolicyRet};
use agentkeeper_linearizability::{self as linearizability, Operation, Verdict};

use crate::checks::panic_text;
use crate::digest::Digest;
use crate::rng::Rng;

/// The named invariants, as reports print them.
pub mod invariant {
    pub const ONE_LEADER_PER_TERM: &str = "cluster.one_leader_per_term";
    pub const COMMITTED_ENTRIES_AGREE: &str = "cluster.committed_entries_agree";
    pub const EACH_PROPOSAL_COMMITTED_ONCE: &str = "cluster.each_proposal_committed_once";
    pub const REPLICAS_AGREE: &str = "cluster.replicas_agree_at_equal_applied_index";
    pub const ACKNOWLEDGED_ONLY_WHEN_COMMITTED: &str = "cluster.acknowledged_only_when_committed";
    pub const FENCING_TOKENS_RISE: &str = "cluster.fencing_tokens_rise";
    pub const NODE_INVARIANTS: &str = "cluster.node_invariants";
    pub const CONVERGES_AFTER_HEAL: &str = "cluster.converges_after_heal";
    pub const LINEARIZABLE: &str = "cluster.policies_linearizable";
}

const T0: Millis = 1_700_000_000_000;
const KEYS: [&str; 4] = ["k0", "k1", "k2", "k3"];
/// Steps of the healed run at the end (50 ms each).
const HEAL_STEPS: u64 = 400;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterViolation {
    pub step: u64,
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for ClusterViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {} invariant {}: {}", self.step, self.invariant, self.detail)
    }
}

#[derive(Debug)]
pub struct ClusterReport {
    pub seed: u64,
    pub nodes: usize,
    pub steps: u64,
    pub digest: String,
    pub violation: Option<ClusterViolation>,
    /// How often each op ran and each fault struck, by name.
    pub coverage: BTreeMap<&'static str, u64>,
}

/// The faults a seed turns on, and how hard.
#[derive(Clone, Copy, Debug)]
struct Faults {
    drop_per_mille: u32,
    duplicate_per_mille: u32,
    slow_per_mille: u32,
    partition_per_100k: u64,
    crash_per_100k: u64,
    pause_per_100k: u64,
    /// A node crashing while its disk writes what it owes a sync for (after what it released
    /// ahead of those records left, before what waits for them): per 100,000 such writes.
    crash_mid_sync_per_100k: u64,
    /// A node crashing between writing a snapshot and the log that follows it (the old log
    /// stays behind the new snapshot): per 100,000 snapshots written.
    crash_after_snapshot_per_100k: u64,
}

impl Faults {
    fn draw(rng: &mut Rng) -> Faults {
        Faults {
            drop_per_mille: rng.range(0, 80) as u32,
            duplicate_per_mille: rng.range(0, 30) as u32,
            slow_per_mille: rng.range(0, 100) as u32,
            partition_per_100k: rng.range(0, 200),
            crash_per_100k: rng.range(0, 100),
            pause_per_100k: rng.range(0, 100),
            crash_mid_sync_per_100k: rng.range(0, 300),
            crash_after_snapshot_per_100k: rng.range(0, 5_000),
        }
    }

    fn none() -> Faults {
        Faults {
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            slow_per_mille: 0,
            partition_per_100k: 0,
            crash_per_100k: 0,
            pause_per_100k: 0,
            crash_mid_sync_per_100k: 0,
            crash_after_snapshot_per_100k: 0,
        }
    }
}

struct Slot {
    node: Option<Node>,
    /// The node's consensus log as its disk holds it: what was synced, or written whole. A
    /// restart reads it back.
    disk: Disk,
    /// Records appended since the last sync: a crash keeps a prefix of them (a torn write).
    unsynced: Vec<(Vec<RaftEntry>, Option<HardState>)>,
    /// The driver's rule for what leaves before a sync and what waits for it.
    gate: SyncGate,
    /// Its clock's offset from true time.
    skew: Millis,
    paused_until: Option<Millis>,
    /// Entries the node applied since the last check, in order.
    applied: Vec<RaftEntry>,
    /// The applied index its state was last compared at.
    compared: u64,
    restarts: u64,
}

/// What travels between nodes: consensus messages, and writes forwarded to the leader.
#[derive(Clone)]
enum Packet {
    Raft(Box<Message>),
    Forward(Forward),
}

struct InFlight {
    at: Millis,
    order: u64,
    from: usize,
    to: usize,
    packet: Packet,
}

#[derive(Clone, Debug)]
enum Pending {
    Register,
    Acquire {
        key: &'static str,
        floor: u64,
    },
    /// A policy call: its place in the policy history.
    Policy(usize),
    Other,
}

/// The policies clients set, delete and check: three ids on one subject, action and resource,
/// so every call touches one key and the history is checked for linearizability whole (the
/// model: `agentkeeper_linearizability::policies`).
const POLICY_IDS: [&str; policies::POLICY_IDS_MAX] = ["p0", "p1", "p2"];
const SUBJECT: &str = "agent:s";
const ACTION: &str = "write";
const RESOURCE: &str = "doc:r";
/// States the linearizability search may explore per run.
const LINEARIZABILITY_BUDGET: u64 = 300_000;

struct Call {
    node: usize,
    pending: Pending,
}

type Checked = Result<(), ClusterViolation>;

pub struct ClusterSim {
    seed: u64,
    rng: Rng,
    net_rng: Rng,
    faults: Faults,
    now: Millis,
    step: u64,
    slots: Vec<Slot>,
    config: NodeConfig,
    net: Vec<InFlight>,
    order: u64,
    /// Partition groups by node (None: one network).
    partition: Option<Vec<u8>>,
    next_caller: u64,
    calls: BTreeMap<CallerId, Call>,
    agents: Vec<String>,
    /// Per key, the highest token an acknowledged acquire was granted, and every one granted
    /// with its holder (a holder's acquire again answers its token: re-entrant).
    token_high: BTreeMap<&'static str, u64>,
    tokens_granted: BTreeMap<(&'static str, u64), String>,
    leaders: BTreeMap<u64, u64>,
    /// The cluster's committed log as first seen: per index, (term, a hash of the entry).
    committed: BTreeMap<u64, (u64, u64)>,
    /// The proposal ids among those entries.
    committed_ids: BTreeSet<ProposalId>,
    /// Per applied index, the first replica state seen there (a hash of its snapshot).
    states: BTreeMap<u64, (usize, u64)>,
    /// Every policy call: invoked and answered on one logical clock (`events`); a call that
    /// definitely failed is struck out.
    policy_history: Vec<Operation<PolicyOp, PolicyRet>>,
    struck: Vec<bool>,
    events: u64,
    /// Policy writes by the proposal id their node gave them: seen committed, a write of
    /// unknown outcome is known to have taken effect by then.
    policy_proposals: BTreeMap<ProposalId, usize>,
    digest: Digest,
    coverage: BTreeMap<&'static str, u64>,
}

/// A node's disk: its snapshot file and its log file's records, which a restart reads back
/// through `LogStore::recover`, as the real consensus log does.
#[derive(Clone, Default)]
struct Disk {
    snapshot: Option<Snapshot>,
    records: Vec<DiskRecord>,
}

impl Disk {
    /// Appends records to the log file (what a sync, or a crash's torn write, kept).
    fn write(&mut self, entries: Vec<RaftEntry>, hard_state: Option<HardState>) {
        self.records.extend(entries.into_iter().map(DiskRecord::Entry));
        self.records.extend(hard_state.map(DiskRecord::HardState));
    }

    fn read_back(&self, voters: &[u64]) -> LogStore {
        LogStore::recover(voters, self.snapshot.clone(), self.records.iter().cloned())
            .unwrap_or_else(|error| panic!("the node's disk does not read back: {error}"))
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut digest = Digest::default();
    digest.bytes(bytes);
    digest.value()
}

fn fail(step: u64, invariant: &'static str, detail: String) -> Checked {
    Err(ClusterViolation {
        step,
        invariant,
        detail,
    })
}

impl ClusterSim {
    pub fn new(seed: u64, nodes: usize, planted: ClusterPlanted) -> ClusterSim {
        assert!((1..=7).contains(&nodes), "1 to 7 nodes");
        let mut rng = Rng::new(seed);
        let faults = Faults::draw(&mut rng);
        let voters: Vec<u64> = (1..=nodes as u64).collect();
        // Small bounds, as the single-node swarm's: the state stays small enough to compare
        // after every step, and the bounds' refusals are exercised too.
        let core = CoreConfig {
            seed,
            dead_retention_ms: 30_000,
            event_ring_max: 256,
            agents_max: 64,
            ..CoreConfig::default()
        };
        let mut config = NodeConfig::new(0, voters.clone(), core, T0);
        config.seed = seed;
        config.planted = planted;
        // Small, so that runs take snapshots, compact, and send snapshots to lagging nodes.
        config.snapshot_every = 64;
        config.snapshot_keep = 32;
        config.observe_applied = true;
        let mut sim = ClusterSim {
            seed,
            net_rng: Rng::stream(seed, 1),
            faults,
            now: T0,
            step: 0,
            slots: Vec::new(),
            config,
            net: Vec::new(),
            order: 0,
            partition: None,
            next_caller: 0,
            calls: BTreeMap::new(),
            agents: Vec::new(),
            token_high: BTreeMap::new(),
            tokens_granted: BTreeMap::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            committed_ids: BTreeSet::new(),
            states: BTreeMap::new(),
            policy_history: Vec::new(),
            struck: Vec::new(),
            events: 0,
            policy_proposals: BTreeMap::new(),
            digest: Digest::default(),
            coverage: BTreeMap::new(),
            rng,
        };
        for _ in 0..nodes {
            let skew = sim.rng.range(0, 500);
            sim.slots.push(Slot {
                node: None,
                disk: Disk::default(),
                unsynced: Vec::new(),
                gate: SyncGate::new(),
                skew,
                paused_until: None,
                applied: Vec::new(),
                compared: 0,
                restarts: 0,
            });
        }
        for i in 0..nodes {
            sim.start(i);
        }
        sim
    }

    fn count(&mut self, what: &'static str) {
        *self.coverage.entry(what).or_default() += 1;
    }

    fn node_now(&self, i: usize) -> Millis {
        self.now + self.slots[i].skew
    }

    fn start(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let mut config = self.config.clone();
        config.id = i as u64 + 1;
        config.epoch = (slot.restarts << 32) | self.rng.below(1 << 32);
        slot.restarts += 1;
        let now = self.now + slot.skew;
        let log = slot.disk.read_back(&self.config.voters);
        let node = Node::new(config, log, now).expect("the simulated config is valid");
        slot.node = Some(node);
        slot.gate = match self.config.planted {
            ClusterPlanted::IgnoreSyncs => SyncGate::planted_ignoring_syncs(),
            _ => SyncGate::new(),
        };
    }

    /// The first node up that leads (a deposed leader may not know it yet).
    fn leader(&self) -> Option<usize> {
        (0..self.slots.len()).find(|&i| {
            self.up(i)
                && self.slots[i]
                    .node
                    .as_ref()
                    .is_some_and(|node| node.status().role == StateRole::Leader)
        })
    }

    fn up(&self, i: usize) -> bool {
        self.slots[i].node.is_some() && self.slots[i].paused_until.is_none()
    }

    /// Node `i` stops at once: its disk keeps what was synced and a prefix of what was not (a
    /// write torn by the crash); what it held back for a sync is lost with its calls.
    fn crash(&mut self, i: usize) {
        let mut node = self.slots[i].node.take().expect("up");
        // What it applied before the crash was committed all the same.
        let applied = node.take_applied();
        self.slots[i].applied.extend(applied);
        let (taken, installed) = node.snapshots();
        *self.coverage.entry("snapshots_taken").or_default() += taken;
        *self.coverage.entry("snapshots_installed").or_default() += installed;
        let unsynced = std::mem::take(&mut self.slots[i].unsynced);
        let kept = self.rng.range(0, unsynced.len() as u64 + 1) as usize;
        if kept < unsynced.len() {
            self.count("unsynced_records_lost");
        }
        for (entries, hard_state) in unsynced.into_iter().take(kept) {
            self.slots[i].disk.write(entries, hard_state);
        }
        drop(self.slots[i].gate.synced());
        self.slots[i].paused_until = None;
        self.calls.retain(|_, call| call.node != i);
    }

    /// Runs `steps` steps with faults, then heals and checks convergence.
    pub fn run(&mut self, steps: u64) -> Checked {
        for _ in 0..steps {
            self.one_step()?;
        }
        self.heal_and_converge()
    }

    fn one_step(&mut self) -> Checked {
        self.step += 1;
        self.now += if self.rng.chance(5) {
            self.rng.range(500, 3_000)
        } else {
            self.rng.range(0, 30)
        };
        self.faults_strike();
        if self.rng.chance(500) {
            self.client_call();
        }
        self.deliver_due();
        self.tick_all();
        self.drain_all()?;
        self.check()
    }

    fn faults_strike(&mut self) {
        let n = self.slots.len();
        let faults = self.faults;
        if self.partition.is_none() && self.rng.below(100_000) < faults.partition_per_100k {
            let groups: Vec<u8> = (0..n).map(|_| self.rng.below(2) as u8).collect();
            self.partition = Some(groups);
            self.count("partition");
        } else if self.partition.is_some() && self.rng.chance(3) {
            self.partition = None;
            self.count("heal");
        }
        if self.rng.below(100_000) < faults.crash_per_100k {
            let i = self.rng.index(n);
            if self.slots[i].node.is_some() {
                self.crash(i);
                self.count("crash");
            }
        }
        for i in 0..n {
            if self.slots[i].node.is_none() && self.rng.chance(5) {
                self.start(i);
                self.count("restart");
            }
        }
        if self.rng.below(100_000) < faults.pause_per_100k {
            let i = self.rng.index(n);
            if self.up(i) {
                self.slots[i].paused_until = Some(self.now + self.rng.range(500, 5_000));
                self.count("pause");
            }
        }
        for i in 0..n {
            if self.slots[i].paused_until.is_some_and(|until| until <= self.now) {
                self.slots[i].paused_until = None;
            }
        }
    }

    fn client_call(&mut self) {
        let n = self.slots.len();
        // Half the clients know the leader; the others pick a node at random.
        let i = match self.leader() {
            Some(leader) if self.rng.chance(500) => leader,
            _ => self.rng.index(n),
        };
        if !self.up(i) {
            self.count("call_refused_node_down");
            return;
        }
        let agent = if self.agents.is_empty() {
            "unknown".to_string()
        } else {
            self.agents[self.rng.index(self.agents.len())].clone()
        };
        let key = *self.rng.pick(&KEYS);
        let (name, command, pending) = match self.rng.below(12) {
            9..=11 => self.policy_call(),
            0 | 1 => self.register_call(),
            2 => ("heartbeat", Command::Heartbeat { agent_id: agent }, Pending::Other),
            3 | 4 => (
                "acquire",
                Command::AcquireLease {
                    task_id: key.to_string(),
                    agent_id: agent,
                    ttl_seconds: self.rng.range(1, 5) as u32,
                },
                Pending::Acquire {
                    key,
                    floor: self.token_high.get(key).copied().unwrap_or(0),
                },
            ),
            5 => (
                "renew",
                Command::RenewLease {
                    task_id: key.to_string(),
                    agent_id: agent,
                    token: self.token_high.get(key).copied().unwrap_or(0),
                    ttl_seconds: 3,
                },
                Pending::Other,
            ),
            6 => (
                "release",
                Command::ReleaseLease {
                    task_id: key.to_string(),
                    agent_id: agent,
                    token: self.token_high.get(key).copied().unwrap_or(0),
                },
                Pending::Other,
            ),
            7 => ("get_agent", Command::GetAgent { agent_id: agent }, Pending::Other),
            _ => (
                "list_leases",
                Command::ListLeases {
                    prefix: String::new(),
                    page_size: 10,
                    page_token: String::new(),
                },
                Pending::Other,
            ),
        };
        self.count(name);
        self.next_caller += 1;
        let caller = CallerId(self.next_caller);
        self.calls.insert(caller, Call { node: i, pending });
        self.call_node(i, caller, command);
    }

    /// A Register; every other one carries its card's vector (as the daemon's does when the
    /// embedding workers had the text's already), which every replica must apply alike (the
    /// replicas' snapshots are compared).
    fn register_call(&mut self) -> (&'static str, Command, Pending) {
        let n = self.rng.below(20);
        let card = AgentCard {
            name: format!("agent-{n}"),
            ..AgentCard::default()
        };
        let ttl_seconds = self.rng.range(2, 10) as u32;
        // A function of the card (no draw): the runs of seeds without it stay as they were.
        let vector = n.is_multiple_of(2).then(|| {
            std::sync::Arc::new(CardVector {
                card_digest: card_digest(&card),
                vector: crate::vectors::card_vector(0, false, n, false),
            })
        });
        let name = if vector.is_some() {
            "register_with_vector"
        } else {
            "register"
        };
        let command = Command::Register {
            card: Box::new(card),
            ttl_seconds,
            vector,
        };
        (name, command, Pending::Register)
    }

    /// A policy call, entered in the history as invoked now.
    fn policy_call(&mut self) -> (&'static str, Command, Pending) {
        let id = self.rng.index(POLICY_IDS.len());
        let (name, op, command) = match self.rng.below(3) {
            0 => {
                let (effect, modelled) = if self.rng.chance(500) {
                    (Effect::Allow, policies::Effect::Allow)
                } else {
                    (Effect::Deny, policies::Effect::Deny)
                };
                let command = Command::SetPolicy {
                    policy: Box::new(PolicyInput {
                        id: POLICY_IDS[id].to_string(),
                        subject: SUBJECT.into(),
                        action: ACTION.into(),
                        resource: RESOURCE.into(),
                        effect: Some(effect),
                    }),
                };
                ("set_policy", PolicyOp::Set(id, modelled), command)
            }
            1 => (
                "delete_policy",
                PolicyOp::Delete(id),
                Command::DeletePolicy {
                    id: POLICY_IDS[id].to_string(),
                },
            ),
            _ => (
                "check_policy",
                PolicyOp::Check,
                Command::CheckPolicy {
                    subject: SUBJECT.into(),
                    action: ACTION.into(),
                    resource: RESOURCE.into(),
                },
            ),
        };
        self.events += 1;
        self.policy_history.push(Operation {
            invoked: self.events,
            returned: None,
            op,
            ret: None,
        });
        self.struck.push(false);
        (name, command, Pending::Policy(self.policy_history.len() - 1))
    }

    /// What a policy call's answer says of its outcome: known, unknown (it may yet take
    /// effect), or none (it was refused before it was proposed, or was a read that failed).
    fn policy_answered(&mut self, at: usize, outcome: &Outcome) {
        let op = &self.policy_history[at].op;
        let ret = match (op, outcome) {
            (PolicyOp::Set(..), Ok(Reply::Policy(_))) | (PolicyOp::Delete(_), Ok(Reply::Done)) => Some(PolicyRet::Done),
            (PolicyOp::Delete(_), Err(e)) if e.code == ErrorCode::NotFound => Some(PolicyRet::NotFound),
            (PolicyOp::Check, Ok(Reply::Decision(decision))) => Some(PolicyRet::Allowed(decision.allowed)),
            (PolicyOp::Set(..) | PolicyOp::Delete(_), Err(e)) if e.message.contains("may yet take effect") => None,
            _ => {
                self.struck[at] = true;
                return;
            }
        };
        if let Some(ret) = ret {
            self.events += 1;
            let entry = &mut self.policy_history[at];
            // Seen committed already: it took effect by then, which is the tighter bound.
            entry.returned.get_or_insert(self.events);
            entry.ret = Some(ret);
        }
    }

    /// The policy history must linearize.
    fn check_linearizable(&mut self) -> Checked {
        // Everything has healed and converged: a write never seen committed never took effect
        // (one committed later would come after every answer), and a read never answered
        // changed nothing. What is left has a time by which it took effect.
        let history: Vec<_> = self
            .policy_history
            .iter()
            .zip(&self.struck)
            .filter(|(op, struck)| !**struck && op.returned.is_some())
            .map(|(op, _)| op.clone())
            .collect();
        match linearizability::check(&Policies::default(), &history, LINEARIZABILITY_BUDGET) {
            Verdict::Linearizable => {
                self.count("linearizability_checked");
                Ok(())
            }
            Verdict::Inconclusive => {
                self.count("linearizability_inconclusive");
                Ok(())
            }
            Verdict::NotLinearizable { stuck_at } => {
                let shown: Vec<String> = stuck_at
                    .iter()
                    .take(4)
                    .map(|&i| {
                        let op = &history[i];
                        format!(
                            "{:?} -> {:?} (invoked at {}, answered at {:?})",
                            op.op, op.ret, op.invoked, op.returned
                        )
                    })
                    .collect();
                fail(
                    self.step,
                    invariant::LINEARIZABLE,
                    format!(
                        "no order of the {} policy calls fits their answers; stuck before: {}",
                        history.len(),
                        shown.join("; ")
                    ),
                )
            }
        }
    }

    /// Hands `command` to node `i` (up) for `caller`, at the node's time.
    fn call_node(&mut self, i: usize, caller: CallerId, command: Command) -> &Node {
        let now = self.node_now(i);
        let node = self.slots[i].node.as_mut().expect("up");
        node.handle(
            now,
            NodeInput::Call {
                caller,
                command,
                principal: None,
            },
        );
        node
    }

    fn reachable(&self, from: usize, to: usize) -> bool {
        self.partition.as_ref().is_none_or(|groups| groups[from] == groups[to])
    }

    fn send(&mut self, from: usize, to: usize, packet: Packet) {
        // A write forwarded to a node that is down (crashed, not paused: a paused process's
        // connection still takes bytes) is refused on the spot, as a connection would be: the
        // forwarding node knows it was never sent.
        if let Packet::Forward(forward) = &packet
            && self.slots[to].node.is_none()
        {
            let now = self.node_now(from);
            if let Some(node) = self.slots[from].node.as_mut() {
                node.handle(now, NodeInput::ForwardFailed(forward.clone()));
                self.count("forward_not_sent");
            }
            return;
        }
        if !self.reachable(from, to) || self.net_rng.chance(self.faults.drop_per_mille) {
            self.count("message_lost");
            return;
        }
        let copies = if self.net_rng.chance(self.faults.duplicate_per_mille) {
            self.count("message_doubled");
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.net_rng.chance(self.faults.slow_per_mille) {
                self.net_rng.range(50, 400)
            } else {
                self.net_rng.range(1, 15)
            };
            self.order += 1;
            self.net.push(InFlight {
                at: self.now + delay,
                order: self.order,
                from,
                to,
                packet: packet.clone(),
            });
        }
    }

    fn deliver_due(&mut self) {
        let now = self.now;
        let mut due: Vec<InFlight> = Vec::new();
        let mut rest = Vec::with_capacity(self.net.len());
        for flight in self.net.drain(..) {
            if flight.at <= now {
                due.push(flight);
            } else {
                rest.push(flight);
            }
        }
        self.net = rest;
        due.sort_by_key(|f| (f.at, f.order));
        for flight in due {
            let (from, to) = (flight.from, flight.to);
            // A paused node's messages wait in its socket; a crashed node's are lost; a
            // partition that formed meanwhile cuts what was still in flight.
            if self.slots[to].paused_until.is_some() {
                self.net.push(flight);
                continue;
            }
            if self.slots[to].node.is_none() || !self.reachable(from, to) {
                continue;
            }
            let now = self.node_now(to);
            let node = self.slots[to].node.as_mut().expect("up");
            let input = match flight.packet {
                Packet::Raft(message) => NodeInput::Peer(message),
                Packet::Forward(forward) => NodeInput::Forwarded(forward),
            };
            node.handle(now, input);
        }
    }

    fn tick_all(&mut self) {
        for i in 0..self.slots.len() {
            if !self.up(i) {
                continue;
            }
            let now = self.node_now(i);
            let node = self.slots[i].node.as_mut().expect("up");
            if node.poll_timeout() <= now {
                node.handle(now, NodeInput::Tick);
            }
        }
    }

    fn drain_all(&mut self) -> Checked {
        for i in 0..self.slots.len() {
            if !self.up(i) {
                continue;
            }
            let node = self.slots[i].node.as_mut().expect("up");
            let polled = catch_unwind(AssertUnwindSafe(|| {
                std::iter::from_fn(|| node.poll()).collect::<Vec<_>>()
            }));
            let polled = match polled {
                Ok(polled) => polled,
                Err(panic) => return fail(self.step, invariant::NODE_INVARIANTS, panic_text(&panic)),
            };
            let node = self.slots[i].node.as_mut().expect("up");
            // A policy write's proposal id, whenever its node proposed it (a call that waited
            // for a leader is proposed later than it was made).
            for (caller, id) in node.take_proposed() {
                if let Some(Call {
                    pending: Pending::Policy(at),
                    ..
                }) = self.calls.get(&caller)
                {
                    self.policy_proposals.insert(id, *at);
                }
            }
            let applied = node.take_applied();
            self.slots[i].applied.extend(applied);
            let node = self.slots[i].node.as_mut().expect("up");
            let answered = node.take_answered();
            let commit = node.status().commit;
            for answer in answered {
                if answer.index > commit {
                    return fail(
                        self.step,
                        invariant::ACKNOWLEDGED_ONLY_WHEN_COMMITTED,
                        format!(
                            "node {} answered caller {:?} from entry {} (term {}) while its commit index is {commit}",
                            i + 1,
                            answer.caller,
                            answer.index,
                            answer.term
                        ),
                    );
                }
            }
            // The driver's loop: records to the disk, outputs out as the sync gate says; the
            // disk syncs what is owed, unless the node crashes while it writes.
            let mut released = Vec::new();
            let mut crash_after_snapshot = false;
            for output in polled {
                if crash_after_snapshot {
                    // The node went down inside that write: nothing after it left.
                    break;
                }
                match self.slots[i].gate.admit(output) {
                    Gated::Append { entries, hard_state } => self.slots[i].unsynced.push((entries, hard_state)),
                    Gated::Replace {
                        snapshot,
                        entries,
                        hard_state,
                    } => {
                        // The snapshot file, then the log after it, each written whole (what was
                        // appended and not synced is in neither: the log is rewritten).
                        crash_after_snapshot = self.rng.below(100_000) < self.faults.crash_after_snapshot_per_100k;
                        let slot = &mut self.slots[i];
                        slot.disk.snapshot = Some(*snapshot);
                        slot.unsynced.clear();
                        if !crash_after_snapshot {
                            slot.disk.records.clear();
                            slot.disk.write(entries, Some(hard_state));
                            released.extend(slot.gate.synced());
                        }
                    }
                    Gated::Release(output) => released.push(output),
                    Gated::Held => {}
                }
            }
            let slot = &self.slots[i];
            let crash_mid_sync = !crash_after_snapshot
                && slot.gate.owes_sync()
                && self.rng.below(100_000) < self.faults.crash_mid_sync_per_100k;
            let slot = &mut self.slots[i];
            if slot.gate.owes_sync() && !crash_mid_sync && !crash_after_snapshot {
                for (entries, hard_state) in std::mem::take(&mut slot.unsynced) {
                    slot.disk.write(entries, hard_state);
                }
                released.extend(slot.gate.synced());
            }
            let mut sent = Vec::new();
            let mut replies = Vec::new();
            for output in released {
                match output {
                    NodeOutput::Send(message) => {
                        let to = message.to as usize - 1;
                        sent.push((to, Packet::Raft(message)));
                    }
                    NodeOutput::Forward(forward) => {
                        let to = forward.to as usize - 1;
                        sent.push((to, Packet::Forward(forward)));
                    }
                    NodeOutput::Machine(Output::Reply { caller, outcome }) => replies.push((caller, outcome)),
                    // The simulated network reaches every node by its id (membership changes
                    // are the cluster's unit tests' and the real-process tests').
                    NodeOutput::Machine(_) | NodeOutput::Peers(_) | NodeOutput::MembersChanged { .. } => {}
                    NodeOutput::Persist { .. } | NodeOutput::Snapshot { .. } => unreachable!("the gate's"),
                }
            }
            for (to, packet) in sent {
                self.send(i, to, packet);
            }
            for (caller, outcome) in replies {
                self.reply(i, caller, outcome)?;
            }
            if crash_mid_sync {
                self.crash(i);
                self.count("crash_mid_sync");
            }
            if crash_after_snapshot {
                self.crash(i);
                self.count("crash_after_snapshot");
            }
        }
        Ok(())
    }

    fn reply(&mut self, i: usize, caller: CallerId, outcome: Outcome) -> Checked {
        self.digest.u64(i as u64);
        self.digest.u64(caller.0);
        self.digest.outcome(&outcome);
        let Some(call) = self.calls.remove(&caller) else {
            return Ok(());
        };
        if let Pending::Policy(at) = call.pending {
            self.policy_answered(at, &outcome);
        }
        match (&call.pending, &outcome) {
            (Pending::Register, Ok(Reply::Registered { agent_id })) => {
                self.agents.push(agent_id.to_string());
                if self.agents.len() > 40 {
                    self.agents.remove(0);
                }
            }
            (Pending::Acquire { key, floor }, Ok(Reply::Lease { lease, acquired: true })) => {
                let holder = lease.holder.to_string();
                let fresh = match self.tokens_granted.get(&(*key, lease.token)) {
                    // Re-entrant: the holder's own lease again.
                    Some(first) if *first == holder => false,
                    Some(first) => {
                        return fail(
                            self.step,
                            invariant::FENCING_TOKENS_RISE,
                            format!(
                                "node {} granted {key:?} token {} to {holder}, which {first} was granted before",
                                i + 1,
                                lease.token
                            ),
                        );
                    }
                    None => true,
                };
                if fresh && lease.token <= *floor {
                    return fail(
                        self.step,
                        invariant::FENCING_TOKENS_RISE,
                        format!(
                            "node {} granted {key:?} a new token {}, but token {floor} was granted before the call",
                            i + 1,
                            lease.token
                        ),
                    );
                }
                self.tokens_granted.insert((key, lease.token), holder);
                let high = self.token_high.entry(key).or_default();
                *high = (*high).max(lease.token);
            }
            (_, Err(error)) if error.code == ErrorCode::Unavailable => self.count("answered_unavailable"),
            _ => {}
        }
        Ok(())
    }

    /// Every entry node `i` applied (so committed), compared with the first node that applied
    /// one at its index; a snapshot installed skips those it covers (its state is compared at
    /// equal applied indexes instead). Entries applied before a crash count too.
    fn check_applied(&mut self, i: usize) -> Checked {
        let node_id = i + 1;
        for entry in std::mem::take(&mut self.slots[i].applied) {
            let index = entry.index;
            let mut digest = Digest::default();
            digest.bytes(&entry.data);
            digest.bytes(&entry.context);
            let seen = (entry.term, digest.value());
            match self.committed.get(&index) {
                Some(first) if *first != seen => {
                    return fail(
                        self.step,
                        invariant::COMMITTED_ENTRIES_AGREE,
                        format!(
                            "node {node_id} committed entry {index} of term {}, another node committed one of term {} there",
                            seen.0, first.0
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    self.committed.insert(index, seen);
                    let id = ProposalId::decode(&entry.context);
                    // A policy write of unknown outcome took effect by now.
                    if let Ok(id) = &id
                        && let Some(&at) = self.policy_proposals.get(id)
                        && self.policy_history[at].returned.is_none()
                    {
                        self.events += 1;
                        self.policy_history[at].returned = Some(self.events);
                    }
                    if let Ok(id) = id
                        && !self.committed_ids.insert(id)
                    {
                        return fail(
                            self.step,
                            invariant::EACH_PROPOSAL_COMMITTED_ONCE,
                            format!("proposal {id:?} was committed twice, the second time as entry {index}"),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn check(&mut self) -> Checked {
        for i in 0..self.slots.len() {
            self.check_applied(i)?;
            let Some(node) = self.slots[i].node.as_ref() else {
                continue;
            };
            let status = node.status();
            // The replicated state changes only when entries are applied: check it then.
            let applied_more = status.applied != self.slots[i].compared;
            if applied_more && let Err(panic) = catch_unwind(AssertUnwindSafe(|| node.check_invariants())) {
                return fail(self.step, invariant::NODE_INVARIANTS, panic_text(&panic));
            }
            if status.role == StateRole::Leader {
                let leader = *self.leaders.entry(status.term).or_insert(status.id);
                if leader != status.id {
                    return fail(
                        self.step,
                        invariant::ONE_LEADER_PER_TERM,
                        format!("nodes {leader} and {} both led term {}", status.id, status.term),
                    );
                }
            }
            // The replicated state, compared with the first replica seen at that index.
            let state = applied_more.then(|| hash(&encode_snapshot(&node.machine().core().snapshot())));
            if let Some(state) = state {
                self.slots[i].compared = status.applied;
                let first = *self.states.entry(status.applied).or_insert((i, state));
                if first.1 != state {
                    return fail(
                        self.step,
                        invariant::REPLICAS_AGREE,
                        format!(
                            "nodes {} and {} applied up to entry {} and hold different states",
                            first.0 + 1,
                            status.id,
                            status.applied
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Every fault heals; within the healed run one leader must lead everyone, every node
    /// apply everything committed, and a write succeed.
    fn heal_and_converge(&mut self) -> Checked {
        self.faults = Faults::none();
        self.partition = None;
        for i in 0..self.slots.len() {
            self.slots[i].paused_until = None;
            if self.slots[i].node.is_none() {
                self.start(i);
            }
        }
        let mut write: Option<CallerId> = None;
        let mut written = false;
        for round in 0..HEAL_STEPS {
            self.step += 1;
            self.now += 50;
            self.deliver_due();
            self.tick_all();
            if round >= HEAL_STEPS / 4
                && write.is_none()
                && let Some(leader) = self.leader()
            {
                self.next_caller += 1;
                let caller = CallerId(self.next_caller);
                self.calls.insert(
                    caller,
                    Call {
                        node: leader,
                        pending: Pending::Other,
                    },
                );
                let command = Command::Register {
                    card: Box::new(AgentCard {
                        name: "after-the-heal".into(),
                        ..AgentCard::default()
                    }),
                    ttl_seconds: 60,
                    vector: None,
                };
                self.call_node(leader, caller, command);
                write = Some(caller);
            }
            self.drain_all()?;
            self.check()?;
            if let Some(caller) = write
                && !written
                && !self.calls.contains_key(&caller)
            {
                written = true;
            }
            if written && self.converged().is_ok() {
                return self.check_linearizable();
            }
        }
        let detail = self.converged().err().unwrap_or_else(|| "the nodes agree".into());
        fail(
            self.step,
            invariant::CONVERGES_AFTER_HEAL,
            format!(
                "{} s after every fault healed: a write {}; {detail}",
                HEAL_STEPS * 50 / 1000,
                if written { "answered" } else { "not answered" }
            ),
        )
    }

    /// One leader that everyone follows, and every node has applied the same committed entries.
    fn converged(&self) -> Result<(), String> {
        let statuses: Vec<_> = self
            .slots
            .iter()
            .map(|s| s.node.as_ref().expect("all up").status())
            .collect();
        let leaders: Vec<u64> = statuses
            .iter()
            .filter(|s| s.role == StateRole::Leader)
            .map(|s| s.id)
            .collect();
        let agreed = statuses
            .iter()
            .all(|s| s.applied == statuses[0].applied && s.commit == s.applied && s.leader == statuses[0].leader);
        if leaders.len() != 1 || !agreed {
            let detail = statuses
                .iter()
                .map(|s| {
                    format!(
                        "node {} {:?} term {} leader {} commit {} applied {}",
                        s.id, s.role, s.term, s.leader, s.commit, s.applied
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(format!("leaders {leaders:?}; {detail}"));
        }
        Ok(())
    }

    /// What the run did; its coverage counts the terms that had a leader too (`terms_led`).
    pub fn report(&self, violation: Option<ClusterViolation>) -> ClusterReport {
        let mut coverage = self.coverage.clone();
        coverage.insert("terms_led", self.leaders.len() as u64);
        for node in self.slots.iter().filter_map(|slot| slot.node.as_ref()) {
            let (taken, installed) = node.snapshots();
            *coverage.entry("snapshots_taken").or_default() += taken;
            *coverage.entry("snapshots_installed").or_default() += installed;
        }
        ClusterReport {
            seed: self.seed,
            nodes: self.slots.len(),
            steps: self.step,
            digest: self.digest.hex(),
            violation,
            coverage,
        }
    }
}

/// Runs one seed on a cluster of `nodes`.
pub fn run_cluster(seed: u64, nodes: usize, steps: u64, planted: ClusterPlanted) -> ClusterReport {
    let mut sim = ClusterSim::new(seed, nodes, planted);
    let result = catch_unwind(AssertUnwindSafe(|| sim.run(steps)));
    let violation = match result {
        Ok(Ok(())) => None,
        Ok(Err(violation)) => Some(violation),
        Err(panic) => Some(ClusterViolation {
            step: sim.step,
            invariant: invariant::NODE_INVARIANTS,
            detail: panic_text(&panic),
        }),
    };
    sim.report(violation)
}
