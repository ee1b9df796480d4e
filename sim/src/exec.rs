//! Runs steps against the real core and the reference model side by side, plays the driver's
//! part for subscribers (bounded buffers, cut-off of one that overflows, Unwatch), folds every
//! reply and delivered event into the digest, and checks every invariant after every step.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use agentkeeper::core::events::{Delivery, SubscriberId};
use agentkeeper::core::types::{AgentId, Millis};
use agentkeeper::core::{Command, Core, ErrorCode, Event, EventPayload, Outcome, Reply, Topic};

use crate::digest::Digest;
use crate::invariants::{self as inv, Checker, Failures, State};
use crate::model::{self, Expected, Model};
use crate::step::{AgentRef, Op, SimConfig, Step, SubRef, TokenRef};

/// A clock move at least this long counts as a jump (a paused process) in the coverage counts.
pub const CLOCK_JUMP_MS_MIN: Millis = 60_000;
/// Reply texts quoted in a failure report are cut to this many characters.
const DETAIL_CHARS_MAX: usize = 1500;

/// An invariant that failed: where, which, and what was seen.
#[derive(Clone, Debug)]
pub struct Violation {
    pub step: usize,
    pub at: Millis,
    pub invariant: &'static str,
    pub detail: String,
    /// Other invariants the same step broke.
    pub also: Vec<&'static str>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {} at {} invariant {}: {}",
            self.step, self.at, self.invariant, self.detail
        )?;
        if !self.also.is_empty() {
            write!(f, " (also broken in this step: {})", self.also.join(", "))?;
        }
        Ok(())
    }
}

/// Which filter a subscription has.
#[derive(Clone, Debug)]
pub enum SubFilter {
    Topics(Vec<String>),
    Election(String),
}

impl SubFilter {
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            SubFilter::Topics(prefixes) => model::topics_match(prefixes, event.topic),
            SubFilter::Election(group) => {
                event.topic == Topic::LeaderChanged
                    && matches!(&event.payload, EventPayload::Election(view) if *view.group == **group)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubState {
    /// The core routes events to it.
    Open,
    /// Its buffer overflowed; the simulator (as the driver) ended it with Unwatch.
    CutOff,
    /// Its client closed it, or its Watch reply was lost.
    Closed,
}

/// One subscriber as its client and the driver see it.
#[derive(Clone, Debug)]
pub struct SimSub {
    pub id: SubscriberId,
    pub filter: SubFilter,
    /// Live events below this sequence are not for it (they came by replay, or precede it).
    pub live_from: u64,
    pub capacity: usize,
    pub buffer: VecDeque<u64>,
    pub state: SubState,
    /// The last sequence put in its buffer or replayed: where a resume continues.
    pub last_delivered: u64,
}

/// How often each op, reply class, event topic and fault happened: shows what a seed exercised.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    pub counts: BTreeMap<&'static str, u64>,
}

impl Coverage {
    pub fn add(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    pub fn get(&self, what: &str) -> u64 {
        self.counts.get(what).copied().unwrap_or(0)
    }

    pub fn merge(&mut self, other: &Coverage) {
        for (what, count) in &other.counts {
            *self.counts.entry(what).or_default() += count;
        }
    }
}

fn error_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidArgument => "reply.INVALID_ARGUMENT",
        ErrorCode::NotFound => "reply.NOT_FOUND",
        ErrorCode::PermissionDenied => "reply.PERMISSION_DENIED",
        ErrorCode::FailedPrecondition => "reply.FAILED_PRECONDITION",
        ErrorCode::ResourceExhausted => "reply.RESOURCE_EXHAUSTED",
        ErrorCode::OutOfRange => "reply.OUT_OF_RANGE",
        ErrorCode::Unavailable => "reply.UNAVAILABLE",
    }
}

fn cut(text: String) -> String {
    if text.chars().count() <= DETAIL_CHARS_MAX {
        return text;
    }
    let head: String = text.chars().take(DETAIL_CHARS_MAX).collect();
    format!("{head}…")
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

pub struct Executor {
    core: Core,
    model: Model,
    checker: Checker,
    start_ms: Millis,
    now: Millis,
    /// Register step -> the id it returned.
    registered: BTreeMap<usize, AgentId>,
    /// Acquire/Renew step -> the token in its reply.
    grants: BTreeMap<usize, u64>,
    /// Watch/WatchElection step -> its subscriber.
    subs: BTreeMap<usize, SimSub>,
    open: BTreeSet<usize>,
    by_subscriber: BTreeMap<SubscriberId, usize>,
    /// The all-topics subscriber through which the simulator sees every event.
    tap: SubscriberId,
    digest: Digest,
    deliveries: Vec<Delivery>,
    steps: u64,
    pub coverage: Coverage,
}

impl Executor {
    pub fn new(config: &SimConfig) -> Executor {
        let start = config.start_ms;
        let mut core = Core::new(config.core.clone(), start);
        let mut model = Model::new(&config.core, start);
        let tap_command = Command::Watch {
            topics: Vec::new(),
            from_sequence: 0,
        };
        let tap = match core.apply(start, tap_command.clone()) {
            Ok(Reply::Watching { subscriber, .. }) => subscriber,
            other => panic!("the simulator's own all-topics watch failed: {other:?}"),
        };
        let expected = model.apply(start, &tap_command, &Ok(Reply::Done));
        assert!(expected.is_ok(), "the model refused the all-topics watch");
        Executor {
            core,
            model,
            checker: Checker::new(config.core.event_ring_max),
            start_ms: start,
            now: start,
            registered: BTreeMap::new(),
            grants: BTreeMap::new(),
            subs: BTreeMap::new(),
            open: BTreeSet::new(),
            by_subscriber: BTreeMap::new(),
            tap,
            digest: Digest::default(),
            deliveries: Vec::new(),
            steps: 0,
            coverage: Coverage::default(),
        }
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    /// Where simulated time started.
    pub fn model_start(&self) -> Millis {
        self.start_ms
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn sub(&self, opened_at: usize) -> Option<&SimSub> {
        self.subs.get(&opened_at)
    }

    /// Runs one step and checks everything; returns the reply the client saw (None for ticks and
    /// consumes).
    pub fn execute(&mut self, step: &Step) -> Result<Option<Outcome>, Violation> {
        let mut failures = Failures::default();
        if step.at >= self.now + CLOCK_JUMP_MS_MIN {
            self.coverage.add("fault.clock_jump");
        }
        self.now = self.now.max(step.at);
        self.steps += 1;
        self.coverage.add(step.op.name());
        if step.lost {
            self.coverage.add("fault.lost_reply");
        }
        self.digest.u64(step.index as u64);
        let mut answered: Option<(Command, Outcome, Expected)> = None;
        match &step.op {
            Op::Tick => {
                let now = self.now;
                self.guarded(step, |core| core.tick(now))?;
                self.model.tick(now);
            }
            Op::Consume { sub, count } => self.consume(*sub, *count),
            op => {
                let command = self.resolve(op);
                let outcome = self.apply(step, command.clone())?;
                let expected = self.model.apply(self.now, &command, &outcome);
                self.learn(step, &outcome);
                answered = Some((command, outcome, expected));
            }
        }
        self.core.drain_deliveries(&mut self.deliveries);
        let deliveries = std::mem::take(&mut self.deliveries);
        let events = self.deliver(deliveries, &mut failures);
        self.check(step, &events, answered.as_ref(), &mut failures);
        if let Some((first, detail)) = failures.found.first().cloned() {
            let mut also: Vec<&'static str> = failures.found[1..].iter().map(|(name, _)| *name).collect();
            also.dedup();
            also.retain(|name| *name != first);
            return Err(Violation {
                step: step.index,
                at: self.now,
                invariant: first,
                detail,
                also,
            });
        }
        Ok(answered.map(|(_, outcome, _)| outcome))
    }

    /// Calls the core, turning a panic (a failed assertion inside it) into a violation.
    fn guarded<T>(&mut self, step: &Step, call: impl FnOnce(&mut Core) -> T) -> Result<T, Violation> {
        let core = &mut self.core;
        crate::quietly(|| panic::catch_unwind(AssertUnwindSafe(|| call(core)))).map_err(|payload| Violation {
            step: step.index,
            at: self.now,
            invariant: inv::CORE_PANIC,
            detail: panic_message(payload.as_ref()),
            also: Vec::new(),
        })
    }

    fn apply(&mut self, step: &Step, command: Command) -> Result<Outcome, Violation> {
        let now = self.now;
        let outcome = self.guarded(step, |core| core.apply(now, command))?;
        self.digest.outcome(&outcome);
        match &outcome {
            Ok(Reply::Lease { acquired: false, .. }) => self.coverage.add("lease.contended"),
            Ok(Reply::Watching { replay, .. }) if !replay.is_empty() => self.coverage.add("watch.replayed"),
            Ok(_) => {}
            Err(error) => self.coverage.add(error_name(error.code)),
        }
        Ok(outcome)
    }

    fn agent_id(&self, agent: &AgentRef) -> String {
        match agent {
            AgentRef::Registered(step) => match self.registered.get(step) {
                Some(id) => id.to_string(),
                // Well formed and (all but surely) unknown: the Register failed or was dropped.
                None => format!("{:032x}", *step as u128 + 1),
            },
            AgentRef::Literal(text) => text.clone(),
        }
    }

    fn token(&self, token: TokenRef) -> u64 {
        match token {
            TokenRef::Granted { step, offset } => {
                self.grants.get(&step).map_or(0, |&t| t.saturating_add_signed(offset))
            }
            TokenRef::Literal(token) => token,
        }
    }

    fn subscriber(&self, sub: SubRef) -> SubscriberId {
        self.subs.get(&sub.0).map_or(SubscriberId(u64::MAX), |s| s.id)
    }

    /// The core command a step stands for, with its references resolved.
    fn resolve(&self, op: &Op) -> Command {
        match op {
            Op::Tick | Op::Consume { .. } => unreachable!("{} is not a core command", op.name()),
            Op::Register { card, ttl_seconds } => Command::Register {
                card: card.clone(),
                ttl_seconds: *ttl_seconds,
            },
            Op::Heartbeat { agent } => Command::Heartbeat {
                agent_id: self.agent_id(agent),
            },
            Op::Deregister { agent } => Command::Deregister {
                agent_id: self.agent_id(agent),
            },
            Op::GetAgent { agent } => Command::GetAgent {
                agent_id: self.agent_id(agent),
            },
            Op::Find { query, tools, limit } => Command::Find {
                query: query.clone(),
                tools: tools.clone(),
                limit: *limit,
            },
            Op::Watch {
                topics, from_sequence, ..
            } => Command::Watch {
                topics: topics.clone(),
                from_sequence: *from_sequence,
            },
            Op::Unwatch { sub } => Command::Unwatch {
                subscriber: self.subscriber(*sub),
            },
            Op::Acquire {
                key,
                agent,
                ttl_seconds,
            } => Command::AcquireLease {
                task_id: key.clone(),
                agent_id: self.agent_id(agent),
                ttl_seconds: *ttl_seconds,
            },
            Op::Renew {
                key,
                agent,
                token,
                ttl_seconds,
            } => Command::RenewLease {
                task_id: key.clone(),
                agent_id: self.agent_id(agent),
                token: self.token(*token),
                ttl_seconds: *ttl_seconds,
            },
            Op::Release { key, agent, token } => Command::ReleaseLease {
                task_id: key.clone(),
                agent_id: self.agent_id(agent),
                token: self.token(*token),
            },
            Op::Campaign { group, agent } => Command::Campaign {
                group: group.clone(),
                agent_id: self.agent_id(agent),
            },
            Op::Resign { group, agent } => Command::Resign {
                group: group.clone(),
                agent_id: self.agent_id(agent),
            },
            Op::WatchElection { group, .. } => Command::WatchElection { group: group.clone() },
            Op::SetPolicy { policy } => Command::SetPolicy { policy: policy.clone() },
            Op::DeletePolicy { id } => Command::DeletePolicy { id: id.clone() },
            Op::ListPolicies { prefix } => Command::ListPolicies {
                subject_prefix: prefix.clone(),
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
        }
    }

    /// Records what later steps may refer to: ids, tokens, subscriptions.
    fn learn(&mut self, step: &Step, outcome: &Outcome) {
        let sequence_next = self.core.stats().sequence_next;
        match (&step.op, outcome) {
            (Op::Register { .. }, Ok(Reply::Registered { agent_id })) => {
                self.registered.insert(step.index, *agent_id);
            }
            (Op::Acquire { .. } | Op::Renew { .. }, Ok(Reply::Lease { lease, .. })) => {
                self.grants.insert(step.index, lease.token);
            }
            (
                Op::Watch {
                    topics,
                    from_sequence,
                    buffer,
                },
                Ok(Reply::Watching { subscriber, replay }),
            ) => {
                let sub = SimSub {
                    id: *subscriber,
                    filter: SubFilter::Topics(topics.clone()),
                    live_from: (*from_sequence).max(sequence_next),
                    capacity: (*buffer).max(1) as usize,
                    buffer: VecDeque::new(),
                    state: SubState::Open,
                    last_delivered: replay.last().map_or(0, |e| e.sequence),
                };
                self.open_sub(step, sub);
            }
            (Op::WatchElection { group, buffer }, Ok(Reply::WatchingElection { subscriber, .. })) => {
                let sub = SimSub {
                    id: *subscriber,
                    filter: SubFilter::Election(group.clone()),
                    live_from: sequence_next,
                    capacity: (*buffer).max(1) as usize,
                    buffer: VecDeque::new(),
                    state: SubState::Open,
                    last_delivered: 0,
                };
                self.open_sub(step, sub);
            }
            (Op::Unwatch { sub }, _) => {
                if let Some(s) = self.subs.get_mut(&sub.0)
                    && s.state == SubState::Open
                {
                    s.state = SubState::Closed;
                    self.open.remove(&sub.0);
                }
            }
            _ => {}
        }
    }

    fn open_sub(&mut self, step: &Step, sub: SimSub) {
        let id = sub.id;
        self.by_subscriber.insert(id, step.index);
        self.subs.insert(step.index, sub);
        self.open.insert(step.index);
        if step.lost {
            // The client never got the stream: the driver's failed reply send ends it at once.
            self.subs.get_mut(&step.index).expect("just inserted").state = SubState::Closed;
            self.open.remove(&step.index);
            self.derived_unwatch(id);
        }
    }

    /// The driver's Unwatch (overflow, or a stream whose reply could not be sent), at the same
    /// `now`, checked against the model like any command.
    fn derived_unwatch(&mut self, subscriber: SubscriberId) {
        let command = Command::Unwatch { subscriber };
        let now = self.now;
        let core = &mut self.core;
        let caught = crate::quietly(|| panic::catch_unwind(AssertUnwindSafe(|| core.apply(now, command.clone()))));
        let outcome = match caught {
            Ok(outcome) => outcome,
            Err(payload) => Err(agentkeeper::core::CoreError::new(
                ErrorCode::Unavailable,
                format!("panic: {}", panic_message(payload.as_ref())),
            )),
        };
        let _ = self.model.apply(now, &command, &outcome);
        self.digest.outcome(&outcome);
    }

    fn consume(&mut self, sub: SubRef, count: u32) {
        if let Some(s) = self.subs.get_mut(&sub.0) {
            for _ in 0..count {
                if s.buffer.pop_front().is_none() {
                    break;
                }
            }
        }
    }

    /// Routes the step's deliveries: the tap's are the step's events; the others must be exactly
    /// what each open subscriber's filter selects, and go into its bounded buffer, where an
    /// overflow cuts it off (then Unwatch, as the driver does). Returns the step's events.
    fn deliver(&mut self, deliveries: Vec<Delivery>, failures: &mut Failures) -> Vec<Arc<Event>> {
        let mut events: Vec<Arc<Event>> = Vec::new();
        let mut routed: BTreeMap<SubscriberId, Vec<u64>> = BTreeMap::new();
        for delivery in &deliveries {
            if delivery.subscriber == self.tap {
                self.digest.event(&delivery.event);
                self.coverage.add(model::topic_name(delivery.event.topic));
                events.push(Arc::clone(&delivery.event));
            } else {
                routed
                    .entry(delivery.subscriber)
                    .or_default()
                    .push(delivery.event.sequence);
            }
        }
        self.check_routing(&events, &routed, failures);
        let mut cut_off: Vec<SubscriberId> = Vec::new();
        for delivery in deliveries.iter().filter(|d| d.subscriber != self.tap) {
            let Some(&key) = self.by_subscriber.get(&delivery.subscriber) else {
                continue;
            };
            let sub = self.subs.get_mut(&key).expect("indexed subscriber");
            if sub.state != SubState::Open {
                continue;
            }
            if sub.buffer.len() >= sub.capacity {
                sub.state = SubState::CutOff;
                self.open.remove(&key);
                self.digest.tag(b'x');
                self.digest.u64(sub.id.0);
                self.digest.u64(sub.last_delivered);
                self.coverage.add("fault.subscriber_cut_off");
                cut_off.push(sub.id);
                continue;
            }
            sub.buffer.push_back(delivery.event.sequence);
            sub.last_delivered = delivery.event.sequence;
            self.digest.u64(sub.id.0);
            self.digest.u64(delivery.event.sequence);
        }
        for id in cut_off {
            self.derived_unwatch(id);
        }
        events
    }

    /// `watch.contiguous`: each open subscriber got exactly the step's events its filter selects
    /// from its start on, in order; nobody else got anything.
    fn check_routing(&self, events: &[Arc<Event>], routed: &BTreeMap<SubscriberId, Vec<u64>>, failures: &mut Failures) {
        for (id, sequences) in routed {
            let open = self.by_subscriber.get(id).is_some_and(|key| self.open.contains(key));
            if !open {
                failures.fail(
                    inv::WATCH_CONTIGUOUS,
                    format!(
                        "events {sequences:?} were routed to subscriber {} which is not open",
                        id.0
                    ),
                );
            }
        }
        for key in &self.open {
            let sub = &self.subs[key];
            let want: Vec<u64> = events
                .iter()
                .filter(|e| e.sequence >= sub.live_from && sub.filter.matches(e))
                .map(|e| e.sequence)
                .collect();
            let got = routed.get(&sub.id).map_or(&[][..], Vec::as_slice);
            if want != got {
                failures.fail(
                    inv::WATCH_CONTIGUOUS,
                    format!(
                        "subscriber {} ({:?}, from sequence {}) got {got:?} of this step's events, its filter selects {want:?}",
                        sub.id.0, sub.filter, sub.live_from
                    ),
                );
            }
        }
    }

    /// Every check, in the order of `invariants::ALL`.
    fn check(
        &mut self,
        step: &Step,
        events: &[Arc<Event>],
        answered: Option<&(Command, Outcome, Expected)>,
        failures: &mut Failures,
    ) {
        let deregistered = match answered {
            Some((Command::Deregister { agent_id }, Ok(_), _)) => agentkeeper::core::types::Id128::parse(agent_id),
            _ => None,
        };
        self.checker.events(events, deregistered, failures);
        if let Some((Command::Watch { topics, from_sequence }, Ok(Reply::Watching { replay, .. }), _)) = answered {
            self.check_replay(topics, *from_sequence, replay, failures);
        }
        let agents = self.core.agents();
        let leases = self.core.leases();
        let elections = self.core.elections();
        let policies = self.core.policies();
        let state = State {
            now: self.now,
            agents: &agents,
            leases: &leases,
            elections: &elections,
            policies: &policies,
        };
        self.checker.state(&state, failures);
        self.check_policy_sample(step, &policies, failures);
        if let Some((command, Ok(reply), _)) = answered {
            self.checker.reply(command, reply, &state, failures);
        }
        let core = &self.core;
        if let Err(payload) = crate::quietly(|| panic::catch_unwind(AssertUnwindSafe(|| core.check_invariants()))) {
            failures.fail(inv::CORE_CHECK_INVARIANTS, panic_message(payload.as_ref()));
        }
        let (core_next, model_next) = (self.core.next_deadline(), self.model.next_deadline());
        let in_time = match (core_next, model_next) {
            (Some(core), Some(model)) => core <= model,
            (core, model) => core.is_none() == model.is_none(),
        };
        if !in_time {
            failures.fail(
                inv::TIMERS_NEXT_DEADLINE_NOT_LATE,
                format!("next_deadline() is {core_next:?}, the earliest deadline is {model_next:?}"),
            );
        }
        if let Some((command, outcome, expected)) = answered
            && let Some(detail) = self.compare_reply(command, outcome, expected)
        {
            failures.fail(inv::MODEL_REPLY, detail);
        }
        let modelled = self.model.take_events();
        if modelled.as_slice() != events {
            failures.fail(inv::MODEL_EVENTS, event_difference(events, &modelled));
        }
        if let Some(detail) = self.compare_state(&state) {
            failures.fail(inv::MODEL_STATE, detail);
        }
    }

    /// A resume replays exactly the retained events from `from_sequence` on that its topics select.
    fn check_replay(&self, topics: &[String], from_sequence: u64, replay: &[Arc<Event>], failures: &mut Failures) {
        let want: Vec<u64> = if from_sequence == 0 {
            Vec::new()
        } else {
            self.checker
                .ring
                .iter()
                .filter(|e| e.sequence >= from_sequence && model::topics_match(topics, e.topic))
                .map(|e| e.sequence)
                .collect()
        };
        let got: Vec<u64> = replay.iter().map(|e| e.sequence).collect();
        if want != got {
            failures.fail(
                inv::WATCH_CONTIGUOUS,
                cut(format!(
                    "watch {topics:?} from {from_sequence} replayed {got:?}, the retained events it selects are {want:?}"
                )),
            );
        }
    }

    /// One CheckPolicy per step over the core's own table, a query drawn from the step number (not
    /// from the workload's RNG, so checking never changes the run).
    fn check_policy_sample(&self, step: &Step, policies: &[agentkeeper::core::types::Policy], failures: &mut Failures) {
        const ALPHABET: [char; 3] = ['a', 'b', ':'];
        let mut bits = (step.index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1_e995;
        let mut field = || {
            let len = (bits % 4) as usize;
            bits /= 4;
            let text: String = (0..len)
                .map(|_| {
                    let c = ALPHABET[(bits % 3) as usize];
                    bits /= 3;
                    c
                })
                .collect();
            text
        };
        let (subject, action, resource) = (field(), field(), field());
        let decision = self.core.decide(&subject, &action, &resource);
        let brute = model::decide(policies, &subject, &action, &resource);
        if decision != brute {
            failures.fail(
                inv::POLICY_CHECK_EQUALS_BRUTE_FORCE,
                format!(
                    "check ({subject:?}, {action:?}, {resource:?}) decides {decision:?}, brute force over the core's \
                     {} policies says {brute:?}",
                    policies.len()
                ),
            );
        }
    }

    fn compare_reply(&self, command: &Command, outcome: &Outcome, expected: &Expected) -> Option<String> {
        let agrees = match (outcome, expected) {
            (Err(error), Err(code)) => error.code == *code && !error.message.is_empty(),
            (Ok(Reply::Agents(found)), Ok(Reply::Agents(_))) => match command {
                Command::Find { query, tools, limit } if !query.is_empty() => {
                    self.ranked_find_agrees(tools, *limit, found)
                }
                _ => outcome.as_ref().ok() == expected.as_ref().ok(),
            },
            (Ok(reply), Ok(want)) => reply == want,
            _ => false,
        };
        if agrees {
            return None;
        }
        let core = match outcome {
            Ok(reply) => format!("{reply:?}"),
            Err(error) => format!("{:?}: {}", error.code, error.message),
        };
        Some(cut(format!(
            "{} answered {core}; the model expects {expected:?}",
            command.name()
        )))
    }

    /// A Find with a query ranks (BM25, not modelled): it must return the right number of the
    /// right agents, each exactly as the model sees it.
    fn ranked_find_agrees(&self, tools: &[String], limit: u32, found: &[agentkeeper::core::AgentView]) -> bool {
        let candidates = self.model.find_candidates(tools);
        let limit = match limit {
            0 => 10,
            n => n.min(1000) as usize,
        };
        let mut ids: Vec<AgentId> = found.iter().map(|a| a.agent_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len() == found.len()
            && found.len() == candidates.len().min(limit)
            && found.iter().all(|a| candidates.contains(a))
    }

    fn compare_state(&self, state: &State<'_>) -> Option<String> {
        let agents = self.model.agents();
        if state.agents != agents.as_slice() {
            let at = state.agents.iter().zip(&agents).position(|(a, b)| a != b);
            return Some(cut(format!(
                "agents differ (core {} known, model {}); first difference at {at:?}: core {:?}, model {:?}",
                state.agents.len(),
                agents.len(),
                at.and_then(|i| state.agents.get(i)),
                at.and_then(|i| agents.get(i))
            )));
        }
        let leases = self.model.leases();
        if state.leases != leases.as_slice() {
            return Some(cut(format!("leases differ: core {:?}, model {leases:?}", state.leases)));
        }
        let elections = self.model.elections();
        if state.elections != elections.as_slice() {
            return Some(cut(format!(
                "elections differ: core {:?}, model {elections:?}",
                state.elections
            )));
        }
        let policies = self.model.policies();
        if state.policies != policies.as_slice() {
            return Some(cut(format!(
                "policies differ: core {:?}, model {policies:?}",
                state.policies
            )));
        }
        let stats = self.core.stats();
        let counters = (stats.sequence_next, stats.fencing_token_last, stats.watchers);
        let modelled = (
            self.model.sequence_next(),
            self.model.token_last(),
            self.model.watchers(),
        );
        if counters != modelled {
            return Some(format!(
                "(sequence_next, fencing_token_last, watchers): core {counters:?}, model {modelled:?}"
            ));
        }
        None
    }
}

fn event_difference(core: &[Arc<Event>], model: &[Arc<Event>]) -> String {
    let render = |events: &[Arc<Event>]| -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let what = match &e.payload {
                    EventPayload::Agent(a) => format!("agent {} {:?}", a.agent_id, a.status),
                    EventPayload::Lease(l) => format!(
                        "key {:?} holder {} token {} expires {}",
                        l.task_id, l.holder, l.token, l.expires_at
                    ),
                    EventPayload::Election(v) => format!("group {:?} leader {:?} term {}", v.group, v.leader, v.term),
                };
                format!(
                    "#{} {} at {} ({what})",
                    e.sequence,
                    model::topic_name(e.topic),
                    e.occurred_at
                )
            })
            .collect()
    };
    let (core, model) = (render(core), render(model));
    let at = core
        .iter()
        .zip(&model)
        .position(|(a, b)| a != b)
        .unwrap_or(core.len().min(model.len()));
    cut(format!(
        "the core emitted {} events, the model {}; first difference at {at}: core {:?}, model {:?}; core: {core:?}; model: {model:?}",
        core.len(),
        model.len(),
        core.get(at),
        model.get(at)
    ))
}
