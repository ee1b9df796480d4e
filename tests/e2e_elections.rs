//! End to end: leader elections: FIFO candidates, terms, resignation, failover on death, and
//! WatchElection's snapshot-then-changes stream.

mod common;

use std::time::Duration;

use agentkeeper::proto as pb;
use common::{Daemon, UNKNOWN_ID, assert_quiet, decode, events, type_url};
use tonic::Code;

/// The next message of an election watch as (leader, term), checking its envelope.
async fn next_state(stream: &mut tonic::Streaming<pb::Event>) -> (String, u64) {
    let event = events(stream, 1).await.remove(0);
    assert_eq!(event.topic, "leader.changed");
    assert_eq!(type_url(&event), "type.googleapis.com/agentkeeper.v1.ElectionState");
    let state: pb::ElectionState = decode(&event);
    (state.leader_agent_id, state.term)
}

fn pair(state: &pb::ElectionState) -> (String, u64) {
    (state.leader_agent_id.clone(), state.term)
}

#[tokio::test]
async fn the_first_campaigner_leads_with_term_1_and_a_second_is_standby() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    let mut watch = c.watch_election("g").await;
    assert_eq!(next_state(&mut watch).await, (String::new(), 0));

    let state = c.campaign("g", &a).await;
    assert_eq!(state.group, "g");
    assert_eq!(pair(&state), (a.clone(), 1));
    assert!(state.elected_at.is_some());
    assert_eq!(
        c.campaign("g", &b).await,
        state,
        "a new candidate never displaces the leader"
    );
    assert_eq!(c.campaign("g", &a).await, state, "campaigning again is a no-op");
    assert_eq!(c.campaign("g", &b).await, state);
    assert_eq!(next_state(&mut watch).await, (a.clone(), 1));
    assert_quiet(&mut watch, Duration::from_millis(200)).await;

    let other = c.campaign("g2", &b).await; // a group whose name extends "g"
    assert_eq!(pair(&other), (b.clone(), 1), "groups are independent, terms per group");
    assert_quiet(&mut watch, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_resigning_leader_hands_over_in_fifo_order_and_the_term_grows() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    let d = c.register("d", &[], 30).await;
    c.campaign("g", &a).await;
    c.campaign("g", &b).await;
    c.campaign("g", &d).await;
    let mut watch = c.watch_election("g").await;
    assert_eq!(next_state(&mut watch).await, (a.clone(), 1), "the current state first");

    c.resign("g", &a).await.unwrap();
    assert_eq!(
        next_state(&mut watch).await,
        (b.clone(), 2),
        "the standby leads, term 2"
    );
    assert_eq!(
        pair(&c.campaign("g", &a).await),
        (b.clone(), 2),
        "a rejoins at the back"
    );
    c.resign("g", &b).await.unwrap();
    assert_eq!(next_state(&mut watch).await, (d.clone(), 3));
    c.resign("g", &d).await.unwrap();
    assert_eq!(next_state(&mut watch).await, (a.clone(), 4));
    c.resign("g", &a).await.unwrap();
    assert_eq!(
        next_state(&mut watch).await,
        (String::new(), 5),
        "nobody leads, the term still grows"
    );
    assert_eq!(pair(&c.campaign("g", &b).await), (b.clone(), 6));
    assert_eq!(next_state(&mut watch).await, (b.clone(), 6));
    assert_quiet(&mut watch, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn resign_by_a_non_candidate_is_ok_and_a_standby_just_leaves_the_line() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    let outsider = c.register("outsider", &[], 30).await;
    c.resign("empty-group", &outsider).await.expect("no group yet: OK");
    c.campaign("g", &a).await;
    c.campaign("g", &b).await;
    let mut watch = c.watch_election("g").await;
    assert_eq!(next_state(&mut watch).await, (a.clone(), 1));
    c.resign("g", &outsider).await.expect("not a candidate: OK");
    c.resign("g", &b).await.expect("a standby leaves");
    c.resign("g", &b).await.expect("twice: OK");
    assert_quiet(&mut watch, Duration::from_millis(200)).await;
    assert_eq!(pair(&c.campaign("g", &outsider).await), (a.clone(), 1));
    c.resign("g", &outsider).await.unwrap();
    c.resign("g", &a).await.unwrap();
    assert_eq!(
        next_state(&mut watch).await,
        (String::new(), 2),
        "b and the outsider left the line: nobody leads"
    );
}

#[tokio::test]
async fn a_leader_that_stops_heartbeating_is_replaced_by_the_standby_after_its_death() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 1).await;
    let b = c.register("b", &[], 30).await;
    assert_eq!(pair(&c.campaign("g", &a).await), (a.clone(), 1));
    c.campaign("g", &b).await;
    let mut watch = c.watch_election("g").await;
    let mut bus = c.watch(&["agent.died", "leader.changed"], 0).await;
    assert_eq!(next_state(&mut watch).await, (a.clone(), 1));
    assert_eq!(
        next_state(&mut watch).await,
        (b.clone(), 2),
        "the standby leads after a dies"
    );
    let seen = events(&mut bus, 2).await;
    let names: Vec<&str> = seen.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(names, ["agent.died", "leader.changed"], "death first, then the change");
    assert_eq!(decode::<pb::AgentInfo>(&seen[0]).agent_id, a);
    assert_eq!(pair(&c.campaign("g", &b).await), (b.clone(), 2));
    let error = c.try_campaign("g", &a).await.unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "a DEAD agent cannot campaign: {error:?}");
}

#[tokio::test]
async fn a_deregistered_leader_is_replaced_at_once() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    c.campaign("g", &a).await;
    c.campaign("g", &b).await;
    let mut watch = c.watch_election("g").await;
    assert_eq!(next_state(&mut watch).await, (a.clone(), 1));
    c.deregister(&a).await.unwrap();
    assert_eq!(next_state(&mut watch).await, (b.clone(), 2));
    c.deregister(&b).await.unwrap();
    assert_eq!(next_state(&mut watch).await, (String::new(), 3));
}

#[tokio::test]
async fn watch_election_sends_the_current_state_first_even_when_nobody_leads() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;

    let mut fresh = c.watch_election("never-used").await;
    let first = events(&mut fresh, 1).await.remove(0);
    assert_eq!(first.topic, "leader.changed");
    assert_eq!(first.sequence_number, 0, "a snapshot, not an event from the bus");
    assert_eq!(type_url(&first), "type.googleapis.com/agentkeeper.v1.ElectionState");
    let state: pb::ElectionState = decode(&first);
    assert_eq!(
        (state.group.as_str(), state.leader_agent_id.as_str(), state.term),
        ("never-used", "", 0)
    );
    assert_quiet(&mut fresh, Duration::from_millis(200)).await;

    c.campaign("led", &a).await;
    let mut led = c.watch_election("led").await;
    let first = events(&mut led, 1).await.remove(0);
    assert_eq!(first.sequence_number, 0);
    let state: pb::ElectionState = decode(&first);
    assert_eq!((state.leader_agent_id.as_str(), state.term), (a.as_str(), 1));
    assert!(state.elected_at.is_some());

    c.resign("led", &a).await.unwrap();
    let change = events(&mut led, 1).await.remove(0);
    assert!(change.sequence_number > 0, "changes are bus events");
    assert_eq!(decode::<pb::ElectionState>(&change).term, 2);
    c.campaign("never-used", &a).await;
    assert_eq!(next_state(&mut fresh).await, (a.clone(), 1));
    assert_quiet(&mut led, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn campaign_by_an_unknown_or_deregistered_agent_is_not_found() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let gone = c.register("gone", &[], 30).await;
    c.deregister(&gone).await.unwrap();
    for id in [UNKNOWN_ID, gone.as_str()] {
        let error = c.try_campaign("g", id).await.unwrap_err();
        assert_eq!(error.code(), Code::NotFound, "{id}: {error:?}");
    }
    let mut watch = c.watch_election("g").await;
    assert_eq!(next_state(&mut watch).await, (String::new(), 0), "nothing changed");
}

#[tokio::test]
async fn resign_by_a_dead_or_unknown_agent_is_ok_as_it_is_not_a_candidate() {
    let daemon = Daemon::start(&["--dead-retention", "1s", "--clock=manual"]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let gone = c.register("gone", &[], 30).await;
    c.campaign("g", &a).await;
    c.campaign("g", &gone).await;
    c.deregister(&gone).await.unwrap();
    c.resign("g", &gone).await.expect("DEAD, so not a candidate: OK");
    // Like Deregister, Resign must not throw from a context manager's exit once the agent is
    // gone: an agent nobody knows is not a candidate either.
    c.advance(Duration::from_secs(1)).await; // the dead retention
    assert_eq!(c.agent(&gone).await.unwrap_err().code(), Code::NotFound, "forgotten");
    c.resign("g", &gone).await.expect("forgotten, so not a candidate: OK");
    c.resign("g", UNKNOWN_ID)
        .await
        .expect("unknown, so not a candidate: OK");
    c.resign("g", "not-an-id")
        .await
        .expect("unknown, so not a candidate: OK");
    assert_eq!(pair(&c.campaign("g", &a).await), (a.clone(), 1));
}

#[tokio::test]
async fn a_death_cleans_up_in_one_step_died_then_leases_then_leadership() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    let b = c.register("b", &[], 30).await;
    c.acquire("k1", &a, 60).await;
    c.campaign("g1", &a).await;
    c.campaign("g1", &b).await;
    c.campaign("g2", &b).await;
    c.campaign("g2", &a).await;
    let mut bus = c.watch(&[], 0).await;
    c.deregister(&a).await.unwrap();
    let seen = events(&mut bus, 3).await;
    let names: Vec<&str> = seen.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(names, ["agent.died", "lease.released", "leader.changed"]);
    let sequences: Vec<u64> = seen.iter().map(|e| e.sequence_number).collect();
    assert!(sequences.windows(2).all(|w| w[1] == w[0] + 1), "{sequences:?}");
    let state: pb::ElectionState = decode(&seen[2]);
    assert_eq!(
        (state.group.as_str(), state.leader_agent_id.as_str(), state.term),
        ("g1", b.as_str(), 2)
    );
    assert_quiet(&mut bus, Duration::from_millis(200)).await;
    assert_eq!(
        pair(&c.campaign("g2", &b).await),
        (b.clone(), 1),
        "a standby's death changes no leader"
    );
    c.resign("g2", &b).await.unwrap();
    assert_eq!(
        pair(&c.campaign("g2", &b).await),
        (b.clone(), 3),
        "the dead standby left the line: nobody led at term 2"
    );
}

#[tokio::test]
async fn concurrent_campaigns_elect_exactly_one_leader() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut watch = c.watch_election("g").await;
    assert_eq!(next_state(&mut watch).await, (String::new(), 0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut client = daemon.clients().await;
        tasks.push(tokio::spawn(async move {
            let id = client.register(&format!("a{i}"), &[], 30).await;
            (id.clone(), client.campaign("g", &id).await)
        }));
    }
    let mut leaders = std::collections::BTreeSet::new();
    for task in tasks {
        let (_, state) = task.await.unwrap();
        assert_eq!(state.term, 1);
        leaders.insert(state.leader_agent_id);
    }
    assert_eq!(leaders.len(), 1, "one leader for everybody: {leaders:?}");
    let leader = leaders.into_iter().next().unwrap();
    assert_eq!(next_state(&mut watch).await, (leader, 1));
    assert_quiet(&mut watch, Duration::from_millis(200)).await;
}
