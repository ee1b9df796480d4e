//! The safety properties checked after every step, each with the name a failure report prints.
//! These look only at what the core itself shows (replies, delivered events, `inspect` views);
//! comparing against the reference model is the executor's separate, later check.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use agentkeeper::core::events::{AgentView, ElectionView, LeaseView};
use agentkeeper::core::types::{AgentId, AgentStatus, Millis, Policy};
use agentkeeper::core::{Command, Event, EventPayload, Reply, Topic};

use crate::model;

pub const LEASE_SINGLE_HOLDER: &str = "lease.single_holder";
pub const LEASE_FENCING_TOKEN: &str = "lease.fencing_token";
pub const LEASE_EXPIRES_ON_TIME: &str = "lease.expires_on_time";
pub const AGENT_STATUS_MATCHES_HEARTBEAT: &str = "agent.status_matches_heartbeat";
pub const AGENT_DEAD_HOLDS_NOTHING: &str = "agent.dead_holds_nothing";
pub const ELECTION_TERM_NEVER_DECREASES: &str = "election.term_never_decreases";
pub const ELECTION_LEADER_IS_LIVE_CANDIDATE: &str = "election.leader_is_live_candidate";
pub const WATCH_CONTIGUOUS: &str = "watch.contiguous";
pub const POLICY_CHECK_EQUALS_BRUTE_FORCE: &str = "policy.check_equals_brute_force";
pub const FIND_ALIVE_WITH_TOOLS: &str = "find.alive_with_tools";
pub const TIMERS_NEXT_DEADLINE_NOT_LATE: &str = "timers.next_deadline_not_late";
pub const CORE_CHECK_INVARIANTS: &str = "core.check_invariants";
pub const CORE_PANIC: &str = "core.panic";
pub const MODEL_REPLY: &str = "model.reply";
pub const MODEL_EVENTS: &str = "model.events";
pub const MODEL_STATE: &str = "model.state";

/// Every invariant name, in the order a step checks them.
pub const ALL: [&str; 16] = [
    CORE_PANIC,
    WATCH_CONTIGUOUS,
    LEASE_FENCING_TOKEN,
    LEASE_SINGLE_HOLDER,
    LEASE_EXPIRES_ON_TIME,
    AGENT_STATUS_MATCHES_HEARTBEAT,
    AGENT_DEAD_HOLDS_NOTHING,
    ELECTION_TERM_NEVER_DECREASES,
    ELECTION_LEADER_IS_LIVE_CANDIDATE,
    POLICY_CHECK_EQUALS_BRUTE_FORCE,
    FIND_ALIVE_WITH_TOOLS,
    CORE_CHECK_INVARIANTS,
    TIMERS_NEXT_DEADLINE_NOT_LATE,
    MODEL_REPLY,
    MODEL_EVENTS,
    MODEL_STATE,
];

/// The failures one step found, in the order found: (invariant, what was seen).
#[derive(Default, Debug)]
pub struct Failures {
    pub found: Vec<(&'static str, String)>,
}

impl Failures {
    pub fn fail(&mut self, invariant: &'static str, detail: String) {
        self.found.push((invariant, detail));
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }
}

/// What the checker remembers between steps, all learned from the core's own event stream.
pub struct Checker {
    /// The newest events, as many as the core retains: what a resume must replay.
    pub ring: VecDeque<Arc<Event>>,
    ring_max: usize,
    sequence_last: u64,
    /// The highest fencing token ever granted.
    token_highest: u64,
    /// The token of the lease each key is held under, per the events.
    token_by_key: BTreeMap<Arc<str>, u64>,
    /// Each group's term, per its last `leader.changed`.
    terms: BTreeMap<Arc<str>, u64>,
}

/// The core's state after a step, as `inspect` shows it.
pub struct State<'a> {
    pub now: Millis,
    pub agents: &'a [AgentView],
    pub leases: &'a [LeaseView],
    pub elections: &'a [(ElectionView, Vec<AgentId>)],
    pub policies: &'a [Policy],
}

impl Checker {
    pub fn new(ring_max: usize) -> Self {
        Checker {
            ring: VecDeque::new(),
            ring_max,
            sequence_last: 0,
            token_highest: 0,
            token_by_key: BTreeMap::new(),
            terms: BTreeMap::new(),
        }
    }

    /// The step's new events (everything the all-topics tap received): contiguous sequence
    /// numbers, fencing tokens, expiry and liveness timing, terms. `deregistered` is the agent a
    /// successful Deregister in this step named, if any (its death needs no timeout).
    pub fn events(&mut self, events: &[Arc<Event>], deregistered: Option<AgentId>, failures: &mut Failures) {
        for event in events {
            if event.sequence != self.sequence_last + 1 {
                failures.fail(
                    WATCH_CONTIGUOUS,
                    format!(
                        "the all-topics subscriber got sequence {} after {}",
                        event.sequence, self.sequence_last
                    ),
                );
            }
            self.sequence_last = event.sequence;
            if self.ring.len() == self.ring_max {
                self.ring.pop_front();
            }
            self.ring.push_back(Arc::clone(event));
            match &event.payload {
                EventPayload::Lease(lease) => self.lease_event(event, lease, failures),
                EventPayload::Agent(agent) => agent_event(event, agent, deregistered, failures),
                EventPayload::Election(view) => {
                    let last = self.terms.insert(Arc::clone(&view.group), view.term).unwrap_or(0);
                    if view.term <= last {
                        failures.fail(
                            ELECTION_TERM_NEVER_DECREASES,
                            format!(
                                "leader.changed #{} of group {:?} has term {} after term {last}",
                                event.sequence, view.group, view.term
                            ),
                        );
                    }
                }
            }
        }
    }

    fn lease_event(&mut self, event: &Event, lease: &LeaseView, failures: &mut Failures) {
        let key = &lease.task_id;
        match event.topic {
            Topic::LeaseAcquired => {
                if lease.token <= self.token_highest {
                    failures.fail(
                        LEASE_FENCING_TOKEN,
                        format!(
                            "lease.acquired #{} grants {key:?} under token {}, but token {} was already granted",
                            event.sequence, lease.token, self.token_highest
                        ),
                    );
                }
                self.token_highest = self.token_highest.max(lease.token);
                if let Some(held) = self.token_by_key.insert(Arc::clone(key), lease.token) {
                    failures.fail(
                        LEASE_SINGLE_HOLDER,
                        format!(
                            "lease.acquired #{} grants {key:?} while token {held} still holds it",
                            event.sequence
                        ),
                    );
                }
            }
            Topic::LeaseRenewed => {
                if self.token_by_key.get(key) != Some(&lease.token) {
                    failures.fail(
                        LEASE_FENCING_TOKEN,
                        format!(
                            "lease.renewed #{} on {key:?} under token {}, but the key is held under {:?}",
                            event.sequence,
                            lease.token,
                            self.token_by_key.get(key)
                        ),
                    );
                }
            }
            Topic::LeaseReleased | Topic::LeaseExpired => {
                let held = self.token_by_key.remove(key);
                if held != Some(lease.token) {
                    failures.fail(
                        LEASE_FENCING_TOKEN,
                        format!(
                            "{} #{} on {key:?} under token {}, but the key was held under {held:?}",
                            model::topic_name(event.topic),
                            event.sequence,
                            lease.token
                        ),
                    );
                }
                if event.topic == Topic::LeaseExpired && event.occurred_at < lease.expires_at {
                    failures.fail(
                        LEASE_EXPIRES_ON_TIME,
                        format!(
                            "lease.expired #{} on {key:?} at {} before its expiry {}",
                            event.sequence, event.occurred_at, lease.expires_at
                        ),
                    );
                }
            }
            _ => {}
        }
    }

    /// The state after the step: one holder per key, no DEAD agent holding anything, statuses
    /// that agree with heartbeats, leaders that are live heads of their FIFO, terms as announced.
    pub fn state(&self, state: &State<'_>, failures: &mut Failures) {
        let by_id: BTreeMap<AgentId, &AgentView> = state.agents.iter().map(|a| (a.agent_id, a)).collect();
        let now = state.now;
        for agent in state.agents {
            let (heartbeat, ttl) = (agent.last_heartbeat_at, agent.ttl_ms);
            let agrees = match agent.status {
                AgentStatus::Alive => now < heartbeat + ttl,
                AgentStatus::Unreachable => heartbeat + ttl <= now && now < heartbeat + 2 * ttl,
                AgentStatus::Dead => true,
            };
            if !agrees {
                failures.fail(
                    AGENT_STATUS_MATCHES_HEARTBEAT,
                    format!(
                        "agent {} is {:?} at {now} with its last heartbeat at {heartbeat} and ttl {ttl} ms",
                        agent.agent_id, agent.status
                    ),
                );
            }
        }
        self.leases(state, &by_id, failures);
        self.elections(state, &by_id, failures);
    }

    fn leases(&self, state: &State<'_>, by_id: &BTreeMap<AgentId, &AgentView>, failures: &mut Failures) {
        for pair in state.leases.windows(2) {
            if pair[0].task_id == pair[1].task_id {
                failures.fail(
                    LEASE_SINGLE_HOLDER,
                    format!(
                        "key {:?} is held twice: by {} (token {}) and by {} (token {})",
                        pair[0].task_id, pair[0].holder, pair[0].token, pair[1].holder, pair[1].token
                    ),
                );
            }
        }
        for lease in state.leases {
            match by_id.get(&lease.holder) {
                Some(holder) if holder.status != AgentStatus::Dead => {}
                holder => failures.fail(
                    AGENT_DEAD_HOLDS_NOTHING,
                    format!(
                        "lease {:?} (token {}) is held by agent {} which is {}",
                        lease.task_id,
                        lease.token,
                        lease.holder,
                        holder.map_or("forgotten".to_string(), |h| format!("{:?}", h.status))
                    ),
                ),
            }
            if state.now >= lease.expires_at {
                failures.fail(
                    LEASE_EXPIRES_ON_TIME,
                    format!(
                        "lease {:?} is still held at {} though it expired at {}",
                        lease.task_id, state.now, lease.expires_at
                    ),
                );
            }
            if self.token_by_key.get(&lease.task_id) != Some(&lease.token) {
                failures.fail(
                    LEASE_FENCING_TOKEN,
                    format!(
                        "lease {:?} is held under token {}, but its grant announced {:?}",
                        lease.task_id,
                        lease.token,
                        self.token_by_key.get(&lease.task_id)
                    ),
                );
            }
        }
    }

    fn elections(&self, state: &State<'_>, by_id: &BTreeMap<AgentId, &AgentView>, failures: &mut Failures) {
        for (view, candidates) in state.elections {
            if view.leader != candidates.first().copied() || (view.leader.is_some() && view.term == 0) {
                failures.fail(
                    ELECTION_LEADER_IS_LIVE_CANDIDATE,
                    format!(
                        "group {:?} term {} shows leader {:?} but its FIFO is {candidates:?}",
                        view.group, view.term, view.leader
                    ),
                );
            }
            for candidate in candidates {
                let status = by_id.get(candidate).map(|a| a.status);
                if status.is_none_or(|s| s == AgentStatus::Dead) {
                    let name = if view.leader == Some(*candidate) {
                        ELECTION_LEADER_IS_LIVE_CANDIDATE
                    } else {
                        AGENT_DEAD_HOLDS_NOTHING
                    };
                    failures.fail(
                        name,
                        format!(
                            "agent {candidate} ({}) stands in group {:?}",
                            status.map_or("forgotten".to_string(), |s| format!("{s:?}")),
                            view.group
                        ),
                    );
                }
            }
            let announced = self.terms.get(&view.group).copied().unwrap_or(0);
            if view.term != announced {
                failures.fail(
                    ELECTION_TERM_NEVER_DECREASES,
                    format!(
                        "group {:?} is at term {} but its last leader.changed announced term {announced}",
                        view.group, view.term
                    ),
                );
            }
        }
        for group in self.terms.keys() {
            if !state.elections.iter().any(|(v, _)| v.group == *group) {
                failures.fail(
                    ELECTION_TERM_NEVER_DECREASES,
                    format!("group {group:?} was forgotten, and its term with it"),
                );
            }
        }
    }

    /// Checks one reply against the core's own state: Find returns ALIVE agents with every tool
    /// (registration order for an empty query), CheckPolicy agrees with brute force over the
    /// core's own policy list, an acquire grants only to the asker.
    pub fn reply(&self, command: &Command, reply: &Reply, state: &State<'_>, failures: &mut Failures) {
        match (command, reply) {
            (Command::Find { query, tools, .. }, Reply::Agents(found)) => find(query, tools, found, state, failures),
            (
                Command::CheckPolicy {
                    subject,
                    action,
                    resource,
                },
                Reply::Decision(decision),
            ) => {
                let brute = model::decide(state.policies, subject, action, resource);
                if *decision != brute {
                    failures.fail(
                        POLICY_CHECK_EQUALS_BRUTE_FORCE,
                        format!(
                            "check ({subject:?}, {action:?}, {resource:?}) answered {decision:?}, brute force over the \
                             core's {} policies says {brute:?}",
                            state.policies.len()
                        ),
                    );
                }
            }
            (Command::AcquireLease { agent_id, .. }, Reply::Lease { lease, acquired }) => {
                let asker_holds = lease.holder.to_string() == *agent_id;
                if *acquired != asker_holds {
                    failures.fail(
                        LEASE_SINGLE_HOLDER,
                        format!(
                            "acquire of {:?} by {agent_id} answered acquired={acquired} with holder {}",
                            lease.task_id, lease.holder
                        ),
                    );
                }
            }
            _ => {}
        }
    }
}

fn agent_event(event: &Event, agent: &AgentView, deregistered: Option<AgentId>, failures: &mut Failures) {
    let (heartbeat, ttl) = (agent.last_heartbeat_at, agent.ttl_ms);
    let on_time = match event.topic {
        Topic::AgentUnreachable => event.occurred_at >= heartbeat + ttl,
        Topic::AgentDied => deregistered == Some(agent.agent_id) || event.occurred_at >= heartbeat + 2 * ttl,
        _ => true,
    };
    if !on_time {
        failures.fail(
            AGENT_STATUS_MATCHES_HEARTBEAT,
            format!(
                "{} #{} for agent {} at {} with its last heartbeat at {heartbeat} and ttl {ttl} ms",
                model::topic_name(event.topic),
                event.sequence,
                agent.agent_id,
                event.occurred_at
            ),
        );
    }
}

fn find(query: &str, tools: &[String], found: &[AgentView], state: &State<'_>, failures: &mut Failures) {
    let mut previous: Option<usize> = None;
    for view in found {
        let position = state.agents.iter().position(|a| a.agent_id == view.agent_id);
        let fits = position.is_some_and(|p| {
            let agent = &state.agents[p];
            agent.status == AgentStatus::Alive && tools.iter().all(|t| agent.card.tools.contains(t))
        });
        if !fits {
            failures.fail(
                FIND_ALIVE_WITH_TOOLS,
                format!(
                    "find (query {query:?}, tools {tools:?}) returned agent {} ({:?}, tools {:?})",
                    view.agent_id, view.status, view.card.tools
                ),
            );
        }
        if query.is_empty() && previous.is_some_and(|p| position.is_none_or(|q| q <= p)) {
            failures.fail(
                FIND_ALIVE_WITH_TOOLS,
                format!(
                    "find with an empty query is not in registration order at agent {}",
                    view.agent_id
                ),
            );
        }
        previous = position;
    }
    let mut ids: Vec<AgentId> = found.iter().map(|a| a.agent_id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        failures.fail(
            FIND_ALIVE_WITH_TOOLS,
            format!("find (query {query:?}) returned an agent twice"),
        );
    }
}
