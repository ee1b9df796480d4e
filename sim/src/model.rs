//! The reference model: a second, deliberately naive implementation of the behaviour contract
//! (`shared/spec/semantics.md`, plus the decisions ARCHITECTURE.md records where it is silent),
//! run side by side with the core. Vecs and linear scans only: no index, no timer wheel, no
//! cleverness that could share a bug with the core. It borrows the core's plain value types
//! (views, `Event`, `Reply`) so that answers compare with `==`, never its logic.
//!
//! Time is exact and chronological: when the clock moves to `now`, every deadline due by then
//! fires in deadline order (ties: agents before leases, then registration order or token), one
//! at a time, at its own deadline (events' `occurred_at`, a death's time), and whatever a firing
//! arms is considered in that same order. So after a clock jump an agent that died at t=20
//! holding a lease that would have expired at t=25 releases it in its death clean-up
//! (`lease.released`), as the contract's timeline says.
//!
//! A restart (`restart_grace`) forgives the downtime the naive way: every live agent's ttl and
//! every lease's ttl counts again from the restart at the latest, and every stream and every
//! waiting claim is gone.
//!
//! Tasks are a Vec in creation order (the oldest claimable task is the first match of a scan),
//! waiting claims a Vec in arrival order; a claim lease is an ordinary entry of the lease list
//! marked as a claim, whose expiry, release or holder's death fails its task. Answers to waiting
//! claims are collected in the order they are made, for the runner to compare with the core's.
//!
//! Where the contract leaves the order of two errors open (a renew with a bad ttl and a wrong
//! token), the model follows the core's documented order; the tests of that order live with the
//! core.

use std::collections::VecDeque;
use std::sync::Arc;

use agentkeeper::core::elections::GroupListing;
use agentkeeper::core::events::{AgentView, ElectionView, LeaseView, SubscriberId};
use agentkeeper::core::listing::Overview;
use agentkeeper::core::search::card_text::{CardDigest, card_digest as card_digest_of};
use agentkeeper::core::search::vectors::ModelVector;
use agentkeeper::core::tasks::{TaskStatus, TaskView, WaiterId};
use agentkeeper::core::types::{AgentCard, AgentId, AgentStatus, Decision, Effect, Id128, Millis, Policy};
use agentkeeper::core::{
    Command, CoreConfig, CoreStats, ErrorCode, Event, EventPayload, Outcome, PolicyInput, Reply, Topic,
};

/// What the model says the core should have answered.
pub type Expected = Result<Reply, ErrorCode>;

/// Every topic name, from the contract's list (not from the core's `Topic::as_str`).
pub fn topic_name(topic: Topic) -> &'static str {
    match topic {
        Topic::AgentRegistered => "agent.registered",
        Topic::AgentUnreachable => "agent.unreachable",
        Topic::AgentRecovered => "agent.recovered",
        Topic::AgentDied => "agent.died",
        Topic::LeaseAcquired => "lease.acquired",
        Topic::LeaseRenewed => "lease.renewed",
        Topic::LeaseExpired => "lease.expired",
        Topic::LeaseReleased => "lease.released",
        Topic::LeaderChanged => "leader.changed",
        Topic::TaskCreated => "task.created",
        Topic::TaskClaimed => "task.claimed",
        Topic::TaskCompleted => "task.completed",
        Topic::TaskFailed => "task.failed",
        Topic::TaskDead => "task.dead",
    }
}

/// Watch's topic filter: prefixes, the empty list meaning every topic.
pub fn topics_match(prefixes: &[String], topic: Topic) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| topic_name(topic).starts_with(p.as_str()))
}

/// `*` matches any run of bytes (empty and `:` included); everything else is literal. Naive
/// recursion: fine for the simulator's short patterns.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

/// CheckPolicy by brute force over every policy, as the contract words it.
pub fn decide(policies: &[Policy], subject: &str, action: &str, resource: &str) -> Decision {
    let matching = |effect: Effect| {
        policies
            .iter()
            .filter(|p| p.effect == effect)
            .filter(|p| glob(p.subject.as_bytes(), subject.as_bytes()))
            .filter(|p| glob(p.action.as_bytes(), action.as_bytes()))
            .filter(|p| glob(p.resource.as_bytes(), resource.as_bytes()))
            .map(|p| p.id.as_str())
            .min()
    };
    if let Some(id) = matching(Effect::Deny) {
        return Decision {
            allowed: false,
            reason: format!("denied by policy \"{id}\""),
        };
    }
    if let Some(id) = matching(Effect::Allow) {
        return Decision {
            allowed: true,
            reason: format!("allowed by policy \"{id}\""),
        };
    }
    Decision {
        allowed: false,
        reason: "no matching policy: default deny".into(),
    }
}

const TTL_SECONDS_MAX: u32 = 86_400;
/// The contract's bounds on a task's input and output, and the project's on a failure reason.
const PAYLOAD_BYTES_MAX: usize = 4 * 1024 * 1024;
const REASON_BYTES_MAX: usize = 4096;
/// ListTasks: page size 0 means 1000, at most 1000 in one command (the gRPC handler gathers the
/// wire's 10 000 from several); a page holds at most 3 MiB of input and output past its first
/// task (the project's bounds, so a page fits a client's 4 MiB message).
const PAGE_SIZE_DEFAULT: usize = 1000;
const PAGE_SIZE_MAX: u32 = 1000;
const PAGE_BYTES_MAX: usize = 3 * 1024 * 1024;
/// ListLeases: page size 0 means 1000, at most 2000 (so a page of the longest keys fits 4 MiB).
const LEASE_PAGE_SIZE_MAX: usize = 2000;
/// ListPolicies, ListElections, ListAgents and each list of an Overview: at most 1000 a page; a
/// policy page looks at 4096 policies at most; a listed group shows its first 100 candidates.
const LIST_PAGE_SIZE_MAX: usize = 1000;
const POLICY_SCAN_MAX: usize = 4096;
const CANDIDATES_LISTED_MAX: usize = 100;

fn within(text: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&text.len())
}

fn ttl_ms(ttl_seconds: u32, default: u32) -> Option<u64> {
    let seconds = if ttl_seconds == 0 { default } else { ttl_seconds };
    (seconds <= TTL_SECONDS_MAX).then_some(u64::from(seconds) * 1000)
}

/// The contract's card limits (capabilities' own sizes: the project's bounds, 256 B and 8 KiB).
fn card_valid(card: &AgentCard) -> bool {
    within(&card.name, 1, 256)
        && !card.name.chars().any(char::is_control)
        && card.description.len() <= 8192
        && card.version.len() <= 64
        && tools_valid(&card.tools)
        && card.capabilities.len() <= 256
        && card
            .capabilities
            .iter()
            .all(|c| c.name.len() <= 256 && c.description.len() <= 8192)
        && card.metadata.len() <= 64
        && card.metadata.iter().all(|(k, v)| k.len() <= 128 && v.len() <= 1024)
}

fn tools_valid(tools: &[String]) -> bool {
    tools.len() <= 256 && tools.iter().all(|t| within(t, 1, 128))
}

#[derive(Clone)]
struct Agent {
    id: AgentId,
    /// The id as the wire shows it; lookups compare strings, so `ABC...` never finds `abc...`.
    text_id: String,
    card: Arc<AgentCard>,
    status: AgentStatus,
    registered_at: Millis,
    last_heartbeat_at: Millis,
    /// Where its ttl counts from: the last heartbeat, or a restart's time if that came later.
    liveness_base: Millis,
    ttl_ms: u64,
    registration: u64,
    dead_at: Option<Millis>,
    /// Whether its card has a vector (set by SetCardVector; a DEAD agent's is gone).
    has_vector: bool,
}

impl Agent {
    fn view(&self) -> AgentView {
        AgentView {
            agent_id: self.id,
            card: Arc::clone(&self.card),
            status: self.status,
            registered_at: self.registered_at,
            last_heartbeat_at: self.last_heartbeat_at,
            ttl_ms: self.ttl_ms,
        }
    }
}

#[derive(Clone)]
struct Lease {
    key: String,
    holder: AgentId,
    token: u64,
    acquired_at: Millis,
    expires_at: Millis,
    ttl_ms: u64,
    /// A claim lease: its key is a CLAIMED task's id, and its end fails that task.
    claim: bool,
}

impl Lease {
    fn view(&self) -> LeaseView {
        LeaseView {
            task_id: self.key.as_str().into(),
            holder: self.holder,
            token: self.token,
            acquired_at: self.acquired_at,
            expires_at: self.expires_at,
        }
    }
}

#[derive(Clone)]
struct Candidate {
    agent: AgentId,
    /// When it joined (a global counter), for the order of death clean-up.
    joined: u64,
}

#[derive(Clone)]
struct Group {
    name: String,
    candidates: Vec<Candidate>,
    term: u64,
    elected_at: Millis,
}

impl Group {
    fn view(&self) -> ElectionView {
        ElectionView {
            group: self.name.as_str().into(),
            leader: self.candidates.first().map(|c| c.agent),
            term: self.term,
            elected_at: self.elected_at,
        }
    }
}

#[derive(Clone)]
struct Task {
    /// The core's plain value type, so answers compare with `==`.
    view: TaskView,
    text_id: String,
    /// Creation rank, from 1 (ListTasks' page tokens are these numbers).
    order: u64,
    finished_at: Option<Millis>,
}

impl Task {
    fn bytes(&self) -> usize {
        self.view.input.len() + self.view.output.len()
    }

    /// The view events carry: without the input and output bytes.
    fn event_view(&self) -> TaskView {
        TaskView {
            input: Arc::from(&[][..]),
            output: Arc::from(&[][..]),
            ..self.view.clone()
        }
    }
}

#[derive(Clone)]
struct Waiter {
    id: WaiterId,
    agent: AgentId,
    /// The agent's tools when it claimed.
    tools: Vec<String>,
    deadline: Millis,
}

/// True when every required tool is among `offered`.
fn covers(offered: &[String], required: &[Arc<str>]) -> bool {
    required
        .iter()
        .all(|tool| offered.iter().any(|o| o.as_str() == &**tool))
}

/// Something due when time moves.
enum Due {
    Agent(usize),
    Lease(usize),
    /// A waiting claim's end of patience.
    Claim(usize),
    /// A finished task's forgetting.
    Task(usize),
}

/// Cloned only where a step must be undone (a torn crash's lost command), never per step.
#[derive(Clone)]
pub struct Model {
    config: CoreConfig,
    now: Millis,
    agents: Vec<Agent>,
    registration_next: u64,
    leases: Vec<Lease>,
    token_last: u64,
    groups: Vec<Group>,
    joined_next: u64,
    policies: Vec<Policy>,
    /// The retained events (the newest `event_ring_max`).
    ring: VecDeque<Arc<Event>>,
    sequence_next: u64,
    subscribers: Vec<u64>,
    subscriber_next: u64,
    /// Events emitted since the last `take_events`.
    emitted: Vec<Arc<Event>>,
    /// Every known task, in creation order.
    tasks: Vec<Task>,
    task_order_next: u64,
    /// Waiting claims, in arrival order.
    waiters: Vec<Waiter>,
    waiter_next: u64,
    /// Answers to waiting claims made since the last `take_answers`.
    answers: Vec<(WaiterId, Expected)>,
}

impl Model {
    pub fn new(config: &CoreConfig, now: Millis) -> Model {
        Model {
            config: config.clone(),
            now,
            agents: Vec::new(),
            registration_next: 1,
            leases: Vec::new(),
            token_last: 0,
            groups: Vec::new(),
            joined_next: 0,
            policies: Vec::new(),
            ring: VecDeque::new(),
            sequence_next: 1,
            subscribers: Vec::new(),
            subscriber_next: 1,
            emitted: Vec::new(),
            tasks: Vec::new(),
            task_order_next: 1,
            waiters: Vec::new(),
            waiter_next: 1,
            answers: Vec::new(),
        }
    }

    pub fn take_events(&mut self) -> Vec<Arc<Event>> {
        std::mem::take(&mut self.emitted)
    }

    /// The answers handed to waiting claims since the last call, in the order they were made.
    pub fn take_answers(&mut self) -> Vec<(WaiterId, Expected)> {
        std::mem::take(&mut self.answers)
    }

    /// Every known task, in creation order.
    pub fn tasks(&self) -> impl ExactSizeIterator<Item = &TaskView> {
        self.tasks.iter().map(|t| &t.view)
    }

    /// How many tasks rest in `status`.
    pub fn task_count(&self, status: TaskStatus) -> usize {
        self.tasks.iter().filter(|t| t.view.status == status).count()
    }

    pub fn waiting_claims(&self) -> usize {
        self.waiters.len()
    }

    /// True while the claim that waits as `waiter` is still in line.
    pub fn is_waiting(&self, waiter: WaiterId) -> bool {
        self.waiters.iter().any(|w| w.id == waiter)
    }

    pub fn sequence_next(&self) -> u64 {
        self.sequence_next
    }

    pub fn token_last(&self) -> u64 {
        self.token_last
    }

    pub fn watchers(&self) -> usize {
        self.subscribers.len()
    }

    pub fn policies_len(&self) -> usize {
        self.policies.len()
    }

    pub fn policies(&self) -> Vec<Policy> {
        let mut policies = self.policies.clone();
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        policies
    }

    /// Every known agent, in registration order.
    pub fn agents(&self) -> Vec<AgentView> {
        self.agents.iter().map(Agent::view).collect()
    }

    pub fn leases(&self) -> Vec<LeaseView> {
        let mut leases: Vec<LeaseView> = self.leases.iter().map(Lease::view).collect();
        leases.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        leases
    }

    pub fn elections(&self) -> Vec<(ElectionView, Vec<AgentId>)> {
        let mut groups: Vec<(ElectionView, Vec<AgentId>)> = self
            .groups
            .iter()
            .map(|g| (g.view(), g.candidates.iter().map(|c| c.agent).collect()))
            .collect();
        groups.sort_by(|a, b| a.0.group.cmp(&b.0.group));
        groups
    }

    /// The exact earliest deadline: an agent's next liveness step or forgetting, a lease's expiry.
    pub fn next_deadline(&self) -> Option<Millis> {
        let agents = self.agents.iter().map(|a| self.agent_deadline(a));
        let leases = self.leases.iter().map(|l| l.expires_at);
        let claims = self.waiters.iter().map(|w| w.deadline);
        let tasks = self.tasks.iter().filter_map(|t| self.task_deadline(t));
        agents.chain(leases).chain(claims).chain(tasks).min()
    }

    /// When a finished task is forgotten.
    fn task_deadline(&self, task: &Task) -> Option<Millis> {
        task.finished_at
            .map(|at| at.saturating_add(self.config.task_retention_ms))
    }

    fn agent_deadline(&self, agent: &Agent) -> Millis {
        match agent.status {
            AgentStatus::Alive => agent.liveness_base + agent.ttl_ms,
            AgentStatus::Unreachable => agent.liveness_base + 2 * agent.ttl_ms,
            AgentStatus::Dead => {
                agent.dead_at.expect("a DEAD agent has a time of death") + self.config.dead_retention_ms
            }
        }
    }

    /// The daemon restarted at `now` (after being down since its last input): nothing fires for
    /// the downtime. Every ALIVE agent gets a full ttl from `now` before it goes UNREACHABLE,
    /// every UNREACHABLE one a full ttl from `now` before it dies, every lease a full ttl of its
    /// own from `now` before it expires (none of them sooner than before); DEAD agents keep
    /// their retention. Every stream ended with the old process, and subscriber ids start over.
    pub fn restart_grace(&mut self, now: Millis) {
        assert!(now >= self.now, "the model's time went backwards");
        self.now = now;
        for agent in &mut self.agents {
            match agent.status {
                AgentStatus::Alive => {
                    if agent.liveness_base + agent.ttl_ms < now + agent.ttl_ms {
                        agent.liveness_base = now;
                    }
                }
                AgentStatus::Unreachable => {
                    if agent.liveness_base + 2 * agent.ttl_ms < now + agent.ttl_ms {
                        agent.liveness_base = now - agent.ttl_ms;
                    }
                }
                AgentStatus::Dead => {}
            }
        }
        for lease in &mut self.leases {
            if lease.expires_at < now + lease.ttl_ms {
                lease.expires_at = now + lease.ttl_ms;
            }
        }
        self.subscribers.clear();
        self.subscriber_next = 1;
        // Their callers went with the old process; nobody is answered.
        self.waiters.clear();
    }

    /// Moves time to `now`, firing what is due in deadline order, one thing at a time, each at
    /// its own deadline: what happens then (events' `occurred_at`, a death's time) is stamped
    /// with the deadline, not with the later moment the clock was next read.
    pub fn tick(&mut self, now: Millis) {
        assert!(now >= self.now, "the model's time went backwards");
        while let Some((at, due)) = self.earliest_due(now) {
            self.now = self.now.max(at);
            match due {
                Due::Agent(index) => self.agent_step(index),
                Due::Lease(index) => {
                    let lease = self.leases.remove(index);
                    self.emit(Topic::LeaseExpired, EventPayload::Lease(lease.view()));
                    if lease.claim {
                        self.claim_ended(&lease.key, "lease expired");
                    }
                }
                Due::Claim(index) => {
                    let waiter = self.waiters.remove(index);
                    self.answers.push((waiter.id, Ok(Reply::NoTask)));
                }
                Due::Task(index) => {
                    self.tasks.remove(index);
                }
            }
        }
        self.now = now;
    }

    /// The first thing due by `now`: by deadline, agents before leases before waiting claims
    /// before finished tasks, then registration order, token, arrival or creation.
    fn earliest_due(&self, now: Millis) -> Option<(Millis, Due)> {
        let mut best: Option<((Millis, u8, u64), Due)> = None;
        let mut consider = |rank: (Millis, u8, u64), due: Due| {
            if rank.0 <= now && best.as_ref().is_none_or(|(b, _)| rank < *b) {
                best = Some((rank, due));
            }
        };
        for (index, agent) in self.agents.iter().enumerate() {
            consider((self.agent_deadline(agent), 0, agent.registration), Due::Agent(index));
        }
        for (index, lease) in self.leases.iter().enumerate() {
            consider((lease.expires_at, 1, lease.token), Due::Lease(index));
        }
        for (index, waiter) in self.waiters.iter().enumerate() {
            consider((waiter.deadline, 2, waiter.id.0), Due::Claim(index));
        }
        for (index, task) in self.tasks.iter().enumerate() {
            if let Some(at) = self.task_deadline(task) {
                consider((at, 3, task.order), Due::Task(index));
            }
        }
        best.map(|(rank, due)| (rank.0, due))
    }

    fn agent_step(&mut self, index: usize) {
        match self.agents[index].status {
            AgentStatus::Alive => {
                self.agents[index].status = AgentStatus::Unreachable;
                let view = self.agents[index].view();
                self.emit(Topic::AgentUnreachable, EventPayload::Agent(view));
            }
            AgentStatus::Unreachable => self.kill(index),
            AgentStatus::Dead => {
                // Its waiting claims are answered and leave the line with it.
                let id = self.agents[index].id;
                let (gone, kept): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
                    .into_iter()
                    .partition(|w| w.agent == id);
                self.waiters = kept;
                for waiter in gone {
                    self.answers.push((waiter.id, Err(ErrorCode::FailedPrecondition)));
                }
                self.agents.remove(index);
            }
        }
    }

    fn emit(&mut self, topic: Topic, payload: EventPayload) {
        let event = Arc::new(Event {
            sequence: self.sequence_next,
            topic,
            occurred_at: self.now,
            payload,
        });
        self.sequence_next += 1;
        if self.ring.len() == self.config.event_ring_max {
            self.ring.pop_front();
        }
        self.ring.push_back(Arc::clone(&event));
        self.emitted.push(event);
    }

    /// Death clean-up: `agent.died`, each lease released by token, each group left in the order
    /// joined (`leader.changed` where it led), then each task it had claimed fails ("agent
    /// died"), in the order of its claim leases' tokens.
    fn kill(&mut self, index: usize) {
        let agent = &mut self.agents[index];
        agent.status = AgentStatus::Dead;
        agent.dead_at = Some(self.now);
        let id = agent.id;
        let view = agent.view();
        self.emit(Topic::AgentDied, EventPayload::Agent(view));
        let mut held: Vec<Lease> = Vec::new();
        let mut kept: Vec<Lease> = Vec::new();
        for lease in self.leases.drain(..) {
            if lease.holder == id {
                held.push(lease);
            } else {
                kept.push(lease);
            }
        }
        self.leases = kept;
        held.sort_by_key(|l| l.token);
        let mut claims = Vec::new();
        for lease in held {
            self.emit(Topic::LeaseReleased, EventPayload::Lease(lease.view()));
            if lease.claim {
                claims.push(lease.key);
            }
        }
        let mut stood: Vec<(u64, String)> = self
            .groups
            .iter()
            .filter_map(|g| {
                g.candidates
                    .iter()
                    .find(|c| c.agent == id)
                    .map(|c| (c.joined, g.name.clone()))
            })
            .collect();
        stood.sort();
        for (_, group) in stood {
            self.withdraw(&group, id);
        }
        for task_id in claims {
            self.claim_ended(&task_id, "agent died");
        }
    }

    /// Takes `agent` out of `group`'s FIFO; a new term where it led.
    fn withdraw(&mut self, group: &str, agent: AgentId) {
        let Some(g) = self.groups.iter().position(|g| g.name == group) else {
            return;
        };
        let Some(position) = self.groups[g].candidates.iter().position(|c| c.agent == agent) else {
            return;
        };
        self.groups[g].candidates.remove(position);
        if position == 0 {
            self.leadership_changed(g);
        }
    }

    fn leadership_changed(&mut self, g: usize) {
        let group = &mut self.groups[g];
        group.term += 1;
        group.elected_at = self.now;
        let view = group.view();
        self.emit(Topic::LeaderChanged, EventPayload::Election(view));
    }

    /// A keep-alive message: 1 to `KEEPALIVE_ITEMS_MAX` heartbeats and renewals, else refused
    /// whole; each item answered as its unary call, in order. An item's error is its code (the
    /// message is the core's to word: `compare_reply` checks only that there is one).
    fn keep_alive(&mut self, now: Millis, items: &[Command]) -> Expected {
        let allowed = |item: &Command| matches!(item, Command::Heartbeat { .. } | Command::RenewLease { .. });
        if items.is_empty() || items.len() > agentkeeper::limits::KEEPALIVE_ITEMS_MAX || !items.iter().all(allowed) {
            return Err(ErrorCode::InvalidArgument);
        }
        let answers = (items.iter())
            .map(|item| {
                self.apply(now, item, &Ok(Reply::Done))
                    .map_err(|code| agentkeeper::core::CoreError::new(code, String::new()))
            })
            .collect();
        Ok(Reply::KeepAlive(answers))
    }

    fn agent_index(&self, text_id: &str) -> Option<usize> {
        self.agents.iter().position(|a| a.text_id == text_id)
    }

    fn live_agent_index(&self, text_id: &str) -> Option<usize> {
        self.agent_index(text_id)
            .filter(|&i| self.agents[i].status != AgentStatus::Dead)
    }

    /// Applies `command` at `now`. `core` is the core's answer, from which only a Register's new
    /// id is taken (ids come from the core's RNG; the model checks they are fresh).
    pub fn apply(&mut self, now: Millis, command: &Command, core: &Outcome) -> Expected {
        self.tick(now);
        match command {
            Command::Register {
                card,
                ttl_seconds,
                vector,
            } => {
                let registered = self.register(card, *ttl_seconds, core)?;
                if let Some(vector) = vector {
                    // Taken as a SetCardVector right after would be, or left out: the
                    // registration stands either way.
                    let index = self.agents.len() - 1;
                    let _refused = self.give_card_vector(index, &vector.card_digest, &vector.vector);
                }
                Ok(registered)
            }
            // The simulator's clients number no request (the core's sessions are unit-tested).
            Command::Once { .. } => unreachable!("the simulator's clients send no numbered request"),
            Command::Heartbeat { agent_id } => self.heartbeat(agent_id),
            Command::KeepAlive { items } => self.keep_alive(now, items),
            Command::Deregister { agent_id } => {
                let index = self.agent_index(agent_id).ok_or(ErrorCode::NotFound)?;
                if self.agents[index].status != AgentStatus::Dead {
                    self.kill(index);
                }
                Ok(Reply::Done)
            }
            Command::GetAgent { agent_id } => {
                let index = self.agent_index(agent_id).ok_or(ErrorCode::NotFound)?;
                Ok(Reply::Agent(self.agents[index].view()))
            }
            Command::Now => Ok(Reply::Now(self.now)),
            Command::CardsWithoutVector { .. } => {
                unreachable!("the daemon's background pass reads CardsWithoutVector; the simulator sends none")
            }
            Command::Find {
                query, tools, limit, ..
            } => self.find(query, tools, *limit),
            Command::SetCardVector {
                agent_id,
                card_digest,
                vector,
            } => {
                let index = self.live_agent_index(agent_id).ok_or(ErrorCode::NotFound)?;
                self.give_card_vector(index, card_digest, vector)?;
                Ok(Reply::Done)
            }
            Command::Watch { topics, from_sequence } => self.watch(topics, *from_sequence),
            Command::Unwatch { subscriber } => {
                self.subscribers.retain(|&s| s != subscriber.0);
                Ok(Reply::Done)
            }
            Command::AcquireLease {
                task_id,
                agent_id,
                ttl_seconds,
            } => self.acquire(task_id, agent_id, *ttl_seconds),
            Command::RenewLease {
                task_id,
                agent_id,
                token,
                ttl_seconds,
            } => self.renew(task_id, agent_id, *token, *ttl_seconds),
            Command::ReleaseLease {
                task_id,
                agent_id,
                token,
            } => {
                let index = self.held_lease(task_id, agent_id, *token)?;
                let lease = self.leases.remove(index);
                self.emit(Topic::LeaseReleased, EventPayload::Lease(lease.view()));
                if lease.claim {
                    self.claim_ended(&lease.key, "lease released");
                }
                Ok(Reply::Done)
            }
            Command::Campaign { group, agent_id } => self.campaign(group, agent_id),
            Command::Resign { group, agent_id } => {
                if !within(group, 1, 256) {
                    return Err(ErrorCode::InvalidArgument);
                }
                // Any non-candidate's resign is an OK no-op, an unknown or forgotten agent's too
                // (ARCHITECTURE.md's decision: an exit path never throws).
                if let Some(index) = self.agent_index(agent_id) {
                    let id = self.agents[index].id;
                    self.withdraw(group, id);
                }
                Ok(Reply::Done)
            }
            Command::WatchElection { group } => {
                if !within(group, 1, 256) {
                    return Err(ErrorCode::InvalidArgument);
                }
                let state = match self.groups.iter().find(|g| &g.name == group) {
                    Some(g) => g.view(),
                    None => ElectionView {
                        group: group.as_str().into(),
                        leader: None,
                        term: 0,
                        elected_at: 0,
                    },
                };
                let subscriber = self.subscribe()?;
                Ok(Reply::WatchingElection { subscriber, state })
            }
            Command::SetPolicy { policy } => self.set_policy(policy),
            Command::DeletePolicy { id } => {
                let index = self
                    .policies
                    .iter()
                    .position(|p| &p.id == id)
                    .ok_or(ErrorCode::NotFound)?;
                self.policies.remove(index);
                Ok(Reply::Done)
            }
            Command::ListPolicies {
                subject_prefix,
                page_size,
                page_token,
            } => self.list_policies(subject_prefix, *page_size, page_token),
            Command::CheckPolicy {
                subject,
                action,
                resource,
            } => {
                if [subject, action, resource].iter().any(|f| f.len() > 1024) {
                    return Err(ErrorCode::InvalidArgument);
                }
                Ok(Reply::Decision(decide(&self.policies, subject, action, resource)))
            }
            Command::CreateTask {
                kind,
                input,
                required_tools,
                max_retries,
                ttl_seconds,
            } => self.create_task(kind, input, required_tools, *max_retries, *ttl_seconds, core),
            Command::ClaimTask { agent_id, wait_ms } => self.claim_task(agent_id, *wait_ms),
            Command::CancelClaim { waiter } => {
                self.waiters.retain(|w| w.id != *waiter);
                Ok(Reply::Done)
            }
            Command::ReturnTask { task_id, token } => self.return_task(task_id, *token),
            Command::CompleteTask {
                task_id,
                agent_id,
                output,
            } => self.complete_task(task_id, agent_id, output),
            Command::FailTask {
                task_id,
                agent_id,
                reason,
            } => {
                if reason.len() > REASON_BYTES_MAX {
                    return Err(ErrorCode::InvalidArgument);
                }
                let index = self.claimed_by(task_id, agent_id)?;
                self.drop_claim_lease(index);
                self.task_failed(index, reason);
                Ok(Reply::Done)
            }
            Command::GetTask { task_id } => {
                let index = self.task_index(task_id).ok_or(ErrorCode::NotFound)?;
                Ok(Reply::Task(Box::new(self.tasks[index].view.clone())))
            }
            Command::ListTasks {
                status,
                page_size,
                page_token,
                bytes_left,
            } => self.list_tasks(*status, *page_size, page_token, *bytes_left),
            Command::ListLeases {
                prefix,
                page_size,
                page_token,
            } => self.list_leases(prefix, *page_size, page_token),
            Command::ListElections { page_size, page_token } => self.list_elections(*page_size, page_token),
            Command::ListAgents {
                status,
                query,
                page_size,
                page_token,
            } => self.list_agents(*status, query, *page_size, page_token),
            Command::Overview { agents_max, leases_max } => {
                let lists_max = (*leases_max).min(LIST_PAGE_SIZE_MAX as u32);
                let agents = self.agent_page(None, "", (*agents_max).min(LIST_PAGE_SIZE_MAX as u32))?;
                let Ok(Reply::Leases {
                    leases,
                    next_page_token: leases_next,
                }) = self.list_leases("", lists_max, "")
                else {
                    unreachable!("an empty prefix and token are valid")
                };
                let (elections, elections_next) = self.group_page(lists_max, "");
                let (policies, policies_next) = self.policy_page("", lists_max, "");
                Ok(Reply::Overview(Box::new(Overview {
                    now: self.now,
                    stats: self.stats(),
                    agents: agents.0,
                    agents_next: agents.1,
                    leases: if lists_max == 0 { Vec::new() } else { leases },
                    leases_next: if lists_max == 0 { String::new() } else { leases_next },
                    elections,
                    elections_next,
                    policies,
                    policies_next,
                })))
            }
        }
    }

    /// ListPolicies: by id after the token, the subject starting with the prefix; a page stops
    /// at its size or after looking at `POLICY_SCAN_MAX` policies, and then names the last one
    /// it looked at.
    fn list_policies(&self, prefix: &str, page_size: u32, page_token: &str) -> Expected {
        if prefix.len() > 1024 || page_token.len() > 256 {
            return Err(ErrorCode::InvalidArgument);
        }
        let size = match page_size {
            0 => PAGE_SIZE_DEFAULT as u32,
            n => n,
        };
        let (policies, next_page_token) = self.policy_page(prefix, size, page_token);
        Ok(Reply::Policies {
            policies,
            next_page_token,
        })
    }

    fn policy_page(&self, prefix: &str, page_size: u32, page_token: &str) -> (Vec<Arc<Policy>>, String) {
        let limit = (page_size as usize).min(LIST_PAGE_SIZE_MAX);
        let after: Vec<Policy> = self
            .policies()
            .into_iter()
            .filter(|p| page_token.is_empty() || p.id.as_str() > page_token)
            .collect();
        let mut listed = Vec::new();
        if limit == 0 {
            return (listed, String::new());
        }
        // `looked` policies looked at so far: the ones before this one.
        for (looked, policy) in after.iter().enumerate() {
            if listed.len() == limit || looked == POLICY_SCAN_MAX {
                return (listed, after[looked - 1].id.clone());
            }
            if policy.subject.starts_with(prefix) {
                listed.push(Arc::new(policy.clone()));
            }
        }
        (listed, String::new())
    }

    /// ListElections: groups by name after the token, each with the first candidates in line.
    fn list_elections(&self, page_size: u32, page_token: &str) -> Expected {
        if page_token.len() > 256 {
            return Err(ErrorCode::InvalidArgument);
        }
        let size = match page_size {
            0 => PAGE_SIZE_DEFAULT as u32,
            n => n,
        };
        let (groups, next_page_token) = self.group_page(size, page_token);
        Ok(Reply::Elections {
            groups,
            next_page_token,
        })
    }

    fn group_page(&self, page_size: u32, page_token: &str) -> (Vec<GroupListing>, String) {
        let limit = (page_size as usize).min(LIST_PAGE_SIZE_MAX);
        let mut groups: Vec<GroupListing> = self
            .elections()
            .into_iter()
            .filter(|(state, _)| page_token.is_empty() || &*state.group > page_token)
            .map(|(state, candidates)| GroupListing {
                state,
                candidates_total: candidates.len(),
                candidates: candidates.into_iter().take(CANDIDATES_LISTED_MAX).collect(),
            })
            .collect();
        let more = groups.len() > limit;
        groups.truncate(limit);
        let next = match groups.last() {
            Some(last) if more => last.state.group.to_string(),
            _ => String::new(),
        };
        (groups, next)
    }

    /// The dashboard's agents: one status or all, by registration after the token; with a query,
    /// Find's answer (whose ranking the runner checks by its properties, not by equality).
    fn list_agents(&self, status: Option<AgentStatus>, query: &str, page_size: u32, page_token: &str) -> Expected {
        if query.len() > 8 * 1024 {
            return Err(ErrorCode::InvalidArgument);
        }
        let size = match page_size {
            0 => PAGE_SIZE_DEFAULT as u32,
            n => n,
        };
        if !query.trim().is_empty() {
            if status.is_some_and(|s| s != AgentStatus::Alive) || !page_token.is_empty() {
                return Err(ErrorCode::InvalidArgument);
            }
            let Ok(Reply::Agents(agents)) = self.find(query, &[], size.min(LIST_PAGE_SIZE_MAX as u32)) else {
                unreachable!("a find without tools is valid")
            };
            return Ok(Reply::AgentPage {
                agents,
                next_page_token: String::new(),
                sequence_next: self.sequence_next,
            });
        }
        let (agents, next_page_token) = self.agent_page(status, page_token, size)?;
        Ok(Reply::AgentPage {
            agents,
            next_page_token,
            sequence_next: self.sequence_next,
        })
    }

    fn agent_page(
        &self,
        status: Option<AgentStatus>,
        page_token: &str,
        page_size: u32,
    ) -> Result<(Vec<AgentView>, String), ErrorCode> {
        let after = match page_token {
            "" => 0,
            token => token.parse::<u64>().map_err(|_| ErrorCode::InvalidArgument)?,
        };
        let limit = (page_size as usize).min(LIST_PAGE_SIZE_MAX);
        let matching: Vec<&Agent> = self
            .agents
            .iter()
            .filter(|a| a.registration > after && status.is_none_or(|s| a.status == s))
            .collect();
        let shown = &matching[..matching.len().min(limit)];
        let next = match shown.last() {
            Some(last) if matching.len() > limit => last.registration.to_string(),
            _ => String::new(),
        };
        Ok((shown.iter().map(|a| a.view()).collect(), next))
    }

    /// Every lease with the prefix and a key after the token, by key, a page at a time.
    fn list_leases(&self, prefix: &str, page_size: u32, page_token: &str) -> Expected {
        if prefix.len() > 1024 || page_token.len() > 1024 {
            return Err(ErrorCode::InvalidArgument);
        }
        let limit = match page_size {
            0 => PAGE_SIZE_DEFAULT,
            n => n as usize,
        }
        .min(LEASE_PAGE_SIZE_MAX);
        let mut leases: Vec<LeaseView> = self
            .leases()
            .into_iter()
            .filter(|l| l.task_id.starts_with(prefix) && (page_token.is_empty() || &*l.task_id > page_token))
            .collect();
        let more = leases.len() > limit;
        leases.truncate(limit);
        let next_page_token = match leases.last() {
            Some(last) if more => last.task_id.to_string(),
            _ => String::new(),
        };
        Ok(Reply::Leases {
            leases,
            next_page_token,
        })
    }

    /// Every count the core reports, counted by scanning.
    pub fn stats(&self) -> CoreStats {
        let agents = |status| self.agents.iter().filter(|a| a.status == status).count();
        CoreStats {
            agents_alive: agents(AgentStatus::Alive),
            agents_unreachable: agents(AgentStatus::Unreachable),
            agents_dead: agents(AgentStatus::Dead),
            leases: self.leases.len(),
            groups: self.groups.len(),
            policies: self.policies.len(),
            watchers: self.subscribers.len(),
            sequence_next: self.sequence_next,
            fencing_token_last: self.token_last,
            tasks_pending: self.task_count(TaskStatus::Pending),
            tasks_claimed: self.task_count(TaskStatus::Claimed),
            tasks_completed: self.task_count(TaskStatus::Completed),
            tasks_dead: self.task_count(TaskStatus::Dead),
            claims_waiting: self.waiters.len(),
            card_vectors: (self.agents.iter())
                .filter(|a| a.status != AgentStatus::Dead && a.has_vector)
                .count(),
        }
    }

    /// The live agent at `index` takes `vector` if its card's digest is `card_digest` and the
    /// vector is sound. The model counts the vectors, it does not rank by them (the
    /// simulator's models and dimensions stay within the core's four).
    fn give_card_vector(
        &mut self,
        index: usize,
        card_digest: &CardDigest,
        vector: &ModelVector,
    ) -> Result<(), ErrorCode> {
        if card_digest_of(&self.agents[index].card) != *card_digest {
            return Err(ErrorCode::FailedPrecondition);
        }
        use agentkeeper::core::search::vectors::{check_model_name, unit};
        check_model_name(&vector.model).map_err(|_| ErrorCode::InvalidArgument)?;
        unit(&vector.values).map_err(|_| ErrorCode::InvalidArgument)?;
        self.agents[index].has_vector = true;
        Ok(())
    }

    fn register(&mut self, card: &AgentCard, ttl_seconds: u32, core: &Outcome) -> Expected {
        if !card_valid(card) {
            return Err(ErrorCode::InvalidArgument);
        }
        let ttl_ms = ttl_ms(ttl_seconds, 30).ok_or(ErrorCode::InvalidArgument)?;
        if self.agents.len() >= self.config.agents_max {
            return Err(ErrorCode::ResourceExhausted);
        }
        // The id is the core's to draw; one that is not fresh shows up as a mismatch in the
        // comparison (the model answers with its own placeholder then).
        let id = match core {
            Ok(Reply::Registered { agent_id }) if self.agent_index(&agent_id.to_string()).is_none() => *agent_id,
            _ => Id128(u128::MAX - u128::from(self.registration_next)),
        };
        let registration = self.registration_next;
        self.registration_next += 1;
        self.agents.push(Agent {
            id,
            text_id: format!("{:032x}", id.0),
            card: Arc::new(card.clone()),
            status: AgentStatus::Alive,
            registered_at: self.now,
            last_heartbeat_at: self.now,
            liveness_base: self.now,
            ttl_ms,
            registration,
            dead_at: None,
            has_vector: false,
        });
        let view = self.agents.last().expect("just pushed").view();
        self.emit(Topic::AgentRegistered, EventPayload::Agent(view));
        Ok(Reply::Registered { agent_id: id })
    }

    fn heartbeat(&mut self, agent_id: &str) -> Expected {
        let index = self.live_agent_index(agent_id).ok_or(ErrorCode::NotFound)?;
        let agent = &mut self.agents[index];
        agent.last_heartbeat_at = self.now;
        agent.liveness_base = self.now;
        if agent.status == AgentStatus::Unreachable {
            agent.status = AgentStatus::Alive;
            let view = agent.view();
            self.emit(Topic::AgentRecovered, EventPayload::Agent(view));
        }
        Ok(Reply::Done)
    }

    /// ALIVE agents with every tool, in registration order, cut to the limit. (With a query the
    /// core ranks them; the comparison then checks the set, not the order.)
    fn find(&self, query: &str, tools: &[String], limit: u32) -> Expected {
        if query.len() > 8192 || !tools_valid(tools) {
            return Err(ErrorCode::InvalidArgument);
        }
        let limit = match limit {
            0 => 10,
            n => n.min(1000),
        } as usize;
        let found: Vec<AgentView> = self
            .agents
            .iter()
            .filter(|a| a.status == AgentStatus::Alive)
            .filter(|a| tools.iter().all(|t| a.card.tools.contains(t)))
            .map(Agent::view)
            .take(limit)
            .collect();
        Ok(Reply::Agents(found))
    }

    /// Every ALIVE agent with all of `tools` (no limit): what a ranked Find chooses among.
    pub fn find_candidates(&self, tools: &[String]) -> Vec<AgentView> {
        self.agents
            .iter()
            .filter(|a| a.status == AgentStatus::Alive)
            .filter(|a| tools.iter().all(|t| a.card.tools.contains(t)))
            .map(Agent::view)
            .collect()
    }

    fn watch(&mut self, topics: &[String], from_sequence: u64) -> Expected {
        if topics.len() > 64 || topics.iter().any(|t| t.len() > 256) {
            return Err(ErrorCode::InvalidArgument);
        }
        let oldest = self.ring.front().map_or(self.sequence_next, |e| e.sequence);
        if from_sequence > 0 && from_sequence < oldest {
            return Err(ErrorCode::OutOfRange);
        }
        let subscriber = self.subscribe()?;
        let replay = if from_sequence > 0 {
            self.ring
                .iter()
                .filter(|e| e.sequence >= from_sequence && topics_match(topics, e.topic))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        Ok(Reply::Watching { subscriber, replay })
    }

    fn subscribe(&mut self) -> Result<SubscriberId, ErrorCode> {
        if self.subscribers.len() >= self.config.watchers_max {
            return Err(ErrorCode::ResourceExhausted);
        }
        let id = self.subscriber_next;
        self.subscriber_next += 1;
        self.subscribers.push(id);
        Ok(SubscriberId(id))
    }

    fn acquire(&mut self, key: &str, agent_id: &str, ttl_seconds: u32) -> Expected {
        if !within(key, 1, 1024) {
            return Err(ErrorCode::InvalidArgument);
        }
        let ttl_ms = ttl_ms(ttl_seconds, 60).ok_or(ErrorCode::InvalidArgument)?;
        let agent = self.live_agent_index(agent_id).ok_or(ErrorCode::NotFound)?;
        let holder = self.agents[agent].id;
        if let Some(index) = self.leases.iter().position(|l| l.key == key) {
            let lease = &mut self.leases[index];
            if lease.holder != holder {
                return Ok(Reply::Lease {
                    lease: lease.view(),
                    acquired: false,
                });
            }
            lease.expires_at = self.now + ttl_ms;
            lease.ttl_ms = ttl_ms;
            let view = lease.view();
            self.emit(Topic::LeaseRenewed, EventPayload::Lease(view.clone()));
            return Ok(Reply::Lease {
                lease: view,
                acquired: true,
            });
        }
        // A known task's id is its claim lease's key: taken only with ClaimTask.
        if self.task_index(key).is_some() {
            return Err(ErrorCode::FailedPrecondition);
        }
        if self.leases.len() >= self.config.leases_max {
            return Err(ErrorCode::ResourceExhausted);
        }
        self.token_last += 1;
        let lease = Lease {
            key: key.to_string(),
            holder,
            token: self.token_last,
            acquired_at: self.now,
            expires_at: self.now + ttl_ms,
            ttl_ms,
            claim: false,
        };
        let view = lease.view();
        self.leases.push(lease);
        self.emit(Topic::LeaseAcquired, EventPayload::Lease(view.clone()));
        Ok(Reply::Lease {
            lease: view,
            acquired: true,
        })
    }

    /// The lease on `key`, checked to be held by `agent_id` under `token`.
    fn held_lease(&self, key: &str, agent_id: &str, token: u64) -> Result<usize, ErrorCode> {
        let index = self
            .leases
            .iter()
            .position(|l| l.key == key)
            .ok_or(ErrorCode::NotFound)?;
        let lease = &self.leases[index];
        if format!("{:032x}", lease.holder.0) != agent_id || lease.token != token {
            return Err(ErrorCode::PermissionDenied);
        }
        Ok(index)
    }

    fn renew(&mut self, key: &str, agent_id: &str, token: u64, ttl_seconds: u32) -> Expected {
        let index = self.held_lease(key, agent_id, token)?;
        let lease = &mut self.leases[index];
        let ttl_ms = if ttl_seconds == 0 {
            lease.ttl_ms
        } else {
            ttl_ms(ttl_seconds, 0).ok_or(ErrorCode::InvalidArgument)?
        };
        lease.ttl_ms = ttl_ms;
        lease.expires_at = self.now + ttl_ms;
        let view = lease.view();
        self.emit(Topic::LeaseRenewed, EventPayload::Lease(view.clone()));
        Ok(Reply::Lease {
            lease: view,
            acquired: true,
        })
    }

    fn campaign(&mut self, group: &str, agent_id: &str) -> Expected {
        if !within(group, 1, 256) {
            return Err(ErrorCode::InvalidArgument);
        }
        let agent = self.live_agent_index(agent_id).ok_or(ErrorCode::NotFound)?;
        let id = self.agents[agent].id;
        let g = match self.groups.iter().position(|g| g.name == group) {
            Some(g) => g,
            None => {
                if self.groups.len() >= self.config.groups_max {
                    return Err(ErrorCode::ResourceExhausted);
                }
                self.groups.push(Group {
                    name: group.to_string(),
                    candidates: Vec::new(),
                    term: 0,
                    elected_at: 0,
                });
                self.groups.len() - 1
            }
        };
        if !self.groups[g].candidates.iter().any(|c| c.agent == id) {
            self.joined_next += 1;
            self.groups[g].candidates.push(Candidate {
                agent: id,
                joined: self.joined_next,
            });
            if self.groups[g].candidates.len() == 1 {
                self.leadership_changed(g);
            }
        }
        Ok(Reply::Election(self.groups[g].view()))
    }

    fn task_index(&self, task_id: &str) -> Option<usize> {
        self.tasks.iter().position(|t| t.text_id == task_id)
    }

    fn task_bytes(&self) -> usize {
        self.tasks.iter().map(Task::bytes).sum()
    }

    fn emit_task(&mut self, topic: Topic, index: usize) {
        let view = self.tasks[index].event_view();
        self.emit(topic, EventPayload::Task(view));
    }

    fn create_task(
        &mut self,
        kind: &str,
        input: &[u8],
        required_tools: &[String],
        max_retries: u32,
        ttl_seconds: u32,
        core: &Outcome,
    ) -> Expected {
        if !within(kind, 1, 256) || input.len() > PAYLOAD_BYTES_MAX || !tools_valid(required_tools) {
            return Err(ErrorCode::InvalidArgument);
        }
        let ttl_ms = ttl_ms(ttl_seconds, 60).ok_or(ErrorCode::InvalidArgument)?;
        if self.tasks.len() >= self.config.tasks_max || self.task_bytes() + input.len() > self.config.task_bytes_max {
            return Err(ErrorCode::ResourceExhausted);
        }
        let order = self.task_order_next;
        self.task_order_next += 1;
        // The id is the core's to draw; it must be fresh, and no lease may use it as its key.
        let id = match core {
            Ok(Reply::Task(view))
                if self.task_index(&view.id.to_string()).is_none()
                    && !self.leases.iter().any(|l| l.key == view.id.to_string()) =>
            {
                view.id
            }
            _ => Id128(u128::MAX - u128::from(order)),
        };
        let mut required: Vec<Arc<str>> = required_tools.iter().map(|t| Arc::from(t.as_str())).collect();
        required.sort();
        required.dedup();
        self.tasks.push(Task {
            view: TaskView {
                id,
                kind: kind.into(),
                input: input.into(),
                output: Arc::from(&[][..]),
                status: TaskStatus::Pending,
                required_tools: required.into(),
                max_retries,
                retry_count: 0,
                claimed_by: None,
                failure_reason: "".into(),
                created_at: self.now,
                claimed_at: None,
                completed_at: None,
                ttl_ms,
            },
            text_id: format!("{:032x}", id.0),
            order,
            finished_at: None,
        });
        let index = self.tasks.len() - 1;
        self.emit_task(Topic::TaskCreated, index);
        self.offer(index);
        Ok(Reply::Task(Box::new(self.tasks[index].view.clone())))
    }

    fn claim_task(&mut self, agent_id: &str, wait_ms: u64) -> Expected {
        let agent = self.live_agent_index(agent_id).ok_or(ErrorCode::NotFound)?;
        if self.agents[agent].status != AgentStatus::Alive {
            return Err(ErrorCode::FailedPrecondition);
        }
        let tools = self.agents[agent].card.tools.clone();
        let oldest = self
            .tasks
            .iter()
            .position(|t| t.view.status == TaskStatus::Pending && covers(&tools, &t.view.required_tools));
        if let Some(index) = oldest {
            let (task, lease) = self.grant_claim(index, agent)?;
            return Ok(Reply::Claimed {
                task: Box::new(task),
                lease,
            });
        }
        if wait_ms == 0 {
            return Ok(Reply::NoTask);
        }
        if self.waiters.len() >= self.config.waiters_max {
            return Err(ErrorCode::ResourceExhausted);
        }
        let id = WaiterId(self.waiter_next);
        self.waiter_next += 1;
        self.waiters.push(Waiter {
            id,
            agent: self.agents[agent].id,
            tools,
            deadline: self.now.saturating_add(wait_ms),
        });
        Ok(Reply::ClaimWaiting { waiter: id })
    }

    /// Hands the PENDING task to the agent: a claim lease on its id with the task's ttl
    /// (`lease.acquired`), then CLAIMED (`task.claimed`).
    fn grant_claim(&mut self, index: usize, agent: usize) -> Result<(TaskView, LeaseView), ErrorCode> {
        if self.leases.len() >= self.config.leases_max {
            return Err(ErrorCode::ResourceExhausted);
        }
        self.token_last += 1;
        let holder = self.agents[agent].id;
        let task = &self.tasks[index];
        let lease = Lease {
            key: task.text_id.clone(),
            holder,
            token: self.token_last,
            acquired_at: self.now,
            expires_at: self.now + task.view.ttl_ms,
            ttl_ms: task.view.ttl_ms,
            claim: true,
        };
        let lease_view = lease.view();
        self.leases.push(lease);
        self.emit(Topic::LeaseAcquired, EventPayload::Lease(lease_view.clone()));
        let task = &mut self.tasks[index];
        task.view.status = TaskStatus::Claimed;
        task.view.claimed_by = Some(holder);
        task.view.claimed_at = Some(self.now);
        self.emit_task(Topic::TaskClaimed, index);
        Ok((self.tasks[index].view.clone(), lease_view))
    }

    /// The newly PENDING task goes to the earliest waiting claim whose tools cover it; a waiter
    /// whose agent is not ALIVE (or no longer known) is answered FAILED_PRECONDITION and passed
    /// over, as is one the claim lease cannot be granted to (RESOURCE_EXHAUSTED).
    fn offer(&mut self, index: usize) {
        loop {
            let required = Arc::clone(&self.tasks[index].view.required_tools);
            let Some(position) = self.waiters.iter().position(|w| covers(&w.tools, &required)) else {
                return;
            };
            let waiter = self.waiters.remove(position);
            let agent = self
                .agents
                .iter()
                .position(|a| a.id == waiter.agent && a.status == AgentStatus::Alive);
            let Some(agent) = agent else {
                self.answers.push((waiter.id, Err(ErrorCode::FailedPrecondition)));
                continue;
            };
            match self.grant_claim(index, agent) {
                Ok((task, lease)) => {
                    let answer = Reply::Claimed {
                        task: Box::new(task),
                        lease,
                    };
                    self.answers.push((waiter.id, Ok(answer)));
                    return;
                }
                Err(code) => self.answers.push((waiter.id, Err(code))),
            }
        }
    }

    /// The task `task_id`, checked to be CLAIMED by `agent_id`.
    fn claimed_by(&self, task_id: &str, agent_id: &str) -> Result<usize, ErrorCode> {
        let index = self.task_index(task_id).ok_or(ErrorCode::NotFound)?;
        let view = &self.tasks[index].view;
        let by = view.claimed_by.map(|a| format!("{:032x}", a.0));
        if view.status != TaskStatus::Claimed || by.as_deref() != Some(agent_id) {
            return Err(ErrorCode::FailedPrecondition);
        }
        Ok(index)
    }

    /// Takes a CLAIMED task's lease away, as its holder's release would (`lease.released`).
    fn drop_claim_lease(&mut self, index: usize) {
        let key = &self.tasks[index].text_id;
        let position = self
            .leases
            .iter()
            .position(|l| l.claim && l.key == *key)
            .expect("a CLAIMED task has its claim lease");
        let lease = self.leases.remove(position);
        self.emit(Topic::LeaseReleased, EventPayload::Lease(lease.view()));
    }

    /// A claim lease ended without the task finishing: the task fails with `reason`.
    fn claim_ended(&mut self, task_id: &str, reason: &str) {
        let index = self.task_index(task_id).expect("a claim lease's task is known");
        assert_eq!(self.tasks[index].view.status, TaskStatus::Claimed);
        self.task_failed(index, reason);
    }

    /// FailTask's effect (the lease already gone): one more retry, then PENDING or DEAD.
    fn task_failed(&mut self, index: usize, reason: &str) {
        let task = &mut self.tasks[index];
        task.view.retry_count += 1;
        task.view.failure_reason = reason.into();
        if task.view.retry_count <= task.view.max_retries {
            self.requeue(index);
            return;
        }
        task.view.status = TaskStatus::Dead;
        task.finished_at = Some(self.now);
        self.emit_task(Topic::TaskDead, index);
    }

    /// Back to PENDING, no longer anybody's (`task.failed`), and offered to the waiting claims.
    fn requeue(&mut self, index: usize) {
        let task = &mut self.tasks[index];
        task.view.status = TaskStatus::Pending;
        task.view.claimed_by = None;
        task.view.claimed_at = None;
        self.emit_task(Topic::TaskFailed, index);
        self.offer(index);
    }

    /// A claim's reply could not be delivered: PENDING again, no retry counted.
    fn return_task(&mut self, task_id: &str, token: u64) -> Expected {
        let index = self.task_index(task_id).ok_or(ErrorCode::NotFound)?;
        let held = self
            .leases
            .iter()
            .any(|l| l.claim && l.key == task_id && l.token == token);
        if self.tasks[index].view.status != TaskStatus::Claimed || !held {
            return Err(ErrorCode::FailedPrecondition);
        }
        self.drop_claim_lease(index);
        self.requeue(index);
        Ok(Reply::Done)
    }

    fn complete_task(&mut self, task_id: &str, agent_id: &str, output: &[u8]) -> Expected {
        if output.len() > PAYLOAD_BYTES_MAX {
            return Err(ErrorCode::InvalidArgument);
        }
        let index = self.claimed_by(task_id, agent_id)?;
        if self.task_bytes() + output.len() > self.config.task_bytes_max {
            return Err(ErrorCode::ResourceExhausted);
        }
        self.drop_claim_lease(index);
        let task = &mut self.tasks[index];
        task.view.output = output.into();
        task.view.completed_at = Some(self.now);
        task.view.status = TaskStatus::Completed;
        task.finished_at = Some(self.now);
        self.emit_task(Topic::TaskCompleted, index);
        Ok(Reply::Done)
    }

    /// ListTasks (`bytes_left` `None`: a whole page, at least one task) or a further slice of a
    /// gathered page (only tasks that fit what is left).
    fn list_tasks(
        &self,
        status: Option<TaskStatus>,
        page_size: u32,
        page_token: &str,
        bytes_left: Option<u64>,
    ) -> Expected {
        let after: u64 = if page_token.is_empty() {
            0
        } else {
            page_token.parse().map_err(|_| ErrorCode::InvalidArgument)?
        };
        let limit = match page_size {
            0 => PAGE_SIZE_DEFAULT,
            n => n.min(PAGE_SIZE_MAX) as usize,
        };
        let allowance = bytes_left.map_or(PAGE_BYTES_MAX, |b| usize::try_from(b).unwrap_or(usize::MAX));
        let mut tasks = Vec::new();
        let mut bytes = 0;
        let mut next = String::new();
        let listed = self
            .tasks
            .iter()
            .filter(|t| t.order >= after && status.is_none_or(|s| t.view.status == s));
        for task in listed {
            let first = tasks.is_empty() && bytes_left.is_none();
            if tasks.len() == limit || (!first && bytes + task.bytes() > allowance) {
                next = task.order.to_string();
                break;
            }
            bytes += task.bytes();
            tasks.push(task.view.clone());
        }
        Ok(Reply::Tasks {
            tasks,
            next_page_token: next,
        })
    }

    fn set_policy(&mut self, input: &PolicyInput) -> Expected {
        let valid = within(&input.id, 1, 256)
            && within(&input.subject, 1, 1024)
            && within(&input.action, 1, 1024)
            && within(&input.resource, 1, 1024);
        let (true, Some(effect)) = (valid, input.effect) else {
            return Err(ErrorCode::InvalidArgument);
        };
        let existing = self.policies.iter().position(|p| p.id == input.id);
        if existing.is_none() && self.policies.len() >= self.config.policies_max {
            return Err(ErrorCode::ResourceExhausted);
        }
        let policy = Policy {
            id: input.id.clone(),
            subject: input.subject.clone(),
            action: input.action.clone(),
            resource: input.resource.clone(),
            effect,
        };
        match existing {
            Some(index) => self.policies[index] = policy.clone(),
            None => self.policies.push(policy.clone()),
        }
        Ok(Reply::Policy(policy.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_follows_the_contract() {
        assert!(glob(b"*", b""));
        assert!(glob(b"a*b", b"a:x:b"));
        assert!(glob(b"**", b"ab"));
        assert!(!glob(b"a*b", b"a:c"));
        assert!(!glob(b"", b"a"));
        assert!(glob(b"", b""));
    }

    /// Registers agent 7 (card "a", a TTL of 1 s) at time 0, as the core answered it.
    fn register_agent_7(model: &mut Model) {
        let card = AgentCard {
            name: "a".into(),
            ..AgentCard::default()
        };
        let registered: Outcome = Ok(Reply::Registered { agent_id: Id128(7) });
        let register = Command::Register {
            card: Box::new(card),
            ttl_seconds: 1,
            vector: None,
        };
        model.apply(0, &register, &registered).unwrap();
    }

    #[test]
    fn a_jump_past_a_death_releases_the_lease_the_dead_agent_held() {
        let config = CoreConfig::default();
        let mut model = Model::new(&config, 0);
        register_agent_7(&mut model);
        let acquire = Command::AcquireLease {
            task_id: "k".into(),
            agent_id: format!("{:032x}", 7),
            ttl_seconds: 3,
        };
        model.apply(0, &acquire, &Ok(Reply::Done)).unwrap();
        model.take_events();
        model.tick(10_000);
        let topics: Vec<&str> = model.take_events().iter().map(|e| topic_name(e.topic)).collect();
        assert_eq!(topics, ["agent.unreachable", "agent.died", "lease.released"]);
    }

    #[test]
    fn a_claimers_death_fails_its_task_after_its_lease_and_a_waiting_claim_takes_it() {
        let config = CoreConfig::default();
        let mut model = Model::new(&config, 0);
        for (id, ttl_seconds) in [(7, 1), (8, 60)] {
            let card = AgentCard {
                name: "a".into(),
                ..AgentCard::default()
            };
            let registered: Outcome = Ok(Reply::Registered { agent_id: Id128(id) });
            model
                .apply(
                    0,
                    &Command::Register {
                        card: Box::new(card),
                        ttl_seconds,
                        vector: None,
                    },
                    &registered,
                )
                .unwrap();
        }
        let create = Command::CreateTask {
            kind: "t".into(),
            input: b"in".to_vec(),
            required_tools: vec![],
            max_retries: 1,
            ttl_seconds: 60,
        };
        // Without the core's id the model names the task itself.
        model.apply(0, &create, &Ok(Reply::Done)).unwrap();
        let claim = |agent: u128, wait_ms| Command::ClaimTask {
            agent_id: format!("{agent:032x}"),
            wait_ms,
        };
        let first = model.apply(0, &claim(7, 0), &Ok(Reply::Done)).unwrap();
        assert!(matches!(first, Reply::Claimed { .. }), "{first:?}");
        let waiting = model.apply(0, &claim(8, 60_000), &Ok(Reply::Done)).unwrap();
        assert_eq!(waiting, Reply::ClaimWaiting { waiter: WaiterId(1) });
        model.take_events();
        // Agent 7 goes UNREACHABLE at 1 s and dies at 2 s.
        model.tick(10_000);
        let topics: Vec<&str> = model.take_events().iter().map(|e| topic_name(e.topic)).collect();
        assert_eq!(
            topics,
            [
                "agent.unreachable",
                "agent.died",
                "lease.released",
                "task.failed",
                "lease.acquired",
                "task.claimed"
            ]
        );
        let answers = model.take_answers();
        assert_eq!(answers.len(), 1);
        let (waiter, Ok(Reply::Claimed { task, lease })) = &answers[0] else {
            panic!("{answers:?}")
        };
        assert_eq!(*waiter, WaiterId(1));
        assert_eq!((task.retry_count, &*task.failure_reason), (1, "agent died"));
        assert_eq!((task.claimed_by, task.claimed_at), (Some(Id128(8)), Some(2000)));
        assert_eq!((lease.token, lease.expires_at), (2, 62_000));
        assert_eq!(&*task.input, b"in", "the claimer gets the input");
    }

    #[test]
    fn a_restart_forgives_the_downtime_then_time_runs_again() {
        let config = CoreConfig::default();
        let mut model = Model::new(&config, 0);
        register_agent_7(&mut model);
        let acquire = Command::AcquireLease {
            task_id: "k".into(),
            agent_id: format!("{:032x}", 7),
            ttl_seconds: 3,
        };
        model.apply(0, &acquire, &Ok(Reply::Done)).unwrap();
        model.take_events();
        // Down from 0 to 10 s: the agent would have died at 2 s and its lease expired at 3 s.
        model.restart_grace(10_000);
        assert_eq!(model.leases()[0].expires_at, 13_000);
        model.tick(10_999);
        assert!(
            model.take_events().is_empty(),
            "nothing is due within a ttl of the restart"
        );
        assert_eq!(model.next_deadline(), Some(11_000));
        model.tick(12_000);
        let topics: Vec<&str> = model.take_events().iter().map(|e| topic_name(e.topic)).collect();
        assert_eq!(topics, ["agent.unreachable", "agent.died", "lease.released"]);
    }
}
