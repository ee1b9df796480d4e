//! End to end: malformed input of every service is INVALID_ARGUMENT with a message naming the
//! field, changes nothing, and leaves the daemon serving; ids that cannot exist are NOT_FOUND.

mod common;

use agentkeeper::proto as pb;
use common::{Clients, Daemon, UNKNOWN_ID, card};
use tonic::{Code, Status};

/// Asserts INVALID_ARGUMENT naming `field`, then that the daemon still answers a call.
async fn assert_invalid(c: &mut Clients, what: &str, outcome: Result<(), Status>, field: &str) {
    let error = outcome.expect_err(what);
    assert_eq!(error.code(), Code::InvalidArgument, "{what}: {error:?}");
    assert!(
        error.message().contains(field),
        "{what}: {:?} should name {field}",
        error.message()
    );
    c.policies
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .unwrap_or_else(|e| panic!("the daemon stopped serving after {what}: {e:?}"));
}

#[tokio::test]
async fn invalid_cards_and_ttls_are_rejected_naming_the_field() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let long = |n: usize| "x".repeat(n);
    let base = card("ok", "", &[]);
    let with = |f: &dyn Fn(&mut pb::AgentCard)| {
        let mut card = base.clone();
        f(&mut card);
        card
    };
    let cases: Vec<(&str, pb::AgentCard, u32, &str)> = vec![
        ("empty name", with(&|c| c.name.clear()), 10, "card.name"),
        ("257-byte name", with(&|c| c.name = long(257)), 10, "card.name"),
        ("tab in name", with(&|c| c.name = "tab\there".into()), 10, "card.name"),
        (
            "newline in name",
            with(&|c| c.name = "line\nbreak".into()),
            10,
            "card.name",
        ),
        ("NUL in name", with(&|c| c.name = "nul\0".into()), 10, "card.name"),
        ("DEL in name", with(&|c| c.name = "del\u{7f}".into()), 10, "card.name"),
        (
            "8 KiB + 1 description",
            with(&|c| c.description = long(8 * 1024 + 1)),
            10,
            "card.description",
        ),
        ("65-byte version", with(&|c| c.version = long(65)), 10, "card.version"),
        (
            "257 tools",
            with(&|c| c.tools = (0..257).map(|i| format!("t{i}")).collect()),
            10,
            "card.tools",
        ),
        ("129-byte tool", with(&|c| c.tools = vec![long(129)]), 10, "card.tools"),
        ("empty tool", with(&|c| c.tools = vec![String::new()]), 10, "card.tools"),
        (
            "257 capabilities",
            with(&|c| c.capabilities = vec![pb::Capability::default(); 257]),
            10,
            "card.capabilities",
        ),
        (
            "65 metadata entries",
            with(&|c| c.metadata = (0..65).map(|i| (format!("k{i}"), "v".into())).collect()),
            10,
            "card.metadata",
        ),
        (
            "129-byte metadata key",
            with(&|c| c.metadata = [(long(129), "v".to_string())].into()),
            10,
            "card.metadata",
        ),
        (
            "1 KiB + 1 metadata value",
            with(&|c| c.metadata = [("k".to_string(), long(1025))].into()),
            10,
            "card.metadata",
        ),
        ("ttl 86401", base.clone(), 86_401, "ttl_seconds"),
        ("ttl u32::MAX", base.clone(), u32::MAX, "ttl_seconds"),
    ];
    for (what, bad, ttl_seconds, field) in cases {
        let request = pb::RegisterRequest {
            card: Some(bad),
            ttl_seconds,
        };
        let outcome = c.registry.register(request).await.map(|_| ());
        assert_invalid(&mut c, what, outcome, field).await;
    }
    let missing = pb::RegisterRequest {
        card: None,
        ttl_seconds: 10,
    };
    let outcome = c.registry.register(missing).await.map(|_| ());
    assert_invalid(&mut c, "no card", outcome, "card.name").await;
    assert!(c.find("", &[], 0).await.is_empty(), "nothing was registered");

    // The limits themselves are allowed.
    let mut edge = with(&|c| c.name = long(256));
    edge.description = long(8 * 1024);
    edge.version = long(64);
    edge.tools = (0..256).map(|i| format!("{i:0>128}")).collect();
    edge.metadata = (0..64).map(|i| (format!("{i:0>128}"), long(1024))).collect();
    let request = pb::RegisterRequest {
        card: Some(edge.clone()),
        ttl_seconds: 86_400,
    };
    let id = c
        .registry
        .register(request)
        .await
        .expect("the limits are allowed")
        .into_inner()
        .agent_id;
    assert_eq!(c.agent(&id).await.unwrap().card, Some(edge));
    let unicode = c.register("agent ünïcødé 🤖", &[], 0).await;
    assert_eq!(c.agent(&unicode).await.unwrap().card.unwrap().name, "agent ünïcødé 🤖");
}

#[tokio::test]
async fn invalid_lease_requests_are_rejected_naming_the_field() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    for (what, task_id, ttl_seconds, field) in [
        ("empty task_id", String::new(), 10, "task_id"),
        ("1025-byte task_id", "k".repeat(1025), 10, "task_id"),
        ("ttl 86401", "k".to_string(), 86_401, "ttl_seconds"),
    ] {
        let outcome = c.try_acquire(&task_id, &a, ttl_seconds).await.map(|_| ());
        assert_invalid(&mut c, what, outcome, field).await;
    }
    let (lease, acquired) = c.acquire(&"k".repeat(1024), &a, 0).await;
    assert!(acquired, "a 1024-byte task_id is allowed");
    let outcome = c
        .renew(&lease.task_id, &a, common::token_of(&lease), 86_401)
        .await
        .map(|_| ());
    assert_invalid(&mut c, "renew with ttl 86401", outcome, "ttl_seconds").await;
}

#[tokio::test]
async fn invalid_election_groups_are_rejected_naming_the_field() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    for (what, group) in [("empty group", String::new()), ("257-byte group", "g".repeat(257))] {
        let outcome = c.try_campaign(&group, &a).await.map(|_| ());
        assert_invalid(&mut c, &format!("campaign with {what}"), outcome, "group").await;
        let outcome = c.resign(&group, &a).await;
        assert_invalid(&mut c, &format!("resign with {what}"), outcome, "group").await;
        let request = pb::WatchElectionRequest { group };
        let outcome = c.elections.watch_election(request).await.map(|_| ());
        assert_invalid(&mut c, &format!("watch_election with {what}"), outcome, "group").await;
    }
    assert_eq!(
        c.campaign(&"g".repeat(256), &a).await.term,
        1,
        "a 256-byte group is allowed"
    );
}

fn policy(id: &str, subject: &str, action: &str, resource: &str, effect: pb::PolicyEffect) -> pb::SetPolicyRequest {
    pb::SetPolicyRequest {
        policy: Some(pb::Policy {
            id: id.into(),
            subject: subject.into(),
            action: action.into(),
            resource: resource.into(),
            effect: effect as i32,
        }),
    }
}

#[tokio::test]
async fn invalid_policies_are_rejected_naming_the_field() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    use pb::PolicyEffect::{Allow, Unspecified};
    let long = "s".repeat(1025);
    let cases = [
        (
            "effect UNSPECIFIED",
            policy("p", "a", "b", "c", Unspecified),
            "policy.effect",
        ),
        ("empty id", policy("", "a", "b", "c", Allow), "policy.id"),
        (
            "257-byte id",
            policy(&"p".repeat(257), "a", "b", "c", Allow),
            "policy.id",
        ),
        ("empty subject", policy("p", "", "b", "c", Allow), "policy.subject"),
        (
            "1025-byte subject",
            policy("p", &long, "b", "c", Allow),
            "policy.subject",
        ),
        ("empty action", policy("p", "a", "", "c", Allow), "policy.action"),
        (
            "1025-byte resource",
            policy("p", "a", "b", &long, Allow),
            "policy.resource",
        ),
    ];
    for (what, request, field) in cases {
        let outcome = c.policies.set_policy(request).await.map(|_| ());
        assert_invalid(&mut c, what, outcome, field).await;
    }
    let mut unknown_effect = policy("p", "a", "b", "c", Allow);
    unknown_effect.policy.as_mut().unwrap().effect = 7;
    let outcome = c.policies.set_policy(unknown_effect).await.map(|_| ());
    assert_invalid(&mut c, "effect 7", outcome, "policy.effect").await;
    let outcome = c
        .policies
        .set_policy(pb::SetPolicyRequest { policy: None })
        .await
        .map(|_| ());
    assert_invalid(&mut c, "no policy", outcome, "policy.id").await;
    let listed = c
        .policies
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .unwrap();
    assert!(listed.into_inner().policies.is_empty(), "nothing was stored");
}

#[tokio::test]
async fn ids_that_cannot_exist_are_not_found_everywhere() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    for id in [UNKNOWN_ID, "not-hex-at-all", "", "ÄÖÜ", &"f".repeat(10_000)] {
        assert_eq!(
            c.agent(id).await.unwrap_err().code(),
            Code::NotFound,
            "get_agent {id:.20?}"
        );
        assert_eq!(
            c.heartbeat(id).await.unwrap_err().code(),
            Code::NotFound,
            "heartbeat {id:.20?}"
        );
        assert_eq!(
            c.deregister(id).await.unwrap_err().code(),
            Code::NotFound,
            "deregister {id:.20?}"
        );
        let acquire = c.try_acquire("k", id, 10).await.map(|_| ()).unwrap_err();
        assert_eq!(acquire.code(), Code::NotFound, "acquire by {id:.20?}");
        let campaign = c.try_campaign("g", id).await.map(|_| ()).unwrap_err();
        assert_eq!(campaign.code(), Code::NotFound, "campaign by {id:.20?}");
    }
    c.register("still-serving", &[], 10).await;
}
