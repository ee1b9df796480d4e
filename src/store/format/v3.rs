//! Format version 3 (frozen: decode-only, upgraded into version 4 by `v4.rs`; version 4 reuses
//! every type here but the record and the snapshot): version 2 with the A2A agent card's JSON at
//! the end of every agent card (`Card::a2a_card`), in log records and snapshots alike. The types
//! that hold no card are version 2's own (the same bytes); those that hold one are here.
//!
//! Architecture invariant: these types are the bytes on disk. postcard writes an enum's variant
//! by its index and a struct's fields in order, with no names, so any change here (a variant
//! moved, added or removed, a field added, removed, reordered or retyped) changes what files mean.
//! The golden-bytes tests (`golden.rs`) fail on such a change: bump the format version instead,
//! freeze this file as it is (decode-only) and write the next version beside it. Nothing here
//! depends on a core type; `convert.rs` maps them.

use serde::{Deserialize, Serialize};

pub use super::v2::{
    AgentStatus, Bytes, Capability, Effect, ElectionView, GroupState, Id, LeaseState, LeaseView, Policy, PolicyInput,
    TaskState, TaskStatus, TaskView, Text, Texts, Token, Topic, WaiterState,
};

/// One log record: an input of the core. Variant indexes (what postcard writes) are fixed:
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record<'a> {
    /// 0: a state-changing command applied at `now`, on behalf of `principal` if a token made it.
    Apply {
        now: u64,
        command: LoggedCommand<'a>,
        principal: Option<Token>,
    },
    /// 1: a tick that fired at least one deadline.
    Tick { now: u64 },
    /// 2: the restart grace given after a recovery.
    Grace { now: u64 },
}

/// Exactly the commands that change state (`Command::is_logged`). Variant indexes are fixed
/// (the number before each); reads and subscriptions never reach the log and have none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LoggedCommand<'a> {
    /// 0
    Register { card: Card<'a>, ttl_seconds: u32 },
    /// 1
    Heartbeat { agent_id: Text<'a> },
    /// 2
    Deregister { agent_id: Text<'a> },
    /// 3
    AcquireLease {
        task_id: Text<'a>,
        agent_id: Text<'a>,
        ttl_seconds: u32,
    },
    /// 4
    RenewLease {
        task_id: Text<'a>,
        agent_id: Text<'a>,
        token: u64,
        ttl_seconds: u32,
    },
    /// 5
    ReleaseLease {
        task_id: Text<'a>,
        agent_id: Text<'a>,
        token: u64,
    },
    /// 6
    Campaign { group: Text<'a>, agent_id: Text<'a> },
    /// 7
    Resign { group: Text<'a>, agent_id: Text<'a> },
    /// 8
    SetPolicy { policy: PolicyInput<'a> },
    /// 9
    DeletePolicy { id: Text<'a> },
    /// 10
    CreateTask {
        kind: Text<'a>,
        input: Bytes<'a>,
        required_tools: Texts<'a>,
        max_retries: u32,
        ttl_seconds: u32,
    },
    /// 11
    ClaimTask { agent_id: Text<'a>, wait_ms: u64 },
    /// 12
    CancelClaim { waiter: u64 },
    /// 13
    ReturnTask { task_id: Text<'a>, token: u64 },
    /// 14
    CompleteTask {
        task_id: Text<'a>,
        agent_id: Text<'a>,
        output: Bytes<'a>,
    },
    /// 15
    FailTask {
        task_id: Text<'a>,
        agent_id: Text<'a>,
        reason: Text<'a>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Card<'a> {
    pub name: Text<'a>,
    pub description: Text<'a>,
    pub version: Text<'a>,
    pub capabilities: Vec<Capability<'a>>,
    pub tools: Texts<'a>,
    pub metadata: Vec<(Text<'a>, Text<'a>)>,
    /// New in version 3: the A2A agent card's JSON as registered (empty: none).
    pub a2a_card: Text<'a>,
}

/// The core's whole state as ordered values (see `core::snapshot`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot<'a> {
    pub now: u64,
    pub rng_seed: [u8; 32],
    pub rng_stream: u64,
    pub rng_word_pos: u128,
    pub hash_seed: u64,
    pub registration_next: u64,
    pub agents: Vec<AgentState<'a>>,
    pub token_last: u64,
    pub leases: Vec<LeaseState<'a>>,
    pub groups: Vec<GroupState<'a>>,
    pub policies: Vec<Policy<'a>>,
    pub sequence_next: u64,
    pub events: Vec<Event<'a>>,
    pub tasks: Vec<TaskState<'a>>,
    pub task_order_next: u64,
    pub waiters: Vec<WaiterState>,
    pub waiter_next: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentState<'a> {
    pub id: Id,
    pub card: Card<'a>,
    pub status: AgentStatus,
    pub registered_at: u64,
    pub last_heartbeat_at: u64,
    pub liveness_base: u64,
    pub ttl_ms: u64,
    pub registration: u64,
    pub dead_at: Option<u64>,
    pub groups: Texts<'a>,
    pub owner: Option<Token>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event<'a> {
    pub sequence: u64,
    pub topic: Topic,
    pub occurred_at: u64,
    pub payload: EventPayload<'a>,
}

/// 0 Agent, 1 Lease, 2 Election, 3 Task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventPayload<'a> {
    Agent(AgentView<'a>),
    Lease(LeaseView<'a>),
    Election(ElectionView<'a>),
    Task(TaskView<'a>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentView<'a> {
    pub agent_id: Id,
    pub card: Card<'a>,
    pub status: AgentStatus,
    pub registered_at: u64,
    pub last_heartbeat_at: u64,
    pub ttl_ms: u64,
}
