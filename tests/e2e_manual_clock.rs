//! End to end: `--clock manual`: time stands still until ClockService.Advance, so a test of
//! "my agent died, was its lease released?" runs in milliseconds.

mod common;

use std::time::Duration;

use agentkeeper::proto as pb;
use common::{Daemon, ms, topics};
use pb::clock_service_client::ClockServiceClient;

fn seconds(n: i64) -> pb::AdvanceRequest {
    pb::AdvanceRequest {
        duration: Some(prost_types::Duration { seconds: n, nanos: 0 }),
    }
}

#[tokio::test]
async fn advancing_the_manual_clock_drives_liveness_and_lease_release() {
    let daemon = Daemon::start(&["--clock", "manual", "--seed", "7"]);
    let mut c = daemon.clients().await;
    let mut clock = ClockServiceClient::new(c.channel.clone());
    let start = clock.now(pb::NowRequest {}).await.unwrap().into_inner().now.unwrap();
    let mut events = c.watch(&["agent.", "lease."], 0).await;
    let id = c.register("worker", &[], 10).await;
    c.acquire("task:1", &id, 600).await;
    assert_eq!(topics(&mut events, 2).await, ["agent.registered", "lease.acquired"]);
    // Real time has to pass to show that it does not move the clock. A moment is enough: the
    // clock has millisecond resolution, and a loaded machine only lets more time pass.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = clock.now(pb::NowRequest {}).await.unwrap().into_inner().now;
    assert_eq!(ms(&still), ms(&Some(start)), "real time does not move a manual clock");
    assert_eq!(c.status(&id).await, pb::AgentStatus::Alive);
    let now = clock.advance(seconds(11)).await.unwrap().into_inner().now.unwrap();
    assert_eq!(now.seconds, start.seconds + 11);
    assert_eq!(c.status(&id).await, pb::AgentStatus::Unreachable);
    clock.advance(seconds(10)).await.unwrap();
    assert_eq!(
        topics(&mut events, 3).await,
        ["agent.unreachable", "agent.died", "lease.released"]
    );
    assert_eq!(c.status(&id).await, pb::AgentStatus::Dead);
}

#[tokio::test]
async fn a_negative_advance_is_invalid_and_moves_nothing() {
    let daemon = Daemon::start(&["--clock", "manual"]);
    let mut clock = ClockServiceClient::new(daemon.channel().await);
    let before = clock.now(pb::NowRequest {}).await.unwrap().into_inner().now;
    let error = clock.advance(seconds(-5)).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert_eq!(clock.now(pb::NowRequest {}).await.unwrap().into_inner().now, before);
}

#[tokio::test]
async fn the_same_seed_and_calls_give_the_same_ids_on_a_manual_clock() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let daemon = Daemon::start(&["--clock", "manual", "--seed", "7"]);
        let mut c = daemon.clients().await;
        runs.push(c.register("a", &[], 10).await);
    }
    assert_eq!(runs[0], runs[1]);
}
