//! Agents: registration, heartbeats, the ALIVE -> UNREACHABLE -> DEAD lifecycle, death clean-up
//! in the contract's order, and the ordered indexes Find and the listings read (agents by status
//! in registration order, ALIVE agents by tool, the search index).
//!
//! Architecture invariant: each agent owns exactly one timer (its next liveness transition, or
//! its forgetting once DEAD); every agent is filed under exactly its status; a status change
//! moves it between indexes in O(tools x log n); nothing here scans all agents on a tick.

use std::collections::BTreeMap;
use std::sync::Arc;

use slab::Slab;

use super::events::{AgentView, EventPayload, Topic};
use super::search::SearchIndex;
use super::search::card_text::{CardDigest, card_digest};
use super::search::vectors::{CardVector, ModelVector, check_model_name, unit};
use super::timers::{TimerKey, TimerWheel};
use super::types::{AgentCard, AgentId, AgentStatus, Map, Millis, TokenId, new_map};
use super::validate;
use super::{Core, CoreError, Deadline, ErrorCode, Outcome, Reply, limit_reached};

pub struct Agent {
    pub id: AgentId,
    pub card: Arc<AgentCard>,
    pub status: AgentStatus,
    pub registered_at: Millis,
    pub last_heartbeat_at: Millis,
    /// The instant the ttl counts from: the last heartbeat, or later where a restart's grace
    /// pushed it (nobody is punished for the daemon's downtime).
    pub liveness_base: Millis,
    pub ttl_ms: u64,
    /// Registration order, for Find's ordering and tie-breaks.
    pub registration: u64,
    pub timer: TimerKey,
    /// Leases held, by fencing token (so clean-up releases them in acquisition order).
    pub leases: BTreeMap<u64, usize>,
    /// Election groups stood in, in the order joined, each with the agent's place in its line.
    pub groups: Vec<(usize, u64)>,
    /// The agent token that registered it, if one did: only that token may act for it.
    pub owner: Option<TokenId>,
}

impl Agent {
    pub fn view(&self) -> AgentView {
        AgentView {
            agent_id: self.id,
            card: Arc::clone(&self.card),
            status: self.status,
            registered_at: self.registered_at,
            last_heartbeat_at: self.last_heartbeat_at,
            ttl_ms: self.ttl_ms,
        }
    }

    /// When this agent's current timer is due, from its status, last heartbeat and time of death.
    pub(super) fn deadline_expected(&self, dead_at: Option<Millis>, dead_retention_ms: u64) -> Millis {
        match self.status {
            AgentStatus::Alive => self.liveness_base + self.ttl_ms,
            AgentStatus::Unreachable => self.liveness_base + 2 * self.ttl_ms,
            AgentStatus::Dead => dead_at.expect("a DEAD agent has a time of death") + dead_retention_ms,
        }
    }
}

/// The ordered index of one status: agents by registration.
pub type ByRegistration = BTreeMap<u64, usize>;

pub struct Registry {
    pub(super) agents: Slab<Agent>,
    pub(super) by_id: Map<AgentId, usize>,
    /// Every known agent under its status (ALIVE, UNREACHABLE, DEAD), in registration order:
    /// listings page through them, Find's empty query reads the ALIVE one.
    pub(super) by_status: [ByRegistration; 3],
    /// ALIVE agents by each tool they list, in registration order: Find's tool filter.
    pub(super) by_tool: Map<Box<str>, ByRegistration>,
    /// Agents not DEAD, for Find's query.
    pub(super) search: SearchIndex,
    pub(super) registration_next: u64,
    pub(super) hash_seed: u64,
    /// When each DEAD agent died, for its retention deadline.
    pub(super) dead_at: Map<usize, Millis>,
}

/// Where a status's agents are filed in `Registry::by_status`.
pub fn status_index(status: AgentStatus) -> usize {
    match status {
        AgentStatus::Alive => 0,
        AgentStatus::Unreachable => 1,
        AgentStatus::Dead => 2,
    }
}

impl Registry {
    pub fn new(hash_seed: u64) -> Self {
        Registry {
            agents: Slab::new(),
            by_id: new_map(hash_seed),
            by_status: Default::default(),
            by_tool: new_map(hash_seed),
            search: SearchIndex::new(hash_seed),
            registration_next: 1,
            hash_seed,
            dead_at: new_map(hash_seed),
        }
    }

    /// (alive, unreachable, dead)
    pub fn counts(&self) -> (usize, usize, usize) {
        let [alive, unreachable, dead] = &self.by_status;
        (alive.len(), unreachable.len(), dead.len())
    }

    /// The agents in `status`, in registration order.
    pub fn with_status(&self, status: AgentStatus) -> &ByRegistration {
        &self.by_status[status_index(status)]
    }

    /// Every ALIVE, then every UNREACHABLE agent's key, each in registration order.
    pub(super) fn live_keys(&self) -> Vec<usize> {
        [AgentStatus::Alive, AgentStatus::Unreachable]
            .into_iter()
            .flat_map(|status| self.with_status(status).values().copied())
            .collect()
    }

    /// The ALIVE agents that list `tool`, in registration order (none: `None`).
    pub fn with_tool(&self, tool: &str) -> Option<&ByRegistration> {
        self.by_tool.get(tool)
    }

    /// Every known agent, in slab order (sort before showing).
    pub fn iter(&self) -> impl Iterator<Item = &Agent> {
        self.agents.iter().map(|(_, agent)| agent)
    }

    pub fn get(&self, key: usize) -> &Agent {
        &self.agents[key]
    }

    pub fn get_mut(&mut self, key: usize) -> &mut Agent {
        &mut self.agents[key]
    }

    /// Finds a known agent (DEAD included) by its id as sent on the wire.
    pub fn lookup(&self, agent_id: &str) -> Result<usize, CoreError> {
        AgentId::parse(agent_id)
            .and_then(|id| self.by_id.get(&id).copied())
            .ok_or_else(|| {
                CoreError::new(
                    ErrorCode::NotFound,
                    format!("agent {} not found", validate::quote(agent_id)),
                )
            })
    }

    /// Finds an agent that is ALIVE or UNREACHABLE: the ones that may hold leases and campaign.
    pub fn lookup_live(&self, agent_id: &str) -> Result<usize, CoreError> {
        let key = self.lookup(agent_id)?;
        if self.agents[key].status == AgentStatus::Dead {
            return Err(CoreError::new(
                ErrorCode::NotFound,
                format!("agent {} is dead; register again", validate::quote(agent_id)),
            ));
        }
        Ok(key)
    }

    /// Files a new (or restored) agent in every index its status calls for.
    pub(super) fn file(&mut self, key: usize) {
        let agent = &self.agents[key];
        let (status, registration) = (agent.status, agent.registration);
        let filed = self.by_status[status_index(status)].insert(registration, key);
        assert!(filed.is_none(), "registration {registration} filed twice");
        if status != AgentStatus::Dead {
            let card = Arc::clone(&agent.card);
            self.search.insert(key, registration, &card);
        }
        if status == AgentStatus::Alive {
            self.post_tools(key);
        }
    }

    /// Moves an agent to `status`, and between the indexes that depend on it: ALIVE agents are
    /// posted under their tools, DEAD ones leave the search index.
    fn set_status(&mut self, key: usize, status: AgentStatus) {
        let agent = &mut self.agents[key];
        let (from, registration) = (agent.status, agent.registration);
        assert_ne!(from, AgentStatus::Dead, "a DEAD agent never changes status");
        assert_ne!(from, status, "agent {} is already {status:?}", agent.id);
        agent.status = status;
        let moved = self.by_status[status_index(from)].remove(&registration);
        assert_eq!(moved, Some(key), "agent {} not filed under {from:?}", agent.id);
        self.by_status[status_index(status)].insert(registration, key);
        if from == AgentStatus::Alive {
            self.unpost_tools(key);
        }
        match status {
            AgentStatus::Alive => self.post_tools(key),
            AgentStatus::Dead => self.search.remove(key),
            AgentStatus::Unreachable => {}
        }
    }

    fn post_tools(&mut self, key: usize) {
        let agent = &self.agents[key];
        for tool in &agent.card.tools {
            let posting = match self.by_tool.get_mut(tool.as_str()) {
                Some(posting) => posting,
                None => self.by_tool.entry(tool.as_str().into()).or_default(),
            };
            // A card may list a tool twice; it is posted once.
            posting.insert(agent.registration, key);
        }
    }

    fn unpost_tools(&mut self, key: usize) {
        let agent = &self.agents[key];
        for tool in &agent.card.tools {
            if let Some(posting) = self.by_tool.get_mut(tool.as_str()) {
                posting.remove(&agent.registration);
                if posting.is_empty() {
                    self.by_tool.remove(tool.as_str());
                }
            }
        }
    }

    pub fn check_invariants(&self, now: Millis, dead_retention_ms: u64, timers: &TimerWheel<Deadline>) {
        let mut tool_postings = 0;
        for (key, agent) in &self.agents {
            assert_eq!(
                self.by_id.get(&agent.id),
                Some(&key),
                "agent {} missing from the id index",
                agent.id
            );
            assert_eq!(
                timers.get(agent.timer),
                &Deadline::Agent(key),
                "agent {} timer owned by another",
                agent.id
            );
            let dead_at = self.dead_at.get(&key).copied();
            assert_eq!(
                dead_at.is_some(),
                agent.status == AgentStatus::Dead,
                "agent {} time of death",
                agent.id
            );
            let expected = agent.deadline_expected(dead_at, dead_retention_ms);
            match agent.status {
                AgentStatus::Alive => {
                    assert!(
                        now < agent.liveness_base + agent.ttl_ms,
                        "agent {} ALIVE past its ttl",
                        agent.id
                    );
                    assert_eq!(timers.deadline(agent.timer), expected, "agent {} ALIVE timer", agent.id);
                }
                AgentStatus::Unreachable => {
                    assert!(
                        now >= agent.liveness_base + agent.ttl_ms,
                        "agent {} UNREACHABLE early",
                        agent.id
                    );
                    assert!(now < expected, "agent {} UNREACHABLE past 2 x ttl", agent.id);
                    assert_eq!(
                        timers.deadline(agent.timer),
                        expected,
                        "agent {} UNREACHABLE timer",
                        agent.id
                    );
                }
                AgentStatus::Dead => {
                    assert_eq!(
                        timers.deadline(agent.timer),
                        expected,
                        "agent {} retention timer",
                        agent.id
                    );
                    assert!(agent.leases.is_empty(), "DEAD agent {} holds leases", agent.id);
                    assert!(agent.groups.is_empty(), "DEAD agent {} stands in elections", agent.id);
                    assert!(!self.search.contains(key), "DEAD agent {} still searchable", agent.id);
                }
            }
            assert_eq!(
                self.with_status(agent.status).get(&agent.registration),
                Some(&key),
                "agent {} not filed under {:?}",
                agent.id,
                agent.status
            );
            assert_eq!(
                self.search.contains(key),
                agent.status != AgentStatus::Dead,
                "search index of agent {}",
                agent.id
            );
            let alive = agent.status == AgentStatus::Alive;
            let mut tools: Vec<&str> = agent.card.tools.iter().map(String::as_str).collect();
            tools.sort_unstable();
            tools.dedup();
            for tool in tools {
                let posted = self.by_tool.get(tool).and_then(|p| p.get(&agent.registration));
                assert_eq!(posted == Some(&key), alive, "tool index of agent {}", agent.id);
                tool_postings += usize::from(alive);
            }
        }
        assert_eq!(self.by_id.len(), self.agents.len(), "id index holds forgotten agents");
        let filed: usize = self.by_status.iter().map(BTreeMap::len).sum();
        assert_eq!(
            filed,
            self.agents.len(),
            "every agent is filed under exactly one status"
        );
        let posted: usize = self.by_tool.values().map(BTreeMap::len).sum();
        assert_eq!(posted, tool_postings, "tool postings hold agents that are not ALIVE");
        assert!(
            self.by_tool.values().all(|p| !p.is_empty()),
            "an empty tool posting kept"
        );
        let (alive, unreachable, _) = self.counts();
        assert_eq!(self.search.len(), alive + unreachable, "search index size");
        self.search.check_invariants();
    }
}

impl Core {
    /// Registers `card`; with `vector`, the new agent has it at once if `set_card_vector` would
    /// take it (else it goes without, and the registration stands).
    pub(super) fn register(
        &mut self,
        card: AgentCard,
        ttl_seconds: u32,
        vector: Option<Arc<CardVector>>,
        owner: Option<TokenId>,
    ) -> Outcome {
        validate::card(&card)?;
        let ttl_ms = validate::ttl_ms(ttl_seconds, validate::AGENT_TTL_SECONDS_DEFAULT)?;
        if self.registry.agents.len() >= self.config.agents_max {
            return Err(limit_reached("agents_max", self.config.agents_max));
        }
        let id = loop {
            let id = self.ids.next_id();
            if !self.registry.by_id.contains_key(&id) {
                break id;
            }
        };
        let now = self.now;
        let registry = &mut self.registry;
        let entry = registry.agents.vacant_entry();
        let key = entry.key();
        let timer = self.timers.insert(now + ttl_ms, Deadline::Agent(key));
        let registration = registry.registration_next;
        registry.registration_next += 1;
        let agent = entry.insert(Agent {
            id,
            card: Arc::new(card),
            status: AgentStatus::Alive,
            registered_at: now,
            last_heartbeat_at: now,
            liveness_base: now,
            ttl_ms,
            registration,
            timer,
            leases: BTreeMap::new(),
            groups: Vec::new(),
            owner,
        });
        let view = agent.view();
        registry.by_id.insert(id, key);
        registry.file(key);
        if let Some(vector) = vector {
            // A vector the daemon could not have meant for this card (another text's digest, a
            // model beyond the bound) is left out, as SetCardVector would refuse it: the
            // registration does not depend on the encoder.
            let _refused = self.give_card_vector(key, vector.card_digest, &vector.vector);
        }
        self.emit(Topic::AgentRegistered, EventPayload::Agent(view));
        Ok(Reply::Registered { agent_id: id })
    }

    pub(super) fn heartbeat(&mut self, agent_id: &str) -> Outcome {
        let key = self.registry.lookup_live(agent_id)?;
        let now = self.now;
        let agent = self.registry.get_mut(key);
        agent.last_heartbeat_at = now;
        agent.liveness_base = now;
        let deadline = now + agent.ttl_ms;
        let timer = agent.timer;
        let recovered = agent.status == AgentStatus::Unreachable;
        self.timers.reset(timer, deadline);
        if recovered {
            self.registry.set_status(key, AgentStatus::Alive);
            let view = self.registry.get(key).view();
            self.emit(Topic::AgentRecovered, EventPayload::Agent(view));
        }
        Ok(Reply::Done)
    }

    pub(super) fn deregister(&mut self, agent_id: &str) -> Outcome {
        let key = self.registry.lookup(agent_id)?;
        if self.registry.get(key).status != AgentStatus::Dead {
            self.kill(key);
        }
        Ok(Reply::Done)
    }

    /// Sets the agent's card vector, if the agent is still searchable and its card is still the
    /// one `digest` names (a vector computed for a card that has gone is refused, and changes
    /// nothing).
    pub(super) fn set_card_vector(&mut self, agent_id: &str, digest: CardDigest, vector: &ModelVector) -> Outcome {
        let key = self.registry.lookup_live(agent_id)?;
        self.give_card_vector(key, digest, vector)?;
        Ok(Reply::Done)
    }

    /// Gives the searchable agent `key` its card vector if its card is the one `digest` names
    /// and the vector is one the index takes; a refusal changes nothing. SetCardVector's rule,
    /// and Register's for a vector that comes with the card.
    fn give_card_vector(&mut self, key: usize, digest: CardDigest, vector: &ModelVector) -> Result<(), CoreError> {
        let agent = self.registry.get(key);
        debug_assert_ne!(agent.status, AgentStatus::Dead, "a dead agent is not searchable");
        if card_digest(&agent.card) != digest {
            return Err(CoreError::new(
                ErrorCode::FailedPrecondition,
                format!("agent {}'s card is not the one the vector was computed from", agent.id),
            ));
        }
        let invalid = |why: String| CoreError::new(ErrorCode::InvalidArgument, why);
        check_model_name(&vector.model).map_err(invalid)?;
        let values = unit(&vector.values).map_err(invalid)?;
        self.registry
            .search
            .set_vector(key, &vector.model, &values)
            .map_err(|why| CoreError::new(ErrorCode::FailedPrecondition, why))?;
        debug_assert!(self.registry.search.vector(key).is_some());
        Ok(())
    }

    pub(super) fn get_agent(&self, agent_id: &str) -> Outcome {
        let key = self.registry.lookup(agent_id)?;
        Ok(Reply::Agent(self.registry.get(key).view()))
    }

    /// An agent's timer fired: the next step of its lifecycle.
    pub(super) fn agent_deadline(&mut self, key: usize, timer: TimerKey) {
        let now = self.now;
        let agent = self.registry.get(key);
        assert_eq!(agent.timer, timer, "agent {} fired a timer it does not own", agent.id);
        match agent.status {
            AgentStatus::Alive => {
                let dead_deadline = agent.liveness_base + 2 * agent.ttl_ms;
                debug_assert!(now >= agent.liveness_base + agent.ttl_ms);
                self.registry.get_mut(key).timer = self.timers.insert(dead_deadline, Deadline::Agent(key));
                self.registry.set_status(key, AgentStatus::Unreachable);
                let view = self.registry.get(key).view();
                self.emit(Topic::AgentUnreachable, EventPayload::Agent(view));
            }
            AgentStatus::Unreachable => {
                debug_assert!(now >= agent.liveness_base + 2 * agent.ttl_ms);
                // The fired timer's key is free; `kill` arms the retention timer in its place.
                self.registry.get_mut(key).timer = self.timers.insert(now, Deadline::Agent(key));
                self.kill(key);
            }
            AgentStatus::Dead => {
                // Its waiting claims leave the line with it: one left behind would count
                // against waiters_max, and a snapshot cannot name its agent (seed 294).
                self.drop_waiters_of(key, "was forgotten");
                self.forget(key);
            }
        }
    }

    /// After a restart at `now`: every live agent gets at least a full ttl from now before its
    /// next step (ALIVE: UNREACHABLE no earlier than now + ttl; UNREACHABLE: DEAD no earlier
    /// than now + ttl), as if the downtime had not happened.
    pub(super) fn grace_agents(&mut self, now: Millis) {
        for key in self.registry.live_keys() {
            let agent = self.registry.get_mut(key);
            agent.liveness_base = match agent.status {
                AgentStatus::Alive => agent.liveness_base.max(now),
                AgentStatus::Unreachable => agent.liveness_base.max(now.saturating_sub(agent.ttl_ms)),
                AgentStatus::Dead => unreachable!("only live agents were taken"),
            };
            let deadline = agent.deadline_expected(None, 0);
            let timer = agent.timer;
            self.timers.reset(timer, deadline);
        }
    }

    /// See `Core::failover_grace`: an agent's next step (UNREACHABLE, or DEAD) comes no earlier
    /// than `min(ttl, grace_ms)` from now.
    pub(super) fn failover_grace_agents(&mut self, now: Millis, grace_ms: u64) {
        for key in self.registry.live_keys() {
            let agent = self.registry.get_mut(key);
            let floor = now + agent.ttl_ms.min(grace_ms);
            let deadline = agent.deadline_expected(None, 0);
            if deadline < floor {
                agent.liveness_base += floor - deadline;
                let timer = agent.timer;
                self.timers.reset(timer, floor);
            }
        }
    }

    /// Death clean-up, in one step, events in the contract's order: `agent.died`, then each
    /// lease released, then each election left, then each claimed task failed.
    fn kill(&mut self, key: usize) {
        let now = self.now;
        self.registry.set_status(key, AgentStatus::Dead);
        self.registry.dead_at.insert(key, now);
        let agent = self.registry.get(key);
        let retention = now + self.config.dead_retention_ms;
        self.timers.reset(agent.timer, retention);
        let view = agent.view();
        self.emit(Topic::AgentDied, EventPayload::Agent(view));
        let claims = self.release_all_leases(key);
        self.withdraw_from_all_groups(key);
        for task in claims {
            self.claim_lease_ended(task, "agent died");
        }
    }

    /// A DEAD agent's retention ran out: GetAgent no longer knows it.
    fn forget(&mut self, key: usize) {
        let registry = &mut self.registry;
        let agent = registry.agents.remove(key);
        debug_assert!(agent.status == AgentStatus::Dead && agent.leases.is_empty() && agent.groups.is_empty());
        registry.by_id.remove(&agent.id);
        registry.dead_at.remove(&key);
        let filed = registry.by_status[status_index(AgentStatus::Dead)].remove(&agent.registration);
        assert_eq!(filed, Some(key), "a forgotten agent was filed as DEAD");
    }
}
