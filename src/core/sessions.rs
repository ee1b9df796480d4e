//! Client sessions: which of a client's numbered creating writes (Register, CreateTask) the core
//! has applied, and what each created, so that a write a client sends again because it never
//! learned the outcome (a failover, a lost reply) is applied once and answered as the first time.
//!
//! Architecture invariant: bounded per client and in all, and forgotten by the core's time
//! alone (never a clock): every replica remembers and forgets the same requests at the same
//! index. Ordered structures only, so a snapshot is the same bytes on every replica.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::types::{AgentId, Millis, TaskId};

/// A client's numbered request: the client's random id and the request's number in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId {
    pub client: u128,
    pub seq: u64,
}

/// What a remembered request created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    Agent(AgentId),
    Task(TaskId),
}

/// Requests remembered per client (the newest): a client retries a request long before it has
/// sent this many more.
pub const PER_CLIENT_MAX: usize = 64;
/// Clients remembered at most; past it the longest idle is forgotten.
pub const CLIENTS_MAX: usize = 100_000;
/// A client not heard from for this long is forgotten (a retry comes within seconds).
pub const IDLE_MS: Millis = 15 * 60_000;

/// One client's remembered requests, as a snapshot keeps them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionState {
    pub client: u128,
    pub last_used: Millis,
    /// Oldest first.
    pub applied: Vec<(u64, Created)>,
}

struct Session {
    last_used: Millis,
    applied: VecDeque<(u64, Created)>,
}

#[derive(Default)]
pub struct Sessions {
    clients: BTreeMap<u128, Session>,
    /// (last used, client): the idle order, for forgetting.
    by_use: BTreeSet<(Millis, u128)>,
}

impl Sessions {
    /// What `request` created, if it was applied and is still remembered.
    pub fn created(&self, request: RequestId) -> Option<Created> {
        let session = self.clients.get(&request.client)?;
        (session.applied.iter())
            .find(|(seq, _)| *seq == request.seq)
            .map(|(_, created)| *created)
    }

    /// Remembers that `request` created `created` at `now`; forgets idle clients, the oldest
    /// request of a client over its bound, and the longest idle client over the bound.
    pub fn remember(&mut self, now: Millis, request: RequestId, created: Created) {
        while let Some(&(last_used, client)) = self.by_use.first()
            && (last_used.saturating_add(IDLE_MS) <= now || self.clients.len() > CLIENTS_MAX)
        {
            self.by_use.remove(&(last_used, client));
            self.clients.remove(&client);
        }
        let session = self.clients.entry(request.client).or_insert_with(|| Session {
            last_used: now,
            applied: VecDeque::new(),
        });
        self.by_use.remove(&(session.last_used, request.client));
        session.last_used = session.last_used.max(now);
        self.by_use.insert((session.last_used, request.client));
        session.applied.push_back((request.seq, created));
        if session.applied.len() > PER_CLIENT_MAX {
            session.applied.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Every client's remembered requests, by client id.
    pub fn snapshot(&self) -> Vec<SessionState> {
        (self.clients.iter())
            .map(|(client, session)| SessionState {
                client: *client,
                last_used: session.last_used,
                applied: session.applied.iter().copied().collect(),
            })
            .collect()
    }

    pub fn restore(states: Vec<SessionState>) -> Sessions {
        let mut sessions = Sessions::default();
        for state in states {
            sessions.by_use.insert((state.last_used, state.client));
            let session = Session {
                last_used: state.last_used,
                applied: state.applied.into_iter().collect(),
            };
            sessions.clients.insert(state.client, session);
        }
        sessions
    }

    pub fn check_invariants(&self) {
        assert_eq!(
            self.by_use.len(),
            self.clients.len(),
            "the idle order holds every client once"
        );
        for (client, session) in &self.clients {
            assert!(
                self.by_use.contains(&(session.last_used, *client)),
                "client {client:x} out of the idle order"
            );
            assert!(
                session.applied.len() <= PER_CLIENT_MAX,
                "client {client:x} over its bound"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::Id128;

    fn request(client: u128, seq: u64) -> RequestId {
        RequestId { client, seq }
    }

    #[test]
    fn a_request_is_remembered_until_its_client_sends_many_more_or_goes_idle() {
        let mut sessions = Sessions::default();
        sessions.remember(1_000, request(7, 1), Created::Agent(Id128(11)));
        assert_eq!(sessions.created(request(7, 1)), Some(Created::Agent(Id128(11))));
        assert_eq!(sessions.created(request(7, 2)), None);
        assert_eq!(sessions.created(request(8, 1)), None);
        for seq in 2..=(PER_CLIENT_MAX as u64 + 1) {
            sessions.remember(2_000, request(7, seq), Created::Task(Id128(seq as u128)));
        }
        assert_eq!(
            sessions.created(request(7, 1)),
            None,
            "the oldest beyond the bound is forgotten"
        );
        assert_eq!(sessions.created(request(7, 2)), Some(Created::Task(Id128(2))));
        sessions.check_invariants();
        // Another client's request after the first went idle forgets it.
        sessions.remember(2_000 + IDLE_MS, request(9, 1), Created::Agent(Id128(1)));
        assert_eq!(sessions.created(request(7, 2)), None);
        assert_eq!(sessions.len(), 1);
        let restored = Sessions::restore(sessions.snapshot());
        assert_eq!(restored.snapshot(), sessions.snapshot());
        restored.check_invariants();
    }
}
