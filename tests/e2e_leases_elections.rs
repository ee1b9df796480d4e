//! End to end: leases with fencing tokens across agents, and leader elections with failover.

mod common;

use std::time::Duration;

use agentkeeper::proto as pb;
use common::{Daemon, decode, next_event, topics};
use tonic::Code;

fn token(lease: &pb::Lease) -> u64 {
    lease.token.as_ref().expect("token").value
}

#[tokio::test]
async fn a_lease_is_exclusive_reentrant_and_its_token_grows_after_release() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    let (lease, acquired) = c.acquire("task:1", &a, 30).await;
    assert!(acquired);
    let (seen, acquired) = c.acquire("task:1", &b, 30).await;
    assert!(!acquired);
    assert_eq!(
        (seen.holder_agent_id.as_str(), token(&seen)),
        (a.as_str(), token(&lease))
    );
    let (again, acquired) = c.acquire("task:1", &a, 30).await;
    assert!(acquired && token(&again) == token(&lease), "re-entrant: same token");
    let release = |agent: &str, value| pb::ReleaseLeaseRequest {
        task_id: "task:1".into(),
        agent_id: agent.into(),
        token: Some(pb::FencingToken { value }),
    };
    assert_eq!(
        c.leases
            .release_lease(release(&b, token(&lease)))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    c.leases.release_lease(release(&a, token(&lease))).await.unwrap();
    let (next, acquired) = c.acquire("task:1", &b, 30).await;
    assert!(acquired && token(&next) > token(&lease));
}

#[tokio::test]
async fn renew_checks_holder_and_token_and_moves_the_expiry() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let (lease, _) = c.acquire("k", &a, 5).await;
    let renew = |task: &str, value, ttl| pb::RenewLeaseRequest {
        task_id: task.into(),
        agent_id: a.clone(),
        token: Some(pb::FencingToken { value }),
        ttl_seconds: ttl,
    };
    let error = c
        .leases
        .renew_lease(renew("k", token(&lease) + 1, 0))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    assert!(error.message().contains("token mismatch"), "{}", error.message());
    assert_eq!(
        c.leases.renew_lease(renew("nope", 1, 0)).await.unwrap_err().code(),
        Code::NotFound
    );
    let renewed = c
        .leases
        .renew_lease(renew("k", token(&lease), 60))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    let expiry = |l: &pb::Lease| l.expires_at.as_ref().unwrap().seconds;
    assert!(expiry(&renewed) >= expiry(&lease) + 54, "expiry moved to now + 60 s");
}

#[tokio::test]
async fn an_unrenewed_lease_expires_and_the_key_is_free_again() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut events = c.watch(&["lease."], 0).await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    c.acquire("k", &a, 1).await;
    assert_eq!(topics(&mut events, 2).await, ["lease.acquired", "lease.expired"]);
    let (lease, acquired) = c.acquire("k", &b, 1).await;
    assert!(acquired && lease.holder_agent_id == b);
}

#[tokio::test]
async fn a_dead_holder_releases_its_leases_after_its_death_event() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut events = c.watch(&["agent.died", "lease."], 0).await;
    let a = c.register("a", &[], 1).await;
    c.acquire("k1", &a, 60).await;
    c.acquire("k2", &a, 60).await;
    let seen = topics(&mut events, 5).await;
    assert_eq!(
        seen,
        [
            "lease.acquired",
            "lease.acquired",
            "agent.died",
            "lease.released",
            "lease.released"
        ]
    );
    let request = pb::AcquireLeaseRequest {
        task_id: "k3".into(),
        agent_id: a,
        ttl_seconds: 10,
    };
    assert_eq!(
        c.leases.acquire_lease(request).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn lease_keys_and_ttls_are_validated() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    for (task_id, ttl_seconds) in [(String::new(), 10), ("k".repeat(1025), 10), ("k".into(), 86_401)] {
        let request = pb::AcquireLeaseRequest {
            task_id,
            agent_id: a.clone(),
            ttl_seconds,
        };
        assert_eq!(
            c.leases.acquire_lease(request).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
}

#[tokio::test]
async fn elections_fail_over_in_fifo_order_with_growing_terms() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 1).await;
    let d = c.register("d", &[], 30).await;
    let mut watch = c
        .elections
        .watch_election(pb::WatchElectionRequest { group: "g".into() })
        .await
        .unwrap()
        .into_inner();
    let first: pb::ElectionState = decode(&next_event(&mut watch, Duration::from_secs(5)).await.unwrap());
    assert_eq!(
        (first.leader_agent_id.as_str(), first.term),
        ("", 0),
        "first message: the current state"
    );
    let state = c.campaign("g", &a).await;
    assert_eq!((state.leader_agent_id.as_str(), state.term), (a.as_str(), 1));
    assert_eq!(
        c.campaign("g", &b).await.leader_agent_id,
        a,
        "a new candidate never displaces the leader"
    );
    c.campaign("g", &d).await;
    c.elections
        .resign(pb::ResignRequest {
            group: "g".into(),
            agent_id: a.clone(),
        })
        .await
        .unwrap();
    assert_eq!(c.campaign("g", &d).await.leader_agent_id, b, "the next in line leads");
    // b stops heartbeating (ttl 1): it dies and d takes over.
    let mut leaders = Vec::new();
    while leaders.len() < 3 {
        let event = next_event(&mut watch, Duration::from_secs(5))
            .await
            .expect("a leader change");
        let state: pb::ElectionState = decode(&event);
        leaders.push((state.leader_agent_id, state.term));
    }
    assert_eq!(leaders, [(a.clone(), 1), (b.clone(), 2), (d.clone(), 3)]);
    c.elections
        .resign(pb::ResignRequest {
            group: "g".into(),
            agent_id: a,
        })
        .await
        .expect("not a candidate: OK");
}

#[tokio::test]
async fn campaign_needs_a_valid_group_and_a_live_agent() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let bad = pb::CampaignRequest {
        group: String::new(),
        agent_id: a,
    };
    assert_eq!(
        c.elections.campaign(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let unknown = pb::CampaignRequest {
        group: "g".into(),
        agent_id: "0123456789abcdef0123456789abcdef".into(),
    };
    assert_eq!(c.elections.campaign(unknown).await.unwrap_err().code(), Code::NotFound);
}
