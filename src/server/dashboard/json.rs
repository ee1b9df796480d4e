//! The dashboard's JSON: the core's views rendered as the plain objects the page reads
//! (ids as strings, times as Unix milliseconds, statuses as the wire's names).
//!
//! Architecture invariant: pure functions of the views; the page's field names live here and
//! in index.html only.

use serde_json::{Value, json};

use crate::core::CoreStats;
use crate::core::elections::GroupListing;
use crate::core::events::{AgentView, ElectionView, Event, EventPayload, LeaseView};
use crate::core::listing::Overview;
use crate::core::tasks::TaskView;
use crate::core::types::{AgentStatus, Effect, Policy};

pub fn agent(view: &AgentView) -> Value {
    json!({
        "id": view.agent_id.to_string(),
        "name": view.card.name,
        "description": view.card.description,
        "version": view.card.version,
        "tools": view.card.tools,
        "status": match view.status {
            AgentStatus::Alive => "ALIVE",
            AgentStatus::Unreachable => "UNREACHABLE",
            AgentStatus::Dead => "DEAD",
        },
        "registered_at": view.registered_at,
        "last_heartbeat_at": view.last_heartbeat_at,
        "ttl_ms": view.ttl_ms,
    })
}

pub fn lease(view: &LeaseView) -> Value {
    json!({
        "key": &*view.task_id,
        "holder": view.holder.to_string(),
        "token": view.token,
        "acquired_at": view.acquired_at,
        "expires_at": view.expires_at,
    })
}

pub fn election(view: &ElectionView) -> Value {
    json!({
        "group": &*view.group,
        "leader": view.leader.map(|id| id.to_string()),
        "term": view.term,
        "elected_at": view.elected_at,
    })
}

/// A listed group: its state, the head of its line and how many stand in it.
pub fn group(group: &GroupListing) -> Value {
    let mut value = election(&group.state);
    value["candidates"] = group.candidates.iter().map(ToString::to_string).collect();
    value["candidates_total"] = group.candidates_total.into();
    value
}

/// One page of a list: its rows under `field`, and the cursor of the next page (null: the last).
pub fn page(field: &str, rows: impl Iterator<Item = Value>, next_page_token: &str) -> Value {
    let mut value = json!({ "next": next(next_page_token) });
    value[field] = rows.collect();
    value
}

/// A page of agents, with the event sequence it was read at.
pub fn agent_page(agents: &[AgentView], next_page_token: &str, sequence_next: u64) -> Value {
    let mut value = page("agents", agents.iter().map(agent), next_page_token);
    value["sequence_next"] = sequence_next.into();
    value
}

/// A page token as the page reads it: null when there is no next page.
fn next(token: &str) -> Value {
    if token.is_empty() { Value::Null } else { token.into() }
}

pub fn policy(policy: &Policy) -> Value {
    json!({
        "id": policy.id,
        "subject": policy.subject,
        "action": policy.action,
        "resource": policy.resource,
        "effect": match policy.effect {
            Effect::Allow => "ALLOW",
            Effect::Deny => "DENY",
        },
    })
}

pub fn task(view: &TaskView) -> Value {
    json!({
        "id": view.id.to_string(),
        "type": &*view.kind,
        "status": view.status.as_str(),
        "required_tools": view.required_tools.iter().map(|t| &**t).collect::<Vec<_>>(),
        "max_retries": view.max_retries,
        "retry_count": view.retry_count,
        "claimed_by": view.claimed_by.map(|id| id.to_string()),
        "failure_reason": &*view.failure_reason,
        "created_at": view.created_at,
    })
}

pub fn event(event: &Event) -> Value {
    let mut value = json!({
        "sequence": event.sequence,
        "topic": event.topic.as_str(),
        "occurred_at": event.occurred_at,
    });
    let (field, payload) = match &event.payload {
        EventPayload::Agent(view) => ("agent", agent(view)),
        EventPayload::Lease(view) => ("lease", lease(view)),
        EventPayload::Election(view) => ("election", election(view)),
        EventPayload::Task(view) => ("task", task(view)),
    };
    value[field] = payload;
    value
}

pub fn counts(stats: &CoreStats) -> Value {
    json!({
        "agents_alive": stats.agents_alive,
        "agents_unreachable": stats.agents_unreachable,
        "agents_dead": stats.agents_dead,
        "leases": stats.leases,
        "groups": stats.groups,
        "policies": stats.policies,
        "watchers": stats.watchers,
        "tasks_pending": stats.tasks_pending,
        "tasks_claimed": stats.tasks_claimed,
        "tasks_completed": stats.tasks_completed,
        "tasks_dead": stats.tasks_dead,
        "claims_waiting": stats.claims_waiting,
    })
}

pub fn overview(view: &Overview) -> Value {
    let stats = &view.stats;
    json!({
        "now": view.now,
        "sequence_next": stats.sequence_next,
        "counts": counts(stats),
        "agents": view.agents.iter().map(agent).collect::<Vec<_>>(),
        "agents_next": next(&view.agents_next),
        "agents_total": stats.agents_alive + stats.agents_unreachable + stats.agents_dead,
        "leases": view.leases.iter().map(lease).collect::<Vec<_>>(),
        "leases_next": next(&view.leases_next),
        "leases_total": stats.leases,
        "elections": view.elections.iter().map(group).collect::<Vec<_>>(),
        "elections_next": next(&view.elections_next),
        "policies": view.policies.iter().map(|p| policy(p)).collect::<Vec<_>>(),
        "policies_next": next(&view.policies_next),
        "policies_total": stats.policies,
    })
}
