//! Format version 6 (frozen: decode-only, upgraded into version 7 by `v7.rs`, which reuses every
//! type here, the snapshot's included, but the record and the command): version 5 with the model
//! that made each card vector. The log takes `SetModelCardVector` (variant 18 of
//! `LoggedCommand`: version 5's `SetCardVector` and the model's name; variant 16 is never
//! written again, and is read as the built-in encoder's, the only model version 5 knew), and the
//! snapshot keeps each agent's vector with its model (`AgentState::vector`). Every other type
//! is version 5's own (the same bytes).
//!
//! Architecture invariant: these types are the bytes on disk. postcard writes an enum's variant
//! by its index and a struct's fields in order, with no names, so any change here (a variant
//! moved, added or removed, a field added, removed, reordered or retyped) changes what files mean.
//! The golden-bytes tests (`golden.rs`) fail on such a change: bump the format version instead,
//! freeze this file as it is (decode-only) and write the next version beside it. Nothing here
//! depends on a core type; `convert.rs` maps them.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::v5;
pub use super::v5::{
    AgentStatus, AgentView, Bytes, Capability, Card, Created, Effect, ElectionView, Event, EventPayload, Floats,
    GroupState, Id, LeaseState, LeaseView, Policy, PolicyInput, RequestId, Session, TaskState, TaskStatus, TaskView,
    Text, Texts, Token, Topic, WaiterState,
};

/// The name a vector logged by version 5 (which knew one model) is read with.
pub const VERSION_5_MODEL: &str = "all-minilm-l6-v2";

/// One log record: an input of the core. Variant indexes (what postcard writes) are fixed:
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // one record at a time, and almost every one an Apply
pub enum Record<'a> {
    /// 0: a state-changing command applied at `now`, on behalf of `principal` if a token made
    /// it, numbered by its client if `request` is set.
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
    /// 16 (version 5's; never written from version 6 on: read as `VERSION_5_MODEL`'s)
    SetCardVector {
        agent_id: Text<'a>,
        card_digest: [u8; 32],
        vector: Floats<'a>,
    },
    /// 17: heartbeats and lease renewals applied in order as one step (a keep-alive stream's
    /// message, see `core::keepalive`).
    KeepAlive { items: Vec<LoggedCommand<'a>> },
    /// 18 (new in version 6): an agent's card vector, the model that made it, and the digest of
    /// the card text it was computed from.
    SetModelCardVector {
        agent_id: Text<'a>,
        card_digest: [u8; 32],
        model: Text<'a>,
        vector: Floats<'a>,
    },
}

/// A vector and the name of the model that made it (new in version 6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelFloats<'a> {
    pub model: Text<'a>,
    pub values: Floats<'a>,
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
    pub sessions: Vec<Session>,
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
    /// The card's sentence vector (unit length), if it had one, with its model (new in
    /// version 6).
    pub vector: Option<ModelFloats<'a>>,
}

// ── The upgrade from version 5: every vector is the built-in encoder's. ──

pub fn upgrade_record(record: v5::Record<'_>) -> Record<'_> {
    match record {
        v5::Record::Apply {
            now,
            command,
            principal,
            request,
        } => Record::Apply {
            now,
            command: upgrade_command(command),
            principal,
            request,
        },
        v5::Record::Tick { now } => Record::Tick { now },
        v5::Record::Grace { now } => Record::Grace { now },
    }
}

/// Version 5's commands are version 6's first eighteen, field for field; its card vectors
/// become `SetModelCardVector`s of `VERSION_5_MODEL`.
fn upgrade_command(command: v5::LoggedCommand<'_>) -> LoggedCommand<'_> {
    use v5::LoggedCommand as Old;
    match command {
        Old::Register { card, ttl_seconds } => LoggedCommand::Register { card, ttl_seconds },
        Old::Heartbeat { agent_id } => LoggedCommand::Heartbeat { agent_id },
        Old::Deregister { agent_id } => LoggedCommand::Deregister { agent_id },
        Old::AcquireLease {
            task_id,
            agent_id,
            ttl_seconds,
        } => LoggedCommand::AcquireLease {
            task_id,
            agent_id,
            ttl_seconds,
        },
        Old::RenewLease {
            task_id,
            agent_id,
            token,
            ttl_seconds,
        } => LoggedCommand::RenewLease {
            task_id,
            agent_id,
            token,
            ttl_seconds,
        },
        Old::ReleaseLease {
            task_id,
            agent_id,
            token,
        } => LoggedCommand::ReleaseLease {
            task_id,
            agent_id,
            token,
        },
        Old::Campaign { group, agent_id } => LoggedCommand::Campaign { group, agent_id },
        Old::Resign { group, agent_id } => LoggedCommand::Resign { group, agent_id },
        Old::SetPolicy { policy } => LoggedCommand::SetPolicy { policy },
        Old::DeletePolicy { id } => LoggedCommand::DeletePolicy { id },
        Old::CreateTask {
            kind,
            input,
            required_tools,
            max_retries,
            ttl_seconds,
        } => LoggedCommand::CreateTask {
            kind,
            input,
            required_tools,
            max_retries,
            ttl_seconds,
        },
        Old::ClaimTask { agent_id, wait_ms } => LoggedCommand::ClaimTask { agent_id, wait_ms },
        Old::CancelClaim { waiter } => LoggedCommand::CancelClaim { waiter },
        Old::ReturnTask { task_id, token } => LoggedCommand::ReturnTask { task_id, token },
        Old::CompleteTask {
            task_id,
            agent_id,
            output,
        } => LoggedCommand::CompleteTask {
            task_id,
            agent_id,
            output,
        },
        Old::FailTask {
            task_id,
            agent_id,
            reason,
        } => LoggedCommand::FailTask {
            task_id,
            agent_id,
            reason,
        },
        Old::SetCardVector {
            agent_id,
            card_digest,
            vector,
        } => LoggedCommand::SetModelCardVector {
            agent_id,
            card_digest,
            model: Cow::Borrowed(VERSION_5_MODEL),
            vector,
        },
        Old::KeepAlive { items } => LoggedCommand::KeepAlive {
            items: items.into_iter().map(upgrade_command).collect(),
        },
    }
}

pub fn upgrade_snapshot(snapshot: v5::Snapshot<'_>) -> Snapshot<'_> {
    let v5::Snapshot {
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
        sessions,
    } = snapshot;
    Snapshot {
        now,
        rng_seed,
        rng_stream,
        rng_word_pos,
        hash_seed,
        registration_next,
        agents: agents.into_iter().map(upgrade_agent).collect(),
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
        sessions,
    }
}

fn upgrade_agent(agent: v5::AgentState<'_>) -> AgentState<'_> {
    let v5::AgentState {
        id,
        card,
        status,
        registered_at,
        last_heartbeat_at,
        liveness_base,
        ttl_ms,
        registration,
        dead_at,
        groups,
        owner,
        vector,
    } = agent;
    AgentState {
        id,
        card,
        status,
        registered_at,
        last_heartbeat_at,
        liveness_base,
        ttl_ms,
        registration,
        dead_at,
        groups,
        owner,
        vector: vector.map(|values| ModelFloats {
            model: Cow::Borrowed(VERSION_5_MODEL),
            values,
        }),
    }
}
