//! The core's thread: drains commands in batches, reads the clock once per batch, fires due
//! timers, routes event deliveries to subscribers' bounded buffers, then releases the replies.
//!
//! Architecture invariant: this thread is the only owner of the `Core`; nothing else touches
//! its state, so no lock guards it. The driver never blocks on a subscriber or a client: every
//! send out of here is a `try_send` or a oneshot.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::mpsc::error::TrySendError as TrySendErrorTokio;
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::core::entry::Entry;
use crate::core::events::{Delivery, SubscriberId};
use crate::core::tasks::WaiterId;
use crate::core::types::{Map, Millis, new_map};
use crate::core::{Command, Core, CoreError, CoreStats, ErrorCode, Event, Outcome, Reply, Topic};
use crate::idle::{Spin, Spun};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::wal;

/// Commands taken from the queue in one batch at most: bounds the latency of a batch's first
/// reply behind its last command.
pub const BATCH_COMMANDS_MAX: usize = 1024;

/// How often, at most, the driver looks for waiting claims whose callers went away.
const CLAIM_SWEEP_INTERVAL: Duration = Duration::from_millis(200);

/// How a watch stream ends, when the daemon ends it.
#[derive(Debug, Clone)]
pub struct StreamEnd {
    pub code: ErrorCode,
    pub message: String,
}

/// The driver's side of one watch stream: its bounded buffer and the slot for its last word.
pub struct Sink {
    pub events: mpsc::Sender<Arc<Event>>,
    pub end: oneshot::Sender<StreamEnd>,
}

struct SinkState {
    sink: Sink,
    /// The last sequence put into the buffer (or replayed), for the overflow message.
    sequence_last: u64,
}

/// One message to the driver.
pub enum Request {
    /// A unary command; the outcome goes back through `reply`.
    Call {
        command: Command,
        reply: oneshot::Sender<Outcome>,
    },
    /// A command that opens a stream (Watch, WatchElection); on success the sink is attached
    /// before any event can be routed to it.
    Subscribe {
        command: Command,
        sink: Sink,
        reply: oneshot::Sender<Outcome>,
    },
    /// Ends every open stream with UNAVAILABLE and refuses new ones (graceful shutdown).
    EndStreams,
    /// Reads or moves the clock (ClockService); answered with the clock's time after it moved
    /// and every deadline due by then has fired.
    Clock {
        advance_ms: Option<Millis>,
        reply: oneshot::Sender<Result<Millis, CoreError>>,
    },
    /// Stops the driver thread.
    Stop,
}

/// The driver's two inbound lanes: heartbeats, renewals and stream clean-up in a small lane of
/// their own that every batch drains first, and everything else.
pub struct Lanes {
    priority: Receiver<Request>,
    bulk: Receiver<Request>,
}

/// The queues to the driver: the handle the net threads send on, and the lanes it reads.
/// `queue_max` bounds the bulk lane; the priority lane holds `limits::PRIORITY_QUEUE_MAX`.
pub fn channels(queue_max: usize, metrics: Arc<Metrics>) -> (CoreHandle, Lanes) {
    let (bulk_tx, bulk) = crossbeam_channel::bounded(queue_max);
    let (priority_tx, priority) = crossbeam_channel::bounded(crate::limits::PRIORITY_QUEUE_MAX);
    let handle = CoreHandle {
        bulk: bulk_tx,
        priority: priority_tx,
        metrics,
    };
    (handle, Lanes { priority, bulk })
}

/// Starts the driver thread around `core` (new, or rebuilt from the store); with a store, every
/// batch's state changes are logged and made durable before its replies leave. Returns the
/// handle to send it requests.
pub fn spawn(
    core: Core,
    clock: Clock,
    store: Option<Durability>,
    queue_max: usize,
    spin: Duration,
    metrics: Arc<Metrics>,
) -> std::io::Result<(CoreHandle, thread::JoinHandle<()>)> {
    let (handle, lanes) = channels(queue_max, Arc::clone(&metrics));
    let thread = spawn_on(lanes, core, clock, store, spin, metrics)?;
    Ok((handle, thread))
}

/// Starts the driver thread reading `lanes` (made by `channels`); after a batch it polls them
/// for up to `spin` before it sleeps (`idle::Spin`, adaptive; zero never spins).
pub fn spawn_on(
    lanes: Lanes,
    core: Core,
    clock: Clock,
    store: Option<Durability>,
    spin: Duration,
    metrics: Arc<Metrics>,
) -> std::io::Result<thread::JoinHandle<()>> {
    let hash_seed = core.config().seed;
    // Events replayed from the data dir were counted by an earlier process: start from them.
    let events_published = core.events_by_topic();
    thread::Builder::new().name("agentkeeper-core".into()).spawn(move || {
        Driver {
            events_published,
            core,
            clock,
            metrics,
            sinks: new_map(hash_seed),
            claims: new_map(hash_seed),
            claims_swept_at: None,
            claim_answers: Vec::new(),
            closing: false,
            deliveries: Vec::new(),
            replies: Vec::new(),
            store,
            spin: Spin::new(spin),
        }
        .run(&lanes)
    })
}

/// The store and this batch's records not yet written.
pub struct Durability {
    store: Store,
    batch: Vec<u8>,
    batch_records: u64,
    /// Set once a write failed: the daemon then serves reads only, until restarted.
    failed: Option<String>,
    /// Records logged since the last snapshot, and how many make the next one due.
    since_snapshot: u64,
    snapshot_every: u64,
    /// The snapshot being written off this thread, if one is.
    writer: Option<thread::JoinHandle<std::io::Result<()>>>,
}

impl Durability {
    /// `logged` counts the records the log already holds since the last snapshot (what recovery
    /// replayed, and its grace), so that a daemon that restarts often still snapshots.
    pub fn new(store: Store, snapshot_every: u64, logged: u64) -> Self {
        assert!(snapshot_every > 0, "a snapshot is due after at least one record");
        Durability {
            store,
            batch: Vec::new(),
            batch_records: 0,
            failed: None,
            since_snapshot: logged,
            snapshot_every,
            writer: None,
        }
    }
}

/// A reply held until the end of its batch.
enum PendingReply {
    Call(oneshot::Sender<Outcome>, Outcome),
    Clock(oneshot::Sender<Result<Millis, CoreError>>, Result<Millis, CoreError>),
}

struct Driver {
    core: Core,
    clock: Clock,
    metrics: Arc<Metrics>,
    sinks: Map<SubscriberId, SinkState>,
    /// Waiting claims' callers, answered when the core hands out their answer.
    claims: Map<WaiterId, oneshot::Sender<Outcome>>,
    claims_swept_at: Option<Instant>,
    claim_answers: Vec<(WaiterId, Outcome)>,
    closing: bool,
    deliveries: Vec<Delivery>,
    replies: Vec<PendingReply>,
    store: Option<Durability>,
    /// The per-topic event totals already added to the metrics.
    events_published: [u64; Topic::ALL.len()],
    /// Whether to poll the lanes for a while after a batch before sleeping on them.
    spin: Spin,
}

impl Driver {
    fn run(mut self, lanes: &Lanes) {
        let mut batch: Vec<Request> = Vec::with_capacity(BATCH_COMMANDS_MAX);
        let mut worked = false;
        let waits = Spun::ALL.map(|how| self.metrics.core_waits_total.with_label_values(&[how.as_str()]));
        loop {
            // Right after work, the next request often follows within microseconds (a client's
            // next call, the rest of a burst): poll for it before paying for a sleep and a wake.
            let spun = worked.then(|| {
                self.spin
                    .wait(|| lanes.priority.try_recv().or_else(|_| lanes.bulk.try_recv()).ok())
            });
            if let Some((_, how)) = &spun {
                waits[*how as usize].inc();
            }
            let first = match spun {
                Some((Some(request), _)) => Ok(request),
                _ => self.sleep_for_work(lanes),
            };
            match first {
                Ok(request) => batch.push(request),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Heartbeats and renewals first: however long the bulk lane, a live agent's
            // heartbeat waits for one batch at most, so overload never declares it dead.
            for lane in [&lanes.priority, &lanes.bulk] {
                while batch.len() < BATCH_COMMANDS_MAX {
                    match lane.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
            }
            worked = !batch.is_empty();
            if !self.run_batch(&mut batch) {
                return;
            }
            // What arrived while the batch ran (an idle daemon shows 0).
            self.metrics
                .core_queue_depth
                .set(i64::try_from(lanes.bulk.len() + lanes.priority.len()).unwrap_or(i64::MAX));
        }
    }

    /// Blocks until a request comes, the next timer is due, or parked claims need a look.
    fn sleep_for_work(&self, lanes: &Lanes) -> Result<Request, RecvTimeoutError> {
        let deadline = self
            .core
            .next_deadline()
            .filter(|_| self.clock.runs_by_itself() && !self.closing)
            .map(|deadline| Duration::from_millis(deadline.saturating_sub(self.clock.now())));
        // Parked claims need a look now and then even when nothing else happens: their
        // callers may hang up while the daemon is idle.
        let sweep = (!self.claims.is_empty()).then_some(CLAIM_SWEEP_INTERVAL);
        match [deadline, sweep].into_iter().flatten().min() {
            None => crossbeam_channel::select! {
                recv(lanes.priority) -> request => request.map_err(|_| RecvTimeoutError::Disconnected),
                recv(lanes.bulk) -> request => request.map_err(|_| RecvTimeoutError::Disconnected),
            },
            Some(wait) => crossbeam_channel::select! {
                recv(lanes.priority) -> request => request.map_err(|_| RecvTimeoutError::Disconnected),
                recv(lanes.bulk) -> request => request.map_err(|_| RecvTimeoutError::Disconnected),
                default(wait) => Err(RecvTimeoutError::Timeout),
            },
        }
    }

    /// Applies one batch; false once the driver was told to stop. Replies leave only after the
    /// whole batch is applied, its records are durable and its events are routed; a read that
    /// comes before any change in the batch is answered at once (it waits on no disk).
    #[allow(clippy::disallowed_methods)] // times the batch for the latency histogram
    fn run_batch(&mut self, batch: &mut Vec<Request>) -> bool {
        let started = Instant::now();
        // Once shutdown has begun, time stands still for the core: nobody may be declared dead,
        // and no lease may expire, while clients cannot reach the daemon to prevent it.
        let mut now = if self.closing {
            self.core.now()
        } else {
            self.clock.now().max(self.core.now())
        };
        if self.core.tick(now) > 0 {
            self.log(&Entry::Tick { now });
        }
        self.sweep_claims(now);
        let mut running = true;
        let batch_len = batch.len();
        for request in batch.drain(..) {
            match request {
                Request::Call { command, reply } => self.call(now, command, reply),
                Request::Subscribe { command, sink, reply } => self.subscribe(now, command, sink, reply),
                Request::Clock { advance_ms, reply } => {
                    let moved = match advance_ms {
                        Some(ms) => self.clock.advance(ms),
                        None => self.clock.manual_now(),
                    };
                    if let Ok(time) = moved {
                        now = now.max(time);
                        if self.core.tick(now) > 0 {
                            self.log(&Entry::Tick { now });
                        }
                    }
                    self.replies.push(PendingReply::Clock(reply, moved));
                }
                Request::EndStreams => self.end_streams(),
                Request::Stop => running = false,
            }
        }
        self.release(now, batch_len, started);
        self.snapshot_if_due();
        running
    }

    /// The end of a batch: durable, events routed, claim answers and replies handed over. A
    /// claim whose caller is gone puts its task back (ReturnTask), which is one more round.
    #[allow(clippy::disallowed_methods)] // times the batch for the latency histogram
    fn release(&mut self, now: Millis, batch_len: usize, started: Instant) {
        loop {
            self.commit();
            self.route_deliveries(now);
            let mut returns = self.route_claim_answers();
            // Gauges first: a client that got its answer and then scrapes sees its own change.
            self.publish(batch_len, started);
            for pending in self.replies.drain(..) {
                match pending {
                    PendingReply::Call(reply, outcome) => {
                        if let Err(undelivered) = reply.send(outcome) {
                            returns.extend(return_of(&undelivered));
                        }
                    }
                    PendingReply::Clock(reply, moved) => {
                        let _ = reply.send(moved);
                    }
                }
            }
            if returns.is_empty() {
                return;
            }
            self.metrics.claims_undelivered.inc_by(returns.len() as u64);
            for command in returns {
                self.apply_own(now, command);
            }
        }
    }

    /// Applies a command the driver itself raises (no caller waits for it), logged like any.
    fn apply_own(&mut self, now: Millis, command: Command) {
        if command.is_logged() {
            if self.store.as_ref().is_some_and(|d| d.failed.is_some()) {
                return;
            }
            self.log(&Entry::Apply {
                now,
                command: command.clone(),
                principal: None,
            });
        }
        let _ = self.core.apply(now, command);
    }

    /// Hands the core's answers to waiting claims to their callers, with this batch's replies.
    /// A task handed to a waiter whose caller is already gone (swept or ended by shutdown in
    /// this very batch) cannot be delivered: it goes back with ReturnTask, returned here.
    fn route_claim_answers(&mut self) -> Vec<Command> {
        self.core.drain_claim_answers(&mut self.claim_answers);
        let failed = self.store.as_ref().and_then(|d| d.failed.clone());
        let mut returns = Vec::new();
        for (waiter, mut outcome) in self.claim_answers.drain(..) {
            match self.claims.remove(&waiter) {
                Some(reply) => {
                    if let Some(failed) = &failed {
                        let message = format!("the claim could not be made durable ({failed}); restart the daemon");
                        outcome = Err(CoreError::new(ErrorCode::Unavailable, message));
                    }
                    self.replies.push(PendingReply::Call(reply, outcome));
                }
                None => returns.extend(return_of(&outcome)),
            }
        }
        returns
    }

    /// Cancels waiting claims whose callers hung up, so that no task is handed to them; at
    /// most every `CLAIM_SWEEP_INTERVAL` (a claim missed here is put back when its answer
    /// cannot be delivered).
    #[allow(clippy::disallowed_methods)] // paces the sweep
    fn sweep_claims(&mut self, now: Millis) {
        if self.claims.is_empty()
            || self
                .claims_swept_at
                .is_some_and(|at| at.elapsed() < CLAIM_SWEEP_INTERVAL)
        {
            return;
        }
        self.claims_swept_at = Some(Instant::now());
        let mut gone: Vec<WaiterId> = self
            .claims
            .iter()
            .filter(|(_, reply)| reply.is_closed())
            .map(|(waiter, _)| *waiter)
            .collect();
        gone.sort_unstable();
        for waiter in gone {
            self.claims.remove(&waiter);
            self.apply_own(now, Command::CancelClaim { waiter });
        }
    }

    fn call(&mut self, now: Millis, command: Command, reply: oneshot::Sender<Outcome>) {
        if command.is_logged() {
            if let Some(failed) = self.store.as_ref().and_then(|d| d.failed.as_ref()) {
                let message = format!("writes are refused since the log failed ({failed}); restart the daemon");
                let _ = reply.send(Err(CoreError::new(ErrorCode::Unavailable, message)));
                return;
            }
            if self.store.is_some() {
                self.log(&Entry::Apply {
                    now,
                    command: command.clone(),
                    principal: None,
                });
            }
        }
        let logged = command.is_logged();
        let outcome = self.core.apply(now, command);
        if let Ok(Reply::ClaimWaiting { waiter }) = outcome {
            // Answered when the core hands a task (or the end of the wait) to this waiter.
            self.claims.insert(waiter, reply);
            return;
        }
        let nothing_pending = self.store.as_ref().is_none_or(|d| d.batch.is_empty()) && self.replies.is_empty();
        if !logged && nothing_pending {
            // A read with no change before it in this batch: it waits on no disk, answer now.
            let _ = reply.send(outcome);
        } else {
            self.replies.push(PendingReply::Call(reply, outcome));
        }
    }

    fn log(&mut self, record: &Entry) {
        if let Some(durability) = &mut self.store {
            wal::encode_record(record, &mut durability.batch);
            durability.batch_records += 1;
        }
    }

    /// Every `snapshot_every` records: a new log generation, and the state as of now encoded
    /// here (the pause, measured) and written by another thread. The older generation stays
    /// until that write is durable, so a crash in between loses nothing.
    #[allow(clippy::disallowed_methods)] // times the snapshot pause for its histogram
    fn snapshot_if_due(&mut self) {
        let Some(durability) = &mut self.store else {
            return;
        };
        let busy = durability.writer.as_ref().is_some_and(|w| !w.is_finished());
        if durability.since_snapshot < durability.snapshot_every || busy || durability.failed.is_some() {
            return;
        }
        if let Some(writer) = durability.writer.take() {
            match writer.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "writing a snapshot failed; the logs are kept"),
                Err(_) => tracing::error!("the snapshot writer panicked; the logs are kept"),
            }
        }
        let started = Instant::now();
        let (dir, generation) = match durability.store.rotate() {
            Ok(rotated) => rotated,
            Err(error) => {
                tracing::error!(%error, "cannot start a new log generation; continuing in the current one");
                return;
            }
        };
        // Only the ordered copy is made here; encoding and writing happen on the writer thread.
        let snapshot = self.core.snapshot();
        self.metrics.observe_snapshot(started.elapsed());
        durability.since_snapshot = 0;
        let metrics = Arc::clone(&self.metrics);
        let spawned = thread::Builder::new()
            .name("agentkeeper-snapshot".into())
            .spawn(move || {
                let bytes = crate::store::encode_snapshot(&snapshot);
                metrics
                    .snapshot_bytes
                    .set(i64::try_from(bytes.len()).unwrap_or(i64::MAX));
                crate::store::write_snapshot(&dir, generation, &bytes)
            });
        match spawned {
            Ok(writer) => durability.writer = Some(writer),
            Err(error) => tracing::error!(%error, "cannot start the snapshot writer"),
        }
    }

    /// Group commit: the batch's records in one write and one fdatasync. If that fails, the
    /// batch's answers become UNAVAILABLE and the daemon serves reads only from then on.
    #[allow(clippy::disallowed_methods)] // times the fsync for the latency histogram
    fn commit(&mut self) {
        let Some(durability) = &mut self.store else {
            return;
        };
        if durability.batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let written = durability.store.append(&durability.batch);
        self.metrics.observe_sync(durability.batch.len(), started.elapsed());
        durability.batch.clear();
        durability.since_snapshot += std::mem::take(&mut durability.batch_records);
        if let Err(error) = written {
            tracing::error!(%error, log = %durability.store.log_path().display(), "log write failed; serving reads only");
            let message = format!("the change could not be made durable ({error}); the daemon serves reads only");
            durability.failed = Some(error.to_string());
            for pending in &mut self.replies {
                if let PendingReply::Call(_, outcome) = pending {
                    *outcome = Err(CoreError::new(ErrorCode::Unavailable, message.clone()));
                }
            }
        }
    }

    fn subscribe(&mut self, now: Millis, command: Command, sink: Sink, reply: oneshot::Sender<Outcome>) {
        if self.closing {
            let _ = reply.send(Err(CoreError::new(
                ErrorCode::Unavailable,
                "the daemon is shutting down",
            )));
            return;
        }
        let outcome = self.core.apply(now, command);
        let subscriber = match &outcome {
            Ok(Reply::Watching { subscriber, replay }) => Some((*subscriber, replay.last().map_or(0, |e| e.sequence))),
            Ok(Reply::WatchingElection { subscriber, .. }) => Some((*subscriber, 0)),
            _ => None,
        };
        if let Some((id, sequence_last)) = subscriber {
            self.sinks.insert(id, SinkState { sink, sequence_last });
        }
        if reply.send(outcome).is_err()
            && let Some((id, _)) = subscriber
        {
            self.sinks.remove(&id);
            let _ = self.core.apply(now, Command::Unwatch { subscriber: id });
        }
    }

    /// Puts each delivery into its subscriber's buffer; a full buffer ends that stream with
    /// RESOURCE_EXHAUSTED, a closed one (client gone) just ends it.
    fn route_deliveries(&mut self, now: Millis) {
        self.core.drain_deliveries(&mut self.deliveries);
        let mut ended: Vec<SubscriberId> = Vec::new();
        for delivery in self.deliveries.drain(..) {
            let Some(state) = self.sinks.get_mut(&delivery.subscriber) else {
                continue;
            };
            let sequence = delivery.event.sequence;
            match state.sink.events.try_send(delivery.event) {
                Ok(()) => state.sequence_last = sequence,
                Err(TrySendErrorTokio::Full(_)) => {
                    // Removed at once: no later event may slip into the buffer after a gap.
                    let state = self.sinks.remove(&delivery.subscriber).expect("sink present");
                    let capacity = state.sink.events.max_capacity();
                    let last = state.sequence_last;
                    let message = format!(
                        "watch buffer overflowed ({capacity} events): the last sequence delivered is {last}; \
                         resume with from_sequence {}",
                        last + 1
                    );
                    let _ = state.sink.end.send(StreamEnd {
                        code: ErrorCode::ResourceExhausted,
                        message,
                    });
                    self.metrics.watch_overflows.inc();
                    ended.push(delivery.subscriber);
                }
                Err(TrySendErrorTokio::Closed(_)) => {
                    self.sinks.remove(&delivery.subscriber);
                    ended.push(delivery.subscriber);
                }
            }
        }
        for id in ended {
            let _ = self.core.apply(now, Command::Unwatch { subscriber: id });
        }
        // Unwatch emits no events and drops what was queued for the ended subscribers.
        self.core.drain_deliveries(&mut self.deliveries);
        debug_assert!(self.deliveries.is_empty(), "unwatch produced deliveries");
        self.deliveries.clear();
    }

    fn end_streams(&mut self) {
        self.closing = true;
        let now = self.core.now();
        let mut waiters: Vec<WaiterId> = self.claims.keys().copied().collect();
        waiters.sort_unstable();
        for waiter in waiters {
            if let Some(reply) = self.claims.remove(&waiter) {
                let _ = reply.send(Err(CoreError::new(
                    ErrorCode::Unavailable,
                    "the daemon is shutting down",
                )));
            }
            self.apply_own(now, Command::CancelClaim { waiter });
        }
        let mut ids: Vec<SubscriberId> = self.sinks.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(state) = self.sinks.remove(&id) {
                let end = StreamEnd {
                    code: ErrorCode::Unavailable,
                    message: "the daemon is shutting down".into(),
                };
                let _ = state.sink.end.send(end);
            }
            let _ = self.core.apply(now, Command::Unwatch { subscriber: id });
        }
    }

    fn publish(&mut self, batch_len: usize, started: Instant) {
        let stats: CoreStats = self.core.stats();
        self.metrics.publish_core(&stats);
        self.metrics
            .publish_events(&self.core.events_by_topic(), &mut self.events_published);
        self.metrics.observe_batch(batch_len, started.elapsed());
    }
}

/// Whether a request goes in the priority lane: what keeps agents and leases alive, and the
/// clean-up that frees a stream's place.
fn is_priority(request: &Request) -> bool {
    matches!(
        request,
        Request::Call {
            command: Command::Heartbeat { .. } | Command::RenewLease { .. } | Command::Unwatch { .. },
            ..
        }
    )
}

/// The method label of a shed request.
fn method_of(request: &Request) -> &'static str {
    match request {
        Request::Call { command, .. } | Request::Subscribe { command, .. } => command.name(),
        Request::Clock { .. } => "Clock",
        Request::EndStreams | Request::Stop => "Shutdown",
    }
}

/// The ReturnTask that puts back a claim its caller never got (None for any other outcome).
fn return_of(undelivered: &Outcome) -> Option<Command> {
    match undelivered {
        Ok(Reply::Claimed { task, lease }) => Some(Command::ReturnTask {
            task_id: task.id.to_string(),
            token: lease.token,
        }),
        _ => None,
    }
}

/// The net threads' handle on the driver: bounded lanes that never block them.
#[derive(Clone)]
pub struct CoreHandle {
    bulk: Sender<Request>,
    priority: Sender<Request>,
    metrics: Arc<Metrics>,
}

impl CoreHandle {
    /// Queues a request in its lane; a full lane is RESOURCE_EXHAUSTED at once rather than a
    /// wait (load shedding, counted in `agentkeeper_shed_total{method}`).
    pub fn send(&self, request: Request) -> Result<(), CoreError> {
        let lane = if is_priority(&request) {
            &self.priority
        } else {
            &self.bulk
        };
        lane.try_send(request).map_err(|error| match error {
            TrySendError::Full(request) => {
                self.metrics.shed_total.with_label_values(&[method_of(&request)]).inc();
                let capacity = lane.capacity().unwrap_or(0);
                let name = if std::ptr::eq(lane, &self.bulk) {
                    "core_queue_max"
                } else {
                    "priority_queue_max"
                };
                CoreError::new(
                    ErrorCode::ResourceExhausted,
                    format!(
                        "{}: the daemon is overloaded, retry with backoff",
                        crate::limits::reached_message(name, capacity)
                    ),
                )
            }
            TrySendError::Disconnected(_) => CoreError::new(ErrorCode::Unavailable, "the daemon is shutting down"),
        })
    }

    /// Tells the driver to stop after what is queued; waits for room rather than being shed.
    pub fn stop(&self) {
        let _ = self.bulk.send(Request::Stop);
    }

    /// Reads the clock (`None`) or advances it, through the driver.
    pub async fn clock(&self, advance_ms: Option<Millis>) -> Result<Millis, CoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Clock { advance_ms, reply })?;
        answer
            .await
            .unwrap_or_else(|_| Err(CoreError::new(ErrorCode::Unavailable, "the daemon is shutting down")))
    }

    /// Runs one unary command through the core.
    pub async fn call(&self, command: Command) -> Outcome {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Call { command, reply })?;
        answer
            .await
            .unwrap_or_else(|_| Err(CoreError::new(ErrorCode::Unavailable, "the daemon is shutting down")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::{AgentCard, AgentStatus};
    use crate::core::{CoreConfig, Reply};

    const T0: Millis = 1_000_000;

    fn call(handle: &CoreHandle, command: Command) -> Result<oneshot::Receiver<Outcome>, CoreError> {
        let (reply, answer) = oneshot::channel();
        handle.send(Request::Call { command, reply })?;
        Ok(answer)
    }

    #[test]
    fn a_full_bulk_lane_sheds_bulk_work_but_heartbeats_still_keep_an_agent_alive() {
        let metrics = Arc::new(Metrics::new());
        let mut core = Core::new(
            CoreConfig {
                seed: 3,
                ..CoreConfig::default()
            },
            T0,
        );
        let card = AgentCard {
            name: "live".into(),
            ..AgentCard::default()
        };
        let Ok(Reply::Registered { agent_id }) = core.apply(T0, Command::Register { card, ttl_seconds: 1 }) else {
            panic!("registers")
        };
        let agent_id = agent_id.to_string();
        let (handle, lanes) = channels(4, Arc::clone(&metrics));
        let find = || Command::Find {
            query: "live".into(),
            tools: vec![],
            limit: 0,
        };
        // The driver is not running yet: the bulk lane fills up and stays full.
        let queued: Vec<_> = (0..4)
            .map(|_| call(&handle, find()).expect("room in the bulk lane"))
            .collect();
        let shed = call(&handle, find()).expect_err("the bulk lane is full");
        assert_eq!(shed.code, ErrorCode::ResourceExhausted);
        assert!(
            shed.message.starts_with("limit core_queue_max (4) reached"),
            "{}",
            shed.message
        );
        assert_eq!(metrics.shed_total.with_label_values(&["Find"]).get(), 1);
        let heartbeat = call(
            &handle,
            Command::Heartbeat {
                agent_id: agent_id.clone(),
            },
        )
        .expect("a heartbeat goes in its own lane");

        // Just before the agent's ttl runs out, the core gets to work.
        let thread = spawn_on(
            lanes,
            core,
            Clock::manual(T0 + 900),
            None,
            Duration::ZERO,
            Arc::clone(&metrics),
        )
        .expect("spawns");
        assert_eq!(heartbeat.blocking_recv().expect("answered"), Ok(Reply::Done));
        for answer in queued {
            assert!(answer.blocking_recv().expect("answered").is_ok());
        }
        // 1.4 s after registration: past the first ttl, within the one the heartbeat renewed.
        let (reply, moved) = oneshot::channel();
        handle
            .send(Request::Clock {
                advance_ms: Some(500),
                reply,
            })
            .expect("room");
        assert_eq!(moved.blocking_recv().expect("answered"), Ok(T0 + 1400));
        let status = call(&handle, Command::GetAgent { agent_id })
            .expect("room")
            .blocking_recv()
            .expect("answered");
        let Ok(Reply::Agent(agent)) = status else {
            panic!("GetAgent: {status:?}")
        };
        assert_eq!(
            agent.status,
            AgentStatus::Alive,
            "the heartbeat got through the overload"
        );
        handle.stop();
        thread.join().expect("the driver ends");
    }

    #[test]
    fn heartbeats_renewals_and_unwatch_take_the_priority_lane() {
        let (reply, _) = oneshot::channel();
        let heartbeat = Request::Call {
            command: Command::Heartbeat { agent_id: "a".into() },
            reply,
        };
        assert!(is_priority(&heartbeat));
        let (reply, _) = oneshot::channel();
        let renew = Request::Call {
            command: Command::RenewLease {
                task_id: "k".into(),
                agent_id: "a".into(),
                token: 1,
                ttl_seconds: 1,
            },
            reply,
        };
        assert!(is_priority(&renew));
        let (reply, _) = oneshot::channel();
        let unwatch = Request::Call {
            command: Command::Unwatch {
                subscriber: SubscriberId(1),
            },
            reply,
        };
        assert!(is_priority(&unwatch));
        let (reply, _) = oneshot::channel();
        let register = Request::Call {
            command: Command::Deregister { agent_id: "a".into() },
            reply,
        };
        assert!(!is_priority(&register));
    }
}
