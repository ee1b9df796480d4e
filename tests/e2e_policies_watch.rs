//! End to end: entitlements, and the event bus (prefixes, contiguous sequences, resume, slow
//! watchers).

mod common;

use std::time::Duration;

use agentkeeper::proto as pb;
use common::{Daemon, next_event, topics};
use tonic::Code;

fn policy(id: &str, subject: &str, action: &str, resource: &str, effect: pb::PolicyEffect) -> pb::SetPolicyRequest {
    let policy = pb::Policy {
        id: id.into(),
        subject: subject.into(),
        action: action.into(),
        resource: resource.into(),
        effect: effect as i32,
    };
    pb::SetPolicyRequest { policy: Some(policy) }
}

async fn check(c: &mut common::Clients, subject: &str, action: &str, resource: &str) -> (bool, String) {
    let request = pb::CheckPolicyRequest {
        subject: subject.into(),
        action: action.into(),
        resource: resource.into(),
    };
    let reply = c.policies.check_policy(request).await.unwrap().into_inner();
    (reply.allowed, reply.reason)
}

#[tokio::test]
async fn deny_beats_allow_smallest_id_is_named_and_default_is_deny() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    use pb::PolicyEffect::{Allow, Deny};
    for request in [
        policy("allow-all", "agent:*", "call", "tool:*", Allow),
        policy("b-deny", "agent:scraper", "call", "tool:write_file", Deny),
        policy("a-deny", "agent:*", "*", "tool:write_*", Deny),
    ] {
        c.policies.set_policy(request).await.unwrap();
    }
    assert_eq!(
        check(&mut c, "agent:scraper", "call", "tool:write_file").await,
        (false, "denied by policy \"a-deny\"".into())
    );
    assert_eq!(
        check(&mut c, "agent:scraper", "call", "tool:read").await,
        (true, "allowed by policy \"allow-all\"".into())
    );
    assert!(
        check(&mut c, "agent:", "call", "tool:").await.0,
        "* matches the empty run"
    );
    assert_eq!(
        check(&mut c, "user:x", "call", "tool:y").await,
        (false, "no matching policy: default deny".into())
    );
}

#[tokio::test]
async fn policies_upsert_list_sorted_with_prefix_and_delete() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    use pb::PolicyEffect::Allow;
    for (id, subject) in [("z", "agent:b"), ("m", "agent:a"), ("a", "user:x")] {
        c.policies
            .set_policy(policy(id, subject, "r", "x", Allow))
            .await
            .unwrap();
    }
    c.policies
        .set_policy(policy("m", "agent:c", "r", "x", Allow))
        .await
        .unwrap();
    let list = |prefix: &str| pb::ListPoliciesRequest {
        subject_prefix: prefix.into(),
    };
    let ids = |reply: pb::ListPoliciesResponse| {
        reply
            .policies
            .into_iter()
            .map(|p| (p.id, p.subject))
            .collect::<Vec<_>>()
    };
    let all = ids(c.policies.list_policies(list("")).await.unwrap().into_inner());
    assert_eq!(
        all,
        [
            ("a".into(), "user:x".into()),
            ("m".into(), "agent:c".into()),
            ("z".into(), "agent:b".into())
        ]
    );
    let agents = ids(c.policies.list_policies(list("agent:")).await.unwrap().into_inner());
    assert_eq!(agents.len(), 2);
    c.policies
        .delete_policy(pb::DeletePolicyRequest { id: "m".into() })
        .await
        .unwrap();
    let error = c
        .policies
        .delete_policy(pb::DeletePolicyRequest { id: "m".into() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
}

#[tokio::test]
async fn invalid_policies_are_rejected() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    for request in [
        policy("p", "a", "b", "c", pb::PolicyEffect::Unspecified),
        policy("", "a", "b", "c", pb::PolicyEffect::Allow),
        policy("p", "", "b", "c", pb::PolicyEffect::Allow),
        policy("p", &"s".repeat(1025), "b", "c", pb::PolicyEffect::Allow),
    ] {
        assert_eq!(
            c.policies.set_policy(request).await.unwrap_err().code(),
            Code::InvalidArgument
        );
    }
    let empty = pb::SetPolicyRequest { policy: None };
    assert_eq!(
        c.policies.set_policy(empty).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn watch_topics_are_prefixes_and_sequences_are_contiguous() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut agents = c.watch(&["agent."], 0).await;
    let mut acquired = c.watch(&["lease.acquired"], 0).await;
    let mut all = c.watch(&[], 0).await;
    let a = c.register("a", &[], 30).await;
    let (lease, _) = c.acquire("k", &a, 30).await;
    let release = pb::ReleaseLeaseRequest {
        task_id: "k".into(),
        agent_id: a.clone(),
        token: lease.token,
    };
    c.leases.release_lease(release).await.unwrap();
    c.registry
        .deregister(pb::DeregisterRequest { agent_id: a })
        .await
        .unwrap();
    assert_eq!(topics(&mut agents, 2).await, ["agent.registered", "agent.died"]);
    assert_eq!(topics(&mut acquired, 1).await, ["lease.acquired"]);
    let mut sequences = Vec::new();
    for _ in 0..4 {
        sequences.push(
            next_event(&mut all, Duration::from_secs(5))
                .await
                .unwrap()
                .sequence_number,
        );
    }
    assert_eq!(sequences, [1, 2, 3, 4]);
    assert!(next_event(&mut acquired, Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn watch_from_sequence_replays_then_goes_live_without_gap_or_duplicate() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    for i in 0..5 {
        c.acquire(&format!("k{i}"), &a, 30).await;
    }
    let mut resumed = c.watch(&[], 3).await;
    c.acquire("k5", &a, 30).await;
    let mut sequences = Vec::new();
    for _ in 0..5 {
        sequences.push(
            next_event(&mut resumed, Duration::from_secs(5))
                .await
                .unwrap()
                .sequence_number,
        );
    }
    assert_eq!(sequences, [3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn resuming_before_the_retained_events_is_out_of_range_naming_the_oldest() {
    let daemon = Daemon::start(&["--events-retained", "5"]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    for i in 0..9 {
        c.acquire(&format!("k{i}"), &a, 30).await;
    }
    let request = pb::WatchRequest {
        topics: vec![],
        from_sequence: 2,
    };
    let error = c.registry.watch(request).await.unwrap_err();
    assert_eq!(error.code(), Code::OutOfRange);
    assert!(error.message().contains("oldest available is 6"), "{}", error.message());
}

#[tokio::test]
async fn a_watcher_that_never_reads_is_cut_off_and_others_keep_going() {
    let daemon = Daemon::start(&["--watch-buffer", "8"]);
    let mut c = daemon.clients().await;
    // The slow watcher has its own connection and never polls its stream while far more events
    // than its buffer arrive: HTTP/2 flow control stops the daemon from sending, its buffer of 8
    // fills, and the daemon cuts it off. (On a shared connection it would stall the others.)
    let mut slow = daemon.narrow_clients().await.watch(&[], 0).await;
    let a = c.register("a", &[], 30).await;
    for i in 0..2000 {
        c.acquire(&format!("k{i}"), &a, 30).await;
    }
    let mut fast = c.watch(&[], 0).await;
    c.acquire("after", &a, 30).await;
    assert_eq!(topics(&mut fast, 1).await, ["lease.acquired"]);
    let mut delivered = Vec::new();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), slow.message())
            .await
            .expect("the slow stream ends")
        {
            Ok(Some(event)) => delivered.push(event.sequence_number),
            Ok(None) => panic!(
                "the slow stream ended without an error after {} events",
                delivered.len()
            ),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::ResourceExhausted);
    let last = *delivered.last().expect("some events were buffered");
    assert!(
        end.message().contains(&format!("last sequence delivered is {last}")),
        "{}",
        end.message()
    );
    assert_eq!(delivered, (1..=last).collect::<Vec<_>>(), "contiguous up to the cut");
    assert!(delivered.len() < 2001);
}
