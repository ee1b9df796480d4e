//! Conversions between the wire (`proto`) and the core's own types, and from core errors to
//! gRPC statuses.
//!
//! Architecture invariant: this is the only place both type worlds meet; the core never sees a
//! protobuf type and the services never build core values by hand.

use prost::Message;
use prost_types::{Any, Timestamp};
use tonic::{Code, Status};

use crate::core::elections::GroupListing;
use crate::core::events::{AgentView, ElectionView, Event, EventPayload, LeaseView};
use crate::core::machine::StreamEnd;
use crate::core::tasks::{TaskStatus, TaskView};
use crate::core::types::{AgentCard, AgentStatus, Capability, Decision, Effect, Millis, Policy};
use crate::core::{CoreError, ErrorCode, PolicyInput};
use crate::proto as pb;

const TYPE_URL_PREFIX: &str = "type.googleapis.com/agentkeeper.v1.";

pub fn timestamp(ms: Millis) -> Option<Timestamp> {
    if ms == 0 {
        return None;
    }
    Some(Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

pub fn status(error: CoreError) -> Status {
    Status::new(code(error.code), error.message)
}

pub fn stream_end(end: StreamEnd) -> Status {
    Status::new(code(end.code), end.message)
}

pub fn code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::OutOfRange => Code::OutOfRange,
        ErrorCode::Unavailable => Code::Unavailable,
    }
}

pub fn card_from_pb(card: pb::AgentCard) -> AgentCard {
    let mut metadata: Vec<(String, String)> = card.metadata.into_iter().collect();
    metadata.sort_unstable();
    AgentCard {
        name: card.name,
        description: card.description,
        version: card.version,
        capabilities: card
            .capabilities
            .into_iter()
            .map(|c| Capability {
                name: c.name,
                description: c.description,
            })
            .collect(),
        tools: card.tools,
        metadata,
        a2a_card: card.a2a_card_json,
    }
}

pub fn card_to_pb(card: &AgentCard) -> pb::AgentCard {
    pb::AgentCard {
        name: card.name.clone(),
        description: card.description.clone(),
        version: card.version.clone(),
        capabilities: card
            .capabilities
            .iter()
            .map(|c| pb::Capability {
                name: c.name.clone(),
                description: c.description.clone(),
            })
            .collect(),
        tools: card.tools.clone(),
        metadata: card.metadata.iter().cloned().collect(),
        a2a_card_json: card.a2a_card.clone(),
    }
}

pub fn agent_to_pb(agent: &AgentView) -> pb::AgentInfo {
    let status = match agent.status {
        AgentStatus::Alive => pb::AgentStatus::Alive,
        AgentStatus::Unreachable => pb::AgentStatus::Unreachable,
        AgentStatus::Dead => pb::AgentStatus::Dead,
    };
    pb::AgentInfo {
        agent_id: agent.agent_id.to_string(),
        card: Some(card_to_pb(&agent.card)),
        status: status as i32,
        registered_at: timestamp(agent.registered_at),
        last_heartbeat_at: timestamp(agent.last_heartbeat_at),
    }
}

pub fn lease_to_pb(lease: &LeaseView) -> pb::Lease {
    pb::Lease {
        task_id: lease.task_id.to_string(),
        holder_agent_id: lease.holder.to_string(),
        token: Some(pb::FencingToken { value: lease.token }),
        acquired_at: timestamp(lease.acquired_at),
        expires_at: timestamp(lease.expires_at),
    }
}

pub fn election_to_pb(state: &ElectionView) -> pb::ElectionState {
    pb::ElectionState {
        group: state.group.to_string(),
        leader_agent_id: state.leader.map(|id| id.to_string()).unwrap_or_default(),
        term: state.term,
        elected_at: timestamp(state.elected_at),
    }
}

/// A listed election group: its state and the head of its line of candidates.
pub fn group_to_pb(group: &GroupListing) -> pb::ElectionGroup {
    pb::ElectionGroup {
        state: Some(election_to_pb(&group.state)),
        candidate_agent_ids: group.candidates.iter().map(ToString::to_string).collect(),
        candidates_total: u32::try_from(group.candidates_total).unwrap_or(u32::MAX),
    }
}

pub fn task_to_pb(task: &TaskView) -> pb::Task {
    pb::Task {
        id: task.id.to_string(),
        r#type: task.kind.to_string(),
        input: task.input.to_vec(),
        output: task.output.to_vec(),
        status: task_status_to_pb(task.status) as i32,
        required_tools: task.required_tools.iter().map(|t| t.to_string()).collect(),
        max_retries: task.max_retries,
        retry_count: task.retry_count,
        claimed_by_agent_id: task.claimed_by.map(|id| id.to_string()).unwrap_or_default(),
        failure_reason: task.failure_reason.to_string(),
        created_at: timestamp(task.created_at),
        claimed_at: task.claimed_at.and_then(timestamp),
        completed_at: task.completed_at.and_then(timestamp),
    }
}

fn task_status_to_pb(status: TaskStatus) -> pb::TaskStatus {
    match status {
        TaskStatus::Pending => pb::TaskStatus::Pending,
        TaskStatus::Claimed => pb::TaskStatus::Claimed,
        TaskStatus::Completed => pb::TaskStatus::Completed,
        TaskStatus::Failed => pb::TaskStatus::Failed,
        TaskStatus::Dead => pb::TaskStatus::Dead,
    }
}

/// ListTasks' filter: UNSPECIFIED (0) means every status; an unknown number is refused.
pub fn task_status_filter(status: i32) -> Result<Option<TaskStatus>, Status> {
    match pb::TaskStatus::try_from(status) {
        Ok(pb::TaskStatus::Unspecified) => Ok(None),
        Ok(pb::TaskStatus::Pending) => Ok(Some(TaskStatus::Pending)),
        Ok(pb::TaskStatus::Claimed) => Ok(Some(TaskStatus::Claimed)),
        Ok(pb::TaskStatus::Completed) => Ok(Some(TaskStatus::Completed)),
        Ok(pb::TaskStatus::Failed) => Ok(Some(TaskStatus::Failed)),
        Ok(pb::TaskStatus::Dead) => Ok(Some(TaskStatus::Dead)),
        Err(_) => Err(Status::invalid_argument(format!("status {status} is not a TaskStatus"))),
    }
}

pub fn policy_from_pb(policy: pb::Policy) -> PolicyInput {
    let effect = match pb::PolicyEffect::try_from(policy.effect) {
        Ok(pb::PolicyEffect::Allow) => Some(Effect::Allow),
        Ok(pb::PolicyEffect::Deny) => Some(Effect::Deny),
        _ => None,
    };
    PolicyInput {
        id: policy.id,
        subject: policy.subject,
        action: policy.action,
        resource: policy.resource,
        effect,
    }
}

pub fn policy_to_pb(policy: &Policy) -> pb::Policy {
    let effect = match policy.effect {
        Effect::Allow => pb::PolicyEffect::Allow,
        Effect::Deny => pb::PolicyEffect::Deny,
    };
    pb::Policy {
        id: policy.id.clone(),
        subject: policy.subject.clone(),
        action: policy.action.clone(),
        resource: policy.resource.clone(),
        effect: effect as i32,
    }
}

pub fn decision_to_pb(decision: Decision) -> pb::CheckPolicyResponse {
    pb::CheckPolicyResponse {
        allowed: decision.allowed,
        reason: decision.reason,
    }
}

fn any<M: Message>(name: &str, message: &M) -> Any {
    Any {
        type_url: format!("{TYPE_URL_PREFIX}{name}"),
        value: message.encode_to_vec(),
    }
}

pub fn event_to_pb(event: &Event) -> pb::Event {
    let payload = match &event.payload {
        EventPayload::Agent(agent) => any("AgentInfo", &agent_to_pb(agent)),
        EventPayload::Lease(lease) => any("Lease", &lease_to_pb(lease)),
        EventPayload::Election(state) => any("ElectionState", &election_to_pb(state)),
        EventPayload::Task(task) => any("Task", &task_to_pb(task)),
    };
    pb::Event {
        topic: event.topic.as_str().to_string(),
        payload: Some(payload),
        sequence_number: event.sequence,
        occurred_at: timestamp(event.occurred_at),
    }
}

/// WatchElection's first message: the group's current state as a `leader.changed` event with
/// sequence 0 (a snapshot, not an event from the bus), stamped with the last change's time.
pub fn election_snapshot_to_pb(state: &ElectionView) -> pb::Event {
    pb::Event {
        topic: "leader.changed".to_string(),
        payload: Some(any("ElectionState", &election_to_pb(state))),
        sequence_number: 0,
        occurred_at: timestamp(state.elected_at),
    }
}
