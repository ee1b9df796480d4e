//! End to end: leases with fencing tokens across agents: exclusivity, re-entrance, renew and
//! release checks, expiry, and release on the holder's death.

mod common;

use std::time::Duration;

use agentkeeper::proto as pb;
use common::{Daemon, UNKNOWN_ID, assert_quiet, decode, events, ms, token_of, topics, type_url};
use tonic::Code;

fn expiry_ms(lease: &pb::Lease) -> i64 {
    ms(&lease.expires_at)
}

fn acquired_ms(lease: &pb::Lease) -> i64 {
    ms(&lease.acquired_at)
}

#[tokio::test]
async fn a_second_agent_is_refused_and_told_the_holders_lease() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&["lease."], 0).await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    let (lease, acquired) = c.acquire("task:1", &a, 30).await;
    assert!(acquired);
    assert_eq!(
        (lease.task_id.as_str(), lease.holder_agent_id.as_str()),
        ("task:1", a.as_str())
    );
    assert!(token_of(&lease) > 0);
    assert_eq!(
        expiry_ms(&lease) - acquired_ms(&lease),
        30_000,
        "expires_at = acquired_at + ttl"
    );
    let event = events(&mut stream, 1).await.remove(0);
    assert_eq!(event.topic, "lease.acquired");
    assert_eq!(type_url(&event), "type.googleapis.com/agentkeeper.v1.Lease");
    assert_eq!(decode::<pb::Lease>(&event), lease);

    let (seen, acquired) = c.acquire("task:1", &b, 30).await;
    assert!(!acquired, "held by another agent");
    assert_eq!(seen, lease, "the reply carries the holder's lease");
    assert_quiet(&mut stream, Duration::from_millis(200)).await;

    let (other, acquired) = c.acquire("task:2", &b, 30).await;
    assert!(acquired, "another key is independent");
    assert!(token_of(&other) > token_of(&lease), "one counter for the whole daemon");
}

#[tokio::test]
async fn a_reentrant_acquire_keeps_the_token_and_moves_the_expiry() {
    let daemon = Daemon::start(&["--clock=manual"]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&["lease."], 0).await;
    let a = c.register("a", &[], 30).await;
    let (lease, _) = c.acquire("k", &a, 5).await;
    let now = c.advance(Duration::from_millis(50)).await;
    let (again, acquired) = c.acquire("k", &a, 60).await;
    assert!(acquired, "re-entrant");
    assert_eq!(token_of(&again), token_of(&lease), "same token");
    assert_eq!(again.holder_agent_id, a);
    assert_eq!(expiry_ms(&again), now + 60_000, "expiry moved to now + 60 s");
    assert_eq!(acquired_ms(&again), acquired_ms(&lease), "held since the first acquire");
    let (shorter, acquired) = c.acquire("k", &a, 2).await;
    assert!(acquired && token_of(&shorter) == token_of(&lease));
    assert_eq!(
        expiry_ms(&shorter),
        now + 2_000,
        "expiry = now + the ttl given, even when sooner"
    );
    assert_eq!(
        topics(&mut stream, 3).await,
        ["lease.acquired", "lease.renewed", "lease.renewed"]
    );
}

#[tokio::test]
async fn renew_checks_the_holder_and_token_and_moves_the_expiry() {
    let daemon = Daemon::start(&["--clock=manual"]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    let (lease, _) = c.acquire("k", &a, 5).await;
    let mut stream = c.watch(&["lease."], 0).await;
    let token = token_of(&lease);

    let error = c.renew("k", &a, token + 1, 0).await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "wrong token: {error:?}");
    assert!(error.message().contains("token mismatch"), "{}", error.message());
    let error = c.renew("k", &b, token, 0).await.unwrap_err();
    assert_eq!(
        error.code(),
        Code::PermissionDenied,
        "another agent with the right token: {error:?}"
    );
    let error = c.renew("nope", &a, token, 0).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "unknown lease: {error:?}");
    assert_quiet(&mut stream, Duration::from_millis(100)).await;

    let now = c.advance(Duration::from_millis(1000)).await;
    let renewed = c.renew("k", &a, token, 60).await.unwrap();
    assert_eq!(token_of(&renewed), token, "a renewal keeps the token");
    assert_eq!(expiry_ms(&renewed), now + 60_000, "expiry moved to now + 60 s");
    let event = events(&mut stream, 1).await.remove(0);
    assert_eq!(event.topic, "lease.renewed");
    assert_eq!(decode::<pb::Lease>(&event).expires_at, renewed.expires_at);

    // ttl 0: the lease's own ttl.
    let (k2, _) = c.acquire("k2", &a, 60).await;
    let now = c.advance(Duration::from_millis(50)).await;
    let own = c.renew("k2", &a, token_of(&k2), 0).await.unwrap();
    assert_eq!(expiry_ms(&own), now + 60_000, "0 means the lease's own ttl");
    assert_eq!(acquired_ms(&own), acquired_ms(&k2));
}

#[tokio::test]
async fn release_checks_the_token_and_the_next_holder_gets_a_strictly_greater_token() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&["lease."], 0).await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    let (lease, _) = c.acquire("task:1", &a, 30).await;
    let token = token_of(&lease);
    let error = c.release("task:1", &b, token).await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "not the holder: {error:?}");
    let error = c.release("task:1", &a, token + 1).await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "wrong token: {error:?}");
    assert_eq!(c.release("nope", &a, token).await.unwrap_err().code(), Code::NotFound);
    let (_, acquired) = c.acquire("task:1", &b, 30).await;
    assert!(!acquired, "failed releases changed nothing");

    c.release("task:1", &a, token).await.unwrap();
    let (next, acquired) = c.acquire("task:1", &b, 30).await;
    assert!(acquired && next.holder_agent_id == b);
    assert!(
        token_of(&next) > token,
        "strictly greater: {} > {token}",
        token_of(&next)
    );
    assert_eq!(
        topics(&mut stream, 3).await,
        ["lease.acquired", "lease.released", "lease.acquired"]
    );
    let error = c.release("task:1", &a, token).await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "the old holder's token is stale");
    c.release("task:1", &b, token_of(&next)).await.unwrap();
    let (last, _) = c.acquire("task:1", &a, 30).await;
    assert!(token_of(&last) > token_of(&next), "never reused");
}

#[tokio::test]
async fn an_unrenewed_lease_expires_and_the_key_is_free_again() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&["lease."], 0).await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    let (lease, _) = c.acquire("k", &a, 1).await;
    let (_, acquired) = c.acquire("k", &b, 1).await;
    assert!(!acquired, "held for its ttl");
    let seen = events(&mut stream, 2).await;
    assert_eq!(seen[0].topic, "lease.acquired");
    assert_eq!(seen[1].topic, "lease.expired");
    let expired: pb::Lease = decode(&seen[1]);
    assert_eq!((expired.task_id.as_str(), token_of(&expired)), ("k", token_of(&lease)));
    assert_eq!(
        c.renew("k", &a, token_of(&lease), 0).await.unwrap_err().code(),
        Code::NotFound
    );
    let (next, acquired) = c.acquire("k", &b, 1).await;
    assert!(acquired && next.holder_agent_id == b, "free after expiry");
    assert!(token_of(&next) > token_of(&lease));
}

#[tokio::test]
async fn a_dead_holder_releases_its_leases_after_its_death_event() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&["agent.died", "lease."], 0).await;
    let a = c.register("a", &[], 1).await;
    let b = c.register("b", &[], 30).await;
    c.acquire("k1", &a, 60).await;
    c.acquire("k2", &a, 60).await;
    let seen = events(&mut stream, 5).await;
    let names: Vec<&str> = seen.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        names,
        [
            "lease.acquired",
            "lease.acquired",
            "agent.died",
            "lease.released",
            "lease.released"
        ]
    );
    let released: Vec<String> = seen[3..].iter().map(|e| decode::<pb::Lease>(e).task_id).collect();
    let mut sorted = released.clone();
    sorted.sort();
    assert_eq!(sorted, ["k1", "k2"]);
    let sequences: Vec<u64> = seen[2..].iter().map(|e| e.sequence_number).collect();
    assert!(
        sequences.windows(2).all(|w| w[1] == w[0] + 1),
        "one core step: {sequences:?}"
    );

    let (lease, acquired) = c.acquire("k1", &b, 30).await;
    assert!(acquired && lease.holder_agent_id == b, "the dead holder's key is free");
    let error = c.try_acquire("k3", &a, 10).await.map(|_| ()).unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "a DEAD agent cannot acquire: {error:?}");
}

#[tokio::test]
async fn acquire_by_a_deregistered_or_unknown_agent_is_not_found_and_unreachable_may_acquire() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut unreachable = c.watch(&["agent.unreachable"], 0).await;
    let gone = c.register("gone", &[], 30).await;
    c.deregister(&gone).await.unwrap();
    let error = c.try_acquire("k", &gone, 10).await.map(|_| ()).unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    let error = c.try_acquire("k", UNKNOWN_ID, 10).await.map(|_| ()).unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");

    let slow = c.register("slow", &[], 1).await;
    assert_eq!(topics(&mut unreachable, 1).await, ["agent.unreachable"]);
    let (lease, acquired) = c.acquire("k", &slow, 10).await;
    assert!(
        acquired && lease.holder_agent_id == slow,
        "UNREACHABLE agents may acquire"
    );
    let state = c.campaign("g", &slow).await;
    assert_eq!(state.leader_agent_id, slow, "and campaign");
}

#[tokio::test]
async fn a_lease_is_free_from_its_expires_at_on_and_ttl_0_means_60_seconds() {
    let daemon = Daemon::start(&["--clock=manual"]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    let (default_ttl, _) = c.acquire("default", &a, 0).await;
    assert_eq!(
        expiry_ms(&default_ttl) - acquired_ms(&default_ttl),
        60_000,
        "ttl 0 means 60 s"
    );

    let mut stream = c.watch(&["lease."], 0).await;
    let (lease, _) = c.acquire("k", &a, 1).await;
    let now = c.advance(Duration::from_millis(999)).await;
    assert_eq!(now + 1, expiry_ms(&lease));
    let (held, acquired) = c.acquire("k", &b, 30).await;
    assert!(
        !acquired && held.holder_agent_id == a,
        "still a's 1 ms before expires_at"
    );
    c.advance(Duration::from_millis(1)).await;
    let (next, acquired) = c.acquire("k", &b, 30).await;
    assert!(acquired && next.holder_agent_id == b, "expired from expires_at on");
    let seen = events(&mut stream, 3).await;
    let names: Vec<&str> = seen.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(names, ["lease.acquired", "lease.expired", "lease.acquired"]);
    assert_eq!(decode::<pb::Lease>(&seen[1]).holder_agent_id, a);
    assert_eq!(decode::<pb::Lease>(&seen[2]).holder_agent_id, b);
}

#[tokio::test]
async fn concurrent_acquires_grant_each_key_to_exactly_one_agent_with_unique_tokens() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut agents = Vec::new();
    for i in 0..8 {
        agents.push(c.register(&format!("a{i}"), &[], 30).await);
    }
    let mut tasks = Vec::new();
    for agent in agents.clone() {
        let mut client = daemon.clients().await;
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for key in 0..20 {
                let (lease, acquired) = client.acquire(&format!("k{key}"), &agent, 30).await;
                if acquired {
                    assert_eq!(lease.holder_agent_id, agent);
                    won.push((key, token_of(&lease)));
                } else {
                    assert_ne!(lease.holder_agent_id, agent, "refused, so held by another");
                }
            }
            won
        }));
    }
    let mut winners = std::collections::BTreeMap::new();
    let mut tokens = std::collections::BTreeSet::new();
    for (agent, task) in agents.iter().zip(tasks) {
        for (key, token) in task.await.unwrap() {
            assert!(winners.insert(key, agent.clone()).is_none(), "k{key} granted twice");
            assert!(tokens.insert(token), "token {token} granted twice");
        }
    }
    assert_eq!(winners.len(), 20, "every key has a holder");
    for (key, holder) in winners {
        let (lease, _) = c.acquire(&format!("k{key}"), &agents[0], 30).await;
        assert_eq!(lease.holder_agent_id, holder, "k{key}");
    }
}
