//! End to end: the keep-alive streams (RegistryService.KeepAlive, LeaseService.KeepAlive) over
//! real gRPC: many agents' heartbeats and many leases' renewals per message, a result per item,
//! the daemon's keep-alive metrics, bad messages refused with nothing changed, a data dir that
//! replays a batch, and a cluster follower that forwards one.

mod common;

use std::time::Duration;

use agentkeeper::proto as pb;
use common::cluster::Cluster;
use common::{Clients, Daemon, UNKNOWN_ID, ms, token_of, wait_until};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

/// An open heartbeat stream: a sender for its messages and its answers.
struct HeartbeatStream {
    send: mpsc::Sender<pb::KeepAliveRequest>,
    answers: Streaming<pb::KeepAliveResponse>,
}

impl HeartbeatStream {
    async fn open(c: &mut Clients) -> HeartbeatStream {
        let (send, receive) = mpsc::channel(16);
        let answers = (c.registry.keep_alive(ReceiverStream::new(receive)).await)
            .expect("the stream opens")
            .into_inner();
        HeartbeatStream { send, answers }
    }

    async fn beat(&mut self, batch_id: u64, agent_ids: &[&str]) -> Result<pb::KeepAliveResponse, tonic::Status> {
        let request = pb::KeepAliveRequest {
            agent_ids: agent_ids.iter().map(|id| id.to_string()).collect(),
            batch_id,
        };
        self.send.send(request).await.expect("the stream takes a message");
        let answer = self.answers.message().await?;
        Ok(answer.expect("an answer, not the stream's end"))
    }
}

fn codes(answer: &pb::KeepAliveResponse) -> Vec<Code> {
    answer.results.iter().map(|r| Code::from_i32(r.code)).collect()
}

#[tokio::test]
async fn one_stream_keeps_many_agents_alive_and_answers_each_agent() {
    let daemon = Daemon::start(&["--clock=manual"]);
    let mut c = daemon.clients().await;
    let mut agents = Vec::new();
    for i in 0..50 {
        agents.push(c.register(&format!("a{i}"), &[], 10).await);
    }
    let mut stream = HeartbeatStream::open(&mut c).await;
    for round in 1..=4 {
        c.advance(Duration::from_secs(8)).await;
        let mut ids: Vec<&str> = agents.iter().map(String::as_str).collect();
        ids.push(UNKNOWN_ID);
        let answer = stream.beat(round, &ids).await.expect("answered");
        assert_eq!(answer.batch_id, round, "the answer names its message");
        let mut want = vec![Code::Ok; 50];
        want.push(Code::NotFound);
        assert_eq!(codes(&answer), want);
        assert!(
            answer.results[50].message.contains("not found"),
            "{:?}",
            answer.results[50]
        );
    }
    // 32 s after registering with a 10 s ttl: alive only through the stream.
    for agent in &agents {
        assert_eq!(c.status(agent).await, pb::AgentStatus::Alive);
    }
    let heard = ms(&c.agent(&agents[0]).await.unwrap().last_heartbeat_at);
    assert_eq!(heard, c.advance(Duration::ZERO).await, "the last batch's time");
    assert_eq!(
        daemon.metric("agentkeeper_keepalive_messages_total{stream=\"registry\"}"),
        Some(4.0)
    );
    assert_eq!(
        daemon.metric("agentkeeper_keepalive_items_total{result=\"ok\",stream=\"registry\"}"),
        Some(200.0)
    );
    assert_eq!(
        daemon.metric("agentkeeper_keepalive_items_total{result=\"error\",stream=\"registry\"}"),
        Some(4.0)
    );
}

#[tokio::test]
async fn a_lease_stream_renews_held_leases_and_says_which_are_lost_or_not_held() {
    let daemon = Daemon::start(&["--clock=manual"]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 300).await;
    let b = c.register("b", &[], 300).await;
    let (held, _) = c.acquire("held", &a, 10).await;
    let (lost, _) = c.acquire("lost", &a, 1).await;
    let (theirs, _) = c.acquire("theirs", &b, 10).await;
    let now = c.advance(Duration::from_secs(5)).await;
    let renewal = |key: &str, lease: &pb::Lease| pb::RenewLeaseRequest {
        task_id: key.into(),
        agent_id: a.clone(),
        token: Some(pb::FencingToken { value: token_of(lease) }),
        ttl_seconds: 0,
    };
    let request = pb::LeaseKeepAliveRequest {
        renewals: vec![
            renewal("held", &held),
            renewal("lost", &lost),
            renewal("theirs", &theirs),
        ],
        batch_id: 7,
    };
    let mut answers = (c.leases.keep_alive(tokio_stream::iter(vec![request])).await)
        .expect("the stream opens")
        .into_inner();
    let answer = answers.message().await.expect("answered").expect("one answer");
    assert_eq!(answer.batch_id, 7);
    let codes: Vec<Code> = answer.results.iter().map(|r| Code::from_i32(r.code)).collect();
    assert_eq!(codes, [Code::Ok, Code::NotFound, Code::PermissionDenied]);
    let renewed = answer.results[0].lease.as_ref().expect("the renewed lease");
    assert_eq!(ms(&renewed.expires_at), now + 10_000, "renewed for its own ttl");
    assert_eq!(token_of(renewed), token_of(&held), "the same fencing token");
    assert!(answer.results[1].lease.is_none());
    assert!(answers.message().await.expect("the stream ends cleanly").is_none());
    assert_eq!(
        daemon.metric("agentkeeper_keepalive_messages_total{stream=\"lease\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_empty_or_oversized_message_ends_the_stream_invalid_argument_and_changes_nothing() {
    let daemon = Daemon::start(&["--clock=manual"]);
    let mut c = daemon.clients().await;
    let agent = c.register("a", &[], 10).await;
    let before = c.agent(&agent).await.unwrap();
    c.advance(Duration::from_secs(5)).await;

    let mut stream = HeartbeatStream::open(&mut c).await;
    let empty = stream.beat(1, &[]).await.expect_err("an empty message is refused");
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(
        empty.message(),
        "a keep-alive message carries 1 to 10000 items, this one 0"
    );

    let mut stream = HeartbeatStream::open(&mut c).await;
    let many = vec![agent.as_str(); 10_001];
    let refused = stream.beat(2, &many).await.expect_err("10,001 items are refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("this one 10001"), "{}", refused.message());

    assert_eq!(c.agent(&agent).await.unwrap(), before, "no heartbeat was applied");
    assert_eq!(
        daemon
            .metric("agentkeeper_keepalive_messages_total{stream=\"registry\"}")
            .unwrap_or(0.0),
        0.0,
        "a refused message is not counted as answered"
    );
    // The limit itself is accepted.
    let mut stream = HeartbeatStream::open(&mut c).await;
    let full = vec![agent.as_str(); 10_000];
    assert_eq!(stream.beat(3, &full).await.expect("10,000 items").results.len(), 10_000);
}

#[tokio::test]
async fn messages_sent_ahead_are_answered_in_order_and_a_bad_one_ends_the_stream_after_them() {
    let daemon = Daemon::start(&["--clock=manual"]);
    let mut c = daemon.clients().await;
    let (a, b) = (c.register("a", &[], 10).await, c.register("b", &[], 10).await);
    c.advance(Duration::from_secs(5)).await;
    let b_before = c.agent(&b).await.unwrap();

    // 40 messages sent without waiting for an answer (more than the daemon keeps in flight),
    // then an empty one, then one that must never be applied.
    let mut stream = HeartbeatStream::open(&mut c).await;
    for batch_id in 1..=40u64 {
        let ids = if batch_id % 2 == 0 {
            vec![a.clone()]
        } else {
            vec![UNKNOWN_ID.to_string()]
        };
        let message = pb::KeepAliveRequest {
            agent_ids: ids,
            batch_id,
        };
        stream.send.send(message).await.unwrap();
    }
    let empty = pb::KeepAliveRequest {
        agent_ids: vec![],
        batch_id: 41,
    };
    stream.send.send(empty).await.unwrap();
    let after = pb::KeepAliveRequest {
        agent_ids: vec![b.clone()],
        batch_id: 42,
    };
    stream.send.send(after).await.unwrap();

    for batch_id in 1..=40u64 {
        let answer = stream.answers.message().await.expect("answered").expect("not the end");
        assert_eq!(answer.batch_id, batch_id, "answers leave in the order sent");
        let want = if batch_id % 2 == 0 { Code::Ok } else { Code::NotFound };
        assert_eq!(codes(&answer), vec![want], "message {batch_id}");
    }
    let refused = stream
        .answers
        .message()
        .await
        .expect_err("the empty message ends the stream");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        c.agent(&b).await.unwrap(),
        b_before,
        "nothing after the refusal is applied"
    );
    assert_eq!(
        daemon.metric("agentkeeper_keepalive_messages_total{stream=\"registry\"}"),
        Some(40.0)
    );
}

#[tokio::test]
async fn a_batch_is_durable_and_replayed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = format!("--data-dir={}", dir.path().display());
    let mut daemon = Daemon::start(&[&data_dir, "--clock=manual"]);
    let mut c = daemon.clients().await;
    let agent = c.register("a", &[], 10).await;
    c.advance(Duration::from_secs(8)).await;
    let mut stream = HeartbeatStream::open(&mut c).await;
    stream.beat(1, &[&agent]).await.expect("answered");
    let heard = c.agent(&agent).await.unwrap().last_heartbeat_at;
    drop((stream, c));
    daemon.kill_9();

    let daemon = Daemon::start(&[&data_dir, "--clock=manual"]);
    let mut c = daemon.clients().await;
    assert_eq!(
        c.agent(&agent).await.unwrap().last_heartbeat_at,
        heard,
        "the batch was replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_stream_is_applied_through_the_leader() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let mut c = cluster.clients(follower).await;
    let agent = c.register("a", &[], 60).await;
    let registered = ms(&c.agent(&agent).await.unwrap().last_heartbeat_at);
    let mut stream = HeartbeatStream::open(&mut c).await;
    let answer = stream.beat(1, &[&agent, UNKNOWN_ID]).await.expect("answered");
    assert_eq!(codes(&answer), [Code::Ok, Code::NotFound]);
    let mut on_leader = cluster.clients(leader).await;
    wait_until("the leader sees the heartbeat", async || {
        let heard = ms(&on_leader
            .agent(&agent)
            .await
            .map_err(|e| e.to_string())?
            .last_heartbeat_at);
        if heard > registered {
            Ok(())
        } else {
            Err(format!("last heartbeat {heard}"))
        }
    })
    .await;
}
