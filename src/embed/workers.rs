//! The embedding workers: a few threads that turn card texts and queries into vectors (from
//! `sources`: the external embedder or the built-in encoder), off the core's thread and the
//! network threads. A card whose text's vector is cached already gets it inside its Register
//! (`Embedder::before_register`: one core command and one log record); any other card's vector
//! goes to the core as `SetCardVector` once encoded (Register has long been answered); a query's
//! vector comes back to the Find that waits for it, at most `QUERY_WAIT_MAX`. Card texts waiting
//! together go in one request (`http::BATCH_MAX` at most).
//!
//! Architecture invariant: nothing here blocks a network thread or the core: jobs go into
//! bounded queues with `try_send` (full: shed, counted in `agentkeeper_embed_total{outcome=
//! "shed"}`), and commands into the core's bulk lane (never the priority lane heartbeats use).
//! Identical card texts are encoded once: a content-hash cache (`CARD_CACHE_MAX` vectors) keeps
//! each text's vector of the primary model (a stand-in's is not kept), and cards that come while
//! their text is being encoded wait for it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use super::http::BATCH_MAX;
use super::sources::{Kind, Sources};
use crate::core::search::card_text::{CardDigest, card_text, text_digest};
use crate::core::search::vectors::{CardVector, ModelVector};
use crate::core::types::{AgentCard, Map, new_map};
use crate::core::{Command, ErrorCode};
use crate::driver::{CoreHandle, Request};
use crate::metrics::Metrics;

/// Cards waiting to be encoded at most (beyond: shed; the card stays lexically searchable).
pub const CARD_QUEUE_MAX: usize = 10_000;
/// Queries waiting for a worker at most (beyond: shed; the Find ranks lexically).
pub const QUERY_QUEUE_MAX: usize = 64;
/// Distinct card texts whose vectors are kept (~1.5 KiB each at 384 dimensions).
pub const CARD_CACHE_MAX: usize = 16_384;
/// The longest a Find waits for its query's vector before it ranks lexically.
pub const QUERY_WAIT_MAX: Duration = Duration::from_millis(500);
/// How long a worker keeps offering a card vector to a full core queue before shedding it.
const CORE_QUEUE_PATIENCE: Duration = Duration::from_secs(2);

enum Job {
    /// Encode the text with this digest; the cache lists who waits for it.
    Card { digest: CardDigest, text: String },
    Query {
        text: String,
        reply: oneshot::Sender<Option<ModelVector>>,
    },
}

/// A card text's vector (shared with the Registers that carry it), or the agents waiting for
/// it to be encoded.
enum Cached {
    Ready(Arc<CardVector>),
    Pending(Vec<String>),
}

struct CardCache {
    entries: Map<CardDigest, Cached>,
    /// Ready entries, oldest first: the first to go when the cache is full.
    order: VecDeque<CardDigest>,
}

pub(super) struct Pool {
    cards: Sender<Job>,
    queries: Sender<Job>,
    cache: Mutex<CardCache>,
    core: CoreHandle,
    metrics: Arc<Metrics>,
    /// The model the cards' vectors should come from (see `Sources::primary_model`).
    primary: Arc<str>,
    sources: Arc<Sources>,
}

/// What the workers know of a card about to be registered (`Embedder::before_register`).
pub enum CardLookup {
    /// Its text's vector of the primary model is cached: it goes inside the Register.
    Cached(Arc<CardVector>),
    /// Not yet: once the agent has its id, `Embedder::card_registered` queues the text (or
    /// joins the agents waiting for it).
    Pending(PendingCard),
}

/// A card text the cache has no vector for yet, and its digest.
pub struct PendingCard {
    digest: CardDigest,
    text: String,
}

/// The network side's handle on the workers; `none()` when there is no model (lexical Find).
#[derive(Clone)]
pub struct Embedder {
    pool: Option<Arc<Pool>>,
}

impl Embedder {
    /// No model: every Find ranks lexically and cards get no vector.
    pub fn none() -> Embedder {
        Embedder { pool: None }
    }

    /// Starts `threads` workers sharing `sources`; card vectors go to `core`.
    pub fn start(sources: Sources, threads: usize, core: CoreHandle, metrics: Arc<Metrics>) -> Embedder {
        assert!(threads > 0, "at least one embedding worker");
        let (cards, card_jobs) = crossbeam_channel::bounded(CARD_QUEUE_MAX);
        let (queries, query_jobs) = crossbeam_channel::bounded(QUERY_QUEUE_MAX);
        let pool = Arc::new(Pool {
            cards,
            queries,
            cache: Mutex::new(CardCache {
                entries: new_map(0),
                order: VecDeque::new(),
            }),
            core,
            metrics,
            primary: Arc::from(sources.primary_model()),
            sources: Arc::new(sources),
        });
        let sources = Arc::clone(&pool.sources);
        for n in 0..threads {
            let (sources, pool) = (Arc::clone(&sources), Arc::downgrade(&pool));
            let (card_jobs, query_jobs) = (card_jobs.clone(), query_jobs.clone());
            std::thread::Builder::new()
                .name(format!("embed-{n}"))
                .spawn(move || work(&sources, &pool, &query_jobs, &card_jobs))
                .expect("spawn an embedding worker");
        }
        let weak = Arc::downgrade(&pool);
        std::thread::Builder::new()
            .name("embed-backfill".into())
            .spawn(move || super::backfill::run(&weak))
            .expect("spawn the backfill pass");
        Embedder { pool: Some(pool) }
    }

    /// True when a model ranks Find semantically.
    pub fn enabled(&self) -> bool {
        self.pool.is_some()
    }

    /// Looks `card`'s text up before its Register goes to the core: a cached vector rides in the
    /// Register (counted as `outcome="inline"`); else the card is `Pending` for
    /// `card_registered`. `None` without a model.
    pub fn before_register(&self, card: &AgentCard) -> Option<CardLookup> {
        let pool = self.pool.as_ref()?;
        let text = card_text(card);
        let digest = text_digest(&text);
        Some(match pool.cached(digest) {
            Some(vector) => {
                pool.count("card", "inline");
                CardLookup::Cached(vector)
            }
            None => CardLookup::Pending(PendingCard { digest, text }),
        })
    }

    /// A card whose vector was not cached was registered as `agent_id`: its vector will follow
    /// (at once if its text's has come in since).
    pub fn card_registered(&self, agent_id: &str, card: PendingCard) {
        let Some(pool) = &self.pool else { return };
        pool.enqueue(agent_id, card.digest, card.text, Duration::ZERO);
    }

    /// `query`'s vector, or `None` (no model, the queue full, or no answer within
    /// `QUERY_WAIT_MAX`): the Find then ranks lexically.
    pub async fn query_vector(&self, query: &str) -> Option<ModelVector> {
        let pool = self.pool.as_ref()?;
        if query.trim().is_empty() {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job::Query {
            text: query.to_string(),
            reply,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = pool.queries.try_send(job) {
            pool.count("query", "shed");
            return None;
        }
        match tokio::time::timeout(QUERY_WAIT_MAX, answer).await {
            Ok(Ok(vector)) => vector,
            Ok(Err(_)) => None,
            Err(_) => {
                pool.count("query", "timeout");
                None
            }
        }
    }
}

impl Pool {
    /// The primary model's vector of the text with `digest`, if it is cached.
    fn cached(&self, digest: CardDigest) -> Option<Arc<CardVector>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.entries.get(&digest) {
            Some(Cached::Ready(vector)) => Some(Arc::clone(vector)),
            Some(Cached::Pending(_)) | None => None,
        }
    }

    /// `agent_id`'s card has `text` (whose digest is `digest`): its vector goes to the core at
    /// once if the cache has it, after the text's encoding if that is under way, else the text
    /// is queued (full: shed). `patience`: how long a full core queue is retried (zero on a
    /// network thread).
    fn enqueue(&self, agent_id: &str, digest: CardDigest, text: String, patience: Duration) {
        debug_assert_eq!(digest, text_digest(&text));
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.entries.get_mut(&digest) {
            Some(Cached::Ready(cached)) => {
                let vector = cached.vector.clone();
                drop(cache);
                self.count("card", "cached");
                self.offer(agent_id, digest, vector, patience);
            }
            Some(Cached::Pending(waiting)) => {
                if !waiting.iter().any(|w| w == agent_id) {
                    waiting.push(agent_id.to_string());
                }
                self.count("card", "cached");
            }
            None => match self.cards.try_send(Job::Card { digest, text }) {
                Ok(()) => {
                    cache
                        .entries
                        .insert(digest, Cached::Pending(vec![agent_id.to_string()]));
                }
                Err(_) => self.count("card", "shed"),
            },
        }
    }

    /// The background pass found `agent_id`'s card (`text`) without a vector of the primary model.
    pub(super) fn card_lacking_vector(&self, agent_id: &str, text: &str) {
        self.enqueue(agent_id, text_digest(text), text.to_string(), CORE_QUEUE_PATIENCE);
    }

    /// Card texts waiting for a worker.
    pub(super) fn queued_cards(&self) -> usize {
        self.cards.len()
    }

    /// Whether the external embedder is failing (the stand-in's vectors would be replaced).
    pub(super) fn outage(&self) -> super::sources::Outage {
        self.sources.outage()
    }

    pub(super) fn primary(&self) -> &str {
        &self.primary
    }

    pub(super) fn core(&self) -> &CoreHandle {
        &self.core
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn count(&self, kind: &str, outcome: &str) {
        self.metrics.embed_total.with_label_values(&[kind, outcome]).inc();
    }

    /// Sends `agent_id`'s card vector to the core's bulk lane, retrying a full queue for up to
    /// `patience` (a worker may wait; a network thread passes zero), then shedding it.
    fn offer(&self, agent_id: &str, digest: CardDigest, vector: ModelVector, patience: Duration) {
        let mut waited = Duration::ZERO;
        let mut pause = Duration::from_millis(1);
        loop {
            let (reply, _answer) = oneshot::channel();
            let request = Request::Call {
                command: Command::SetCardVector {
                    agent_id: agent_id.to_string(),
                    card_digest: digest,
                    vector: vector.clone(),
                },
                principal: None,
                reply,
                mailbox: None,
            };
            match self.core.send(request) {
                Ok(()) => return,
                Err(error) if error.code == ErrorCode::ResourceExhausted && waited < patience => {
                    std::thread::sleep(pause);
                    waited += pause;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(_) => {
                    self.count("card", "shed");
                    return;
                }
            }
        }
    }

    /// Stores a text's vector (if it is the primary model's: a stand-in's is not kept, so a
    /// replica registered once the primary answers again gets the primary's) and hands back the
    /// agents that waited for it.
    fn ready(&self, digest: CardDigest, vector: &ModelVector) -> Vec<String> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if vector.model != self.primary {
            return match cache.entries.remove(&digest) {
                Some(Cached::Pending(waiting)) => waiting,
                _ => Vec::new(),
            };
        }
        let card_vector = Arc::new(CardVector {
            card_digest: digest,
            vector: vector.clone(),
        });
        let waiting = match cache.entries.insert(digest, Cached::Ready(card_vector)) {
            Some(Cached::Pending(waiting)) => waiting,
            _ => Vec::new(),
        };
        cache.order.push_back(digest);
        while cache.order.len() > CARD_CACHE_MAX {
            let oldest = cache.order.pop_front().expect("longer than the bound");
            cache.entries.remove(&oldest);
        }
        waiting
    }

    /// A text could not be encoded: its waiters get no vector (their cards stay lexical).
    fn failed(&self, digest: CardDigest) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.entries.remove(&digest);
    }
}

/// One worker: queries first (a Find waits on each), cards when no query waits, the card texts
/// waiting together (up to `BATCH_MAX`) in one batch. Ends when the daemon drops its `Embedder`.
#[allow(clippy::disallowed_methods)] // the encoder's timings, for agentkeeper_embed_seconds
fn work(sources: &Sources, pool: &std::sync::Weak<Pool>, queries: &Receiver<Job>, cards: &Receiver<Job>) {
    loop {
        let job = match queries.try_recv() {
            Ok(job) => Some(job),
            Err(_) => crossbeam_channel::select! {
                recv(queries) -> job => job.ok(),
                recv(cards) -> job => job.ok(),
            },
        };
        let Some(job) = job else { return };
        let Some(pool) = pool.upgrade() else { return };
        let started = std::time::Instant::now();
        match job {
            Job::Query { text, reply } => {
                let vector = sources
                    .embed(Kind::Query, &[&text])
                    .and_then(|mut e| Some(ModelVector::new(&e.model, e.vectors.pop()?)));
                pool.count("query", if vector.is_some() { "encoded" } else { "failed" });
                pool.metrics
                    .embed_seconds
                    .with_label_values(&["query"])
                    .observe(started.elapsed().as_secs_f64());
                let _ = reply.send(vector);
            }
            Job::Card { digest, text } => {
                let mut batch = vec![(digest, text)];
                while batch.len() < BATCH_MAX {
                    match cards.try_recv() {
                        Ok(Job::Card { digest, text }) => batch.push((digest, text)),
                        Ok(Job::Query { .. }) => unreachable!("queries have their own queue"),
                        Err(_) => break,
                    }
                }
                embed_cards(sources, &pool, batch, started);
            }
        }
    }
}

/// Encodes a batch of card texts in one go and sends each vector to the agents waiting for it.
#[allow(clippy::disallowed_methods)] // the encoder's timings, for agentkeeper_embed_seconds
fn embed_cards(sources: &Sources, pool: &Pool, batch: Vec<(CardDigest, String)>, started: std::time::Instant) {
    let texts: Vec<&str> = batch.iter().map(|(_, text)| text.as_str()).collect();
    let Some(embedded) = sources.embed(Kind::Card, &texts) else {
        for (digest, _) in &batch {
            pool.count("card", "failed");
            pool.failed(*digest);
        }
        return;
    };
    debug_assert_eq!(embedded.vectors.len(), batch.len());
    let seconds = started.elapsed().as_secs_f64() / batch.len() as f64;
    for ((digest, _), values) in batch.into_iter().zip(embedded.vectors) {
        pool.count("card", "encoded");
        pool.metrics.embed_seconds.with_label_values(&["card"]).observe(seconds);
        let vector = ModelVector {
            model: Arc::clone(&embedded.model),
            values: values.into(),
        };
        for agent_id in pool.ready(digest, &vector) {
            pool.offer(&agent_id, digest, vector.clone(), CORE_QUEUE_PATIENCE);
        }
    }
}
