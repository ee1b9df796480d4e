//! Format version 1, frozen: what release 2dd3316 wrote (its `store::wal::Record`, its whole
//! `core::Command` enum and its `core::snapshot::CoreSnapshot`, with every nested type as it was
//! then), decode-only, and the upgrade of each into version 2.
//!
//! Architecture invariant: nothing here ever changes. postcard wrote these by variant index and
//! field order, so every type keeps every variant and field of 2dd3316 in its order, the 12
//! commands that were never logged included (they hold their indexes). Files in this version
//! are read, never written.

use serde::Deserialize;

use super::v2;

/// 2dd3316's `store::wal::Record`.
#[derive(Debug, Deserialize)]
pub enum Record {
    Apply { now: u64, command: Command },
    Tick { now: u64 },
    Grace { now: u64 },
}

/// 2dd3316's `core::Command`, all 28 variants in their order.
#[derive(Debug, Deserialize)]
pub enum Command {
    Register {
        card: AgentCard,
        ttl_seconds: u32,
    },
    Heartbeat {
        agent_id: String,
    },
    Deregister {
        agent_id: String,
    },
    GetAgent {
        agent_id: String,
    },
    Find {
        query: String,
        tools: Vec<String>,
        limit: u32,
    },
    Watch {
        topics: Vec<String>,
        from_sequence: u64,
    },
    Unwatch {
        subscriber: u64,
    },
    AcquireLease {
        task_id: String,
        agent_id: String,
        ttl_seconds: u32,
    },
    RenewLease {
        task_id: String,
        agent_id: String,
        token: u64,
        ttl_seconds: u32,
    },
    ReleaseLease {
        task_id: String,
        agent_id: String,
        token: u64,
    },
    Campaign {
        group: String,
        agent_id: String,
    },
    Resign {
        group: String,
        agent_id: String,
    },
    WatchElection {
        group: String,
    },
    SetPolicy {
        policy: PolicyInput,
    },
    DeletePolicy {
        id: String,
    },
    ListPolicies {
        subject_prefix: String,
    },
    CheckPolicy {
        subject: String,
        action: String,
        resource: String,
    },
    CreateTask {
        kind: String,
        input: Vec<u8>,
        required_tools: Vec<String>,
        max_retries: u32,
        ttl_seconds: u32,
    },
    ClaimTask {
        agent_id: String,
        wait_ms: u64,
    },
    CancelClaim {
        waiter: u64,
    },
    ReturnTask {
        task_id: String,
        token: u64,
    },
    CompleteTask {
        task_id: String,
        agent_id: String,
        output: Vec<u8>,
    },
    FailTask {
        task_id: String,
        agent_id: String,
        reason: String,
    },
    GetTask {
        task_id: String,
    },
    ListTasks {
        status: Option<TaskStatus>,
        page_size: u32,
        page_token: String,
    },
    ListLeases {
        prefix: String,
        page_size: u32,
        page_token: String,
    },
    ListElections,
    Overview {
        agents_max: u32,
        leases_max: u32,
    },
}

#[derive(Debug, Deserialize)]
pub struct Capability {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Deserialize)]
pub struct AgentCard {
    pub name: String,
    pub description: String,
    pub version: String,
    pub capabilities: Vec<Capability>,
    pub tools: Vec<String>,
    pub metadata: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
pub struct PolicyInput {
    pub id: String,
    pub subject: String,
    pub action: String,
    pub resource: String,
    pub effect: Option<Effect>,
}

#[derive(Debug, Deserialize)]
pub struct Policy {
    pub id: String,
    pub subject: String,
    pub action: String,
    pub resource: String,
    pub effect: Effect,
}

#[derive(Debug, Deserialize)]
pub enum AgentStatus {
    Alive,
    Unreachable,
    Dead,
}

#[derive(Debug, Deserialize)]
pub enum TaskStatus {
    Pending,
    Claimed,
    Completed,
    Failed,
    Dead,
}

#[derive(Debug, Deserialize)]
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

/// 2dd3316's `core::snapshot::CoreSnapshot`.
#[derive(Debug, Deserialize)]
pub struct CoreSnapshot {
    pub now: u64,
    pub rng_seed: [u8; 32],
    pub rng_stream: u64,
    pub rng_word_pos: u128,
    pub hash_seed: u64,
    pub registration_next: u64,
    pub agents: Vec<AgentState>,
    pub token_last: u64,
    pub leases: Vec<LeaseState>,
    pub groups: Vec<GroupState>,
    pub policies: Vec<Policy>,
    pub sequence_next: u64,
    pub events: Vec<Event>,
    pub tasks: Vec<TaskState>,
    pub task_order_next: u64,
    pub waiters: Vec<WaiterState>,
    pub waiter_next: u64,
}

/// Ids were `Id128(u128)`, a newtype postcard writes as the bare u128.
#[derive(Debug, Deserialize)]
pub struct AgentState {
    pub id: u128,
    pub card: AgentCard,
    pub status: AgentStatus,
    pub registered_at: u64,
    pub last_heartbeat_at: u64,
    pub liveness_base: u64,
    pub ttl_ms: u64,
    pub registration: u64,
    pub dead_at: Option<u64>,
    pub groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct LeaseState {
    pub task_id: String,
    pub holder: u128,
    pub token: u64,
    pub acquired_at: u64,
    pub expires_at: u64,
    pub ttl_ms: u64,
}

#[derive(Debug, Deserialize)]
pub struct GroupState {
    pub name: String,
    pub candidates: Vec<u128>,
    pub term: u64,
    pub elected_at: u64,
}

#[derive(Debug, Deserialize)]
pub struct TaskState {
    pub view: TaskView,
    pub order: u64,
    pub finished_at: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct WaiterState {
    pub id: u64,
    pub agent_id: u128,
    pub deadline: u64,
}

#[derive(Debug, Deserialize)]
pub struct Event {
    pub sequence: u64,
    pub topic: Topic,
    pub occurred_at: u64,
    pub payload: EventPayload,
}

#[derive(Debug, Deserialize)]
pub enum EventPayload {
    Agent(AgentView),
    Lease(LeaseView),
    Election(ElectionView),
    Task(TaskView),
}

#[derive(Debug, Deserialize)]
pub struct AgentView {
    pub agent_id: u128,
    pub card: AgentCard,
    pub status: AgentStatus,
    pub registered_at: u64,
    pub last_heartbeat_at: u64,
    pub ttl_ms: u64,
}

#[derive(Debug, Deserialize)]
pub struct LeaseView {
    pub task_id: String,
    pub holder: u128,
    pub token: u64,
    pub acquired_at: u64,
    pub expires_at: u64,
}

#[derive(Debug, Deserialize)]
pub struct ElectionView {
    pub group: String,
    pub leader: Option<u128>,
    pub term: u64,
    pub elected_at: u64,
}

#[derive(Debug, Deserialize)]
pub struct TaskView {
    pub id: u128,
    pub kind: String,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    pub status: TaskStatus,
    pub required_tools: Vec<String>,
    pub max_retries: u32,
    pub retry_count: u32,
    pub claimed_by: Option<u128>,
    pub failure_reason: String,
    pub created_at: u64,
    pub claimed_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub ttl_ms: u64,
}

/// A version 1 record as version 2 has it: no principal (version 1 did not record one). A read
/// or a subscription in a log is an error: no release ever logged one.
pub fn upgrade_record(record: Record) -> Result<v2::Record<'static>, String> {
    Ok(match record {
        Record::Apply { now, command } => v2::Record::Apply {
            now,
            command: upgrade_command(command)?,
            principal: None,
        },
        Record::Tick { now } => v2::Record::Tick { now },
        Record::Grace { now } => v2::Record::Grace { now },
    })
}

fn upgrade_command(command: Command) -> Result<v2::LoggedCommand<'static>, String> {
    use v2::LoggedCommand as L;
    Ok(match command {
        Command::Register { card, ttl_seconds } => L::Register {
            card: upgrade_card(card),
            ttl_seconds,
        },
        Command::Heartbeat { agent_id } => L::Heartbeat {
            agent_id: agent_id.into(),
        },
        Command::Deregister { agent_id } => L::Deregister {
            agent_id: agent_id.into(),
        },
        Command::AcquireLease {
            task_id,
            agent_id,
            ttl_seconds,
        } => L::AcquireLease {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
            ttl_seconds,
        },
        Command::RenewLease {
            task_id,
            agent_id,
            token,
            ttl_seconds,
        } => L::RenewLease {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
            token,
            ttl_seconds,
        },
        Command::ReleaseLease {
            task_id,
            agent_id,
            token,
        } => L::ReleaseLease {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
            token,
        },
        Command::Campaign { group, agent_id } => L::Campaign {
            group: group.into(),
            agent_id: agent_id.into(),
        },
        Command::Resign { group, agent_id } => L::Resign {
            group: group.into(),
            agent_id: agent_id.into(),
        },
        Command::SetPolicy { policy } => L::SetPolicy {
            policy: v2::PolicyInput {
                id: policy.id.into(),
                subject: policy.subject.into(),
                action: policy.action.into(),
                resource: policy.resource.into(),
                effect: policy.effect.map(upgrade_effect),
            },
        },
        Command::DeletePolicy { id } => L::DeletePolicy { id: id.into() },
        Command::CreateTask {
            kind,
            input,
            required_tools,
            max_retries,
            ttl_seconds,
        } => L::CreateTask {
            kind: kind.into(),
            input: input.into(),
            required_tools: required_tools.into(),
            max_retries,
            ttl_seconds,
        },
        Command::ClaimTask { agent_id, wait_ms } => L::ClaimTask {
            agent_id: agent_id.into(),
            wait_ms,
        },
        Command::CancelClaim { waiter } => L::CancelClaim { waiter },
        Command::ReturnTask { task_id, token } => L::ReturnTask {
            task_id: task_id.into(),
            token,
        },
        Command::CompleteTask {
            task_id,
            agent_id,
            output,
        } => L::CompleteTask {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
            output: output.into(),
        },
        Command::FailTask {
            task_id,
            agent_id,
            reason,
        } => L::FailTask {
            task_id: task_id.into(),
            agent_id: agent_id.into(),
            reason: reason.into(),
        },
        Command::GetAgent { .. }
        | Command::Find { .. }
        | Command::Watch { .. }
        | Command::Unwatch { .. }
        | Command::WatchElection { .. }
        | Command::ListPolicies { .. }
        | Command::CheckPolicy { .. }
        | Command::GetTask { .. }
        | Command::ListTasks { .. }
        | Command::ListLeases { .. }
        | Command::ListElections
        | Command::Overview { .. } => {
            return Err(format!("a read-only command in the log: {command:?}"));
        }
    })
}

fn upgrade_card(card: AgentCard) -> v2::Card<'static> {
    v2::Card {
        name: card.name.into(),
        description: card.description.into(),
        version: card.version.into(),
        capabilities: card
            .capabilities
            .into_iter()
            .map(|c| v2::Capability {
                name: c.name.into(),
                description: c.description.into(),
            })
            .collect(),
        tools: card.tools.into(),
        metadata: card.metadata.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
    }
}

fn upgrade_effect(effect: Effect) -> v2::Effect {
    match effect {
        Effect::Allow => v2::Effect::Allow,
        Effect::Deny => v2::Effect::Deny,
    }
}

fn upgrade_status(status: AgentStatus) -> v2::AgentStatus {
    match status {
        AgentStatus::Alive => v2::AgentStatus::Alive,
        AgentStatus::Unreachable => v2::AgentStatus::Unreachable,
        AgentStatus::Dead => v2::AgentStatus::Dead,
    }
}

fn upgrade_task_status(status: TaskStatus) -> v2::TaskStatus {
    match status {
        TaskStatus::Pending => v2::TaskStatus::Pending,
        TaskStatus::Claimed => v2::TaskStatus::Claimed,
        TaskStatus::Completed => v2::TaskStatus::Completed,
        TaskStatus::Failed => v2::TaskStatus::Failed,
        TaskStatus::Dead => v2::TaskStatus::Dead,
    }
}

fn upgrade_topic(topic: Topic) -> v2::Topic {
    match topic {
        Topic::AgentRegistered => v2::Topic::AgentRegistered,
        Topic::AgentUnreachable => v2::Topic::AgentUnreachable,
        Topic::AgentRecovered => v2::Topic::AgentRecovered,
        Topic::AgentDied => v2::Topic::AgentDied,
        Topic::LeaseAcquired => v2::Topic::LeaseAcquired,
        Topic::LeaseRenewed => v2::Topic::LeaseRenewed,
        Topic::LeaseExpired => v2::Topic::LeaseExpired,
        Topic::LeaseReleased => v2::Topic::LeaseReleased,
        Topic::LeaderChanged => v2::Topic::LeaderChanged,
        Topic::TaskCreated => v2::Topic::TaskCreated,
        Topic::TaskClaimed => v2::Topic::TaskClaimed,
        Topic::TaskCompleted => v2::Topic::TaskCompleted,
        Topic::TaskFailed => v2::Topic::TaskFailed,
        Topic::TaskDead => v2::Topic::TaskDead,
    }
}

/// A version 1 snapshot as version 2 has it: no agent is bound to a token (version 1 had no
/// agent tokens).
pub fn upgrade_snapshot(snapshot: CoreSnapshot) -> v2::Snapshot<'static> {
    v2::Snapshot {
        now: snapshot.now,
        rng_seed: snapshot.rng_seed,
        rng_stream: snapshot.rng_stream,
        rng_word_pos: snapshot.rng_word_pos,
        hash_seed: snapshot.hash_seed,
        registration_next: snapshot.registration_next,
        agents: snapshot
            .agents
            .into_iter()
            .map(|a| v2::AgentState {
                id: v2::Id(a.id),
                card: upgrade_card(a.card),
                status: upgrade_status(a.status),
                registered_at: a.registered_at,
                last_heartbeat_at: a.last_heartbeat_at,
                liveness_base: a.liveness_base,
                ttl_ms: a.ttl_ms,
                registration: a.registration,
                dead_at: a.dead_at,
                groups: a.groups.into(),
                owner: None,
            })
            .collect(),
        token_last: snapshot.token_last,
        leases: snapshot
            .leases
            .into_iter()
            .map(|l| v2::LeaseState {
                task_id: l.task_id.into(),
                holder: v2::Id(l.holder),
                token: l.token,
                acquired_at: l.acquired_at,
                expires_at: l.expires_at,
                ttl_ms: l.ttl_ms,
            })
            .collect(),
        groups: snapshot
            .groups
            .into_iter()
            .map(|g| v2::GroupState {
                name: g.name.into(),
                candidates: g.candidates.into_iter().map(v2::Id).collect(),
                term: g.term,
                elected_at: g.elected_at,
            })
            .collect(),
        policies: snapshot
            .policies
            .into_iter()
            .map(|p| v2::Policy {
                id: p.id.into(),
                subject: p.subject.into(),
                action: p.action.into(),
                resource: p.resource.into(),
                effect: upgrade_effect(p.effect),
            })
            .collect(),
        sequence_next: snapshot.sequence_next,
        events: snapshot.events.into_iter().map(upgrade_event).collect(),
        tasks: snapshot
            .tasks
            .into_iter()
            .map(|t| v2::TaskState {
                view: upgrade_task_view(t.view),
                order: t.order,
                finished_at: t.finished_at,
            })
            .collect(),
        task_order_next: snapshot.task_order_next,
        waiters: snapshot
            .waiters
            .into_iter()
            .map(|w| v2::WaiterState {
                id: w.id,
                agent_id: v2::Id(w.agent_id),
                deadline: w.deadline,
            })
            .collect(),
        waiter_next: snapshot.waiter_next,
    }
}

fn upgrade_event(event: Event) -> v2::Event<'static> {
    let payload = match event.payload {
        EventPayload::Agent(a) => v2::EventPayload::Agent(v2::AgentView {
            agent_id: v2::Id(a.agent_id),
            card: upgrade_card(a.card),
            status: upgrade_status(a.status),
            registered_at: a.registered_at,
            last_heartbeat_at: a.last_heartbeat_at,
            ttl_ms: a.ttl_ms,
        }),
        EventPayload::Lease(l) => v2::EventPayload::Lease(v2::LeaseView {
            task_id: l.task_id.into(),
            holder: v2::Id(l.holder),
            token: l.token,
            acquired_at: l.acquired_at,
            expires_at: l.expires_at,
        }),
        EventPayload::Election(e) => v2::EventPayload::Election(v2::ElectionView {
            group: e.group.into(),
            leader: e.leader.map(v2::Id),
            term: e.term,
            elected_at: e.elected_at,
        }),
        EventPayload::Task(t) => v2::EventPayload::Task(upgrade_task_view(t)),
    };
    v2::Event {
        sequence: event.sequence,
        topic: upgrade_topic(event.topic),
        occurred_at: event.occurred_at,
        payload,
    }
}

fn upgrade_task_view(task: TaskView) -> v2::TaskView<'static> {
    v2::TaskView {
        id: v2::Id(task.id),
        kind: task.kind.into(),
        input: task.input.into(),
        output: task.output.into(),
        status: upgrade_task_status(task.status),
        required_tools: task.required_tools.into_iter().map(Into::into).collect(),
        max_retries: task.max_retries,
        retry_count: task.retry_count,
        claimed_by: task.claimed_by.map(v2::Id),
        failure_reason: task.failure_reason.into(),
        created_at: task.created_at,
        claimed_at: task.claimed_at,
        completed_at: task.completed_at,
        ttl_ms: task.ttl_ms,
    }
}
