//! End to end: registration, heartbeats, liveness by ttl, deregistration, dead retention, GetAgent
//! and Find.

mod common;

use std::time::Duration;

use agentkeeper::proto as pb;
use common::{Daemon, UNKNOWN_ID, assert_quiet, card, decode, events, is_agent_id, ms, topics, type_url};
use tonic::Code;

#[tokio::test]
async fn register_returns_a_32_lowercase_hex_id_and_the_card_round_trips() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut full = card("analyst", "reads data", &["sql_runner", "pdf_reader"]);
    full.version = "2.1.0".into();
    full.metadata = [
        ("team".to_string(), "data".to_string()),
        ("region".to_string(), "eu-west".to_string()),
    ]
    .into();
    full.capabilities = vec![
        pb::Capability {
            name: "summarise".into(),
            description: "short reports".into(),
        },
        pb::Capability {
            name: "chart".into(),
            description: String::new(),
        },
    ];
    let request = pb::RegisterRequest {
        card: Some(full.clone()),
        ttl_seconds: 30,
    };
    let id = c
        .registry
        .register(request.clone())
        .await
        .unwrap()
        .into_inner()
        .agent_id;
    assert!(is_agent_id(&id), "{id:?} is not 32 lowercase hex characters");
    let info = c.agent(&id).await.unwrap();
    assert_eq!(info.agent_id, id);
    assert_eq!(info.card, Some(full), "card, metadata and capabilities round-trip");
    assert_eq!(info.status, pb::AgentStatus::Alive as i32);
    assert!(info.registered_at.is_some());
    assert_eq!(info.last_heartbeat_at, info.registered_at);

    // Names are labels, not keys: the same card again is a second agent with its own id.
    let twin = c.registry.register(request).await.unwrap().into_inner().agent_id;
    assert!(is_agent_id(&twin));
    assert_ne!(twin, id);
    assert_eq!(c.find("", &[], 0).await, ["analyst", "analyst"]);
}

#[tokio::test]
async fn registration_emits_agent_registered_with_the_agent_info() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&["agent."], 0).await;
    let id = c.register("solo", &["t"], 30).await;
    let event = events(&mut stream, 1).await.remove(0);
    assert_eq!(event.topic, "agent.registered");
    assert_eq!(type_url(&event), "type.googleapis.com/agentkeeper.v1.AgentInfo");
    let info: pb::AgentInfo = decode(&event);
    assert_eq!(info.agent_id, id);
    assert_eq!(info.card.unwrap().name, "solo");
    assert!(event.occurred_at.is_some());
}

#[tokio::test]
async fn heartbeats_keep_an_agent_alive_past_twice_its_ttl() {
    let daemon = Daemon::start(&["--clock=manual"]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&["agent."], 0).await;
    let id = c.register("steady", &[], 1).await;
    assert_eq!(topics(&mut stream, 1).await, ["agent.registered"]);
    let registered_at = ms(&c.agent(&id).await.unwrap().registered_at);
    for _ in 0..6 {
        c.advance(Duration::from_millis(900)).await;
        c.heartbeat(&id).await.unwrap();
    }
    let info = c.agent(&id).await.unwrap();
    assert_eq!(info.status, pb::AgentStatus::Alive as i32);
    assert_eq!(
        ms(&info.last_heartbeat_at),
        registered_at + 5400,
        "the heartbeat refreshed last_heartbeat_at"
    );
    // Nothing came between: the next event is this registration's.
    c.register("marker", &[], 1).await;
    assert_eq!(topics(&mut stream, 1).await, ["agent.registered"]);
}

#[tokio::test]
async fn a_missed_heartbeat_makes_an_agent_unreachable_and_a_heartbeat_recovers_it() {
    let daemon = Daemon::start(&["--clock=manual"]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&["agent."], 0).await;
    let id = c.register("flaky", &[], 1).await;
    assert_eq!(topics(&mut stream, 1).await, ["agent.registered"]);
    c.advance(Duration::from_millis(999)).await;
    assert_eq!(c.status(&id).await, pb::AgentStatus::Alive, "within its ttl");
    c.advance(Duration::from_millis(1)).await;
    let unreachable = events(&mut stream, 1).await.remove(0);
    assert_eq!(unreachable.topic, "agent.unreachable", "no heartbeat for 1 s");
    let info: pb::AgentInfo = decode(&unreachable);
    assert_eq!(
        (info.agent_id.as_str(), info.status),
        (id.as_str(), pb::AgentStatus::Unreachable as i32)
    );
    let silent_ms = ms(&unreachable.occurred_at) - ms(&info.last_heartbeat_at);
    assert_eq!(silent_ms, 1000, "UNREACHABLE one ttl after the last heartbeat");
    assert_eq!(c.status(&id).await, pb::AgentStatus::Unreachable);
    assert!(c.find("", &[], 0).await.is_empty(), "Find returns ALIVE agents only");

    c.advance(Duration::from_millis(500)).await;
    c.heartbeat(&id).await.unwrap();
    let recovered = events(&mut stream, 1).await.remove(0);
    assert_eq!(recovered.topic, "agent.recovered");
    assert_eq!(
        decode::<pb::AgentInfo>(&recovered).status,
        pb::AgentStatus::Alive as i32
    );
    assert_eq!(c.status(&id).await, pb::AgentStatus::Alive);
    assert_eq!(c.find("", &[], 0).await, ["flaky"]);
    // The liveness clock restarts at the recovering heartbeat: 1 s after it, not after the
    // first silence (which would make it DEAD at 2 s since the registration).
    c.advance(Duration::from_millis(1000)).await;
    let again = events(&mut stream, 1).await.remove(0);
    assert_eq!(again.topic, "agent.unreachable");
    let info: pb::AgentInfo = decode(&again);
    assert_eq!(
        ms(&info.last_heartbeat_at),
        ms(&unreachable.occurred_at) + 500,
        "the heartbeat was recorded"
    );
    let silent_ms = ms(&again.occurred_at) - ms(&info.last_heartbeat_at);
    assert_eq!(silent_ms, 1000, "UNREACHABLE one ttl after the heartbeat");
    c.deregister(&id).await.unwrap();
}

#[tokio::test]
async fn without_heartbeats_an_agent_dies_after_twice_its_ttl_and_must_register_again() {
    let daemon = Daemon::start(&["--clock=manual"]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&["agent."], 0).await;
    let id = c.register("silent", &[], 1).await;
    assert_eq!(topics(&mut stream, 1).await, ["agent.registered"]);
    c.advance(Duration::from_millis(1000)).await;
    assert_eq!(topics(&mut stream, 1).await, ["agent.unreachable"]);
    c.advance(Duration::from_millis(999)).await;
    assert_eq!(c.status(&id).await, pb::AgentStatus::Unreachable, "not yet 2 x ttl");
    c.advance(Duration::from_millis(1)).await;
    let seen = events(&mut stream, 1).await;
    assert_eq!(seen[0].topic, "agent.died");
    let died: pb::AgentInfo = decode(&seen[0]);
    assert_eq!(
        (died.agent_id.as_str(), died.status),
        (id.as_str(), pb::AgentStatus::Dead as i32)
    );
    let silent_ms = ms(&seen[0].occurred_at) - ms(&died.last_heartbeat_at);
    assert_eq!(silent_ms, 2000, "DEAD 2 x ttl after the last heartbeat");

    // DEAD agents stay visible to GetAgent (default retention 1 h).
    let info = c.agent(&id).await.expect("a DEAD agent is still known");
    assert_eq!(info.status, pb::AgentStatus::Dead as i32);
    assert_eq!(info.card.unwrap().name, "silent");

    let error = c.heartbeat(&id).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    assert!(error.message().contains("register again"), "{}", error.message());
    assert_eq!(
        c.status(&id).await,
        pb::AgentStatus::Dead,
        "a heartbeat does not revive"
    );
    // Nothing came after the death (no second one, no recovery): the next event is this one.
    c.register("marker", &[], 30).await;
    assert_eq!(topics(&mut stream, 1).await, ["agent.registered"]);
}

/// The tests above pin the exact moments on a manual clock. Here the real clock alone moves a
/// silent agent, with no call to the daemon in between; a slow machine may see the events
/// late, so only "never early" is checked.
#[tokio::test]
async fn on_the_real_clock_a_silent_agent_goes_unreachable_then_dead_by_itself() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&["agent."], 0).await;
    let id = c.register("silent", &[], 1).await;
    let seen = events(&mut stream, 3).await;
    let names: Vec<&str> = seen.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(names, ["agent.registered", "agent.unreachable", "agent.died"]);
    let died: pb::AgentInfo = decode(&seen[2]);
    assert_eq!(died.agent_id, id);
    let unreachable_ms = ms(&seen[1].occurred_at) - ms(&died.last_heartbeat_at);
    let died_ms = ms(&seen[2].occurred_at) - ms(&died.last_heartbeat_at);
    assert!(unreachable_ms >= 1000, "UNREACHABLE after {unreachable_ms} ms, ttl 1 s");
    assert!(died_ms >= 2000, "DEAD after {died_ms} ms, 2 x ttl 2 s");
    assert_eq!(c.status(&id).await, pb::AgentStatus::Dead);
}

#[tokio::test]
async fn deregister_kills_at_once_and_a_second_deregister_is_ok_without_a_second_death() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut died = c.watch(&["agent.died"], 0).await;
    let id = c.register("leaving", &[], 30).await;
    let other = c.register("staying", &[], 30).await;
    c.deregister(&id).await.unwrap();
    assert_eq!(
        c.status(&id).await,
        pb::AgentStatus::Dead,
        "DEAD at once, and still visible"
    );
    c.deregister(&id).await.expect("a second deregister is OK");
    let event = events(&mut died, 1).await.remove(0);
    assert_eq!(event.topic, "agent.died");
    assert_eq!(decode::<pb::AgentInfo>(&event).agent_id, id);
    assert_quiet(&mut died, Duration::from_millis(300)).await;
    assert_eq!(c.find("", &[], 0).await, ["staying"]);
    assert_eq!(c.status(&other).await, pb::AgentStatus::Alive);
    let error = c.heartbeat(&id).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);

    let error = c.deregister(UNKNOWN_ID).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "deregister of an unknown agent");
}

#[tokio::test]
async fn dead_agents_are_forgotten_after_the_dead_retention() {
    let daemon = Daemon::start(&["--dead-retention", "1s", "--clock=manual"]);
    let mut c = daemon.clients().await;
    let id = c.register("brief", &[], 30).await;
    let alive = c.register("lasting", &[], 30).await;
    c.deregister(&id).await.unwrap();
    c.advance(Duration::from_millis(999)).await;
    assert_eq!(c.status(&id).await, pb::AgentStatus::Dead, "kept during the retention");
    c.advance(Duration::from_millis(1)).await;
    let error = c.agent(&id).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "forgotten 1 s after its death: {error:?}");
    assert_eq!(c.deregister(&id).await.unwrap_err().code(), Code::NotFound, "forgotten");
    assert_eq!(
        c.status(&alive).await,
        pb::AgentStatus::Alive,
        "retention concerns DEAD agents only"
    );
}

#[tokio::test]
async fn get_agent_of_an_unknown_or_malformed_id_is_not_found() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    c.register("present", &[], 30).await;
    for id in [UNKNOWN_ID, "not-an-id", "", "0123456789ABCDEF0123456789ABCDEF", "zz"] {
        let error = c.agent(id).await.unwrap_err();
        assert_eq!(error.code(), Code::NotFound, "{id:?}");
        assert!(error.message().contains("not found"), "{}", error.message());
    }
}

async fn register_three(c: &mut common::Clients) {
    for (name, description, tools) in [
        (
            "scraper",
            "Fetches and parses web pages",
            &["browser", "http_client"][..],
        ),
        ("analyst", "Runs SQL queries over tables", &["sql_runner"][..]),
        ("reader", "Extracts text from PDF files", &["pdf_reader", "browser"][..]),
    ] {
        let request = pb::RegisterRequest {
            card: Some(card(name, description, tools)),
            ttl_seconds: 30,
        };
        c.registry.register(request).await.unwrap();
    }
}

#[tokio::test]
async fn find_returns_only_alive_agents_in_registration_order() {
    let daemon = Daemon::start(&["--clock=manual"]);
    let mut c = daemon.clients().await;
    let mut unreachable = c.watch(&["agent.unreachable"], 0).await;
    let sleepy = c.register("sleepy", &["browser"], 1).await;
    register_three(&mut c).await;
    let dead = c.register("gone", &["browser"], 30).await;
    c.deregister(&dead).await.unwrap();
    assert_eq!(
        c.find("", &[], 0).await,
        ["sleepy", "scraper", "analyst", "reader"],
        "registration order, oldest first"
    );
    c.advance(Duration::from_secs(1)).await; // sleepy's ttl; the others have 30 s
    assert_eq!(topics(&mut unreachable, 1).await, ["agent.unreachable"]);
    assert_eq!(c.status(&sleepy).await, pb::AgentStatus::Unreachable);
    assert_eq!(
        c.find("", &[], 0).await,
        ["scraper", "analyst", "reader"],
        "neither UNREACHABLE nor DEAD agents are found"
    );
    assert_eq!(c.find("", &["browser"], 0).await, ["scraper", "reader"]);
    c.heartbeat(&sleepy).await.unwrap();
    assert_eq!(
        c.find("", &[], 0).await,
        ["sleepy", "scraper", "analyst", "reader"],
        "a recovered agent keeps its place"
    );
}

#[tokio::test]
async fn find_tools_are_a_hard_filter_requiring_every_tool_exactly() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    register_three(&mut c).await;
    assert_eq!(c.find("", &["browser"], 0).await, ["scraper", "reader"]);
    assert_eq!(c.find("", &["browser", "http_client"], 0).await, ["scraper"]);
    assert_eq!(c.find("", &["pdf_reader", "browser"], 0).await, ["reader"]);
    assert_eq!(
        c.find("", &["browser", "browser"], 0).await,
        ["scraper", "reader"],
        "a repeated tool"
    );
    assert!(c.find("", &["browser", "sql_runner"], 0).await.is_empty(), "all tools");
    assert!(c.find("", &["Browser"], 0).await.is_empty(), "case-sensitive");
    assert!(c.find("", &["brows"], 0).await.is_empty(), "exact, not a prefix");
    assert!(
        c.find("web pages", &["sql_runner", "pdf_reader"], 0).await.is_empty(),
        "a query never brings back an agent the tools filter out"
    );
    assert_eq!(
        c.find("parses web pages", &["browser"], 0).await,
        ["scraper", "reader"],
        "the query ranks among the filtered"
    );
    assert_eq!(
        c.find("pdf text", &["browser"], 0).await,
        ["reader", "scraper"],
        "the query ranks among the filtered"
    );
}

#[tokio::test]
async fn find_with_a_query_ranks_the_relevant_agent_first_but_returns_every_candidate() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    register_three(&mut c).await;
    assert_eq!(
        c.find("extract text from pdf", &[], 0).await,
        ["reader", "scraper", "analyst"],
        "ranked, ties by registration order"
    );
    assert_eq!(c.find("sql queries", &[], 0).await, ["analyst", "scraper", "reader"]);
    assert_eq!(c.find("sql queries", &[], 1).await, ["analyst"], "limit after ranking");
    assert_eq!(
        c.find("zebra xylophone", &[], 0).await,
        ["scraper", "analyst", "reader"],
        "a query that matches nothing still returns every candidate"
    );
}

#[tokio::test]
async fn find_limit_zero_means_ten_and_large_limits_clamp_to_a_thousand() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    for i in 0..1002 {
        c.register(&format!("a{i}"), &[], 60).await;
    }
    let first_ten: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
    assert_eq!(c.find("", &[], 0).await, first_ten, "limit 0 means 10");
    assert_eq!(c.find("", &[], 3).await, ["a0", "a1", "a2"]);
    assert_eq!(c.find("", &[], 1000).await.len(), 1000);
    let clamped = c.find("", &[], 100_000).await;
    assert_eq!(clamped.len(), 1000, "clamped to 1000");
    assert_eq!(clamped.last().unwrap(), "a999");
    assert_eq!(c.find("", &[], u32::MAX).await.len(), 1000);
}
