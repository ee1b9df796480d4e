//! Which live agents lack a card vector of a given model, a page at a time: the daemon's
//! background pass (`embed::backfill`) reads them to have their cards encoded (cards shed by a
//! full queue, replayed from a log written without a model, or with another model's vector).
//!
//! Architecture invariant: a read; nothing here mutates state. A page walks the live agents in
//! registration order from its cursor and looks at `VECTORLESS_SCAN_MAX` agents at most, however
//! few of them lack a vector, so its work is bounded whatever the fleet's size.

use std::ops::Bound;

use super::search::card_text::card_text;
use super::search::vectors::check_model_name;
use super::types::AgentStatus;
use super::{Core, CoreError, ErrorCode, Outcome, Reply};

/// Live agents one page looks at most.
pub const VECTORLESS_SCAN_MAX: usize = 1024;
/// Cards one page returns at most.
pub const VECTORLESS_PAGE_MAX: usize = 256;

/// A live agent whose card has no vector of the model asked about: its id and the card's text
/// (what an encoder reads, `search::card_text`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorlessCard {
    pub agent_id: String,
    pub text: String,
}

impl Core {
    /// Live agents registered after `after` (a registration number; 0 from the start) whose card
    /// has no vector of `model`, at most `limit` (0: `VECTORLESS_PAGE_MAX`), and the cursor to
    /// go on from (`None`: the walk reached the end).
    pub(super) fn cards_without_vector(&self, model: &str, after: u64, limit: u32) -> Outcome {
        check_model_name(model).map_err(|why| CoreError::new(ErrorCode::InvalidArgument, why))?;
        let limit = match limit as usize {
            0 => VECTORLESS_PAGE_MAX,
            n => n.min(VECTORLESS_PAGE_MAX),
        };
        let from = (Bound::Excluded(after), Bound::Unbounded);
        // The first VECTORLESS_SCAN_MAX live agents after the cursor, in registration order: one
        // more of each status is read to know whether its walk ends within the page.
        let mut live: Vec<(u64, usize)> = [AgentStatus::Alive, AgentStatus::Unreachable]
            .into_iter()
            .flat_map(|status| {
                let agents = self.registry.with_status(status).range(from);
                agents.take(VECTORLESS_SCAN_MAX + 1).map(|(&r, &k)| (r, k))
            })
            .collect();
        live.sort_unstable();
        let complete = live.len() <= VECTORLESS_SCAN_MAX;
        live.truncate(VECTORLESS_SCAN_MAX);
        let mut cards = Vec::new();
        let mut cursor = after;
        for &(registration, key) in &live {
            if cards.len() == limit {
                break;
            }
            cursor = registration;
            let has_one = self
                .registry
                .search
                .vector(key)
                .is_some_and(|(vector_model, _)| &**vector_model == model);
            if !has_one {
                let agent = self.registry.get(key);
                cards.push(VectorlessCard {
                    agent_id: agent.id.to_string(),
                    text: card_text(&agent.card),
                });
            }
        }
        let walked_all = complete && live.last().is_none_or(|&(last, _)| cursor == last);
        debug_assert!(cards.len() <= limit && live.len() <= VECTORLESS_SCAN_MAX);
        Ok(Reply::VectorlessCards {
            cards,
            next: (!walked_all).then_some(cursor),
        })
    }
}
