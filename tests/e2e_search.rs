//! End to end: Find with the sentence encoder. Register answers at once and the card's vector
//! follows from an embedding worker; replicas of one card text are encoded once, and a replica
//! registered once that text's vector is cached gets it inside its Register (vector-searchable
//! on the Register's answer, with no SetCardVector); a paraphrase that shares no word with the
//! card finds it once its vector is in; the model's presence is on
//! /metrics, on the dashboard and in the start-up log, and a daemon without one ranks lexically.
//! The model is the one `make models` installs (the test command runs it first).

mod common;

use agentkeeper::proto as pb;
use common::{Daemon, card, installed_model, wait_until};

/// How the dashboard says its search box ranks (the overview's `search`).
fn dashboard_search(daemon: &Daemon) -> String {
    let (status, body) = daemon.http_get("/api/overview");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let overview: serde_json::Value = serde_json::from_str(&body).expect("the overview is JSON");
    overview["search"]
        .as_str()
        .expect("the overview says how Find ranks")
        .to_string()
}

async fn find(c: &mut common::Clients, query: &str) -> Vec<String> {
    let request = pb::FindRequest {
        query: query.into(),
        tools: vec![],
        limit: 3,
    };
    let found = c.registry.find(request).await.expect("Find answers").into_inner();
    found
        .agents
        .iter()
        .map(|a| a.card.as_ref().expect("a card").name.clone())
        .collect()
}

#[tokio::test]
async fn a_paraphrase_finds_its_card_once_the_vector_arrives_and_replicas_are_encoded_once() {
    let Some(models) = installed_model() else { return };
    let daemon = Daemon::start(&[&format!("--search-model={}", models.display())]);
    assert_eq!(daemon.metric("agentkeeper_search_model_loaded"), Some(1.0));
    assert!(
        daemon.stderr().contains("search model loaded"),
        "the start-up log says which ranking Find uses"
    );
    assert_eq!(dashboard_search(&daemon), "hybrid");
    let mut c = daemon.clients().await;
    let cards = [
        card(
            "scheduler",
            "Books meetings and manages calendars",
            &["google_calendar"],
        ),
        card(
            "translator",
            "Translates documents between English, German and French",
            &["deepl"],
        ),
        card(
            "deployer",
            "Deploys services to Kubernetes and rolls back failed releases",
            &["kubectl"],
        ),
        card(
            "code-reviewer",
            "Reviews pull requests for bugs and style problems",
            &["github_api"],
        ),
    ];
    for card in cards {
        let request = pb::RegisterRequest {
            card: Some(card),
            ttl_seconds: 600,
        };
        c.registry.register(request).await.expect("registered");
    }
    let replicas = 30;
    for _ in 0..replicas {
        let request = pb::RegisterRequest {
            card: Some(card("support-bot", "Answers customer tickets by email", &["zendesk"])),
            ttl_seconds: 600,
        };
        c.registry.register(request).await.expect("registered");
    }
    // No word of the query is on any card: lexically every agent ties, in registration order.
    let query = "look over my patch before it is merged";
    let found = wait_until("the code reviewer ranks first by meaning", async || {
        let found = find(&mut c, query).await;
        match found.first().map(String::as_str) {
            Some("code-reviewer") => Ok(found),
            _ => Err(format!("found {found:?}")),
        }
    })
    .await;
    assert_eq!(found.len(), 3);
    // Every replica but the first had its text's vector found: inside its Register if it was
    // cached by then, else sent after it (or waiting for the encoding under way).
    wait_until("every replica but the first reuses the first's vector", async || {
        let reused = daemon.metric(INLINE).unwrap_or(0.0) + daemon.metric(CACHED).unwrap_or(0.0);
        // (The background pass may count a card again that it met while its text was encoded.)
        match reused >= f64::from(replicas - 1) {
            true => Ok(()),
            false => Err(format!("{reused} reused")),
        }
    })
    .await;
    daemon.wait_metric(ENCODED, 5.0).await;
    assert_eq!(
        daemon
            .metric(r#"agentkeeper_embed_total{kind="query",outcome="encoded"}"#)
            .map(|n| n >= 1.0),
        Some(true)
    );
    let vectors_applied = |daemon: &Daemon| daemon.metric(r#"agentkeeper_rpc_total{method="SetCardVector"}"#);
    // Every replica got the shared vector: a support question finds a replica first.
    let found = find(&mut c, "a customer wrote in with a question").await;
    assert_eq!(found.first().map(String::as_str), Some("support-bot"), "{found:?}");
    assert_eq!(
        vectors_applied(&daemon),
        None,
        "SetCardVector is internal, never a client's call"
    );
}

const ENCODED: &str = r#"agentkeeper_embed_total{kind="card",outcome="encoded"}"#;
const INLINE: &str = r#"agentkeeper_embed_total{kind="card",outcome="inline"}"#;
const CACHED: &str = r#"agentkeeper_embed_total{kind="card",outcome="cached"}"#;

#[tokio::test]
async fn a_card_whose_text_was_encoded_before_gets_its_vector_inside_its_register() {
    let Some(models) = installed_model() else { return };
    let daemon = Daemon::start(&[&format!("--search-model={}", models.display())]);
    let mut c = daemon.clients().await;
    let reviewer = || pb::RegisterRequest {
        card: Some(card(
            "code-reviewer",
            "Reviews pull requests for bugs and style problems",
            &["github_api"],
        )),
        ttl_seconds: 600,
    };
    let scheduler = pb::RegisterRequest {
        card: Some(card(
            "scheduler",
            "Books meetings and manages calendars",
            &["google_calendar"],
        )),
        ttl_seconds: 600,
    };
    c.registry.register(scheduler).await.expect("registered");
    let first = c.registry.register(reviewer()).await.expect("registered").into_inner();
    // Both texts are new: encoded, and each vector sent after its Register.
    daemon.wait_metric("agentkeeper_card_vectors", 2.0).await;
    assert_eq!(daemon.metric(ENCODED), Some(2.0));
    assert_eq!(daemon.metric(INLINE), None);
    // (The background pass may have met a card while its text was being encoded: counted then.)
    let cached = daemon.metric(CACHED);

    c.registry.register(reviewer()).await.expect("registered");
    assert_eq!(
        daemon.metric(INLINE),
        Some(1.0),
        "the cached vector went inside the second Register"
    );
    assert_eq!(daemon.metric(CACHED), cached, "no SetCardVector was sent for it");
    assert_eq!(daemon.metric(ENCODED), Some(2.0), "its text was not encoded again");
    daemon.wait_metric("agentkeeper_card_vectors", 3.0).await;
    // With the first reviewer gone, only the second's own vector can rank it above the
    // scheduler for a query that shares no word with either card.
    let deregister = pb::DeregisterRequest {
        agent_id: first.agent_id,
    };
    c.registry.deregister(deregister).await.expect("deregistered");
    wait_until("the second reviewer ranks first by meaning", async || {
        let found = find(&mut c, "look over my patch before it is merged").await;
        match found.first().map(String::as_str) {
            Some("code-reviewer") => Ok(()),
            _ => Err(format!("found {found:?}")),
        }
    })
    .await;
    daemon.wait_metric("agentkeeper_card_vectors", 2.0).await;
    assert_eq!(daemon.metric(CACHED), cached, "still no SetCardVector");
}

#[tokio::test]
async fn without_a_model_find_ranks_lexically_and_says_so() {
    let daemon = Daemon::start(&["--search-model=off"]);
    assert_eq!(daemon.metric("agentkeeper_search_model_loaded"), Some(0.0));
    assert!(daemon.stderr().contains("Find ranks lexically"), "{}", daemon.stderr());
    assert_eq!(dashboard_search(&daemon), "lexical");
    let mut c = daemon.clients().await;
    for (name, description) in [("alpha", "books meetings"), ("beta", "reviews pull requests")] {
        let request = pb::RegisterRequest {
            card: Some(card(name, description, &[])),
            ttl_seconds: 600,
        };
        c.registry.register(request).await.expect("registered");
    }
    assert_eq!(find(&mut c, "review my pull request").await, ["beta", "alpha"]);
    assert_eq!(
        find(&mut c, "look over my patch").await,
        ["alpha", "beta"],
        "no shared word: registration order"
    );
}

#[tokio::test]
async fn a_search_model_flag_naming_no_model_is_refused_at_start() {
    let empty = tempfile::tempdir().expect("a temp dir");
    let mut daemon = Daemon::spawn(&[
        "--addr=127.0.0.1:0".to_string(),
        format!("--search-model={}", empty.path().display()),
    ]);
    let status = daemon.wait_exit();
    assert!(!status.success());
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("no model there") && stderr.contains("make models"),
        "{stderr}"
    );
}
