//! Snapshots: the core's whole state as plain, ordered values (agents by registration, leases by
//! token, groups and policies by name, the retained events), and the restore that rebuilds every
//! index and timer from them.
//!
//! Architecture invariant: a snapshot holds no slab key, hash layout or timer handle: only what
//! the contract can observe plus the RNG's position, so a restored core answers every later
//! command exactly as the core it was taken from would have. It is a plain value: its bytes on
//! disk are the store's business (`store::format`).

use std::collections::BTreeMap;
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::elections::Group;
use super::events::Event;
use super::ids::IdSource;
use super::leases::Lease;
use super::registry::Agent;
use super::search::vectors::ModelVector;
use super::tasks::{Task, TaskQueue, TaskStatus, TaskView, Waiter, WaiterId, tool_set};
use super::types::{AgentCard, AgentId, AgentStatus, Millis, Policy, TokenId};
use super::{Core, CoreConfig, Deadline};

#[derive(Clone, Debug, PartialEq)]
pub struct AgentState {
    pub id: AgentId,
    pub card: AgentCard,
    pub status: AgentStatus,
    pub registered_at: Millis,
    pub last_heartbeat_at: Millis,
    pub liveness_base: Millis,
    pub ttl_ms: u64,
    pub registration: u64,
    pub dead_at: Option<Millis>,
    /// The groups it stands in, in the order it joined them.
    pub groups: Vec<String>,
    /// The agent token that registered it, if one did.
    pub owner: Option<TokenId>,
    /// Its card's sentence vector (unit length) and the model that made it, once an embedding
    /// worker sent it; never for a DEAD agent (it left the search index).
    pub vector: Option<ModelVector>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LeaseState {
    pub task_id: String,
    pub holder: AgentId,
    pub token: u64,
    pub acquired_at: Millis,
    pub expires_at: Millis,
    pub ttl_ms: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GroupState {
    pub name: String,
    pub candidates: Vec<AgentId>,
    pub term: u64,
    pub elected_at: Millis,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TaskState {
    pub view: TaskView,
    pub order: u64,
    pub finished_at: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WaiterState {
    pub id: WaiterId,
    pub agent_id: AgentId,
    pub deadline: Millis,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CoreSnapshot {
    pub now: Millis,
    pub rng_seed: [u8; 32],
    pub rng_stream: u64,
    pub rng_word_pos: u128,
    pub hash_seed: u64,
    pub registration_next: u64,
    pub agents: Vec<AgentState>,
    pub token_last: u64,
    pub leases: Vec<LeaseState>,
    pub groups: Vec<GroupState>,
    pub policies: Vec<Policy>,
    pub sequence_next: u64,
    pub events: Vec<Event>,
    /// Every task, in creation order, and the next creation rank.
    pub tasks: Vec<TaskState>,
    pub task_order_next: u64,
    /// Waiting claims in arrival order (dropped by a restart's grace; kept so that a replayed
    /// log behaves as the original did), and the next waiter id.
    pub waiters: Vec<WaiterState>,
    pub waiter_next: u64,
    /// Clients' remembered creating writes (`core::sessions`), by client id.
    pub sessions: Vec<super::sessions::SessionState>,
}

impl Core {
    /// The whole state as ordered values; O(state).
    pub fn snapshot(&self) -> CoreSnapshot {
        let registry = &self.registry;
        let group_name = |&(key, _): &(usize, u64)| self.elections.groups[key].name.to_string();
        let mut agents: Vec<AgentState> = registry
            .agents
            .iter()
            .map(|(key, agent)| AgentState {
                id: agent.id,
                card: (*agent.card).clone(),
                status: agent.status,
                registered_at: agent.registered_at,
                last_heartbeat_at: agent.last_heartbeat_at,
                liveness_base: agent.liveness_base,
                ttl_ms: agent.ttl_ms,
                registration: agent.registration,
                dead_at: registry.dead_at.get(&key).copied(),
                groups: agent.groups.iter().map(group_name).collect(),
                owner: agent.owner,
                vector: registry.search.vector(key).map(|(model, values)| ModelVector {
                    model: Arc::clone(model),
                    values: Arc::from(values),
                }),
            })
            .collect();
        agents.sort_unstable_by_key(|a| a.registration);
        let mut leases: Vec<LeaseState> = self
            .leases
            .leases
            .iter()
            .map(|(_, lease)| LeaseState {
                task_id: lease.task_id.to_string(),
                holder: lease.holder_id,
                token: lease.token,
                acquired_at: lease.acquired_at,
                expires_at: lease.expires_at,
                ttl_ms: lease.ttl_ms,
            })
            .collect();
        leases.sort_unstable_by_key(|l| l.token);
        let mut groups: Vec<GroupState> = self
            .elections
            .groups
            .iter()
            .map(|(_, g)| GroupState {
                name: g.name.to_string(),
                candidates: g.line().collect(),
                term: g.term,
                elected_at: g.elected_at,
            })
            .collect();
        groups.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let rng = &self.ids.rng;
        CoreSnapshot {
            now: self.now,
            rng_seed: rng.get_seed(),
            rng_stream: rng.get_stream(),
            rng_word_pos: rng.get_word_pos(),
            hash_seed: registry.hash_seed,
            registration_next: registry.registration_next,
            agents,
            token_last: self.leases.token_last,
            leases,
            groups,
            policies: self.policies.list(""),
            sequence_next: self.bus.sequence_next,
            events: self.bus.ring.iter().map(|e| (**e).clone()).collect(),
            tasks: self
                .tasks
                .iter()
                .map(|task| TaskState {
                    view: task.view.clone(),
                    order: task.order,
                    finished_at: task.finished_at,
                })
                .collect(),
            task_order_next: self.tasks.order_next,
            waiters: self
                .tasks
                .waiters_in_order()
                .into_iter()
                .map(|waiter| WaiterState {
                    id: waiter.id,
                    agent_id: waiter.agent_id,
                    deadline: waiter.deadline,
                })
                .collect(),
            waiter_next: self.tasks.waiter_next,
            sessions: self.sessions.snapshot(),
        }
    }

    /// Rebuilds a core from a snapshot; `config` supplies the bounds (the seed is the snapshot's).
    pub fn restore(config: CoreConfig, snapshot: CoreSnapshot) -> Core {
        let mut core = Core::new(config, snapshot.now);
        core.restore_ids(&snapshot);
        let hash_seed = snapshot.hash_seed;
        core.registry = super::registry::Registry::new(hash_seed);
        core.leases = super::leases::LeaseTable::new(hash_seed);
        core.elections = super::elections::ElectionTable::new(hash_seed);
        core.policies = super::entitlements::PolicyTable::new(hash_seed);
        core.registry.registration_next = snapshot.registration_next;
        let mut keys: BTreeMap<AgentId, usize> = BTreeMap::new();
        let mut memberships: Vec<(usize, Vec<String>)> = Vec::new();
        for agent in snapshot.agents {
            let key = core.restore_agent(&agent);
            keys.insert(agent.id, key);
            memberships.push((key, agent.groups));
        }
        // Places in line are numbered afresh from 0: only their order is state.
        let mut places: BTreeMap<(usize, usize), u64> = BTreeMap::new();
        for state in snapshot.groups {
            let mut group = Group::new(state.name.into());
            group.term = state.term;
            group.elected_at = state.elected_at;
            let key = core.elections.groups.vacant_key();
            for id in &state.candidates {
                places.insert((keys[id], key), group.join(keys[id], *id));
            }
            let added = core.elections.add(group);
            debug_assert_eq!(added, key);
        }
        for (agent, names) in memberships {
            let groups = names
                .iter()
                .map(|n| {
                    let key = core.elections.by_name[n.as_str()];
                    (key, places[&(agent, key)])
                })
                .collect();
            core.registry.agents[agent].groups = groups;
        }
        core.leases.token_last = snapshot.token_last;
        for lease in snapshot.leases {
            core.restore_lease(lease, &keys);
        }
        for policy in snapshot.policies {
            core.policies.upsert(policy);
        }
        core.bus.sequence_next = snapshot.sequence_next;
        core.bus.ring = snapshot.events.into_iter().map(Arc::new).collect();
        core.tasks = TaskQueue::new(hash_seed);
        core.tasks.order_next = snapshot.task_order_next;
        core.tasks.waiter_next = snapshot.waiter_next;
        for task in snapshot.tasks {
            core.restore_task(task, &keys);
        }
        for waiter in snapshot.waiters {
            core.restore_waiter(waiter, &keys);
        }
        core.sessions = super::sessions::Sessions::restore(snapshot.sessions);
        core
    }

    fn restore_task(&mut self, state: TaskState, keys: &BTreeMap<AgentId, usize>) {
        let status = state.view.status;
        let id_text: Arc<str> = state.view.id.to_string().into();
        let mut task = Task {
            id_text: Arc::clone(&id_text),
            view: state.view,
            order: state.order,
            lease: None,
            holder: None,
            finished_at: state.finished_at,
            timer: None,
        };
        let queue = &mut self.tasks;
        let key = queue.tasks.vacant_key();
        if status == TaskStatus::Claimed {
            let lease = queue_lease(&self.leases, &id_text);
            task.lease = Some(lease);
            task.holder = Some(keys[&task.view.claimed_by.expect("a claimed task names its claimer")]);
            self.leases.leases[lease].task = Some(key);
        }
        if let Some(finished_at) = task.finished_at {
            let forget_at = finished_at.saturating_add(self.config.task_retention_ms);
            task.timer = Some(self.timers.insert(forget_at, Deadline::Task(key)));
        }
        queue.bytes += task.view.input.len() + task.view.output.len();
        queue.by_id.insert(task.view.id, key);
        queue.by_order.insert(task.order, key);
        let inserted = queue.tasks.insert(task);
        debug_assert_eq!(inserted, key);
        queue.file(key, status);
    }

    fn restore_waiter(&mut self, state: WaiterState, keys: &BTreeMap<AgentId, usize>) {
        // A waiter outlives a forgotten agent only until its next offer or deadline, and then
        // changes nothing but itself: leaving it out changes no later answer but its own.
        let Some(&agent) = keys.get(&state.agent_id) else {
            return;
        };
        let key = self.tasks.waiters.vacant_key();
        let waiter = Waiter {
            id: state.id,
            agent,
            agent_id: state.agent_id,
            tools: tool_set(&self.registry.agents[agent].card.tools),
            deadline: state.deadline,
            timer: self.timers.insert(state.deadline, Deadline::Claim(key)),
        };
        let added = self.tasks.add_waiter(waiter);
        debug_assert_eq!(added, key);
    }

    fn restore_ids(&mut self, snapshot: &CoreSnapshot) {
        let mut rng = ChaCha8Rng::from_seed(snapshot.rng_seed);
        rng.set_stream(snapshot.rng_stream);
        rng.set_word_pos(snapshot.rng_word_pos);
        self.ids = IdSource { rng };
    }

    fn restore_agent(&mut self, state: &AgentState) -> usize {
        let registry = &mut self.registry;
        let entry = registry.agents.vacant_entry();
        let key = entry.key();
        let agent = Agent {
            id: state.id,
            card: Arc::new(state.card.clone()),
            status: state.status,
            registered_at: state.registered_at,
            last_heartbeat_at: state.last_heartbeat_at,
            liveness_base: state.liveness_base,
            ttl_ms: state.ttl_ms,
            registration: state.registration,
            timer: self.timers.insert(0, Deadline::Agent(key)),
            leases: BTreeMap::new(),
            groups: Vec::new(),
            owner: state.owner,
        };
        let deadline = agent.deadline_expected(state.dead_at, self.config.dead_retention_ms);
        self.timers.reset(agent.timer, deadline);
        entry.insert(agent);
        registry.by_id.insert(state.id, key);
        if let Some(dead_at) = state.dead_at {
            registry.dead_at.insert(key, dead_at);
        }
        assert_eq!(
            state.dead_at.is_some(),
            state.status == AgentStatus::Dead,
            "a snapshot's agent has a time of death exactly when DEAD"
        );
        registry.file(key);
        if let Some(vector) = &state.vector {
            let set = registry.search.set_vector(key, &vector.model, &vector.values);
            assert!(set.is_ok(), "a snapshot's card vector is one the core held: {set:?}");
        }
        key
    }

    fn restore_lease(&mut self, state: LeaseState, keys: &BTreeMap<AgentId, usize>) {
        let holder = keys[&state.holder];
        let table = &mut self.leases;
        let entry = table.leases.vacant_entry();
        let key = entry.key();
        entry.insert(Lease {
            task_id: state.task_id.into(),
            holder,
            holder_id: state.holder,
            token: state.token,
            acquired_at: state.acquired_at,
            expires_at: state.expires_at,
            ttl_ms: state.ttl_ms,
            timer: self.timers.insert(state.expires_at, Deadline::Lease(key)),
            task: None,
        });
        table.index(key);
        self.registry.agents[holder].leases.insert(state.token, key);
    }
}

/// The lease a claimed task's snapshot relies on: restored before the tasks.
fn queue_lease(leases: &super::leases::LeaseTable, id_text: &str) -> usize {
    *leases
        .by_task
        .get(id_text)
        .expect("a claimed task's lease is in the snapshot")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::Effect;
    use crate::core::{Command, PolicyInput, Reply};

    /// A small deterministic workload generator (xorshift), so the test needs no RNG crate.
    struct Workload {
        state: u64,
        agents: Vec<String>,
        tokens: Vec<(String, String, u64)>,
    }

    impl Workload {
        fn next(&mut self, n: u64) -> u64 {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            self.state % n
        }

        fn agent(&mut self) -> String {
            if self.agents.is_empty() {
                return "0".repeat(32);
            }
            let i = self.next(self.agents.len() as u64) as usize;
            self.agents[i].clone()
        }

        fn command(&mut self) -> Command {
            let key = format!("k{}", self.next(6));
            match self.next(11) {
                0 | 1 => Command::Register {
                    card: Box::new(AgentCard {
                        name: format!("agent {}", self.next(5)),
                        tools: vec![format!("tool{}", self.next(3))],
                        description: "does web and sql things".into(),
                        ..AgentCard::default()
                    }),
                    ttl_seconds: 1 + self.next(4) as u32,
                    vector: None,
                },
                2 | 3 => Command::Heartbeat { agent_id: self.agent() },
                4 => Command::Deregister { agent_id: self.agent() },
                5 => Command::AcquireLease {
                    task_id: key,
                    agent_id: self.agent(),
                    ttl_seconds: 1 + self.next(3) as u32,
                },
                6 if !self.tokens.is_empty() => {
                    let i = self.next(self.tokens.len() as u64) as usize;
                    let (task_id, agent_id, token) = self.tokens[i].clone();
                    Command::RenewLease {
                        task_id,
                        agent_id,
                        token,
                        ttl_seconds: 0,
                    }
                }
                7 => Command::Campaign {
                    group: format!("g{}", self.next(3)),
                    agent_id: self.agent(),
                },
                8 => Command::Resign {
                    group: format!("g{}", self.next(3)),
                    agent_id: self.agent(),
                },
                9 => Command::SetPolicy {
                    policy: Box::new(PolicyInput {
                        id: format!("p{}", self.next(4)),
                        subject: "agent:*".into(),
                        action: "call".into(),
                        resource: format!("tool:{}", self.next(2)),
                        effect: Some(if self.next(2) == 0 { Effect::Allow } else { Effect::Deny }),
                    }),
                },
                _ => Command::Find {
                    query: "web sql".into(),
                    tools: vec![],
                    limit: 0,
                    vector: None,
                },
            }
        }

        fn learn(&mut self, command: &Command, reply: &Reply) {
            match (command, reply) {
                (_, Reply::Registered { agent_id }) => self.agents.push(agent_id.to_string()),
                (Command::AcquireLease { task_id, agent_id, .. }, Reply::Lease { lease, acquired: true }) => {
                    self.tokens.push((task_id.clone(), agent_id.clone(), lease.token));
                }
                _ => {}
            }
        }
    }

    fn watch(core: &mut Core, now: Millis) {
        let reply = core.apply(
            now,
            Command::Watch {
                topics: vec![],
                from_sequence: 0,
            },
        );
        assert!(matches!(reply, Ok(Reply::Watching { .. })));
    }

    #[test]
    fn a_restored_core_answers_and_fires_exactly_like_its_original() {
        let config = CoreConfig {
            seed: 3,
            dead_retention_ms: 5_000,
            ..CoreConfig::default()
        };
        let mut now = 1_000_000;
        let mut original = Core::new(config.clone(), now);
        let mut workload = Workload {
            state: 0x2545F4914F6CDD1D,
            agents: Vec::new(),
            tokens: Vec::new(),
        };
        let mut restored: Option<Core> = None;
        let (mut a_events, mut b_events) = (Vec::new(), Vec::new());
        for step in 0..4000 {
            if step == 1500 {
                let bytes = crate::store::encode_snapshot(&original.snapshot());
                let snapshot = crate::store::decode_snapshot(&bytes).expect("decodes");
                let mut copy = Core::restore(config.clone(), snapshot);
                copy.check_invariants();
                assert_eq!(copy.snapshot(), original.snapshot(), "restore round-trips");
                watch(&mut original, now);
                watch(&mut copy, now);
                restored = Some(copy);
            }
            now += workload.next(700);
            let command = workload.command();
            let outcome = original.apply(now, command.clone());
            if let Ok(reply) = &outcome {
                workload.learn(&command, reply);
            }
            if let Some(copy) = restored.as_mut() {
                assert_eq!(copy.apply(now, command.clone()), outcome, "step {step}: {command:?}");
                copy.drain_deliveries(&mut b_events);
                original.drain_deliveries(&mut a_events);
            }
        }
        let copy = restored.expect("restored at step 1500");
        copy.check_invariants();
        let events = |d: &Vec<crate::core::events::Delivery>| d.iter().map(|d| (*d.event).clone()).collect::<Vec<_>>();
        assert!(a_events.len() > 100, "the workload produced events");
        assert_eq!(events(&a_events), events(&b_events));
        assert_eq!(copy.snapshot(), original.snapshot());
    }
}
