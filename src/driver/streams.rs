//! The driver's side of open streams: each subscriber's bounded buffer, filled with `try_send`,
//! and the slot for its last word. What to do when a buffer is full (cut the stream off, and with
//! which message) is the machine's decision; this only reports it.
//!
//! Architecture invariant: never blocks on a reader, and never puts an event into a buffer after
//! one that did not fit (no gap).

use std::sync::Arc;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

use super::Sink;
use crate::buggify::{self, Site};
use crate::core::events::SubscriberId;
use crate::core::machine::{Input, Overflow, StreamEnd};
use crate::core::types::{Map, new_map};
use crate::core::{Event, Outcome, Reply};
use crate::metrics::Metrics;

/// An open stream's buffer and the last sequence put into it (for the overflow message).
struct SinkState {
    sink: Sink,
    delivered_last: u64,
    /// It overflowed: it waits for its last word and takes no more events.
    overflowed: bool,
}

pub(super) struct Streams {
    sinks: Map<SubscriberId, SinkState>,
}

impl Streams {
    pub(super) fn new(seed: u64) -> Streams {
        Streams { sinks: new_map(seed) }
    }

    /// Attaches a new stream's buffer and hands over the opening reply; returns the reply if its
    /// caller is gone (the machine then closes the stream again).
    pub(super) fn open(&mut self, reply: oneshot::Sender<Outcome>, sink: Sink, outcome: Outcome) -> Option<Outcome> {
        let opened = match &outcome {
            Ok(Reply::Watching { subscriber, replay }) => Some((*subscriber, replay.last().map_or(0, |e| e.sequence))),
            Ok(Reply::WatchingElection { subscriber, .. }) => Some((*subscriber, 0)),
            _ => None,
        };
        if let Some((subscriber, delivered_last)) = opened {
            let state = SinkState {
                sink,
                delivered_last,
                overflowed: false,
            };
            self.sinks.insert(subscriber, state);
        }
        let undelivered = reply.send(outcome).err();
        if let (Some((subscriber, _)), Some(_)) = (opened, &undelivered) {
            self.sinks.remove(&subscriber);
        }
        undelivered
    }

    /// Puts an event into its subscriber's buffer; when that cannot be (full, or its reader
    /// gone), the input that tells the machine.
    pub(super) fn deliver(&mut self, subscriber: SubscriberId, event: Arc<Event>, metrics: &Metrics) -> Option<Input> {
        let Some(state) = self.sinks.get_mut(&subscriber).filter(|state| !state.overflowed) else {
            debug_assert!(!self.sinks.contains_key(&subscriber), "a delivery after an overflow");
            return None;
        };
        let sequence = event.sequence;
        let sent = if buggify::fire(Site::StalledSubscriber) {
            Err(TrySendError::Full(event))
        } else {
            state.sink.events.try_send(event)
        };
        let overflow = match sent {
            Ok(()) => {
                state.delivered_last = sequence;
                return None;
            }
            Err(TrySendError::Full(_)) => Some(Overflow {
                capacity: state.sink.events.max_capacity(),
                delivered_last: state.delivered_last,
            }),
            Err(TrySendError::Closed(_)) => None,
        };
        // The machine drops what it still holds for this stream, so nothing later slips into the
        // buffer after the gap. An overflowing stream's buffer stays until its last word
        // (`EndStream`) is in place: the reader sees the events, then the error.
        if overflow.is_some() {
            state.overflowed = true;
            metrics.watch_overflows.inc();
        } else {
            self.sinks.remove(&subscriber);
        }
        Some(Input::SubscriberGone { subscriber, overflow })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Forgets the buffers whose readers are gone; returns their subscribers, in order.
    pub(super) fn sweep_closed(&mut self) -> Vec<SubscriberId> {
        let mut closed: Vec<SubscriberId> = (self.sinks.iter())
            .filter(|(_, state)| state.sink.events.is_closed())
            .map(|(subscriber, _)| *subscriber)
            .collect();
        closed.sort_unstable();
        for subscriber in &closed {
            self.sinks.remove(subscriber);
        }
        closed
    }

    /// The stream's last word, then its end.
    pub(super) fn end(&mut self, subscriber: SubscriberId, end: StreamEnd) {
        if let Some(state) = self.sinks.remove(&subscriber) {
            let _ = state.sink.end.send(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn open(streams: &mut Streams, subscriber: u64) -> mpsc::Receiver<Arc<Event>> {
        let (events, live) = mpsc::channel(1);
        let (end, _) = oneshot::channel();
        let (reply, _answer) = oneshot::channel();
        let outcome = Ok(Reply::Watching {
            subscriber: SubscriberId(subscriber),
            replay: Vec::new(),
        });
        let _undelivered = streams.open(reply, Sink { events, end }, outcome);
        live
    }

    #[test]
    fn a_buffer_whose_reader_is_gone_is_swept_and_one_still_read_stays() {
        let mut streams = Streams::new(1);
        let gone = open(&mut streams, 1);
        let _kept = open(&mut streams, 2);
        drop(gone);
        assert_eq!(streams.sweep_closed(), [SubscriberId(1)]);
        assert!(streams.sweep_closed().is_empty(), "swept once");
        assert!(!streams.is_empty(), "the stream still read stays");
    }
}
