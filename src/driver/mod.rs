//! The core's thread: a thin loop over the core's protocol (`core::machine`). It takes requests
//! in batches, reads the clock once per batch, hands each request to the machine, and does what
//! the machine's outputs say: write entries (group commit), send replies, fill stream buffers.
//!
//! Architecture invariant: this thread is the only owner of the core; nothing else touches its
//! state, so no lock guards it. The driver decides nothing about state: ordering, parked claims,
//! slow streams and shutdown are the machine's. It never blocks on a subscriber or a client:
//! every send out of here is a `try_send` or a oneshot.

mod durability;
mod progress;
mod queue;
mod streams;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::core::machine::{CallerId, Input, Machine, Output};
use crate::core::types::{Map, Millis, Set, new_map, new_set};
use crate::core::{Command, CoreError, Outcome, Reply, Topic};
use crate::idle::{Spin, Spun};
use crate::metrics::Metrics;

pub use durability::Durability;
pub use progress::{Beat, Progress};
pub use queue::{CoreHandle, Lanes, Request, Sink, channels};
use streams::Streams;

/// Requests taken from the lanes in one batch at most: bounds the latency of a batch's first
/// reply behind its last request.
pub const BATCH_COMMANDS_MAX: usize = 1024;

/// How often, at most, the driver looks for parked callers that hung up.
const SWEEP_INTERVAL: Duration = Duration::from_millis(200);

/// Starts the driver thread around `machine`; with a store, every entry is written and made
/// durable before what depends on it leaves. Returns the handle to send it requests.
pub fn spawn(
    machine: Machine,
    clock: Clock,
    store: Option<Durability>,
    queue_max: usize,
    spin: Duration,
    metrics: Arc<Metrics>,
) -> std::io::Result<(CoreHandle, thread::JoinHandle<()>)> {
    let (handle, lanes) = channels(queue_max, Arc::clone(&metrics));
    let thread = spawn_on(lanes, machine, clock, store, spin, metrics)?;
    Ok((handle, thread))
}

/// Starts the driver thread reading `lanes` (made by `channels`); after a batch it polls them
/// for up to `spin` before it sleeps (`idle::Spin`, adaptive; zero never spins).
pub fn spawn_on(
    lanes: Lanes,
    machine: Machine,
    clock: Clock,
    store: Option<Durability>,
    spin: Duration,
    metrics: Arc<Metrics>,
) -> std::io::Result<thread::JoinHandle<()>> {
    let seed = machine.core().config().seed;
    // Events replayed from the data dir were counted by an earlier process: start from them.
    let events_published = machine.core().events_by_topic();
    let driver = Driver {
        events_published,
        machine,
        clock,
        metrics,
        callers: new_map(seed),
        parked: new_set(seed),
        swept_at: None,
        caller_next: 1,
        streams: Streams::new(seed),
        store,
        spin: Spin::new(spin),
    };
    thread::Builder::new().name("agentkeeper-core".into()).spawn(move || {
        // The store's writes and the stream buffers' sends happen on this thread.
        if let Some(seed) = crate::buggify::enable_from_env() {
            tracing::warn!(
                seed,
                "fault points enabled ({}): writes and streams will fail now and then",
                crate::buggify::ENV
            );
        }
        driver.run(&lanes)
    })
}

/// Where a caller's answer goes.
enum Caller {
    Call(oneshot::Sender<Outcome>),
    Subscribe(oneshot::Sender<Outcome>, Sink),
    Clock(oneshot::Sender<Result<Millis, CoreError>>),
}

struct Driver {
    machine: Machine,
    clock: Clock,
    metrics: Arc<Metrics>,
    callers: Map<CallerId, Caller>,
    /// Callers whose claims wait in the core: looked at now and then for hang-ups.
    parked: Set<CallerId>,
    swept_at: Option<Instant>,
    caller_next: u64,
    streams: Streams,
    store: Option<Durability>,
    /// The per-topic event totals already added to the metrics.
    events_published: [u64; Topic::ALL.len()],
    spin: Spin,
}

impl Driver {
    fn run(mut self, lanes: &Lanes) {
        let mut batch: Vec<Request> = Vec::with_capacity(BATCH_COMMANDS_MAX);
        let mut worked = false;
        let waits = Spun::ALL.map(|how| self.metrics.core_waits_total.with_label_values(&[how.as_str()]));
        loop {
            // Right after work the next request often follows within microseconds (a client's
            // next call, the rest of a burst): poll for it before paying for a sleep and a wake.
            let spun = worked.then(|| self.spin.wait(|| lanes.try_recv()));
            if let Some((_, how)) = &spun {
                waits[*how as usize].inc();
            }
            match spun {
                Some((Some(request), _)) => batch.push(request),
                _ => match self.sleep_for_work(lanes) {
                    Ok(request) => batch.push(request),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            }
            // Heartbeats and renewals first: however long the bulk lane, a live agent's
            // heartbeat waits for one batch at most, so overload never declares it dead.
            while batch.len() < BATCH_COMMANDS_MAX
                && let Some(request) = lanes.try_recv()
            {
                batch.push(request);
            }
            worked = !batch.is_empty();
            lanes.progress.batch_started();
            crate::buggify::hold_while_wedged();
            let running = self.run_batch(&mut batch);
            lanes.progress.batch_finished();
            if !running {
                return;
            }
            let depth = i64::try_from(lanes.len()).unwrap_or(i64::MAX);
            self.metrics.core_queue_depth.set(depth);
        }
    }

    /// Blocks until a request comes, the machine's next deadline, or parked callers need a look.
    fn sleep_for_work(&self, lanes: &Lanes) -> Result<Request, RecvTimeoutError> {
        let deadline = (self.machine.poll_timeout())
            .filter(|_| self.clock.runs_by_itself())
            .map(|deadline| Duration::from_millis(deadline.saturating_sub(self.clock.now())));
        let sweep = (!self.parked.is_empty()).then_some(SWEEP_INTERVAL);
        let disconnected = |_| RecvTimeoutError::Disconnected;
        match [deadline, sweep].into_iter().flatten().min() {
            None => crossbeam_channel::select! {
                recv(lanes.priority) -> request => request.map_err(disconnected),
                recv(lanes.bulk) -> request => request.map_err(disconnected),
            },
            Some(wait) => crossbeam_channel::select! {
                recv(lanes.priority) -> request => request.map_err(disconnected),
                recv(lanes.bulk) -> request => request.map_err(disconnected),
                default(wait) => Err(RecvTimeoutError::Timeout),
            },
        }
    }

    /// Hands one batch to the machine and does what it says; false once told to stop.
    #[allow(clippy::disallowed_methods)] // times the batch for the latency histogram
    fn run_batch(&mut self, batch: &mut Vec<Request>) -> bool {
        let started = Instant::now();
        let mut now = self.clock.now();
        self.machine.handle(now, Input::Tick);
        self.sweep(now);
        let mut running = true;
        let batch_len = batch.len();
        for request in batch.drain(..) {
            let (command, principal, caller) = match request {
                Request::Call {
                    command,
                    principal,
                    reply,
                } => (command, principal, Caller::Call(reply)),
                Request::Subscribe { command, sink, reply } => (command, None, Caller::Subscribe(reply, sink)),
                Request::Clock { advance_ms, reply } => {
                    let moved = match advance_ms {
                        Some(ms) => self.clock.advance(ms),
                        None => self.clock.manual_now(),
                    };
                    match moved {
                        Ok(time) => now = now.max(time),
                        Err(error) => {
                            let _ = reply.send(Err(error));
                            continue;
                        }
                    }
                    (Command::Now, None, Caller::Clock(reply))
                }
                Request::EndStreams => {
                    self.machine.handle(now, Input::Shutdown);
                    continue;
                }
                Request::Stop => {
                    running = false;
                    continue;
                }
            };
            let id = CallerId(self.caller_next);
            self.caller_next += 1;
            self.callers.insert(id, caller);
            let call = Input::Call {
                caller: id,
                command,
                principal,
            };
            self.machine.handle(now, call);
        }
        self.flush(now);
        // Gauges after the replies left: a client that got its answer and then scrapes sees its
        // own change once the next batch has run, never a value older than its call.
        self.metrics.publish_core(&self.machine.core().stats());
        (self.metrics).publish_events(&self.machine.core().events_by_topic(), &mut self.events_published);
        self.metrics.observe_batch(batch_len, started.elapsed());
        if let Some(store) = &mut self.store {
            store.snapshot_if_due(&self.machine, &self.metrics);
        }
        running
    }

    /// Does what the machine says until it waits for nothing: entries go into the batch's write,
    /// which is made durable (and acknowledged) when nothing else can leave before it.
    fn flush(&mut self, now: Millis) {
        loop {
            match self.machine.poll() {
                Some(Output::Persist { index, entry }) => match &mut self.store {
                    Some(store) => store.add(index, &entry),
                    None => unreachable!("a machine without a log emits no entries"),
                },
                Some(output) => self.dispatch(now, output),
                None => {
                    let Some(store) = self.store.as_mut().filter(|store| store.has_pending()) else {
                        return;
                    };
                    let input = match store.commit(&self.metrics) {
                        Ok(up_to) => Input::Persisted { up_to },
                        Err(reason) => Input::PersistFailed { reason },
                    };
                    self.machine.handle(now, input);
                }
            }
        }
    }

    fn dispatch(&mut self, now: Millis, output: Output) {
        match output {
            Output::Persist { .. } => unreachable!("handled by flush"),
            Output::Reply { caller, outcome } => {
                self.parked.remove(&caller);
                let undelivered = match self.callers.remove(&caller) {
                    Some(Caller::Call(reply)) => reply.send(outcome).err(),
                    Some(Caller::Subscribe(reply, sink)) => self.streams.open(reply, sink, outcome),
                    Some(Caller::Clock(reply)) => {
                        let _ = reply.send(outcome.map(|reply| match reply {
                            Reply::Now(time) => time,
                            other => unreachable!("Now answered with {other:?}"),
                        }));
                        None
                    }
                    None => unreachable!("a reply for caller {caller:?}, who is not waiting"),
                };
                if let Some(outcome) = undelivered {
                    if matches!(outcome, Ok(Reply::Claimed { .. })) {
                        self.metrics.claims_undelivered.inc();
                    }
                    self.machine.handle(now, Input::Undelivered { outcome });
                }
            }
            Output::Park { caller } => {
                self.parked.insert(caller);
            }
            Output::Deliver { subscriber, event } => {
                if let Some(gone) = self.streams.deliver(subscriber, event, &self.metrics) {
                    self.machine.handle(now, gone);
                }
            }
            Output::EndStream { subscriber, end } => self.streams.end(subscriber, end),
            Output::Propose { .. } => unreachable!("a single node's machine orders its own writes"),
        }
    }

    /// Tells the machine about parked callers and stream readers that went away, at most every
    /// `SWEEP_INTERVAL` (a claim missed here goes back when its answer cannot be delivered; a
    /// stream's reader usually says so itself, with Unwatch, and its buffer goes here).
    #[allow(clippy::disallowed_methods)] // paces the sweep
    fn sweep(&mut self, now: Millis) {
        let idle = self.parked.is_empty() && self.streams.is_empty();
        if idle || self.swept_at.is_some_and(|at| at.elapsed() < SWEEP_INTERVAL) {
            return;
        }
        self.swept_at = Some(Instant::now());
        let mut gone: Vec<CallerId> = (self.parked.iter())
            .filter(|&caller| matches!(self.callers.get(caller), Some(Caller::Call(reply)) if reply.is_closed()))
            .copied()
            .collect();
        gone.sort_unstable();
        for caller in gone {
            self.parked.remove(&caller);
            self.callers.remove(&caller);
            self.machine.handle(now, Input::CallerGone { caller });
        }
        for subscriber in self.streams.sweep_closed() {
            let gone = Input::SubscriberGone {
                subscriber,
                overflow: None,
            };
            self.machine.handle(now, gone);
        }
    }
}

#[cfg(test)]
mod tests;
