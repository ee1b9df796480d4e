//! End to end: `--auth-tokens`. No token or an unknown one is UNAUTHENTICATED; a role that may
//! not call a method is PERMISSION_DENIED naming the role needed; an agent token acts only for
//! the agents it registered, across a crash and an edited token file (the binding is core state,
//! kept by the token's digest); health checks stay open; no token value reaches the logs.

mod common;

use agentkeeper::proto as pb;
use common::{Clients, Daemon, card};
use tonic::{Code, Request, Status};

const ADMIN: &str = "admin-token-0123456789abcdef";
const ORCHESTRATOR: &str = "orchestrator-token-0123456789";
const AGENT: &str = "agent-token-0123456789abcdef";
const OTHER_AGENT: &str = "other-agent-token-0123456789";
const READER: &str = "reader-token-0123456789abcdef";

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("an ASCII header value");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn daemon() -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_with_tokens(dir.path(), &[]);
    (daemon, dir)
}

/// A daemon whose token file (in `dir`) lists every token, in a fixed order; `extra` flags.
fn start_with_tokens(dir: &std::path::Path, extra: &[&str]) -> Daemon {
    let path = dir.join("tokens");
    let text = format!(
        "# role token\nadmin {ADMIN}\norchestrator {ORCHESTRATOR}\nagent {AGENT}\nagent {OTHER_AGENT}\nreader {READER}\n"
    );
    std::fs::write(&path, text).unwrap();
    let mut flags = vec![format!("--auth-tokens={}", path.display())];
    flags.extend(extra.iter().map(|f| f.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // The harness's readiness probe has no token: UNAUTHENTICATED counts as serving.
    Daemon::start(&flags)
}

async fn register(c: &mut Clients, token: Option<&str>) -> Result<String, Status> {
    let request = pb::RegisterRequest {
        card: Some(card("a", "", &[])),
        ttl_seconds: 60,
    };
    Ok(c.registry
        .register(with_token(request, token))
        .await?
        .into_inner()
        .agent_id)
}

async fn heartbeat(c: &mut Clients, agent_id: &str, token: Option<&str>) -> Result<(), Status> {
    let request = pb::HeartbeatRequest {
        agent_id: agent_id.into(),
    };
    c.registry.heartbeat(with_token(request, token)).await.map(|_| ())
}

async fn set_policy(c: &mut Clients, token: Option<&str>) -> Result<(), Status> {
    let policy = pb::Policy {
        id: "p".into(),
        subject: "s".into(),
        action: "a".into(),
        resource: "r".into(),
        effect: pb::PolicyEffect::Allow as i32,
    };
    let request = pb::SetPolicyRequest { policy: Some(policy) };
    c.policies.set_policy(with_token(request, token)).await.map(|_| ())
}

/// An agent registered with AGENT's token, and one with OTHER_AGENT's.
async fn mine_and_theirs(c: &mut Clients) -> (String, String) {
    let mine = register(c, Some(AGENT)).await.expect("an agent registers");
    let theirs = register(c, Some(OTHER_AGENT)).await.expect("another agent registers");
    (mine, theirs)
}

#[tokio::test]
async fn calls_without_a_known_token_are_unauthenticated() {
    let (daemon, _dir) = daemon();
    let mut c = daemon.clients().await;
    let none = register(&mut c, None).await.expect_err("no token");
    assert_eq!(none.code(), Code::Unauthenticated, "{none:?}");
    let unknown = register(&mut c, Some("not-a-token-0123456789abcdef"))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::Unauthenticated, "{unknown:?}");
    let listed = c
        .policies
        .list_policies(with_token(pb::ListPoliciesRequest::default(), None))
        .await
        .expect_err("reads need a token too");
    assert_eq!(listed.code(), Code::Unauthenticated);
    let health = tonic_health::pb::health_client::HealthClient::new(daemon.channel().await)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health checks need no token");
    assert_eq!(health.into_inner().status, 1, "SERVING");
    let stderr = daemon.stderr();
    for token in [ADMIN, ORCHESTRATOR, AGENT, OTHER_AGENT, READER, "not-a-token"] {
        assert!(!stderr.contains(token), "a token reached the log");
    }
}

#[tokio::test]
async fn each_role_may_call_only_its_methods_and_a_refusal_names_the_role_needed() {
    let (daemon, _dir) = daemon();
    let mut c = daemon.clients().await;
    set_policy(&mut c, Some(ADMIN)).await.expect("admin sets policies");
    for token in [ORCHESTRATOR, AGENT, READER] {
        let refused = set_policy(&mut c, Some(token)).await.expect_err("only admin");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("needs the admin role"), "{refused:?}");
    }
    let find = |token| {
        let mut c = c.registry.clone();
        async move { c.find(with_token(pb::FindRequest::default(), Some(token))).await }
    };
    find(ORCHESTRATOR).await.expect("an orchestrator finds");
    find(ADMIN).await.expect("admin may do everything");
    let refused = find(READER).await.expect_err("a reader may not find");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "Find needs the orchestrator or admin role; this token is reader"
    );
    let refused = register(&mut c, Some(READER))
        .await
        .expect_err("a reader may not register");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    c.policies
        .list_policies(with_token(pb::ListPoliciesRequest::default(), Some(READER)))
        .await
        .expect("a reader reads");
}

#[tokio::test]
async fn a_keep_alive_stream_acts_for_its_token_s_agents_only_and_needs_a_token() {
    let (daemon, _dir) = daemon();
    let mut c = daemon.clients().await;
    let (mine, theirs) = mine_and_theirs(&mut c).await;
    let message = pb::KeepAliveRequest {
        agent_ids: vec![mine.clone(), theirs.clone()],
        batch_id: 1,
    };
    let messages = tokio_stream::iter(vec![message]);
    let mut answers = (c.registry)
        .keep_alive(with_token(messages, Some(AGENT)))
        .await
        .expect("an agent opens a stream")
        .into_inner();
    let answer = answers.message().await.expect("answered").expect("one answer");
    let codes: Vec<Code> = answer.results.iter().map(|r| Code::from_i32(r.code)).collect();
    assert_eq!(codes, [Code::Ok, Code::PermissionDenied], "its own agent only");
    assert!(
        answer.results[1]
            .message
            .contains("not registered with this agent token"),
        "{:?}",
        answer.results[1]
    );
    let refused = (c.registry)
        .keep_alive(with_token(
            tokio_stream::iter(vec![pb::KeepAliveRequest::default()]),
            None,
        ))
        .await
        .expect_err("no token, no stream");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}

#[tokio::test]
async fn an_agent_token_acts_only_for_the_agents_it_registered() {
    let (daemon, _dir) = daemon();
    let mut c = daemon.clients().await;
    let (mine, theirs) = mine_and_theirs(&mut c).await;
    let by_orchestrator = register(&mut c, Some(ORCHESTRATOR))
        .await
        .expect("an orchestrator registers");
    heartbeat(&mut c, &mine, Some(AGENT)).await.expect("its own heartbeat");
    for other in [&theirs, &by_orchestrator] {
        let refused = heartbeat(&mut c, other, Some(AGENT)).await.expect_err("not its agent");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("not registered with this agent token"),
            "{refused:?}"
        );
    }
    heartbeat(&mut c, &theirs, Some(ORCHESTRATOR))
        .await
        .expect("an orchestrator heartbeats any agent");
    let acquire = |agent: &str, token: &str| {
        let request = pb::AcquireLeaseRequest {
            task_id: "k".into(),
            agent_id: agent.into(),
            ttl_seconds: 60,
        };
        let mut leases = c.leases.clone();
        let token = token.to_string();
        async move { leases.acquire_lease(with_token(request, Some(&token))).await }
    };
    let refused = acquire(&theirs, AGENT).await.expect_err("a lease for another's agent");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let lease = acquire(&mine, AGENT).await.expect("its own lease").into_inner();
    assert!(lease.acquired);
    let release = pb::ReleaseLeaseRequest {
        task_id: "k".into(),
        agent_id: mine.clone(),
        token: lease.lease.as_ref().and_then(|l| l.token),
    };
    let refused = c
        .leases
        .release_lease(with_token(release, Some(OTHER_AGENT)))
        .await
        .expect_err("another agent token cannot release it");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("not registered with this agent token"),
        "{refused:?}"
    );
    let deregister = pb::DeregisterRequest { agent_id: mine.clone() };
    let refused = c
        .registry
        .deregister(with_token(deregister.clone(), Some(OTHER_AGENT)))
        .await
        .expect_err("not its agent");
    assert_eq!(refused.code(), Code::PermissionDenied);
    c.registry
        .deregister(with_token(deregister, Some(AGENT)))
        .await
        .expect("its own deregistration");
}

#[tokio::test]
async fn an_agent_tokens_bindings_survive_a_crash_and_an_edited_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_flag = format!("--data-dir={}", data.display());
    let mut first = start_with_tokens(dir.path(), &[&data_flag]);
    let (mine, theirs) = {
        let mut c = first.clients().await;
        let mine = register(&mut c, Some(AGENT)).await.expect("an agent registers");
        let theirs = register(&mut c, Some(OTHER_AGENT))
            .await
            .expect("another agent registers");
        (mine, theirs)
    };
    first.kill_9();
    // The operator reorders the file and adds a token: lines move, the tokens stay the same.
    let path = dir.path().join("tokens");
    let text = format!(
        "reader {READER}\nagent {OTHER_AGENT}\nagent new-agent-token-0123456789\nadmin {ADMIN}\nagent {AGENT}\n"
    );
    std::fs::write(&path, text).unwrap();
    let second = Daemon::start(&[&format!("--auth-tokens={}", path.display()), &data_flag]);
    let mut c = second.clients().await;
    heartbeat(&mut c, &mine, Some(AGENT))
        .await
        .expect("its own agent, after the restart");
    heartbeat(&mut c, &theirs, Some(OTHER_AGENT))
        .await
        .expect("the other token's own agent, after the restart");
    for (agent, token) in [
        (&mine, OTHER_AGENT),
        (&theirs, AGENT),
        (&mine, "new-agent-token-0123456789"),
    ] {
        let refused = heartbeat(&mut c, agent, Some(token))
            .await
            .expect_err("still not its agent after the restart");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    // Deregistered by its own token, it is DEAD like any (its binding is forgotten with it once
    // its retention is over: the core's unit tests show that with a manual clock).
    let deregister = pb::DeregisterRequest { agent_id: mine.clone() };
    c.registry
        .deregister(with_token(deregister, Some(AGENT)))
        .await
        .expect("its own deregistration");
    let refused = heartbeat(&mut c, &mine, Some(AGENT))
        .await
        .expect_err("dead: register again");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
}
