//! ctl's output: aligned tables (or `KEY  value` lines for one item) for people, JSON for
//! scripts. Field names in JSON are the proto's; timestamps are RFC 3339 in UTC; enums are
//! their short names (ALIVE, PENDING, DENY).

use serde_json::{Value, json};

use super::json::{
    agent_json, agent_status, cluster_json, decode_payload, election_json, lease_json, system_time, task_json,
    task_status, time_json,
};
use crate::proto as pb;

pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    fn print(&self, json: Value, text: String) -> Result<(), String> {
        let shown = if self.json {
            serde_json::to_string_pretty(&json).expect("JSON values serialize")
        } else {
            text
        };
        if shown.is_empty() {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`| head`) is not an error worth a line.
        let _ = std::io::Write::write_all(&mut stdout, shown.as_bytes())
            .and_then(|()| std::io::Write::write_all(&mut stdout, b"\n"));
        Ok(())
    }

    pub fn agents(&self, agents: &[pb::AgentInfo]) -> Result<(), String> {
        let rows = agents
            .iter()
            .map(|a| {
                let card = a.card.clone().unwrap_or_default();
                vec![
                    a.agent_id.clone(),
                    card.name,
                    agent_status(a.status).into(),
                    card.version,
                    card.tools.join(","),
                    time(a.last_heartbeat_at.as_ref()),
                ]
            })
            .collect();
        self.print(
            Value::Array(agents.iter().map(agent_json).collect()),
            table(&["ID", "NAME", "STATUS", "VERSION", "TOOLS", "LAST HEARTBEAT"], rows),
        )
    }

    pub fn agent(&self, agent: &pb::AgentInfo) -> Result<(), String> {
        let card = agent.card.clone().unwrap_or_default();
        let mut metadata: Vec<(&String, &String)> = card.metadata.iter().collect();
        metadata.sort();
        let mut fields = vec![
            ("ID", agent.agent_id.clone()),
            ("NAME", card.name.clone()),
            ("STATUS", agent_status(agent.status).into()),
            ("DESCRIPTION", card.description.clone()),
            ("VERSION", card.version.clone()),
            ("TOOLS", card.tools.join(",")),
            ("REGISTERED", time(agent.registered_at.as_ref())),
            ("LAST HEARTBEAT", time(agent.last_heartbeat_at.as_ref())),
        ];
        for capability in &card.capabilities {
            fields.push(("CAPABILITY", format!("{}: {}", capability.name, capability.description)));
        }
        for (key, value) in metadata {
            fields.push(("METADATA", format!("{key}={value}")));
        }
        self.print(agent_json(agent), pairs(&fields))
    }

    /// An agent's A2A card: the JSON it registered, as registered, else one built from its card
    /// (the same with or without --json: it is JSON either way).
    pub fn a2a_card(&self, agent: &pb::AgentInfo) -> Result<(), String> {
        let registered = agent.card.as_ref().map_or("", |c| c.a2a_card_json.as_str());
        let text = if registered.is_empty() {
            serde_json::to_string_pretty(&crate::server::a2a::card::shown(agent)).expect("JSON values serialize")
        } else {
            registered.to_string()
        };
        let mut stdout = std::io::stdout().lock();
        let _ = std::io::Write::write_all(&mut stdout, text.as_bytes())
            .and_then(|()| std::io::Write::write_all(&mut stdout, b"\n"));
        Ok(())
    }

    pub fn election(&self, state: &pb::ElectionState) -> Result<(), String> {
        let json = election_json(state);
        let leader = if state.leader_agent_id.is_empty() {
            "(none)".to_string()
        } else {
            state.leader_agent_id.clone()
        };
        let fields = [
            ("GROUP", state.group.clone()),
            ("LEADER", leader),
            ("TERM", state.term.to_string()),
            ("ELECTED", time(state.elected_at.as_ref())),
        ];
        self.print(json, pairs(&fields))
    }

    pub fn cluster(&self, status: &pb::ClusterStatusResponse) -> Result<(), String> {
        let (json, text) = cluster_view(status);
        self.print(json, text)
    }

    /// A membership change done: what it did (text only), then the cluster as it is now.
    pub fn member_change(&self, done: &str, status: &pb::ClusterStatusResponse) -> Result<(), String> {
        let (json, text) = cluster_view(status);
        self.print(json, format!("{done}\n{text}"))
    }

    pub fn leases(&self, leases: &[pb::Lease]) -> Result<(), String> {
        let rows = leases
            .iter()
            .map(|l| {
                vec![
                    l.task_id.clone(),
                    l.holder_agent_id.clone(),
                    l.token.as_ref().map_or(0, |t| t.value).to_string(),
                    time(l.acquired_at.as_ref()),
                    time(l.expires_at.as_ref()),
                ]
            })
            .collect();
        self.print(
            Value::Array(leases.iter().map(lease_json).collect()),
            table(&["KEY", "HOLDER", "TOKEN", "ACQUIRED", "EXPIRES"], rows),
        )
    }

    pub fn elections(&self, groups: &[pb::ElectionGroup]) -> Result<(), String> {
        let rows = groups
            .iter()
            .map(|g| {
                let state = g.state.clone().unwrap_or_default();
                let standbys: Vec<&str> = g
                    .candidate_agent_ids
                    .iter()
                    .filter(|id| **id != state.leader_agent_id)
                    .map(String::as_str)
                    .collect();
                vec![
                    state.group,
                    if state.leader_agent_id.is_empty() {
                        "(none)".to_string()
                    } else {
                        state.leader_agent_id
                    },
                    state.term.to_string(),
                    standbys.join(","),
                    time(state.elected_at.as_ref()),
                ]
            })
            .collect();
        let json = groups
            .iter()
            .map(|g| {
                let state = g.state.clone().unwrap_or_default();
                json!({
                    "group": state.group,
                    "leader_agent_id": state.leader_agent_id,
                    "term": state.term,
                    "elected_at": time_json(state.elected_at.as_ref()),
                    "candidate_agent_ids": g.candidate_agent_ids,
                })
            })
            .collect();
        self.print(
            Value::Array(json),
            table(&["GROUP", "LEADER", "TERM", "STANDBYS", "ELECTED"], rows),
        )
    }

    pub fn policies(&self, policies: &[pb::Policy]) -> Result<(), String> {
        let rows = policies
            .iter()
            .map(|p| {
                vec![
                    p.id.clone(),
                    p.subject.clone(),
                    p.action.clone(),
                    p.resource.clone(),
                    effect(p.effect).into(),
                ]
            })
            .collect();
        let json = policies
            .iter()
            .map(|p| {
                json!({
                    "id": p.id,
                    "subject": p.subject,
                    "action": p.action,
                    "resource": p.resource,
                    "effect": effect(p.effect),
                })
            })
            .collect();
        self.print(
            Value::Array(json),
            table(&["ID", "SUBJECT", "ACTION", "RESOURCE", "EFFECT"], rows),
        )
    }

    pub fn decision(&self, decision: &pb::CheckPolicyResponse) -> Result<(), String> {
        let verdict = if decision.allowed { "ALLOWED" } else { "DENIED" };
        self.print(
            json!({ "allowed": decision.allowed, "reason": decision.reason }),
            format!("{verdict}  {}", decision.reason),
        )
    }

    pub fn deleted(&self, id: &str) -> Result<(), String> {
        self.print(json!({ "deleted": id }), format!("deleted policy {id}"))
    }

    pub fn tasks(&self, tasks: &[pb::Task]) -> Result<(), String> {
        let rows = tasks
            .iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    t.r#type.clone(),
                    task_status(t.status).into(),
                    t.required_tools.join(","),
                    format!("{}/{}", t.retry_count, t.max_retries),
                    t.claimed_by_agent_id.clone(),
                    time(t.created_at.as_ref()),
                ]
            })
            .collect();
        self.print(
            Value::Array(tasks.iter().map(task_json).collect()),
            table(
                &["ID", "TYPE", "STATUS", "TOOLS", "RETRIES", "CLAIMED BY", "CREATED"],
                rows,
            ),
        )
    }

    pub fn task(&self, task: &pb::Task) -> Result<(), String> {
        let fields = [
            ("ID", task.id.clone()),
            ("TYPE", task.r#type.clone()),
            ("STATUS", task_status(task.status).into()),
            ("TOOLS", task.required_tools.join(",")),
            ("RETRIES", format!("{}/{}", task.retry_count, task.max_retries)),
            ("CLAIMED BY", task.claimed_by_agent_id.clone()),
            ("FAILURE", task.failure_reason.clone()),
            ("CREATED", time(task.created_at.as_ref())),
            ("CLAIMED", time(task.claimed_at.as_ref())),
            ("COMPLETED", time(task.completed_at.as_ref())),
            ("INPUT", bytes_text(&task.input)),
            ("OUTPUT", bytes_text(&task.output)),
        ];
        self.print(task_json(task), pairs(&fields))
    }

    /// One event as one line: a JSON object with --json, else `SEQ TIME TOPIC details`.
    pub fn event_line(&self, event: &pb::Event) -> String {
        let (kind, payload) = payload_json(event);
        if self.json {
            let value = json!({
                "sequence_number": event.sequence_number,
                "topic": event.topic,
                "occurred_at": time_json(event.occurred_at.as_ref()),
                kind: payload,
            });
            return value.to_string();
        }
        format!(
            "{:>6}  {}  {:<17}  {}",
            event.sequence_number,
            time(event.occurred_at.as_ref()),
            event.topic,
            event_details(event)
        )
    }
}

fn payload_json(event: &pb::Event) -> (&'static str, Value) {
    if let Some(agent) = decode_payload::<pb::AgentInfo>(event) {
        ("agent", agent_json(&agent))
    } else if let Some(lease) = decode_payload::<pb::Lease>(event) {
        ("lease", lease_json(&lease))
    } else if let Some(state) = decode_payload::<pb::ElectionState>(event) {
        ("election", election_json(&state))
    } else if let Some(task) = decode_payload::<pb::Task>(event) {
        ("task", task_json(&task))
    } else {
        ("payload", Value::Null)
    }
}

fn event_details(event: &pb::Event) -> String {
    if let Some(agent) = decode_payload::<pb::AgentInfo>(event) {
        let name = agent.card.map(|c| c.name).unwrap_or_default();
        format!("agent={} name={name}", agent.agent_id)
    } else if let Some(lease) = decode_payload::<pb::Lease>(event) {
        let token = lease.token.map_or(0, |t| t.value);
        format!("key={} holder={} token={token}", lease.task_id, lease.holder_agent_id)
    } else if let Some(state) = decode_payload::<pb::ElectionState>(event) {
        let leader = if state.leader_agent_id.is_empty() {
            "(none)"
        } else {
            &state.leader_agent_id
        };
        format!("group={} leader={leader} term={}", state.group, state.term)
    } else if let Some(task) = decode_payload::<pb::Task>(event) {
        let mut text = format!(
            "task={} type={} status={}",
            task.id,
            task.r#type,
            task_status(task.status)
        );
        if !task.claimed_by_agent_id.is_empty() {
            text.push_str(&format!(" agent={}", task.claimed_by_agent_id));
        }
        if !task.failure_reason.is_empty() {
            text.push_str(&format!(" reason={:?}", task.failure_reason));
        }
        text
    } else {
        String::new()
    }
}

/// Bytes for a person: the text if it is UTF-8 (cut at 200 characters), else their size.
fn bytes_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.chars().count() > 200 => {
            format!(
                "{}… ({} bytes)",
                text.chars().take(200).collect::<String>(),
                bytes.len()
            )
        }
        Ok(text) => text.to_string(),
        Err(_) => format!("({} bytes, not UTF-8; --json shows them in base64)", bytes.len()),
    }
}

fn effect(effect: i32) -> &'static str {
    match pb::PolicyEffect::try_from(effect) {
        Ok(pb::PolicyEffect::Allow) => "ALLOW",
        Ok(pb::PolicyEffect::Deny) => "DENY",
        _ => "UNSPECIFIED",
    }
}

/// A timestamp for a table: RFC 3339 to the second, or "-" when unset.
fn time(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(system_time)
        .map_or_else(|| "-".into(), |t| humantime::format_rfc3339_seconds(t).to_string())
}

/// Columns padded to their widest cell, two spaces apart; empty cells show "-".
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|cell| if cell.is_empty() { "-".into() } else { cell })
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(width - cell.chars().count() + 2));
            }
        }
        text
    };
    let mut lines = vec![line(headers.to_vec())];
    lines.extend(rows.iter().map(|row| line(row.iter().map(String::as_str).collect())));
    lines.join("\n")
}

/// One item as `KEY  value` lines, keys padded to the widest.
fn pairs(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(key, value)| {
            let value = if value.is_empty() { "-" } else { value };
            format!("{key:<width$}  {value}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The cluster as JSON and as text.
fn cluster_view(status: &pb::ClusterStatusResponse) -> (Value, String) {
    let rows = (status.members.iter())
        .map(|m| {
            vec![
                m.id.to_string(),
                m.peer_addr.clone(),
                m.role.clone(),
                m.applied_index.to_string(),
                m.last_heard_ms
                    .map_or_else(|| "never".to_string(), |ms| format!("{ms}ms ago")),
            ]
        })
        .collect();
    let leader = match status.leader {
        0 => "none (an election is under way)".to_string(),
        id => id.to_string(),
    };
    let text = format!(
        "node {} sees leader {leader}, term {}, commit index {}\n{}",
        status.node_id,
        status.term,
        status.commit_index,
        table(&["ID", "PEER ADDRESS", "ROLE", "APPLIED", "HEARD"], rows)
    );
    (cluster_json(status), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns_and_show_empty_cells_as_a_dash() {
        let text = table(
            &["ID", "NAME"],
            vec![vec!["1".into(), "alpha".into()], vec!["200".into(), String::new()]],
        );
        assert_eq!(text, "ID   NAME\n1    alpha\n200  -");
    }
}
