//! Executes steps against the real core and the reference model side by side, routes event
//! deliveries into modelled per-subscriber buffers (cutting off an overflowing one with
//! `Command::Unwatch`, as the driver does), hands the core's answers to waiting claims to their
//! callers (returning a claimed task whose caller is gone with `Command::ReturnTask`, as the
//! driver does), logs what the driver would log into an in-memory store image, crashes and
//! recovers from that image, and checks every named invariant after each step.
//!
//! Order of checks within a step: the named safety properties first (so a planted bug is reported
//! by the property it breaks), then agreement with the reference model. The runner never decides
//! anything random: a step says everything, so a trace replays exactly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use agentkeeper::core::entry::Entry;
use agentkeeper::core::events::{Delivery, LeaseView, SubscriberId};
use agentkeeper::core::snapshot::CoreSnapshot;
use agentkeeper::core::tasks::{TaskStatus, TaskView, WaiterId};
use agentkeeper::core::types::{AgentStatus, Millis};
use agentkeeper::core::{Command, Core, Event, EventPayload, Outcome, Reply, Topic};

use crate::digest::Digest;
use crate::image::{ReadError, StoreImage};
use crate::model::{Expected, Model, decide, topics_match};
use crate::step::{AgentRef, ClaimRef, Op, PageRef, Planted, SimConfig, Step, SubRef, TaskRef, TokenRef, TornWrite};

/// The names of every invariant the simulator checks, as printed on a failure.
pub mod invariant {
    pub const ONE_HOLDER_PER_KEY: &str = "lease.one_holder_per_key";
    pub const FENCING_TOKENS_INCREASE: &str = "lease.fencing_tokens_strictly_increase";
    pub const STATUS_MATCHES_HEARTBEAT: &str = "agent.status_matches_heartbeat_and_ttl";
    pub const DEAD_HOLDS_NOTHING: &str = "agent.dead_holds_no_lease_leads_no_group_stands_in_no_fifo";
    pub const TERMS_NEVER_DECREASE: &str = "election.terms_never_decrease";
    pub const LEADER_IS_LIVE_CANDIDATE: &str = "election.leader_is_live_head_candidate";
    pub const SUBSCRIBER_STREAM_EXACT: &str = "watch.subscriber_gets_exactly_its_matching_events";
    pub const CHECK_POLICY_BRUTE_FORCE: &str = "policy.check_equals_brute_force";
    pub const FIND_ALIVE_WITH_TOOLS: &str = "find.only_alive_agents_with_every_tool";
    pub const TASK_ONE_STATE: &str = "task.one_state";
    pub const TASK_NONE_LOST: &str = "task.none_lost";
    pub const TASK_DEAD_AGENT_OWNS_NO_CLAIM: &str = "task.dead_agent_owns_no_claim";
    pub const TASK_CLAIMED_HOLDER_ALIVE_WITH_LEASE: &str = "task.claimed_holder_alive_with_lease";
    pub const CORE_CHECK_INVARIANTS: &str = "core.check_invariants";
    pub const CORE_PANIC: &str = "core.no_panic";
    pub const MODEL_REPLY: &str = "model.reply_agrees";
    pub const MODEL_EVENTS: &str = "model.events_agree";
    pub const MODEL_STATE: &str = "model.state_agrees";
    pub const RECOVERY_STATE_MATCHES: &str = "recovery.state_matches";
    pub const RECOVERY_TORN_TAIL_CUT: &str = "recovery.torn_tail_cut";

    pub const ALL: [&str; 20] = [
        ONE_HOLDER_PER_KEY,
        FENCING_TOKENS_INCREASE,
        STATUS_MATCHES_HEARTBEAT,
        DEAD_HOLDS_NOTHING,
        TERMS_NEVER_DECREASE,
        LEADER_IS_LIVE_CANDIDATE,
        SUBSCRIBER_STREAM_EXACT,
        CHECK_POLICY_BRUTE_FORCE,
        FIND_ALIVE_WITH_TOOLS,
        TASK_ONE_STATE,
        TASK_NONE_LOST,
        TASK_DEAD_AGENT_OWNS_NO_CLAIM,
        TASK_CLAIMED_HOLDER_ALIVE_WITH_LEASE,
        CORE_CHECK_INVARIANTS,
        CORE_PANIC,
        MODEL_REPLY,
        MODEL_EVENTS,
        MODEL_STATE,
        RECOVERY_STATE_MATCHES,
        RECOVERY_TORN_TAIL_CUT,
    ];
}

/// A broken invariant: where, which, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub step: usize,
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {} invariant {}: {}", self.step, self.invariant, self.detail)
    }
}

type Checked<T = ()> = Result<T, (&'static str, String)>;

fn fail<T>(invariant: &'static str, detail: String) -> Checked<T> {
    Err((invariant, detail))
}

/// Debug text cut to a readable length for a failure message.
fn brief(value: &impl std::fmt::Debug) -> String {
    const BRIEF_CHARS_MAX: usize = 1200;
    let text = format!("{value:?}");
    if text.chars().count() <= BRIEF_CHARS_MAX {
        return text;
    }
    let head: String = text.chars().take(BRIEF_CHARS_MAX).collect();
    format!("{head}…")
}

#[derive(Clone, Debug)]
enum Filter {
    Topics(Vec<String>),
    Election(String),
}

/// One open subscription: what it asked for and the client-side bounded buffer.
#[derive(Debug)]
struct Subscription {
    id: SubscriberId,
    filter: Filter,
    /// Events below this sequence are not for it (resume start); 0: everything after subscribing.
    sequence_min: u64,
    capacity: usize,
    buffer: VecDeque<Arc<Event>>,
}

impl Subscription {
    fn wants(&self, event: &Event) -> bool {
        if event.sequence < self.sequence_min {
            return false;
        }
        match &self.filter {
            Filter::Topics(prefixes) => topics_match(prefixes, event.topic),
            Filter::Election(group) => {
                event.topic == Topic::LeaderChanged
                    && matches!(&event.payload, EventPayload::Election(view) if *view.group == **group)
            }
        }
    }
}

/// How often each op ran and each fault struck: what the coverage test asserts on.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    pub ops: BTreeMap<&'static str, u64>,
    pub faults: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Coverage {
    fn fault(&mut self, name: &'static str) {
        *self.faults.entry(name).or_default() += 1;
    }
}

/// A claim waiting in the core for its answer, and whether its caller is still there.
#[derive(Clone, Copy, Debug)]
struct WaitingCall {
    /// The ClaimTask step.
    step: usize,
    /// The caller went away (the step's reply was lost, or it cancelled): a task handed to it
    /// goes back.
    gone: bool,
    /// CancelClaim took it out of the core's line: no answer comes after this step's.
    cancelled: bool,
}

/// What the runner saw of a task created by a committed command: for `task.none_lost` (known
/// until its retention after it finished) and the claim lease's token.
#[derive(Clone, Copy, Debug, Default)]
struct CreatedTask {
    finished_at: Option<Millis>,
    /// The token of the last claim lease granted on its id.
    claim_token: Option<u64>,
}

/// A clock jump is any move of at least this much between two steps.
pub const CLOCK_JUMP_MS_MIN: u64 = 60_000;

pub struct Runner {
    config: SimConfig,
    core: Core,
    model: Model,
    /// What the daemon's data dir would hold: every record the driver would have logged.
    image: StoreImage,
    digest: Digest,
    now: Millis,
    /// Register step -> the agent id its (visible) reply carried.
    agents: BTreeMap<usize, String>,
    /// Acquire step -> the token its (visible) reply granted.
    grants: BTreeMap<usize, u64>,
    /// Opening step -> the subscriber id its (visible) reply carried (open or ended).
    subscriber_ids: BTreeMap<usize, SubscriberId>,
    /// Step -> the task id its visible reply named (CreateTask, GetTask, a ClaimTask granted at
    /// once), or the answer delivered to its waiting claim.
    task_ids: BTreeMap<usize, String>,
    /// ListTasks step -> the next page token its visible reply carried.
    page_tokens: BTreeMap<usize, String>,
    /// ClaimTask step -> the waiter id the core gave its wait (the driver always sees it).
    claim_waiters: BTreeMap<usize, WaiterId>,
    /// Claims the core holds in line, by waiter id, with their callers.
    waiting: BTreeMap<WaiterId, WaitingCall>,
    /// Answers handed to callers during the last step: (ClaimTask step, answer).
    delivered: Vec<(usize, Outcome)>,
    /// ReturnTask commands the driver owes for claims it could not deliver.
    returns: Vec<Command>,
    /// Every task a committed command created (by id), until its retention after finishing ran
    /// out.
    created: BTreeMap<u128, CreatedTask>,
    /// Open subscriptions, by subscriber id.
    subscriptions: BTreeMap<SubscriberId, Subscription>,
    deregistered: BTreeSet<u128>,
    /// Agent id -> where the last restart's grace made its ttl count from (a live agent at a
    /// restart is not punished for the downtime); ttl counts from the later of this and its last
    /// heartbeat.
    grace_bases: BTreeMap<u128, Millis>,
    /// The highest fencing token granted so far (that anyone outside the core could see); it
    /// survives crashes, so tokens are checked across restarts.
    token_max: u64,
    terms: BTreeMap<Arc<str>, u64>,
    deliveries: Vec<Delivery>,
    last_reply: Option<Outcome>,
    /// The step may have changed policies: compare them all with the model's.
    policies_touched: bool,
    steps_run: u64,
    coverage: Coverage,
}

impl Runner {
    pub fn new(config: &SimConfig) -> Runner {
        Runner {
            config: config.clone(),
            core: Core::new(config.core.clone(), config.start_ms),
            model: Model::new(&config.core, config.start_ms),
            image: StoreImage::new(config.core.seed, config.start_ms),
            digest: Digest::default(),
            now: config.start_ms,
            agents: BTreeMap::new(),
            grants: BTreeMap::new(),
            subscriber_ids: BTreeMap::new(),
            task_ids: BTreeMap::new(),
            page_tokens: BTreeMap::new(),
            claim_waiters: BTreeMap::new(),
            waiting: BTreeMap::new(),
            delivered: Vec::new(),
            returns: Vec::new(),
            created: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            deregistered: BTreeSet::new(),
            grace_bases: BTreeMap::new(),
            token_max: 0,
            terms: BTreeMap::new(),
            deliveries: Vec::new(),
            last_reply: None,
            policies_touched: false,
            steps_run: 0,
            coverage: Coverage::default(),
        }
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn steps_run(&self) -> u64 {
        self.steps_run
    }

    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    /// The reply the client saw for the last step (`None`: no core call, or the reply was lost).
    pub fn last_reply(&self) -> Option<&Outcome> {
        self.last_reply.as_ref()
    }

    /// True while the subscription opened at `step` is still open.
    pub fn subscription_open(&self, sub: SubRef) -> bool {
        self.subscriber_ids
            .get(&sub.0)
            .is_some_and(|id| self.subscriptions.contains_key(id))
    }

    /// True while the ClaimTask at `claim`'s step waits in line (not answered, cancelled or
    /// dropped by a restart).
    pub fn claim_waiting(&self, claim: ClaimRef) -> bool {
        self.claim_waiters
            .get(&claim.0)
            .is_some_and(|waiter| self.waiting.contains_key(waiter))
    }

    /// The answers handed to waiting claims' callers during the last step: (ClaimTask step,
    /// answer). A caller that is gone gets none.
    pub fn claim_answers(&self) -> &[(usize, Outcome)] {
        &self.delivered
    }

    /// Runs one step and every check after it, then takes the store image's snapshot if one is
    /// due (as the driver does after a batch). A panic in the core is a violation too.
    pub fn step(&mut self, step: &Step) -> Result<(), Violation> {
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.step_checked(step)?;
            if self.image.since_snapshot() >= self.config.snapshot_every {
                self.image.take_snapshot(&self.core);
                self.coverage.fault("snapshot");
            }
            Ok(())
        }));
        self.steps_run += 1;
        let failure = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(failure)) => failure,
            Err(panic) => (invariant::CORE_PANIC, panic_text(&panic)),
        };
        Err(Violation {
            step: step.index,
            invariant: failure.0,
            detail: failure.1,
        })
    }

    fn step_checked(&mut self, step: &Step) -> Checked {
        assert!(step.at >= self.now, "a step goes back in time");
        if step.at - self.now >= CLOCK_JUMP_MS_MIN {
            self.coverage.fault("clock_jump");
        }
        self.now = step.at;
        *self.coverage.ops.entry(step.op.name()).or_default() += 1;
        self.last_reply = None;
        self.delivered.clear();
        self.policies_touched = matches!(step.op, Op::SetPolicy { .. } | Op::DeletePolicy { .. });
        match &step.op {
            Op::Tick => {
                let sequence_before = self.core.stats().sequence_next;
                self.tick_logged();
                self.model.tick(step.at);
                self.after_call(sequence_before)?;
                self.settle_claims()?;
            }
            Op::Crash { torn } => self.crash(torn.as_deref())?,
            Op::Consume { sub, count } => {
                if let Some(open) = self
                    .subscriber_ids
                    .get(&sub.0)
                    .and_then(|id| self.subscriptions.get_mut(id))
                {
                    let count = (*count as usize).min(open.buffer.len());
                    open.buffer.drain(..count);
                }
            }
            op => {
                let (command, buffer) = self.command(op);
                let mut outcome = self.call(command.clone(), buffer)?;
                if let (Op::ClaimTask { .. }, Ok(Reply::ClaimWaiting { waiter })) = (op, &outcome) {
                    self.claim_waiters.insert(step.index, *waiter);
                    let call = WaitingCall {
                        step: step.index,
                        gone: step.lost,
                        cancelled: false,
                    };
                    self.waiting.insert(*waiter, call);
                }
                if step.lost {
                    self.coverage.fault("lost_reply");
                    if op.retry_safe() {
                        // The reply never reached the client: the driver ends a stream whose
                        // opening reply it could not hand over, and the client sends it again.
                        if let Ok(Reply::Watching { subscriber, .. } | Reply::WatchingElection { subscriber, .. }) =
                            &outcome
                        {
                            let subscriber = *subscriber;
                            let _done = self.call(Command::Unwatch { subscriber }, 0)?;
                        }
                        outcome = self.call(command, buffer)?;
                        self.coverage.fault("retry");
                    } else {
                        // A claim the caller never got goes back, as the driver returns it.
                        if let Ok(Reply::Claimed { task, lease }) = &outcome {
                            self.returns.push(Command::ReturnTask {
                                task_id: task.id.to_string(),
                                token: lease.token,
                            });
                        }
                        self.settle_claims()?;
                        return self.state_checks();
                    }
                }
                self.record(step.index, &outcome);
                self.last_reply = Some(outcome);
                self.settle_claims()?;
            }
        }
        self.state_checks()
    }

    /// The end of a step, as the driver ends a batch: the core's answers to waiting claims are
    /// checked against the model's and handed to their callers; a task handed to a caller that
    /// is gone goes back (ReturnTask), which may answer other claims in turn.
    fn settle_claims(&mut self) -> Checked {
        loop {
            let mut answers = Vec::new();
            self.core.drain_claim_answers(&mut answers);
            compare_answers(&answers, &self.model.take_answers())?;
            for (waiter, outcome) in answers {
                self.digest.claim_answer(waiter, &outcome);
                let Some(call) = self.waiting.remove(&waiter) else {
                    return fail(
                        invariant::MODEL_REPLY,
                        format!("the core answered waiter {waiter:?}, which no claim waits as"),
                    );
                };
                if call.gone {
                    if let Ok(Reply::Claimed { task, lease }) = &outcome {
                        self.returns.push(Command::ReturnTask {
                            task_id: task.id.to_string(),
                            token: lease.token,
                        });
                    }
                    continue;
                }
                self.coverage.fault(match &outcome {
                    Ok(Reply::Claimed { .. }) => "claim_answered",
                    Ok(_) => "claim_timed_out",
                    Err(_) => "claim_refused",
                });
                self.record(call.step, &outcome);
                self.delivered.push((call.step, outcome));
            }
            if self.returns.is_empty() {
                self.waiting.retain(|_, call| !call.cancelled);
                return Ok(());
            }
            for command in std::mem::take(&mut self.returns) {
                self.coverage.fault("claim_returned");
                let _done = self.call(command, 0)?;
            }
        }
    }

    /// Remembers what a visible reply named, for later steps' references.
    fn record(&mut self, index: usize, outcome: &Outcome) {
        match outcome {
            Ok(Reply::Registered { agent_id }) => {
                self.agents.insert(index, agent_id.to_string());
            }
            Ok(Reply::Lease { lease, acquired: true }) => {
                self.grants.insert(index, lease.token);
            }
            Ok(Reply::Watching { subscriber, .. } | Reply::WatchingElection { subscriber, .. }) => {
                self.subscriber_ids.insert(index, *subscriber);
            }
            Ok(Reply::Task(task)) => {
                self.task_ids.insert(index, task.id.to_string());
            }
            Ok(Reply::Claimed { task, lease }) => {
                self.task_ids.insert(index, task.id.to_string());
                self.grants.insert(index, lease.token);
            }
            Ok(Reply::Tasks { next_page_token, .. }) if !next_page_token.is_empty() => {
                self.page_tokens.insert(index, next_page_token.clone());
            }
            Err(error) => {
                *self.coverage.errors.entry(format!("{:?}", error.code)).or_default() += 1;
            }
            _ => {}
        }
    }

    fn agent(&self, agent: &AgentRef) -> String {
        match agent {
            AgentRef::Registered(step) => self
                .agents
                .get(step)
                .cloned()
                // Not a valid id: the core has never seen it, whatever it drew.
                .unwrap_or_else(|| format!("unknown-agent-of-step-{step}")),
            AgentRef::Literal(text) => text.clone(),
        }
    }

    fn task(&self, task: &TaskRef) -> String {
        match task {
            TaskRef::Step(step) => self
                .task_ids
                .get(step)
                .cloned()
                // Not a task id (nor, as a lease key, any task's): the core has never issued it.
                .unwrap_or_else(|| format!("unknown-task-of-step-{step}")),
            TaskRef::Literal(text) => text.clone(),
        }
    }

    fn token(&self, token: TokenRef) -> u64 {
        match token {
            TokenRef::Granted { step, offset } => self
                .grants
                .get(&step)
                .map_or(0, |&granted| granted.saturating_add_signed(offset)),
            TokenRef::Literal(token) => token,
        }
    }

    /// The command a step sends, and the buffer size of the stream it may open.
    fn command(&self, op: &Op) -> (Command, u32) {
        let command = match op {
            Op::Register { card, ttl_seconds } => Command::Register {
                card: card.clone(),
                ttl_seconds: *ttl_seconds,
            },
            Op::Heartbeat { agent } => Command::Heartbeat {
                agent_id: self.agent(agent),
            },
            Op::Deregister { agent } => Command::Deregister {
                agent_id: self.agent(agent),
            },
            Op::GetAgent { agent } => Command::GetAgent {
                agent_id: self.agent(agent),
            },
            Op::Find { query, tools, limit } => Command::Find {
                query: query.clone(),
                tools: tools.clone(),
                limit: *limit,
            },
            Op::Watch {
                topics,
                from_sequence,
                buffer,
            } => {
                let command = Command::Watch {
                    topics: topics.clone(),
                    from_sequence: *from_sequence,
                };
                return (command, *buffer);
            }
            Op::Unwatch { sub } => Command::Unwatch {
                // A subscription never opened gets an id the core never handed out.
                subscriber: self
                    .subscriber_ids
                    .get(&sub.0)
                    .copied()
                    .unwrap_or(SubscriberId(u64::MAX)),
            },
            Op::Acquire {
                key,
                agent,
                ttl_seconds,
            } => Command::AcquireLease {
                task_id: self.task(key),
                agent_id: self.agent(agent),
                ttl_seconds: *ttl_seconds,
            },
            Op::Renew {
                key,
                agent,
                token,
                ttl_seconds,
            } => Command::RenewLease {
                task_id: self.task(key),
                agent_id: self.agent(agent),
                token: self.token(*token),
                ttl_seconds: *ttl_seconds,
            },
            Op::Release { key, agent, token } => Command::ReleaseLease {
                task_id: self.task(key),
                agent_id: self.agent(agent),
                token: self.token(*token),
            },
            Op::Campaign { group, agent } => Command::Campaign {
                group: group.clone(),
                agent_id: self.agent(agent),
            },
            Op::Resign { group, agent } => Command::Resign {
                group: group.clone(),
                agent_id: self.agent(agent),
            },
            Op::WatchElection { group, buffer } => {
                return (Command::WatchElection { group: group.clone() }, *buffer);
            }
            Op::SetPolicy { policy } => Command::SetPolicy { policy: policy.clone() },
            Op::DeletePolicy { id } => Command::DeletePolicy { id: id.clone() },
            Op::ListPolicies { prefix } => Command::ListPolicies {
                subject_prefix: prefix.clone(),
            },
            Op::ListLeases {
                prefix,
                page_size,
                page_token,
            } => Command::ListLeases {
                prefix: prefix.clone(),
                page_size: *page_size,
                page_token: page_token.clone(),
            },
            Op::ListElections => Command::ListElections,
            Op::Overview { agents_max, leases_max } => Command::Overview {
                agents_max: *agents_max,
                leases_max: *leases_max,
            },
            Op::CheckPolicy {
                subject,
                action,
                resource,
            } => Command::CheckPolicy {
                subject: subject.clone(),
                action: action.clone(),
                resource: resource.clone(),
            },
            Op::CreateTask {
                kind,
                input,
                tools,
                max_retries,
                ttl_seconds,
            } => Command::CreateTask {
                kind: kind.clone(),
                input: input.clone().into_bytes(),
                required_tools: tools.clone(),
                max_retries: *max_retries,
                ttl_seconds: *ttl_seconds,
            },
            Op::ClaimTask { agent, wait_ms } => Command::ClaimTask {
                agent_id: self.agent(agent),
                wait_ms: *wait_ms,
            },
            Op::CancelClaim { claim } => Command::CancelClaim {
                // A claim that never waited gets a waiter id the core never handed out.
                waiter: self.claim_waiters.get(&claim.0).copied().unwrap_or(WaiterId(u64::MAX)),
            },
            Op::CompleteTask { task, agent, output } => Command::CompleteTask {
                task_id: self.task(task),
                agent_id: self.agent(agent),
                output: output.clone().into_bytes(),
            },
            Op::FailTask { task, agent, reason } => Command::FailTask {
                task_id: self.task(task),
                agent_id: self.agent(agent),
                reason: reason.clone(),
            },
            Op::GetTask { task } => Command::GetTask {
                task_id: self.task(task),
            },
            Op::ListTasks {
                status,
                page_size,
                page,
            } => Command::ListTasks {
                status: *status,
                page_size: *page_size,
                page_token: match page {
                    // A step that got no next token: the first page.
                    PageRef::Step(step) => self.page_tokens.get(step).cloned().unwrap_or_default(),
                    PageRef::Literal(text) => text.clone(),
                },
            },
            Op::ReturnTask { task, token } => Command::ReturnTask {
                task_id: self.task(task),
                token: self.token(*token),
            },
            Op::Tick | Op::Consume { .. } | Op::Crash { .. } => unreachable!("{} sends no command", op.name()),
        };
        (command, 0)
    }

    /// One command through the core and the model; checks the reply, the events and the
    /// deliveries it caused; opens the stream it may have subscribed.
    fn call(&mut self, command: Command, buffer: u32) -> Checked<Outcome> {
        let sequence_before = self.core.stats().sequence_next;
        if let Command::Unwatch { subscriber } = &command {
            self.subscriptions.remove(subscriber);
        }
        // A cancelled claim's caller is gone. The tick before the cancel may still answer it: a
        // task handed to it then goes back (ReturnTask) like any claim whose caller is gone.
        if let Command::CancelClaim { waiter } = &command
            && let Some(call) = self.waiting.get_mut(waiter)
        {
            call.gone = true;
            call.cancelled = true;
        }
        // As the driver: what is due fires (and is logged) before the command, which is logged
        // before it is applied.
        self.tick_logged();
        if command.is_logged() {
            self.image.append(&Entry::Apply {
                now: self.now,
                command: command.clone(),
                principal: None,
            });
        }
        let outcome = self.core.apply(self.now, command.clone());
        let expected = self.model.apply(self.now, &command, &outcome);
        self.digest.outcome(&outcome);
        self.check_reply_properties(&command, &outcome)?;
        self.after_call(sequence_before)?;
        self.compare_reply(&command, &outcome, &expected)?;
        if let Command::Deregister { agent_id } = &command
            && outcome.is_ok()
            && let Some(id) = agentkeeper::core::types::Id128::parse(agent_id)
        {
            self.deregistered.insert(id.0);
        }
        self.open_subscription(&command, &outcome, buffer);
        Ok(outcome)
    }

    fn open_subscription(&mut self, command: &Command, outcome: &Outcome, buffer: u32) {
        let (id, filter, sequence_min) = match (command, outcome) {
            (Command::Watch { topics, from_sequence }, Ok(Reply::Watching { subscriber, .. })) => {
                (*subscriber, Filter::Topics(topics.clone()), *from_sequence)
            }
            (Command::WatchElection { group }, Ok(Reply::WatchingElection { subscriber, .. })) => {
                (*subscriber, Filter::Election(group.clone()), 0)
            }
            _ => return,
        };
        self.subscriptions.insert(
            id,
            Subscription {
                id,
                filter,
                sequence_min,
                capacity: buffer.max(1) as usize,
                buffer: VecDeque::new(),
            },
        );
    }

    /// Properties of one reply that need no model: Find's filter and order, CheckPolicy's answer.
    fn check_reply_properties(&self, command: &Command, outcome: &Outcome) -> Checked {
        match (command, outcome) {
            (Command::Find { query, tools, .. }, Ok(Reply::Agents(found))) => {
                let agents = self.core.agents();
                let mut previous: Option<usize> = None;
                let mut seen = BTreeSet::new();
                for view in found {
                    let Some(position) = agents.iter().position(|a| a.agent_id == view.agent_id) else {
                        return fail(
                            invariant::FIND_ALIVE_WITH_TOOLS,
                            format!("found unknown agent {}", view.agent_id),
                        );
                    };
                    let agent = &agents[position];
                    if agent.status != AgentStatus::Alive || !tools.iter().all(|t| agent.card.tools.contains(t)) {
                        return fail(
                            invariant::FIND_ALIVE_WITH_TOOLS,
                            format!(
                                "found {} ({:?}, tools {:?}) for tools {tools:?}",
                                view.agent_id, agent.status, agent.card.tools
                            ),
                        );
                    }
                    if !seen.insert(view.agent_id) {
                        return fail(
                            invariant::FIND_ALIVE_WITH_TOOLS,
                            format!("found {} twice", view.agent_id),
                        );
                    }
                    if query.is_empty() && previous.is_some_and(|p| p >= position) {
                        return fail(
                            invariant::FIND_ALIVE_WITH_TOOLS,
                            format!("empty query answered out of registration order: {}", view.agent_id),
                        );
                    }
                    previous = Some(position);
                }
                Ok(())
            }
            (
                Command::CheckPolicy {
                    subject,
                    action,
                    resource,
                },
                Ok(Reply::Decision(decision)),
            ) => {
                let expected = decide(&self.core.policies(), subject, action, resource);
                if *decision != expected {
                    return fail(
                        invariant::CHECK_POLICY_BRUTE_FORCE,
                        format!(
                            "check({subject:?}, {action:?}, {resource:?}) = {decision:?}, brute force says {expected:?}"
                        ),
                    );
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Fires what is due at the step's time, logging a tick that fired anything (the driver's
    /// `Entry::Tick`).
    fn tick_logged(&mut self) {
        if self.core.tick(self.now) > 0 {
            self.image.append(&Entry::Tick { now: self.now });
        }
    }

    /// The daemon crashes and restarts from the store image (see `Op::Crash`): the torn write
    /// first, if any, then recovery through the store's scan and replay, the checks that nothing
    /// durable was lost, the restart grace (logged), and the recovered core swapped in. Every
    /// stream broke; the clients keep the ids and tokens they knew.
    fn crash(&mut self, torn: Option<&TornWrite>) -> Checked {
        self.coverage.fault("crash");
        let torn_written;
        let before = match torn {
            None => {
                torn_written = false;
                self.core.snapshot()
            }
            Some(torn) => {
                let (before, written) = self.torn_write(torn)?;
                if written {
                    self.coverage.fault("torn_crash");
                }
                torn_written = written;
                before
            }
        };
        let (whole_len, whole_records) = (self.image.whole_len(), self.image.records());
        let (mut recovered, reading) = match self.image.read() {
            Ok(read) => read,
            Err(ReadError::Damaged(detail)) => {
                return fail(
                    invariant::RECOVERY_TORN_TAIL_CUT,
                    format!("the scan refused the log as damaged (the daemon would not start): {detail}"),
                );
            }
            Err(ReadError::Undecodable(detail)) => {
                return fail(
                    invariant::RECOVERY_STATE_MATCHES,
                    format!("the image does not decode: {detail}"),
                );
            }
        };
        if reading.from_snapshot {
            self.coverage.fault("recovered_from_snapshot");
        }
        let kept = (reading.valid_len, reading.records);
        if kept != (whole_len, whole_records) || reading.torn.is_some() != torn_written {
            return fail(
                invariant::RECOVERY_TORN_TAIL_CUT,
                format!(
                    "{} log of {whole_records} whole records ({whole_len} bytes) read back as {} records \
                     ({} bytes), tail cut: {:?}",
                    if torn_written { "a torn" } else { "an untorn" },
                    reading.records,
                    reading.valid_len,
                    reading.torn
                ),
            );
        }
        if self.config.planted == Planted::DropLastLogRecord {
            recovered.records.pop();
        }
        let mut core = agentkeeper::store::replay(recovered, self.config.core.clone());
        // Answers the replay made to waiting claims have no caller in the new process.
        let mut stale = Vec::new();
        core.drain_claim_answers(&mut stale);
        let mut after = core.snapshot();
        let mut before = before;
        // The one thing a replay may leave behind: the clock of reads and ticks that fired
        // nothing, which are not logged.
        after.now = before.now;
        // And a waiting claim whose agent was forgotten: a snapshot image leaves it out when it
        // is restored (`restore_waiter`), which changes no later answer but its own; the
        // restart drops every waiting claim anyway.
        let known: BTreeSet<u128> = before.agents.iter().map(|a| a.id.0).collect();
        before.waiters.retain(|w| known.contains(&w.agent_id.0));
        after.waiters.retain(|w| known.contains(&w.agent_id.0));
        if after != before {
            return fail(
                invariant::RECOVERY_STATE_MATCHES,
                format!(
                    "recovered from {} and {} records, the state differs: {}",
                    if reading.from_snapshot {
                        "a snapshot"
                    } else {
                        "the header"
                    },
                    reading.records,
                    snapshot_difference(&before, &after)
                ),
            );
        }
        let now = self.now.max(core.now());
        self.grant_grace(&core.agents(), now);
        core.restart_grace(now);
        self.image.append_grace(now);
        self.model.restart_grace(now);
        self.core = core;
        self.subscriptions.clear();
        self.subscriber_ids.clear();
        self.deliveries.clear();
        // The callers of waiting claims went with the old process: the restart dropped their
        // claims, and nobody answers them.
        if !self.waiting.is_empty() {
            self.coverage.fault("claims_dropped");
        }
        self.waiting.clear();
        self.returns.clear();
        self.policies_touched = true;
        // The restarted daemon's first batch ticks at once: what fell due while it was down and
        // the grace left due (a DEAD agent's or a finished task's retention) fires now, as the
        // driver's loop fires it.
        let sequence_before = self.core.stats().sequence_next;
        self.tick_logged();
        self.model.tick(now);
        self.after_call(sequence_before)?;
        self.settle_claims()
    }

    /// Checks the answers to waiting claims made so far against the model's, and drops them: the
    /// batch never committed, so no caller hears one (and the restart drops every waiting claim).
    fn drop_claim_answers(&mut self) -> Checked {
        let mut answers = Vec::new();
        self.core.drain_claim_answers(&mut answers);
        compare_answers(&answers, &self.model.take_answers())
    }

    /// A torn crash's write: what is due fires (its record whole: the batch's write reached that
    /// far), then the command is applied to the core and the model and checked like any, but its
    /// record is written torn, its reply never leaves, its events reach no subscriber and no
    /// waiting claim hears an answer (the batch never committed). The model is then put back as it was before the command: that is
    /// what recovery must rebuild. Returns the core's state before the command, and whether a
    /// record was torn (a command that is not logged leaves none).
    fn torn_write(&mut self, torn: &TornWrite) -> Checked<(CoreSnapshot, bool)> {
        let sequence_before = self.core.stats().sequence_next;
        self.tick_logged();
        self.model.tick(self.now);
        let events = self.emitted_since(sequence_before)?;
        // The tick's record lands whole: a claim lease it granted (a task handed to a waiting
        // claim) survives the crash, so its token raises the floor.
        self.check_fencing(&events, true)?;
        self.observe_task_events(&events);
        let expected = self.model.take_events();
        compare_events(&events, &expected)?;
        self.drop_claim_answers()?;
        let before = self.core.snapshot();
        let model_before = self.model.clone();
        let (command, _) = self.command(&torn.op);
        let record = command.is_logged().then(|| Entry::Apply {
            now: self.now,
            command: command.clone(),
            principal: None,
        });
        let sequence_before = self.core.stats().sequence_next;
        let outcome = self.core.apply(self.now, command.clone());
        let expected_reply = self.model.apply(self.now, &command, &outcome);
        self.check_reply_properties(&command, &outcome)?;
        let events = self.emitted_since(sequence_before)?;
        // Never seen outside the core, so it raises no floor; it must still be above it.
        self.check_fencing(&events, false)?;
        compare_events(&events, &self.model.take_events())?;
        self.compare_reply(&command, &outcome, &expected_reply)?;
        self.drop_claim_answers()?;
        self.model = model_before;
        if let Some(record) = &record {
            self.image.append_torn(record, torn.tear);
        }
        Ok((before, record.is_some()))
    }

    /// Where each live agent's ttl counts from after a restart's grace at `now`, for the status
    /// invariant: ALIVE, a full ttl from `now` at least; UNREACHABLE, dead no sooner than a ttl
    /// from `now`. `agents` is the recovered state (a torn command's effect is not in it);
    /// agents no longer known are dropped from the map.
    fn grant_grace(&mut self, agents: &[agentkeeper::core::AgentView], now: Millis) {
        let mut bases = BTreeMap::new();
        for agent in agents {
            let id = agent.agent_id.0;
            let base = self.liveness_base(id, agent.last_heartbeat_at);
            let graced = match agent.status {
                AgentStatus::Alive => base.max(now),
                AgentStatus::Unreachable => base.max(now - agent.ttl_ms),
                AgentStatus::Dead => continue,
            };
            bases.insert(id, graced);
        }
        self.grace_bases = bases;
    }

    /// Where an agent's ttl counts from: its last heartbeat, or a restart's grace if later.
    fn liveness_base(&self, id: u128, last_heartbeat_at: Millis) -> Millis {
        self.grace_bases
            .get(&id)
            .map_or(last_heartbeat_at, |&base| base.max(last_heartbeat_at))
    }

    /// The events emitted since `sequence_before`, all of them still in the ring.
    fn emitted_since(&self, sequence_before: u64) -> Checked<Vec<Arc<Event>>> {
        let emitted = self.core.stats().sequence_next - sequence_before;
        let events = self.core.events_since(sequence_before);
        if events.len() as u64 != emitted {
            return fail(
                invariant::MODEL_EVENTS,
                format!("{emitted} events emitted but the ring holds {} of them", events.len()),
            );
        }
        Ok(events)
    }

    /// After any core call: the events it emitted, their deliveries, and the model's events.
    fn after_call(&mut self, sequence_before: u64) -> Checked {
        let events = self.emitted_since(sequence_before)?;
        // Taken before routing: a cut-off subscriber's Unwatch is a call of its own.
        let expected = self.model.take_events();
        self.check_fencing(&events, true)?;
        self.observe_task_events(&events);
        self.route(&events)?;
        compare_events(&events, &expected)
    }

    /// Follows committed task events for `task.none_lost` and the claim tokens: a task is known
    /// from `task.created` on, finished at `task.completed` or `task.dead`; a `lease.acquired`
    /// on its id is its claim's grant.
    fn observe_task_events(&mut self, events: &[Arc<Event>]) {
        for event in events {
            match (&event.payload, event.topic) {
                (EventPayload::Task(task), Topic::TaskCreated) => {
                    self.created.insert(task.id.0, CreatedTask::default());
                }
                (EventPayload::Task(task), Topic::TaskCompleted | Topic::TaskDead) => {
                    if let Some(created) = self.created.get_mut(&task.id.0) {
                        created.finished_at = Some(event.occurred_at);
                    }
                }
                (EventPayload::Lease(lease), Topic::LeaseAcquired) => {
                    let task = agentkeeper::core::types::Id128::parse(&lease.task_id);
                    if let Some(created) = task.and_then(|id| self.created.get_mut(&id.0)) {
                        created.claim_token = Some(lease.token);
                    }
                }
                _ => {}
            }
        }
    }

    /// Grants must carry tokens above every token granted before; with `raise`, the grants are
    /// visible and raise that floor.
    fn check_fencing(&mut self, events: &[Arc<Event>], raise: bool) -> Checked {
        for event in events {
            if let (Topic::LeaseAcquired, EventPayload::Lease(lease)) = (event.topic, &event.payload) {
                if lease.token <= self.token_max {
                    return fail(
                        invariant::FENCING_TOKENS_INCREASE,
                        format!(
                            "lease {:?} granted token {} after token {} was granted",
                            lease.task_id, lease.token, self.token_max
                        ),
                    );
                }
                if raise {
                    self.token_max = lease.token;
                }
            }
        }
        Ok(())
    }

    /// Moves the call's deliveries into the subscribers' buffers, checking each subscriber gets
    /// exactly the events matching its filter, in order; an overflowing one is cut off.
    fn route(&mut self, events: &[Arc<Event>]) -> Checked {
        self.core.drain_deliveries(&mut self.deliveries);
        let mut got: BTreeMap<SubscriberId, Vec<Arc<Event>>> = BTreeMap::new();
        for delivery in self.deliveries.drain(..) {
            if !self.subscriptions.contains_key(&delivery.subscriber) {
                return fail(
                    invariant::SUBSCRIBER_STREAM_EXACT,
                    format!(
                        "event {} delivered to ended subscriber {:?}",
                        delivery.event.sequence, delivery.subscriber
                    ),
                );
            }
            got.entry(delivery.subscriber).or_default().push(delivery.event);
        }
        let mut ended = Vec::new();
        for subscription in self.subscriptions.values_mut() {
            let delivered = got.remove(&subscription.id).unwrap_or_default();
            let wanted: Vec<&Arc<Event>> = events.iter().filter(|e| subscription.wants(e)).collect();
            let same = delivered.len() == wanted.len() && delivered.iter().zip(&wanted).all(|(a, b)| a == *b);
            if !same {
                let sequences =
                    |list: &mut dyn Iterator<Item = &Arc<Event>>| list.map(|e| e.sequence).collect::<Vec<_>>();
                return fail(
                    invariant::SUBSCRIBER_STREAM_EXACT,
                    format!(
                        "subscriber {:?} ({:?}, from {}) got sequences {:?}, its filter selects {:?}",
                        subscription.id,
                        subscription.filter,
                        subscription.sequence_min,
                        sequences(&mut delivered.iter()),
                        sequences(&mut wanted.iter().copied())
                    ),
                );
            }
            for event in delivered {
                if subscription.buffer.len() == subscription.capacity {
                    ended.push(subscription.id);
                    break;
                }
                self.digest.u64(subscription.id.0);
                self.digest.event(&event);
                subscription.buffer.push_back(event);
            }
        }
        for subscriber in ended {
            self.coverage.fault("subscriber_cut_off");
            let _done = self.call(Command::Unwatch { subscriber }, 0)?;
        }
        Ok(())
    }

    fn compare_reply(&self, command: &Command, outcome: &Outcome, expected: &Expected) -> Checked {
        let agrees = match (outcome, expected) {
            (Err(error), Err(code)) => error.code == *code && !error.message.is_empty(),
            (Ok(Reply::Agents(found)), Ok(Reply::Agents(_))) if matches!(command, Command::Find { query, .. } if !query.is_empty()) =>
            {
                let Command::Find { tools, limit, .. } = command else {
                    unreachable!("matched a Find above")
                };
                self.ranked_find_agrees(found, tools, *limit)
            }
            (Ok(got), Ok(want)) => got == want,
            _ => false,
        };
        if agrees {
            return Ok(());
        }
        fail(
            invariant::MODEL_REPLY,
            format!(
                "{} answered {}, the model expects {}",
                command.name(),
                brief(outcome),
                brief(expected)
            ),
        )
    }

    /// A Find with a query ranks every ALIVE agent with the tools: the core's answer must be that
    /// set when it fits the limit, else `limit` distinct members of it.
    fn ranked_find_agrees(&self, found: &[agentkeeper::core::AgentView], tools: &[String], limit: u32) -> bool {
        let limit = match limit {
            0 => 10,
            n => n.min(1000),
        } as usize;
        let candidates = self.model.find_candidates(tools);
        let expected_len = candidates.len().min(limit);
        found.len() == expected_len && found.iter().all(|view| candidates.contains(view))
    }

    /// The named state invariants, then the model's state, after every step.
    fn state_checks(&mut self) -> Checked {
        // The core's own time: a step that makes no core call (a client reading its buffer)
        // moves the trace's clock but not the core's.
        let now = self.core.now();
        let agents = self.core.agents();
        let status: BTreeMap<u128, AgentStatus> = agents.iter().map(|a| (a.agent_id.0, a.status)).collect();
        let leases = self.core.leases();
        for pair in leases.windows(2) {
            if pair[0].task_id == pair[1].task_id {
                return fail(
                    invariant::ONE_HOLDER_PER_KEY,
                    format!("two leases on {:?}", pair[0].task_id),
                );
            }
        }
        let mut tokens = BTreeSet::new();
        for lease in &leases {
            if now >= lease.expires_at {
                return fail(
                    invariant::ONE_HOLDER_PER_KEY,
                    format!(
                        "lease {:?} still held at {now}, past its expiry {}",
                        lease.task_id, lease.expires_at
                    ),
                );
            }
            if !tokens.insert(lease.token) || lease.token > self.token_max {
                return fail(
                    invariant::FENCING_TOKENS_INCREASE,
                    format!(
                        "lease {:?} holds token {} (highest granted {})",
                        lease.task_id, lease.token, self.token_max
                    ),
                );
            }
            match status.get(&lease.holder.0) {
                Some(AgentStatus::Alive | AgentStatus::Unreachable) => {}
                other => {
                    return fail(
                        invariant::DEAD_HOLDS_NOTHING,
                        format!("lease {:?} held by {} which is {other:?}", lease.task_id, lease.holder),
                    );
                }
            }
        }
        for agent in &agents {
            let (heartbeat, ttl) = (agent.last_heartbeat_at, agent.ttl_ms);
            let base = self.liveness_base(agent.agent_id.0, heartbeat);
            let consistent = match agent.status {
                AgentStatus::Alive => now < base + ttl,
                AgentStatus::Unreachable => base + ttl <= now && now < base + 2 * ttl,
                AgentStatus::Dead => self.deregistered.contains(&agent.agent_id.0) || now >= base + 2 * ttl,
            };
            if !consistent {
                return fail(
                    invariant::STATUS_MATCHES_HEARTBEAT,
                    format!(
                        "agent {} is {:?} at {now} with last heartbeat {heartbeat} (ttl counted from {base}) \
                         and ttl {ttl} ms",
                        agent.agent_id, agent.status
                    ),
                );
            }
        }
        self.check_elections(&status)?;
        let tasks = self.check_tasks(&status, &leases)?;
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.core.check_invariants())) {
            return fail(invariant::CORE_CHECK_INVARIANTS, panic_text(&panic));
        }
        self.compare_state(&agents, &leases, &tasks)
    }

    /// Every task the core lists with `status` (`None`: all), in one page, through the core's
    /// own ListTasks: a read, which changes nothing.
    fn list_tasks(&mut self, status: Option<TaskStatus>) -> Checked<Vec<TaskView>> {
        let now = self.core.now();
        let command = Command::ListTasks {
            status,
            page_size: 10_000,
            page_token: String::new(),
        };
        match self.core.apply(now, command) {
            Ok(Reply::Tasks { tasks, next_page_token }) if next_page_token.is_empty() => Ok(tasks),
            other => fail(
                invariant::TASK_ONE_STATE,
                format!("ListTasks({status:?}) answered {}", brief(&other)),
            ),
        }
    }

    /// The task invariants: each task under exactly one status (the model's), none lost before
    /// its retention ran out, every CLAIMED task's claimer not DEAD and holding the claim lease
    /// with the claim's token. Returns every task, in creation order.
    fn check_tasks(&mut self, status: &BTreeMap<u128, AgentStatus>, leases: &[LeaseView]) -> Checked<Vec<TaskView>> {
        let now = self.core.now();
        let tasks = self.list_tasks(None)?;
        let mut filed: BTreeMap<u128, TaskStatus> = BTreeMap::new();
        for under in [
            TaskStatus::Pending,
            TaskStatus::Claimed,
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Dead,
        ] {
            for task in self.list_tasks(Some(under))? {
                if task.status != under {
                    return fail(
                        invariant::TASK_ONE_STATE,
                        format!("task {} is listed under {under:?} but is {:?}", task.id, task.status),
                    );
                }
                if let Some(other) = filed.insert(task.id.0, under) {
                    return fail(
                        invariant::TASK_ONE_STATE,
                        format!("task {} is listed under {other:?} and under {under:?}", task.id),
                    );
                }
            }
        }
        for (position, task) in tasks.iter().enumerate() {
            if !filed.contains_key(&task.id.0) {
                return fail(
                    invariant::TASK_ONE_STATE,
                    format!("task {} ({:?}) is listed under no status", task.id, task.status),
                );
            }
            // Both lists are in creation order: the same task sits at the same place, unless
            // they differ in more than status (which `model.state_agrees` reports).
            let modelled = match self.model.tasks().nth(position) {
                Some(m) if m.id == task.id => Some(m),
                _ => self.model.tasks().find(|m| m.id == task.id),
            };
            if let Some(modelled) = modelled
                && modelled.status != task.status
            {
                return fail(
                    invariant::TASK_ONE_STATE,
                    format!(
                        "task {} is {:?} in the core, {:?} in the model",
                        task.id, task.status, modelled.status
                    ),
                );
            }
        }
        if filed.len() != tasks.len() {
            return fail(
                invariant::TASK_ONE_STATE,
                format!("{} tasks listed by status, {} in all", filed.len(), tasks.len()),
            );
        }
        let retention = self.config.core.task_retention_ms;
        self.created
            .retain(|_, c| c.finished_at.is_none_or(|at| now < at.saturating_add(retention)));
        let mut known: Vec<u128> = tasks.iter().map(|t| t.id.0).collect();
        known.sort_unstable();
        if let Some((id, created)) = self.created.iter().find(|(id, _)| known.binary_search(id).is_err()) {
            return fail(
                invariant::TASK_NONE_LOST,
                format!(
                    "task {:032x} (finished at {:?}, retention {retention} ms) is no longer known at {now}",
                    id, created.finished_at
                ),
            );
        }
        for task in tasks.iter().filter(|t| t.status == TaskStatus::Claimed) {
            let Some(claimer) = task.claimed_by else {
                return fail(
                    invariant::TASK_CLAIMED_HOLDER_ALIVE_WITH_LEASE,
                    format!("CLAIMED task {} names no claimer", task.id),
                );
            };
            let claimer_status = status.get(&claimer.0);
            if !matches!(claimer_status, Some(AgentStatus::Alive | AgentStatus::Unreachable)) {
                return fail(
                    invariant::TASK_DEAD_AGENT_OWNS_NO_CLAIM,
                    format!("task {} is CLAIMED by {claimer}, which is {claimer_status:?}", task.id),
                );
            }
            let id = task.id.to_string();
            let lease = leases.iter().find(|l| *l.task_id == *id);
            let token = self.created.get(&task.id.0).and_then(|c| c.claim_token);
            if lease.is_none_or(|l| l.holder != claimer || Some(l.token) != token) {
                return fail(
                    invariant::TASK_CLAIMED_HOLDER_ALIVE_WITH_LEASE,
                    format!(
                        "task {} is CLAIMED by {claimer} under token {token:?}; the lease on its id: {}",
                        task.id,
                        brief(&lease)
                    ),
                );
            }
        }
        Ok(tasks)
    }

    fn check_elections(&mut self, status: &BTreeMap<u128, AgentStatus>) -> Checked {
        for (view, candidates) in self.core.elections() {
            let previous = self.terms.get(&view.group).copied().unwrap_or(0);
            if view.term < previous {
                return fail(
                    invariant::TERMS_NEVER_DECREASE,
                    format!("group {:?} went from term {previous} to {}", view.group, view.term),
                );
            }
            if view.leader != candidates.first().copied() {
                return fail(
                    invariant::LEADER_IS_LIVE_CANDIDATE,
                    format!("group {:?} led by {:?}, FIFO {candidates:?}", view.group, view.leader),
                );
            }
            if view.leader.is_some() && view.term == 0 {
                return fail(
                    invariant::LEADER_IS_LIVE_CANDIDATE,
                    format!("group {:?} led in term 0", view.group),
                );
            }
            for (position, candidate) in candidates.iter().enumerate() {
                if !matches!(
                    status.get(&candidate.0),
                    Some(AgentStatus::Alive | AgentStatus::Unreachable)
                ) {
                    return fail(
                        invariant::DEAD_HOLDS_NOTHING,
                        format!(
                            "group {:?} FIFO holds {candidate} which is {:?}",
                            view.group,
                            status.get(&candidate.0)
                        ),
                    );
                }
                if candidates[position + 1..].contains(candidate) {
                    return fail(
                        invariant::LEADER_IS_LIVE_CANDIDATE,
                        format!("group {:?} FIFO holds {candidate} twice", view.group),
                    );
                }
            }
            if view.term != previous {
                self.terms.insert(Arc::clone(&view.group), view.term);
            }
        }
        Ok(())
    }

    fn compare_state(
        &self,
        agents: &[agentkeeper::core::AgentView],
        leases: &[agentkeeper::core::events::LeaseView],
        tasks: &[TaskView],
    ) -> Checked {
        let model_agents = self.model.agents();
        // Cards are compared where they travel (Register's event, GetAgent, Find); here the
        // lifecycle fields, which is what time changes.
        let lifecycle =
            |a: &agentkeeper::core::AgentView| (a.agent_id, a.status, a.registered_at, a.last_heartbeat_at, a.ttl_ms);
        let same = agents.len() == model_agents.len()
            && agents
                .iter()
                .zip(&model_agents)
                .all(|(a, b)| lifecycle(a) == lifecycle(b));
        if !same {
            let at = agents.iter().zip(&model_agents).position(|(a, b)| a != b);
            return fail(
                invariant::MODEL_STATE,
                format!(
                    "agents differ ({} in the core, {} in the model), first at {at:?}: core {} model {}",
                    agents.len(),
                    model_agents.len(),
                    brief(&at.map(|i| &agents[i])),
                    brief(&at.map(|i| &model_agents[i]))
                ),
            );
        }
        let model_leases = self.model.leases();
        if leases != model_leases.as_slice() {
            return fail(
                invariant::MODEL_STATE,
                format!("leases differ: core {} model {}", brief(&leases), brief(&model_leases)),
            );
        }
        let elections = self.core.elections();
        let model_elections = self.model.elections();
        if elections != model_elections {
            return fail(
                invariant::MODEL_STATE,
                format!(
                    "elections differ: core {} model {}",
                    brief(&elections),
                    brief(&model_elections)
                ),
            );
        }
        if tasks.len() != self.model.tasks().len() || !tasks.iter().zip(self.model.tasks()).all(|(a, b)| a == b) {
            let model_tasks: Vec<&TaskView> = self.model.tasks().collect();
            let at = tasks
                .iter()
                .zip(&model_tasks)
                .position(|(a, b)| a != *b)
                .unwrap_or(tasks.len().min(model_tasks.len()));
            return fail(
                invariant::MODEL_STATE,
                format!(
                    "tasks differ ({} in the core, {} in the model), first at #{at}: core {} model {}",
                    tasks.len(),
                    model_tasks.len(),
                    brief(&tasks.get(at)),
                    brief(&model_tasks.get(at))
                ),
            );
        }
        let stats = self.core.stats();
        let counters = (
            stats.sequence_next,
            stats.fencing_token_last,
            stats.watchers,
            stats.policies,
            stats.claims_waiting,
        );
        let model_counters = (
            self.model.sequence_next(),
            self.model.token_last(),
            self.model.watchers(),
            self.model.policies_len(),
            self.model.waiting_claims(),
        );
        if counters != model_counters {
            return fail(
                invariant::MODEL_STATE,
                format!(
                    "(sequence_next, token_last, watchers, policies, claims_waiting): core {counters:?} model \
                     {model_counters:?}"
                ),
            );
        }
        let task_counts = (
            stats.tasks_pending,
            stats.tasks_claimed,
            stats.tasks_completed,
            stats.tasks_dead,
        );
        let model_task_counts = (
            self.model.task_count(TaskStatus::Pending),
            self.model.task_count(TaskStatus::Claimed),
            self.model.task_count(TaskStatus::Completed),
            self.model.task_count(TaskStatus::Dead),
        );
        if task_counts != model_task_counts {
            return fail(
                invariant::MODEL_STATE,
                format!(
                    "task counts (pending, claimed, completed, dead): core {task_counts:?} model {model_task_counts:?}"
                ),
            );
        }
        if self.policies_touched && self.core.policies() != self.model.policies() {
            return fail(
                invariant::MODEL_STATE,
                format!(
                    "policies differ: core {} model {}",
                    brief(&self.core.policies()),
                    brief(&self.model.policies())
                ),
            );
        }
        Ok(())
    }
}

/// The core's answers to waiting claims against the model's, in order (errors by class).
fn compare_answers(answers: &[(WaiterId, Outcome)], expected: &[(WaiterId, Expected)]) -> Checked {
    let agree = |(waiter, outcome): &(WaiterId, Outcome), (want_waiter, want): &(WaiterId, Expected)| {
        waiter == want_waiter
            && match (outcome, want) {
                (Err(error), Err(code)) => error.code == *code && !error.message.is_empty(),
                (Ok(got), Ok(want)) => got == want,
                _ => false,
            }
    };
    if answers.len() == expected.len() && answers.iter().zip(expected).all(|(a, b)| agree(a, b)) {
        return Ok(());
    }
    let at = answers
        .iter()
        .zip(expected)
        .position(|(a, b)| !agree(a, b))
        .unwrap_or(answers.len().min(expected.len()));
    fail(
        invariant::MODEL_REPLY,
        format!(
            "{} answers to waiting claims from the core, {} from the model; first difference at #{at}: core {} \
             model {}",
            answers.len(),
            expected.len(),
            brief(&answers.get(at)),
            brief(&expected.get(at))
        ),
    )
}

/// The core's events against the model's, in order.
fn compare_events(events: &[Arc<Event>], expected: &[Arc<Event>]) -> Checked {
    if events == expected {
        return Ok(());
    }
    let at = events
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(events.len().min(expected.len()));
    fail(
        invariant::MODEL_EVENTS,
        format!(
            "{} events from the core, {} from the model; first difference at #{at}: core {} model {}",
            events.len(),
            expected.len(),
            brief(&events.get(at)),
            brief(&expected.get(at))
        ),
    )
}

/// The first part of two core states that differs, readably.
fn snapshot_difference(before: &CoreSnapshot, after: &CoreSnapshot) -> String {
    fn first<T: PartialEq + std::fmt::Debug>(name: &str, before: &[T], after: &[T]) -> Option<String> {
        if before == after {
            return None;
        }
        let at = before
            .iter()
            .zip(after)
            .position(|(a, b)| a != b)
            .unwrap_or(before.len().min(after.len()));
        Some(format!(
            "{name}: {} before the crash, {} recovered; first difference at #{at}: before {} recovered {}",
            before.len(),
            after.len(),
            brief(&before.get(at)),
            brief(&after.get(at))
        ))
    }
    let counters = |s: &CoreSnapshot| {
        (
            s.registration_next,
            s.token_last,
            s.sequence_next,
            s.hash_seed,
            s.rng_seed,
            s.rng_stream,
            s.rng_word_pos,
            s.task_order_next,
            s.waiter_next,
        )
    };
    first("agents", &before.agents, &after.agents)
        .or_else(|| first("leases", &before.leases, &after.leases))
        .or_else(|| first("groups", &before.groups, &after.groups))
        .or_else(|| first("policies", &before.policies, &after.policies))
        .or_else(|| first("events", &before.events, &after.events))
        .or_else(|| first("tasks", &before.tasks, &after.tasks))
        .or_else(|| first("waiting claims", &before.waiters, &after.waiters))
        .unwrap_or_else(|| {
            format!(
                "(registration_next, token_last, sequence_next, hash_seed, rng seed, stream, word position, \
                 task_order_next, waiter_next): before {:?} recovered {:?}",
                counters(before),
                counters(after)
            )
        })
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        return format!("panic: {text}");
    }
    if let Some(text) = panic.downcast_ref::<String>() {
        return format!("panic: {text}");
    }
    "panic with a non-text payload".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::Trace;

    fn runner_after(steps: &str) -> Runner {
        let trace = Trace::parse(&format!(
            "agentkeeper-sim trace v1
config seed=3 start_ms=1700000000000 dead_retention_ms=60000 event_ring_max=1024 watchers_max=4 agents_max=8 \
leases_max=4 policies_max=4 groups_max=2 snapshot_every=1000 planted_bug=none
{steps}"
        ))
        .expect("the trace parses");
        let mut runner = Runner::new(&trace.config);
        for step in &trace.steps {
            runner.step(step).expect("the steps before the damage run clean");
        }
        runner
    }

    const TWO_AGENTS: &str =
        "0 1700000000000 register ttl=30 name=\"a\" desc=\"\" version=\"\" tools=[] caps=[] meta=[]
1 1700000000000 register ttl=30 name=\"b\" desc=\"\" version=\"\" tools=[] caps=[] meta=[]
";

    fn crash(index: usize) -> Step {
        Step {
            index,
            at: 1_700_000_001_000,
            op: Op::Crash { torn: None },
            lost: false,
            io: crate::step::Io::Durable,
        }
    }

    #[test]
    fn a_record_damaged_before_the_tail_is_reported_as_recovery_torn_tail_cut() {
        let mut runner = runner_after(TWO_AGENTS);
        // The first record's payload: the scan must refuse the log, which loses both agents.
        runner.image.damage(agentkeeper::store::wal::HEADER_BYTES + 9);
        let violation = runner.step(&crash(2)).expect_err("damage is not a torn tail");
        assert_eq!(violation.invariant, invariant::RECOVERY_TORN_TAIL_CUT, "{violation}");
        assert!(violation.detail.contains("damaged"), "{violation}");
    }

    #[test]
    fn a_damaged_last_record_cut_as_torn_when_none_was_torn_is_reported() {
        let mut runner = runner_after(TWO_AGENTS);
        let last = usize::try_from(runner.image.whole_len()).unwrap() - 1;
        runner.image.damage(last);
        let violation = runner.step(&crash(2)).expect_err("an acknowledged record was lost");
        assert_eq!(violation.invariant, invariant::RECOVERY_TORN_TAIL_CUT, "{violation}");
        assert!(
            violation.detail.contains("an untorn log of 2 whole records"),
            "{violation}"
        );
    }

    #[test]
    fn an_intact_image_recovers_and_every_stream_ends() {
        let mut runner = runner_after(&format!(
            "{TWO_AGENTS}2 1700000000000 watch topics=[] from=0 buffer=8\n"
        ));
        assert!(runner.subscription_open(SubRef(2)));
        runner.step(&crash(3)).expect("a clean recovery");
        assert!(!runner.subscription_open(SubRef(2)));
        assert_eq!(runner.core().stats().watchers, 0);
        assert_eq!(runner.core().agents().len(), 2);
    }
}
