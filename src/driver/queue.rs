//! The way into the core's thread: two bounded lanes (heartbeats, renewals and stream clean-up
//! in a small one every batch drains first; everything else in the other) and the handle the
//! network threads send on.
//!
//! Architecture invariant: sending never blocks a network thread: a full lane is
//! RESOURCE_EXHAUSTED at once (load shedding), a stopped driver UNAVAILABLE.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::{ClusterView, MemberChange, PeerTraffic};
use crate::core::machine::StreamEnd;
use crate::core::types::{Millis, TokenId};
use crate::core::{Command, CoreError, ErrorCode, Event, Outcome};
use crate::metrics::Metrics;

use super::mailbox::Mailbox;
use super::progress::Progress;

/// The driver's side of one watch stream: its bounded buffer and the slot for its last word.
pub struct Sink {
    pub events: mpsc::Sender<Arc<Event>>,
    pub end: oneshot::Sender<StreamEnd>,
}

/// One message to the driver.
pub enum Request {
    /// A unary command on behalf of `principal` (the caller's agent token, if it has one); the
    /// outcome goes back through `reply`.
    Call {
        command: Command,
        principal: Option<TokenId>,
        reply: oneshot::Sender<Outcome>,
        /// The calling net thread's mailbox, if it has one: the answer goes through it.
        mailbox: Option<Mailbox>,
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
    /// Reads or moves the clock (ClockService); answered with the core's time once every
    /// deadline due by then has fired and is durable.
    Clock {
        advance_ms: Option<Millis>,
        reply: oneshot::Sender<Result<Millis, CoreError>>,
    },
    /// Consensus traffic from a peer (a cluster node's; a single node drops it).
    Peer(PeerTraffic),
    /// The cluster as this node sees it (None on a single node).
    ClusterStatus {
        reply: oneshot::Sender<Option<ClusterView>>,
    },
    /// A peer's envelope said it has applied this far (for the cluster's status).
    Heard { from: u64, applied: u64 },
    /// An operator's membership change, answered once its entry is applied on this node.
    ChangeMembers {
        change: MemberChange,
        reply: oneshot::Sender<Result<(), CoreError>>,
    },
    /// Stops the driver thread.
    Stop,
}

/// The driver's two inbound lanes.
pub struct Lanes {
    pub(super) priority: Receiver<Request>,
    pub(super) bulk: Receiver<Request>,
    /// Bumped by the driver around each batch; the handles read it.
    pub(super) progress: Progress,
}

impl Lanes {
    /// The next request waiting, priority lane first.
    pub(super) fn try_recv(&self) -> Option<Request> {
        self.priority.try_recv().or_else(|_| self.bulk.try_recv()).ok()
    }

    /// Requests waiting in both lanes.
    pub(super) fn len(&self) -> usize {
        self.priority.len() + self.bulk.len()
    }
}

/// The queues to the driver: the handle the net threads send on, and the lanes it reads.
/// `queue_max` bounds the bulk lane; the priority lane holds `limits::PRIORITY_QUEUE_MAX`.
pub fn channels(queue_max: usize, metrics: Arc<Metrics>) -> (CoreHandle, Lanes) {
    let (bulk_tx, bulk) = crossbeam_channel::bounded(queue_max);
    let (priority_tx, priority) = crossbeam_channel::bounded(crate::limits::PRIORITY_QUEUE_MAX);
    let progress = Progress::default();
    let handle = CoreHandle {
        bulk: bulk_tx,
        priority: priority_tx,
        metrics,
        progress: progress.clone(),
    };
    (
        handle,
        Lanes {
            priority,
            bulk,
            progress,
        },
    )
}

/// Whether a request goes in the priority lane: what keeps agents and leases alive, the
/// clean-up that frees a stream's place, and consensus traffic (a leader's heartbeats keep it
/// leader; a write forwarded here was admitted by a follower already).
fn is_priority(request: &Request) -> bool {
    matches!(
        request,
        Request::Call {
            command: Command::Heartbeat { .. }
                | Command::RenewLease { .. }
                | Command::KeepAlive { .. }
                | Command::Unwatch { .. },
            ..
        } | Request::Peer(_)
            | Request::Heard { .. }
    )
}

/// The method label of a shed request.
fn method_of(request: &Request) -> &'static str {
    match request {
        Request::Call { command, .. } | Request::Subscribe { command, .. } => command.name(),
        Request::Clock { .. } => "Clock",
        Request::Peer(_) => "Peer",
        Request::ClusterStatus { .. } => "ClusterStatus",
        Request::Heard { .. } => "Peer",
        Request::ChangeMembers { .. } => "ChangeMembers",
        Request::EndStreams | Request::Stop => "Shutdown",
    }
}

/// The driver took the request but stopped before answering it: a write may have taken effect
/// (worded apart from `shutting_down`, a refusal, so that a client knows which it got).
fn stopped_before_answering() -> CoreError {
    CoreError::new(
        ErrorCode::Unavailable,
        "the daemon stopped before answering: the call may yet take effect",
    )
}

fn shutting_down() -> CoreError {
    CoreError::new(ErrorCode::Unavailable, "the daemon is shutting down")
}

/// The net threads' handle on the driver: bounded lanes that never block them.
#[derive(Clone)]
pub struct CoreHandle {
    bulk: Sender<Request>,
    priority: Sender<Request>,
    metrics: Arc<Metrics>,
    progress: Progress,
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
            TrySendError::Disconnected(_) => shutting_down(),
        })
    }

    /// The driver thread's batch counter: whether it is making progress, read without waiting
    /// on it (the systemd watchdog).
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Tells the driver to stop after what is queued; waits for room rather than being shed.
    pub fn stop(&self) {
        let _ = self.bulk.send(Request::Stop);
    }

    /// Reads the clock (`None`) or advances it, through the driver.
    pub async fn clock(&self, advance_ms: Option<Millis>) -> Result<Millis, CoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Clock { advance_ms, reply })?;
        answer.await.unwrap_or_else(|_| Err(stopped_before_answering()))
    }

    /// The cluster as the node sees it; None on a single node.
    pub async fn cluster_status(&self) -> Result<Option<ClusterView>, CoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::ClusterStatus { reply })?;
        answer.await.map_err(|_| shutting_down())
    }

    /// A membership change, answered once its entry is applied on this node (or refused).
    pub async fn change_members(&self, change: MemberChange) -> Result<(), CoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::ChangeMembers { change, reply })?;
        answer.await.unwrap_or_else(|_| Err(stopped_before_answering()))
    }

    /// Runs one unary command through the core.
    pub async fn call(&self, command: Command) -> Outcome {
        self.call_as(command, None).await
    }

    /// Runs one unary command through the core on behalf of an agent token.
    pub async fn call_as(&self, command: Command, principal: Option<TokenId>) -> Outcome {
        self.submit_as(command, principal)?.await
    }

    /// Queues one command on behalf of an agent token and returns its answer to come, without
    /// waiting: a stream keeps several in flight and awaits them in the order it sent them.
    pub fn submit_as(&self, command: Command, principal: Option<TokenId>) -> Result<Answer, CoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Call {
            command,
            principal,
            reply,
            mailbox: Mailbox::current(),
        })?;
        Ok(Answer(answer))
    }
}

/// A queued command's outcome to come (`CoreHandle::submit_as`); a driver that stopped before
/// answering makes it UNAVAILABLE.
pub struct Answer(oneshot::Receiver<Outcome>);

impl Future for Answer {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or_else(|_| Err(stopped_before_answering())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events::SubscriberId;

    fn call(command: Command) -> Request {
        let (reply, _) = oneshot::channel();
        Request::Call {
            command,
            principal: None,
            reply,
            mailbox: None,
        }
    }

    #[test]
    fn heartbeats_renewals_and_unwatch_take_the_priority_lane() {
        assert!(is_priority(&call(Command::Heartbeat { agent_id: "a".into() })));
        assert!(is_priority(&call(Command::RenewLease {
            task_id: "k".into(),
            agent_id: "a".into(),
            token: 1,
            ttl_seconds: 1,
        })));
        assert!(is_priority(&call(Command::Unwatch {
            subscriber: SubscriberId(1),
        })));
        assert!(!is_priority(&call(Command::Deregister { agent_id: "a".into() })));
    }
}
