//! The A2A cards on the HTTP port. `GET /a2a/agents/{agent_id}/agent-card.json`: one agent's
//! card (as registered, byte for byte, else built from its plain card), whatever its status;
//! `GET /a2a/agents?query=&limit=`: the ALIVE agents' cards (Find: best match first when there
//! is a query), each with its id and card URL.
//!
//! Architecture invariant: reads the core only through the driver's queue (GetAgent and Find,
//! as a gRPC client would), at most one Find page (1000 agents) per request.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::card;
use crate::core::validate::FIND_LIMIT_MAX;
use crate::core::{Command, Reply};
use crate::server::convert;
use crate::server::dashboard::Dashboard;

pub async fn agent_card(State(core): State<Dashboard>, Path(agent_id): Path<String>) -> Response {
    let reply = match core.ask(Command::GetAgent { agent_id }).await {
        Ok(reply) => reply,
        Err(response) => return response,
    };
    let Reply::Agent(agent) = reply else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "the core answered GetAgent oddly").into_response();
    };
    let body = if agent.card.a2a_card.is_empty() {
        card::shown(&convert::agent_to_pb(&agent)).to_string()
    } else {
        agent.card.a2a_card.clone()
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(serde::Deserialize)]
pub struct Listing {
    #[serde(default)]
    query: String,
    /// At most this many cards (0 or absent: 1000).
    #[serde(default)]
    limit: u32,
}

pub async fn agents(State(core): State<Dashboard>, Query(listing): Query<Listing>) -> Response {
    let limit = if listing.limit == 0 {
        FIND_LIMIT_MAX
    } else {
        listing.limit
    };
    let command = Command::Find {
        query: listing.query,
        tools: Vec::new(),
        limit,
        vector: None,
    };
    let reply = match core.ask(command).await {
        Ok(reply) => reply,
        Err(response) => return response,
    };
    let Reply::Agents(found) = reply else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "the core answered Find oddly").into_response();
    };
    let agents: Vec<Value> = found
        .iter()
        .map(|agent| {
            let id = agent.agent_id.to_string();
            json!({
                "agent_id": id,
                "card_url": format!("/a2a/agents/{id}/agent-card.json"),
                "card": card::shown(&convert::agent_to_pb(agent)),
            })
        })
        .collect();
    axum::Json(json!({ "agents": agents })).into_response()
}
