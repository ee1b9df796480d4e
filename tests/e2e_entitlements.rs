//! End to end: entitlements: DENY over ALLOW, the deterministic reason, default deny, `*`
//! patterns, upsert, listing and deletion.

mod common;

use agentkeeper::proto as pb;
use common::{Clients, Daemon};
use pb::PolicyEffect::{Allow, Deny};
use tonic::Code;

fn policy(id: &str, subject: &str, action: &str, resource: &str, effect: pb::PolicyEffect) -> pb::Policy {
    pb::Policy {
        id: id.into(),
        subject: subject.into(),
        action: action.into(),
        resource: resource.into(),
        effect: effect as i32,
    }
}

async fn set(c: &mut Clients, policy: pb::Policy) -> pb::Policy {
    let request = pb::SetPolicyRequest {
        policy: Some(policy.clone()),
    };
    let stored = c
        .policies
        .set_policy(request)
        .await
        .expect("set_policy")
        .into_inner()
        .policy;
    assert_eq!(stored.as_ref(), Some(&policy), "SetPolicy answers with the policy");
    policy
}

async fn check(c: &mut Clients, subject: &str, action: &str, resource: &str) -> (bool, String) {
    let request = pb::CheckPolicyRequest {
        subject: subject.into(),
        action: action.into(),
        resource: resource.into(),
    };
    let reply = c
        .policies
        .check_policy(request)
        .await
        .expect("check_policy")
        .into_inner();
    (reply.allowed, reply.reason)
}

fn allowed(id: &str) -> (bool, String) {
    (true, format!("allowed by policy \"{id}\""))
}

fn denied(id: &str) -> (bool, String) {
    (false, format!("denied by policy \"{id}\""))
}

fn default_deny() -> (bool, String) {
    (false, "no matching policy: default deny".to_string())
}

async fn list(c: &mut Clients, prefix: &str) -> Vec<pb::Policy> {
    let request = pb::ListPoliciesRequest {
        subject_prefix: prefix.into(),
        ..Default::default()
    };
    c.policies
        .list_policies(request)
        .await
        .expect("list_policies")
        .into_inner()
        .policies
}

#[tokio::test]
async fn with_no_policies_everything_is_denied_by_default() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    assert_eq!(check(&mut c, "agent:a", "call", "tool:x").await, default_deny());
    assert_eq!(check(&mut c, "", "", "").await, default_deny());
    set(&mut c, policy("p", "agent:a", "call", "tool:x", Allow)).await;
    assert_eq!(check(&mut c, "agent:b", "call", "tool:x").await, default_deny());
    assert_eq!(check(&mut c, "agent:a", "read", "tool:x").await, default_deny());
    assert_eq!(check(&mut c, "agent:a", "call", "tool:y").await, default_deny());
    assert_eq!(
        check(&mut c, "Agent:a", "call", "tool:x").await,
        default_deny(),
        "case-sensitive"
    );
    assert_eq!(check(&mut c, "agent:a", "call", "tool:x").await, allowed("p"));
}

#[tokio::test]
async fn a_matching_deny_beats_any_allow() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    set(&mut c, policy("a-allow", "agent:*", "*", "*", Allow)).await;
    set(
        &mut c,
        policy("z-deny", "agent:scraper", "call", "tool:write_file", Deny),
    )
    .await;
    assert_eq!(
        check(&mut c, "agent:scraper", "call", "tool:write_file").await,
        denied("z-deny"),
        "DENY wins even though the ALLOW has the smaller id"
    );
    assert_eq!(
        check(&mut c, "agent:scraper", "call", "tool:read_file").await,
        allowed("a-allow")
    );
    assert_eq!(
        check(&mut c, "agent:other", "call", "tool:write_file").await,
        allowed("a-allow")
    );
}

#[tokio::test]
async fn the_smallest_matching_id_is_named_when_several_match() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    // Set in an order that is neither sorted nor reverse-sorted.
    for p in [
        policy("m-allow", "agent:*", "call", "tool:*", Allow),
        policy("b-allow", "*", "call", "*", Allow),
        policy("x-allow", "agent:scraper", "call", "tool:read", Allow),
        policy("k-deny", "agent:scraper", "*", "tool:write_*", Deny),
        policy("c-deny", "*", "call", "tool:write_file", Deny),
        policy("q-deny", "agent:*", "call", "*file", Deny),
    ] {
        set(&mut c, p).await;
    }
    assert_eq!(
        check(&mut c, "agent:scraper", "call", "tool:write_file").await,
        denied("c-deny")
    );
    assert_eq!(
        check(&mut c, "agent:scraper", "call", "tool:write_log").await,
        denied("k-deny")
    );
    assert_eq!(
        check(&mut c, "agent:x", "call", "tool:read_file").await,
        denied("q-deny")
    );
    assert_eq!(
        check(&mut c, "agent:scraper", "call", "tool:read").await,
        allowed("b-allow")
    );
    assert_eq!(check(&mut c, "user:x", "call", "anything").await, allowed("b-allow"));
    assert_eq!(
        check(&mut c, "agent:scraper", "write", "tool:read").await,
        default_deny()
    );
}

#[tokio::test]
async fn a_star_matches_any_run_including_empty_and_colons() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    set(&mut c, policy("prefix", "agent:*", "call", "tool:x", Allow)).await;
    set(&mut c, policy("infix", "team:*:lead", "approve", "*", Allow)).await;
    set(&mut c, policy("suffix", "*@example.com", "mail", "*", Allow)).await;
    set(&mut c, policy("many", "svc", "*:*", "db:*:table:*", Allow)).await;
    set(&mut c, policy("all", "*", "*", "*", Deny)).await;

    for (subject, action, resource, expected) in [
        ("agent:", "call", "tool:x", allowed("prefix")),
        ("agent:a:b:c", "call", "tool:x", allowed("prefix")),
        ("agent", "call", "tool:x", default_deny()),
        ("team::lead", "approve", "", allowed("infix")),
        ("team:a:b:lead", "approve", "r", allowed("infix")),
        ("team:lead", "approve", "r", default_deny()),
        ("@example.com", "mail", "x", allowed("suffix")),
        ("bob:x@example.com", "mail", "x", allowed("suffix")),
        ("bob@example.org", "mail", "x", default_deny()),
        ("svc", ":", "db::table:", allowed("many")),
        ("svc", "read:write", "db:eu:1:table:users", allowed("many")),
        ("svc", "read", "db:eu:table:users", default_deny()),
    ] {
        // The catch-all DENY is deleted and re-set around each check, so both sides are tested.
        let outcome = check(&mut c, subject, action, resource).await;
        assert_eq!(
            outcome,
            denied("all"),
            "{subject:?} {action:?} {resource:?}: the catch-all DENY"
        );
        c.policies
            .delete_policy(pb::DeletePolicyRequest { id: "all".into() })
            .await
            .unwrap();
        let outcome = check(&mut c, subject, action, resource).await;
        assert_eq!(outcome, expected, "{subject:?} {action:?} {resource:?}");
        set(&mut c, policy("all", "*", "*", "*", Deny)).await;
    }
}

#[tokio::test]
async fn set_policy_is_an_upsert_by_id() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    set(&mut c, policy("p", "agent:a", "call", "tool:x", Allow)).await;
    assert_eq!(check(&mut c, "agent:a", "call", "tool:x").await, allowed("p"));
    let replaced = set(&mut c, policy("p", "agent:b", "call", "tool:x", Deny)).await;
    assert_eq!(
        check(&mut c, "agent:a", "call", "tool:x").await,
        default_deny(),
        "the old rule is gone"
    );
    assert_eq!(check(&mut c, "agent:b", "call", "tool:x").await, denied("p"));
    assert_eq!(list(&mut c, "").await, [replaced], "one policy, replaced");

    // An upsert that moves every field, literals to stars and back.
    set(&mut c, policy("p", "*", "read", "tool:*", Allow)).await;
    assert_eq!(check(&mut c, "agent:b", "call", "tool:x").await, default_deny());
    assert_eq!(check(&mut c, "anyone", "read", "tool:z").await, allowed("p"));
    set(&mut c, policy("p", "agent:c", "*", "*", Deny)).await;
    assert_eq!(check(&mut c, "anyone", "read", "tool:z").await, default_deny());
    assert_eq!(check(&mut c, "agent:c", "x", "y").await, denied("p"));
    c.policies
        .delete_policy(pb::DeletePolicyRequest { id: "p".into() })
        .await
        .unwrap();
    assert_eq!(
        check(&mut c, "agent:c", "x", "y").await,
        default_deny(),
        "deleted after upserts"
    );
    assert!(list(&mut c, "").await.is_empty());
}

#[tokio::test]
async fn everything_but_a_star_is_literal() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    set(&mut c, policy("dot", "a.b", "x", "y", Allow)).await;
    set(&mut c, policy("question", "q?", "x", "y", Allow)).await;
    set(&mut c, policy("class", "[ab]", "x", "y", Allow)).await;
    set(&mut c, policy("escape", "e\\*", "x", "y", Allow)).await;
    for (subject, expected) in [
        ("a.b", allowed("dot")),
        ("axb", default_deny()),
        ("q?", allowed("question")),
        ("qx", default_deny()),
        ("q", default_deny()),
        ("[ab]", allowed("class")),
        ("a", default_deny()),
        ("e\\", allowed("escape")),
        ("e\\anything", allowed("escape")),
        ("e*", default_deny()),
    ] {
        assert_eq!(check(&mut c, subject, "x", "y").await, expected, "{subject:?}");
    }
}

#[tokio::test]
async fn list_policies_is_sorted_by_id_and_filters_by_subject_prefix() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut stored = Vec::new();
    for (id, subject) in [
        ("z", "agent:b"),
        ("m", "agent:a"),
        ("a", "user:x"),
        ("b10", "agent:*"),
        ("b2", "*"),
    ] {
        stored.push(set(&mut c, policy(id, subject, "r", "x", Allow)).await);
    }
    stored.sort_by(|x, y| x.id.cmp(&y.id));
    let ids = |policies: Vec<pb::Policy>| policies.into_iter().map(|p| p.id).collect::<Vec<_>>();
    let all = list(&mut c, "").await;
    assert_eq!(all, stored, "every field round-trips, sorted by id");
    assert_eq!(ids(all), ["a", "b10", "b2", "m", "z"], "byte order");
    assert_eq!(ids(list(&mut c, "agent:").await), ["b10", "m", "z"]);
    assert_eq!(ids(list(&mut c, "agent:a").await), ["m"]);
    assert_eq!(ids(list(&mut c, "*").await), ["b2"], "a plain prefix, not a pattern");
    assert!(list(&mut c, "nobody").await.is_empty());
    assert!(list(&mut c, "Agent:").await.is_empty(), "case-sensitive");
}

#[tokio::test]
async fn delete_policy_removes_it_and_an_unknown_id_is_not_found() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    set(&mut c, policy("p", "agent:*", "call", "*", Allow)).await;
    set(&mut c, policy("q", "agent:*", "read", "*", Allow)).await;
    let delete = |id: &str| pb::DeletePolicyRequest { id: id.into() };
    c.policies.delete_policy(delete("p")).await.unwrap();
    assert_eq!(check(&mut c, "agent:a", "call", "x").await, default_deny());
    assert_eq!(check(&mut c, "agent:a", "read", "x").await, allowed("q"));
    assert_eq!(list(&mut c, "").await.len(), 1);
    let error = c.policies.delete_policy(delete("p")).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "deleted twice: {error:?}");
    assert!(error.message().contains("not found"), "{}", error.message());
    let error = c.policies.delete_policy(delete("never")).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = c.policies.delete_policy(delete("")).await.unwrap_err();
    assert!(
        matches!(error.code(), Code::NotFound | Code::InvalidArgument),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_v1_list_policies_gets_the_whole_list_and_a_paged_one_follows_tokens() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    for i in 0..2500 {
        let subject = if i % 100 == 7 {
            format!("team:t{i}")
        } else {
            format!("agent:a{i}")
        };
        let policy = pb::Policy {
            id: format!("p{i:05}"),
            subject,
            action: "call".into(),
            resource: "tool:*".into(),
            effect: pb::PolicyEffect::Allow as i32,
        };
        c.policies
            .set_policy(pb::SetPolicyRequest { policy: Some(policy) })
            .await
            .unwrap();
    }
    // No page size, as v1 sends it: every policy, though the core answers 1000 a command.
    let all = list(&mut c, "").await;
    assert_eq!(all.len(), 2500);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "sorted by id");
    let teams = list(&mut c, "team:").await;
    assert_eq!(teams.len(), 25);
    // With a page size: pages by id, each token going on after the last id shown.
    let mut page_token = String::new();
    let mut seen = Vec::new();
    loop {
        let request = pb::ListPoliciesRequest {
            subject_prefix: "agent:".into(),
            page_size: 1000,
            page_token,
        };
        let page = c.policies.list_policies(request).await.unwrap().into_inner();
        assert!(page.policies.len() <= 1000);
        seen.extend(page.policies.into_iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), 2475);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "no policy twice, none out of order"
    );
}
