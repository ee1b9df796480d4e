//! Format version 2, frozen: the log record (`Record`, whose command is a `LoggedCommand`) and
//! the snapshot (`Snapshot`), as serde types that postcard encodes, and the upgrade of each into
//! version 3. Version 3 shares the types that hold no agent card (the same bytes).
//!
//! Architecture invariant: these types are the bytes on disk. postcard writes an enum's variant
//! by its index and a struct's fields in order, with no names, so any change here (a variant
//! moved, added or removed, a field added, removed, reordered or retyped) changes what files mean.
//! The golden-bytes tests (`golden.rs`) fail on such a change: bump the format version instead,
//! freeze this file as it is (decode-only) and write the next version beside it. Nothing here
//! depends on a core type; `convert.rs` maps them.
//!
//! Text and bytes are `Cow`s: encoding borrows them from the core's values (no copy on the core
//! thread's write path), decoding owns them.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::v3;

pub type Text<'a> = Cow<'a, str>;
pub type Bytes<'a> = Cow<'a, [u8]>;
pub type Texts<'a> = Cow<'a, [String]>;

/// A 128-bit id (agent, task): postcard's varint of the u128.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Id(pub u128);

/// The digest of the agent token that made a call: 16 raw bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token(pub [u8; 16]);

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
pub struct Capability<'a> {
    pub name: Text<'a>,
    pub description: Text<'a>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Card<'a> {
    pub name: Text<'a>,
    pub description: Text<'a>,
    pub version: Text<'a>,
    pub capabilities: Vec<Capability<'a>>,
    pub tools: Texts<'a>,
    pub metadata: Vec<(Text<'a>, Text<'a>)>,
}

/// 0 Allow, 1 Deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyInput<'a> {
    pub id: Text<'a>,
    pub subject: Text<'a>,
    pub action: Text<'a>,
    pub resource: Text<'a>,
    pub effect: Option<Effect>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy<'a> {
    pub id: Text<'a>,
    pub subject: Text<'a>,
    pub action: Text<'a>,
    pub resource: Text<'a>,
    pub effect: Effect,
}

/// 0 Alive, 1 Unreachable, 2 Dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentStatus {
    Alive,
    Unreachable,
    Dead,
}

/// 0 Pending, 1 Claimed, 2 Completed, 3 Failed, 4 Dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    Pending,
    Claimed,
    Completed,
    Failed,
    Dead,
}

/// Event topics, indexes 0 to 13 in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Topic {
    AgentRegistered,
    AgentUnreachable,
    AgentRecovered,
    AgentDied,
    LeaseAcquired,
    LeaseRenewed,
    LeaseExpired,
    LeaseReleased,
    LeaderChanged,
    TaskCreated,
    TaskClaimed,
    TaskCompleted,
    TaskFailed,
    TaskDead,
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
pub struct LeaseState<'a> {
    pub task_id: Text<'a>,
    pub holder: Id,
    pub token: u64,
    pub acquired_at: u64,
    pub expires_at: u64,
    pub ttl_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupState<'a> {
    pub name: Text<'a>,
    pub candidates: Vec<Id>,
    pub term: u64,
    pub elected_at: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskState<'a> {
    pub view: TaskView<'a>,
    pub order: u64,
    pub finished_at: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaiterState {
    pub id: u64,
    pub agent_id: Id,
    pub deadline: u64,
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseView<'a> {
    pub task_id: Text<'a>,
    pub holder: Id,
    pub token: u64,
    pub acquired_at: u64,
    pub expires_at: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElectionView<'a> {
    pub group: Text<'a>,
    pub leader: Option<Id>,
    pub term: u64,
    pub elected_at: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskView<'a> {
    pub id: Id,
    pub kind: Text<'a>,
    pub input: Bytes<'a>,
    pub output: Bytes<'a>,
    pub status: TaskStatus,
    pub required_tools: Vec<Text<'a>>,
    pub max_retries: u32,
    pub retry_count: u32,
    pub claimed_by: Option<Id>,
    pub failure_reason: Text<'a>,
    pub created_at: u64,
    pub claimed_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub ttl_ms: u64,
}

// ── The upgrade into version 3: every card gains an empty A2A card; nothing else changes. ──

pub fn upgrade_record(record: Record<'_>) -> v3::Record<'_> {
    match record {
        Record::Apply {
            now,
            command,
            principal,
        } => v3::Record::Apply {
            now,
            command: upgrade_command(command),
            principal,
        },
        Record::Tick { now } => v3::Record::Tick { now },
        Record::Grace { now } => v3::Record::Grace { now },
    }
}

fn upgrade_command(command: LoggedCommand<'_>) -> v3::LoggedCommand<'_> {
    use LoggedCommand as L;
    use v3::LoggedCommand as N;
    match command {
        L::Register { card, ttl_seconds } => N::Register {
            card: upgrade_card(card),
            ttl_seconds,
        },
        L::Heartbeat { agent_id } => N::Heartbeat { agent_id },
        L::Deregister { agent_id } => N::Deregister { agent_id },
        L::AcquireLease {
            task_id,
            agent_id,
            ttl_seconds,
        } => N::AcquireLease {
            task_id,
            agent_id,
            ttl_seconds,
        },
        L::RenewLease {
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
        L::ReleaseLease {
            task_id,
            agent_id,
            token,
        } => N::ReleaseLease {
            task_id,
            agent_id,
            token,
        },
        L::Campaign { group, agent_id } => N::Campaign { group, agent_id },
        L::Resign { group, agent_id } => N::Resign { group, agent_id },
        L::SetPolicy { policy } => N::SetPolicy { policy },
        L::DeletePolicy { id } => N::DeletePolicy { id },
        L::CreateTask {
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
        L::ClaimTask { agent_id, wait_ms } => N::ClaimTask { agent_id, wait_ms },
        L::CancelClaim { waiter } => N::CancelClaim { waiter },
        L::ReturnTask { task_id, token } => N::ReturnTask { task_id, token },
        L::CompleteTask {
            task_id,
            agent_id,
            output,
        } => N::CompleteTask {
            task_id,
            agent_id,
            output,
        },
        L::FailTask {
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

fn upgrade_card(card: Card<'_>) -> v3::Card<'_> {
    let Card {
        name,
        description,
        version,
        capabilities,
        tools,
        metadata,
    } = card;
    v3::Card {
        name,
        description,
        version,
        capabilities,
        tools,
        metadata,
        a2a_card: Text::Borrowed(""),
    }
}

pub fn upgrade_snapshot(snapshot: Snapshot<'_>) -> v3::Snapshot<'_> {
    let Snapshot {
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
    v3::Snapshot {
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
        events: events.into_iter().map(upgrade_event).collect(),
        tasks,
        task_order_next,
        waiters,
        waiter_next,
    }
}

fn upgrade_agent(agent: AgentState<'_>) -> v3::AgentState<'_> {
    let AgentState {
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
    } = agent;
    v3::AgentState {
        id,
        card: upgrade_card(card),
        status,
        registered_at,
        last_heartbeat_at,
        liveness_base,
        ttl_ms,
        registration,
        dead_at,
        groups,
        owner,
    }
}

fn upgrade_event(event: Event<'_>) -> v3::Event<'_> {
    let Event {
        sequence,
        topic,
        occurred_at,
        payload,
    } = event;
    let payload = match payload {
        EventPayload::Agent(view) => v3::EventPayload::Agent(upgrade_view(view)),
        EventPayload::Lease(view) => v3::EventPayload::Lease(view),
        EventPayload::Election(view) => v3::EventPayload::Election(view),
        EventPayload::Task(view) => v3::EventPayload::Task(view),
    };
    v3::Event {
        sequence,
        topic,
        occurred_at,
        payload,
    }
}

fn upgrade_view(view: AgentView<'_>) -> v3::AgentView<'_> {
    let AgentView {
        agent_id,
        card,
        status,
        registered_at,
        last_heartbeat_at,
        ttl_ms,
    } = view;
    v3::AgentView {
        agent_id,
        card: upgrade_card(card),
        status,
        registered_at,
        last_heartbeat_at,
        ttl_ms,
    }
}
