//! Every count limit of the core: one past it is RESOURCE_EXHAUSTED naming the limit, and the
//! rejected command changes nothing (same snapshot, same stats, no event).

use super::*;

/// Applies `command`, expecting the limit `name` set to `value`; asserts that nothing changed.
fn assert_limit(h: &mut Harness, command: Command, name: &str, value: usize) {
    h.topics();
    let (before, stats) = (h.core.snapshot(), h.core.stats());
    let error = h.err(command);
    assert_eq!(error.code, ErrorCode::ResourceExhausted, "{error}");
    assert!(
        error.message.starts_with(&format!("limit {name} ({value}) reached")),
        "{:?} should name {name}",
        error.message
    );
    assert_eq!(h.core.snapshot(), before, "{name}: the state changed on rejection");
    assert_eq!(h.core.stats(), stats, "{name}: the counts changed on rejection");
    assert!(h.topics().is_empty(), "{name}: a rejected command emitted an event");
}

fn limited(config: CoreConfig) -> Harness {
    Harness::with_config(CoreConfig { seed: 7, ..config })
}

fn card(name: &str) -> AgentCard {
    AgentCard {
        name: name.into(),
        ..AgentCard::default()
    }
}

#[test]
fn agents_max_refuses_one_more_registration() {
    let mut h = limited(CoreConfig {
        agents_max: 2,
        ..CoreConfig::default()
    });
    h.register("a", &[], 60);
    h.register("b", &[], 60);
    let register = Command::Register {
        card: Box::new(card("c")),
        ttl_seconds: 60,
        vector: None,
    };
    assert_limit(&mut h, register, "agents_max", 2);
}

#[test]
fn leases_max_refuses_a_new_lease_but_not_a_renewal() {
    let mut h = limited(CoreConfig {
        leases_max: 1,
        ..CoreConfig::default()
    });
    let a = h.register("a", &[], 60);
    let (lease, _) = h.acquire("k1", &a, 60);
    let acquire = Command::AcquireLease {
        task_id: "k2".into(),
        agent_id: a.clone(),
        ttl_seconds: 60,
    };
    assert_limit(&mut h, acquire, "leases_max", 1);
    h.ok(Command::RenewLease {
        task_id: "k1".into(),
        agent_id: a,
        token: lease.token,
        ttl_seconds: 60,
    });
}

#[test]
fn policies_max_refuses_a_new_policy_but_not_a_replacement() {
    let mut h = limited(CoreConfig {
        policies_max: 1,
        ..CoreConfig::default()
    });
    let policy = |id: &str| PolicyInput {
        id: id.into(),
        subject: "s".into(),
        action: "a".into(),
        resource: "r".into(),
        effect: Some(Effect::Allow),
    };
    h.ok(Command::SetPolicy {
        policy: Box::new(policy("p1")),
    });
    let set = Command::SetPolicy {
        policy: Box::new(policy("p2")),
    };
    assert_limit(&mut h, set, "policies_max", 1);
    h.ok(Command::SetPolicy {
        policy: Box::new(policy("p1")),
    });
}

#[test]
fn groups_max_refuses_a_new_group_but_not_a_known_one() {
    let mut h = limited(CoreConfig {
        groups_max: 1,
        ..CoreConfig::default()
    });
    let a = h.register("a", &[], 60);
    let b = h.register("b", &[], 60);
    h.campaign("g1", &a);
    let campaign = Command::Campaign {
        group: "g2".into(),
        agent_id: a,
    };
    assert_limit(&mut h, campaign, "groups_max", 1);
    h.campaign("g1", &b);
}

fn create_task(input: usize) -> Command {
    Command::CreateTask {
        kind: "t".into(),
        input: vec![7; input],
        required_tools: vec![],
        max_retries: 0,
        ttl_seconds: 0,
    }
}

#[test]
fn tasks_max_refuses_one_more_task() {
    let mut h = limited(CoreConfig {
        tasks_max: 1,
        ..CoreConfig::default()
    });
    h.ok(create_task(1));
    assert_limit(&mut h, create_task(1), "tasks_max", 1);
}

#[test]
fn task_bytes_max_refuses_an_input_that_would_pass_it() {
    let mut h = limited(CoreConfig {
        task_bytes_max: 10,
        ..CoreConfig::default()
    });
    h.ok(create_task(6));
    assert_limit(&mut h, create_task(5), "task_bytes_max", 10);
    h.ok(create_task(4));
}

#[test]
fn waiters_max_refuses_one_more_waiting_claim() {
    let mut h = limited(CoreConfig {
        waiters_max: 1,
        ..CoreConfig::default()
    });
    let a = h.register("a", &[], 60);
    let claim = |agent: &str| Command::ClaimTask {
        agent_id: agent.into(),
        wait_ms: 1000,
    };
    assert!(matches!(h.ok(claim(&a)), Reply::ClaimWaiting { .. }));
    assert_limit(&mut h, claim(&a), "waiters_max", 1);
    assert_eq!(h.core.stats().claims_waiting, 1);
}

#[test]
fn watchers_max_refuses_one_more_stream() {
    // The harness itself watches everything: that is one of the two.
    let mut h = limited(CoreConfig {
        watchers_max: 2,
        ..CoreConfig::default()
    });
    h.ok(Command::WatchElection { group: "g".into() });
    let watch = Command::Watch {
        topics: vec![],
        from_sequence: 0,
    };
    assert_limit(&mut h, watch, "watchers_max", 2);
    let election = Command::WatchElection { group: "g".into() };
    assert_limit(&mut h, election, "watchers_max", 2);
}

#[test]
fn the_replicated_digest_changes_with_the_limits_and_retentions_and_not_with_local_settings() {
    let base = CoreConfig::default();
    let digest = base.replicated_digest();
    for changed in [
        CoreConfig {
            agents_max: base.agents_max - 1,
            ..base.clone()
        },
        CoreConfig {
            task_bytes_max: base.task_bytes_max + 1,
            ..base.clone()
        },
        CoreConfig {
            dead_retention_ms: base.dead_retention_ms + 1,
            ..base.clone()
        },
        CoreConfig {
            waiters_max: base.waiters_max + 1,
            ..base.clone()
        },
    ] {
        assert_ne!(changed.replicated_digest(), digest, "{changed:?}");
    }
    // What a node serves locally, and the seed its cluster shares by construction, do not count.
    let local = CoreConfig {
        seed: 99,
        watchers_max: base.watchers_max + 1,
        event_ring_max: base.event_ring_max + 1,
        ..base.clone()
    };
    assert_eq!(local.replicated_digest(), digest);
}
