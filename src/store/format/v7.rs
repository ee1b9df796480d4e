//! Format version 7, the one this release writes: version 6 with a card's vector inside its
//! Register. `LoggedCommand::Register` (still variant 0) takes `vector`: the card's vector, its
//! model and the digest of the card text it came from, when the daemon had that text's vector
//! already (the embedding workers' cache), so one record registers the agent and gives it its
//! vector where version 6 took two (Register, then `SetModelCardVector`). Every other command
//! keeps its variant and its bytes, and the snapshot is version 6's (`Snapshot` and every nested
//! type are re-exported from `v6.rs`, the same bytes).
//!
//! Architecture invariant: these types are the bytes on disk. postcard writes an enum's variant
//! by its index and a struct's fields in order, with no names, so any change here (a variant
//! moved, added or removed, a field added, removed, reordered or retyped) changes what files mean.
//! The golden-bytes tests (`golden.rs`) fail on such a change: bump the format version instead,
//! freeze this file as it is (decode-only) and write the next version beside it. Nothing here
//! depends on a core type; `convert.rs` maps them.

use serde::{Deserialize, Serialize};

use super::v6;
pub use super::v6::{
    AgentState, AgentStatus, AgentView, Bytes, Capability, Card, Created, Effect, ElectionView, Event, EventPayload,
    Floats, GroupState, Id, LeaseState, LeaseView, ModelFloats, Policy, PolicyInput, RequestId, Session, Snapshot,
    TaskState, TaskStatus, TaskView, Text, Texts, Token, Topic, VERSION_5_MODEL, WaiterState,
};

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
    /// 0 (`vector` new in version 7: the card's vector when it came with the registration)
    Register {
        card: Card<'a>,
        ttl_seconds: u32,
        vector: Option<CardVector<'a>>,
    },
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
    /// 18: an agent's card vector, the model that made it, and the digest of the card text it
    /// was computed from (version 6's).
    SetModelCardVector {
        agent_id: Text<'a>,
        card_digest: [u8; 32],
        model: Text<'a>,
        vector: Floats<'a>,
    },
}

/// A card's vector inside its Register (new in version 7): the digest of the card text it was
/// computed from, then the vector with its model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CardVector<'a> {
    pub card_digest: [u8; 32],
    pub vector: ModelFloats<'a>,
}

// ── The upgrade from version 6: no Register carried a vector. ──

pub fn upgrade_record(record: v6::Record<'_>) -> Record<'_> {
    match record {
        v6::Record::Apply {
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
        v6::Record::Tick { now } => Record::Tick { now },
        v6::Record::Grace { now } => Record::Grace { now },
    }
}

/// Version 6's commands are version 7's, variant for variant and field for field; its
/// Registers carry no vector.
fn upgrade_command(command: v6::LoggedCommand<'_>) -> LoggedCommand<'_> {
    use v6::LoggedCommand as Old;
    match command {
        Old::Register { card, ttl_seconds } => LoggedCommand::Register {
            card,
            ttl_seconds,
            vector: None,
        },
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
        } => LoggedCommand::SetCardVector {
            agent_id,
            card_digest,
            vector,
        },
        Old::KeepAlive { items } => LoggedCommand::KeepAlive {
            items: items.into_iter().map(upgrade_command).collect(),
        },
        Old::SetModelCardVector {
            agent_id,
            card_digest,
            model,
            vector,
        } => LoggedCommand::SetModelCardVector {
            agent_id,
            card_digest,
            model,
            vector,
        },
    }
}
