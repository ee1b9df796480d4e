//! The simulated clients: agents with heartbeat personalities, orchestrators that find, lease,
//! campaign, set policies and watch, and the clock. Swarm testing: each seed first draws its own
//! mix (which action kinds are on and how heavy, population sizes, limits, faults), so different
//! seeds stress different corners instead of every seed averaging everything out.
//!
//! The workload only decides what to send; it learns from the replies its clients saw (a lost
//! reply teaches nothing) and peeks at the executor for things a real client would also know
//! (its subscriptions' buffers) or that make time land on interesting boundaries (the next
//! deadline).

use agentkeeper::core::types::{AgentCard, Capability, Effect, Millis};
use agentkeeper::core::{CoreConfig, Outcome, PlantedBug, PolicyInput, Reply};

use crate::exec::{CLOCK_JUMP_MS_MIN, Executor, SubState};
use crate::rng::Rng;
use crate::step::{AgentRef, Op, SimConfig, Step, SubRef, TokenRef};

/// The faults a seed may switch on. Crash + restart from the store's bytes joins this list with
/// persistence (see the README).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The client never sees a reply; it retries where the contract makes that safe.
    LostReply,
    /// A subscriber stops reading; its bounded buffer overflows and the driver cuts it off.
    StalledSubscriber,
    /// The process pauses for minutes to hours; time jumps and everything due fires at once.
    ClockJump,
}

impl Fault {
    pub const ALL: [Fault; 3] = [Fault::LostReply, Fault::StalledSubscriber, Fault::ClockJump];

    pub fn name(self) -> &'static str {
        match self {
            Fault::LostReply => "lost_reply",
            Fault::StalledSubscriber => "stalled_subscriber",
            Fault::ClockJump => "clock_jump",
        }
    }
}

/// The action kinds a seed weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Register,
    Heartbeat,
    Deregister,
    GetAgent,
    Find,
    Acquire,
    Renew,
    Release,
    Campaign,
    Resign,
    WatchElection,
    SetPolicy,
    DeletePolicy,
    ListPolicies,
    CheckPolicy,
    Watch,
    Unwatch,
    Consume,
    Advance,
}

const ACTIONS: [Action; 19] = [
    Action::Register,
    Action::Heartbeat,
    Action::Deregister,
    Action::GetAgent,
    Action::Find,
    Action::Acquire,
    Action::Renew,
    Action::Release,
    Action::Campaign,
    Action::Resign,
    Action::WatchElection,
    Action::SetPolicy,
    Action::DeletePolicy,
    Action::ListPolicies,
    Action::CheckPolicy,
    Action::Watch,
    Action::Unwatch,
    Action::Consume,
    Action::Advance,
];

/// Population bounds: small, so that O(state) checks after every step stay cheap.
pub const AGENTS_MAX: u64 = 64;
pub const LEASE_KEYS_MAX: u64 = 32;
pub const POLICY_IDS_MAX: u64 = 64;
pub const GROUPS_MAX: u64 = 8;
pub const SUBSCRIBERS_MAX: u64 = 8;

const TOOLS: [&str; 6] = ["sql", "pdf", "http_client", "grep", "Sql", "browser"];
const NAMES: [&str; 6] = ["alpha", "pdf parser", "sql agent", "web-scraper", "beta", "crawler"];
const WORDS: [&str; 10] = [
    "parses",
    "pdf",
    "pages",
    "queries",
    "sql",
    "databases",
    "fetches",
    "web",
    "the",
    "reports",
];
const QUERIES: [&str; 8] = ["", "", "pdf", "sql pages", "web parsing", "the", " ", "crawler reports"];
const TOPICS: [&str; 11] = [
    "",
    "agent.",
    "lease.",
    "leader.",
    "task.",
    "agent.d",
    "lease.re",
    "l",
    "a",
    "x",
    "lease.acquired",
];
const POLICY_ALPHABET: [char; 4] = ['a', 'b', ':', '*'];
const QUERY_ALPHABET: [char; 3] = ['a', 'b', ':'];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Personality {
    /// Heartbeats at about a third of its ttl.
    Punctual,
    /// Heartbeats around its ttl: goes UNREACHABLE and recovers, sometimes dies.
    Late,
    /// Never heartbeats: UNREACHABLE after ttl, DEAD after 2 x ttl.
    Silent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    /// Reads whatever is buffered as soon as half the buffer fills.
    Healthy,
    /// Reads a couple of events now and then.
    Slow,
    /// Never reads: overflows and is cut off.
    Stalled,
}

struct ClientAgent {
    /// The Register step: how later steps name this agent.
    registered: usize,
    personality: Personality,
    ttl_ms: u64,
    next_heartbeat_at: Millis,
    /// Leases it believes it holds: (key, the step whose reply carried the token).
    leases: Vec<(String, usize)>,
    groups: Vec<String>,
}

struct ClientSub {
    opened: usize,
    topics: Option<Vec<String>>,
    reader: Reader,
}

/// One seed's mix: what is on, how heavy, how big, how faulty.
pub struct Swarm {
    weights: [u32; ACTIONS.len()],
    population: usize,
    keys: u64,
    groups: u64,
    policy_ids: u64,
    subscribers: usize,
    buffer_max: u32,
    agent_ttl_s_max: u64,
    lease_ttl_s_max: u64,
    personalities: [u32; 3],
    readers: [u32; 3],
    invalid_per_mille: u32,
    wrong_per_mille: u32,
    lost_per_mille: u32,
    jump_per_million: u64,
    advance_ms_max: u64,
    faults: Vec<Fault>,
    pub config: SimConfig,
}

impl Swarm {
    pub fn draw(seed: u64, planted_bug: PlantedBug, rng: &mut Rng) -> Swarm {
        let mut weights = [0u32; ACTIONS.len()];
        for (weight, action) in weights.iter_mut().zip(ACTIONS) {
            let always = matches!(action, Action::Register | Action::Advance | Action::Heartbeat);
            if always || rng.chance(750) {
                *weight = rng.range(1, 20) as u32;
            }
        }
        let faults: Vec<Fault> = Fault::ALL.into_iter().filter(|_| rng.chance(700)).collect();
        let on = |fault: Fault| faults.contains(&fault);
        // Now and then a limit small enough to hit (RESOURCE_EXHAUSTED), else the default.
        let limit = |rng: &mut Rng, low: u64, high: u64, default: usize| {
            if rng.chance(250) {
                rng.range(low, high) as usize
            } else {
                default
            }
        };
        let defaults = CoreConfig::default();
        let core = CoreConfig {
            seed,
            dead_retention_ms: *rng.pick(&[2_000, 10_000, 60_000, 3_600_000]),
            event_ring_max: *rng.pick(&[16, 256, 4096]),
            watchers_max: limit(rng, 2, SUBSCRIBERS_MAX + 1, defaults.watchers_max),
            agents_max: limit(rng, 4, AGENTS_MAX, defaults.agents_max),
            leases_max: limit(rng, 2, LEASE_KEYS_MAX, defaults.leases_max),
            policies_max: limit(rng, 4, POLICY_IDS_MAX, defaults.policies_max),
            groups_max: limit(rng, 1, GROUPS_MAX, defaults.groups_max),
            planted_bug,
        };
        let start_ms = 1_700_000_000_000 + rng.below(1_000_000_000);
        Swarm {
            weights,
            population: rng.range(1, AGENTS_MAX) as usize,
            keys: rng.range(1, LEASE_KEYS_MAX),
            groups: rng.range(1, GROUPS_MAX),
            policy_ids: rng.range(1, POLICY_IDS_MAX),
            subscribers: rng.range(0, SUBSCRIBERS_MAX) as usize,
            buffer_max: *rng.pick(&[2, 8, 64]),
            agent_ttl_s_max: *rng.pick(&[1, 3, 10, 30]),
            lease_ttl_s_max: *rng.pick(&[1, 5, 20]),
            personalities: [
                rng.range(0, 10) as u32 + 1,
                rng.range(0, 5) as u32,
                rng.range(0, 3) as u32,
            ],
            readers: [
                rng.range(1, 10) as u32,
                rng.range(0, 5) as u32,
                if on(Fault::StalledSubscriber) {
                    rng.range(1, 5) as u32
                } else {
                    0
                },
            ],
            invalid_per_mille: *rng.pick(&[0, 10, 50]),
            wrong_per_mille: *rng.pick(&[0, 50, 200]),
            lost_per_mille: if on(Fault::LostReply) {
                *rng.pick(&[5, 30, 100])
            } else {
                0
            },
            jump_per_million: if on(Fault::ClockJump) {
                *rng.pick(&[50, 300, 2000])
            } else {
                0
            },
            advance_ms_max: *rng.pick(&[20, 100, 500]),
            faults,
            config: SimConfig { core, start_ms },
        }
    }

    /// One line saying what this seed stresses.
    pub fn describe(&self) -> String {
        let on: Vec<String> = ACTIONS
            .iter()
            .zip(self.weights)
            .filter(|(_, w)| *w > 0)
            .map(|(a, w)| format!("{a:?}:{w}"))
            .collect();
        let faults: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        format!(
            "population {} keys {} groups {} policy ids {} subscribers {} (buffer <= {}) agent ttl <= {} s; \
             faults [{}]; weights {}",
            self.population,
            self.keys,
            self.groups,
            self.policy_ids,
            self.subscribers,
            self.buffer_max,
            self.agent_ttl_s_max,
            faults.join(" "),
            on.join(" ")
        )
    }
}

pub struct Workload {
    rng: Rng,
    swarm: Swarm,
    agents: Vec<ClientAgent>,
    /// Register steps of agents that left, died or were never learned of: stale references.
    past: Vec<usize>,
    subs: Vec<ClientSub>,
    /// A lost reply to a retry-safe command: sent again next.
    retry: Option<Op>,
    /// The next tick is a clock jump.
    jump: bool,
}

impl Workload {
    /// Draws the seed's swarm and the core configuration it runs with.
    pub fn new(seed: u64, planted_bug: PlantedBug) -> Workload {
        let mut rng = Rng::new(seed);
        let swarm = Swarm::draw(seed, planted_bug, &mut rng);
        Workload {
            rng,
            swarm,
            agents: Vec::new(),
            past: Vec::new(),
            subs: Vec::new(),
            retry: None,
            jump: false,
        }
    }

    pub fn swarm(&self) -> &Swarm {
        &self.swarm
    }

    /// The next step, numbered `index`.
    pub fn next(&mut self, index: usize, exec: &Executor) -> Step {
        let now = exec.now();
        let op = match self.retry.take() {
            Some(op) => op,
            None => self.choose(now, exec),
        };
        let lost = !matches!(op, Op::Tick | Op::Consume { .. }) && self.rng.chance(self.swarm.lost_per_mille);
        let at = match op {
            Op::Tick => self.advance(now, exec),
            _ => now,
        };
        Step { index, at, op, lost }
    }

    fn choose(&mut self, now: Millis, exec: &Executor) -> Op {
        if self.swarm.jump_per_million > 0 && self.rng.below(1_000_000) < self.swarm.jump_per_million {
            self.jump = true;
            return Op::Tick;
        }
        if let Some(op) = self.due(now, exec) {
            return op;
        }
        let mut weights = self.swarm.weights;
        if self.agents.len() >= self.swarm.population {
            weights[0] = 0;
        }
        let action = ACTIONS[self.rng.weighted(&weights).expect("Advance always has weight")];
        self.action(action, exec).unwrap_or(Op::Tick)
    }

    /// A punctual (or late) agent whose heartbeat is due, or a healthy reader whose buffer is
    /// half full: a real client would act now.
    fn due(&mut self, now: Millis, exec: &Executor) -> Option<Op> {
        if self.rng.chance(300) {
            return None;
        }
        if let Some(agent) = self.agents.iter().find(|a| a.next_heartbeat_at <= now) {
            return Some(Op::Heartbeat {
                agent: AgentRef::Registered(agent.registered),
            });
        }
        self.subs.iter().find_map(|s| {
            let sub = exec.sub(s.opened)?;
            let half = sub.buffer.len() * 2 >= sub.capacity && !sub.buffer.is_empty();
            (s.reader == Reader::Healthy && half).then_some(Op::Consume {
                sub: SubRef(s.opened),
                count: sub.buffer.len() as u32,
            })
        })
    }

    fn action(&mut self, action: Action, exec: &Executor) -> Option<Op> {
        Some(match action {
            Action::Register => self.register(),
            Action::Heartbeat => Op::Heartbeat {
                agent: self.heartbeat_ref(),
            },
            Action::Deregister => {
                let agent = self.agent_ref();
                if let AgentRef::Registered(step) = agent
                    && let Some(i) = self.agents.iter().position(|a| a.registered == step)
                {
                    self.past.push(self.agents.swap_remove(i).registered);
                }
                Op::Deregister { agent }
            }
            Action::GetAgent => Op::GetAgent {
                agent: self.agent_ref(),
            },
            Action::Find => self.find(),
            Action::Acquire => Op::Acquire {
                key: self.key(),
                agent: self.agent_ref(),
                ttl_seconds: self.lease_ttl(),
            },
            Action::Renew => {
                let (key, agent, token) = self.held_lease(false)?;
                Op::Renew {
                    key,
                    agent,
                    token,
                    ttl_seconds: self.lease_ttl(),
                }
            }
            Action::Release => {
                let (key, agent, token) = self.held_lease(true)?;
                Op::Release { key, agent, token }
            }
            Action::Campaign => Op::Campaign {
                group: self.group(),
                agent: self.agent_ref(),
            },
            Action::Resign => self.resign(),
            Action::WatchElection => {
                if self.open_subs(exec) >= self.swarm.subscribers {
                    return None;
                }
                Op::WatchElection {
                    group: self.group(),
                    buffer: self.rng.range(1, u64::from(self.swarm.buffer_max)) as u32,
                }
            }
            Action::SetPolicy => self.set_policy(),
            Action::DeletePolicy => Op::DeletePolicy { id: self.policy_id() },
            Action::ListPolicies => Op::ListPolicies {
                prefix: if self.invalid() {
                    "a".repeat(1025)
                } else {
                    self.rng.pick(&["", "a", "b", "a:", "*", ":"]).to_string()
                },
            },
            Action::CheckPolicy => {
                let field = |rng: &mut Rng| text(rng, &QUERY_ALPHABET, 0, 4);
                let (subject, action, resource) = (field(&mut self.rng), field(&mut self.rng), field(&mut self.rng));
                if self.invalid() {
                    Op::CheckPolicy {
                        subject: "a".repeat(1025),
                        action,
                        resource,
                    }
                } else {
                    Op::CheckPolicy {
                        subject,
                        action,
                        resource,
                    }
                }
            }
            Action::Watch => self.watch(exec)?,
            Action::Unwatch => {
                let open: Vec<usize> = self
                    .subs
                    .iter()
                    .filter(|s| exec.sub(s.opened).is_some_and(|sub| sub.state == SubState::Open))
                    .map(|s| s.opened)
                    .collect();
                let opened = *pick(&mut self.rng, &open)?;
                Op::Unwatch { sub: SubRef(opened) }
            }
            Action::Consume => {
                let readers: Vec<usize> = self
                    .subs
                    .iter()
                    .filter(|s| s.reader != Reader::Stalled)
                    .filter(|s| exec.sub(s.opened).is_some_and(|sub| !sub.buffer.is_empty()))
                    .map(|s| s.opened)
                    .collect();
                let opened = *pick(&mut self.rng, &readers)?;
                Op::Consume {
                    sub: SubRef(opened),
                    count: self.rng.range(1, 3) as u32,
                }
            }
            Action::Advance => Op::Tick,
        })
    }

    /// Where a tick moves the clock to. Like the real driver, which sleeps until the core's next
    /// deadline, an ordinary tick never passes a deadline (it stops on it, or just before it);
    /// only a clock jump (a paused process) lets many deadlines fall due in one tick.
    fn advance(&mut self, now: Millis, exec: &Executor) -> Millis {
        let next_deadline = exec.model().next_deadline().filter(|&d| d > now);
        if std::mem::take(&mut self.jump) {
            return now + self.rng.range(CLOCK_JUMP_MS_MIN, 7_200_000);
        }
        let target = match self.rng.below(100) {
            0..=16 => next_deadline.unwrap_or(now),
            17..=24 => next_deadline.map_or(now, |d| d - 1),
            25..=34 => now + self.rng.range(200, 5_000),
            _ => now + self.rng.range(0, self.swarm.advance_ms_max),
        };
        next_deadline.map_or(target, |d| target.min(d))
    }

    fn invalid(&mut self) -> bool {
        self.rng.chance(self.swarm.invalid_per_mille)
    }

    fn wrong(&mut self) -> bool {
        self.rng.chance(self.swarm.wrong_per_mille)
    }

    fn register(&mut self) -> Op {
        let rng = &mut self.rng;
        let tools: Vec<String> = TOOLS
            .iter()
            .filter(|_| rng.chance(300))
            .map(|t| t.to_string())
            .collect();
        let words: Vec<&str> = (0..rng.range(0, 6)).map(|_| *rng.pick(&WORDS)).collect();
        let mut card = AgentCard {
            name: rng.pick(&NAMES).to_string(),
            description: words.join(" "),
            version: if rng.chance(500) { "1.0".into() } else { String::new() },
            capabilities: if rng.chance(300) {
                vec![Capability {
                    name: "parse".into(),
                    description: "parses pdf pages".into(),
                }]
            } else {
                Vec::new()
            },
            tools,
            metadata: if rng.chance(300) {
                vec![("team".into(), "web reports".into())]
            } else {
                Vec::new()
            },
        };
        let mut ttl_seconds = match rng.below(10) {
            0 => 0,
            _ => rng.range(1, self.swarm.agent_ttl_s_max) as u32,
        };
        if self.rng.chance(self.swarm.invalid_per_mille) {
            match self.rng.below(9) {
                0 => card.name = String::new(),
                1 => card.name = "bad\u{7}name".into(),
                2 => card.name = "n".repeat(257),
                3 => card.description = "d".repeat(8193),
                4 => card.version = "v".repeat(65),
                5 => card.tools = vec![String::new()],
                6 => card.tools = vec!["t".repeat(129)],
                7 => card.metadata = (0..65).map(|i| (format!("k{i:02}"), String::new())).collect(),
                _ => ttl_seconds = 86_401,
            }
        }
        Op::Register { card, ttl_seconds }
    }

    /// A known agent mostly; sometimes a stale or malformed id.
    fn agent_ref(&mut self) -> AgentRef {
        let draw = self.rng.below(100);
        if draw < 3 {
            return AgentRef::Literal(
                self.rng
                    .pick(&["", "nope", "0123456789ABCDEF0123456789ABCDEF"])
                    .to_string(),
            );
        }
        if (draw < 10 || self.agents.is_empty()) && !self.past.is_empty() {
            return AgentRef::Registered(*self.rng.pick(&self.past));
        }
        if self.agents.is_empty() {
            return AgentRef::Literal("f".repeat(32));
        }
        let i = self.rng.index(self.agents.len());
        AgentRef::Registered(self.agents[i].registered)
    }

    /// An agent that heartbeats at all (silent ones never do), or now and then a stale id.
    fn heartbeat_ref(&mut self) -> AgentRef {
        let talkers: Vec<usize> = self
            .agents
            .iter()
            .filter(|a| a.personality != Personality::Silent)
            .map(|a| a.registered)
            .collect();
        match pick(&mut self.rng, &talkers) {
            Some(&registered) if !self.rng.chance(50) => AgentRef::Registered(registered),
            _ => self.agent_ref(),
        }
    }

    fn key(&mut self) -> String {
        if self.invalid() {
            return if self.rng.chance(500) {
                String::new()
            } else {
                "k".repeat(1025)
            };
        }
        format!("k{}", self.rng.below(self.swarm.keys))
    }

    fn group(&mut self) -> String {
        if self.invalid() {
            return if self.rng.chance(500) {
                String::new()
            } else {
                "g".repeat(257)
            };
        }
        format!("g{}", self.rng.below(self.swarm.groups))
    }

    fn policy_id(&mut self) -> String {
        format!("p{}", self.rng.below(self.swarm.policy_ids))
    }

    fn lease_ttl(&mut self) -> u32 {
        if self.invalid() {
            return 86_401;
        }
        match self.rng.below(10) {
            0 => 0,
            _ => self.rng.range(1, self.swarm.lease_ttl_s_max) as u32,
        }
    }

    fn find(&mut self) -> Op {
        let rng = &mut self.rng;
        let mut tools: Vec<String> = (0..rng.below(3)).map(|_| rng.pick(&TOOLS).to_string()).collect();
        if self.rng.chance(self.swarm.invalid_per_mille) {
            tools.push(String::new());
        }
        Op::Find {
            query: self.rng.pick(&QUERIES).to_string(),
            tools,
            limit: *self.rng.pick(&[0, 1, 3, 10, 2000]),
        }
    }

    /// A lease some agent believes it holds, with a wrong token or the wrong agent now and then.
    /// `forget`: the client drops it from its knowledge (a release).
    fn held_lease(&mut self, forget: bool) -> Option<(String, AgentRef, TokenRef)> {
        let holders: Vec<usize> = (0..self.agents.len())
            .filter(|&i| !self.agents[i].leases.is_empty())
            .collect();
        let &holder = pick(&mut self.rng, &holders)?;
        let i = self.rng.index(self.agents[holder].leases.len());
        let (key, granted) = if forget {
            self.agents[holder].leases.swap_remove(i)
        } else {
            self.agents[holder].leases[i].clone()
        };
        let mut agent = AgentRef::Registered(self.agents[holder].registered);
        let mut token = TokenRef::Granted {
            step: granted,
            offset: 0,
        };
        if self.wrong() {
            match self.rng.below(3) {
                0 => {
                    token = TokenRef::Granted {
                        step: granted,
                        offset: if self.rng.chance(500) { 1 } else { -1 },
                    }
                }
                1 => token = TokenRef::Literal(self.rng.below(4)),
                _ => agent = self.agent_ref(),
            }
        }
        Some((key, agent, token))
    }

    fn resign(&mut self) -> Op {
        let candidates: Vec<usize> = (0..self.agents.len())
            .filter(|&i| !self.agents[i].groups.is_empty())
            .collect();
        if candidates.is_empty() || self.rng.chance(200) {
            return Op::Resign {
                group: self.group(),
                agent: self.agent_ref(),
            };
        }
        let i = *self.rng.pick(&candidates);
        let g = self.rng.index(self.agents[i].groups.len());
        let group = self.agents[i].groups.swap_remove(g);
        Op::Resign {
            group,
            agent: AgentRef::Registered(self.agents[i].registered),
        }
    }

    fn set_policy(&mut self) -> Op {
        let id = self.policy_id();
        let rng = &mut self.rng;
        let mut policy = PolicyInput {
            id,
            subject: text(rng, &POLICY_ALPHABET, 1, 4),
            action: text(rng, &POLICY_ALPHABET, 1, 3),
            resource: text(rng, &POLICY_ALPHABET, 1, 4),
            effect: Some(if rng.chance(400) { Effect::Deny } else { Effect::Allow }),
        };
        if self.invalid() {
            match self.rng.below(4) {
                0 => policy.id = String::new(),
                1 => policy.subject = String::new(),
                2 => policy.effect = None,
                _ => policy.resource = "r".repeat(1025),
            }
        }
        Op::SetPolicy { policy }
    }

    fn watch(&mut self, exec: &Executor) -> Option<Op> {
        if self.open_subs(exec) >= self.swarm.subscribers {
            return None;
        }
        let rng = &mut self.rng;
        let mut topics: Vec<String> = (0..rng.below(3)).map(|_| rng.pick(&TOPICS).to_string()).collect();
        let sequence_next = exec.model().sequence_next();
        // A client whose stream was cut off resumes where it left off, with the same topics.
        let resumable: Vec<(u64, Vec<String>)> = self
            .subs
            .iter()
            .filter_map(|s| {
                let sub = exec.sub(s.opened)?;
                let topics = s.topics.clone()?;
                (sub.state == SubState::CutOff && sub.buffer.is_empty()).then_some((sub.last_delivered + 1, topics))
            })
            .collect();
        let from_sequence = match self.rng.below(10) {
            0..=1 if !resumable.is_empty() => {
                let (from, resumed) = self.rng.pick(&resumable).clone();
                topics = resumed;
                from
            }
            2 => sequence_next.saturating_sub(self.rng.range(1, 40)).max(1),
            3 => 1,
            4 => sequence_next + self.rng.below(3),
            _ => 0,
        };
        if self.invalid() {
            topics = (0..65).map(|_| "agent.".to_string()).collect();
        }
        Some(Op::Watch {
            topics,
            from_sequence,
            buffer: self.rng.range(1, u64::from(self.swarm.buffer_max)) as u32,
        })
    }

    fn open_subs(&self, exec: &Executor) -> usize {
        self.subs
            .iter()
            .filter(|s| exec.sub(s.opened).is_some_and(|sub| sub.state == SubState::Open))
            .count()
    }

    /// Learns from the reply a client saw; a lost reply teaches nothing, and a retry-safe command
    /// whose reply was lost is sent again next.
    pub fn learn(&mut self, step: &Step, outcome: Option<&Outcome>, exec: &Executor) {
        let now = step.at;
        if step.lost {
            if step.op.retry_safe() && !matches!(step.op, Op::Watch { .. } | Op::WatchElection { .. }) {
                self.retry = Some(step.op.clone());
            }
            if let Op::Register { .. } = step.op {
                // An orphan: registered, but its client never learned its id.
                self.past.push(step.index);
            }
            return;
        }
        let Some(outcome) = outcome else {
            return;
        };
        match (&step.op, outcome) {
            (Op::Register { ttl_seconds, .. }, Ok(Reply::Registered { .. })) => {
                let personality = match self.rng.weighted(&self.swarm.personalities) {
                    Some(0) | None => Personality::Punctual,
                    Some(1) => Personality::Late,
                    _ => Personality::Silent,
                };
                let ttl_ms = u64::from(if *ttl_seconds == 0 { 30 } else { *ttl_seconds }) * 1000;
                let next_heartbeat_at = self.next_heartbeat(personality, ttl_ms, now);
                self.agents.push(ClientAgent {
                    registered: step.index,
                    personality,
                    ttl_ms,
                    next_heartbeat_at,
                    leases: Vec::new(),
                    groups: Vec::new(),
                });
            }
            (Op::Heartbeat { agent }, result) => self.heartbeat_answered(agent, result.is_ok(), now),
            (Op::Acquire { key, agent, .. }, Ok(Reply::Lease { acquired: true, .. })) => {
                if let Some(a) = self.client(agent) {
                    a.leases.retain(|(k, _)| k != key);
                    a.leases.push((key.clone(), step.index));
                }
            }
            (Op::Renew { key, agent, .. }, result) => {
                if let Some(a) = self.client(agent) {
                    a.leases.retain(|(k, _)| k != key);
                    if result.is_ok() {
                        a.leases.push((key.clone(), step.index));
                    }
                }
            }
            (Op::Campaign { group, agent }, Ok(_)) => {
                if let Some(a) = self.client(agent)
                    && !a.groups.contains(group)
                {
                    a.groups.push(group.clone());
                }
            }
            (Op::Watch { topics, .. }, Ok(Reply::Watching { .. })) => {
                let reader = self.reader();
                self.subs.push(ClientSub {
                    opened: step.index,
                    topics: Some(topics.clone()),
                    reader,
                });
            }
            (Op::WatchElection { .. }, Ok(Reply::WatchingElection { .. })) => {
                let reader = self.reader();
                self.subs.push(ClientSub {
                    opened: step.index,
                    topics: None,
                    reader,
                });
            }
            _ => {}
        }
        self.forget_finished_subs(exec);
    }

    fn heartbeat_answered(&mut self, agent: &AgentRef, ok: bool, now: Millis) {
        let AgentRef::Registered(step) = agent else {
            return;
        };
        let Some(i) = self.agents.iter().position(|a| a.registered == *step) else {
            return;
        };
        if ok {
            let (personality, ttl_ms) = (self.agents[i].personality, self.agents[i].ttl_ms);
            self.agents[i].next_heartbeat_at = self.next_heartbeat(personality, ttl_ms, now);
        } else {
            // NOT_FOUND: it died (or was forgotten); its client gives it up.
            self.past.push(self.agents.swap_remove(i).registered);
            if self.past.len() > 2 * AGENTS_MAX as usize {
                self.past.remove(0);
            }
        }
    }

    fn next_heartbeat(&mut self, personality: Personality, ttl: u64, now: Millis) -> Millis {
        match personality {
            Personality::Punctual => now + ttl / 3 + self.rng.below(ttl / 6 + 1),
            // Between 0.9 and 2.2 ttl: UNREACHABLE and back, and now and then too late.
            Personality::Late => now + ttl * 9 / 10 + self.rng.below(ttl * 13 / 10 + 1),
            Personality::Silent => Millis::MAX,
        }
    }

    fn client(&mut self, agent: &AgentRef) -> Option<&mut ClientAgent> {
        let AgentRef::Registered(step) = agent else {
            return None;
        };
        self.agents.iter_mut().find(|a| a.registered == *step)
    }

    fn reader(&mut self) -> Reader {
        match self.rng.weighted(&self.swarm.readers) {
            Some(1) => Reader::Slow,
            Some(2) => Reader::Stalled,
            _ => Reader::Healthy,
        }
    }

    /// Drops subscriptions that are over and drained (keeping the cut-off ones a resume may use).
    fn forget_finished_subs(&mut self, exec: &Executor) {
        if self.subs.len() <= 4 * SUBSCRIBERS_MAX as usize {
            return;
        }
        self.subs.retain(|s| {
            exec.sub(s.opened)
                .is_some_and(|sub| sub.state == SubState::Open || !sub.buffer.is_empty())
        });
    }
}

/// A random item, or `None` from an empty slice.
fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> Option<&'a T> {
    (!items.is_empty()).then(|| rng.pick(items))
}

/// A short random text over `alphabet`, `min..=max` characters.
fn text(rng: &mut Rng, alphabet: &[char], min: u64, max: u64) -> String {
    (0..rng.range(min, max)).map(|_| *rng.pick(alphabet)).collect()
}
