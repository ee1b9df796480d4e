//! End to end: an external embedder (`--embedder URL`), played by a small OpenAI-compatible
//! `/v1/embeddings` server started by each test, answering with deterministic 8-dimensional
//! vectors. A card's vector comes from it (batched, with the model name and the bearer key from
//! the environment) and Find ranks by it; with the server down, or too slow, the built-in encoder
//! stands in, the fallback metric moves, and the outage is logged once; cards that have no vector
//! of the embedder's model (a data dir written by a daemon without one) get one from the
//! background pass.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use agentkeeper::proto as pb;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use common::{Daemon, card, installed_model, refusing_port, wait_until};
use tokio::sync::watch;

const MODEL: &str = "test-embed";
const KEY: &str = "sk-test-5e3b1c";

/// What the server saw: each request's inputs, model field and Authorization header.
#[derive(Default)]
struct Seen {
    batches: Vec<Vec<String>>,
    models: Vec<String>,
    authorizations: Vec<Option<String>>,
}

#[derive(Clone)]
struct Server {
    seen: Arc<Mutex<Seen>>,
    /// Requests wait while this is false (to let cards queue up behind the first; kept false,
    /// a server that never answers within the daemon's timeout).
    open: watch::Receiver<bool>,
}

/// Deterministic vectors: a text about the first job points along axis 0, the second along 1,
/// and "numero uno" / "numero dos" (no word shared with any card) along the same axes; anything
/// else along axis 7.
fn vector_of(text: &str) -> Vec<f32> {
    let axis = if text.contains("first") || text.contains("uno") {
        0
    } else if text.contains("second") || text.contains("dos") {
        1
    } else {
        7
    };
    let mut vector = vec![0.05f32; 8];
    vector[axis] = 1.0;
    vector
}

async fn embeddings(
    State(server): State<Server>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    let inputs: Vec<String> = match &body["input"] {
        serde_json::Value::String(one) => vec![one.clone()],
        many => many
            .as_array()
            .expect("input is a string or a list")
            .iter()
            .map(|v| v.as_str().expect("a text").to_string())
            .collect(),
    };
    {
        let mut seen = server.seen.lock().expect("not poisoned");
        seen.batches.push(inputs.clone());
        seen.models.push(body["model"].as_str().unwrap_or_default().to_string());
        seen.authorizations.push(
            headers
                .get("authorization")
                .map(|v| v.to_str().unwrap_or_default().to_string()),
        );
    }
    let mut open = server.open.clone();
    let _ = open.wait_for(|open| *open).await;
    // Listed in reverse, each with its index: the daemon must put them back in order.
    let data: Vec<serde_json::Value> = (inputs.iter().enumerate().rev())
        .map(|(index, text)| serde_json::json!({"object": "embedding", "index": index, "embedding": vector_of(text)}))
        .collect();
    Json(serde_json::json!({"object": "list", "model": MODEL, "data": data}))
}

/// Starts the server on a free port; it serves until the test's runtime ends.
async fn start_server(open: watch::Receiver<bool>) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let state = Server {
        seen: Arc::clone(&seen),
        open,
    };
    let app = Router::new()
        .route("/v1/embeddings", post(embeddings))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the test embedder");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

async fn register(c: &mut common::Clients, name: &str, description: &str) {
    let request = pb::RegisterRequest {
        card: Some(card(name, description, &[])),
        ttl_seconds: 600,
    };
    c.registry.register(request).await.expect("registered");
}

async fn find(c: &mut common::Clients, query: &str) -> Vec<String> {
    let request = pb::FindRequest {
        query: query.into(),
        tools: vec![],
        limit: 2,
    };
    let found = c.registry.find(request).await.expect("Find answers").into_inner();
    (found.agents.iter())
        .map(|a| a.card.as_ref().expect("a card").name.clone())
        .collect()
}

/// Waits until "numero dos" (no word on any card) finds beta-agent first: by the server's vectors
/// alone (lexically the two tie, and alpha-agent registered first).
async fn wait_ranked_by_the_server(c: &mut common::Clients) {
    wait_until("Find ranks by the external embedder's vectors", async || {
        let found = find(c, "numero dos").await;
        match found.first().map(String::as_str) {
            Some("beta-agent") => Ok(()),
            _ => Err(format!("found {found:?}")),
        }
    })
    .await;
}

/// Waits until the counter `sample` reaches `want` (it may pass it: the background pass and the
/// endpoint's retries add to some of them at their own pace).
async fn wait_at_least(daemon: &Daemon, sample: &str, want: f64) {
    wait_until(&format!("{sample} >= {want}"), async || match daemon.metric(sample) {
        Some(value) if value >= want => Ok(()),
        value => Err(format!("{sample} is {value:?}")),
    })
    .await
}

fn metric_or_zero(daemon: &Daemon, sample: &str) -> f64 {
    daemon.metric(sample).unwrap_or(0.0)
}

#[tokio::test]
async fn cards_get_the_external_embedders_vectors_in_batches_and_find_ranks_by_them() {
    let (gate, open) = watch::channel(false);
    let (addr, seen) = start_server(open).await;
    let daemon = Daemon::start_env(
        &[
            &format!("--embedder=http://{addr}"),
            &format!("--embedder-model={MODEL}"),
        ],
        &[("AGENTKEEPER_EMBEDDER_API_KEY", KEY)],
    );
    assert_eq!(daemon.metric("agentkeeper_search_model_loaded"), Some(1.0));
    let mut c = daemon.clients().await;
    register(&mut c, "alpha-agent", "Handles the first job").await;
    register(&mut c, "beta-agent", "Handles the second job").await;
    // The first card's request waits at the server; the cards registered meanwhile queue up and
    // leave together in the next request.
    wait_until("the first card reaches the embedder", async || {
        match seen.lock().expect("not poisoned").batches.len() {
            0 => Err("no request yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    for i in 0..6 {
        register(&mut c, &format!("gamma-{i}"), &format!("Handles job number {i}")).await;
    }
    gate.send(true).expect("the server listens");
    wait_ranked_by_the_server(&mut c).await;
    let found = find(&mut c, "numero uno").await;
    assert_eq!(found.first().map(String::as_str), Some("alpha-agent"), "{found:?}");
    let encoded = r#"agentkeeper_embed_total{kind="card",outcome="encoded"}"#;
    wait_at_least(&daemon, encoded, 8.0).await;
    let seen = seen.lock().expect("not poisoned");
    let largest = seen.batches.iter().map(Vec::len).max().unwrap_or(0);
    assert!(largest > 1, "queued card texts go in one request: {:?}", seen.batches);
    assert!(seen.models.iter().all(|m| m == MODEL), "{:?}", seen.models);
    let bearer = format!("Bearer {KEY}");
    assert!(
        (seen.authorizations.iter()).all(|a| a.as_deref() == Some(bearer.as_str())),
        "the key from the environment, as a bearer token"
    );
    assert!(daemon.metric(r#"agentkeeper_embedder_requests_total{outcome="ok"}"#) >= Some(3.0));
    assert_eq!(
        metric_or_zero(&daemon, r#"agentkeeper_embed_fallback_total{kind="card"}"#),
        0.0
    );
    let log = daemon.stderr();
    assert!(
        log.contains("external embedder") && log.contains(MODEL),
        "said at start-up"
    );
    assert!(!log.contains(KEY), "the key is never logged");
}

#[tokio::test]
async fn with_the_embedder_down_the_builtin_encoder_stands_in_and_the_outage_is_logged_once() {
    let Some(models) = installed_model() else { return };
    let (_refusing, port) = refusing_port();
    let daemon = Daemon::start(&[
        &format!("--search-model={}", models.display()),
        &format!("--embedder=http://127.0.0.1:{port}/v1/embeddings"),
        &format!("--embedder-model={MODEL}"),
    ]);
    let mut c = daemon.clients().await;
    register(
        &mut c,
        "code-reviewer",
        "Reviews pull requests for bugs and style problems",
    )
    .await;
    register(&mut c, "scheduler", "Books meetings and manages calendars").await;
    // The built-in encoder's vectors rank: a paraphrase sharing no word finds the reviewer.
    wait_until("the built-in encoder's vectors rank", async || {
        let found = find(&mut c, "look over my patch before it is merged").await;
        match found.first().map(String::as_str) {
            Some("code-reviewer") => Ok(()),
            _ => Err(format!("found {found:?}")),
        }
    })
    .await;
    wait_at_least(&daemon, r#"agentkeeper_embed_fallback_total{kind="card"}"#, 2.0).await;
    assert!(daemon.metric(r#"agentkeeper_embed_fallback_total{kind="query"}"#) >= Some(1.0));
    // The endpoint is asked again now and then (not per call) and keeps failing: still one line.
    wait_until("the endpoint is tried again", async || {
        find(&mut c, "look over my patch").await;
        match daemon.metric(r#"agentkeeper_embedder_requests_total{outcome="failed"}"#) {
            Some(n) if n >= 2.0 => Ok(()),
            other => Err(format!("failed requests {other:?}")),
        }
    })
    .await;
    let log = daemon.stderr();
    assert_eq!(
        log.matches("the external embedder failed").count(),
        1,
        "one line per outage: {log}"
    );
    assert!(log.contains("built-in encoder stands in"), "{log}");
}

#[tokio::test]
async fn a_slow_embedder_times_out_and_the_builtin_encoder_stands_in() {
    let Some(models) = installed_model() else { return };
    // The gate stays shut for the whole test: the server holds every request unanswered.
    let (_gate, open) = watch::channel(false);
    let (addr, seen) = start_server(open).await;
    let daemon = Daemon::start(&[
        &format!("--search-model={}", models.display()),
        &format!("--embedder=http://{addr}/v1"),
        &format!("--embedder-model={MODEL}"),
        "--embedder-timeout=200ms",
    ]);
    let mut c = daemon.clients().await;
    register(
        &mut c,
        "code-reviewer",
        "Reviews pull requests for bugs and style problems",
    )
    .await;
    wait_at_least(
        &daemon,
        r#"agentkeeper_embedder_requests_total{outcome="timeout"}"#,
        1.0,
    )
    .await;
    wait_at_least(&daemon, r#"agentkeeper_embed_fallback_total{kind="card"}"#, 1.0).await;
    wait_at_least(
        &daemon,
        r#"agentkeeper_embed_total{kind="card",outcome="encoded"}"#,
        1.0,
    )
    .await;
    assert!(
        !seen.lock().expect("not poisoned").batches.is_empty(),
        "the server was asked"
    );
    assert_eq!(
        find(&mut c, "look over my patch before it is merged")
            .await
            .first()
            .map(String::as_str),
        Some("code-reviewer"),
        "the built-in vector ranks the built-in query"
    );
}

#[tokio::test]
async fn cards_from_a_data_dir_written_without_a_model_get_vectors_from_the_background_pass() {
    let data = tempfile::tempdir().expect("a data dir");
    let data_dir = format!("--data-dir={}", data.path().display());
    {
        let mut lexical = Daemon::start(&[&data_dir]);
        let mut c = lexical.clients().await;
        register(&mut c, "alpha-agent", "Handles the first job").await;
        register(&mut c, "beta-agent", "Handles the second job").await;
        let found = find(&mut c, "numero dos").await;
        assert_eq!(
            found.first().map(String::as_str),
            Some("alpha-agent"),
            "lexical: a tie, in order"
        );
        assert!(lexical.terminate().success());
    }
    let (_gate, open) = watch::channel(true);
    let (addr, seen) = start_server(open).await;
    let daemon = Daemon::start(&[
        &data_dir,
        &format!("--embedder=http://{addr}"),
        &format!("--embedder-model={MODEL}"),
    ]);
    let mut c = daemon.clients().await;
    // No card was registered with this daemon: only the background pass can give them vectors.
    wait_ranked_by_the_server(&mut c).await;
    assert!(daemon.metric("agentkeeper_embed_backfill_total") >= Some(2.0));
    let texts: Vec<String> = seen.lock().expect("not poisoned").batches.concat();
    assert!(
        texts.iter().any(|t| t.starts_with("alpha-agent.")) && texts.iter().any(|t| t.starts_with("beta-agent.")),
        "both cards' texts were sent: {texts:?}"
    );
}
