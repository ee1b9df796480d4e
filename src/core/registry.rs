//! Agents: registration, heartbeats, the ALIVE -> UNREACHABLE -> DEAD lifecycle, death clean-up
//! in the contract's order, and Find (tool filter plus relevance ranking).
//!
//! Architecture invariant: each agent owns exactly one timer (its next liveness transition, or
//! its forgetting once DEAD); nothing here scans all agents on a tick.

use std::collections::BTreeMap;
use std::sync::Arc;

use slab::Slab;

use super::events::{AgentView, EventPayload, Topic};
use super::search::SearchIndex;
use super::timers::{TimerKey, TimerWheel};
use super::types::{AgentCard, AgentId, AgentStatus, Map, Millis, Set, TokenId, new_map};
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
    /// Election groups stood in, in the order joined.
    pub groups: Vec<usize>,
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

pub struct Registry {
    pub(super) agents: Slab<Agent>,
    pub(super) by_id: Map<AgentId, usize>,
    /// Agents not DEAD, in registration order.
    pub(super) by_registration: BTreeMap<u64, usize>,
    /// Agents not DEAD, by each tool they list.
    pub(super) by_tool: Map<String, Set<usize>>,
    pub(super) search: SearchIndex,
    pub(super) registration_next: u64,
    pub(super) hash_seed: u64,
    /// When each DEAD agent died, for its retention deadline.
    pub(super) dead_at: Map<usize, Millis>,
    pub(super) alive: usize,
    pub(super) unreachable: usize,
}

impl Registry {
    pub fn new(hash_seed: u64) -> Self {
        Registry {
            agents: Slab::new(),
            by_id: new_map(hash_seed),
            by_registration: BTreeMap::new(),
            by_tool: new_map(hash_seed),
            search: SearchIndex::new(hash_seed),
            registration_next: 1,
            hash_seed,
            dead_at: new_map(hash_seed),
            alive: 0,
            unreachable: 0,
        }
    }

    /// (alive, unreachable, dead)
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.alive,
            self.unreachable,
            self.agents.len() - self.alive - self.unreachable,
        )
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

    fn set_status(&mut self, key: usize, status: AgentStatus) {
        let agent = &mut self.agents[key];
        match agent.status {
            AgentStatus::Alive => self.alive -= 1,
            AgentStatus::Unreachable => self.unreachable -= 1,
            AgentStatus::Dead => unreachable!("a DEAD agent never changes status"),
        }
        agent.status = status;
        match status {
            AgentStatus::Alive => self.alive += 1,
            AgentStatus::Unreachable => self.unreachable += 1,
            AgentStatus::Dead => {}
        }
    }

    /// Drops a newly DEAD agent from every index that serves live agents.
    fn unindex(&mut self, key: usize) {
        let agent = &self.agents[key];
        self.by_registration.remove(&agent.registration);
        for tool in &agent.card.tools {
            if let Some(holders) = self.by_tool.get_mut(tool) {
                holders.remove(&key);
                if holders.is_empty() {
                    self.by_tool.remove(tool);
                }
            }
        }
        self.search.remove(key);
    }

    /// The live agents that have every one of `tools`, in registration order.
    /// True when the agent is ALIVE and lists every one of `tools`.
    fn qualifies(&self, key: usize, tools: &[String]) -> bool {
        let agent = &self.agents[key];
        agent.status == AgentStatus::Alive && tools.iter().all(|t| agent.card.tools.contains(t))
    }

    /// The qualifying agents in registration order, lazily: Find takes only as many as it needs.
    fn candidates<'a>(&'a self, tools: &'a [String]) -> Box<dyn Iterator<Item = usize> + 'a> {
        let rarest = tools
            .iter()
            .map(|t| self.by_tool.get(t))
            .min_by_key(|s| s.map_or(0, |s| s.len()));
        match rarest {
            None => Box::new(
                self.by_registration
                    .values()
                    .copied()
                    .filter(move |&k| self.qualifies(k, tools)),
            ),
            Some(None) => Box::new(std::iter::empty()),
            Some(Some(holders)) => {
                let mut keys: Vec<usize> = holders.iter().copied().filter(|&k| self.qualifies(k, tools)).collect();
                keys.sort_unstable_by_key(|&k| self.agents[k].registration);
                Box::new(keys.into_iter())
            }
        }
    }

    pub fn check_invariants(&self, now: Millis, dead_retention_ms: u64, timers: &TimerWheel<Deadline>) {
        let mut alive = 0;
        let mut unreachable = 0;
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
                    alive += 1;
                    assert!(
                        now < agent.liveness_base + agent.ttl_ms,
                        "agent {} ALIVE past its ttl",
                        agent.id
                    );
                    assert_eq!(timers.deadline(agent.timer), expected, "agent {} ALIVE timer", agent.id);
                }
                AgentStatus::Unreachable => {
                    unreachable += 1;
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
            let live = agent.status != AgentStatus::Dead;
            assert_eq!(
                self.by_registration.get(&agent.registration) == Some(&key),
                live,
                "registration index"
            );
            for tool in &agent.card.tools {
                let indexed = self.by_tool.get(tool).is_some_and(|s| s.contains(&key));
                assert_eq!(indexed, live, "tool index of agent {}", agent.id);
            }
        }
        assert_eq!(
            (alive, unreachable),
            (self.alive, self.unreachable),
            "status counters drifted"
        );
        assert_eq!(self.by_id.len(), self.agents.len(), "id index holds forgotten agents");
        assert_eq!(
            self.by_registration.len(),
            alive + unreachable,
            "registration index size"
        );
        assert_eq!(self.search.len(), alive + unreachable, "search index size");
        self.search.check_invariants();
    }
}

impl Core {
    pub(super) fn register(&mut self, card: AgentCard, ttl_seconds: u32, owner: Option<TokenId>) -> Outcome {
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
        registry.alive += 1;
        registry.by_id.insert(id, key);
        registry.by_registration.insert(registration, key);
        for tool in &agent.card.tools {
            let hash_seed = registry.hash_seed;
            registry
                .by_tool
                .entry(tool.clone())
                .or_insert_with(|| super::types::new_set(hash_seed))
                .insert(key);
        }
        registry.search.insert(key, &agent.card);
        let view = agent.view();
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

    pub(super) fn get_agent(&self, agent_id: &str) -> Outcome {
        let key = self.registry.lookup(agent_id)?;
        Ok(Reply::Agent(self.registry.get(key).view()))
    }

    /// Find: with a query, the agents sharing a term with it ranked by score (ties by
    /// registration), then the rest in registration order (a query ranks, it does not filter);
    /// only as many as `limit` are ever looked at beyond the scored ones.
    pub(super) fn find(&self, query: &str, tools: &[String], limit: u32) -> Outcome {
        validate::length("query", query, 0, validate::QUERY_BYTES_MAX)?;
        validate::tools("tools", tools)?;
        let limit = validate::find_limit(limit);
        let registry = &self.registry;
        let mut scored: Vec<(f64, u64, usize)> = if query.trim().is_empty() {
            Vec::new()
        } else {
            registry
                .search
                .score(query)
                .into_iter()
                .filter(|&(k, _)| registry.qualifies(k, tools))
                .map(|(k, score)| (score, registry.get(k).registration, k))
                .collect()
        };
        scored.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.truncate(limit);
        let mut keys: Vec<usize> = scored.iter().map(|&(_, _, k)| k).collect();
        if keys.len() < limit {
            let ranked: Set<usize> = {
                let mut set = super::types::new_set(registry.hash_seed);
                set.extend(keys.iter().copied());
                set
            };
            let rest = registry.candidates(tools).filter(|k| !ranked.contains(k));
            keys.extend(rest.take(limit - keys.len()));
        }
        debug_assert!(keys.len() <= limit);
        Ok(Reply::Agents(
            keys.into_iter().map(|k| registry.get(k).view()).collect(),
        ))
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
            AgentStatus::Dead => self.forget(key),
        }
    }

    /// After a restart at `now`: every live agent gets at least a full ttl from now before its
    /// next step (ALIVE: UNREACHABLE no earlier than now + ttl; UNREACHABLE: DEAD no earlier
    /// than now + ttl), as if the downtime had not happened.
    pub(super) fn grace_agents(&mut self, now: Millis) {
        let keys: Vec<usize> = self.registry.by_registration.values().copied().collect();
        for key in keys {
            let agent = self.registry.get_mut(key);
            agent.liveness_base = match agent.status {
                AgentStatus::Alive => agent.liveness_base.max(now),
                AgentStatus::Unreachable => agent.liveness_base.max(now.saturating_sub(agent.ttl_ms)),
                AgentStatus::Dead => unreachable!("the registration index holds live agents only"),
            };
            let deadline = agent.deadline_expected(None, 0);
            let timer = agent.timer;
            self.timers.reset(timer, deadline);
        }
    }

    /// Death clean-up, in one step, events in the contract's order: `agent.died`, then each
    /// lease released, then each election left, then each claimed task failed.
    fn kill(&mut self, key: usize) {
        let now = self.now;
        self.registry.set_status(key, AgentStatus::Dead);
        self.registry.unindex(key);
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
    }
}
