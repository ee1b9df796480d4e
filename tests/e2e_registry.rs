//! End to end: registration, heartbeats, liveness by ttl, deregistration, Find, and bad input.

mod common;

use std::time::Duration;

use agentkeeper::proto as pb;
use common::{Daemon, card, topics};
use tonic::Code;

#[tokio::test]
async fn register_returns_a_32_hex_id_and_the_card_round_trips() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut full = card("analyst", "reads data", &["sql_runner", "pdf_reader"]);
    full.version = "2.1.0".into();
    full.metadata = [("team".to_string(), "data".to_string())].into();
    full.capabilities = vec![pb::Capability {
        name: "summarise".into(),
        description: "short reports".into(),
    }];
    let id = c
        .registry
        .register(pb::RegisterRequest {
            card: Some(full.clone()),
            ttl_seconds: 30,
        })
        .await
        .unwrap();
    let id = id.into_inner().agent_id;
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let info = c.agent(&id).await.unwrap();
    assert_eq!(info.card, Some(full));
    assert_eq!(info.status, pb::AgentStatus::Alive as i32);
    assert!(info.registered_at.is_some() && info.last_heartbeat_at == info.registered_at);
}

#[tokio::test]
async fn missed_heartbeats_go_unreachable_recover_then_die_after_twice_the_ttl() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut events = c.watch(&["agent."], 0).await;
    let id = c.register("flaky", &[], 1).await;
    assert_eq!(topics(&mut events, 1).await, ["agent.registered"]);
    assert_eq!(
        topics(&mut events, 1).await,
        ["agent.unreachable"],
        "no heartbeat for 1 s"
    );
    assert_eq!(c.status(&id).await, pb::AgentStatus::Unreachable);
    c.heartbeat(&id).await.unwrap();
    assert_eq!(topics(&mut events, 1).await, ["agent.recovered"]);
    assert_eq!(c.status(&id).await, pb::AgentStatus::Alive);
    assert_eq!(topics(&mut events, 2).await, ["agent.unreachable", "agent.died"]);
    assert_eq!(c.status(&id).await, pb::AgentStatus::Dead);
    let error = c.heartbeat(&id).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    assert!(error.message().contains("register again"), "{}", error.message());
}

#[tokio::test]
async fn heartbeats_keep_an_agent_alive_past_its_ttl() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let id = c.register("steady", &[], 1).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.heartbeat(&id).await.unwrap();
    }
    assert_eq!(c.status(&id).await, pb::AgentStatus::Alive);
}

#[tokio::test]
async fn deregister_is_immediate_and_idempotent_and_dead_agents_are_forgotten_after_retention() {
    let daemon = Daemon::start(&["--dead-retention", "1s"]);
    let mut c = daemon.clients().await;
    let mut events = c.watch(&["agent.died"], 0).await;
    let id = c.register("leaving", &[], 30).await;
    let request = || pb::DeregisterRequest { agent_id: id.clone() };
    c.registry.deregister(request()).await.unwrap();
    c.registry
        .deregister(request())
        .await
        .expect("a second deregister is OK");
    assert_eq!(topics(&mut events, 1).await, ["agent.died"]);
    assert_eq!(c.status(&id).await, pb::AgentStatus::Dead, "DEAD agents stay visible");
    assert!(
        common::next_event(&mut events, Duration::from_millis(300))
            .await
            .is_none(),
        "one agent.died only"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(c.agent(&id).await.unwrap_err().code(), Code::NotFound);
    let unknown = pb::DeregisterRequest {
        agent_id: "0123456789abcdef0123456789abcdef".into(),
    };
    assert_eq!(c.registry.deregister(unknown).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn unknown_and_malformed_agent_ids_are_not_found() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    for id in ["0123456789abcdef0123456789abcdef", "not-an-id", ""] {
        let error = c.agent(id).await.unwrap_err();
        assert_eq!(error.code(), Code::NotFound, "{id:?}");
        assert!(error.message().contains("not found"), "{}", error.message());
    }
}

async fn find(c: &mut common::Clients, query: &str, tools: &[&str], limit: u32) -> Vec<String> {
    let request = pb::FindRequest {
        query: query.into(),
        tools: tools.iter().map(|t| t.to_string()).collect(),
        limit,
    };
    let agents = c.registry.find(request).await.unwrap().into_inner().agents;
    agents.into_iter().map(|a| a.card.unwrap().name).collect()
}

#[tokio::test]
async fn find_filters_by_tools_keeps_registration_order_and_ranks_by_query() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
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
    let dead = c.register("gone", &["browser"], 30).await;
    c.registry
        .deregister(pb::DeregisterRequest { agent_id: dead })
        .await
        .unwrap();
    assert_eq!(
        find(&mut c, "", &[], 0).await,
        ["scraper", "analyst", "reader"],
        "ALIVE only, registration order"
    );
    assert_eq!(find(&mut c, "", &["browser"], 0).await, ["scraper", "reader"]);
    assert_eq!(find(&mut c, "", &["browser", "http_client"], 0).await, ["scraper"]);
    assert!(
        find(&mut c, "", &["Browser"], 0).await.is_empty(),
        "tools are case-sensitive"
    );
    let ranked = find(&mut c, "extract text from pdf", &[], 0).await;
    assert_eq!(
        ranked,
        ["reader", "scraper", "analyst"],
        "the query ranks every candidate"
    );
    assert_eq!(find(&mut c, "", &[], 2).await.len(), 2);
}

#[tokio::test]
async fn find_limit_zero_means_ten_and_large_limits_clamp_to_a_thousand() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    for i in 0..1002 {
        c.register(&format!("a{i}"), &[], 60).await;
    }
    assert_eq!(find(&mut c, "", &[], 0).await.len(), 10);
    assert_eq!(find(&mut c, "", &[], 100_000).await.len(), 1000);
}

#[tokio::test]
async fn invalid_cards_are_rejected_naming_the_field_and_the_daemon_keeps_serving() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let long = |n: usize| "x".repeat(n);
    let base = card("ok", "", &[]);
    let cases: Vec<(pb::AgentCard, u32, &str)> = vec![
        (
            pb::AgentCard {
                name: String::new(),
                ..base.clone()
            },
            10,
            "card.name",
        ),
        (
            pb::AgentCard {
                name: long(257),
                ..base.clone()
            },
            10,
            "card.name",
        ),
        (
            pb::AgentCard {
                name: "tab\there".into(),
                ..base.clone()
            },
            10,
            "card.name",
        ),
        (
            pb::AgentCard {
                description: long(8193),
                ..base.clone()
            },
            10,
            "card.description",
        ),
        (
            pb::AgentCard {
                tools: vec!["t".into(); 257],
                ..base.clone()
            },
            10,
            "card.tools",
        ),
        (
            pb::AgentCard {
                tools: vec![long(129)],
                ..base.clone()
            },
            10,
            "card.tools[]",
        ),
        (
            pb::AgentCard {
                metadata: (0..65).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..base.clone()
            },
            10,
            "card.metadata",
        ),
        (base.clone(), 86_401, "ttl_seconds"),
    ];
    for (bad, ttl_seconds, field) in cases {
        let error = c
            .registry
            .register(pb::RegisterRequest {
                card: Some(bad),
                ttl_seconds,
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{field}");
        assert!(
            error.message().contains(field),
            "{:?} should name {field}",
            error.message()
        );
    }
    assert!(find(&mut c, "", &[], 0).await.is_empty(), "nothing was registered");
    c.register("still-serving", &[], 10).await;
}
