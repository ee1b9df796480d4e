//! Format version 4 (frozen: decode-only, upgraded into version 5 by `v5.rs`, which keeps its
//! snapshot and every nested type): version 3 with a client's request number on a
//! creating write (`Record::Apply::request`, see `core::sessions`) and the clients' remembered
//! requests in the snapshot (`Snapshot::sessions`). Every other type is version 3's own (the
//! same bytes).
//!
//! Architecture invariant: these types are the bytes on disk. postcard writes an enum's variant
//! by its index and a struct's fields in order, with no names, so any change here (a variant
//! moved, added or removed, a field added, removed, reordered or retyped) changes what files mean.
//! The golden-bytes tests (`golden.rs`) fail on such a change: bump the format version instead,
//! freeze this file as it is (decode-only) and write the next version beside it. Nothing here
//! depends on a core type; `convert.rs` maps them.

use serde::{Deserialize, Serialize};

use super::v3;
pub use super::v3::{
    AgentState, AgentStatus, AgentView, Bytes, Capability, Card, Effect, ElectionView, Event, EventPayload, GroupState,
    Id, LeaseState, LeaseView, LoggedCommand, Policy, PolicyInput, TaskState, TaskStatus, TaskView, Text, Texts, Token,
    Topic, WaiterState,
};

/// One log record: an input of the core. Variant indexes (what postcard writes) are fixed:
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // one record at a time, and almost every one an Apply
pub enum Record<'a> {
    /// 0: a state-changing command applied at `now`, on behalf of `principal` if a token made
    /// it, numbered by its client if `request` is set (new in version 4).
    Apply {
        now: u64,
        command: LoggedCommand<'a>,
        principal: Option<Token>,
        request: Option<RequestId>,
    },
    /// 1: a tick that fired at least one deadline.
    Tick { now: u64 },
    /// 2: the restart grace given after a recovery.
    Grace { now: u64 },
}

/// A client's numbered request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId {
    pub client: u128,
    pub seq: u64,
}

/// What a remembered request created: 0 an agent, 1 a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Created {
    Agent(Id),
    Task(Id),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub client: u128,
    pub last_used: u64,
    pub applied: Vec<(u64, Created)>,
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
    /// New in version 4: the clients' remembered requests, by client id.
    pub sessions: Vec<Session>,
}

// ── The upgrade from version 3: no request is numbered and none is remembered. ──

pub fn upgrade_record(record: v3::Record<'_>) -> Record<'_> {
    match record {
        v3::Record::Apply {
            now,
            command,
            principal,
        } => Record::Apply {
            now,
            command,
            principal,
            request: None,
        },
        v3::Record::Tick { now } => Record::Tick { now },
        v3::Record::Grace { now } => Record::Grace { now },
    }
}

pub fn upgrade_snapshot(snapshot: v3::Snapshot<'_>) -> Snapshot<'_> {
    let v3::Snapshot {
        now,
        rng_seed,
        rng_stream,
        rng_word_pos,
        hash_seed,
        registration_next,
        agents,
        token_last,
        leases,
        groups,
        policies,
        sequence_next,
        events,
        tasks,
        task_order_next,
        waiters,
        waiter_next,
    } = snapshot;
    Snapshot {
        now,
        rng_seed,
        rng_stream,
        rng_word_pos,
        hash_seed,
        registration_next,
        agents,
        token_last,
        leases,
        groups,
        policies,
        sequence_next,
        events,
        tasks,
        task_order_next,
        waiters,
        waiter_next,
        sessions: Vec::new(),
    }
}
