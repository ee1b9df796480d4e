//! Keep-alive batches: many agents' heartbeats or many leases' renewals as one command (one
//! message of a keep-alive stream), each item applied in order as its unary call would be, with
//! its own answer; one bad item fails alone.
//!
//! Architecture invariant: a batch holds 1 to `KEEPALIVE_ITEMS_MAX` Heartbeat and RenewLease
//! items; any other batch is refused whole before anything changes. Never nests a batch.

use super::{Command, Core, CoreError, ErrorCode, Outcome, Reply};
use crate::core::types::TokenId;
use crate::limits::KEEPALIVE_ITEMS_MAX;

impl Core {
    /// Applies each item of a keep-alive batch at the core's current time, on behalf of
    /// `principal` (checked per item, as the unary calls are).
    pub(super) fn keep_alive(&mut self, items: Vec<Command>, principal: Option<TokenId>) -> Outcome {
        check_batch(&items)?;
        let mut answers = Vec::with_capacity(items.len());
        for item in items {
            let checked = match principal {
                Some(token) => self.owner_check(&item, token),
                None => Ok(()),
            };
            answers.push(checked.and_then(|()| self.execute(item, principal)));
        }
        Ok(Reply::KeepAlive(answers))
    }
}

/// Whether `items` may form a batch: how many, and only heartbeats and renewals.
fn check_batch(items: &[Command]) -> Result<(), CoreError> {
    if items.is_empty() || items.len() > KEEPALIVE_ITEMS_MAX {
        return Err(CoreError::new(
            ErrorCode::InvalidArgument,
            format!(
                "a keep-alive message carries 1 to {KEEPALIVE_ITEMS_MAX} items, this one {}",
                items.len()
            ),
        ));
    }
    let other = items
        .iter()
        .find(|item| !matches!(item, Command::Heartbeat { .. } | Command::RenewLease { .. }));
    if let Some(other) = other {
        return Err(CoreError::new(
            ErrorCode::InvalidArgument,
            format!(
                "a keep-alive message carries heartbeats and lease renewals, not a {}",
                other.name()
            ),
        ));
    }
    Ok(())
}
