//! The run's fingerprint: FNV-1a 64 over a canonical rendering of every reply, every answer the
//! core gave a waiting claim, and every delivered event. The rendering is our own byte encoding (tags, little-endian integers, length-prefixed
//! strings), never `Debug` output, hash-map order, an address or a clock, so the same seed gives
//! the same digest on any machine. Fields a reply gained later (a page token, a count beyond the
//! listed items) are rendered only when they say something, so pinned digests of runs that never
//! saw them stay valid.

use agentkeeper::core::events::{AgentView, ElectionView, LeaseView};
use agentkeeper::core::tasks::{TaskView, WaiterId};
use agentkeeper::core::types::{AgentCard, AgentStatus, Effect, Policy};
use agentkeeper::core::{ErrorCode, Event, EventPayload, Outcome, Reply};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    state: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Digest { state: FNV_OFFSET }
    }
}

impl Digest {
    pub fn value(&self) -> u64 {
        self.state
    }

    /// The digest as printed: 16 lowercase hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.state)
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.state ^= u64::from(byte);
            self.state = self.state.wrapping_mul(FNV_PRIME);
        }
    }

    pub fn tag(&mut self, tag: u8) {
        self.bytes(&[tag]);
    }

    pub fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    pub fn str(&mut self, text: &str) {
        self.u64(text.len() as u64);
        self.bytes(text.as_bytes());
    }

    pub fn outcome(&mut self, outcome: &Outcome) {
        match outcome {
            Ok(reply) => {
                self.tag(b'+');
                self.reply(reply);
            }
            Err(error) => {
                self.tag(b'!');
                self.tag(error_code(error.code));
                self.str(&error.message);
            }
        }
    }

    /// An answer the core handed to a waiting claim (delivered or not: the caller may be gone).
    pub fn claim_answer(&mut self, waiter: WaiterId, outcome: &Outcome) {
        self.tag(b'w');
        self.u64(waiter.0);
        self.outcome(outcome);
    }

    fn reply(&mut self, reply: &Reply) {
        match reply {
            Reply::Done => self.tag(0),
            Reply::Registered { agent_id } => {
                self.tag(1);
                self.bytes(&agent_id.0.to_le_bytes());
            }
            Reply::Agent(view) => {
                self.tag(2);
                self.agent(view);
            }
            Reply::Agents(views) => {
                self.tag(3);
                self.u64(views.len() as u64);
                views.iter().for_each(|v| self.agent(v));
            }
            Reply::Lease { lease, acquired } => {
                self.tag(4);
                self.lease(lease);
                self.tag(u8::from(*acquired));
            }
            Reply::Election(view) => {
                self.tag(5);
                self.election(view);
            }
            Reply::Watching { subscriber, replay } => {
                self.tag(6);
                self.u64(subscriber.0);
                self.u64(replay.len() as u64);
                replay.iter().for_each(|e| self.event(e));
            }
            Reply::WatchingElection { subscriber, state } => {
                self.tag(7);
                self.u64(subscriber.0);
                self.election(state);
            }
            Reply::Policy(policy) => {
                self.tag(8);
                self.policy(policy);
            }
            Reply::Policies {
                policies,
                next_page_token,
            } => {
                self.tag(9);
                self.u64(policies.len() as u64);
                policies.iter().for_each(|p| self.policy(p));
                self.later_token(next_page_token);
            }
            Reply::Decision(decision) => {
                self.tag(10);
                self.tag(u8::from(decision.allowed));
                self.str(&decision.reason);
            }
            Reply::Task(task) => {
                self.tag(11);
                self.task(task);
            }
            Reply::Tasks { tasks, next_page_token } => {
                self.tag(12);
                self.u64(tasks.len() as u64);
                tasks.iter().for_each(|t| self.task(t));
                self.str(next_page_token);
            }
            Reply::Claimed { task, lease } => {
                self.tag(13);
                self.task(task);
                self.lease(lease);
            }
            Reply::NoTask => self.tag(14),
            Reply::Leases {
                leases,
                next_page_token,
            } => {
                self.tag(16);
                self.u64(leases.len() as u64);
                leases.iter().for_each(|l| self.lease(l));
                self.str(next_page_token);
            }
            Reply::Elections {
                groups,
                next_page_token,
            } => {
                self.tag(17);
                self.u64(groups.len() as u64);
                for group in groups {
                    self.election(&group.state);
                    self.u64(group.candidates.len() as u64);
                    group.candidates.iter().for_each(|id| self.bytes(&id.0.to_le_bytes()));
                    if group.candidates_total != group.candidates.len() {
                        self.tag(b'n');
                        self.u64(group.candidates_total as u64);
                    }
                }
                self.later_token(next_page_token);
            }
            Reply::AgentPage {
                agents,
                next_page_token,
                sequence_next,
            } => {
                self.tag(19);
                self.u64(agents.len() as u64);
                agents.iter().for_each(|a| self.agent(a));
                self.str(next_page_token);
                self.u64(*sequence_next);
            }
            Reply::Overview(view) => {
                self.tag(18);
                self.u64(view.now);
                self.u64(view.stats.sequence_next);
                // The card vectors held: what Registers carrying vectors and SetCardVectors left.
                self.u64(view.stats.card_vectors as u64);
                self.u64(view.agents.len() as u64);
                view.agents.iter().for_each(|a| self.agent(a));
                self.u64(view.leases.len() as u64);
                view.leases.iter().for_each(|l| self.lease(l));
                self.u64(view.policies.len() as u64);
                view.policies.iter().for_each(|p| self.policy(p));
                for token in [&view.agents_next, &view.leases_next, &view.policies_next] {
                    self.later_token(token);
                }
            }
            Reply::ClaimWaiting { waiter } => {
                self.tag(15);
                self.u64(waiter.0);
            }
            Reply::Now(now) => {
                self.tag(16);
                self.u64(*now);
            }
            Reply::KeepAlive(answers) => {
                self.tag(20);
                self.u64(answers.len() as u64);
                answers.iter().for_each(|a| self.outcome(a));
            }
            Reply::VectorlessCards { cards, next } => {
                self.tag(21);
                self.u64(cards.len() as u64);
                for card in cards {
                    self.str(&card.agent_id);
                    self.str(&card.text);
                }
                self.u64(next.map_or(0, |n| n + 1));
            }
        }
    }

    pub fn event(&mut self, event: &Event) {
        self.u64(event.sequence);
        self.str(event.topic.as_str());
        self.u64(event.occurred_at);
        match &event.payload {
            EventPayload::Agent(view) => {
                self.tag(b'a');
                self.agent(view);
            }
            EventPayload::Lease(view) => {
                self.tag(b'l');
                self.lease(view);
            }
            EventPayload::Election(view) => {
                self.tag(b'e');
                self.election(view);
            }
            EventPayload::Task(view) => {
                self.tag(b't');
                self.task(view);
            }
        }
    }

    /// A page token a reply gained later: rendered only when there is a next page.
    fn later_token(&mut self, token: &str) {
        if !token.is_empty() {
            self.tag(b'>');
            self.str(token);
        }
    }

    fn task(&mut self, view: &TaskView) {
        self.bytes(&view.id.0.to_le_bytes());
        self.str(&view.kind);
        self.u64(view.input.len() as u64);
        self.bytes(&view.input);
        self.u64(view.output.len() as u64);
        self.bytes(&view.output);
        self.str(view.status.as_str());
        self.u64(view.required_tools.len() as u64);
        view.required_tools.iter().for_each(|t| self.str(t));
        self.u64(u64::from(view.max_retries));
        self.u64(u64::from(view.retry_count));
        self.u64(view.claimed_by.map_or(0, |a| a.0 as u64));
        self.str(&view.failure_reason);
        self.u64(view.created_at);
        self.u64(view.claimed_at.unwrap_or(0));
        self.u64(view.completed_at.unwrap_or(0));
        self.u64(view.ttl_ms);
    }

    fn agent(&mut self, view: &AgentView) {
        self.bytes(&view.agent_id.0.to_le_bytes());
        self.card(&view.card);
        self.tag(match view.status {
            AgentStatus::Alive => 0,
            AgentStatus::Unreachable => 1,
            AgentStatus::Dead => 2,
        });
        self.u64(view.registered_at);
        self.u64(view.last_heartbeat_at);
        self.u64(view.ttl_ms);
    }

    fn card(&mut self, card: &AgentCard) {
        self.str(&card.name);
        self.str(&card.description);
        self.str(&card.version);
        self.u64(card.tools.len() as u64);
        card.tools.iter().for_each(|t| self.str(t));
        self.u64(card.capabilities.len() as u64);
        for capability in &card.capabilities {
            self.str(&capability.name);
            self.str(&capability.description);
        }
        self.u64(card.metadata.len() as u64);
        for (key, value) in &card.metadata {
            self.str(key);
            self.str(value);
        }
    }

    fn lease(&mut self, view: &LeaseView) {
        self.str(&view.task_id);
        self.bytes(&view.holder.0.to_le_bytes());
        self.u64(view.token);
        self.u64(view.acquired_at);
        self.u64(view.expires_at);
    }

    fn election(&mut self, view: &ElectionView) {
        self.str(&view.group);
        match view.leader {
            Some(id) => {
                self.tag(1);
                self.bytes(&id.0.to_le_bytes());
            }
            None => self.tag(0),
        }
        self.u64(view.term);
        self.u64(view.elected_at);
    }

    fn policy(&mut self, policy: &Policy) {
        self.str(&policy.id);
        self.str(&policy.subject);
        self.str(&policy.action);
        self.str(&policy.resource);
        self.tag(match policy.effect {
            Effect::Allow => 0,
            Effect::Deny => 1,
        });
    }
}

/// A stable number per error class (the enum's own discriminants are not a format).
fn error_code(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::InvalidArgument => 1,
        ErrorCode::NotFound => 2,
        ErrorCode::PermissionDenied => 3,
        ErrorCode::FailedPrecondition => 4,
        ErrorCode::ResourceExhausted => 5,
        ErrorCode::OutOfRange => 6,
        ErrorCode::Unavailable => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        let mut empty = Digest::default();
        empty.bytes(b"");
        assert_eq!(empty.value(), 0xcbf2_9ce4_8422_2325);
        let mut a = Digest::default();
        a.bytes(b"a");
        assert_eq!(a.value(), 0xaf63_dc4c_8601_ec8c);
        let mut foobar = Digest::default();
        foobar.bytes(b"foobar");
        assert_eq!(foobar.hex(), "85944171f73967e8");
    }
}
