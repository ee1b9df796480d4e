//! Where the machine's answers go: the callers waiting for a reply (unary calls, stream
//! openings, clock requests), the parked claims looked at for hang-ups, and the open streams'
//! buffers. Shared by every engine the driver runs (a single node's machine, a cluster node).
//!
//! Architecture invariant: decides nothing about state; what cannot be delivered goes back to
//! the machine as an input (Undelivered, SubscriberGone, CallerGone), never dropped silently.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Sink;
use super::mailbox::{Gathered, Mailbox};
use super::streams::Streams;
use crate::core::machine::{CallerId, Input, Output};
use crate::core::types::{Map, Millis, Set, new_map, new_set};
use crate::core::{CoreError, Outcome, Reply};
use crate::metrics::Metrics;

/// How often, at most, the driver looks for parked callers that hung up.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_millis(200);

/// Where a caller's answer goes.
pub(super) enum Caller {
    /// A unary call; with a mailbox, answered through its net thread's (see `mailbox`).
    Call(oneshot::Sender<Outcome>, Option<Mailbox>),
    Subscribe(oneshot::Sender<Outcome>, Sink),
    Clock(oneshot::Sender<Result<Millis, CoreError>>),
}

pub(super) struct Outlets {
    callers: Map<CallerId, Caller>,
    /// Callers whose claims wait in the core: looked at now and then for hang-ups.
    parked: Set<CallerId>,
    swept_at: Option<Instant>,
    caller_next: u64,
    streams: Streams,
    /// This batch's unary answers for net threads with a mailbox, until `deliver`.
    gathered: Gathered,
}

impl Outlets {
    pub(super) fn new(seed: u64) -> Outlets {
        Outlets {
            callers: new_map(seed),
            parked: new_set(seed),
            swept_at: None,
            caller_next: 1,
            streams: Streams::new(seed),
            gathered: Gathered::default(),
        }
    }

    /// Hands over the answers gathered since the last call: at the end of a batch, and before
    /// the engine blocks on a disk (what may leave must not wait for a sync).
    pub(super) fn deliver(&mut self) {
        self.gathered.deliver();
    }

    /// Whether parked callers wait (the driver then wakes now and then to sweep).
    pub(super) fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Files a caller's way back; the id names it to the machine.
    pub(super) fn admit(&mut self, caller: Caller) -> CallerId {
        let id = CallerId(self.caller_next);
        self.caller_next += 1;
        self.callers.insert(id, caller);
        id
    }

    /// Does what one of the machine's outputs says; returns what the machine must hear back
    /// (an answer nobody took, a stream cut off).
    pub(super) fn dispatch(&mut self, output: Output, metrics: &Metrics) -> Option<Input> {
        match output {
            Output::Reply { caller, outcome } => {
                self.parked.remove(&caller);
                let undelivered = match self.callers.remove(&caller) {
                    Some(Caller::Call(reply, Some(mailbox))) if !matches!(outcome, Ok(Reply::Claimed { .. })) => {
                        self.gathered.add(mailbox, reply, outcome);
                        None
                    }
                    Some(Caller::Call(reply, _)) => reply.send(outcome).err(),
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
                let outcome = undelivered?;
                if matches!(outcome, Ok(Reply::Claimed { .. })) {
                    metrics.claims_undelivered.inc();
                }
                Some(Input::Undelivered { outcome })
            }
            Output::Park { caller } => {
                self.parked.insert(caller);
                None
            }
            Output::Deliver { subscriber, event } => self.streams.deliver(subscriber, event, metrics),
            Output::EndStream { subscriber, end } => {
                self.streams.end(subscriber, end);
                None
            }
            Output::Persist { .. } | Output::Propose { .. } => {
                unreachable!("the engine handles its own entries and proposals")
            }
        }
    }

    /// The parked callers and stream readers that went away, as inputs for the machine; looked
    /// for at most every `SWEEP_INTERVAL` (a claim missed here goes back when its answer cannot
    /// be delivered; a stream's reader usually says so itself, with Unwatch).
    #[allow(clippy::disallowed_methods)] // paces the sweep
    pub(super) fn sweep(&mut self) -> Vec<Input> {
        let idle = self.parked.is_empty() && self.streams.is_empty();
        if idle || self.swept_at.is_some_and(|at| at.elapsed() < SWEEP_INTERVAL) {
            return Vec::new();
        }
        self.swept_at = Some(Instant::now());
        let mut gone: Vec<CallerId> = (self.parked.iter())
            .filter(|&caller| matches!(self.callers.get(caller), Some(Caller::Call(reply, _)) if reply.is_closed()))
            .copied()
            .collect();
        gone.sort_unstable();
        let mut inputs = Vec::with_capacity(gone.len());
        for caller in gone {
            self.parked.remove(&caller);
            self.callers.remove(&caller);
            inputs.push(Input::CallerGone { caller });
        }
        inputs.extend(
            self.streams
                .sweep_closed()
                .into_iter()
                .map(|subscriber| Input::SubscriberGone {
                    subscriber,
                    overflow: None,
                }),
        );
        inputs
    }
}
