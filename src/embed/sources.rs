//! Where the embedding workers get vectors: the external embedder (`--embedder`) when there is
//! one, else the built-in encoder; and the built-in encoder in its place while the external one
//! fails (an outage: logged once when it starts and once when it ends, counted per text in
//! `agentkeeper_embed_fallback_total`; during it the endpoint is asked again only every
//! `OUTAGE_RETRY`, so each job does not wait out a timeout).
//!
//! Architecture invariant: every vector leaves with the name of the model that made it (the
//! external model's name, or `BUILTIN_MODEL`), and a batch's vectors all come from one model;
//! the core never ranks one model's vectors against another's.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::SentenceEncoder;
use super::http::{BATCH_MAX, HttpEmbedder, HttpError};
use crate::core::search::vectors::BUILTIN_MODEL;
use crate::metrics::Metrics;

/// How long an external embedder that failed is left alone before it is asked again.
pub const OUTAGE_RETRY: Duration = Duration::from_secs(2);
/// How long a query's request to the external embedder may take: the Find waits at most
/// `workers::QUERY_WAIT_MAX` (500 ms) for its vector, and the built-in encoder may still stand in.
pub const QUERY_REQUEST_MAX: Duration = Duration::from_millis(400);

/// Which job a batch is for: metrics' `kind` label, and a query's shorter timeout.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Card,
    Query,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Card => "card",
            Kind::Query => "query",
        }
    }
}

/// The external embedder's state, as the background pass sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outage {
    /// Answering (or none configured).
    None,
    /// Failing, and left alone until its retry time.
    LeftAlone,
    /// Failing, and its retry time has come: the next request tries it.
    RetryDue,
}

/// Vectors for a batch of texts, one per text, all from `model`.
pub struct Embedded {
    pub model: Arc<str>,
    pub vectors: Vec<Vec<f32>>,
}

pub struct Sources {
    external: Option<HttpEmbedder>,
    builtin: Option<SentenceEncoder>,
    /// While the external embedder is failing: when it may be asked again.
    outage: Mutex<Option<Instant>>,
    builtin_model: Arc<str>,
    metrics: Arc<Metrics>,
}

impl Sources {
    /// None when there is neither an external embedder nor a built-in encoder.
    pub fn new(
        external: Option<HttpEmbedder>,
        builtin: Option<SentenceEncoder>,
        metrics: Arc<Metrics>,
    ) -> Option<Sources> {
        if external.is_none() && builtin.is_none() {
            return None;
        }
        Some(Sources {
            external,
            builtin,
            outage: Mutex::new(None),
            builtin_model: Arc::from(BUILTIN_MODEL),
            metrics,
        })
    }

    /// The model whose vectors the cards should have: the external embedder's when there is one.
    pub fn primary_model(&self) -> &str {
        match &self.external {
            Some(external) => external.model(),
            None => BUILTIN_MODEL,
        }
    }

    /// Whether the external embedder is failing, and if so whether it may be asked again.
    #[allow(clippy::disallowed_methods)] // the outage's retry time, never the core's clock
    pub fn outage(&self) -> Outage {
        match *self.outage.lock().unwrap_or_else(PoisonError::into_inner) {
            None => Outage::None,
            Some(retry_at) if Instant::now() < retry_at => Outage::LeftAlone,
            Some(_) => Outage::RetryDue,
        }
    }

    /// Vectors for `texts` (at most `BATCH_MAX`): from the external embedder when it answers,
    /// else from the built-in encoder; `None` when neither gives them.
    #[allow(clippy::disallowed_methods)] // the outage's retry time, never the core's clock
    pub fn embed(&self, kind: Kind, texts: &[&str]) -> Option<Embedded> {
        debug_assert!(!texts.is_empty() && texts.len() <= BATCH_MAX);
        if let Some(external) = &self.external {
            let now = Instant::now();
            let retry_at = *self.outage.lock().unwrap_or_else(PoisonError::into_inner);
            if retry_at.is_none_or(|at| now >= at) {
                let timeout = match kind {
                    Kind::Card => Duration::MAX,
                    Kind::Query => QUERY_REQUEST_MAX,
                };
                match external.embed(texts, timeout) {
                    Ok(vectors) => {
                        self.request("ok");
                        self.answered(external);
                        return Some(Embedded {
                            model: Arc::from(external.model()),
                            vectors,
                        });
                    }
                    Err(error) => {
                        self.request(if error == HttpError::Timeout {
                            "timeout"
                        } else {
                            "failed"
                        });
                        self.failed(external, &error, Instant::now());
                    }
                }
            }
            self.metrics
                .embed_fallback_total
                .with_label_values(&[kind.label()])
                .inc_by(texts.len() as u64);
        }
        let builtin = self.builtin.as_ref()?;
        let vectors = texts
            .iter()
            .map(|text| builtin.encode(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| tracing::warn!(%error, "a text could not be encoded; it ranks lexically"))
            .ok()?;
        Some(Embedded {
            model: Arc::clone(&self.builtin_model),
            vectors,
        })
    }

    fn request(&self, outcome: &str) {
        self.metrics.embedder_requests_total.with_label_values(&[outcome]).inc();
    }

    /// The external embedder answered: an outage, if one was on, is over (said once).
    fn answered(&self, external: &HttpEmbedder) {
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        if outage.take().is_some() {
            tracing::info!(
                url = external.url(),
                model = external.model(),
                "the external embedder answers again"
            );
        }
    }

    /// The external embedder failed: an outage starts (said once) or goes on.
    fn failed(&self, external: &HttpEmbedder, error: &HttpError, now: Instant) {
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        if outage.is_none() {
            let standing_in = if self.builtin.is_some() {
                "the built-in encoder stands in until it answers again"
            } else {
                "no built-in encoder: cards wait for their vectors and Find ranks lexically until it answers again"
            };
            tracing::warn!(url = external.url(), model = external.model(), %error, "the external embedder failed; {standing_in}");
        }
        *outage = Some(now + OUTAGE_RETRY);
    }
}
