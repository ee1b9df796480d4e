//! End to end: the dashboard's HTTP side without a browser: the page is self-contained, the
//! overview is the core's state as JSON, and the event stream is live, resumable and unwatched
//! when the page goes away. (tests/dashboard/ drives the page itself in headless Chromium.)

#![allow(clippy::disallowed_methods)] // the stream tests wait on real time

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Daemon, http_get_full};
use serde_json::Value;

#[tokio::test]
async fn the_page_is_one_self_contained_html_document() {
    let daemon = Daemon::start(&[]);
    let (status, headers, page) = http_get_full(daemon.metrics_port, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("content-type: text/html")),
        "{headers:?}"
    );
    assert!(page.contains("<title>AgentKeeper</title>"));
    assert!(page.contains("/api/events?from="), "live by server-sent events");
    for external in ["http://", "https://", "<script src", "<link rel=\"stylesheet\""] {
        assert!(
            !page.contains(external),
            "the page loads nothing from outside: found {external:?}"
        );
    }
}

fn overview(daemon: &Daemon) -> Value {
    let (status, body) = daemon.http_get("/api/overview");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn the_overview_lists_agents_leases_elections_and_policies_with_counts_and_its_sequence() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("alpha", &["sql"], 30).await;
    let b = c.register("beta", &[], 30).await;
    let (lease, _) = c.acquire("jobs/1", &a, 30).await;
    c.campaign("writers", &a).await;
    c.campaign("writers", &b).await;
    let view = overview(&daemon);
    assert_eq!(view["counts"]["agents_alive"], 2);
    assert_eq!(view["counts"]["leases"], 1);
    assert_eq!(view["counts"]["groups"], 1);
    // Two registrations, one acquisition, one leader change.
    assert_eq!(view["sequence_next"], 5);
    let agents = view["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 2);
    assert_eq!(agents[0]["id"], a.as_str());
    assert_eq!(agents[0]["name"], "alpha");
    assert_eq!(agents[0]["status"], "ALIVE");
    assert_eq!(agents[0]["tools"], serde_json::json!(["sql"]));
    assert_eq!(agents[0]["ttl_ms"], 30_000);
    assert_eq!(view["leases"][0]["key"], "jobs/1");
    assert_eq!(view["leases"][0]["holder"], a.as_str());
    assert_eq!(view["leases"][0]["token"], common::token_of(&lease));
    assert_eq!(view["elections"][0]["group"], "writers");
    assert_eq!(view["elections"][0]["leader"], a.as_str());
    assert_eq!(view["elections"][0]["candidates"], serde_json::json!([a, b]));
    assert_eq!(view["elections"][0]["candidates_total"], 2);
    assert_eq!(view["policies"], serde_json::json!([]));
    for list in ["agents", "leases", "elections", "policies"] {
        assert_eq!(
            view[format!("{list}_next")],
            Value::Null,
            "{list} is whole: no next page"
        );
    }
}

fn get_json(daemon: &Daemon, path: &str) -> Value {
    let (status, body) = daemon.http_get(path);
    assert_eq!(status, "HTTP/1.1 200 OK", "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

#[tokio::test]
async fn the_overview_holds_one_page_of_each_list_and_the_rest_comes_a_page_at_a_time() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut ids = Vec::new();
    for i in 0..150 {
        ids.push(c.register(&format!("agent-{i:03}"), &[], 30).await);
    }
    for i in 0..120 {
        c.acquire(&format!("job/{i:03}"), &ids[i % 150], 30).await;
    }
    let view = overview(&daemon);
    assert_eq!(view["agents_total"], 150);
    let first = view["agents"].as_array().unwrap();
    assert_eq!(first.len(), 100, "the overview carries a page of agents, not the fleet");
    assert_eq!(first[0]["id"], ids[0].as_str());
    assert_eq!(view["leases"].as_array().unwrap().len(), 100);
    assert_eq!(view["leases_total"], 120);
    let cursor = view["agents_next"].as_str().expect("more agents follow");
    let rest = get_json(&daemon, &format!("/api/agents?after={cursor}"));
    let rest = rest["agents"].as_array().unwrap();
    let rest_ids: Vec<&str> = rest.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(rest_ids, ids[100..].iter().map(String::as_str).collect::<Vec<_>>());
    let after = view["leases_next"].as_str().expect("more leases follow");
    assert_eq!(after, "job/099");
    let leases = get_json(&daemon, &format!("/api/leases?after={after}"));
    assert_eq!(leases["leases"].as_array().unwrap().len(), 20);
    assert_eq!(leases["leases"][0]["key"], "job/100");
    assert_eq!(leases["next"], Value::Null);
    // A status filter and a search: pages of the same bounded kind.
    let dead = get_json(&daemon, "/api/agents?status=DEAD");
    assert_eq!(dead["agents"], serde_json::json!([]));
    assert!(dead["sequence_next"].as_u64().unwrap() >= 271);
    let found = get_json(&daemon, "/api/agents?q=agent-123");
    assert_eq!(
        found["agents"][0]["id"],
        ids[123].as_str(),
        "the exact name ranks first"
    );
    let (status, _) = daemon.http_get("/api/agents?status=SLEEPING");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
}

/// A raw server-sent-events reader on the HTTP port.
struct Feed {
    stream: TcpStream,
    seen: String,
}

impl Feed {
    fn open(daemon: &Daemon, from: u64) -> Feed {
        let mut stream = TcpStream::connect(("127.0.0.1", daemon.metrics_port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        write!(
            stream,
            "GET /api/events?from={from} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        Feed {
            stream,
            seen: String::new(),
        }
    }

    /// Reads until `text` has arrived; everything so far stays in `seen`.
    fn wait_for(&mut self, text: &str) {
        self.wait_until(&format!("{text:?}"), |seen| seen.contains(text));
    }

    /// Reads until what arrived so far satisfies `done`.
    fn wait_until(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + common::HANG_GUARD;
        let mut buffer = [0u8; 16 * 1024];
        while !done(&self.seen) {
            assert!(Instant::now() < deadline, "{what} did not arrive; got:\n{}", self.seen);
            match self.stream.read(&mut buffer) {
                Ok(0) => panic!("the stream closed before {what}; got:\n{}", self.seen),
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buffer[..n])),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("reading the stream: {e}"),
            }
        }
    }
}

#[tokio::test]
async fn the_event_stream_replays_from_a_sequence_goes_live_and_sends_counts() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("alpha", &[], 30).await;
    c.acquire("jobs/1", &a, 30).await;
    let mut feed = Feed::open(&daemon, 2);
    feed.wait_for("content-type: text/event-stream");
    // From 2: the acquisition is replayed, the registration (1) is not.
    feed.wait_for("\"sequence\":2,\"topic\":\"lease.acquired\"");
    assert!(!feed.seen.contains("\"sequence\":1,"), "{}", feed.seen);
    let b = c.register("beta", &[], 30).await;
    feed.wait_for(&format!("\"id\":\"{b}\""));
    feed.wait_for("\"sequence\":3,\"topic\":\"agent.registered\"");
    feed.wait_for("event: stats");
    feed.wait_for("\"agents_alive\":2");
}

#[tokio::test]
async fn a_page_that_goes_away_is_unwatched() {
    let daemon = Daemon::start(&[]);
    let mut feed = Feed::open(&daemon, 0);
    feed.wait_for("event: stats");
    feed.wait_for("\"watchers\":1");
    drop(feed);
    daemon.wait_metric("agentkeeper_watchers", 0.0).await;
}

/// A raw HTTP/1.1 GET with an optional bearer token; returns the status line.
fn get_status(daemon: &Daemon, path: &str, token: Option<&str>) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", daemon.metrics_port)).unwrap();
    stream.set_read_timeout(Some(common::HANG_GUARD)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && stream.read(&mut byte).unwrap() == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).trim_end().to_string()
}

#[tokio::test]
async fn with_auth_tokens_the_dashboards_data_needs_a_known_token_of_any_role() {
    const READER: &str = "reader-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, format!("reader {READER}\nadmin admin-token-0123456789\n")).unwrap();
    let daemon = Daemon::start(&[&format!("--auth-tokens={}", path.display())]);
    assert_eq!(
        get_status(&daemon, "/", None),
        "HTTP/1.1 200 OK",
        "the page holds no data"
    );
    for api in ["/api/overview", "/api/events?from=1"] {
        assert_eq!(get_status(&daemon, api, None), "HTTP/1.1 401 Unauthorized", "{api}");
        assert_eq!(
            get_status(&daemon, api, Some("not-a-token-0123456789")),
            "HTTP/1.1 401 Unauthorized",
            "{api}"
        );
        assert_eq!(get_status(&daemon, api, Some(READER)), "HTTP/1.1 200 OK", "{api}");
    }
    assert_eq!(get_status(&daemon, "/healthz", None), "HTTP/1.1 200 OK");
    assert!(!daemon.stderr().contains(READER), "a token never reaches the log");
}

#[tokio::test]
async fn a_single_node_has_no_cluster_to_show_neither_at_api_cluster_nor_in_the_stream() {
    let daemon = Daemon::start(&[]);
    let (status, body) = daemon.http_get("/api/cluster");
    assert_eq!(status, "HTTP/1.1 404 Not Found", "{body}");
    assert!(body.contains("single node"), "{body}");
    // A cluster node sends its status at once and with every round of counts: after two
    // rounds, a single node has sent none.
    let mut feed = Feed::open(&daemon, 0);
    feed.wait_until("two rounds of counts", |seen| seen.matches("event: stats").count() >= 2);
    assert!(!feed.seen.contains("event: cluster"), "{}", feed.seen);
    let (_, page) = daemon.http_get("/");
    assert!(
        page.contains(r#"<section class="wide" id="cluster-panel" hidden>"#),
        "the panel starts hidden"
    );
}
