//! Format version 5, the one this release writes: version 4 with one more logged command, a
//! keep-alive batch (`LoggedCommand::KeepAlive`: many heartbeats or lease renewals applied as one
//! step, see `core::keepalive`). The other commands keep their indexes and bytes; the snapshot
//! and every nested type are version 4's (and 3's) own.
//!
//! Architecture invariant: these types are the bytes on disk. postcard writes an enum's variant
//! by its index and a struct's fields in order, with no names, so any change here (a variant
//! moved, added or removed, a field added, removed, reordered or retyped) changes what files mean.
//! The golden-bytes tests (`golden.rs`) fail on such a change: bump the format version instead,
//! freeze this file as it is (decode-only) and write the next version beside it. Nothing here
//! depends on a core type; `convert.rs` maps them.

use serde::{Deserialize, Serialize};

pub use super::v4::{
    AgentState, AgentStatus, AgentView, Bytes, Capability, Card, Created, Effect, ElectionView, Event, EventPayload,
    GroupState, Id, LeaseState, LeaseView, Policy, PolicyInput, RequestId, Session, Snapshot, TaskState, TaskStatus,
    TaskView, Text, Texts, Token, Topic, WaiterState,
};
use super::{v3, v4};

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
/// (the number before each); 0 to 15 are version 3's, byte for byte.
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
    /// 16 (new in version 5): heartbeats and renewals applied in order as one step.
    KeepAlive { items: Vec<LoggedCommand<'a>> },
}

// ── The upgrade from version 4: the same records; no keep-alive batch was ever written. ──

pub fn upgrade_record(record: v4::Record<'_>) -> Record<'_> {
    match record {
        v4::Record::Apply {
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
        v4::Record::Tick { now } => Record::Tick { now },
        v4::Record::Grace { now } => Record::Grace { now },
    }
}

pub fn upgrade_snapshot(snapshot: v4::Snapshot<'_>) -> Snapshot<'_> {
    snapshot
}

fn upgrade_command(command: v3::LoggedCommand<'_>) -> LoggedCommand<'_> {
    use LoggedCommand as N;
    use v3::LoggedCommand as O;
    match command {
        O::Register { card, ttl_seconds } => N::Register { card, ttl_seconds },
        O::Heartbeat { agent_id } => N::Heartbeat { agent_id },
        O::Deregister { agent_id } => N::Deregister { agent_id },
        O::AcquireLease {
            task_id,
            agent_id,
            ttl_seconds,
        } => N::AcquireLease {
            task_id,
            agent_id,
            ttl_seconds,
        },
        O::RenewLease {
            task_id,
            agent_id,
            token,
            ttl_seconds,
        } => N::RenewLease {
            task_id,
            agent_id,
            token,
            ttl_seconds,
        },
        O::ReleaseLease {
            task_id,
            agent_id,
            token,
        } => N::ReleaseLease {
            task_id,
            agent_id,
            token,
        },
        O::Campaign { group, agent_id } => N::Campaign { group, agent_id },
        O::Resign { group, agent_id } => N::Resign { group, agent_id },
        O::SetPolicy { policy } => N::SetPolicy { policy },
        O::DeletePolicy { id } => N::DeletePolicy { id },
        O::CreateTask {
            kind,
            input,
            required_tools,
            max_retries,
            ttl_seconds,
        } => N::CreateTask {
            kind,
            input,
            required_tools,
            max_retries,
            ttl_seconds,
        },
        O::ClaimTask { agent_id, wait_ms } => N::ClaimTask { agent_id, wait_ms },
        O::CancelClaim { waiter } => N::CancelClaim { waiter },
        O::ReturnTask { task_id, token } => N::ReturnTask { task_id, token },
        O::CompleteTask {
            task_id,
            agent_id,
            output,
        } => N::CompleteTask {
            task_id,
            agent_id,
            output,
        },
        O::FailTask {
            task_id,
            agent_id,
            reason,
        } => N::FailTask {
            task_id,
            agent_id,
            reason,
        },
    }
}
