//! The workload, swarm-style: each seed first draws its own shape (which op kinds run and how
//! often, population sizes, agent temperaments, fault rates, buffer sizes), then generates steps
//! one at a time from what the clients have seen so far. Only the generator is random; the
//! runner executes what a step says, so a trace replays without it.
//!
//! Crashes draw from a stream of their own: a seed that does not turn them on runs exactly the
//! workload it ran before they existed. Tasks draw their shape (their share of the steps, their
//! mix, the core's task bounds) from another, so a seed's population, bounds and faults are what
//! they were before tasks existed.

use agentkeeper::core::tasks::TaskStatus;
use agentkeeper::core::types::{AgentCard, Capability, Effect, Millis};
use agentkeeper::core::{CoreConfig, ErrorCode, Outcome, PolicyInput, Reply};

use crate::Fault;
use crate::rng::Rng;

mod keep_alive;
use crate::runner::Runner;
use crate::step::{
    AgentRef, ClaimRef, Io, Op, PageRef, Planted, RegisterVector, SimConfig, Step, SubRef, TaskRef, Tear, TokenRef,
    TornWrite,
};

/// Populations stay small so that O(state) checks after every step stay cheap.
pub const AGENTS_MAX: usize = 64;
pub const KEYS_MAX: usize = 32;
pub const POLICIES_MAX: usize = 64;
pub const GROUPS_MAX: usize = 8;
/// Where simulated time starts: 2023-11-14, far from 0 so no arithmetic sits near zero.
pub const START_MS: Millis = 1_700_000_000_000;

const WORDS: [&str; 8] = ["pdf", "sql", "parse", "search", "summarize", "code", "review", "image"];
const TOOLS: [&str; 5] = ["sql", "http", "fs", "git", "py"];
const TOPIC_PREFIXES: [&str; 9] = [
    "",
    "agent.",
    "lease.",
    "leader.changed",
    "agent.died",
    "lease.acquired",
    "lease.re",
    "task.",
    "nothing",
];

/// The op kinds a swarm weighs, in `Op::NAMES` order (`crash` and the task kinds keep weight
/// 0: crashes come from their own stream, task steps are chosen apart).
const KINDS: usize = Op::NAMES.len();
/// The crash stream's number: the workload's own stream is 0.
const CRASH_STREAM: u64 = 1;
/// The task shape's stream.
const TASK_STREAM: u64 = 2;
/// The disk's faults' stream (slow, failed and short writes, crashes between a write and the
/// replies): seeds without them run exactly the workload they ran before they existed.
const IO_STREAM: u64 = 3;
/// The card vectors' stream (`card_vector`): whether a step is an embedding worker's
/// SetCardVector, and what it carries.
const VECTOR_STREAM: u64 = 6;
/// Whether a Register carries its card's vector, and which: a stream of its own, so that the
/// SetCardVector steps of the vector stream stay as they were before Registers carried vectors.
const REGISTER_VECTOR_STREAM: u64 = 27;
/// The share of Registers that carry their card's vector, in seeds with card vectors (per mille).
const REGISTER_VECTOR_PER_MILLE: u32 = 400;

/// The op kinds of a task step, weighed per seed: `claim_lease` is an AcquireLease, RenewLease
/// or ReleaseLease on a task's id.
const TASK_KINDS: [&str; 9] = [
    "create_task",
    "claim_task",
    "cancel_claim",
    "complete_task",
    "fail_task",
    "get_task",
    "list_tasks",
    "return_task",
    "claim_lease",
];
const TASK_TYPES: [&str; 4] = ["resize", "ocr", "crawl", "embed"];
/// Task kinds every task seed sends.
const TASK_KINDS_ALWAYS: [&str; 4] = ["create_task", "claim_task", "complete_task", "fail_task"];
/// What the clients remember (tasks, claims, page tokens), newest kept.
const KNOWN_TASKS_MAX: usize = 64;
const HELD_CLAIMS_MAX: usize = 32;
const PAGES_MAX: usize = 16;

/// How a simulated agent heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Temperament {
    /// Well within its ttl, every time.
    Punctual,
    /// Sometimes after its ttl (UNREACHABLE, then recovered) or after 2 x ttl (dead).
    Late,
    /// Never again after registering.
    Silent,
}

/// One seed's shape of the workload.
#[derive(Clone, Debug)]
pub struct Swarm {
    weights: [u32; KINDS],
    population: usize,
    keys: usize,
    groups: usize,
    policy_ids: usize,
    temperaments: [u32; 3],
    ttl_seconds_max: u32,
    lease_ttl_seconds_max: u32,
    advance_ms_max: u64,
    faults: Vec<Fault>,
    lost_per_mille: u32,
    jump_per_mille: u32,
    burst_per_mille: u32,
    invalid_per_mille: u32,
    stalled_per_mille: u32,
    buffer_max: u32,
    /// Crashes per 100 000 steps (0: the fault is off), and the share of them that tear the
    /// record being written.
    crash_per_100k: u32,
    torn_per_mille: u32,
    /// The share of steps that are task steps, and their mix (in `TASK_KINDS` order).
    task_per_mille: u32,
    task_weights: [u32; TASK_KINDS.len()],
    task_ttl_seconds_max: u32,
    task_input_max: u64,
    claim_wait_ms_max: u64,
    /// The share of steps whose write is slow (per mille), failed writes and crashes right
    /// after a write per 100 000 steps (0: the fault is off).
    slow_per_mille: u32,
    failed_write_per_100k: u32,
    crash_after_write_per_100k: u32,
}

impl Swarm {
    /// The shape from the workload's stream, the crash fault from the crash stream, the tasks'
    /// share and mix from the task stream.
    fn draw(rng: &mut Rng, crash_rng: &mut Rng, task_rng: &mut Rng, io_rng: &mut Rng) -> Swarm {
        let mut weights = [0; KINDS];
        for (kind, weight) in weights.iter_mut().enumerate() {
            // Task steps are chosen apart (`task_per_mille`), from the task stream.
            // Keep-alive messages and card vectors draw from their own streams (keep_alive.rs,
            // card_vector()).
            if matches!(Op::NAMES[kind], "crash" | "set_card_vector" | "keep_alive")
                || TASK_KINDS.contains(&Op::NAMES[kind])
            {
                continue;
            }
            let always = matches!(Op::NAMES[kind], "register" | "heartbeat" | "tick");
            if always || rng.chance(750) {
                *weight = rng.range(1, 10) as u32;
            }
        }
        let mut faults = Vec::new();
        for fault in [Fault::LostReply, Fault::StalledSubscriber, Fault::ClockJump] {
            if rng.chance(700) {
                faults.push(fault);
            }
        }
        if crash_rng.chance(500) {
            faults.push(Fault::CrashRestart);
        }
        for fault in [Fault::SlowDisk, Fault::FailedWrite, Fault::CrashAfterWrite] {
            if io_rng.chance(500) {
                faults.push(fault);
            }
        }
        let has = |fault: Fault| faults.contains(&fault);
        Swarm {
            weights,
            population: rng.range(1, AGENTS_MAX as u64 - 8) as usize,
            keys: rng.range(1, KEYS_MAX as u64) as usize,
            groups: rng.range(1, GROUPS_MAX as u64) as usize,
            policy_ids: rng.range(1, POLICIES_MAX as u64) as usize,
            temperaments: [
                rng.range(0, 10) as u32 + 1,
                rng.range(0, 10) as u32,
                rng.range(0, 4) as u32,
            ],
            ttl_seconds_max: rng.range(1, 60) as u32,
            lease_ttl_seconds_max: rng.range(1, 90) as u32,
            advance_ms_max: rng.range(10, 3000),
            lost_per_mille: if has(Fault::LostReply) {
                rng.range(1, 100) as u32
            } else {
                0
            },
            jump_per_mille: if has(Fault::ClockJump) {
                rng.range(1, 5) as u32
            } else {
                0
            },
            stalled_per_mille: if has(Fault::StalledSubscriber) {
                rng.range(100, 800) as u32
            } else {
                0
            },
            burst_per_mille: rng.range(0, 600) as u32,
            invalid_per_mille: rng.range(0, 60) as u32,
            buffer_max: rng.range(1, 64) as u32,
            crash_per_100k: if has(Fault::CrashRestart) {
                crash_rng.range(2, 20) as u32
            } else {
                0
            },
            torn_per_mille: crash_rng.range(200, 700) as u32,
            // Most seeds spend about a tenth to a fifth of their steps on tasks; one in six is
            // task-heavy.
            task_per_mille: if task_rng.chance(170) {
                task_rng.range(400, 650) as u32
            } else {
                task_rng.range(80, 220) as u32
            },
            task_weights: {
                let mut weights = [0; TASK_KINDS.len()];
                for (kind, weight) in weights.iter_mut().enumerate() {
                    if TASK_KINDS_ALWAYS.contains(&TASK_KINDS[kind]) || task_rng.chance(800) {
                        // The driver returns a claim only when its reply is lost: rare.
                        let most = if TASK_KINDS[kind] == "return_task" { 2 } else { 10 };
                        *weight = task_rng.range(1, most) as u32;
                    }
                }
                weights
            },
            task_ttl_seconds_max: task_rng.range(2, 120) as u32,
            task_input_max: task_rng.range(0, 48),
            claim_wait_ms_max: task_rng.range(100, 60_000),
            slow_per_mille: if has(Fault::SlowDisk) {
                io_rng.range(20, 400) as u32
            } else {
                0
            },
            failed_write_per_100k: if has(Fault::FailedWrite) {
                io_rng.range(5, 60) as u32
            } else {
                0
            },
            crash_after_write_per_100k: if has(Fault::CrashAfterWrite) {
                io_rng.range(5, 60) as u32
            } else {
                0
            },
            faults,
        }
    }

    /// The faults this seed turns on.
    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    /// The share of steps (per mille) this seed spends on tasks.
    pub fn task_per_mille(&self) -> u32 {
        self.task_per_mille
    }
}

/// The core's bounds for one seed: small, so that limits are reached now and then (the task
/// bounds from the task stream, with a short retention, so finished tasks are forgotten).
fn core_config(rng: &mut Rng, task_rng: &mut Rng, seed: u64, planted_bug: agentkeeper::core::PlantedBug) -> CoreConfig {
    CoreConfig {
        tasks_max: task_rng.range(4, 96) as usize,
        task_bytes_max: task_rng.range(32, 1024) as usize,
        waiters_max: task_rng.range(1, 12) as usize,
        task_retention_ms: task_rng.range(1, 300) * 1000,
        seed,
        dead_retention_ms: rng.range(1, 600) * 1000,
        // At least what one step can emit (64 agents dying with every lease and group), so the
        // simulator sees every event in the ring; small enough that resumes fall off its end.
        event_ring_max: rng.range(1024, 2048) as usize,
        watchers_max: rng.range(2, 24) as usize,
        agents_max: rng.range(8, AGENTS_MAX as u64 + 16) as usize,
        leases_max: rng.range(2, KEYS_MAX as u64) as usize,
        policies_max: rng.range(4, POLICIES_MAX as u64) as usize,
        groups_max: rng.range(1, GROUPS_MAX as u64) as usize,
        planted_bug,
    }
}

/// A simulated agent as its own client knows it.
#[derive(Clone, Debug)]
struct SimAgent {
    registered_at_step: usize,
    temperament: Temperament,
    ttl_ms: u64,
    /// When it means to heartbeat next; `None`: never (silent, or it knows it is gone).
    heartbeat_at: Option<Millis>,
    gone: bool,
    /// Its card's tools: what tasks for it require.
    tools: Vec<String>,
    /// The digest of its card's text: what its card vectors are named by.
    digest: [u8; 32],
}

/// A lease a client believes it holds.
#[derive(Clone, Debug)]
struct HeldLease {
    key: TaskRef,
    agent_step: usize,
    grant_step: usize,
}

/// A task a client believes its agent claimed: the ClaimTask step names the task and the claim
/// lease's token.
#[derive(Clone, Copy, Debug)]
struct HeldClaim {
    claim_step: usize,
    agent_step: usize,
}

/// A claim waiting in line: its step, and its agent's Register step (`None`: its caller is gone,
/// as after a lost reply; only the driver may still cancel it).
#[derive(Clone, Copy, Debug)]
struct WaitingClaim {
    claim_step: usize,
    agent: Option<usize>,
}

#[derive(Clone, Debug)]
struct OpenStream {
    sub: SubRef,
    stalled: bool,
    buffer: u32,
}

/// How many records the store image takes a snapshot after: often (recoveries mostly start
/// from a snapshot and replay a short log), now and then, or rarely (long logs, often none yet).
/// Not more often than every 128 records: encoding a snapshot costs about a hundred steps.
fn snapshot_every(crash_rng: &mut Rng) -> u64 {
    match crash_rng.below(3) {
        0 => crash_rng.range(128, 1024),
        1 => crash_rng.range(1024, 8192),
        _ => crash_rng.range(8192, 65_536),
    }
}

/// Generates one seed's steps from the replies the clients have seen.
pub struct Generator {
    rng: Rng,
    /// Whether and how each step crashes the daemon: a stream apart from `rng`.
    crash_rng: Rng,
    /// Whether a step is a task step: a stream apart from `rng`.
    task_rng: Rng,
    /// What the disk does with each step's write: a stream apart from `rng`.
    io_rng: Rng,
    /// Whether a step is a SetCardVector, and its vector: a stream apart from `rng`.
    vector_rng: Rng,
    /// The share of steps that are SetCardVectors (per mille; 0 for some seeds).
    vector_per_mille: u32,
    /// Whether a Register carries its card's vector, and its vector: a stream apart.
    register_vector_rng: Rng,
    /// Whether a step is a keep-alive message (at `keepalive_per_mille`): a stream apart.
    keepalive_rng: Rng,
    keepalive_per_mille: u32,
    swarm: Swarm,
    config: SimConfig,
    now: Millis,
    index: usize,
    agents: Vec<SimAgent>,
    leases: Vec<HeldLease>,
    streams: Vec<OpenStream>,
    /// CreateTask steps whose reply named a task.
    tasks: Vec<usize>,
    claims: Vec<HeldClaim>,
    waiting: Vec<WaitingClaim>,
    /// ListTasks steps that got a next page token, with the status they listed.
    pages: Vec<(usize, Option<TaskStatus>)>,
}

impl Generator {
    pub fn new(seed: u64, planted: Planted) -> Generator {
        let mut rng = Rng::new(seed);
        let mut crash_rng = Rng::stream(seed, CRASH_STREAM);
        let mut task_rng = Rng::stream(seed, TASK_STREAM);
        let mut io_rng = Rng::stream(seed, IO_STREAM);
        let swarm = Swarm::draw(&mut rng, &mut crash_rng, &mut task_rng, &mut io_rng);
        let core = core_config(&mut rng, &mut task_rng, seed, planted.core_bug());
        let mut vector_rng = Rng::stream(seed, VECTOR_STREAM);
        let vector_per_mille = if vector_rng.chance(800) {
            vector_rng.range(10, 80) as u32
        } else {
            0
        };
        let mut keepalive_rng = Rng::stream(seed, keep_alive::STREAM);
        let keepalive_per_mille = keep_alive::share(&mut keepalive_rng);
        Generator {
            rng,
            task_rng,
            io_rng,
            vector_rng,
            vector_per_mille,
            register_vector_rng: Rng::stream(seed, REGISTER_VECTOR_STREAM),
            keepalive_rng,
            keepalive_per_mille,
            config: SimConfig {
                core,
                start_ms: START_MS,
                snapshot_every: snapshot_every(&mut crash_rng),
                planted,
            },
            crash_rng,
            swarm,
            now: START_MS,
            index: 0,
            agents: Vec::new(),
            leases: Vec::new(),
            streams: Vec::new(),
            tasks: Vec::new(),
            claims: Vec::new(),
            waiting: Vec::new(),
            pages: Vec::new(),
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    pub fn swarm(&self) -> &Swarm {
        &self.swarm
    }

    /// The next step, given what the runner has done so far.
    pub fn next(&mut self, runner: &Runner) -> Step {
        self.advance_time();
        let index = self.index;
        self.index += 1;
        if let Some(op) = self.crash(runner) {
            return Step {
                index,
                at: self.now,
                op,
                lost: false,
                io: Io::Durable,
            };
        }
        let op = if self.keep_alive_now() {
            self.keep_alive()
        } else {
            (self.card_vector().or_else(|| self.due_heartbeat())).unwrap_or_else(|| {
                if self.task_rng.chance(self.swarm.task_per_mille) {
                    self.task_op(runner, false)
                } else {
                    self.random_op(runner)
                }
            })
        };
        let lost = op.retry_safe_or_register() && self.rng.chance(self.swarm.lost_per_mille);
        let io = self.io();
        Step {
            index,
            at: self.now,
            op,
            lost,
            io,
        }
    }

    /// An embedding worker's card vector, if the vector stream strikes now: mostly for an agent
    /// still around and its card's digest, now and then a stale digest, a zero vector, or an
    /// agent that is gone (`vectors::MODELS`' models, one at two dimensions).
    fn card_vector(&mut self) -> Option<Op> {
        if self.agents.is_empty() || !self.vector_rng.chance(self.vector_per_mille) {
            return None;
        }
        let rng = &mut self.vector_rng;
        // Mostly an agent still around (its vector applies), now and then one that is gone.
        let live: Vec<usize> = (0..self.agents.len()).filter(|&i| !self.agents[i].gone).collect();
        let index = if !live.is_empty() && rng.chance(900) {
            live[rng.index(live.len())]
        } else {
            rng.index(self.agents.len())
        };
        let agent = &self.agents[index];
        let mut digest = agent.digest;
        if rng.chance(50) {
            digest[0] ^= 1;
        }
        Some(Op::SetCardVector {
            agent: AgentRef::Registered(agent.registered_at_step),
            digest,
            model: rng.below(crate::vectors::MODELS.len() as u64) as u8,
            other_dims: rng.chance(100),
            seed: rng.u64(),
            zero: rng.chance(20),
        })
    }

    /// What the disk does with this step's write.
    fn io(&mut self) -> Io {
        let swarm = &self.swarm;
        if swarm.slow_per_mille == 0 && swarm.failed_write_per_100k == 0 && swarm.crash_after_write_per_100k == 0 {
            return Io::Durable;
        }
        if self.io_rng.below(100_000) < u64::from(swarm.crash_after_write_per_100k) {
            return Io::CrashAfterWrite;
        }
        if self.io_rng.below(100_000) < u64::from(swarm.failed_write_per_100k) {
            return match self.io_rng.below(2) {
                0 => Io::FsyncFails,
                _ => Io::ShortWrite {
                    per_mille: self.io_rng.below(1000) as u16,
                },
            };
        }
        if self.io_rng.chance(swarm.slow_per_mille) {
            return Io::Slow;
        }
        Io::Durable
    }

    fn advance_time(&mut self) {
        if self.rng.chance(self.swarm.jump_per_mille) {
            self.now += if self.rng.chance(800) {
                self.rng.range(60, 3600) * 1000
            } else {
                self.rng.range(1, 6) * 3_600_000
            };
        } else if !self.rng.chance(self.swarm.burst_per_mille) {
            self.now += self.rng.range(0, self.swarm.advance_ms_max);
        }
    }

    /// A crash, if the crash stream strikes now: torn or not, and if torn, while writing which
    /// command's record (one that is logged) and how.
    fn crash(&mut self, runner: &Runner) -> Option<Op> {
        // A daemon whose write failed serves reads only: its operator restarts it soon.
        if runner.read_only() && self.io_rng.chance(250) {
            return Some(Op::Crash { torn: None });
        }
        let rate = u64::from(self.swarm.crash_per_100k);
        if rate == 0 || self.crash_rng.below(100_000) >= rate {
            return None;
        }
        if !self.crash_rng.chance(self.swarm.torn_per_mille) {
            return Some(Op::Crash { torn: None });
        }
        let per_mille = self.crash_rng.below(1000) as u16;
        let tear = match self.crash_rng.below(3) {
            0 => Tear::Cut { per_mille },
            1 => Tear::Zeros { per_mille },
            _ => Tear::Garbage { per_mille },
        };
        let op = self.due_heartbeat().unwrap_or_else(|| {
            if self.task_rng.chance(self.swarm.task_per_mille) {
                self.task_op(runner, true)
            } else {
                self.random_op_among(runner, logged_kind)
            }
        });
        Some(Op::Crash {
            torn: Some(Box::new(TornWrite { op, tear })),
        })
    }

    /// A scheduled heartbeat whose time has come, most of the time (the rest: a little late).
    fn due_heartbeat(&mut self) -> Option<Op> {
        let now = self.now;
        let due = self
            .agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.heartbeat_at.is_some_and(|at| at <= now))
            .min_by_key(|(_, a)| a.heartbeat_at)?
            .0;
        if !self.rng.chance(800) {
            return None;
        }
        let agent = &mut self.agents[due];
        agent.heartbeat_at = None;
        Some(Op::Heartbeat {
            agent: AgentRef::Registered(agent.registered_at_step),
        })
    }

    fn random_op(&mut self, runner: &Runner) -> Op {
        self.random_op_among(runner, |_| true)
    }

    /// A random op of the kinds `allowed` lets through (by name); a tick if none has weight,
    /// a heartbeat where only logged kinds are allowed.
    fn random_op_among(&mut self, runner: &Runner, allowed: fn(&str) -> bool) -> Op {
        let mut weights = self.swarm.weights;
        for (kind, weight) in weights.iter_mut().enumerate() {
            if !allowed(Op::NAMES[kind]) {
                *weight = 0;
            }
        }
        let live = self.agents.iter().filter(|a| !a.gone).count();
        let register = &mut weights[kind("register")];
        if live >= self.swarm.population {
            *register = u32::from(*register > 0 && self.rng.chance(50));
        } else if live == 0 {
            *register = (*register).max(1) * 10;
        }
        let Some(chosen) = self.rng.weighted(&weights) else {
            if allowed("tick") {
                return Op::Tick;
            }
            return Op::Heartbeat {
                agent: self.any_agent(),
            };
        };
        let invalid = self.rng.chance(self.swarm.invalid_per_mille);
        match Op::NAMES[chosen] {
            "tick" => Op::Tick,
            "register" => self.register(invalid),
            "heartbeat" => Op::Heartbeat {
                agent: self.any_agent(),
            },
            "deregister" => Op::Deregister {
                agent: self.any_agent(),
            },
            "get_agent" => Op::GetAgent {
                agent: self.any_agent(),
            },
            "find" => self.find(invalid),
            "watch" => self.watch(runner, invalid),
            "unwatch" => self.unwatch(),
            "acquire" => self.acquire(invalid),
            "renew" => self.renew(invalid),
            "release" => self.release(),
            "campaign" => Op::Campaign {
                group: self.group(invalid),
                agent: self.any_agent(),
            },
            "resign" => Op::Resign {
                group: self.group(invalid),
                agent: self.any_agent(),
            },
            "watch_election" => Op::WatchElection {
                group: self.group(invalid),
                buffer: self.buffer(),
            },
            "set_policy" => self.set_policy(invalid),
            "delete_policy" => Op::DeletePolicy { id: self.policy_id() },
            "list_policies" => Op::ListPolicies {
                prefix: if invalid {
                    "a".repeat(1025)
                } else {
                    self.text(b"ab:*", 0, 2)
                },
            },
            "list_leases" => Op::ListLeases {
                prefix: if invalid {
                    "k".repeat(1025)
                } else {
                    self.text(b"k12", 0, 2)
                },
                page_size: self.rng.range(0, 4) as u32,
                page_token: if self.rng.chance(300) {
                    self.key(false)
                } else {
                    String::new()
                },
            },
            "list_elections" => Op::ListElections,
            "overview" => Op::Overview {
                agents_max: self.rng.range(0, 8) as u32,
                leases_max: self.rng.range(0, 8) as u32,
            },
            "check_policy" => self.check_policy(invalid),
            "consume" => self.consume(),
            "crash" => unreachable!("crashes come from the crash stream, never from a weight"),
            "set_card_vector" => unreachable!("card vectors come from the vector stream, never from a weight"),
            "keep_alive" => unreachable!("keep-alive messages come from their own stream, never from a weight"),
            other => unreachable!("no generator for {other}"),
        }
    }

    fn text(&mut self, alphabet: &[u8], min: u64, max: u64) -> String {
        let len = self.rng.range(min, max);
        (0..len).map(|_| char::from(*self.rng.pick(alphabet))).collect()
    }

    fn words(&mut self, count_max: u64) -> String {
        let count = self.rng.range(1, count_max);
        let words: Vec<&str> = (0..count).map(|_| *self.rng.pick(&WORDS)).collect();
        words.join(" ")
    }

    fn tools(&mut self, count_max: u64) -> Vec<String> {
        let count = self.rng.range(0, count_max);
        let mut tools: Vec<String> = Vec::new();
        for _ in 0..count {
            let tool = self.rng.pick(&TOOLS).to_string();
            if !tools.contains(&tool) {
                tools.push(tool);
            }
        }
        tools
    }

    fn register(&mut self, invalid: bool) -> Op {
        let mut card = AgentCard {
            name: format!("agent-{}", self.words(2)),
            description: self.words(6),
            version: if self.rng.chance(500) {
                "1.0".into()
            } else {
                String::new()
            },
            capabilities: (0..self.rng.range(0, 2))
                .map(|_| Capability {
                    name: self.words(1),
                    description: self.words(3),
                })
                .collect(),
            tools: self.tools(3),
            metadata: if self.rng.chance(200) {
                vec![("team".into(), self.words(1))]
            } else {
                Vec::new()
            },
            a2a_card: String::new(),
        };
        let mut ttl_seconds = if self.rng.chance(50) {
            0
        } else {
            self.rng.range(1, u64::from(self.swarm.ttl_seconds_max)) as u32
        };
        if invalid {
            match self.rng.below(6) {
                0 => card.name = String::new(),
                1 => card.name = "bad\u{7}name".into(),
                2 => card.name = "n".repeat(257),
                3 => card.tools.push(String::new()),
                4 => card.description = "d".repeat(8193),
                _ => ttl_seconds = 86_401,
            }
        }
        let vector = self.register_vector();
        Op::Register {
            card,
            ttl_seconds,
            vector,
        }
    }

    /// The vector a Register carries, if the vector stream says so (seeds with card vectors
    /// only): as an embedding worker's cache would give it, now and then stale (the core leaves
    /// it out and registers the card) or a zero vector (refused the same way).
    fn register_vector(&mut self) -> Option<RegisterVector> {
        let rng = &mut self.register_vector_rng;
        if self.vector_per_mille == 0 || !rng.chance(REGISTER_VECTOR_PER_MILLE) {
            return None;
        }
        Some(RegisterVector {
            model: rng.below(crate::vectors::MODELS.len() as u64) as u8,
            other_dims: rng.chance(100),
            seed: rng.u64(),
            zero: rng.chance(20),
            stale: rng.chance(50),
        })
    }

    /// A known agent (gone ones included), or now and then an id the core never issued.
    fn any_agent(&mut self) -> AgentRef {
        if self.agents.is_empty() || self.rng.chance(40) {
            let literal = match self.rng.below(3) {
                0 => "nope".to_string(),
                1 => "0".repeat(32),
                _ => "F".repeat(32),
            };
            return AgentRef::Literal(literal);
        }
        // Mostly agents that are still around: the interesting conflicts are among them.
        let live: Vec<usize> = (0..self.agents.len()).filter(|&i| !self.agents[i].gone).collect();
        let index = if !live.is_empty() && self.rng.chance(850) {
            *self.rng.pick(&live)
        } else {
            self.rng.index(self.agents.len())
        };
        AgentRef::Registered(self.agents[index].registered_at_step)
    }

    fn find(&mut self, invalid: bool) -> Op {
        let query = if self.rng.chance(400) {
            String::new()
        } else {
            self.words(3)
        };
        let mut tools = self.tools(2);
        if invalid {
            tools.push(String::new());
        }
        let limit = match self.rng.below(10) {
            0 => 0,
            1 => 2000,
            _ => self.rng.range(1, 12) as u32,
        };
        Op::Find { query, tools, limit }
    }

    fn buffer(&mut self) -> u32 {
        self.rng.range(1, u64::from(self.swarm.buffer_max)) as u32
    }

    fn watch(&mut self, runner: &Runner, invalid: bool) -> Op {
        let count = self.rng.range(0, 2);
        let mut topics: Vec<String> = (0..count).map(|_| self.rng.pick(&TOPIC_PREFIXES).to_string()).collect();
        if invalid {
            topics = vec!["x".into(); 65];
        }
        let next = runner.core().stats().sequence_next;
        let ring = runner.core().config().event_ring_max as u64;
        let from_sequence = match self.rng.below(4) {
            0 | 1 => 0,
            2 => next.saturating_sub(self.rng.range(0, ring + ring / 2)).max(1),
            _ => next + self.rng.range(0, 3),
        };
        Op::Watch {
            topics,
            from_sequence,
            buffer: self.buffer(),
        }
    }

    fn unwatch(&mut self) -> Op {
        if self.streams.is_empty() {
            return Op::Unwatch {
                sub: SubRef(self.index),
            };
        }
        let at = self.rng.index(self.streams.len());
        Op::Unwatch {
            sub: self.streams[at].sub,
        }
    }

    fn consume(&mut self) -> Op {
        let reading: Vec<usize> = (0..self.streams.len()).filter(|&i| !self.streams[i].stalled).collect();
        if reading.is_empty() {
            return Op::Tick;
        }
        let stream = &self.streams[*self.rng.pick(&reading)];
        let (sub, buffer) = (stream.sub, stream.buffer);
        Op::Consume {
            sub,
            count: self.rng.range(1, u64::from(buffer) * 2) as u32,
        }
    }

    fn key(&mut self, invalid: bool) -> String {
        if invalid {
            return if self.rng.chance(500) {
                String::new()
            } else {
                "k".repeat(1025)
            };
        }
        format!("k{}", self.rng.index(self.swarm.keys))
    }

    fn lease_ttl(&mut self, invalid: bool) -> u32 {
        if invalid {
            return 86_401;
        }
        if self.rng.chance(50) {
            return 0;
        }
        self.rng.range(1, u64::from(self.swarm.lease_ttl_seconds_max)) as u32
    }

    fn acquire(&mut self, invalid: bool) -> Op {
        let bad_ttl = invalid && self.rng.chance(500);
        let ttl_seconds = self.lease_ttl(bad_ttl);
        Op::Acquire {
            key: TaskRef::Literal(self.key(invalid && ttl_seconds != 86_401)),
            agent: self.any_agent(),
            ttl_seconds,
        }
    }

    /// A lease the clients believe held, with the right token mostly, or a guess.
    fn held_or_guess(&mut self) -> (TaskRef, AgentRef, TokenRef) {
        if self.leases.is_empty() || self.rng.chance(100) {
            let token = TokenRef::Literal(self.rng.range(0, 40));
            return (TaskRef::Literal(self.key(false)), self.any_agent(), token);
        }
        let lease = self.leases[self.rng.index(self.leases.len())].clone();
        let offset = match self.rng.below(20) {
            0 => -1,
            1 => 1,
            _ => 0,
        };
        let agent = if self.rng.chance(50) {
            self.any_agent()
        } else {
            AgentRef::Registered(lease.agent_step)
        };
        (
            lease.key,
            agent,
            TokenRef::Granted {
                step: lease.grant_step,
                offset,
            },
        )
    }

    fn renew(&mut self, invalid: bool) -> Op {
        let (key, agent, token) = self.held_or_guess();
        Op::Renew {
            key,
            agent,
            token,
            ttl_seconds: self.lease_ttl(invalid),
        }
    }

    fn release(&mut self) -> Op {
        let (key, agent, token) = self.held_or_guess();
        Op::Release { key, agent, token }
    }

    fn group(&mut self, invalid: bool) -> String {
        if invalid {
            return if self.rng.chance(500) {
                String::new()
            } else {
                "g".repeat(257)
            };
        }
        format!("g{}", self.rng.index(self.swarm.groups))
    }

    fn policy_id(&mut self) -> String {
        format!("p{}", self.rng.index(self.swarm.policy_ids))
    }

    fn set_policy(&mut self, invalid: bool) -> Op {
        let mut policy = PolicyInput {
            id: self.policy_id(),
            subject: self.text(b"ab:*", 1, 4),
            action: self.text(b"ab:*", 1, 4),
            resource: self.text(b"ab:*", 1, 4),
            effect: Some(if self.rng.chance(300) {
                Effect::Deny
            } else {
                Effect::Allow
            }),
        };
        if invalid {
            match self.rng.below(3) {
                0 => policy.id = String::new(),
                1 => policy.subject = String::new(),
                _ => policy.effect = None,
            }
        }
        Op::SetPolicy { policy }
    }

    fn check_policy(&mut self, invalid: bool) -> Op {
        let subject = if invalid {
            "s".repeat(1025)
        } else {
            self.text(b"ab:", 0, 4)
        };
        Op::CheckPolicy {
            subject,
            action: self.text(b"ab:", 0, 4),
            resource: self.text(b"ab:*", 0, 4),
        }
    }

    /// A task step: create, claim (now or waiting), cancel a wait, complete or fail a claim (by
    /// its claimer mostly, by a wrong agent now and then), read, list (following page tokens),
    /// return a claim (stale or with a wrong token now and then), or a lease call on a task's
    /// id. `logged_only`: only kinds whose command is logged (what a torn crash can catch).
    fn task_op(&mut self, runner: &Runner, logged_only: bool) -> Op {
        let mut weights = self.swarm.task_weights;
        // Producers slow down while a backlog waits, so the queue drains now and then and claims
        // wait in line for new tasks.
        if runner.core().stats().tasks_pending >= 4 {
            weights[task_kind("create_task")] = weights[task_kind("create_task")].div_ceil(8);
        }
        // Workers that hold claims get on with them before claiming more; without claims they
        // rarely complete, fail or touch a claim lease; a cancel needs a waiting claim, mostly.
        if self.claims.len() >= 3 {
            weights[task_kind("claim_task")] = weights[task_kind("claim_task")].div_ceil(4);
        }
        if self.claims.is_empty() {
            for kind in ["complete_task", "fail_task", "return_task", "claim_lease"] {
                weights[task_kind(kind)] = weights[task_kind(kind)].div_ceil(4);
            }
        }
        if self.waiting.is_empty() && !self.rng.chance(100) {
            weights[task_kind("cancel_claim")] = 0;
        }
        if logged_only {
            for (kind, weight) in weights.iter_mut().enumerate() {
                if matches!(TASK_KINDS[kind], "get_task" | "list_tasks") {
                    *weight = 0;
                }
            }
        }
        let Some(chosen) = self.rng.weighted(&weights) else {
            return self.create_task(false);
        };
        let invalid = self.rng.chance(self.swarm.invalid_per_mille);
        match TASK_KINDS[chosen] {
            "create_task" => self.create_task(invalid),
            "claim_task" => self.claim_task(),
            "cancel_claim" => {
                let claim = if self.waiting.is_empty() || self.rng.chance(50) {
                    // A claim that never waited: a no-op.
                    ClaimRef(self.index)
                } else {
                    ClaimRef(self.waiting[self.rng.index(self.waiting.len())].claim_step)
                };
                Op::CancelClaim { claim }
            }
            "complete_task" => {
                let (task, agent) = self.claimed_task();
                let output = if invalid && self.rng.chance(125) {
                    "o".repeat(4 * 1024 * 1024 + 1)
                } else {
                    self.text(b"done ok", 0, 12)
                };
                Op::CompleteTask { task, agent, output }
            }
            "fail_task" => {
                let (task, agent) = self.claimed_task();
                let reason = if invalid { "r".repeat(4097) } else { self.words(2) };
                Op::FailTask { task, agent, reason }
            }
            "get_task" => Op::GetTask { task: self.any_task() },
            "list_tasks" => self.list_tasks(invalid),
            "return_task" => self.return_task(),
            "claim_lease" => self.claim_lease(invalid),
            other => unreachable!("no generator for {other}"),
        }
    }

    fn create_task(&mut self, invalid: bool) -> Op {
        let mut kind = self.rng.pick(&TASK_TYPES).to_string();
        let mut input = self.text(b"abxyz 019", 0, self.swarm.task_input_max);
        let mut tools = self.task_tools();
        let mut ttl_seconds = if self.rng.chance(50) {
            0
        } else {
            self.rng.range(1, u64::from(self.swarm.task_ttl_seconds_max)) as u32
        };
        if invalid {
            match self.rng.below(8) {
                0 | 1 => kind = String::new(),
                2 | 3 => kind = "t".repeat(257),
                4 | 5 => tools.push(String::new()),
                6 => ttl_seconds = 86_401,
                _ => input = "i".repeat(4 * 1024 * 1024 + 1),
            }
        }
        Op::CreateTask {
            kind,
            input,
            tools,
            max_retries: self.rng.range(0, 3) as u32,
            ttl_seconds,
        }
    }

    /// What a new task requires: mostly some of a live agent's tools (so somebody can take it),
    /// now and then nothing, or tools drawn blind (which nobody may have).
    fn task_tools(&mut self) -> Vec<String> {
        let live: Vec<usize> = (0..self.agents.len()).filter(|&i| !self.agents[i].gone).collect();
        match self.rng.below(20) {
            0..6 => Vec::new(),
            6..8 => self.tools(3),
            _ if live.is_empty() => self.tools(3),
            _ => {
                let agent = *self.rng.pick(&live);
                let offered = self.agents[agent].tools.clone();
                offered.into_iter().filter(|_| self.rng.chance(600)).collect()
            }
        }
    }

    fn claim_task(&mut self) -> Op {
        let wait_ms = match self.rng.below(100) {
            0..50 => 0,
            // Now and then a long poll that outlives its agent (and the agent's retention).
            50..52 => self.rng.range(600_000, 1_800_000),
            _ => self.rng.range(1, self.swarm.claim_wait_ms_max),
        };
        Op::ClaimTask {
            agent: self.any_agent(),
            wait_ms,
        }
    }

    /// A task the clients know of (created or claimed), or now and then an id no task has.
    fn any_task(&mut self) -> TaskRef {
        let draw = self.rng.below(100);
        if draw < 5 || (self.tasks.is_empty() && self.claims.is_empty()) {
            return TaskRef::Literal(match self.rng.below(3) {
                0 => "nope".to_string(),
                1 => "0".repeat(32),
                _ => "F".repeat(32),
            });
        }
        if (draw < 30 && !self.claims.is_empty()) || self.tasks.is_empty() {
            return TaskRef::Step(self.claims[self.rng.index(self.claims.len())].claim_step);
        }
        TaskRef::Step(self.tasks[self.rng.index(self.tasks.len())])
    }

    /// A claim the clients hold with its claimer, mostly; else some task and some agent.
    fn claimed_task(&mut self) -> (TaskRef, AgentRef) {
        if self.claims.is_empty() || self.rng.chance(150) {
            return (self.any_task(), self.any_agent());
        }
        // The newest claim mostly: a worker finishes what it just took.
        let claim = if self.rng.chance(600) {
            self.claims[self.claims.len() - 1]
        } else {
            self.claims[self.rng.index(self.claims.len())]
        };
        let agent = if self.rng.chance(80) {
            self.any_agent()
        } else {
            AgentRef::Registered(claim.agent_step)
        };
        (TaskRef::Step(claim.claim_step), agent)
    }

    fn list_tasks(&mut self, invalid: bool) -> Op {
        const STATUSES: [Option<TaskStatus>; 6] = [
            None,
            Some(TaskStatus::Pending),
            Some(TaskStatus::Claimed),
            Some(TaskStatus::Completed),
            Some(TaskStatus::Failed),
            Some(TaskStatus::Dead),
        ];
        let mut status = if self.rng.chance(400) {
            None
        } else {
            *self.rng.pick(&STATUSES)
        };
        let page_size = if self.rng.chance(200) {
            0
        } else {
            self.rng.range(1, 4) as u32
        };
        let page = if invalid {
            PageRef::Literal("nope".into())
        } else if !self.pages.is_empty() && self.rng.chance(500) {
            // The next page of an earlier listing, with its filter mostly.
            let (step, listed) = self.pages[self.rng.index(self.pages.len())];
            if self.rng.chance(900) {
                status = listed;
            }
            PageRef::Step(step)
        } else {
            PageRef::Literal(String::new())
        };
        Op::ListTasks {
            status,
            page_size,
            page,
        }
    }

    /// A claim given back, as the driver gives back a claim whose reply it cannot deliver: one
    /// the clients hold (its token, now and then a wrong one), or a stale guess.
    fn return_task(&mut self) -> Op {
        if self.claims.is_empty() || self.rng.chance(500) {
            return Op::ReturnTask {
                task: self.any_task(),
                token: TokenRef::Literal(self.rng.range(0, 40)),
            };
        }
        let claim = self.claims[self.rng.index(self.claims.len())];
        let offset = match self.rng.below(4) {
            0 => -1,
            1 => 1,
            _ => 0,
        };
        Op::ReturnTask {
            task: TaskRef::Step(claim.claim_step),
            token: TokenRef::Granted {
                step: claim.claim_step,
                offset,
            },
        }
    }

    /// The claim lease through LeaseService: its holder renews it mostly (keeping the claim),
    /// releases it (failing the task) or acquires it again (its own token back); another agent
    /// tries to take it; or somebody tries a lease on an unclaimed task's id.
    fn claim_lease(&mut self, invalid: bool) -> Op {
        if self.claims.is_empty() || self.rng.chance(100) {
            return Op::Acquire {
                key: self.any_task(),
                agent: self.any_agent(),
                ttl_seconds: self.lease_ttl(false),
            };
        }
        let claim = self.claims[self.rng.index(self.claims.len())];
        let key = TaskRef::Step(claim.claim_step);
        let holder = AgentRef::Registered(claim.agent_step);
        let token = TokenRef::Granted {
            step: claim.claim_step,
            offset: 0,
        };
        match self.rng.below(20) {
            0..13 => Op::Renew {
                key,
                agent: holder,
                token,
                ttl_seconds: self.lease_ttl(invalid),
            },
            13..16 => Op::Release {
                key,
                agent: holder,
                token,
            },
            16..18 => Op::Acquire {
                key,
                agent: holder,
                ttl_seconds: self.lease_ttl(false),
            },
            _ => Op::Acquire {
                key,
                agent: self.any_agent(),
                ttl_seconds: self.lease_ttl(false),
            },
        }
    }

    /// Follows the claims after a step: answers handed to waiting claims (a claimed task joins
    /// the clients' claims), a lost claim the core still holds in line (its caller is gone; the
    /// driver may still cancel it), and waits that ended (answered, cancelled, or dropped by a
    /// restart).
    pub fn follow_claims(&mut self, step: &Step, runner: &Runner) {
        for (claim_step, answer) in runner.claim_answers() {
            let Some(at) = self.waiting.iter().position(|w| w.claim_step == *claim_step) else {
                continue;
            };
            let waited = self.waiting.remove(at);
            if let (Ok(Reply::Claimed { .. }), Some(agent_step)) = (answer, waited.agent) {
                self.hold_claim(*claim_step, agent_step);
            }
        }
        if let Op::ClaimTask { .. } = step.op
            && step.lost
            && runner.claim_waiting(ClaimRef(step.index))
        {
            self.waiting.push(WaitingClaim {
                claim_step: step.index,
                agent: None,
            });
        }
        self.waiting.retain(|w| runner.claim_waiting(ClaimRef(w.claim_step)));
    }

    fn hold_claim(&mut self, claim_step: usize, agent_step: usize) {
        self.claims.push(HeldClaim { claim_step, agent_step });
        if self.claims.len() > HELD_CLAIMS_MAX {
            self.claims.remove(0);
        }
    }

    fn forget_claim(&mut self, task: &TaskRef) {
        if let TaskRef::Step(step) = task {
            self.claims.retain(|c| c.claim_step != *step);
        }
    }

    /// Learns from the reply the client saw (if it saw one).
    pub fn observe(&mut self, step: &Step, reply: Option<&Outcome>) {
        let now = self.now;
        match (&step.op, reply) {
            (Op::Register { ttl_seconds, card, .. }, Some(Ok(Reply::Registered { .. }))) => {
                let temperament = match self.rng.weighted(&self.swarm.temperaments) {
                    Some(0) | None => Temperament::Punctual,
                    Some(1) => Temperament::Late,
                    Some(_) => Temperament::Silent,
                };
                let ttl_ms = u64::from(if *ttl_seconds == 0 { 30 } else { *ttl_seconds }) * 1000;
                let mut agent = SimAgent {
                    registered_at_step: step.index,
                    temperament,
                    ttl_ms,
                    heartbeat_at: None,
                    gone: false,
                    tools: card.tools.clone(),
                    digest: agentkeeper::core::search::card_text::card_digest(card).0,
                };
                self.schedule(&mut agent, now);
                self.agents.push(agent);
                self.prune_agents();
            }
            (Op::Heartbeat { agent }, Some(outcome)) => {
                let Some(index) = self.agent_index(agent) else { return };
                let mut sim = self.agents[index].clone();
                if outcome.is_err() {
                    sim.gone = true;
                    sim.heartbeat_at = None;
                } else {
                    self.schedule(&mut sim, now);
                }
                self.agents[index] = sim;
            }
            (Op::Deregister { agent }, Some(Ok(_))) => {
                if let Some(index) = self.agent_index(agent) {
                    self.agents[index].gone = true;
                    self.agents[index].heartbeat_at = None;
                }
            }
            (
                Op::Acquire {
                    key,
                    agent: AgentRef::Registered(agent_step),
                    ..
                },
                Some(Ok(Reply::Lease { acquired: true, .. })),
            ) => {
                self.leases.retain(|l| l.key != *key);
                self.leases.push(HeldLease {
                    key: key.clone(),
                    agent_step: *agent_step,
                    grant_step: step.index,
                });
            }
            // A client forgets a lease after releasing it, mostly; after a failed renew, now and
            // then (so stale tokens keep being tried).
            (Op::Release { key, .. }, Some(_)) if self.rng.chance(700) => {
                self.leases.retain(|l| l.key != *key);
                self.forget_claim(key);
            }
            (Op::Renew { key, .. }, Some(Err(_))) if self.rng.chance(300) => {
                self.leases.retain(|l| l.key != *key);
                self.forget_claim(key);
            }
            (Op::CreateTask { .. }, Some(Ok(Reply::Task(_)))) => {
                self.tasks.push(step.index);
                if self.tasks.len() > KNOWN_TASKS_MAX {
                    self.tasks.remove(0);
                }
            }
            (
                Op::ClaimTask {
                    agent: AgentRef::Registered(agent_step),
                    ..
                },
                Some(Ok(reply)),
            ) => match reply {
                Reply::Claimed { .. } => self.hold_claim(step.index, *agent_step),
                Reply::ClaimWaiting { .. } => self.waiting.push(WaitingClaim {
                    claim_step: step.index,
                    agent: Some(*agent_step),
                }),
                _ => {}
            },
            // A task forgotten (its retention ran out) or never known: nobody asks for it again.
            (
                Op::CompleteTask {
                    task: TaskRef::Step(task),
                    ..
                }
                | Op::FailTask {
                    task: TaskRef::Step(task),
                    ..
                }
                | Op::GetTask {
                    task: TaskRef::Step(task),
                }
                | Op::ReturnTask {
                    task: TaskRef::Step(task),
                    ..
                },
                Some(Err(error)),
            ) if error.code == ErrorCode::NotFound => {
                self.tasks.retain(|t| t != task);
                self.claims.retain(|c| c.claim_step != *task);
            }
            // Done, or stale (its lease ran out, its agent died): the client lets it go, mostly.
            (
                Op::CompleteTask { task, .. } | Op::FailTask { task, .. } | Op::ReturnTask { task, .. },
                Some(outcome),
            ) if outcome.is_ok() || self.rng.chance(800) => self.forget_claim(task),
            (Op::ListTasks { status, .. }, Some(Ok(Reply::Tasks { next_page_token, .. })))
                if !next_page_token.is_empty() =>
            {
                self.pages.push((step.index, *status));
                if self.pages.len() > PAGES_MAX {
                    self.pages.remove(0);
                }
            }
            (Op::Watch { buffer, .. } | Op::WatchElection { buffer, .. }, Some(Ok(_))) => {
                let stalled = self.rng.chance(self.swarm.stalled_per_mille);
                self.streams.push(OpenStream {
                    sub: SubRef(step.index),
                    stalled,
                    buffer: *buffer,
                });
            }
            (Op::Unwatch { sub }, _) => self.streams.retain(|s| s.sub != *sub),
            (Op::KeepAlive { items }, Some(reply)) => self.observe_keep_alive(step, items, reply),
            // The torn command's call failed with the connection; a heartbeating agent tries
            // again at once. Other clients learnt nothing (a torn Register's agent is unknown to
            // its client, as after a lost reply).
            (Op::Crash { torn: Some(torn) }, _) => {
                if let Op::Heartbeat { agent } = &torn.op
                    && let Some(index) = self.agent_index(agent)
                    && !self.agents[index].gone
                {
                    self.agents[index].heartbeat_at = Some(now);
                }
            }
            _ => {}
        }
    }

    /// Drops streams the runner has ended (overflow) from the clients' view.
    pub fn forget_ended_streams(&mut self, runner: &Runner) {
        self.streams.retain(|s| runner.subscription_open(s.sub));
    }

    fn agent_index(&self, agent: &AgentRef) -> Option<usize> {
        let AgentRef::Registered(step) = agent else { return None };
        self.agents.iter().position(|a| a.registered_at_step == *step)
    }

    fn schedule(&mut self, agent: &mut SimAgent, now: Millis) {
        let ttl = agent.ttl_ms;
        agent.heartbeat_at = match agent.temperament {
            Temperament::Punctual => Some(now + ttl * self.rng.range(20, 60) / 100),
            Temperament::Late => Some(now + ttl * self.rng.range(50, 250) / 100),
            Temperament::Silent => None,
        };
    }

    /// Keeps the clients' list of agents bounded: the oldest gone ones go first.
    fn prune_agents(&mut self) {
        const KNOWN_AGENTS_MAX: usize = AGENTS_MAX + 32;
        while self.agents.len() > KNOWN_AGENTS_MAX {
            let at = self.agents.iter().position(|a| a.gone).unwrap_or(0);
            let removed = self.agents.remove(at);
            self.leases.retain(|l| l.agent_step != removed.registered_at_step);
        }
    }
}

/// The op kinds whose command the driver logs (`Command::is_logged`): those a torn crash can
/// catch mid-write.
fn logged_kind(name: &str) -> bool {
    matches!(
        name,
        "register"
            | "heartbeat"
            | "deregister"
            | "acquire"
            | "renew"
            | "release"
            | "campaign"
            | "resign"
            | "set_policy"
            | "delete_policy"
            | "create_task"
            | "claim_task"
            | "cancel_claim"
            | "complete_task"
            | "fail_task"
            | "return_task"
    )
}

fn task_kind(name: &str) -> usize {
    TASK_KINDS.iter().position(|&n| n == name).expect("a known task kind")
}

fn kind(name: &str) -> usize {
    Op::NAMES.iter().position(|&n| n == name).expect("a known op name")
}

impl Op {
    /// Ops whose reply can be lost: every core call (Register's and CreateTask's are not
    /// retried; a ClaimTask's lost claim goes back).
    fn retry_safe_or_register(&self) -> bool {
        self.retry_safe() || matches!(self, Op::Register { .. } | Op::CreateTask { .. } | Op::ClaimTask { .. })
    }
}
