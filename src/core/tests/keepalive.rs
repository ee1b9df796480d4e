//! Keep-alive batches: each item answered as its unary call, in order; a bad batch refused whole
//! with nothing changed; the agent token checked per item.

use super::*;
use crate::limits::KEEPALIVE_ITEMS_MAX;

fn heartbeats(ids: &[&str]) -> Command {
    Command::KeepAlive {
        items: ids
            .iter()
            .map(|id| Command::Heartbeat {
                agent_id: id.to_string(),
            })
            .collect(),
    }
}

fn answers(reply: Reply) -> Vec<Outcome> {
    match reply {
        Reply::KeepAlive(answers) => answers,
        other => panic!("not a keep-alive answer: {other:?}"),
    }
}

/// Asserts that `command` is refused INVALID_ARGUMENT with `message` and changes nothing.
fn assert_refused_whole(h: &mut Harness, command: Command, message: &str) {
    h.topics();
    let (before, stats) = (h.core.snapshot(), h.core.stats());
    let error = h.err(command);
    assert_eq!(error.code, ErrorCode::InvalidArgument, "{error}");
    assert!(
        error.message.contains(message),
        "{:?} should say {message:?}",
        error.message
    );
    assert_eq!(h.core.snapshot(), before, "a refused batch changed the state");
    assert_eq!(h.core.stats(), stats);
    assert!(h.topics().is_empty(), "a refused batch emitted an event");
}

#[test]
fn a_heartbeat_batch_answers_each_agent_in_order_and_keeps_the_known_ones_alive() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 10);
    let b = h.register("b", &[], 10);
    h.advance(9 * SECOND);
    let reply = h.ok(heartbeats(&[&a, "0123456789abcdef0123456789abcdef", &b]));
    let answers = answers(reply);
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0], Ok(Reply::Done));
    let unknown = answers[1].as_ref().unwrap_err();
    assert_eq!(unknown.code, ErrorCode::NotFound);
    assert!(unknown.message.contains("not found"), "{}", unknown.message);
    assert_eq!(answers[2], Ok(Reply::Done));
    h.advance(9 * SECOND);
    assert_eq!(
        h.agent(&a).status,
        AgentStatus::Alive,
        "18 s after registering, 9 s after the batch"
    );
    assert_eq!(h.agent(&b).status, AgentStatus::Alive);
    assert_eq!(h.agent(&a).last_heartbeat_at, T0 + 9 * SECOND);
}

#[test]
fn a_batch_recovers_an_unreachable_agent_as_a_heartbeat_does() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 1);
    h.advance(1500);
    assert_eq!(h.agent(&a).status, AgentStatus::Unreachable);
    h.topics();
    assert_eq!(answers(h.ok(heartbeats(&[&a]))), vec![Ok(Reply::Done)]);
    assert_eq!(h.agent(&a).status, AgentStatus::Alive);
    assert_eq!(h.topics(), ["agent.recovered"]);
}

#[test]
fn a_renewal_batch_renews_held_leases_and_says_which_were_lost_or_not_held() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 60);
    let b = h.register("b", &[], 60);
    let (held, _) = h.acquire("held", &a, 10);
    let (other, _) = h.acquire("other", &b, 10);
    let (lost, _) = h.acquire("lost", &a, 1);
    h.advance(2 * SECOND);
    let renew = |key: &str, agent: &str, token| Command::RenewLease {
        task_id: key.into(),
        agent_id: agent.into(),
        token,
        ttl_seconds: 0,
    };
    let batch = Command::KeepAlive {
        items: vec![
            renew("held", &a, held.token),
            renew("lost", &a, lost.token),
            renew("other", &a, other.token),
            renew("held", &a, held.token + 100),
        ],
    };
    let answers = answers(h.ok(batch));
    match &answers[0] {
        Ok(Reply::Lease { lease, .. }) => {
            assert_eq!(lease.expires_at, h.now + 10 * SECOND);
            assert_eq!(lease.token, held.token);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        answers[1].as_ref().unwrap_err().code,
        ErrorCode::NotFound,
        "expired: lost"
    );
    assert_eq!(
        answers[2].as_ref().unwrap_err().code,
        ErrorCode::PermissionDenied,
        "held by b"
    );
    let mismatch = answers[3].as_ref().unwrap_err();
    assert_eq!(mismatch.code, ErrorCode::PermissionDenied);
    assert!(mismatch.message.starts_with("token mismatch"), "{}", mismatch.message);
}

#[test]
fn an_empty_an_oversized_or_a_mixed_batch_is_refused_whole_and_changes_nothing() {
    let mut h = Harness::new();
    let a = h.register("a", &[], 10);
    assert_refused_whole(
        &mut h,
        Command::KeepAlive { items: vec![] },
        "1 to 10000 items, this one 0",
    );
    let many = vec![a.as_str(); KEEPALIVE_ITEMS_MAX + 1];
    assert_refused_whole(&mut h, heartbeats(&many), "this one 10001");
    let mixed = Command::KeepAlive {
        items: vec![
            Command::Heartbeat { agent_id: a.clone() },
            Command::Deregister { agent_id: a.clone() },
        ],
    };
    assert_refused_whole(&mut h, mixed, "not a Deregister");
    let nested = Command::KeepAlive {
        items: vec![heartbeats(&[&a])],
    };
    assert_refused_whole(&mut h, nested, "not a KeepAlive");
    let full = vec![a.as_str(); KEEPALIVE_ITEMS_MAX];
    assert_eq!(answers(h.ok(heartbeats(&full))).len(), KEEPALIVE_ITEMS_MAX);
}

#[test]
fn an_agent_token_keeps_alive_only_its_own_agents_item_by_item() {
    let mut h = Harness::new();
    let (mine, theirs) = (TokenId([1; 16]), TokenId([2; 16]));
    let mut register = |token| {
        let card = AgentCard {
            name: "bound".into(),
            ..AgentCard::default()
        };
        match h.core.apply_as(
            h.now,
            Command::Register {
                card: Box::new(card),
                ttl_seconds: 10,
                vector: None,
            },
            Some(token),
        ) {
            Ok(Reply::Registered { agent_id }) => agent_id.to_string(),
            other => panic!("{other:?}"),
        }
    };
    let (own, foreign) = (register(mine), register(theirs));
    let reply = h.core.apply_as(h.now, heartbeats(&[&own, &foreign]), Some(mine));
    let answers = answers(reply.expect("the batch is well-formed"));
    assert_eq!(answers[0], Ok(Reply::Done));
    let refused = answers[1].as_ref().unwrap_err();
    assert_eq!(refused.code, ErrorCode::PermissionDenied);
    assert!(
        refused.message.contains("not registered with this agent token"),
        "{}",
        refused.message
    );
}

#[test]
fn a_batch_is_logged_as_one_write_and_a_batch_holding_a_read_is_not() {
    let a = "0123456789abcdef0123456789abcdef";
    assert!(heartbeats(&[a]).is_logged());
    let with_read = Command::KeepAlive {
        items: vec![Command::GetAgent { agent_id: a.into() }],
    };
    assert!(!with_read.is_logged(), "refused whole, so nothing to log");
}
