//! Today's core values to and from the current format version's types (`v7`): the only place
//! that knows both. Encoding borrows from the core's values; decoding moves into them.
//!
//! Architecture invariant: every match here is exhaustive, with no wildcard arm, so a new
//! command, field or variant in the core does not compile until someone decides how (or
//! whether) it reaches the disk. When the format version is bumped, this file moves on to the
//! new version's types and the old version gets an upgrade into the new one (as `v1` has).

use std::borrow::Cow;
use std::sync::Arc;

use super::v7;
use crate::core::entry::Entry;
use crate::core::events::{AgentView, ElectionView, Event, EventPayload, LeaseView, Topic};
use crate::core::search::card_text::CardDigest;
use crate::core::search::vectors::{CardVector, ModelVector};
use crate::core::sessions::{Created, RequestId, SessionState};
use crate::core::snapshot::{AgentState, CoreSnapshot, GroupState, LeaseState, TaskState, WaiterState};
use crate::core::tasks::{TaskStatus, TaskView, WaiterId};
use crate::core::types::{AgentCard, AgentStatus, Capability, Effect, Id128, Policy, TokenId};
use crate::core::{Command, PolicyInput};

fn text(value: &str) -> v7::Text<'_> {
    Cow::Borrowed(value)
}

fn arc(value: v7::Text<'_>) -> Arc<str> {
    Arc::from(value.as_ref())
}

/// The log record of `entry`. Panics on a command that does not change state: the driver logs
/// only commands for which `Command::is_logged` holds.
pub fn record(entry: &Entry) -> v7::Record<'_> {
    match entry {
        Entry::Apply {
            now,
            command,
            principal,
        } => {
            let (request, command) = match command {
                Command::Once { request, command } => (Some(*request), &**command),
                command => (None, command),
            };
            v7::Record::Apply {
                now: *now,
                command: logged_command(command)
                    .unwrap_or_else(|| panic!("a {} is logged, but it changes no state", command.name())),
                principal: principal.map(|t| v7::Token(t.0)),
                request: request.map(|r| v7::RequestId {
                    client: r.client,
                    seq: r.seq,
                }),
            }
        }
        Entry::Tick { now } => v7::Record::Tick { now: *now },
        Entry::Grace { now } => v7::Record::Grace { now: *now },
    }
}

pub fn entry(record: v7::Record<'_>) -> Entry {
    match record {
        v7::Record::Apply {
            now,
            command: logged,
            principal,
            request,
        } => Entry::Apply {
            now,
            command: match request {
                None => command(logged),
                Some(request) => Command::Once {
                    request: RequestId {
                        client: request.client,
                        seq: request.seq,
                    },
                    command: Box::new(command(logged)),
                },
            },
            principal: principal.map(|t| TokenId(t.0)),
        },
        v7::Record::Tick { now } => Entry::Tick { now },
        v7::Record::Grace { now } => Entry::Grace { now },
    }
}

/// The logged form of `command`, or `None` for a read or a subscription (never logged). Agrees
/// with `Command::is_logged` (tested).
pub fn logged_command(command: &Command) -> Option<v7::LoggedCommand<'_>> {
    use v7::LoggedCommand as L;
    Some(match command {
        Command::Register {
            card,
            ttl_seconds,
            vector,
        } => L::Register {
            card: card_of(card),
            ttl_seconds: *ttl_seconds,
            vector: vector.as_ref().map(|v| v7::CardVector {
                card_digest: v.card_digest.0,
                vector: model_floats(&v.vector),
            }),
        },
        Command::Heartbeat { agent_id } => L::Heartbeat {
            agent_id: text(agent_id),
        },
        Command::Deregister { agent_id } => L::Deregister {
            agent_id: text(agent_id),
        },
        Command::AcquireLease {
            task_id,
            agent_id,
            ttl_seconds,
        } => L::AcquireLease {
            task_id: text(task_id),
            agent_id: text(agent_id),
            ttl_seconds: *ttl_seconds,
        },
        Command::RenewLease {
            task_id,
            agent_id,
            token,
            ttl_seconds,
        } => L::RenewLease {
            task_id: text(task_id),
            agent_id: text(agent_id),
            token: *token,
            ttl_seconds: *ttl_seconds,
        },
        Command::ReleaseLease {
            task_id,
            agent_id,
            token,
        } => L::ReleaseLease {
            task_id: text(task_id),
            agent_id: text(agent_id),
            token: *token,
        },
        Command::Campaign { group, agent_id } => L::Campaign {
            group: text(group),
            agent_id: text(agent_id),
        },
        Command::Resign { group, agent_id } => L::Resign {
            group: text(group),
            agent_id: text(agent_id),
        },
        Command::SetPolicy { policy } => L::SetPolicy {
            policy: v7::PolicyInput {
                id: text(&policy.id),
                subject: text(&policy.subject),
                action: text(&policy.action),
                resource: text(&policy.resource),
                effect: policy.effect.map(effect_of),
            },
        },
        Command::DeletePolicy { id } => L::DeletePolicy { id: text(id) },
        Command::CreateTask {
            kind,
            input,
            required_tools,
            max_retries,
            ttl_seconds,
        } => L::CreateTask {
            kind: text(kind),
            input: Cow::Borrowed(input),
            required_tools: Cow::Borrowed(required_tools),
            max_retries: *max_retries,
            ttl_seconds: *ttl_seconds,
        },
        Command::ClaimTask { agent_id, wait_ms } => L::ClaimTask {
            agent_id: text(agent_id),
            wait_ms: *wait_ms,
        },
        Command::CancelClaim { waiter } => L::CancelClaim { waiter: waiter.0 },
        Command::ReturnTask { task_id, token } => L::ReturnTask {
            task_id: text(task_id),
            token: *token,
        },
        Command::CompleteTask {
            task_id,
            agent_id,
            output,
        } => L::CompleteTask {
            task_id: text(task_id),
            agent_id: text(agent_id),
            output: Cow::Borrowed(output),
        },
        Command::FailTask {
            task_id,
            agent_id,
            reason,
        } => L::FailTask {
            task_id: text(task_id),
            agent_id: text(agent_id),
            reason: text(reason),
        },
        Command::SetCardVector {
            agent_id,
            card_digest,
            vector,
        } => L::SetModelCardVector {
            agent_id: text(agent_id),
            card_digest: card_digest.0,
            model: text(&vector.model),
            vector: Cow::Borrowed(&vector.values),
        },
        Command::KeepAlive { items } => L::KeepAlive {
            items: items.iter().map(logged_command).collect::<Option<Vec<_>>>()?,
        },
        Command::GetAgent { .. }
        | Command::Find { .. }
        | Command::CardsWithoutVector { .. }
        | Command::Watch { .. }
        | Command::Unwatch { .. }
        | Command::WatchElection { .. }
        | Command::ListPolicies { .. }
        | Command::CheckPolicy { .. }
        | Command::GetTask { .. }
        | Command::ListTasks { .. }
        | Command::ListLeases { .. }
        | Command::ListElections { .. }
        | Command::Overview { .. }
        | Command::Now
        | Command::ListAgents { .. } => return None,
        // A numbered request is unwrapped by `record`; one inside another is never made (the
        // server numbers plain commands only, and the core refuses it).
        Command::Once { .. } => return None,
    })
}

pub fn command(logged: v7::LoggedCommand<'_>) -> Command {
    use v7::LoggedCommand as L;
    match logged {
        L::Register {
            card,
            ttl_seconds,
            vector,
        } => Command::Register {
            card: Box::new(card_from(card)),
            ttl_seconds,
            vector: vector.map(|v| {
                Arc::new(CardVector {
                    card_digest: CardDigest(v.card_digest),
                    vector: model_vector(v.vector),
                })
            }),
        },
        L::Heartbeat { agent_id } => Command::Heartbeat {
            agent_id: agent_id.into_owned(),
        },
        L::Deregister { agent_id } => Command::Deregister {
            agent_id: agent_id.into_owned(),
        },
        L::AcquireLease {
            task_id,
            agent_id,
            ttl_seconds,
        } => Command::AcquireLease {
            task_id: task_id.into_owned(),
            agent_id: agent_id.into_owned(),
            ttl_seconds,
        },
        L::RenewLease {
            task_id,
            agent_id,
            token,
            ttl_seconds,
        } => Command::RenewLease {
            task_id: task_id.into_owned(),
            agent_id: agent_id.into_owned(),
            token,
            ttl_seconds,
        },
        L::ReleaseLease {
            task_id,
            agent_id,
            token,
        } => Command::ReleaseLease {
            task_id: task_id.into_owned(),
            agent_id: agent_id.into_owned(),
            token,
        },
        L::Campaign { group, agent_id } => Command::Campaign {
            group: group.into_owned(),
            agent_id: agent_id.into_owned(),
        },
        L::Resign { group, agent_id } => Command::Resign {
            group: group.into_owned(),
            agent_id: agent_id.into_owned(),
        },
        L::SetPolicy { policy } => Command::SetPolicy {
            policy: Box::new(PolicyInput {
                id: policy.id.into_owned(),
                subject: policy.subject.into_owned(),
                action: policy.action.into_owned(),
                resource: policy.resource.into_owned(),
                effect: policy.effect.map(effect_from),
            }),
        },
        L::DeletePolicy { id } => Command::DeletePolicy { id: id.into_owned() },
        L::CreateTask {
            kind,
            input,
            required_tools,
            max_retries,
            ttl_seconds,
        } => Command::CreateTask {
            kind: kind.into_owned(),
            input: input.into_owned(),
            required_tools: required_tools.into_owned(),
            max_retries,
            ttl_seconds,
        },
        L::ClaimTask { agent_id, wait_ms } => Command::ClaimTask {
            agent_id: agent_id.into_owned(),
            wait_ms,
        },
        L::CancelClaim { waiter } => Command::CancelClaim {
            waiter: WaiterId(waiter),
        },
        L::ReturnTask { task_id, token } => Command::ReturnTask {
            task_id: task_id.into_owned(),
            token,
        },
        L::CompleteTask {
            task_id,
            agent_id,
            output,
        } => Command::CompleteTask {
            task_id: task_id.into_owned(),
            agent_id: agent_id.into_owned(),
            output: output.into_owned(),
        },
        L::FailTask {
            task_id,
            agent_id,
            reason,
        } => Command::FailTask {
            task_id: task_id.into_owned(),
            agent_id: agent_id.into_owned(),
            reason: reason.into_owned(),
        },
        L::SetCardVector {
            agent_id,
            card_digest,
            vector,
        } => Command::SetCardVector {
            agent_id: agent_id.into_owned(),
            card_digest: CardDigest(card_digest),
            vector: ModelVector::new(v7::VERSION_5_MODEL, vector.into_owned()),
        },
        L::SetModelCardVector {
            agent_id,
            card_digest,
            model,
            vector,
        } => Command::SetCardVector {
            agent_id: agent_id.into_owned(),
            card_digest: CardDigest(card_digest),
            vector: ModelVector::new(&model, vector.into_owned()),
        },
        L::KeepAlive { items } => Command::KeepAlive {
            items: items.into_iter().map(command).collect(),
        },
    }
}

fn model_floats(vector: &ModelVector) -> v7::ModelFloats<'_> {
    v7::ModelFloats {
        model: text(&vector.model),
        values: Cow::Borrowed(&vector.values),
    }
}

fn model_vector(vector: v7::ModelFloats<'_>) -> ModelVector {
    ModelVector::new(&vector.model, vector.values.into_owned())
}

fn card_of(card: &AgentCard) -> v7::Card<'_> {
    let AgentCard {
        name,
        description,
        version,
        capabilities,
        tools,
        metadata,
        a2a_card,
    } = card;
    v7::Card {
        name: text(name),
        description: text(description),
        version: text(version),
        capabilities: capabilities
            .iter()
            .map(|c| v7::Capability {
                name: text(&c.name),
                description: text(&c.description),
            })
            .collect(),
        tools: Cow::Borrowed(tools),
        metadata: metadata.iter().map(|(k, v)| (text(k), text(v))).collect(),
        a2a_card: text(a2a_card),
    }
}

fn card_from(card: v7::Card<'_>) -> AgentCard {
    AgentCard {
        name: card.name.into_owned(),
        description: card.description.into_owned(),
        version: card.version.into_owned(),
        capabilities: card
            .capabilities
            .into_iter()
            .map(|c| Capability {
                name: c.name.into_owned(),
                description: c.description.into_owned(),
            })
            .collect(),
        tools: card.tools.into_owned(),
        metadata: card
            .metadata
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        a2a_card: card.a2a_card.into_owned(),
    }
}

fn effect_of(effect: Effect) -> v7::Effect {
    match effect {
        Effect::Allow => v7::Effect::Allow,
        Effect::Deny => v7::Effect::Deny,
    }
}

fn effect_from(effect: v7::Effect) -> Effect {
    match effect {
        v7::Effect::Allow => Effect::Allow,
        v7::Effect::Deny => Effect::Deny,
    }
}

fn status_of(status: AgentStatus) -> v7::AgentStatus {
    match status {
        AgentStatus::Alive => v7::AgentStatus::Alive,
        AgentStatus::Unreachable => v7::AgentStatus::Unreachable,
        AgentStatus::Dead => v7::AgentStatus::Dead,
    }
}

fn status_from(status: v7::AgentStatus) -> AgentStatus {
    match status {
        v7::AgentStatus::Alive => AgentStatus::Alive,
        v7::AgentStatus::Unreachable => AgentStatus::Unreachable,
        v7::AgentStatus::Dead => AgentStatus::Dead,
    }
}

fn task_status_of(status: TaskStatus) -> v7::TaskStatus {
    match status {
        TaskStatus::Pending => v7::TaskStatus::Pending,
        TaskStatus::Claimed => v7::TaskStatus::Claimed,
        TaskStatus::Completed => v7::TaskStatus::Completed,
        TaskStatus::Failed => v7::TaskStatus::Failed,
        TaskStatus::Dead => v7::TaskStatus::Dead,
    }
}

fn task_status_from(status: v7::TaskStatus) -> TaskStatus {
    match status {
        v7::TaskStatus::Pending => TaskStatus::Pending,
        v7::TaskStatus::Claimed => TaskStatus::Claimed,
        v7::TaskStatus::Completed => TaskStatus::Completed,
        v7::TaskStatus::Failed => TaskStatus::Failed,
        v7::TaskStatus::Dead => TaskStatus::Dead,
    }
}

/// Topics pair up by position in both enums; the match keeps them from drifting apart.
fn topic_of(topic: Topic) -> v7::Topic {
    match topic {
        Topic::AgentRegistered => v7::Topic::AgentRegistered,
        Topic::AgentUnreachable => v7::Topic::AgentUnreachable,
        Topic::AgentRecovered => v7::Topic::AgentRecovered,
        Topic::AgentDied => v7::Topic::AgentDied,
        Topic::LeaseAcquired => v7::Topic::LeaseAcquired,
        Topic::LeaseRenewed => v7::Topic::LeaseRenewed,
        Topic::LeaseExpired => v7::Topic::LeaseExpired,
        Topic::LeaseReleased => v7::Topic::LeaseReleased,
        Topic::LeaderChanged => v7::Topic::LeaderChanged,
        Topic::TaskCreated => v7::Topic::TaskCreated,
        Topic::TaskClaimed => v7::Topic::TaskClaimed,
        Topic::TaskCompleted => v7::Topic::TaskCompleted,
        Topic::TaskFailed => v7::Topic::TaskFailed,
        Topic::TaskDead => v7::Topic::TaskDead,
    }
}

fn topic_from(topic: v7::Topic) -> Topic {
    match topic {
        v7::Topic::AgentRegistered => Topic::AgentRegistered,
        v7::Topic::AgentUnreachable => Topic::AgentUnreachable,
        v7::Topic::AgentRecovered => Topic::AgentRecovered,
        v7::Topic::AgentDied => Topic::AgentDied,
        v7::Topic::LeaseAcquired => Topic::LeaseAcquired,
        v7::Topic::LeaseRenewed => Topic::LeaseRenewed,
        v7::Topic::LeaseExpired => Topic::LeaseExpired,
        v7::Topic::LeaseReleased => Topic::LeaseReleased,
        v7::Topic::LeaderChanged => Topic::LeaderChanged,
        v7::Topic::TaskCreated => Topic::TaskCreated,
        v7::Topic::TaskClaimed => Topic::TaskClaimed,
        v7::Topic::TaskCompleted => Topic::TaskCompleted,
        v7::Topic::TaskFailed => Topic::TaskFailed,
        v7::Topic::TaskDead => Topic::TaskDead,
    }
}

fn id(value: Id128) -> v7::Id {
    v7::Id(value.0)
}

fn id_from(value: v7::Id) -> Id128 {
    Id128(value.0)
}

/// The snapshot's encoding form, borrowing every text and byte string from `snapshot`.
pub fn snapshot(snapshot: &CoreSnapshot) -> v7::Snapshot<'_> {
    let CoreSnapshot {
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
    v7::Snapshot {
        now: *now,
        rng_seed: *rng_seed,
        rng_stream: *rng_stream,
        rng_word_pos: *rng_word_pos,
        hash_seed: *hash_seed,
        registration_next: *registration_next,
        agents: agents.iter().map(agent_state_of).collect(),
        token_last: *token_last,
        leases: leases
            .iter()
            .map(|l| v7::LeaseState {
                task_id: text(&l.task_id),
                holder: id(l.holder),
                token: l.token,
                acquired_at: l.acquired_at,
                expires_at: l.expires_at,
                ttl_ms: l.ttl_ms,
            })
            .collect(),
        groups: groups
            .iter()
            .map(|g| v7::GroupState {
                name: text(&g.name),
                candidates: g.candidates.iter().copied().map(id).collect(),
                term: g.term,
                elected_at: g.elected_at,
            })
            .collect(),
        policies: policies.iter().map(policy_of).collect(),
        sequence_next: *sequence_next,
        events: events.iter().map(event_of).collect(),
        tasks: tasks
            .iter()
            .map(|t| v7::TaskState {
                view: task_view_of(&t.view),
                order: t.order,
                finished_at: t.finished_at,
            })
            .collect(),
        task_order_next: *task_order_next,
        waiters: waiters
            .iter()
            .map(|w| v7::WaiterState {
                id: w.id.0,
                agent_id: id(w.agent_id),
                deadline: w.deadline,
            })
            .collect(),
        waiter_next: *waiter_next,
        sessions: sessions
            .iter()
            .map(|session| v7::Session {
                client: session.client,
                last_used: session.last_used,
                applied: (session.applied.iter())
                    .map(|(seq, created)| {
                        let created = match created {
                            Created::Agent(agent_id) => v7::Created::Agent(id(*agent_id)),
                            Created::Task(task_id) => v7::Created::Task(id(*task_id)),
                        };
                        (*seq, created)
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub fn core_snapshot(snapshot: v7::Snapshot<'_>) -> CoreSnapshot {
    CoreSnapshot {
        now: snapshot.now,
        rng_seed: snapshot.rng_seed,
        rng_stream: snapshot.rng_stream,
        rng_word_pos: snapshot.rng_word_pos,
        hash_seed: snapshot.hash_seed,
        registration_next: snapshot.registration_next,
        agents: snapshot.agents.into_iter().map(agent_state_from).collect(),
        token_last: snapshot.token_last,
        leases: snapshot
            .leases
            .into_iter()
            .map(|l| LeaseState {
                task_id: l.task_id.into_owned(),
                holder: id_from(l.holder),
                token: l.token,
                acquired_at: l.acquired_at,
                expires_at: l.expires_at,
                ttl_ms: l.ttl_ms,
            })
            .collect(),
        groups: snapshot
            .groups
            .into_iter()
            .map(|g| GroupState {
                name: g.name.into_owned(),
                candidates: g.candidates.into_iter().map(id_from).collect(),
                term: g.term,
                elected_at: g.elected_at,
            })
            .collect(),
        policies: snapshot.policies.into_iter().map(policy_from).collect(),
        sequence_next: snapshot.sequence_next,
        events: snapshot.events.into_iter().map(event_from).collect(),
        tasks: snapshot
            .tasks
            .into_iter()
            .map(|t| TaskState {
                view: task_view_from(t.view),
                order: t.order,
                finished_at: t.finished_at,
            })
            .collect(),
        task_order_next: snapshot.task_order_next,
        waiters: snapshot
            .waiters
            .into_iter()
            .map(|w| WaiterState {
                id: WaiterId(w.id),
                agent_id: id_from(w.agent_id),
                deadline: w.deadline,
            })
            .collect(),
        waiter_next: snapshot.waiter_next,
        sessions: (snapshot.sessions.into_iter())
            .map(|session| SessionState {
                client: session.client,
                last_used: session.last_used,
                applied: (session.applied.into_iter())
                    .map(|(seq, created)| {
                        let created = match created {
                            v7::Created::Agent(agent_id) => Created::Agent(id_from(agent_id)),
                            v7::Created::Task(task_id) => Created::Task(id_from(task_id)),
                        };
                        (seq, created)
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn agent_state_of(agent: &AgentState) -> v7::AgentState<'_> {
    let AgentState {
        id: agent_id,
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
    v7::AgentState {
        id: id(*agent_id),
        card: card_of(card),
        status: status_of(*status),
        registered_at: *registered_at,
        last_heartbeat_at: *last_heartbeat_at,
        liveness_base: *liveness_base,
        ttl_ms: *ttl_ms,
        registration: *registration,
        dead_at: *dead_at,
        groups: Cow::Borrowed(groups),
        owner: owner.map(|t| v7::Token(t.0)),
        vector: vector.as_ref().map(model_floats),
    }
}

fn agent_state_from(agent: v7::AgentState<'_>) -> AgentState {
    AgentState {
        id: id_from(agent.id),
        card: card_from(agent.card),
        status: status_from(agent.status),
        registered_at: agent.registered_at,
        last_heartbeat_at: agent.last_heartbeat_at,
        liveness_base: agent.liveness_base,
        ttl_ms: agent.ttl_ms,
        registration: agent.registration,
        dead_at: agent.dead_at,
        groups: agent.groups.into_owned(),
        owner: agent.owner.map(|t| TokenId(t.0)),
        vector: agent.vector.map(model_vector),
    }
}

fn policy_of(policy: &Policy) -> v7::Policy<'_> {
    v7::Policy {
        id: text(&policy.id),
        subject: text(&policy.subject),
        action: text(&policy.action),
        resource: text(&policy.resource),
        effect: effect_of(policy.effect),
    }
}

fn policy_from(policy: v7::Policy<'_>) -> Policy {
    Policy {
        id: policy.id.into_owned(),
        subject: policy.subject.into_owned(),
        action: policy.action.into_owned(),
        resource: policy.resource.into_owned(),
        effect: effect_from(policy.effect),
    }
}

fn event_of(event: &Event) -> v7::Event<'_> {
    let payload = match &event.payload {
        EventPayload::Agent(agent) => v7::EventPayload::Agent(v7::AgentView {
            agent_id: id(agent.agent_id),
            card: card_of(&agent.card),
            status: status_of(agent.status),
            registered_at: agent.registered_at,
            last_heartbeat_at: agent.last_heartbeat_at,
            ttl_ms: agent.ttl_ms,
        }),
        EventPayload::Lease(lease) => v7::EventPayload::Lease(v7::LeaseView {
            task_id: text(&lease.task_id),
            holder: id(lease.holder),
            token: lease.token,
            acquired_at: lease.acquired_at,
            expires_at: lease.expires_at,
        }),
        EventPayload::Election(election) => v7::EventPayload::Election(v7::ElectionView {
            group: text(&election.group),
            leader: election.leader.map(id),
            term: election.term,
            elected_at: election.elected_at,
        }),
        EventPayload::Task(task) => v7::EventPayload::Task(task_view_of(task)),
    };
    v7::Event {
        sequence: event.sequence,
        topic: topic_of(event.topic),
        occurred_at: event.occurred_at,
        payload,
    }
}

fn event_from(event: v7::Event<'_>) -> Event {
    let payload = match event.payload {
        v7::EventPayload::Agent(agent) => EventPayload::Agent(AgentView {
            agent_id: id_from(agent.agent_id),
            card: Arc::new(card_from(agent.card)),
            status: status_from(agent.status),
            registered_at: agent.registered_at,
            last_heartbeat_at: agent.last_heartbeat_at,
            ttl_ms: agent.ttl_ms,
        }),
        v7::EventPayload::Lease(lease) => EventPayload::Lease(LeaseView {
            task_id: arc(lease.task_id),
            holder: id_from(lease.holder),
            token: lease.token,
            acquired_at: lease.acquired_at,
            expires_at: lease.expires_at,
        }),
        v7::EventPayload::Election(election) => EventPayload::Election(ElectionView {
            group: arc(election.group),
            leader: election.leader.map(id_from),
            term: election.term,
            elected_at: election.elected_at,
        }),
        v7::EventPayload::Task(task) => EventPayload::Task(task_view_from(task)),
    };
    Event {
        sequence: event.sequence,
        topic: topic_from(event.topic),
        occurred_at: event.occurred_at,
        payload,
    }
}

fn task_view_of(task: &TaskView) -> v7::TaskView<'_> {
    let TaskView {
        id: task_id,
        kind,
        input,
        output,
        status,
        required_tools,
        max_retries,
        retry_count,
        claimed_by,
        failure_reason,
        created_at,
        claimed_at,
        completed_at,
        ttl_ms,
    } = task;
    v7::TaskView {
        id: id(*task_id),
        kind: text(kind),
        input: Cow::Borrowed(input),
        output: Cow::Borrowed(output),
        status: task_status_of(*status),
        required_tools: required_tools.iter().map(|t| text(t)).collect(),
        max_retries: *max_retries,
        retry_count: *retry_count,
        claimed_by: claimed_by.map(id),
        failure_reason: text(failure_reason),
        created_at: *created_at,
        claimed_at: *claimed_at,
        completed_at: *completed_at,
        ttl_ms: *ttl_ms,
    }
}

fn task_view_from(task: v7::TaskView<'_>) -> TaskView {
    TaskView {
        id: id_from(task.id),
        kind: arc(task.kind),
        input: Arc::from(task.input.as_ref()),
        output: Arc::from(task.output.as_ref()),
        status: task_status_from(task.status),
        required_tools: task.required_tools.into_iter().map(arc).collect(),
        max_retries: task.max_retries,
        retry_count: task.retry_count,
        claimed_by: task.claimed_by.map(id_from),
        failure_reason: arc(task.failure_reason),
        created_at: task.created_at,
        claimed_at: task.claimed_at,
        completed_at: task.completed_at,
        ttl_ms: task.ttl_ms,
    }
}
