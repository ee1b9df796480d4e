//! Runs steps against the real core, through the same protocol the daemon's driver uses
//! (`core::machine::Machine`), and the reference model side by side. This file is the
//! simulator's driver: it hands each step to the machine and does what the outputs say, as
//! `src/driver/` does, with a simulated disk (`image.rs`, with its faults) and simulated clients
//! (their buffers, lost replies, hang-ups). `checks.rs` holds the invariants it checks.
//!
//! Order of checks within a step: the named safety properties first (so a planted bug is reported
//! by the property it breaks), then agreement with the reference model. The runner never decides
//! anything random: a step says everything, so a trace replays exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use agentkeeper::core::events::SubscriberId;
use agentkeeper::core::machine::{CallerId, Input, Machine, Output, Overflow, StreamEnd};
use agentkeeper::core::tasks::WaiterId;
use agentkeeper::core::types::Millis;
use agentkeeper::core::{Command, Core, ErrorCode, Event, EventPayload, Outcome, Reply, Topic};

use crate::checks::{Checked, brief, compare_events, fail, panic_text};
use crate::digest::Digest;
use crate::image::StoreImage;
use crate::model::{Expected, Model};
use crate::step::{ClaimRef, Io, Op, SimConfig, Step, SubRef};

pub use crate::checks::{Violation, invariant};

mod clients;
mod recovery;

use clients::{Subscription, undelivered_claim};
use recovery::DurablePoint;

/// How often each op ran and each fault struck: what the coverage test asserts on.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    pub ops: BTreeMap<&'static str, u64>,
    pub faults: BTreeMap<&'static str, u64>,
    pub errors: BTreeMap<String, u64>,
    /// The core's vector paths: card vectors applied, refused (stale card, bad vector, agent
    /// gone), held of several models at once, and Finds ranked with a query vector.
    pub vectors: BTreeMap<&'static str, u64>,
}

impl Coverage {
    pub(crate) fn fault(&mut self, name: &'static str) {
        *self.faults.entry(name).or_default() += 1;
    }
}

/// A call in flight: who made it, and what the runner already knows of its answer.
#[derive(Clone, Debug)]
struct Call {
    /// The step that made it; a retry belongs to the step of the call it repeats.
    step: usize,
    command: Command,
    buffer: u32,
    /// The client is gone (its reply is lost): the answer cannot be handed over.
    lost: bool,
    /// The answer the core made when the call was handled (the machine holds it until the
    /// entries it saw are durable), or `None` for a claim that waits.
    made: Option<Outcome>,
    /// The last entry index the answer depends on.
    requires: u64,
    /// The claim waits in the core (the model's waiter).
    waiting: Option<WaiterId>,
}

/// What the runner saw of a task created by a committed command: for `task.none_lost` (known
/// until its retention after it finished) and the claim lease's token.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CreatedTask {
    pub(crate) finished_at: Option<Millis>,
    /// The token of the last claim lease granted on its id.
    pub(crate) claim_token: Option<u64>,
}

/// A clock jump is any move of at least this much between two steps.
pub const CLOCK_JUMP_MS_MIN: u64 = 60_000;

pub struct Runner {
    pub(crate) config: SimConfig,
    pub(crate) machine: Machine,
    pub(crate) model: Model,
    /// What the daemon's data dir would hold, and the entries staged for its next write.
    pub(crate) image: StoreImage,
    digest: Digest,
    now: Millis,
    /// Register step -> the agent id its (visible) reply carried.
    agents: BTreeMap<usize, String>,
    /// Acquire (or claim) step -> the token its (visible) reply granted.
    grants: BTreeMap<usize, u64>,
    /// Opening step -> the subscriber id its (visible) reply carried (open or ended).
    subscriber_ids: BTreeMap<usize, SubscriberId>,
    /// Step -> the task id its visible reply named (CreateTask, GetTask, a claim granted now or
    /// later).
    task_ids: BTreeMap<usize, String>,
    /// ListTasks step -> the next page token its visible reply carried.
    page_tokens: BTreeMap<usize, String>,
    /// Calls the machine has not answered yet.
    calls: BTreeMap<CallerId, Call>,
    caller_next: u64,
    /// ClaimTask step -> its caller, while the claim waits.
    waiting_claims: BTreeMap<usize, CallerId>,
    /// Answers the model made to waiting claims, by caller, with the entry index they depend
    /// on, until the machine hands them out.
    answers_owed: BTreeMap<CallerId, (Expected, u64)>,
    /// The model's waiter ids (equal to the core's) and the callers waiting as them.
    waiters: BTreeMap<WaiterId, CallerId>,
    /// Answers handed to waiting claims' callers during the last step: (ClaimTask step, answer).
    delivered: Vec<(usize, Outcome)>,
    /// Event sequence -> the last entry index its emission depends on, until it is delivered
    /// or can no longer be.
    event_requires: BTreeMap<u64, u64>,
    /// Every task a committed command created (by id), until its retention after finishing ran
    /// out.
    pub(crate) created: BTreeMap<u128, CreatedTask>,
    /// Open subscriptions, by subscriber id.
    subscriptions: BTreeMap<SubscriberId, Subscription>,
    pub(crate) deregistered: BTreeSet<u128>,
    /// Agent id -> where the last restart's grace made its ttl count from (a live agent at a
    /// restart is not punished for the downtime); ttl counts from the later of this and its last
    /// heartbeat.
    grace_bases: BTreeMap<u128, Millis>,
    /// The highest fencing token any client has seen (in a reply or a delivered event): it
    /// survives crashes, so tokens are checked across restarts.
    token_seen: u64,
    /// The highest fencing token the running core has granted (seen or not).
    pub(crate) token_granted: u64,
    pub(crate) terms: BTreeMap<Arc<str>, u64>,
    /// Where to fall back to while entries are not durable (`None`: everything is).
    durable_point: Option<DurablePoint>,
    last_reply: Option<Outcome>,
    /// The step being run.
    step_index: usize,
    /// The step may have changed policies: compare them all with the model's.
    pub(crate) policies_touched: bool,
    steps_run: u64,
    coverage: Coverage,
}

impl Runner {
    pub fn new(config: &SimConfig) -> Runner {
        let core = Core::new(config.core.clone(), config.start_ms);
        Runner {
            config: config.clone(),
            machine: Machine::new(core, true),
            model: Model::new(&config.core, config.start_ms),
            image: StoreImage::new(config.core.seed, config.start_ms),
            digest: Digest::default(),
            now: config.start_ms,
            agents: BTreeMap::new(),
            grants: BTreeMap::new(),
            subscriber_ids: BTreeMap::new(),
            task_ids: BTreeMap::new(),
            page_tokens: BTreeMap::new(),
            calls: BTreeMap::new(),
            caller_next: 1,
            waiting_claims: BTreeMap::new(),
            answers_owed: BTreeMap::new(),
            waiters: BTreeMap::new(),
            delivered: Vec::new(),
            event_requires: BTreeMap::new(),
            created: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            deregistered: BTreeSet::new(),
            grace_bases: BTreeMap::new(),
            token_seen: 0,
            token_granted: 0,
            terms: BTreeMap::new(),
            durable_point: None,
            last_reply: None,
            step_index: 0,
            policies_touched: false,
            steps_run: 0,
            coverage: Coverage::default(),
        }
    }

    pub fn core(&self) -> &Core {
        self.machine.core()
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

    /// The reply the client saw for the last step (`None`: no core call, the reply was lost, or
    /// it still waits for the disk).
    pub fn last_reply(&self) -> Option<&Outcome> {
        self.last_reply.as_ref()
    }

    /// True while the subscription opened at `step` is still open (and its client knows it).
    pub fn subscription_open(&self, sub: SubRef) -> bool {
        self.subscriber_ids
            .get(&sub.0)
            .is_some_and(|id| self.subscriptions.get(id).is_some_and(|s| !s.overflowed))
    }

    /// True while the ClaimTask at `claim`'s step waits in line (not answered, cancelled or
    /// dropped by a restart).
    pub fn claim_waiting(&self, claim: ClaimRef) -> bool {
        self.waiting_claims.contains_key(&claim.0)
    }

    /// The answers handed to waiting claims' callers during the last step: (ClaimTask step,
    /// answer). A caller that is gone gets none.
    pub fn claim_answers(&self) -> &[(usize, Outcome)] {
        &self.delivered
    }

    /// True once a write failed: the daemon serves reads only until it is restarted.
    pub fn read_only(&self) -> bool {
        self.machine.failed().is_some()
    }

    /// True while entries wait for the disk.
    pub fn writes_pending(&self) -> bool {
        self.durable_point.is_some()
    }

    /// Runs one step and every check after it, then takes the store image's snapshot if one is
    /// due (as the driver does after a batch). A panic in the core is a violation too.
    pub fn step(&mut self, step: &Step) -> Result<(), Violation> {
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.step_checked(step)?;
            let durable = self.machine.is_durable() && self.machine.failed().is_none();
            if durable && self.image.since_snapshot() >= self.config.snapshot_every {
                self.image.take_snapshot(self.machine.core());
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
        self.step_index = step.index;
        *self.coverage.ops.entry(step.op.name()).or_default() += 1;
        self.last_reply = None;
        self.delivered.clear();
        self.policies_touched = matches!(step.op, Op::SetPolicy { .. } | Op::DeletePolicy { .. });
        if matches!(step.io, Io::Slow | Io::FsyncFails | Io::ShortWrite { .. }) {
            // This step's entries may never become durable: remember what is.
            self.keep_durable_point();
        }
        match &step.op {
            Op::Crash { torn } => return self.crash(torn.as_deref()).and_then(|()| self.state_checks()),
            op => self.perform(step.index, op, step.lost)?,
        }
        self.end_batch(step.io)?;
        self.state_checks()
    }

    /// What one op does: a client's command, or what the driver hands the machine for it.
    fn perform(&mut self, step: usize, op: &Op, lost: bool) -> Checked {
        match op {
            Op::Tick => self.handle(Input::Tick)?,
            Op::Crash { .. } => unreachable!("a crash is not performed"),
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
            Op::CancelClaim { claim } => {
                // The caller of a waiting claim hangs up; the driver notices it.
                if let Some(&caller) = self.waiting_claims.get(&claim.0) {
                    self.calls.get_mut(&caller).expect("a waiting claim is a call").lost = true;
                    self.handle(Input::CallerGone { caller })?;
                    // Cancelled, unless the tick before it answered the claim (that answer, a
                    // task included, then goes back as undelivered when it is released).
                    if !self.answers_owed.contains_key(&caller) {
                        self.calls.remove(&caller);
                        self.waiting_claims.remove(&claim.0);
                    }
                }
            }
            Op::ReturnTask { task, token } => {
                // The driver could not hand a claim over: the claim it names (stale or wrong
                // now and then) goes back to the machine as undelivered.
                let outcome = undelivered_claim(&self.task(task), self.token(*token), self.now);
                self.handle(Input::Undelivered { outcome })?;
            }
            op => {
                let (command, buffer) = self.command(op);
                self.send(step, command, buffer, lost)?;
            }
        }
        Ok(())
    }

    /// One command from a client, as step `step`'s call.
    fn send(&mut self, step: usize, command: Command, buffer: u32, lost: bool) -> Checked {
        let caller = CallerId(self.caller_next);
        self.caller_next += 1;
        let input = Input::Call {
            caller,
            command: command.clone(),
            principal: None,
        };
        let sequence_before = self.core().stats().sequence_next;
        let refused = self.machine.failed().is_some() && refused_when_read_only(&command);
        self.machine.handle(self.now, input);
        let waiter = self.machine.parked_waiter(caller);
        let made = match waiter {
            Some(waiter) => Ok(Reply::ClaimWaiting { waiter }),
            None => self
                .machine
                .held_reply(caller)
                .cloned()
                .expect("a call is answered or parked"),
        };
        let expected = if refused {
            // The daemon refuses writes and new streams after a failed write; time still runs.
            self.model.tick(self.now);
            Err(ErrorCode::Unavailable)
        } else {
            self.model.apply(self.now, &command, &made)
        };
        self.digest.outcome(&made);
        self.check_reply_properties(&command, &made)?;
        self.after_input(sequence_before)?;
        self.compare_reply(&command, &made, &expected)?;
        if let Command::Deregister { agent_id } = &command
            && made.is_ok()
            && let Some(id) = agentkeeper::core::types::Id128::parse(agent_id)
        {
            self.deregistered.insert(id.0);
        }
        if let Command::Unwatch { subscriber } = &command {
            self.subscriptions.remove(subscriber);
        }
        self.open_subscription(&command, &made, buffer);
        let waiting = match &expected {
            Ok(Reply::ClaimWaiting { waiter }) => {
                self.waiters.insert(*waiter, caller);
                self.waiting_claims.insert(step, caller);
                Some(*waiter)
            }
            _ => None,
        };
        let call = Call {
            step,
            command,
            buffer,
            lost,
            made: waiter.is_none().then_some(made),
            requires: self.machine.emitted(),
            waiting,
        };
        self.calls.insert(caller, call);
        self.drain()
    }

    /// Any other input: the machine takes it, the model does what it means.
    fn handle(&mut self, input: Input) -> Checked {
        let sequence_before = self.core().stats().sequence_next;
        let now = self.now;
        self.model.tick(now);
        match &input {
            Input::CallerGone { caller } => {
                if let Some(waiter) = self.calls.get(caller).and_then(|c| c.waiting)
                    && self.model.is_waiting(waiter)
                {
                    let _ = self
                        .model
                        .apply(now, &Command::CancelClaim { waiter }, &Ok(Reply::Done));
                }
            }
            Input::Undelivered { outcome } => match outcome {
                Ok(Reply::Claimed { task, lease }) => {
                    let command = Command::ReturnTask {
                        task_id: task.id.to_string(),
                        token: lease.token,
                    };
                    let _ = self.model.apply(now, &command, &Ok(Reply::Done));
                }
                Ok(Reply::Watching { subscriber, .. } | Reply::WatchingElection { subscriber, .. }) => {
                    self.subscriptions.remove(subscriber);
                    let _ = self.model.apply(
                        now,
                        &Command::Unwatch {
                            subscriber: *subscriber,
                        },
                        &Ok(Reply::Done),
                    );
                }
                _ => {}
            },
            Input::SubscriberGone { subscriber, .. } => {
                let _ = self.model.apply(
                    now,
                    &Command::Unwatch {
                        subscriber: *subscriber,
                    },
                    &Ok(Reply::Done),
                );
            }
            Input::PersistFailed { .. } => self.model_read_only(),
            Input::Grace => {}
            Input::Tick | Input::Persisted { .. } | Input::Call { .. } | Input::Shutdown => {}
            Input::Committed { .. } => {
                return fail(
                    invariant::MODEL_REPLY,
                    "a single node's machine was handed a committed entry".into(),
                );
            }
        }
        self.machine.handle(now, input);
        self.after_input(sequence_before)
    }

    /// What the model does when a write fails: every stream ends, every waiting claim is
    /// answered UNAVAILABLE and leaves the line.
    fn model_read_only(&mut self) {
        // What waited for the lost entries is answered UNAVAILABLE instead.
        let durable = self.image.durable_index();
        for (answer, requires) in self.answers_owed.values_mut() {
            if *requires > durable {
                *answer = Err(ErrorCode::Unavailable);
            }
        }
        for subscriber in self.subscriptions.keys().copied().collect::<Vec<_>>() {
            let _ = self
                .model
                .apply(self.now, &Command::Unwatch { subscriber }, &Ok(Reply::Done));
        }
        let requires = self.machine.emitted();
        for (waiter, caller) in std::mem::take(&mut self.waiters) {
            if self.model.is_waiting(waiter) {
                let _ = self
                    .model
                    .apply(self.now, &Command::CancelClaim { waiter }, &Ok(Reply::Done));
                self.answers_owed
                    .insert(caller, (Err(ErrorCode::Unavailable), requires));
            }
        }
    }

    /// After the machine took an input: the events it emitted against the model's, the fencing
    /// floor, the tasks it created, what each subscription is now owed, the model's answers to
    /// waiting claims.
    fn after_input(&mut self, sequence_before: u64) -> Checked {
        let events = self.emitted_since(sequence_before)?;
        let expected = self.model.take_events();
        self.check_fencing(&events)?;
        self.observe_task_events(&events);
        let requires = self.machine.emitted();
        for event in &events {
            self.event_requires.insert(event.sequence, requires);
            for subscription in self.subscriptions.values_mut() {
                if !subscription.overflowed && subscription.wants(event) {
                    subscription.owed.push_back(Arc::clone(event));
                }
            }
        }
        compare_events(&events, &expected)?;
        for (waiter, answer) in self.model.take_answers() {
            match self.waiters.remove(&waiter) {
                Some(caller) => {
                    self.answers_owed.insert(caller, (answer, requires));
                }
                None => {
                    return fail(
                        invariant::MODEL_REPLY,
                        format!("the model answered waiter {waiter:?}, which no claim waits as"),
                    );
                }
            }
        }
        Ok(())
    }

    /// Does what the machine's outputs say until it waits for the disk.
    fn drain(&mut self) -> Checked {
        while let Some(output) = self.machine.poll() {
            match output {
                Output::Persist { index, entry } => self.image.stage(index, &entry),
                Output::Reply { caller, outcome } => self.reply_released(caller, outcome)?,
                Output::Park { caller } => {
                    let Some(call) = self.calls.get(&caller).filter(|c| c.waiting.is_some()) else {
                        return fail(
                            invariant::MODEL_REPLY,
                            format!("the machine parked caller {caller:?}, whose claim does not wait"),
                        );
                    };
                    // The client knows its claim is in line (its call has not returned).
                    if call.step == self.step_index && !call.lost {
                        self.last_reply = call.waiting.map(|waiter| Ok(Reply::ClaimWaiting { waiter }));
                    }
                }
                Output::Deliver { subscriber, event } => self.deliver(subscriber, event)?,
                Output::EndStream { subscriber, end } => self.stream_ended(subscriber, &end)?,
                Output::Propose { entry } => {
                    return fail(
                        invariant::MODEL_REPLY,
                        format!("a single node's machine proposed {entry:?}"),
                    );
                }
            }
        }
        Ok(())
    }

    /// The end of a step, as the end of the driver's batch: what is staged is written the way
    /// the step's `io` says, and what the durable entries release goes out.
    fn end_batch(&mut self, io: Io) -> Checked {
        loop {
            self.drain()?;
            if !self.image.has_staged() {
                break;
            }
            match io {
                Io::Durable | Io::CrashAfterWrite => {
                    let up_to = self.image.commit();
                    if io == Io::CrashAfterWrite {
                        // Durable, and the daemon dies before anything it released leaves.
                        self.durable_point = None;
                        self.coverage.fault("crash_after_write");
                        return self.crash(None);
                    }
                    self.handle(Input::Persisted { up_to })?;
                }
                Io::Slow => {
                    self.coverage.fault("slow_disk");
                    return Ok(());
                }
                Io::FsyncFails | Io::ShortWrite { .. } => {
                    let reason = match io {
                        Io::ShortWrite { per_mille } => {
                            self.image.fail_short(per_mille);
                            self.coverage.fault("short_write");
                            "short write: No space left on device (os error 28)"
                        }
                        _ => {
                            self.image.fail_fsync();
                            self.coverage.fault("fsync_fails");
                            "fsync: Input/output error (os error 5)"
                        }
                    };
                    let reason = reason.to_string();
                    self.handle(Input::PersistFailed { reason })?;
                }
            }
        }
        if io == Io::CrashAfterWrite {
            self.coverage.fault("crash_after_write");
            return self.crash(None);
        }
        if self.machine.is_durable() && self.machine.failed().is_none() {
            self.durable_point = None;
        }
        Ok(())
    }

    /// A reply the machine let go: it must be durable, agree with what was made (or with the
    /// model's answer to a waiting claim), and reach its client unless the client is gone.
    fn reply_released(&mut self, caller: CallerId, outcome: Outcome) -> Checked {
        let Some(call) = self.calls.remove(&caller) else {
            return fail(
                invariant::MODEL_REPLY,
                format!("a reply for caller {caller:?}, who waits for none: {}", brief(&outcome)),
            );
        };
        let (requires, agrees) = match &call.made {
            Some(made) => {
                let refused =
                    self.machine.failed().is_some() && matches!(&outcome, Err(e) if e.code == ErrorCode::Unavailable);
                (call.requires, outcome == *made || refused)
            }
            None => {
                self.waiting_claims.remove(&call.step);
                self.digest.claim_answer(WaiterId(call.step as u64), &outcome);
                let Some((expected, requires)) = self.answers_owed.remove(&caller) else {
                    return fail(
                        invariant::MODEL_REPLY,
                        format!(
                            "the core answered the claim of step {}, the model did not: {}",
                            call.step,
                            brief(&outcome)
                        ),
                    );
                };
                let agrees = match (&outcome, &expected) {
                    (Err(error), Err(code)) => error.code == *code && !error.message.is_empty(),
                    (Ok(got), Ok(want)) => got == want,
                    _ => false,
                };
                (requires, agrees)
            }
        };
        self.check_durable(requires, || {
            format!("the reply to step {} ({})", call.step, call.command.name())
        })?;
        if !agrees {
            return fail(
                invariant::MODEL_REPLY,
                format!(
                    "step {} ({}) got {}, expected {}",
                    call.step,
                    call.command.name(),
                    brief(&outcome),
                    brief(
                        &call
                            .made
                            .as_ref()
                            .map_or_else(|| "the model's answer".to_string(), |m| format!("{m:?}"))
                    )
                ),
            );
        }
        if call.lost {
            return self.undelivered(call, outcome);
        }
        self.see_tokens(&outcome);
        self.record(call.step, &outcome);
        self.count_vectors(&call.command, &outcome);
        if call.waiting.is_some() {
            self.coverage.fault(match &outcome {
                Ok(Reply::Claimed { .. }) => "claim_answered",
                Ok(_) => "claim_timed_out",
                Err(_) => "claim_refused",
            });
            self.delivered.push((call.step, outcome));
        } else {
            self.last_reply = Some(outcome);
        }
        Ok(())
    }

    /// The client behind `call` is gone: the driver hands the reply back to the machine, and a
    /// client whose call is safe to repeat sends it again.
    fn undelivered(&mut self, call: Call, outcome: Outcome) -> Checked {
        self.coverage.fault("lost_reply");
        if matches!(outcome, Ok(Reply::Claimed { .. })) {
            self.coverage.fault("claim_returned");
        }
        self.handle(Input::Undelivered { outcome })?;
        if call.waiting.is_none() && retry_safe(&call.command) {
            self.coverage.fault("retry");
            return self.send(call.step, call.command, call.buffer, false);
        }
        Ok(())
    }

    /// An event for a subscriber's buffer: the next one it is owed, durable, and into the
    /// buffer if there is room; an overflowing subscriber is cut off.
    fn deliver(&mut self, subscriber: SubscriberId, event: Arc<Event>) -> Checked {
        let requires = self.event_requires.get(&event.sequence).copied().unwrap_or(0);
        self.check_durable(requires, || {
            format!("event {} for subscriber {subscriber:?}", event.sequence)
        })?;
        let Some(subscription) = self.subscriptions.get_mut(&subscriber) else {
            return fail(
                invariant::SUBSCRIBER_STREAM_EXACT,
                format!("event {} delivered to ended subscriber {subscriber:?}", event.sequence),
            );
        };
        let owed = subscription.owed.pop_front();
        if subscription.overflowed || owed.as_ref() != Some(&event) {
            return fail(
                invariant::SUBSCRIBER_STREAM_EXACT,
                format!(
                    "subscriber {subscriber:?} ({:?}, from {}{}) was handed sequence {}, it is owed {:?}",
                    subscription.filter,
                    subscription.sequence_min,
                    if subscription.overflowed { ", cut off" } else { "" },
                    event.sequence,
                    owed.map(|e| e.sequence)
                ),
            );
        }
        if subscription.buffer.len() < subscription.capacity {
            self.digest.u64(subscriber.0);
            self.digest.event(&event);
            subscription.delivered_last = event.sequence;
            subscription.buffer.push_back(Arc::clone(&event));
            if let (Topic::LeaseAcquired, EventPayload::Lease(lease)) = (event.topic, &event.payload) {
                self.token_seen = self.token_seen.max(lease.token);
            }
            return Ok(());
        }
        subscription.overflowed = true;
        subscription.owed.clear();
        let overflow = Overflow {
            capacity: subscription.capacity,
            delivered_last: subscription.delivered_last,
        };
        self.coverage.fault("subscriber_cut_off");
        self.handle(Input::SubscriberGone {
            subscriber,
            overflow: Some(overflow),
        })
    }

    /// A stream's last word: an overflowing one's names its last sequence; any other ends with
    /// the daemon's own end (a failed write).
    fn stream_ended(&mut self, subscriber: SubscriberId, end: &StreamEnd) -> Checked {
        let Some(subscription) = self.subscriptions.remove(&subscriber) else {
            return fail(
                invariant::SUBSCRIBER_STREAM_EXACT,
                format!("subscriber {subscriber:?} ended twice, or was never open: {end:?}"),
            );
        };
        let expected = if subscription.overflowed {
            let named = format!("the last sequence delivered is {}", subscription.delivered_last);
            end.code == ErrorCode::ResourceExhausted && end.message.contains(&named)
        } else {
            end.code == ErrorCode::Unavailable && self.machine.failed().is_some()
        };
        if !expected {
            return fail(
                invariant::SUBSCRIBER_STREAM_EXACT,
                format!(
                    "subscriber {subscriber:?}{} ended with {end:?}",
                    if subscription.overflowed { " (overflowed)" } else { "" }
                ),
            );
        }
        Ok(())
    }

    /// What a client saw must be durable: `requires` (an entry index) within the image's
    /// durable entries.
    fn check_durable(&self, requires: u64, what: impl FnOnce() -> String) -> Checked {
        let durable = self.image.durable_index();
        if requires <= durable || self.machine.failed().is_some() && requires <= self.machine.emitted() {
            return Ok(());
        }
        fail(
            invariant::RELEASED_ONLY_WHEN_DURABLE,
            format!(
                "{} left the daemon depending on entry {requires}, but only entries up to {durable} are durable",
                what()
            ),
        )
    }

    /// The events emitted since `sequence_before`, all of them still in the ring.
    fn emitted_since(&self, sequence_before: u64) -> Checked<Vec<Arc<Event>>> {
        let emitted = self.core().stats().sequence_next - sequence_before;
        let events = self.core().events_since(sequence_before);
        if events.len() as u64 != emitted {
            return fail(
                invariant::MODEL_EVENTS,
                format!("{emitted} events emitted but the ring holds {} of them", events.len()),
            );
        }
        Ok(events)
    }

    /// Follows task events for `task.none_lost` and the claim tokens: a task is known from
    /// `task.created` on, finished at `task.completed` or `task.dead`; a `lease.acquired` on its
    /// id is its claim's grant. (Rolled back with the model when entries are lost.)
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

    /// Every grant's token must be above every token anybody saw, and above every token this
    /// process granted before.
    fn check_fencing(&mut self, events: &[Arc<Event>]) -> Checked {
        for event in events {
            if let (Topic::LeaseAcquired, EventPayload::Lease(lease)) = (event.topic, &event.payload) {
                let floor = self.token_seen.max(self.token_granted);
                if lease.token <= floor {
                    return fail(
                        invariant::FENCING_TOKENS_INCREASE,
                        format!(
                            "lease {:?} granted token {} after token {floor} was granted",
                            lease.task_id, lease.token
                        ),
                    );
                }
                self.token_granted = lease.token;
            }
        }
        Ok(())
    }
}

/// True for what a daemon that can no longer write refuses: writes, and new streams.
fn refused_when_read_only(command: &Command) -> bool {
    command.is_logged() || matches!(command, Command::Watch { .. } | Command::WatchElection { .. })
}

/// True where the contract makes sending the same command again safe after a lost reply.
fn retry_safe(command: &Command) -> bool {
    !matches!(
        command,
        Command::Register { .. } | Command::CreateTask { .. } | Command::ClaimTask { .. }
    )
}

#[cfg(test)]
mod tests;
