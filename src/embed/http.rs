//! An external embedder: an OpenAI-compatible `POST /v1/embeddings` endpoint (Ollama, vLLM,
//! text-embeddings-inference, hosted APIs), asked for several texts per request, with a bearer
//! key from the environment and a timeout on every request.
//!
//! Architecture invariant: blocking, called on the embedding workers only (never a network
//! thread or the core); the key is sent as a header and never logged or put in an error message;
//! an answer that is not one finite vector per text, all of one dimension, is an error, never a
//! guess.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The environment variable an external embedder's API key is read from (sent as a bearer token).
pub const API_KEY_ENV: &str = "AGENTKEEPER_EMBEDDER_API_KEY";
/// Texts sent in one request at most.
pub const BATCH_MAX: usize = 32;
/// The largest answer read (32 texts x 4096 dimensions as JSON fits well within).
const ANSWER_BYTES_MAX: u64 = 16 << 20;

/// Why an external embedder gave no vectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// No answer within the timeout.
    Timeout,
    /// No connection, an HTTP error status, or an answer that is not the vectors asked for.
    Failed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Timeout => f.write_str("no answer within the timeout"),
            HttpError::Failed(why) => f.write_str(why),
        }
    }
}

/// What `--embedder`, `--embedder-model` and the environment say.
#[derive(Clone)]
pub struct HttpEmbedderConfig {
    /// The endpoint, e.g. `http://localhost:11434/v1/embeddings`; a base URL without a path
    /// (`http://localhost:11434`) or ending in `/v1` gets `/v1/embeddings` added.
    pub url: String,
    /// The request's `model` field, and the name the core keeps the vectors under.
    pub model: String,
    pub api_key: Option<String>,
    /// How long one request may take, connection included.
    pub timeout: Duration,
}

impl HttpEmbedderConfig {
    /// Whether `model` may name the external model (the core's rule for a vector's model name).
    pub fn check_model(model: &str) -> Result<(), String> {
        crate::core::search::vectors::check_model_name(model).map_err(|why| format!("--embedder-model: {why}"))
    }
}

impl std::fmt::Debug for HttpEmbedderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpEmbedderConfig")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "(set)"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

pub struct HttpEmbedder {
    config: HttpEmbedderConfig,
    agent: ureq::Agent,
}

#[derive(Serialize)]
struct EmbeddingsRequest<'a> {
    model: &'a str,
    input: &'a [&'a str],
}

#[derive(Deserialize)]
struct EmbeddingsAnswer {
    data: Vec<Embedding>,
}

#[derive(Deserialize)]
struct Embedding {
    embedding: Vec<f32>,
    #[serde(default)]
    index: Option<usize>,
}

/// `url` with `/v1/embeddings` added when it names only a host or ends in `/v1`; an error for
/// what is not an http(s) URL.
pub fn endpoint(url: &str) -> Result<String, String> {
    let trimmed = url.trim().trim_end_matches('/');
    let Some((scheme, rest)) = trimmed.split_once("://") else {
        return Err(format!(
            "--embedder {url:?}: not a URL (http://HOST:PORT/v1/embeddings)"
        ));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("--embedder {url:?}: only http and https are spoken"));
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("--embedder {url:?}: no host"));
    }
    Ok(match rest.split_once('/') {
        None => format!("{trimmed}/v1/embeddings"),
        Some((_, "v1")) => format!("{trimmed}/embeddings"),
        Some(_) => trimmed.to_string(),
    })
}

impl HttpEmbedder {
    pub fn new(config: HttpEmbedderConfig) -> HttpEmbedder {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .http_status_as_error(false)
            .build()
            .new_agent();
        HttpEmbedder { config, agent }
    }

    /// The model name the vectors are kept under.
    pub fn model(&self) -> &str {
        &self.config.model
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// One vector per text, in order (at most `BATCH_MAX` texts), waiting at most `timeout` (the
    /// configured one, or less: a query's is shorter).
    pub fn embed(&self, texts: &[&str], timeout: Duration) -> Result<Vec<Vec<f32>>, HttpError> {
        assert!(
            !texts.is_empty() && texts.len() <= BATCH_MAX,
            "1 to {BATCH_MAX} texts a request"
        );
        let mut request = self
            .agent
            .post(&self.config.url)
            .config()
            .timeout_global(Some(timeout.min(self.config.timeout)))
            .build();
        if let Some(key) = &self.config.api_key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let body = EmbeddingsRequest {
            model: &self.config.model,
            input: texts,
        };
        let mut response = request.send_json(&body).map_err(failure)?;
        let status = response.status();
        if !status.is_success() {
            let detail = response
                .body_mut()
                .with_config()
                .limit(512)
                .read_to_string()
                .unwrap_or_default();
            return Err(HttpError::Failed(format!(
                "HTTP {status}: {}",
                detail.chars().take(200).collect::<String>()
            )));
        }
        let answer: EmbeddingsAnswer = response
            .body_mut()
            .with_config()
            .limit(ANSWER_BYTES_MAX)
            .read_json()
            .map_err(failure)?;
        vectors_in_order(answer, texts.len())
    }
}

/// The answer's vectors in the order of the texts asked for (by `index` when given), checked:
/// one per text, finite, all of one dimension.
fn vectors_in_order(answer: EmbeddingsAnswer, asked: usize) -> Result<Vec<Vec<f32>>, HttpError> {
    let bad = |why: String| Err(HttpError::Failed(why));
    if answer.data.len() != asked {
        return bad(format!("{} vectors for {asked} texts", answer.data.len()));
    }
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; asked];
    for (position, item) in answer.data.into_iter().enumerate() {
        let index = item.index.unwrap_or(position);
        match slots.get_mut(index) {
            Some(slot @ None) => *slot = Some(item.embedding),
            _ => return bad(format!("vector index {index} out of place")),
        }
    }
    let vectors: Vec<Vec<f32>> = slots.into_iter().flatten().collect();
    let dims = vectors.first().map_or(0, Vec::len);
    if dims == 0 || vectors.iter().any(|v| v.len() != dims) {
        return bad("vectors of no or of several dimensions".into());
    }
    if vectors.iter().flatten().any(|x| !x.is_finite()) {
        return bad("a vector with a value that is not finite".into());
    }
    Ok(vectors)
}

/// A transport error as ours: a timeout, or what failed (never the request's headers).
fn failure(error: ureq::Error) -> HttpError {
    match error {
        ureq::Error::Timeout(_) => HttpError::Timeout,
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => HttpError::Timeout,
        other => HttpError::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_gets_its_path_when_given_a_host_or_v1() {
        assert_eq!(
            endpoint("http://localhost:11434").as_deref(),
            Ok("http://localhost:11434/v1/embeddings")
        );
        assert_eq!(endpoint("http://h:1/v1/").as_deref(), Ok("http://h:1/v1/embeddings"));
        assert_eq!(
            endpoint("https://api.example/v1/embeddings").as_deref(),
            Ok("https://api.example/v1/embeddings")
        );
        assert!(endpoint("localhost:11434").is_err());
        assert!(endpoint("ftp://h/v1").is_err());
        assert!(endpoint("http:///v1").is_err());
    }

    #[test]
    fn an_answer_is_put_in_the_order_asked_and_checked() {
        let answer = |items: Vec<(Vec<f32>, Option<usize>)>| EmbeddingsAnswer {
            data: items
                .into_iter()
                .map(|(embedding, index)| Embedding { embedding, index })
                .collect(),
        };
        let ordered = vectors_in_order(answer(vec![(vec![2.0], Some(1)), (vec![1.0], Some(0))]), 2);
        assert_eq!(ordered, Ok(vec![vec![1.0], vec![2.0]]));
        assert!(vectors_in_order(answer(vec![(vec![1.0], None)]), 2).is_err());
        assert!(vectors_in_order(answer(vec![(vec![1.0], Some(0)), (vec![1.0], Some(0))]), 2).is_err());
        assert!(vectors_in_order(answer(vec![(vec![1.0], None), (vec![1.0, 2.0], None)]), 2).is_err());
        assert!(vectors_in_order(answer(vec![(vec![f32::NAN], None)]), 1).is_err());
        assert!(vectors_in_order(answer(vec![(vec![], None)]), 1).is_err());
    }

    #[test]
    fn the_key_never_shows_in_the_config_debug_output() {
        let config = HttpEmbedderConfig {
            url: "http://h/v1/embeddings".into(),
            model: "m".into(),
            api_key: Some("sk-secret".into()),
            timeout: Duration::from_secs(1),
        };
        assert!(!format!("{config:?}").contains("sk-secret"));
    }
}
