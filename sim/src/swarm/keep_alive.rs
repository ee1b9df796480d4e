//! Keep-alive messages in the workload: heartbeats and lease renewals batched as one message of
//! a keep-alive stream (`Op::KeepAlive`, the core's `Command::KeepAlive`), as the SDKs send a
//! tick's worth of them. The agents whose heartbeat is due go first, then random heartbeats and
//! renewals (stale tokens, unknown agents and bad ttls among them, each failing alone), now and
//! then an empty message (refused whole).
//!
//! Draws from a stream of its own: a seed that sends no keep-alive message (four in ten) runs
//! exactly the workload it ran before they existed. Reads and writes only the generator's state.

use agentkeeper::core::{Outcome, Reply};

use super::Generator;
use crate::rng::Rng;
use crate::step::{Op, Step};

/// The keep-alive stream's number (issue 24's, so no other new stream takes it by accident).
pub(super) const STREAM: u64 = 24;
/// Items in a generated message at most (the core takes up to 10,000; its limit is unit-tested).
const ITEMS_MAX: u64 = 12;

/// The share of a seed's steps (per mille) that are keep-alive messages: none for four seeds
/// in ten, else 2% to 15%.
pub(super) fn share(rng: &mut Rng) -> u32 {
    if rng.chance(600) { rng.range(20, 150) as u32 } else { 0 }
}

impl Generator {
    /// Whether this step is a keep-alive message.
    pub(super) fn keep_alive_now(&mut self) -> bool {
        self.keepalive_per_mille > 0 && self.keepalive_rng.chance(self.keepalive_per_mille)
    }

    /// One keep-alive message: the due heartbeats first (as an SDK's tick gathers them), then
    /// heartbeats of any agent and renewals of held leases or guesses.
    pub(super) fn keep_alive(&mut self) -> Op {
        if self.keepalive_rng.chance(15) {
            return Op::KeepAlive { items: Vec::new() };
        }
        let count = self.keepalive_rng.range(1, ITEMS_MAX) as usize;
        let mut items = Vec::with_capacity(count);
        while items.len() < count
            && let Some(due) = self.due_heartbeat()
        {
            items.push(due);
        }
        while items.len() < count {
            let item = if self.keepalive_rng.chance(500) {
                Op::Heartbeat {
                    agent: self.any_agent(),
                }
            } else {
                let invalid = self.keepalive_rng.chance(40);
                self.renew(invalid)
            };
            items.push(item);
        }
        Op::KeepAlive { items }
    }

    /// Learns from a keep-alive answer what each item's unary call would have taught: item `i`
    /// sees answer `i`; a message refused whole, its error for every item.
    pub(super) fn observe_keep_alive(&mut self, step: &Step, items: &[Op], reply: &Outcome) {
        for (i, item) in items.iter().enumerate() {
            let answer = match reply {
                Ok(Reply::KeepAlive(answers)) => answers.get(i).cloned(),
                Err(error) => Some(Err(error.clone())),
                Ok(_) => None,
            };
            let item_step = Step {
                op: item.clone(),
                ..step.clone()
            };
            self.observe(&item_step, answer.as_ref());
        }
    }
}
