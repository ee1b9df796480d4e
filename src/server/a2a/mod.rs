//! A2A (Agent2Agent) agent cards, in and out: `card` checks a registered card and fills the plain
//! card from it; `http` serves the cards on the HTTP port, `GET /a2a/agents/{id}/agent-card.json`
//! and `GET /a2a/agents` (ALIVE agents only, `?query=` ranked by Find), so a discovery client
//! sees only agents that are really there.
//!
//! Architecture invariant: the core stores a card's JSON and never reads it; everything A2A
//! knows about the JSON's shape is here.

pub mod card;
pub mod http;
