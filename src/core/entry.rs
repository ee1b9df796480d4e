//! The core's input records: the smallest complete description of its state changes. The store
//! logs them and replays them in order; a cluster will replicate them.
//!
//! Architecture invariant: an entry is a plain value, never bytes: how it is written to disk
//! (and which format versions a release reads) is the store's business, not the core's.

use super::Command;
use super::types::{Millis, TokenId};

/// One input of the core. Replaying entries in order through a core built from the log's header
/// (or a snapshot) rebuilds the exact state: ids, tokens, terms and sequence numbers included.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // almost every entry is an Apply, and boxing would cost each one
pub enum Entry {
    /// A state-changing command, applied at `now` on behalf of `principal` (the agent token
    /// that made the call, if one did).
    Apply {
        now: Millis,
        command: Command,
        principal: Option<TokenId>,
    },
    /// A tick at `now` that fired at least one deadline.
    Tick { now: Millis },
    /// The restart grace given at `now` after a recovery.
    Grace { now: Millis },
}
