//! The keep-alive streams (RegistryService.KeepAlive, LeaseService.KeepAlive): each message one
//! `Command::KeepAlive` in the driver's priority lane, answered in the order sent with a result
//! per item; a message outside the bounds ends the stream INVALID_ARGUMENT before it is queued.
//!
//! Architecture invariant: holds no state but the stream's own messages in flight (at most
//! `IN_FLIGHT_MAX`); decides nothing an item's unary call would not (the core answers each item).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_core::Stream;
use futures_util::task::AtomicWaker;
use tonic::Status;

use super::convert;
use crate::core::types::TokenId;
use crate::core::{Command, CoreError, Outcome, Reply};
use crate::driver::{Answer, CoreHandle};
use crate::limits::KEEPALIVE_ITEMS_MAX;
use crate::metrics::{KeepAliveCounters, Metrics};
use crate::proto as pb;

/// Messages of one stream waiting for the core at once: a client may send its next message
/// before the last is answered (pipelining), and answers still leave in the order sent.
const IN_FLIGHT_MAX: usize = 16;

pub type AnswerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One stream's kind: how its messages become core commands and its answers messages.
pub trait Kind: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: prost::Message + Send + 'static;
    /// The `stream` label of the metrics.
    const NAME: &'static str;
    /// The message's batch id and its items as core commands.
    fn items(request: Self::Request) -> (u64, Vec<Command>);
    /// The answer to a message: one result per item, in order.
    fn response(batch_id: u64, answers: Vec<Outcome>) -> Self::Response;
}

/// Serves one keep-alive stream: its messages, as they come (decoded by tonic's `Streaming`, or
/// by the lean path's `lean_stream::Messages`), become batches for the core.
pub fn serve<K: Kind, In: Inbound<K>>(
    core: CoreHandle,
    metrics: &Metrics,
    principal: Option<TokenId>,
    inbound: In,
) -> AnswerStream<K::Response> {
    let inbound_wake = Arc::new(InboundWake {
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    Box::pin(Pipeline::<K, In> {
        inbound: Some(inbound),
        inbound_waker: Waker::from(Arc::clone(&inbound_wake)),
        inbound_wake,
        in_flight: VecDeque::with_capacity(IN_FLIGHT_MAX),
        core,
        principal,
        counters: metrics.keepalive_counters(K::NAME),
        _kind: std::marker::PhantomData,
    })
}

/// A message sent to the core, or refused before it was (answered in its turn all the same).
enum InFlight {
    Queued { batch_id: u64, answer: Answer },
    Refused(Status),
}

/// One stream's messages in flight, oldest first: the stream reads ahead while fewer than
/// `IN_FLIGHT_MAX` wait, and yields answers strictly in the order their messages came. Only the
/// oldest answer is polled, so one wake-up per answer and no task per message; the inbound side
/// is polled only when it said it may have more (each poll of it takes the HTTP/2 connection's
/// lock and swaps a waker, and most of the stream's wake-ups are answers).
struct Pipeline<K: Kind, In> {
    /// None once the client's half has ended or failed (nothing more is read).
    inbound: Option<In>,
    /// Set when the inbound side woke the stream (or may have more than was read).
    inbound_wake: Arc<InboundWake>,
    /// `inbound_wake` as the waker the inbound side is polled with.
    inbound_waker: Waker,
    in_flight: VecDeque<InFlight>,
    core: CoreHandle,
    principal: Option<TokenId>,
    counters: KeepAliveCounters,
    _kind: std::marker::PhantomData<fn() -> K>,
}

/// The inbound side's wake-up: notes that it came, then wakes the stream's task.
struct InboundWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for InboundWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A stream's decoded messages, in the order the client sent them.
pub trait Inbound<K: Kind>: Stream<Item = Result<K::Request, Status>> + Send + Unpin + 'static {}

impl<K: Kind, S> Inbound<K> for S where S: Stream<Item = Result<K::Request, Status>> + Send + Unpin + 'static {}

impl<K: Kind, In: Inbound<K>> Pipeline<K, In> {
    /// Reads messages while there is room, queueing each; stops at the first refusal. Reads
    /// nothing unless the inbound side woke the stream since it last said Pending.
    fn read_ahead(&mut self, cx: &mut Context<'_>) {
        if self.inbound.is_none() || !self.inbound_wake.woken.swap(false, Ordering::AcqRel) {
            return;
        }
        // Registered before reading: a wake-up while reading polls the stream again.
        self.inbound_wake.task.register(cx.waker());
        let mut inbound_cx = Context::from_waker(&self.inbound_waker);
        while self.in_flight.len() < IN_FLIGHT_MAX {
            let Some(inbound) = self.inbound.as_mut() else { return };
            let entry = match Pin::new(inbound).poll_next(&mut inbound_cx) {
                Poll::Pending => return,
                Poll::Ready(None) => {
                    self.inbound = None;
                    return;
                }
                Poll::Ready(Some(message)) => match message.and_then(|message| self.submit(message)) {
                    Ok(queued) => queued,
                    Err(status) => {
                        // The stream ends with this refusal once the answers before it are out.
                        self.inbound = None;
                        InFlight::Refused(status)
                    }
                },
            };
            self.in_flight.push_back(entry);
        }
        // Stopped for room, not for want of messages: read again once there is room.
        self.inbound_wake.woken.store(true, Ordering::Release);
    }

    fn submit(&self, message: K::Request) -> Result<InFlight, Status> {
        let (batch_id, items) = K::items(message);
        check_count(items.len())?;
        let answer = (self.core)
            .submit_as(Command::KeepAlive { items }, self.principal)
            .map_err(convert::status)?;
        Ok(InFlight::Queued { batch_id, answer })
    }

    fn answered(&self, batch_id: u64, outcome: Outcome) -> Result<K::Response, Status> {
        let answers = match outcome.map_err(convert::status)? {
            Reply::KeepAlive(answers) => answers,
            other => return Err(Status::internal(format!("unexpected reply {other:?}"))),
        };
        let failed = answers.iter().filter(|a| a.is_err()).count();
        self.counters.count(answers.len() - failed, failed);
        Ok(K::response(batch_id, answers))
    }
}

impl<K: Kind, In: Inbound<K>> Stream for Pipeline<K, In> {
    type Item = Result<K::Response, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.read_ahead(cx);
        let item = match this.in_flight.front_mut() {
            None if this.inbound.is_none() => return Poll::Ready(None),
            None => return Poll::Pending,
            Some(InFlight::Queued { batch_id, answer }) => {
                let batch_id = *batch_id;
                let Poll::Ready(outcome) = Pin::new(answer).poll(cx) else {
                    return Poll::Pending;
                };
                this.in_flight.pop_front();
                this.answered(batch_id, outcome)
            }
            Some(InFlight::Refused(status)) => {
                let status = status.clone();
                this.in_flight.clear();
                Err(status)
            }
        };
        Poll::Ready(Some(item))
    }
}

/// The bound of a message, checked before anything is queued (the core checks it again).
fn check_count(items: usize) -> Result<(), Status> {
    if items == 0 || items > KEEPALIVE_ITEMS_MAX {
        return Err(Status::invalid_argument(format!(
            "a keep-alive message carries 1 to {KEEPALIVE_ITEMS_MAX} items, this one {items}"
        )));
    }
    Ok(())
}

fn error_parts(error: CoreError) -> (i32, String) {
    (convert::code(error.code) as i32, error.message)
}

/// RegistryService.KeepAlive: heartbeats.
pub struct Heartbeats;

impl Kind for Heartbeats {
    type Request = pb::KeepAliveRequest;
    type Response = pb::KeepAliveResponse;
    const NAME: &'static str = "registry";

    fn items(request: pb::KeepAliveRequest) -> (u64, Vec<Command>) {
        let items = (request.agent_ids.into_iter())
            .map(|agent_id| Command::Heartbeat { agent_id })
            .collect();
        (request.batch_id, items)
    }

    fn response(batch_id: u64, answers: Vec<Outcome>) -> pb::KeepAliveResponse {
        let results = (answers.into_iter())
            .map(|answer| match answer {
                Ok(_) => pb::KeepAliveResult::default(),
                Err(error) => {
                    let (code, message) = error_parts(error);
                    pb::KeepAliveResult { code, message }
                }
            })
            .collect();
        pb::KeepAliveResponse { batch_id, results }
    }
}

/// LeaseService.KeepAlive: renewals.
pub struct Renewals;

impl Kind for Renewals {
    type Request = pb::LeaseKeepAliveRequest;
    type Response = pb::LeaseKeepAliveResponse;
    const NAME: &'static str = "lease";

    fn items(request: pb::LeaseKeepAliveRequest) -> (u64, Vec<Command>) {
        let items = (request.renewals.into_iter())
            .map(|r| Command::RenewLease {
                task_id: r.task_id,
                agent_id: r.agent_id,
                token: r.token.map_or(0, |t| t.value),
                ttl_seconds: r.ttl_seconds,
            })
            .collect();
        (request.batch_id, items)
    }

    fn response(batch_id: u64, answers: Vec<Outcome>) -> pb::LeaseKeepAliveResponse {
        let results = (answers.into_iter())
            .map(|answer| match answer {
                Ok(Reply::Lease { lease, .. }) => pb::LeaseKeepAliveResult {
                    code: 0,
                    message: String::new(),
                    lease: Some(convert::lease_to_pb(&lease)),
                },
                Ok(other) => pb::LeaseKeepAliveResult {
                    code: tonic::Code::Internal as i32,
                    message: format!("unexpected reply {other:?}"),
                    lease: None,
                },
                Err(error) => {
                    let (code, message) = error_parts(error);
                    pb::LeaseKeepAliveResult {
                        code,
                        message,
                        lease: None,
                    }
                }
            })
            .collect();
        pb::LeaseKeepAliveResponse { batch_id, results }
    }
}
