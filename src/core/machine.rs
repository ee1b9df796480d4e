//! The core's protocol, in the shape of quinn-proto and raft-rs: inputs go in through
//! `handle(now, Input)`, outputs come out of `poll()` in the order they may leave, and
//! `poll_timeout()` says when time next matters. The daemon's driver and the simulator are two
//! thin loops over this one type, so the simulator tests the real ordering.
//!
//! A replicated machine (`Machine::replicated`, a cluster node's) never orders writes itself:
//! its writes come in as `Input::Committed` entries, in the one order consensus chose, and the
//! commands it raises itself leave as `Output::Propose`. Its clock moves only with those entries.
//!
//! Architecture invariant: a reply, a delivery or a stream's end that saw an entry's effects
//! leaves `poll()` only after `Input::Persisted` covers that entry; entries to persist leave
//! first. The machine decides everything that is state (claims parked and handed back, slow
//! streams cut off, time frozen at shutdown, writes refused after a failed write); its driver
//! only moves bytes and values. No clock, socket, file or thread here.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::entry::Entry;
use super::events::{Delivery, SubscriberId};
use super::tasks::WaiterId;
use super::types::{Millis, TokenId};
use super::{Command, Core, CoreError, ErrorCode, Event, Outcome, PlantedBug, Reply};

/// Who is waiting for a reply: chosen by the driver, unique among its callers in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallerId(pub u64);

/// Everything that can happen to the machine.
#[derive(Debug)]
pub enum Input {
    /// A client's command, answered by one `Output::Reply` to `caller` (at once, or later for a
    /// claim that waits). `principal` is the agent token that makes the call, if one does.
    Call {
        caller: CallerId,
        command: Command,
        principal: Option<TokenId>,
    },
    /// Time passed: fire whatever is due by `now` (the driver comes at `poll_timeout()`).
    Tick,
    /// Every entry up to and including index `up_to` is durable.
    Persisted { up_to: u64 },
    /// Writing the entries after the last durable one failed. The machine then refuses writes
    /// and ends its streams: the daemon serves reads only until it is restarted.
    PersistFailed { reason: String },
    /// A parked caller hung up: its waiting claim is cancelled, so no task goes to it.
    CallerGone { caller: CallerId },
    /// A reply could not be handed to its caller: a claimed task goes back to PENDING, an
    /// opened stream is closed again.
    Undelivered { outcome: Outcome },
    /// A subscriber's stream is gone: its reader went away, or (with `overflow`) its bounded
    /// buffer was full, which ends the stream with RESOURCE_EXHAUSTED.
    SubscriberGone {
        subscriber: SubscriberId,
        overflow: Option<Overflow>,
    },
    /// The daemon restarted from its data dir: nobody is punished for the downtime (the grace
    /// comes before anything falls due at `now`).
    Grace,
    /// Graceful shutdown: time stands still from here on, every stream ends with UNAVAILABLE,
    /// waiting claims are answered UNAVAILABLE, new streams are refused.
    Shutdown,
    /// A replicated machine's write, in consensus order: apply `entry` (a command at its
    /// leader's time, a tick, a failover's grace) and answer `caller` if it waits here.
    Committed { entry: Entry, caller: Option<CallerId> },
}

/// What the driver knew of a buffer that overflowed, for the stream's last word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow {
    /// The buffer's size in events.
    pub capacity: usize,
    /// The last sequence that went into the buffer (0: none).
    pub delivered_last: u64,
}

/// How a stream ends when the daemon ends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEnd {
    pub code: ErrorCode,
    pub message: String,
}

/// One thing for the driver to do, in the order `poll()` hands them out.
#[must_use = "an output is a duty of the driver: persist it, send it or deliver it"]
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Make `entry` durable; acknowledge with `Input::Persisted { up_to: index }`.
    Persist { index: u64, entry: Entry },
    /// The answer for `caller`.
    Reply { caller: CallerId, outcome: Outcome },
    /// `caller`'s claim waits in the core: keep its reply channel and say when it hangs up
    /// (`Input::CallerGone`); its `Reply` comes later.
    Park { caller: CallerId },
    /// An event for a subscriber's bounded buffer; when it does not fit, say so with
    /// `Input::SubscriberGone { overflow }`.
    Deliver {
        subscriber: SubscriberId,
        event: Arc<Event>,
    },
    /// The subscriber's stream ends with this last word.
    EndStream { subscriber: SubscriberId, end: StreamEnd },
    /// A replicated machine's own write (a hang-up's CancelClaim, an undelivered claim's
    /// ReturnTask): propose it; it takes effect when it comes back as `Input::Committed`.
    Propose { entry: Entry },
}

/// The core behind its protocol. See the module's documentation.
pub struct Machine {
    core: Core,
    /// Whether inputs are logged (a data dir). Without a log nothing waits for durability.
    logged: bool,
    /// Whether writes are ordered by consensus (see the module's documentation).
    replicated: bool,
    /// Own writes a replicated machine proposes, in the order it raised them.
    proposals: VecDeque<Entry>,
    /// A replicated machine's failover grace (`Core::failover_grace`): what `Entry::Grace`
    /// means there.
    failover_grace_ms: u64,
    /// The index of the last entry emitted (0: none yet) and of the last one known durable.
    emitted: u64,
    durable: u64,
    /// Entries not yet handed to the driver.
    persist: VecDeque<(u64, Entry)>,
    /// Outputs in release order, each with the entry index it waits for; the indexes never
    /// decrease along the queue, so the front decides.
    held: VecDeque<(u64, Output)>,
    /// Waiting claims and their callers, both ways.
    parked: BTreeMap<WaiterId, CallerId>,
    parked_callers: BTreeMap<CallerId, WaiterId>,
    /// Shutdown has begun: time stands still.
    closing: bool,
    /// A write failed (why): writes are refused from then on.
    failed: Option<String>,
    deliveries: Vec<Delivery>,
    answers: Vec<(WaiterId, Outcome)>,
}

const SHUTTING_DOWN: &str = "the daemon is shutting down";
const CAUGHT_UP: &str = "this node caught up from its cluster's snapshot and did not see what happened \
                         meanwhile: watch again from the last sequence seen plus one, claim again";

impl Machine {
    /// Wraps `core` (new, or rebuilt from a data dir). With `logged`, every state change comes
    /// out as an `Output::Persist` and what depends on it waits for `Input::Persisted`.
    pub fn new(core: Core, logged: bool) -> Machine {
        Machine {
            core,
            logged,
            replicated: false,
            proposals: VecDeque::new(),
            failover_grace_ms: 0,
            emitted: 0,
            durable: 0,
            persist: VecDeque::new(),
            held: VecDeque::new(),
            parked: BTreeMap::new(),
            parked_callers: BTreeMap::new(),
            closing: false,
            failed: None,
            deliveries: Vec::new(),
            answers: Vec::new(),
        }
    }

    /// Wraps `core` as a cluster node's replica: writes only as `Input::Committed` entries, own
    /// writes out as `Output::Propose`, nothing waits for a local log (a committed entry is
    /// durable on a majority already). A committed `Entry::Grace` is a new leader's, bounded by
    /// `failover_grace_ms` (the same on every replica).
    pub fn replicated(core: Core, failover_grace_ms: u64) -> Machine {
        Machine {
            replicated: true,
            failover_grace_ms,
            ..Machine::new(core, false)
        }
    }

    /// A replicated machine that fell behind its cluster's compacted log takes the leader's
    /// snapshot as its state: what waited on the old state here (streams, parked claims) is
    /// ended UNAVAILABLE, since what happened in between was never seen here.
    pub fn install(&mut self, core: Core) {
        assert!(self.replicated, "only a cluster node's replica installs a snapshot");
        self.collect();
        let now = self.core.now();
        self.end_everything(now, ErrorCode::Unavailable, CAUGHT_UP);
        // Claims cancelled above were waiting in the old state; the new one decides anew.
        self.proposals.clear();
        self.core = core;
        self.collect();
    }

    /// The state machine itself, for reads that are not commands (stats, snapshots, checks).
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The index of the last entry emitted; `Persisted` up to it makes everything durable.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// True when every entry emitted is durable (and none waits to be handed out): the state
    /// equals what the log holds, so a snapshot taken now starts a generation cleanly.
    pub fn is_durable(&self) -> bool {
        self.persist.is_empty() && self.durable == self.emitted
    }

    /// Why writes are refused, once a write failed.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Callers whose claims wait in the core.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// The reply `caller` will get once what it saw is durable, while it is held: for the
    /// simulator, which checks every reply against its model when the call is made.
    pub fn held_reply(&self, caller: CallerId) -> Option<&Outcome> {
        self.held.iter().rev().find_map(|(_, output)| match output {
            Output::Reply { caller: c, outcome } if *c == caller => Some(outcome),
            _ => None,
        })
    }

    /// The waiting claim `caller` is parked as, if it is.
    pub fn parked_waiter(&self, caller: CallerId) -> Option<WaiterId> {
        self.parked_callers.get(&caller).copied()
    }

    /// When time next matters (a deadline), if ever; `None` while shutting down.
    pub fn poll_timeout(&self) -> Option<Millis> {
        if self.closing {
            return None;
        }
        self.core.next_deadline()
    }

    /// The next thing to do: entries to persist first, then whatever the durable entries
    /// release, in order; `None` when the rest waits for `Persisted`.
    #[must_use = "an output is a duty of the driver"]
    pub fn poll(&mut self) -> Option<Output> {
        if let Some((index, entry)) = self.persist.pop_front() {
            return Some(Output::Persist { index, entry });
        }
        if let Some(entry) = self.proposals.pop_front() {
            return Some(Output::Propose { entry });
        }
        let &(requires, _) = self.held.front()?;
        let planted = self.core.config().planted_bug == PlantedBug::ReplyBeforeDurable;
        if requires > self.durable && !planted {
            return None;
        }
        self.held.pop_front().map(|(_, output)| output)
    }

    /// Takes one input at `now` (never before the machine's own time; ignored once shutdown has
    /// begun, when time stands still). Whatever is due by then fires first.
    pub fn handle(&mut self, now: Millis, input: Input) {
        if self.replicated {
            return self.handle_replicated(input);
        }
        let now = if self.closing {
            self.core.now()
        } else {
            now.max(self.core.now())
        };
        if let Input::Grace = input {
            // Before time moves: the downtime must not count against anyone.
            self.core.restart_grace(now);
            self.record(Entry::Grace { now });
        }
        if self.core.tick(now) > 0 {
            self.record(Entry::Tick { now });
        }
        // What the tick answered is answered before the input is looked at: a claim the tick
        // handed a task to is no longer parked when its caller's hang-up comes in.
        self.collect();
        match input {
            Input::Call {
                caller,
                command,
                principal,
            } => self.call(now, caller, command, principal),
            Input::Tick => {}
            Input::Persisted { up_to } => {
                assert!(
                    up_to <= self.emitted,
                    "persisted {up_to} but only {} entries were emitted",
                    self.emitted
                );
                self.durable = self.durable.max(up_to);
            }
            Input::PersistFailed { reason } => self.persist_failed(reason),
            Input::CallerGone { caller } => self.caller_gone(now, caller),
            Input::Undelivered { outcome } => self.undelivered(now, outcome),
            Input::SubscriberGone { subscriber, overflow } => self.subscriber_gone(subscriber, overflow),
            Input::Grace => {}
            Input::Shutdown => self.shut_down(now),
            Input::Committed { .. } => {
                debug_assert!(false, "a committed entry reaches a machine that orders its own writes");
            }
        }
        self.collect();
    }

    /// A replicated machine's inputs: time comes only with committed entries, so every replica
    /// fires the same deadlines at the same entry; reads see the replicated clock.
    fn handle_replicated(&mut self, input: Input) {
        let now = self.core.now();
        match input {
            Input::Committed { entry, caller } => self.committed(entry, caller),
            Input::Call {
                caller,
                command,
                principal,
            } => {
                if command.is_logged() {
                    debug_assert!(false, "a write reaches a replica uncommitted: {command:?}");
                    let message = "a write must be committed before it is applied".to_string();
                    return self.release(Output::Reply {
                        caller,
                        outcome: Err(CoreError::new(ErrorCode::FailedPrecondition, message)),
                    });
                }
                self.call(now, caller, command, principal);
            }
            Input::CallerGone { caller } => self.caller_gone(now, caller),
            Input::Undelivered { outcome } => self.undelivered(now, outcome),
            Input::SubscriberGone { subscriber, overflow } => self.subscriber_gone(subscriber, overflow),
            Input::Shutdown => self.shut_down(now),
            // Ticks, grace and durability belong to consensus here.
            Input::Tick | Input::Grace | Input::Persisted { .. } | Input::PersistFailed { .. } => {}
        }
        self.collect();
    }

    /// Applies one committed entry as every replica does: what falls due by the entry's time
    /// fires first, then the entry. Only the replica `caller` waits on answers it.
    fn committed(&mut self, entry: Entry, caller: Option<CallerId>) {
        match entry {
            Entry::Grace { now } => {
                let now = now.max(self.core.now());
                self.core.failover_grace(now, self.failover_grace_ms);
                // The grace dropped every waiting claim: a new leader took over, and claims
                // are made again there.
                for (_, caller) in std::mem::take(&mut self.parked) {
                    self.parked_callers.remove(&caller);
                    let message = "the cluster's leader changed while the claim waited; claim again";
                    self.release(Output::Reply {
                        caller,
                        outcome: Err(CoreError::new(ErrorCode::Unavailable, message)),
                    });
                }
                let _ = self.core.tick(now);
            }
            Entry::Tick { now } => {
                let _ = self.core.tick(now.max(self.core.now()));
            }
            Entry::Apply {
                now,
                command,
                principal,
            } => {
                let now = now.max(self.core.now());
                let _ = self.core.tick(now);
                self.collect();
                match caller {
                    Some(caller) => self.call(now, caller, command, principal),
                    // Another replica's caller: its waiting claim, if any, waits there.
                    None => {
                        let _ = self.core.apply_as(now, command, principal);
                    }
                }
            }
        }
    }
    fn caller_gone(&mut self, now: Millis, caller: CallerId) {
        if let Some(waiter) = self.parked_callers.remove(&caller) {
            self.parked.remove(&waiter);
            self.held
                .retain(|(_, output)| !matches!(output, Output::Park { caller: c } if *c == caller));
            self.apply_own(now, Command::CancelClaim { waiter });
        }
    }

    fn call(&mut self, now: Millis, caller: CallerId, command: Command, principal: Option<TokenId>) {
        let opens_stream = matches!(command, Command::Watch { .. } | Command::WatchElection { .. });
        if opens_stream && (self.closing || self.failed.is_some()) {
            let why = match &self.failed {
                Some(failed) => format!("the log failed ({failed}); this daemon serves reads only until restarted"),
                None => SHUTTING_DOWN.to_string(),
            };
            return self.release(Output::Reply {
                caller,
                outcome: Err(CoreError::new(ErrorCode::Unavailable, why)),
            });
        }
        if command.is_logged() {
            if let Some(failed) = &self.failed {
                let message = format!("writes are refused since the log failed ({failed}); restart the daemon");
                return self.release(Output::Reply {
                    caller,
                    outcome: Err(CoreError::new(ErrorCode::Unavailable, message)),
                });
            }
            if self.logged {
                self.record(Entry::Apply {
                    now,
                    command: command.clone(),
                    principal,
                });
            }
        }
        if let Command::Unwatch { subscriber } = command {
            // The stream's reader is gone: nothing still held for it may go out.
            self.unwatch(subscriber);
            return self.release(Output::Reply {
                caller,
                outcome: Ok(Reply::Done),
            });
        }
        match self.core.apply_as(now, command, principal) {
            Ok(Reply::ClaimWaiting { waiter }) => {
                self.parked.insert(waiter, caller);
                self.parked_callers.insert(caller, waiter);
                self.release(Output::Park { caller });
            }
            outcome => self.release(Output::Reply { caller, outcome }),
        }
    }

    /// Applies a command the machine raises itself (no caller waits for it), logged like any; a
    /// replicated machine proposes it instead.
    fn apply_own(&mut self, now: Millis, command: Command) {
        debug_assert!(command.is_logged(), "only writes are raised: {command:?}");
        if self.replicated {
            if !self.closing {
                self.proposals.push_back(Entry::Apply {
                    now,
                    command,
                    principal: None,
                });
            }
            return;
        }
        if self.failed.is_none() {
            self.record(Entry::Apply {
                now,
                command: command.clone(),
                principal: None,
            });
        }
        let outcome = self.core.apply(now, command);
        debug_assert!(
            !matches!(outcome, Ok(Reply::ClaimWaiting { .. })),
            "an own command never waits"
        );
    }

    fn undelivered(&mut self, now: Millis, outcome: Outcome) {
        match outcome {
            Ok(Reply::Claimed { task, lease }) => self.apply_own(
                now,
                Command::ReturnTask {
                    task_id: task.id.to_string(),
                    token: lease.token,
                },
            ),
            Ok(Reply::Watching { subscriber, .. } | Reply::WatchingElection { subscriber, .. }) => {
                self.unwatch(subscriber);
            }
            _ => {}
        }
    }

    fn subscriber_gone(&mut self, subscriber: SubscriberId, overflow: Option<Overflow>) {
        let known = self.core.bus.is_subscribed(subscriber);
        self.unwatch(subscriber);
        if let (true, Some(overflow)) = (known, overflow) {
            let last = overflow.delivered_last;
            let message = format!(
                "watch buffer overflowed ({} events): the last sequence delivered is {last}; \
                 resume with from_sequence {}",
                overflow.capacity,
                last + 1
            );
            self.release(Output::EndStream {
                subscriber,
                end: StreamEnd {
                    code: ErrorCode::ResourceExhausted,
                    message,
                },
            });
        }
    }

    /// Forgets a subscriber and whatever was still held for it.
    fn unwatch(&mut self, subscriber: SubscriberId) {
        self.core.bus.unwatch(subscriber);
        self.held.retain(|(_, output)| {
            !matches!(output, Output::Deliver { subscriber: s, .. } | Output::EndStream { subscriber: s, .. } if *s == subscriber)
        });
    }

    /// Ends every stream with `end` and answers every waiting claim with it.
    fn end_everything(&mut self, now: Millis, code: ErrorCode, message: &str) {
        for subscriber in self.core.bus.subscriber_ids() {
            self.unwatch(subscriber);
            self.release(Output::EndStream {
                subscriber,
                end: StreamEnd {
                    code,
                    message: message.to_string(),
                },
            });
        }
        for (waiter, caller) in std::mem::take(&mut self.parked) {
            self.parked_callers.remove(&caller);
            self.release(Output::Reply {
                caller,
                outcome: Err(CoreError::new(code, message)),
            });
            self.apply_own(now, Command::CancelClaim { waiter });
        }
        debug_assert!(self.parked_callers.is_empty());
    }

    fn shut_down(&mut self, now: Millis) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.end_everything(now, ErrorCode::Unavailable, SHUTTING_DOWN);
    }

    /// The entries after the last durable one are lost: what waited on them is answered
    /// UNAVAILABLE instead (replies) or dropped (deliveries), and from now on nothing waits.
    fn persist_failed(&mut self, reason: String) {
        if self.failed.is_some() {
            return;
        }
        let changes = format!("the change could not be made durable ({reason}); the daemon serves reads only");
        let claims = format!("the claim could not be made durable ({reason}); restart the daemon");
        self.persist.clear();
        let held = std::mem::take(&mut self.held);
        for (requires, output) in held {
            let output = match output {
                Output::Reply { caller, outcome } if requires > self.durable => {
                    let message = if matches!(outcome, Ok(Reply::Claimed { .. })) {
                        &claims
                    } else {
                        &changes
                    };
                    Output::Reply {
                        caller,
                        outcome: Err(CoreError::new(ErrorCode::Unavailable, message.clone())),
                    }
                }
                Output::Deliver { .. } if requires > self.durable => continue,
                output => output,
            };
            self.held.push_back((0, output));
        }
        self.failed = Some(reason.clone());
        let now = self.core.now();
        let message = format!("the log failed ({reason}); this daemon serves reads only until restarted");
        self.end_everything(now, ErrorCode::Unavailable, &message);
    }

    /// Moves what the core queued (event deliveries, answers to waiting claims) behind what
    /// came before it. A task handed to nobody goes back, which may answer another claim: the
    /// loop ends when the core has queued nothing more.
    fn collect(&mut self) {
        loop {
            self.core.drain_deliveries(&mut self.deliveries);
            for Delivery { subscriber, event } in std::mem::take(&mut self.deliveries) {
                self.release(Output::Deliver { subscriber, event });
            }
            self.core.drain_claim_answers(&mut self.answers);
            if self.answers.is_empty() {
                return;
            }
            let now = self.core.now();
            for (waiter, outcome) in std::mem::take(&mut self.answers) {
                match self.parked.remove(&waiter) {
                    Some(caller) => {
                        self.parked_callers.remove(&caller);
                        self.release(Output::Reply { caller, outcome });
                    }
                    // Every waiter comes from a parked call and a hang-up cancels it, so an
                    // answer for nobody is a bug; a task handed to nobody still goes back. A
                    // replica holds other replicas' waiters: their answers are theirs.
                    None if self.replicated => {}
                    None => {
                        debug_assert!(false, "an answer to waiter {waiter:?}, which nobody waits on");
                        self.undelivered(now, outcome);
                    }
                }
            }
        }
    }

    /// Queues an output behind everything emitted so far: it leaves once that is durable.
    fn release(&mut self, output: Output) {
        let requires = if self.failed.is_some() { 0 } else { self.emitted };
        debug_assert!(
            self.held.back().is_none_or(|&(last, _)| last <= requires),
            "held outputs stay in index order"
        );
        self.held.push_back((requires, output));
    }

    fn record(&mut self, entry: Entry) {
        if !self.logged || self.failed.is_some() {
            return;
        }
        self.emitted += 1;
        self.persist.push_back((self.emitted, entry));
    }

    /// The protocol's own invariants, beside the core's (the simulator calls both).
    pub fn check_invariants(&self) {
        assert!(self.durable <= self.emitted, "durable beyond emitted");
        assert_eq!(self.parked.len(), self.parked_callers.len(), "parked maps agree");
        for (waiter, caller) in &self.parked {
            assert_eq!(self.parked_callers.get(caller), Some(waiter), "parked maps agree");
        }
        let mut previous = 0;
        for (requires, _) in &self.held {
            assert!(*requires >= previous, "held outputs out of index order");
            assert!(*requires <= self.emitted, "an output waits for an entry never emitted");
            previous = *requires;
        }
        if let Some((first, _)) = self.persist.front() {
            assert_eq!(
                *first,
                self.emitted + 1 - self.persist.len() as u64,
                "persist queue is contiguous"
            );
        }
        self.core.check_invariants();
    }
}
