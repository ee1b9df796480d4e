//! Unit tests of the core against the behaviour contract, row by row. Time is a number passed
//! in, so liveness and expiry run in microseconds.

use super::events::{Delivery, EventPayload, SubscriberId, Topic};
use super::events::{ElectionView, LeaseView};
use super::types::{AgentCard, AgentStatus, Capability, Effect};
use super::*;

const T0: Millis = 1_700_000_000_000;
const SECOND: Millis = 1000;

struct Harness {
    core: Core,
    now: Millis,
    all: SubscriberId,
}

impl Harness {
    fn new() -> Self {
        Self::with_config(CoreConfig {
            seed: 42,
            ..CoreConfig::default()
        })
    }

    fn with_config(config: CoreConfig) -> Self {
        let mut core = Core::new(config, T0);
        let all = match core.apply(
            T0,
            Command::Watch {
                topics: vec![],
                from_sequence: 0,
            },
        ) {
            Ok(Reply::Watching { subscriber, .. }) => subscriber,
            other => panic!("watch failed: {other:?}"),
        };
        Harness { core, now: T0, all }
    }

    fn apply(&mut self, command: Command) -> Outcome {
        let outcome = self.core.apply(self.now, command);
        self.core.check_invariants();
        outcome
    }

    fn ok(&mut self, command: Command) -> Reply {
        let name = command.name();
        self.apply(command).unwrap_or_else(|e| panic!("{name} failed: {e}"))
    }

    fn err(&mut self, command: Command) -> CoreError {
        let name = command.name();
        match self.apply(command) {
            Err(error) => error,
            Ok(reply) => panic!("{name} should have failed, got {reply:?}"),
        }
    }

    fn advance(&mut self, ms: Millis) {
        self.now += ms;
        self.core.tick(self.now);
        self.core.check_invariants();
    }

    fn register(&mut self, name: &str, tools: &[&str], ttl_seconds: u32) -> String {
        let card = AgentCard {
            name: name.into(),
            description: format!("{name} agent"),
            tools: tools.iter().map(|t| t.to_string()).collect(),
            ..AgentCard::default()
        };
        match self.ok(Command::Register {
            card: Box::new(card),
            ttl_seconds,
            vector: None,
        }) {
            Reply::Registered { agent_id } => agent_id.to_string(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn agent(&mut self, id: &str) -> AgentView {
        match self.ok(Command::GetAgent { agent_id: id.into() }) {
            Reply::Agent(view) => view,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn acquire(&mut self, key: &str, agent: &str, ttl_seconds: u32) -> (LeaseView, bool) {
        let command = Command::AcquireLease {
            task_id: key.into(),
            agent_id: agent.into(),
            ttl_seconds,
        };
        match self.ok(command) {
            Reply::Lease { lease, acquired } => (lease, acquired),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn campaign(&mut self, group: &str, agent: &str) -> ElectionView {
        match self.ok(Command::Campaign {
            group: group.into(),
            agent_id: agent.into(),
        }) {
            Reply::Election(view) => view,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn find(&mut self, query: &str, tools: &[&str], limit: u32) -> Vec<String> {
        let tools = tools.iter().map(|t| t.to_string()).collect();
        match self.ok(Command::Find {
            query: query.into(),
            tools,
            limit,
            vector: None,
        }) {
            Reply::Agents(agents) => agents.iter().map(|a| a.card.name.clone()).collect(),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Topics delivered to the all-topics subscriber since the last call, checking that its
    /// sequence numbers are contiguous.
    fn topics(&mut self) -> Vec<&'static str> {
        self.deliveries_for(self.all).iter().map(|e| e.topic.as_str()).collect()
    }

    fn deliveries_for(&mut self, subscriber: SubscriberId) -> Vec<Arc<Event>> {
        let mut out: Vec<Delivery> = Vec::new();
        self.core.drain_deliveries(&mut out);
        let events: Vec<Arc<Event>> = out
            .into_iter()
            .filter(|d| d.subscriber == subscriber)
            .map(|d| d.event)
            .collect();
        for pair in events.windows(2) {
            assert_eq!(pair[0].sequence + 1, pair[1].sequence, "gap in the event sequence");
        }
        events
    }
}

fn policy(id: &str, subject: &str, action: &str, resource: &str, effect: Effect) -> Command {
    Command::SetPolicy {
        policy: Box::new(PolicyInput {
            id: id.into(),
            subject: subject.into(),
            action: action.into(),
            resource: resource.into(),
            effect: Some(effect),
        }),
    }
}

fn check(h: &mut Harness, subject: &str, action: &str, resource: &str) -> Decision {
    match h.ok(Command::CheckPolicy {
        subject: subject.into(),
        action: action.into(),
        resource: resource.into(),
    }) {
        Reply::Decision(decision) => decision,
        other => panic!("unexpected {other:?}"),
    }
}

// ── Register ─────────────────────────────────────────────────────────────────

#[test]
fn register_returns_32_hex_id_and_emits_agent_registered() {
    let mut h = Harness::new();
    let id = h.register("scraper", &["browser"], 10);
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(h.topics(), ["agent.registered"]);
    let view = h.agent(&id);
    assert_eq!(view.status, AgentStatus::Alive);
    assert_eq!(
        (view.registered_at, view.last_heartbeat_at, view.ttl_ms),
        (T0, T0, 10 * SECOND)
    );
}

#[test]
fn register_ttl_zero_means_thirty_seconds_and_bounds_are_enforced() {
    let mut h = Harness::new();
    let id = h.register("a", &[], 0);
    assert_eq!(h.agent(&id).ttl_ms, 30 * SECOND);
    let card = AgentCard {
        name: "b".into(),
        ..AgentCard::default()
    };
    let error = h.err(Command::Register {
        card: Box::new(card.clone()),
        ttl_seconds: 86_401,
        vector: None,
    });
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert!(
        error.message.contains("ttl_seconds must be 1..=86400"),
        "{}",
        error.message
    );
    let id = match h.ok(Command::Register {
        card: Box::new(card),
        ttl_seconds: 86_400,
        vector: None,
    }) {
        Reply::Registered { agent_id } => agent_id.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(h.agent(&id).ttl_ms, 86_400 * SECOND);
}

#[test]
fn register_rejects_each_invalid_card_field_naming_it_and_changes_nothing() {
    let mut h = Harness::new();
    let base = AgentCard {
        name: "ok".into(),
        ..AgentCard::default()
    };
    let long = |n: usize| "x".repeat(n);
    let cases: Vec<(AgentCard, &str)> = vec![
        (
            AgentCard {
                name: String::new(),
                ..base.clone()
            },
            "card.name",
        ),
        (
            AgentCard {
                name: long(257),
                ..base.clone()
            },
            "card.name",
        ),
        (
            AgentCard {
                name: "bad\nname".into(),
                ..base.clone()
            },
            "card.name",
        ),
        (
            AgentCard {
                description: long(8 * 1024 + 1),
                ..base.clone()
            },
            "card.description",
        ),
        (
            AgentCard {
                version: long(65),
                ..base.clone()
            },
            "card.version",
        ),
        (
            AgentCard {
                tools: vec!["t".into(); 257],
                ..base.clone()
            },
            "card.tools",
        ),
        (
            AgentCard {
                tools: vec![long(129)],
                ..base.clone()
            },
            "card.tools[]",
        ),
        (
            AgentCard {
                tools: vec![String::new()],
                ..base.clone()
            },
            "card.tools[]",
        ),
        (
            AgentCard {
                capabilities: vec![Capability::default(); 257],
                ..base.clone()
            },
            "card.capabilities",
        ),
        (
            AgentCard {
                metadata: (0..65).map(|i| (format!("k{i}"), String::new())).collect(),
                ..base.clone()
            },
            "card.metadata",
        ),
        (
            AgentCard {
                metadata: vec![(long(129), String::new())],
                ..base.clone()
            },
            "card.metadata key",
        ),
        (
            AgentCard {
                metadata: vec![("k".into(), long(1025))],
                ..base.clone()
            },
            "card.metadata value",
        ),
    ];
    h.topics();
    for (card, field) in cases {
        let error = h.err(Command::Register {
            card: Box::new(card),
            ttl_seconds: 10,
            vector: None,
        });
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{field}");
        assert!(
            error.message.starts_with(field),
            "message {:?} should name {field}",
            error.message
        );
    }
    assert_eq!(h.core.stats().agents_alive, 0);
    assert!(h.topics().is_empty(), "a rejected register emitted events");
}

#[test]
fn two_agents_may_share_a_name_and_get_distinct_ids() {
    let mut h = Harness::new();
    let a = h.register("twin", &[], 10);
    let b = h.register("twin", &[], 10);
    assert_ne!(a, b);
    assert_eq!(h.core.stats().agents_alive, 2);
}

#[test]
fn same_seed_gives_same_agent_ids() {
    let ids = |seed| {
        let mut h = Harness::with_config(CoreConfig {
            seed,
            ..CoreConfig::default()
        });
        (h.register("a", &[], 10), h.register("b", &[], 10))
    };
    assert_eq!(ids(7), ids(7));
    assert_ne!(ids(7), ids(8));
}

// ── Heartbeat, liveness, Deregister, GetAgent ───────────────────────────────

#[test]
fn heartbeat_refreshes_last_heartbeat_and_keeps_agent_alive() {
    let mut h = Harness::new();
    let id = h.register("a", &[], 10);
    for _ in 0..5 {
        h.advance(9 * SECOND);
        h.ok(Command::Heartbeat { agent_id: id.clone() });
    }
    let view = h.agent(&id);
    assert_eq!(view.status, AgentStatus::Alive);
    assert_eq!(view.last_heartbeat_at, T0 + 45 * SECOND);
}

#[test]
fn missed_ttl_makes_unreachable_then_heartbeat_recovers() {
    let mut h = Harness::new();
    let id = h.register("a", &[], 10);
    h.topics();
    h.advance(10 * SECOND - 1);
    assert_eq!(
        h.agent(&id).status,
        AgentStatus::Alive,
        "not unreachable 1 ms before ttl"
    );
    h.advance(1);
    assert_eq!(h.agent(&id).status, AgentStatus::Unreachable);
    assert_eq!(h.topics(), ["agent.unreachable"]);
    h.ok(Command::Heartbeat { agent_id: id.clone() });
    assert_eq!(h.agent(&id).status, AgentStatus::Alive);
    assert_eq!(h.topics(), ["agent.recovered"]);
    h.advance(10 * SECOND - 1);
    assert_eq!(
        h.agent(&id).status,
        AgentStatus::Alive,
        "the recovery heartbeat restarted the ttl"
    );
}

#[test]
fn no_heartbeat_for_twice_ttl_means_dead_and_heartbeat_then_not_found() {
    let mut h = Harness::new();
    let id = h.register("a", &[], 10);
    h.topics();
    h.advance(20 * SECOND - 1);
    assert_eq!(h.agent(&id).status, AgentStatus::Unreachable);
    h.advance(1);
    assert_eq!(h.agent(&id).status, AgentStatus::Dead);
    assert_eq!(h.topics(), ["agent.unreachable", "agent.died"]);
    let error = h.err(Command::Heartbeat { agent_id: id.clone() });
    assert_eq!(error.code, ErrorCode::NotFound);
    assert!(error.message.contains("register again"), "{}", error.message);
}

#[test]
fn a_single_big_jump_fires_unreachable_and_died_in_order() {
    let mut h = Harness::new();
    let id = h.register("a", &[], 1);
    h.topics();
    h.advance(3600 * SECOND);
    assert_eq!(h.topics(), ["agent.unreachable", "agent.died"]);
    assert_eq!(h.agent(&id).status, AgentStatus::Dead);
}

#[test]
fn heartbeat_of_unknown_or_malformed_id_is_not_found() {
    let mut h = Harness::new();
    for id in [
        "0123456789abcdef0123456789abcdef",
        "not-hex",
        "",
        "ABCDEF0123456789ABCDEF0123456789",
    ] {
        assert_eq!(
            h.err(Command::Heartbeat { agent_id: id.into() }).code,
            ErrorCode::NotFound,
            "{id:?}"
        );
    }
}

#[test]
fn deregister_kills_now_and_is_idempotent_without_a_second_event() {
    let mut h = Harness::new();
    let id = h.register("a", &[], 10);
    h.topics();
    h.ok(Command::Deregister { agent_id: id.clone() });
    assert_eq!(h.agent(&id).status, AgentStatus::Dead);
    assert_eq!(h.topics(), ["agent.died"]);
    h.ok(Command::Deregister { agent_id: id.clone() });
    assert!(h.topics().is_empty(), "a second deregister emitted events");
    let unknown = "0123456789abcdef0123456789abcdef".to_string();
    assert_eq!(
        h.err(Command::Deregister { agent_id: unknown }).code,
        ErrorCode::NotFound
    );
}

#[test]
fn dead_agent_is_visible_for_the_retention_then_forgotten() {
    let mut h = Harness::with_config(CoreConfig {
        dead_retention_ms: 60 * SECOND,
        ..CoreConfig::default()
    });
    let id = h.register("a", &[], 10);
    h.ok(Command::Deregister { agent_id: id.clone() });
    h.advance(60 * SECOND - 1);
    assert_eq!(h.agent(&id).status, AgentStatus::Dead);
    h.advance(1);
    assert_eq!(h.err(Command::GetAgent { agent_id: id }).code, ErrorCode::NotFound);
    assert_eq!(h.core.stats().agents_dead, 0);
}

// ── Find ─────────────────────────────────────────────────────────────────────

#[test]
fn find_returns_only_alive_agents_in_registration_order() {
    let mut h = Harness::new();
    let _a = h.register("a", &[], 10);
    let b = h.register("b", &[], 5);
    let c = h.register("c", &[], 10);
    h.advance(5 * SECOND);
    h.ok(Command::Deregister { agent_id: c });
    assert_eq!(h.agent(&b).status, AgentStatus::Unreachable);
    assert_eq!(h.find("", &[], 0), ["a"]);
}

#[test]
fn find_tools_are_a_hard_case_sensitive_filter_requiring_every_tool() {
    let mut h = Harness::new();
    h.register("both", &["browser", "http_client"], 10);
    h.register("browser-only", &["browser"], 10);
    h.register("upper", &["Browser", "http_client"], 10);
    assert_eq!(h.find("", &["browser", "http_client"], 0), ["both"]);
    assert_eq!(h.find("", &["browser"], 0), ["both", "browser-only"]);
    assert!(h.find("", &["nonexistent"], 0).is_empty());
    assert!(h.find("", &["browser", "nonexistent"], 0).is_empty());
}

#[test]
fn find_query_ranks_every_candidate_without_filtering() {
    let mut h = Harness::new();
    let card = |name: &str, description: &str| AgentCard {
        name: name.into(),
        description: description.into(),
        ..AgentCard::default()
    };
    for (name, description) in [
        ("analyst", "Reads SQL data and writes summaries"),
        ("scraper", "Fetches and parses web pages"),
        ("translator", "Translates documents between languages"),
    ] {
        h.ok(Command::Register {
            card: Box::new(card(name, description)),
            ttl_seconds: 10,
            vector: None,
        });
    }
    let ranked = h.find("fetch and parse web pages", &[], 0);
    assert_eq!(ranked.len(), 3, "a query ranks, it does not filter");
    assert_eq!(ranked[0], "scraper");
    assert_eq!(&ranked[1..], ["analyst", "translator"], "ties keep registration order");
}

#[test]
fn find_limit_zero_means_ten_and_large_limits_clamp_to_one_thousand() {
    let mut h = Harness::new();
    for i in 0..1005 {
        h.register(&format!("agent-{i}"), &[], 60);
    }
    assert_eq!(h.find("", &[], 0).len(), 10);
    assert_eq!(h.find("", &[], 3).len(), 3);
    assert_eq!(h.find("", &[], 5000).len(), 1000);
    assert_eq!(h.find("", &[], 2)[..], ["agent-0", "agent-1"]);
}

// ── Leases ───────────────────────────────────────────────────────────────────

#[test]
fn lease_acquire_grants_to_first_agent_and_shows_holder_to_second() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 60);
    let b = h.register("b", &[], 60);
    h.topics();
    let (lease, acquired) = h.acquire("task:1", &a, 30);
    assert!(acquired);
    assert_eq!(
        (lease.token, lease.acquired_at, lease.expires_at),
        (1, T0, T0 + 30 * SECOND)
    );
    assert_eq!(h.topics(), ["lease.acquired"]);
    let (seen, acquired) = h.acquire("task:1", &b, 30);
    assert!(!acquired);
    assert_eq!(seen, lease, "the loser sees the holder's lease");
    assert!(h.topics().is_empty());
}

#[test]
fn lease_acquire_by_holder_is_reentrant_same_token_new_expiry() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 60);
    let (first, _) = h.acquire("k", &a, 30);
    h.topics();
    h.advance(10 * SECOND);
    let (again, acquired) = h.acquire("k", &a, 30);
    assert!(acquired);
    assert_eq!(again.token, first.token);
    assert_eq!(again.expires_at, h.now + 30 * SECOND);
    assert_eq!(h.topics(), ["lease.renewed"]);
}

#[test]
fn lease_ttl_zero_means_sixty_and_agent_must_be_live() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 10);
    let (lease, _) = h.acquire("k", &a, 0);
    assert_eq!(lease.expires_at, T0 + 60 * SECOND);
    h.advance(10 * SECOND);
    let (_, acquired) = h.acquire("k2", &a, 0);
    assert!(acquired, "an UNREACHABLE agent may still acquire");
    h.ok(Command::Deregister { agent_id: a.clone() });
    let error = h.err(Command::AcquireLease {
        task_id: "k3".into(),
        agent_id: a,
        ttl_seconds: 0,
    });
    assert_eq!(error.code, ErrorCode::NotFound);
    let unknown = "0123456789abcdef0123456789abcdef".to_string();
    let error = h.err(Command::AcquireLease {
        task_id: "k".into(),
        agent_id: unknown,
        ttl_seconds: 0,
    });
    assert_eq!(error.code, ErrorCode::NotFound);
}

#[test]
fn lease_key_length_is_validated() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 10);
    for key in [String::new(), "k".repeat(1025)] {
        let error = h.err(Command::AcquireLease {
            task_id: key,
            agent_id: a.clone(),
            ttl_seconds: 0,
        });
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert!(error.message.starts_with("task_id"), "{}", error.message);
    }
    let (_, acquired) = h.acquire(&"k".repeat(1024), &a, 0);
    assert!(acquired);
}

#[test]
fn renew_needs_existing_lease_matching_agent_and_token() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 60);
    let b = h.register("b", &[], 60);
    let (lease, _) = h.acquire("k", &a, 30);
    let renew = |agent: &str, token, ttl| Command::RenewLease {
        task_id: "k".into(),
        agent_id: agent.to_string(),
        token,
        ttl_seconds: ttl,
    };
    let error = h.err(renew(&a, lease.token + 1, 0));
    assert_eq!(error.code, ErrorCode::PermissionDenied);
    assert!(error.message.starts_with("token mismatch"), "{}", error.message);
    assert_eq!(h.err(renew(&b, lease.token, 0)).code, ErrorCode::PermissionDenied);
    let missing = Command::RenewLease {
        task_id: "nope".into(),
        agent_id: a.clone(),
        token: 1,
        ttl_seconds: 0,
    };
    assert_eq!(h.err(missing).code, ErrorCode::NotFound);
    h.topics();
    h.advance(20 * SECOND);
    match h.ok(renew(&a, lease.token, 0)) {
        Reply::Lease { lease: renewed, .. } => {
            assert_eq!(
                renewed.expires_at,
                h.now + 30 * SECOND,
                "ttl 0 reuses the lease's own ttl"
            );
            assert_eq!(renewed.token, lease.token);
        }
        other => panic!("{other:?}"),
    }
    match h.ok(renew(&a, lease.token, 5)) {
        Reply::Lease { lease: renewed, .. } => assert_eq!(renewed.expires_at, h.now + 5 * SECOND),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.topics(), ["lease.renewed", "lease.renewed"]);
}

#[test]
fn release_checks_like_renew_then_frees_the_key_for_a_higher_token() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 60);
    let b = h.register("b", &[], 60);
    let (lease, _) = h.acquire("k", &a, 30);
    let release = |agent: &str, token| Command::ReleaseLease {
        task_id: "k".into(),
        agent_id: agent.into(),
        token,
    };
    assert_eq!(h.err(release(&b, lease.token)).code, ErrorCode::PermissionDenied);
    h.topics();
    h.ok(release(&a, lease.token));
    assert_eq!(h.topics(), ["lease.released"]);
    assert_eq!(h.err(release(&a, lease.token)).code, ErrorCode::NotFound);
    let (next, acquired) = h.acquire("k", &b, 30);
    assert!(acquired);
    assert!(next.token > lease.token, "fencing tokens strictly increase");
}

#[test]
fn lease_expires_exactly_at_expires_at_and_key_becomes_free() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 600);
    let b = h.register("b", &[], 600);
    let (lease, _) = h.acquire("k", &a, 10);
    h.topics();
    h.advance(10 * SECOND - 1);
    assert_eq!(h.core.stats().leases, 1);
    h.advance(1);
    assert_eq!(h.core.stats().leases, 0);
    assert_eq!(h.topics(), ["lease.expired"]);
    let (next, acquired) = h.acquire("k", &b, 10);
    assert!(acquired && next.token > lease.token);
}

#[test]
fn an_expired_lease_counts_as_free_even_before_a_tick() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 600);
    let b = h.register("b", &[], 600);
    h.acquire("k", &a, 10);
    h.topics();
    // No tick in between: the acquire itself arrives after the expiry.
    h.now += 10 * SECOND;
    let (lease, acquired) = h.acquire("k", &b, 10);
    assert!(acquired);
    assert_eq!(lease.holder.to_string(), b);
    assert_eq!(h.topics(), ["lease.expired", "lease.acquired"]);
}

#[test]
fn fencing_tokens_come_from_one_global_counter() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 600);
    let tokens: Vec<u64> = (0..5).map(|i| h.acquire(&format!("k{i}"), &a, 10).0.token).collect();
    assert_eq!(tokens, [1, 2, 3, 4, 5]);
    assert_eq!(h.core.stats().fencing_token_last, 5);
}

// ── Death clean-up ───────────────────────────────────────────────────────────

#[test]
fn death_cleanup_emits_died_then_leases_released_then_leader_changed() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 10);
    let b = h.register("b", &[], 600);
    h.acquire("k1", &a, 600);
    h.acquire("k2", &a, 600);
    h.campaign("g1", &a);
    h.campaign("g1", &b);
    h.campaign("g2", &b);
    h.campaign("g2", &a);
    h.topics();
    h.advance(20 * SECOND);
    assert_eq!(
        h.topics(),
        [
            "agent.unreachable",
            "agent.died",
            "lease.released",
            "lease.released",
            "leader.changed"
        ]
    );
    assert_eq!(h.core.stats().leases, 0);
    let g1 = h.campaign("g1", &b);
    assert_eq!((g1.leader.map(|l| l.to_string()), g1.term), (Some(b.clone()), 2));
    // The standby's removal from g2 changed nothing there.
    let g2 = h.campaign("g2", &b);
    assert_eq!(g2.term, 1);
}

// ── Elections ────────────────────────────────────────────────────────────────

#[test]
fn first_campaigner_leads_and_a_new_candidate_never_displaces_it() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 60);
    let b = h.register("b", &[], 60);
    h.topics();
    let state = h.campaign("g", &a);
    assert_eq!(
        (state.leader.map(|l| l.to_string()), state.term, state.elected_at),
        (Some(a.clone()), 1, T0)
    );
    assert_eq!(h.topics(), ["leader.changed"]);
    let state = h.campaign("g", &b);
    assert_eq!((state.leader.map(|l| l.to_string()), state.term), (Some(a.clone()), 1));
    let again = h.campaign("g", &a);
    assert_eq!(again.term, 1, "campaigning twice is a no-op");
    assert!(h.topics().is_empty());
}

#[test]
fn leader_resigns_next_in_fifo_leads_and_term_grows_even_when_nobody_is_left() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 60);
    let b = h.register("b", &[], 60);
    let c = h.register("c", &[], 60);
    for agent in [&a, &b, &c] {
        h.campaign("g", agent);
    }
    h.ok(Command::Resign {
        group: "g".into(),
        agent_id: b.clone(),
    });
    h.topics();
    h.ok(Command::Resign {
        group: "g".into(),
        agent_id: a.clone(),
    });
    let state = h.campaign("g", &c);
    assert_eq!(
        (state.leader.map(|l| l.to_string()), state.term),
        (Some(c.clone()), 2),
        "c skipped b, who left"
    );
    h.ok(Command::Resign {
        group: "g".into(),
        agent_id: c.clone(),
    });
    assert_eq!(h.topics(), ["leader.changed", "leader.changed"]);
    match h.ok(Command::WatchElection { group: "g".into() }) {
        Reply::WatchingElection { state, .. } => assert_eq!((state.leader, state.term), (None, 3)),
        other => panic!("{other:?}"),
    }
    let state = h.campaign("g", &a);
    assert_eq!(state.term, 4, "terms only grow");
}

#[test]
fn resign_by_a_non_candidate_is_a_no_op() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 60);
    h.topics();
    h.ok(Command::Resign {
        group: "never".into(),
        agent_id: a.clone(),
    });
    h.campaign("g", &a);
    let b = h.register("b", &[], 60);
    h.topics();
    h.ok(Command::Resign {
        group: "g".into(),
        agent_id: b,
    });
    assert!(h.topics().is_empty());
}

#[test]
fn watch_election_first_state_then_only_that_groups_changes() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 60);
    let subscriber = match h.ok(Command::WatchElection { group: "g".into() }) {
        Reply::WatchingElection { subscriber, state } => {
            assert_eq!((state.leader, state.term), (None, 0), "nobody leads a new group");
            subscriber
        }
        other => panic!("{other:?}"),
    };
    h.campaign("other", &a);
    h.campaign("g", &a);
    let events = h.deliveries_for(subscriber);
    assert_eq!(events.len(), 1);
    match &events[0].payload {
        EventPayload::Election(view) => assert_eq!(&*view.group, "g"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn campaign_validates_group_and_needs_a_live_agent() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 60);
    for group in [String::new(), "g".repeat(257)] {
        let error = h.err(Command::Campaign {
            group,
            agent_id: a.clone(),
        });
        assert_eq!(error.code, ErrorCode::InvalidArgument);
    }
    h.ok(Command::Deregister { agent_id: a.clone() });
    assert_eq!(
        h.err(Command::Campaign {
            group: "g".into(),
            agent_id: a
        })
        .code,
        ErrorCode::NotFound
    );
}

// ── Entitlements ─────────────────────────────────────────────────────────────

#[test]
fn check_policy_deny_beats_allow_and_default_is_deny() {
    let mut h = Harness::new();
    h.ok(policy("allow-all", "agent:*", "call", "tool:*", Effect::Allow));
    h.ok(policy(
        "deny-write",
        "agent:scraper",
        "call",
        "tool:write_file",
        Effect::Deny,
    ));
    let d = check(&mut h, "agent:scraper", "call", "tool:write_file");
    assert_eq!(
        (d.allowed, d.reason.as_str()),
        (false, "denied by policy \"deny-write\"")
    );
    let d = check(&mut h, "agent:scraper", "call", "tool:read_file");
    assert_eq!(
        (d.allowed, d.reason.as_str()),
        (true, "allowed by policy \"allow-all\"")
    );
    let d = check(&mut h, "user:bob", "call", "tool:x");
    assert_eq!(
        (d.allowed, d.reason.as_str()),
        (false, "no matching policy: default deny")
    );
}

#[test]
fn check_policy_names_the_smallest_matching_id() {
    let mut h = Harness::new();
    h.ok(policy("b", "*", "*", "*", Effect::Allow));
    h.ok(policy("a", "s", "*", "*", Effect::Allow));
    h.ok(policy("c", "s", "a", "r", Effect::Allow));
    assert_eq!(check(&mut h, "s", "a", "r").reason, "allowed by policy \"a\"");
}

#[test]
fn glob_star_matches_empty_runs_and_colons_case_sensitively() {
    let mut h = Harness::new();
    h.ok(policy("p", "agent:*", "*", "tool:*:admin", Effect::Allow));
    assert!(check(&mut h, "agent:", "", "tool::admin").allowed);
    assert!(check(&mut h, "agent:a:b:c", "x", "tool:db:prod:admin").allowed);
    assert!(!check(&mut h, "Agent:a", "x", "tool:db:admin").allowed);
    assert!(!check(&mut h, "agent:a", "x", "tool:db:admin2").allowed);
}

#[test]
fn set_policy_upserts_by_id_and_validates() {
    let mut h = Harness::new();
    h.ok(policy("p", "a", "b", "c", Effect::Allow));
    h.ok(policy("p", "x", "y", "z", Effect::Deny));
    assert_eq!(h.core.stats().policies, 1);
    assert!(
        !check(&mut h, "a", "b", "c").reason.contains("\"p\""),
        "the old pattern no longer matches"
    );
    assert_eq!(check(&mut h, "x", "y", "z").reason, "denied by policy \"p\"");
    let unspecified = Command::SetPolicy {
        policy: Box::new(PolicyInput {
            id: "q".into(),
            subject: "a".into(),
            action: "b".into(),
            resource: "c".into(),
            effect: None,
        }),
    };
    assert_eq!(h.err(unspecified).code, ErrorCode::InvalidArgument);
    for (id, subject) in [
        ("", "a"),
        ("q", ""),
        (&"i".repeat(257)[..], "a"),
        ("q", &"s".repeat(1025)[..]),
    ] {
        let error = h.err(policy(id, subject, "b", "c", Effect::Allow));
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{id:?} {subject:?}");
    }
    assert_eq!(h.core.stats().policies, 1);
}

#[test]
fn list_policies_sorted_by_id_with_subject_prefix_and_delete() {
    let mut h = Harness::new();
    h.ok(policy("z", "agent:scraper", "a", "r", Effect::Allow));
    h.ok(policy("m", "agent:orch", "a", "r", Effect::Allow));
    h.ok(policy("a", "user:bob", "a", "r", Effect::Deny));
    let ids = |reply: Reply| match reply {
        Reply::Policies { policies, .. } => policies.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        ids(h.ok(Command::ListPolicies {
            subject_prefix: String::new(),
            page_size: 0,
            page_token: String::new(),
        })),
        ["a", "m", "z"]
    );
    assert_eq!(
        ids(h.ok(Command::ListPolicies {
            subject_prefix: "agent:".into(),
            page_size: 0,
            page_token: String::new(),
        })),
        ["m", "z"]
    );
    h.ok(Command::DeletePolicy { id: "m".into() });
    assert_eq!(
        ids(h.ok(Command::ListPolicies {
            subject_prefix: "agent:".into(),
            page_size: 0,
            page_token: String::new(),
        })),
        ["z"]
    );
    let error = h.err(Command::DeletePolicy { id: "m".into() });
    assert_eq!(
        (error.code, error.message.as_str()),
        (ErrorCode::NotFound, "policy \"m\" not found")
    );
}

// ── Event bus ────────────────────────────────────────────────────────────────

#[test]
fn sequence_numbers_start_at_one_and_grow_by_one() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 60);
    h.acquire("k", &a, 10);
    let mut out = Vec::new();
    h.core.drain_deliveries(&mut out);
    let sequences: Vec<u64> = out.iter().map(|d| d.event.sequence).collect();
    assert_eq!(sequences, [1, 2]);
    assert_eq!(out[0].event.occurred_at, T0);
}

#[test]
fn watch_topics_are_prefixes_and_empty_means_all() {
    let mut h = Harness::new();
    let watch = |h: &mut Harness, topics: &[&str]| match h.ok(Command::Watch {
        topics: topics.iter().map(|t| t.to_string()).collect(),
        from_sequence: 0,
    }) {
        Reply::Watching { subscriber, .. } => subscriber,
        other => panic!("{other:?}"),
    };
    let agents = watch(&mut h, &["agent."]);
    let acquired = watch(&mut h, &["lease.acquired"]);
    let both = watch(&mut h, &["agent.reg", "lease."]);
    let a = h.register("a", &[], 60);
    h.acquire("k", &a, 10);
    let mut out = Vec::new();
    h.core.drain_deliveries(&mut out);
    let topics_of = |s: SubscriberId| -> Vec<&str> {
        out.iter()
            .filter(|d| d.subscriber == s)
            .map(|d| d.event.topic.as_str())
            .collect()
    };
    assert_eq!(topics_of(agents), ["agent.registered"]);
    assert_eq!(topics_of(acquired), ["lease.acquired"]);
    assert_eq!(topics_of(both), ["agent.registered", "lease.acquired"]);
    assert_eq!(topics_of(h.all), ["agent.registered", "lease.acquired"]);
}

#[test]
fn watch_from_sequence_replays_retained_matching_events_then_goes_live() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 60);
    h.acquire("k1", &a, 10);
    h.acquire("k2", &a, 10);
    let (subscriber, replay) = match h.ok(Command::Watch {
        topics: vec!["lease.".into()],
        from_sequence: 3,
    }) {
        Reply::Watching { subscriber, replay } => (subscriber, replay),
        other => panic!("{other:?}"),
    };
    assert_eq!(replay.iter().map(|e| e.sequence).collect::<Vec<_>>(), [3]);
    h.acquire("k3", &a, 10);
    let live: Vec<u64> = h.deliveries_for(subscriber).iter().map(|e| e.sequence).collect();
    assert_eq!(live, [4], "live continues right after the replay");
}

#[test]
fn watch_from_a_sequence_no_longer_retained_is_out_of_range_naming_the_oldest() {
    let mut h = Harness::with_config(CoreConfig {
        event_ring_max: 3,
        ..CoreConfig::default()
    });
    let a = h.register("a", &[], 60);
    for i in 0..4 {
        h.acquire(&format!("k{i}"), &a, 10);
    }
    let error = h.err(Command::Watch {
        topics: vec![],
        from_sequence: 2,
    });
    assert_eq!(error.code, ErrorCode::OutOfRange);
    assert!(error.message.contains("oldest available is 3"), "{}", error.message);
    assert!(
        h.apply(Command::Watch {
            topics: vec![],
            from_sequence: 3
        })
        .is_ok()
    );
}

#[test]
fn unwatch_drops_a_subscriber_and_its_queued_deliveries() {
    let mut h = Harness::new();
    h.register("a", &[], 60);
    let all = h.all;
    h.ok(Command::Unwatch { subscriber: all });
    let mut out = Vec::new();
    h.core.drain_deliveries(&mut out);
    assert!(out.is_empty());
    assert_eq!(h.core.stats().watchers, 0);
    h.ok(Command::Unwatch { subscriber: all });
}

#[test]
fn watchers_limit_is_resource_exhausted() {
    let mut h = Harness::with_config(CoreConfig {
        watchers_max: 2,
        ..CoreConfig::default()
    });
    h.ok(Command::Watch {
        topics: vec![],
        from_sequence: 0,
    });
    let error = h.err(Command::Watch {
        topics: vec![],
        from_sequence: 0,
    });
    assert_eq!(error.code, ErrorCode::ResourceExhausted);
    assert_eq!(error.message, "limit watchers_max (2) reached");
}

#[test]
fn agents_limit_is_resource_exhausted_and_changes_nothing() {
    let mut h = Harness::with_config(CoreConfig {
        agents_max: 1,
        ..CoreConfig::default()
    });
    h.register("a", &[], 60);
    let card = AgentCard {
        name: "b".into(),
        ..AgentCard::default()
    };
    let error = h.err(Command::Register {
        card: Box::new(card),
        ttl_seconds: 60,
        vector: None,
    });
    assert_eq!(error.code, ErrorCode::ResourceExhausted);
    assert_eq!(h.core.stats().agents_alive, 1);
}

#[test]
fn next_deadline_tracks_the_earliest_timer() {
    let mut h = Harness::new();
    assert_eq!(h.core.next_deadline(), None);
    let a = h.register("a", &[], 10);
    assert!(h.core.next_deadline().is_some_and(|d| d <= T0 + 10 * SECOND));
    h.acquire("k", &a, 2);
    assert!(h.core.next_deadline().is_some_and(|d| d <= T0 + 2 * SECOND));
}

#[test]
fn topic_names_match_the_contract() {
    let names: Vec<&str> = Topic::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(
        names,
        [
            "agent.registered",
            "agent.unreachable",
            "agent.recovered",
            "agent.died",
            "lease.acquired",
            "lease.renewed",
            "lease.expired",
            "lease.released",
            "leader.changed",
            "task.created",
            "task.claimed",
            "task.completed",
            "task.failed",
            "task.dead",
        ]
    );
}

// ── Failover grace (a new cluster leader) ───────────────────────────────────

#[test]
fn failover_grace_saves_what_fell_due_without_a_leader_for_at_most_the_grace_and_its_ttl() {
    let mut h = Harness::new();
    let holder = h.register("holder", &[], 60);
    let short = h.register("short", &[], 1);
    h.acquire("due", &holder, 5);
    h.acquire("far", &holder, 300);
    // No leader from T0 + 4 s: nothing ticks until a new leader takes over at T0 + 8 s, when
    // "due" (expiry T0 + 5 s) and "short" (UNREACHABLE at T0 + 1 s) are overdue.
    let failover = T0 + 8 * SECOND;
    h.core.failover_grace(failover, 2_000);
    h.now = failover;
    h.core.check_invariants();
    let expiry = |h: &Harness, key: &str| {
        let leases = h.core.leases();
        leases.iter().find(|l| &*l.task_id == key).map(|l| l.expires_at)
    };
    assert_eq!(
        expiry(&h, "due"),
        Some(failover + 2 * SECOND),
        "the grace, not a whole TTL"
    );
    assert_eq!(expiry(&h, "far"), Some(T0 + 300 * SECOND), "not due: untouched");
    assert_eq!(h.agent(&holder).status, AgentStatus::Alive);
    assert_eq!(h.agent(&short).status, AgentStatus::Alive, "not punished for the gap");
    // Its TTL (1 s) is shorter than the grace: it gets its TTL.
    h.advance(SECOND - 1);
    assert_eq!(h.agent(&short).status, AgentStatus::Alive);
    h.advance(1);
    assert_eq!(h.agent(&short).status, AgentStatus::Unreachable);
    h.advance(SECOND - 1);
    assert_eq!(expiry(&h, "due"), Some(failover + 2 * SECOND));
    h.advance(1);
    assert_eq!(expiry(&h, "due"), None, "expired at the grace's end");
}

// ── Restart grace ────────────────────────────────────────────────────────────

#[test]
fn restart_grace_gives_every_live_agent_and_lease_a_full_ttl_from_restart() {
    let mut h = Harness::new();
    let alive = h.register("alive", &[], 10);
    let silent = h.register("silent", &[], 10);
    let (lease, _) = h.acquire("k", &alive, 30);
    h.advance(12 * SECOND);
    h.ok(Command::Heartbeat {
        agent_id: alive.clone(),
    });
    assert_eq!(h.agent(&silent).status, AgentStatus::Unreachable);
    h.topics();
    // The daemon was down for an hour; it restarts.
    let restart = h.now + 3600 * SECOND;
    h.core.restart_grace(restart);
    h.now = restart;
    h.core.check_invariants();
    assert_eq!(
        h.agent(&alive).status,
        AgentStatus::Alive,
        "the downtime does not count"
    );
    assert_eq!(h.agent(&silent).status, AgentStatus::Unreachable);
    assert_eq!(h.core.leases()[0].expires_at, restart + 30 * SECOND);
    assert_eq!(h.core.leases()[0].token, lease.token);
    assert!(h.topics().is_empty(), "grace itself emits nothing");
    h.advance(10 * SECOND - 1);
    assert_eq!(h.agent(&alive).status, AgentStatus::Alive);
    assert_eq!(h.agent(&silent).status, AgentStatus::Unreachable);
    h.advance(1);
    assert_eq!(h.agent(&alive).status, AgentStatus::Unreachable);
    assert_eq!(
        h.agent(&silent).status,
        AgentStatus::Dead,
        "the UNREACHABLE agent got one ttl from restart"
    );
    h.advance(10 * SECOND);
    assert_eq!(h.agent(&alive).status, AgentStatus::Dead);
    assert_eq!(
        h.agent(&alive).last_heartbeat_at,
        T0 + 12 * SECOND,
        "last_heartbeat_at stays honest"
    );
}

#[test]
fn tick_reports_whether_anything_fired() {
    let mut h = Harness::new();
    h.register("a", &[], 10);
    assert_eq!(h.core.tick(T0 + 5 * SECOND), 0);
    assert_eq!(h.core.tick(T0 + 10 * SECOND), 1);
    assert_eq!(h.core.tick(T0 + 10 * SECOND), 0);
}

#[test]
fn resign_by_an_unknown_agent_is_a_no_op_too() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 60);
    h.campaign("g", &a);
    h.topics();
    h.ok(Command::Resign {
        group: "g".into(),
        agent_id: "0123456789abcdef0123456789abcdef".into(),
    });
    h.ok(Command::Resign {
        group: "g".into(),
        agent_id: "not-an-id".into(),
    });
    assert!(h.topics().is_empty());
    assert_eq!(h.campaign("g", &a).term, 1);
}

// ── Found by the simulator ──────────────────────────────────────────────────

#[test]
fn a_death_and_its_leases_expiry_due_at_the_same_instant_release_the_lease_once() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 2);
    h.acquire("k", &a, 4);
    h.topics();
    // Death (2 x ttl) and the lease's expiry both fall due at +4 s, in one tick.
    h.advance(2500);
    h.advance(1500);
    assert_eq!(
        h.topics(),
        ["agent.unreachable", "agent.died", "lease.released"],
        "released by the death, not expired"
    );
    assert_eq!(h.core.stats().leases, 0);
}

#[test]
fn after_a_long_pause_deadlines_fire_in_timeline_order_at_their_own_instants() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 1);
    h.acquire("k", &a, 3);
    let b = h.register("b", &[], 5);
    let mut out = Vec::new();
    h.core.drain_deliveries(&mut out);
    h.advance(60 * SECOND);
    let events: Vec<(&str, Millis)> = h
        .deliveries_for(h.all)
        .iter()
        .map(|e| (e.topic.as_str(), e.occurred_at - T0))
        .collect();
    assert_eq!(
        events,
        [
            ("agent.unreachable", SECOND),
            ("agent.died", 2 * SECOND),
            ("lease.released", 2 * SECOND),
            ("agent.unreachable", 5 * SECOND),
            ("agent.died", 10 * SECOND),
        ]
    );
    assert_eq!(h.agent(&b).status, AgentStatus::Dead);
}

mod find;
mod keepalive;
mod limits;
mod listing;
mod machine;
mod tasks;
mod vectors;

#[test]
fn an_agent_token_acts_only_for_its_own_agents_across_a_snapshot_until_the_agent_is_forgotten() {
    let mut h = Harness::with_config(CoreConfig {
        seed: 42,
        dead_retention_ms: 5 * SECOND,
        ..CoreConfig::default()
    });
    let (mine, theirs) = (TokenId([1; 16]), TokenId([2; 16]));
    let card = AgentCard {
        name: "bound".into(),
        ..AgentCard::default()
    };
    let register = Command::Register {
        card: Box::new(card),
        ttl_seconds: 10,
        vector: None,
    };
    let Ok(Reply::Registered { agent_id }) = h.core.apply_as(h.now, register, Some(mine)) else {
        panic!("registers")
    };
    let agent_id = agent_id.to_string();
    let heartbeat = || Command::Heartbeat {
        agent_id: agent_id.clone(),
    };
    assert_eq!(h.core.apply_as(h.now, heartbeat(), Some(mine)), Ok(Reply::Done));
    let refused = h.core.apply_as(h.now, heartbeat(), Some(theirs)).unwrap_err();
    assert_eq!(refused.code, ErrorCode::PermissionDenied, "{refused}");
    assert!(
        refused.message.contains("not registered with this agent token"),
        "{refused}"
    );
    let acquire = Command::AcquireLease {
        task_id: "k".into(),
        agent_id: agent_id.clone(),
        ttl_seconds: 10,
    };
    assert_eq!(
        h.core.apply_as(h.now, acquire, Some(theirs)).unwrap_err().code,
        ErrorCode::PermissionDenied
    );
    // Callers without an agent token (orchestrators, admins, no --auth-tokens) act for anyone.
    assert_eq!(h.core.apply(h.now, heartbeat()), Ok(Reply::Done));

    // The binding is state: a restored core keeps it.
    let mut restored = Core::restore(h.core.config().clone(), h.core.snapshot());
    assert_eq!(restored.apply_as(h.now, heartbeat(), Some(mine)), Ok(Reply::Done));
    assert_eq!(
        restored.apply_as(h.now, heartbeat(), Some(theirs)).unwrap_err().code,
        ErrorCode::PermissionDenied
    );

    // Dead, then forgotten: the token holds nothing any more (refused, as any unknown agent).
    h.ok(Command::Deregister {
        agent_id: agent_id.clone(),
    });
    h.advance(6 * SECOND);
    assert_eq!(h.err(heartbeat()).code, ErrorCode::NotFound);
    assert_eq!(
        h.core.apply_as(h.now, heartbeat(), Some(mine)).unwrap_err().code,
        ErrorCode::PermissionDenied
    );
}

#[test]
fn a_numbered_register_or_create_task_sent_again_is_applied_once_and_answered_as_the_first_time() {
    let config = CoreConfig {
        seed: 42,
        ..CoreConfig::default()
    };
    let mut core = Core::new(config.clone(), T0);
    let numbered = |seq: u64, command: Command| Command::Once {
        request: sessions::RequestId { client: 0xfeed, seq },
        command: Box::new(command),
    };
    let register = || Command::Register {
        card: Box::new(AgentCard {
            name: "worker".into(),
            ..AgentCard::default()
        }),
        ttl_seconds: 60,
        vector: None,
    };
    let create = || Command::CreateTask {
        kind: "build".into(),
        input: b"x".to_vec(),
        required_tools: vec![],
        max_retries: 0,
        ttl_seconds: 0,
    };
    let first = core.apply(T0, numbered(1, register())).expect("registers");
    let again = core.apply(T0 + 5, numbered(1, register())).expect("answered again");
    assert_eq!(first, again, "the same agent id, not a second agent");
    assert_eq!(core.stats().agents_alive, 1);
    let task = core.apply(T0 + 6, numbered(2, create())).expect("creates");
    assert_eq!(core.apply(T0 + 7, numbered(2, create())), Ok(task.clone()));
    let Reply::Task(view) = &task else {
        panic!("a task: {task:?}")
    };
    let listed = core.apply(
        T0 + 8,
        Command::ListTasks {
            status: None,
            page_size: 100,
            page_token: String::new(),
            bytes_left: None,
        },
    );
    assert!(matches!(&listed, Ok(Reply::Tasks { tasks, .. }) if tasks.len() == 1 && tasks[0].id == view.id));
    // A number used for another kind of call is refused, not answered with the first's reply.
    let reused = core.apply(T0 + 8, numbered(1, create())).unwrap_err();
    assert_eq!(reused.code, ErrorCode::InvalidArgument, "{reused:?}");
    // A snapshot keeps what was remembered: a restarted or newly joined replica answers alike.
    let mut restored = Core::restore(config, core.snapshot());
    assert_eq!(restored.apply(T0 + 9, numbered(1, register())), Ok(first.clone()));
    assert_eq!(restored.stats().agents_alive, 1);
    // Another number is another request.
    let second = restored.apply(T0 + 10, numbered(3, register())).expect("registers");
    assert_ne!(second, first);
    assert_eq!(restored.stats().agents_alive, 2);
    // Only creating writes are numbered; a failed one is not remembered.
    let heartbeat = Command::Heartbeat { agent_id: "x".into() };
    let refused = restored.apply(T0 + 11, numbered(4, heartbeat)).unwrap_err();
    assert_eq!(refused.code, ErrorCode::InvalidArgument);
    let bad = Command::Register {
        card: Box::new(AgentCard::default()),
        ttl_seconds: 60,
        vector: None,
    };
    assert!(
        restored.apply(T0 + 12, numbered(5, bad)).is_err(),
        "a card with no name is refused"
    );
    assert_eq!(restored.apply(T0 + 13, numbered(5, register())).map(|_| ()), Ok(()));
    restored.check_invariants();
}

/// Every command is moved by value through the driver's queues and lanes (several copies per
/// call on the hot path), as large as its largest variant: big payloads travel boxed.
#[test]
fn a_command_stays_small_enough_to_move_cheaply_between_threads() {
    assert!(
        std::mem::size_of::<Command>() <= 96,
        "Command grew to {} bytes: box the new large variant's payload",
        std::mem::size_of::<Command>()
    );
}
