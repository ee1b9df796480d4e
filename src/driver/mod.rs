//! The core's thread: a thin loop over the core's protocol (`core::machine`). It takes requests
//! in batches, reads the clock once per batch, hands each request to the machine, and does what
//! the machine's outputs say: write entries (group commit), send replies, fill stream buffers.
//!
//! Architecture invariant: this thread is the only owner of the core; nothing else touches its
//! state, so no lock guards it. The driver decides nothing about state: ordering, parked claims,
//! slow streams and shutdown are the machine's. It never blocks on a subscriber or a client:
//! every send out of here is a `try_send` or a oneshot.

mod cluster;
mod durability;
pub mod mailbox;
mod outlets;
mod progress;
mod queue;
mod single;
mod streams;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::cluster::{ClusterView, MemberChange, PeerTraffic};
use crate::core::machine::{Input, Machine};
use crate::core::types::Millis;
use crate::core::{Command, Core, CoreError, ErrorCode, Topic};
use crate::idle::{Spin, Spun};
use crate::metrics::Metrics;

pub use cluster::{ClusterNode, Connect, Link, PeerLink, PeerOutbox};
pub use durability::Durability;
use outlets::{Caller, Outlets, SWEEP_INTERVAL};
pub use progress::{Beat, Progress};
pub use queue::{Answer, CoreHandle, Lanes, Request, Sink, channels};

/// Requests taken from the lanes in one batch at most: bounds the latency of a batch's first
/// reply behind its last request.
pub const BATCH_COMMANDS_MAX: usize = 1024;

/// What the driver's loop runs: a single node's machine with its store, or a cluster node
/// (consensus, its log on disk, its peers). The loop is the same for both.
trait Engine: Send + 'static {
    /// The state as the engine last applied it (for the metrics).
    fn core(&self) -> &Core;
    /// When time next matters to the engine.
    fn deadline(&self) -> Option<Millis>;
    /// One of the machine's inputs: a caller's command, a tick, a hang-up, shutdown.
    fn handle(&mut self, now: Millis, input: Input);
    /// Consensus traffic from a peer; a single node has none.
    fn peer(&mut self, now: Millis, traffic: PeerTraffic) {
        let _ = (now, traffic);
    }
    /// Does what the engine's outputs say until it waits for nothing; an error is fatal.
    fn flush(&mut self, now: Millis, outlets: &mut Outlets, metrics: &Metrics) -> Result<(), String>;
    /// Work between batches (a single node's snapshots).
    fn after_batch(&mut self, metrics: &Arc<Metrics>) {
        let _ = metrics;
    }
    /// A peer said how far it has applied (for the cluster's status); a single node has none.
    fn heard(&mut self, now: Millis, from: u64, applied: u64) {
        let _ = (now, from, applied);
    }
    /// An operator's membership change; a single node has no members to change.
    fn change_members(&mut self, now: Millis, change: MemberChange, reply: oneshot::Sender<Result<(), CoreError>>) {
        let _ = (now, change);
        let message = "this daemon runs as a single node (started without --initial-cluster)";
        let _ = reply.send(Err(CoreError::new(ErrorCode::FailedPrecondition, message)));
    }
    /// The cluster as this node sees it; None on a single node.
    fn cluster(&self) -> Option<ClusterView> {
        None
    }
}

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
    spawn_engine(lanes, single::SingleNode { machine, store }, clock, spin, metrics)
}

/// Starts the driver thread of a cluster node reading `lanes`: the same loop as a single
/// node's, over consensus.
pub fn spawn_cluster(
    lanes: Lanes,
    node: ClusterNode,
    clock: Clock,
    spin: Duration,
    metrics: Arc<Metrics>,
) -> std::io::Result<thread::JoinHandle<()>> {
    spawn_engine(lanes, node, clock, spin, metrics)
}

fn spawn_engine<E: Engine>(
    lanes: Lanes,
    engine: E,
    clock: Clock,
    spin: Duration,
    metrics: Arc<Metrics>,
) -> std::io::Result<thread::JoinHandle<()>> {
    let seed = engine.core().config().seed;
    // Events replayed from the data dir were counted by an earlier process: start from them.
    let events_published = engine.core().events_by_topic();
    let driver = Driver {
        events_published,
        engine,
        clock,
        metrics,
        outlets: Outlets::new(seed),
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

struct Driver<E> {
    engine: E,
    clock: Clock,
    metrics: Arc<Metrics>,
    outlets: Outlets,
    /// The per-topic event totals already added to the metrics.
    events_published: [u64; Topic::ALL.len()],
    spin: Spin,
}

impl<E: Engine> Driver<E> {
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

    /// Blocks until a request comes, the engine's next deadline, or parked callers need a look.
    fn sleep_for_work(&self, lanes: &Lanes) -> Result<Request, RecvTimeoutError> {
        let deadline = (self.engine.deadline())
            .filter(|_| self.clock.runs_by_itself())
            .map(|deadline| Duration::from_millis(deadline.saturating_sub(self.clock.now())));
        let sweep = self.outlets.has_parked().then_some(SWEEP_INTERVAL);
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

    /// Hands one batch to the engine and does what it says; false once told to stop.
    #[allow(clippy::disallowed_methods)] // times the batch for the latency histogram
    fn run_batch(&mut self, batch: &mut Vec<Request>) -> bool {
        let started = Instant::now();
        let mut now = self.clock.now();
        self.engine.handle(now, Input::Tick);
        for gone in self.outlets.sweep() {
            self.engine.handle(now, gone);
        }
        let mut running = true;
        let batch_len = batch.len();
        for request in batch.drain(..) {
            let (command, principal, caller) = match request {
                Request::Call {
                    command,
                    principal,
                    reply,
                    mailbox,
                } => (command, principal, Caller::Call(reply, mailbox)),
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
                Request::Peer(traffic) => {
                    self.engine.peer(now, traffic);
                    continue;
                }
                Request::ClusterStatus { reply } => {
                    let _ = reply.send(self.engine.cluster());
                    continue;
                }
                Request::Heard { from, applied } => {
                    self.engine.heard(now, from, applied);
                    continue;
                }
                Request::ChangeMembers { change, reply } => {
                    self.engine.change_members(now, change, reply);
                    continue;
                }
                Request::EndStreams => {
                    self.engine.handle(now, Input::Shutdown);
                    continue;
                }
                Request::Stop => {
                    running = false;
                    continue;
                }
            };
            let caller = self.outlets.admit(caller);
            let call = Input::Call {
                caller,
                command,
                principal,
            };
            self.engine.handle(now, call);
        }
        let flushed = self.engine.flush(now, &mut self.outlets, &self.metrics);
        self.outlets.deliver();
        if let Err(error) = flushed {
            // Only a cluster node's log fails this way: consensus already counts on what it
            // could not make durable, so the node must not go on (etcd stops alike). A restart
            // rejoins from what is durable.
            tracing::error!(%error, "stopping: the consensus log cannot be made durable");
            std::process::exit(1);
        }
        // Gauges after the replies left: a client that got its answer and then scrapes sees its
        // own change once the next batch has run, never a value older than its call.
        self.metrics.publish_core(&self.engine.core().stats());
        (self.metrics).publish_events(&self.engine.core().events_by_topic(), &mut self.events_published);
        self.metrics.observe_batch(batch_len, started.elapsed());
        self.engine.after_batch(&self.metrics);
        running
    }
}

#[cfg(test)]
mod tests;
