//! The event bus: one sequence counter, a bounded ring of recent events for resume, and the
//! subscriber table that decides which subscriber gets which event.
//!
//! Architecture invariant: the core never waits on a subscriber. It only queues deliveries; the
//! driver owns each subscriber's bounded buffer and cuts off one that overflows.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::types::{AgentCard, AgentId, AgentStatus, Millis};
use super::{CoreError, ErrorCode};

/// Every topic the daemon emits. The set is closed, so a subscriber's prefixes compile to a mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    AgentRegistered,
    AgentUnreachable,
    AgentRecovered,
    AgentDied,
    LeaseAcquired,
    LeaseRenewed,
    LeaseExpired,
    LeaseReleased,
    LeaderChanged,
    TaskCreated,
    TaskClaimed,
    TaskCompleted,
    TaskFailed,
    TaskDead,
}

impl Topic {
    pub const ALL: [Topic; 14] = [
        Topic::AgentRegistered,
        Topic::AgentUnreachable,
        Topic::AgentRecovered,
        Topic::AgentDied,
        Topic::LeaseAcquired,
        Topic::LeaseRenewed,
        Topic::LeaseExpired,
        Topic::LeaseReleased,
        Topic::LeaderChanged,
        Topic::TaskCreated,
        Topic::TaskClaimed,
        Topic::TaskCompleted,
        Topic::TaskFailed,
        Topic::TaskDead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Topic::AgentRegistered => "agent.registered",
            Topic::AgentUnreachable => "agent.unreachable",
            Topic::AgentRecovered => "agent.recovered",
            Topic::AgentDied => "agent.died",
            Topic::LeaseAcquired => "lease.acquired",
            Topic::LeaseRenewed => "lease.renewed",
            Topic::LeaseExpired => "lease.expired",
            Topic::LeaseReleased => "lease.released",
            Topic::LeaderChanged => "leader.changed",
            Topic::TaskCreated => "task.created",
            Topic::TaskClaimed => "task.claimed",
            Topic::TaskCompleted => "task.completed",
            Topic::TaskFailed => "task.failed",
            Topic::TaskDead => "task.dead",
        }
    }

    fn bit(self) -> TopicMask {
        1 << (self as u32)
    }
}

/// A set of topics, one bit each.
pub type TopicMask = u16;

/// Compiles topic prefixes to the set of topics they select; no prefixes selects every topic.
pub fn topic_mask(prefixes: &[String]) -> TopicMask {
    if prefixes.is_empty() {
        return Topic::ALL.iter().fold(0, |mask, t| mask | t.bit());
    }
    Topic::ALL
        .iter()
        .filter(|t| prefixes.iter().any(|p| t.as_str().starts_with(p.as_str())))
        .fold(0, |mask, t| mask | t.bit())
}

/// An agent as it was when the event or answer was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentView {
    pub agent_id: AgentId,
    pub card: Arc<AgentCard>,
    pub status: AgentStatus,
    pub registered_at: Millis,
    pub last_heartbeat_at: Millis,
    pub ttl_ms: u64,
}

/// A lease as it was when the event or answer was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub task_id: Arc<str>,
    pub holder: AgentId,
    pub token: u64,
    pub acquired_at: Millis,
    pub expires_at: Millis,
}

/// An election group's state; `leader` is `None` when nobody leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionView {
    pub group: Arc<str>,
    pub leader: Option<AgentId>,
    pub term: u64,
    pub elected_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventPayload {
    Agent(AgentView),
    Lease(LeaseView),
    Election(ElectionView),
    /// A task, without its input and output bytes.
    Task(super::tasks::TaskView),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub sequence: u64,
    pub topic: Topic,
    pub occurred_at: Millis,
    pub payload: EventPayload,
}

/// A subscriber's identity; never reused within one core's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(pub u64);

/// One event bound for one subscriber; the driver moves it into that subscriber's buffer.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub subscriber: SubscriberId,
    pub event: Arc<Event>,
}

#[derive(Debug)]
enum Filter {
    Topics(TopicMask),
    Election(Arc<str>),
}

#[derive(Debug)]
struct Subscriber {
    filter: Filter,
    /// Events below this sequence are never delivered (resume asked to start here).
    sequence_min: u64,
}

impl Subscriber {
    fn wants(&self, event: &Event) -> bool {
        if event.sequence < self.sequence_min {
            return false;
        }
        match &self.filter {
            Filter::Topics(mask) => mask & event.topic.bit() != 0,
            Filter::Election(group) => match &event.payload {
                EventPayload::Election(view) => view.group == *group,
                _ => false,
            },
        }
    }
}

/// The bus: sequence counter, retained ring, subscribers, and deliveries not yet drained.
#[derive(Debug)]
pub struct EventBus {
    pub(super) sequence_next: u64,
    pub(super) ring: VecDeque<Arc<Event>>,
    pub(super) ring_max: usize,
    subscribers: BTreeMap<SubscriberId, Subscriber>,
    subscriber_next: u64,
    subscribers_max: usize,
    outbox: Vec<Delivery>,
    /// Events emitted by this core, by topic (`Topic as usize`), since it was built: counted
    /// at emit time for the metrics. Not state: a restored core starts again from zero.
    emitted: [u64; Topic::ALL.len()],
}

impl EventBus {
    pub fn new(ring_max: usize, subscribers_max: usize) -> Self {
        assert!(ring_max > 0, "the event ring must retain at least one event");
        EventBus {
            sequence_next: 1,
            ring: VecDeque::with_capacity(ring_max.min(4096)),
            ring_max,
            subscribers: BTreeMap::new(),
            subscriber_next: 1,
            subscribers_max,
            outbox: Vec::new(),
            emitted: [0; Topic::ALL.len()],
        }
    }

    /// The sequence number the next event will carry.
    pub fn sequence_next(&self) -> u64 {
        self.sequence_next
    }

    /// The oldest sequence a resume can still start from.
    pub fn sequence_oldest(&self) -> u64 {
        self.ring.front().map_or(self.sequence_next, |e| e.sequence)
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    pub fn is_subscribed(&self, id: SubscriberId) -> bool {
        self.subscribers.contains_key(&id)
    }

    /// Every subscriber, in the order they subscribed.
    pub fn subscriber_ids(&self) -> Vec<SubscriberId> {
        self.subscribers.keys().copied().collect()
    }

    /// Events emitted since this bus was built, by topic (indexed by `Topic as usize`, in
    /// `Topic::ALL` order).
    pub fn emitted_by_topic(&self) -> [u64; Topic::ALL.len()] {
        self.emitted
    }

    /// Stamps, retains and routes one event.
    pub fn emit(&mut self, now: Millis, topic: Topic, payload: EventPayload) {
        let event = Arc::new(Event {
            sequence: self.sequence_next,
            topic,
            occurred_at: now,
            payload,
        });
        self.sequence_next += 1;
        self.emitted[topic as usize] += 1;
        for (id, subscriber) in &self.subscribers {
            if subscriber.wants(&event) {
                self.outbox.push(Delivery {
                    subscriber: *id,
                    event: Arc::clone(&event),
                });
            }
        }
        if self.ring.len() == self.ring_max {
            self.ring.pop_front();
        }
        self.ring.push_back(event);
        debug_assert!(self.ring.len() <= self.ring_max);
    }

    /// Subscribes to topic prefixes; with `from_sequence > 0` the retained matching events from
    /// there on come back as the replay, and live delivery continues after them without a gap.
    pub fn watch(
        &mut self,
        prefixes: &[String],
        from_sequence: u64,
    ) -> Result<(SubscriberId, Vec<Arc<Event>>), CoreError> {
        if from_sequence > 0 && from_sequence < self.sequence_oldest() {
            return Err(CoreError::new(
                ErrorCode::OutOfRange,
                format!(
                    "from_sequence {from_sequence} is no longer retained; the oldest available is {}",
                    self.sequence_oldest()
                ),
            ));
        }
        let subscriber = Subscriber {
            filter: Filter::Topics(topic_mask(prefixes)),
            sequence_min: from_sequence,
        };
        let replay = if from_sequence > 0 {
            // The ring holds consecutive sequences: the replay starts at an offset, and reads
            // only the events from `from_sequence` on, not the whole ring.
            let skip = usize::try_from(from_sequence - self.sequence_oldest()).unwrap_or(usize::MAX);
            let skip = skip.min(self.ring.len());
            self.ring
                .range(skip..)
                .filter(|e| subscriber.wants(e))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let id = self.subscribe(subscriber)?;
        Ok((id, replay))
    }

    /// Subscribes to one election group's `leader.changed` events.
    pub fn watch_election(&mut self, group: Arc<str>) -> Result<SubscriberId, CoreError> {
        self.subscribe(Subscriber {
            filter: Filter::Election(group),
            sequence_min: 0,
        })
    }

    fn subscribe(&mut self, subscriber: Subscriber) -> Result<SubscriberId, CoreError> {
        if self.subscribers.len() >= self.subscribers_max {
            return Err(CoreError::new(
                ErrorCode::ResourceExhausted,
                crate::limits::reached_message("watchers_max", self.subscribers_max),
            ));
        }
        let id = SubscriberId(self.subscriber_next);
        self.subscriber_next += 1;
        self.subscribers.insert(id, subscriber);
        Ok(id)
    }

    /// Forgets a subscriber; deliveries already queued for it are dropped. Unknown ids are fine:
    /// a stream may end twice (client gone and overflow at once).
    pub fn unwatch(&mut self, id: SubscriberId) {
        if self.subscribers.remove(&id).is_some() {
            self.outbox.retain(|d| d.subscriber != id);
        }
    }

    /// Moves every queued delivery into `out`, in sequence order per subscriber.
    pub fn drain_deliveries(&mut self, out: &mut Vec<Delivery>) {
        out.append(&mut self.outbox);
    }

    pub fn check_invariants(&self) {
        // Consecutive sequences: a resume's replay starts at an offset into the ring.
        for pair in self.ring.iter().zip(self.ring.iter().skip(1)) {
            assert_eq!(
                pair.0.sequence + 1,
                pair.1.sequence,
                "event ring not consecutive at {}",
                pair.1.sequence
            );
        }
        if let Some(last) = self.ring.back() {
            assert_eq!(
                last.sequence + 1,
                self.sequence_next,
                "event ring misses the newest event"
            );
        }
        assert!(self.ring.len() <= self.ring_max, "event ring over its bound");
        assert!(
            self.subscribers.len() <= self.subscribers_max,
            "subscribers over their bound"
        );
    }
}
