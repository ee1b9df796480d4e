//! The API's values as JSON, for scripts and models: `ctl --json`, the MCP tools' answers and
//! the dashboard's cluster panel.
//! Field names are the proto's; timestamps are RFC 3339 in UTC to the millisecond; enums are
//! their short names (ALIVE, PENDING, DENY); bytes are text when UTF-8, else base64.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::proto as pb;

/// Decodes an event's payload as `M` (None if it is absent or of another type).
pub fn decode_payload<M: prost::Message + Default>(event: &pb::Event) -> Option<M> {
    let any = event.payload.as_ref()?;
    let name = any.type_url.rsplit('.').next()?;
    let expected = std::any::type_name::<M>().rsplit("::").next()?;
    (name == expected).then(|| M::decode(any.value.as_slice()).ok())?
}

pub fn agent_json(agent: &pb::AgentInfo) -> Value {
    let card = agent.card.clone().unwrap_or_default();
    let metadata: serde_json::Map<String, Value> = card
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "agent_id": agent.agent_id,
        "name": card.name,
        "description": card.description,
        "version": card.version,
        "tools": card.tools,
        "capabilities": card.capabilities.iter().map(|c| json!({"name": c.name, "description": c.description})).collect::<Vec<_>>(),
        "metadata": metadata,
        "status": agent_status(agent.status),
        "registered_at": time_json(agent.registered_at.as_ref()),
        "last_heartbeat_at": time_json(agent.last_heartbeat_at.as_ref()),
    })
}

pub fn lease_json(lease: &pb::Lease) -> Value {
    json!({
        "task_id": lease.task_id,
        "holder_agent_id": lease.holder_agent_id,
        "token": lease.token.as_ref().map_or(0, |t| t.value),
        "acquired_at": time_json(lease.acquired_at.as_ref()),
        "expires_at": time_json(lease.expires_at.as_ref()),
    })
}

pub fn task_json(task: &pb::Task) -> Value {
    json!({
        "id": task.id,
        "type": task.r#type,
        "status": task_status(task.status),
        "required_tools": task.required_tools,
        "max_retries": task.max_retries,
        "retry_count": task.retry_count,
        "claimed_by_agent_id": task.claimed_by_agent_id,
        "failure_reason": task.failure_reason,
        "created_at": time_json(task.created_at.as_ref()),
        "claimed_at": time_json(task.claimed_at.as_ref()),
        "completed_at": time_json(task.completed_at.as_ref()),
        "input": bytes_json(&task.input),
        "output": bytes_json(&task.output),
    })
}

/// Bytes in JSON: a string when they are UTF-8 text, else `{"base64": "..."}`.
pub fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => json!({ "base64": base64(bytes) }),
    }
}

pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn agent_status(status: i32) -> &'static str {
    match pb::AgentStatus::try_from(status) {
        Ok(pb::AgentStatus::Alive) => "ALIVE",
        Ok(pb::AgentStatus::Unreachable) => "UNREACHABLE",
        Ok(pb::AgentStatus::Dead) => "DEAD",
        _ => "UNSPECIFIED",
    }
}

pub fn task_status(status: i32) -> &'static str {
    match pb::TaskStatus::try_from(status) {
        Ok(pb::TaskStatus::Pending) => "PENDING",
        Ok(pb::TaskStatus::Claimed) => "CLAIMED",
        Ok(pb::TaskStatus::Completed) => "COMPLETED",
        Ok(pb::TaskStatus::Failed) => "FAILED",
        Ok(pb::TaskStatus::Dead) => "DEAD",
        _ => "UNSPECIFIED",
    }
}

pub fn system_time(timestamp: &prost_types::Timestamp) -> Option<SystemTime> {
    let seconds = u64::try_from(timestamp.seconds).ok()?;
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

/// A timestamp for JSON: RFC 3339 to the millisecond, or null when unset.
pub fn time_json(timestamp: Option<&prost_types::Timestamp>) -> Value {
    timestamp.and_then(system_time).map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_millis(t).to_string())
    })
}

pub fn election_json(state: &pb::ElectionState) -> Value {
    json!({
        "group": state.group,
        "leader_agent_id": state.leader_agent_id,
        "term": state.term,
        "elected_at": time_json(state.elected_at.as_ref()),
    })
}

/// A cluster's status as `ctl cluster status --json` prints it and the dashboard's cluster
/// panel reads it: the node asked, the leader it knows (0: none), the term, its commit and
/// applied indexes, and each member (`addr` is its peer address).
pub fn cluster_json(status: &pb::ClusterStatusResponse) -> Value {
    let members: Vec<Value> = (status.members.iter())
        .map(|m| {
            json!({
                "id": m.id,
                "addr": m.peer_addr,
                "role": m.role,
                "voter": m.voter,
                "applied_index": m.applied_index,
                "last_heard_ms": m.last_heard_ms,
            })
        })
        .collect();
    json!({
        "node_id": status.node_id,
        "leader": status.leader,
        "term": status.term,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "members": members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads_like_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
    }
}
