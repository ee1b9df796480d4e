//! The driver's loop against the real machine: load shedding with the priority lane.

use super::*;
use crate::core::types::{AgentCard, AgentStatus};
use crate::core::{Core, CoreConfig, CoreError, ErrorCode, Outcome, Reply};
use tokio::sync::oneshot;

const T0: Millis = 1_000_000;

fn call(handle: &CoreHandle, command: Command) -> Result<oneshot::Receiver<Outcome>, CoreError> {
    let (reply, answer) = oneshot::channel();
    handle.send(Request::Call {
        command,
        principal: None,
        reply,
        mailbox: None,
    })?;
    Ok(answer)
}

#[test]
fn a_full_bulk_lane_sheds_bulk_work_but_heartbeats_still_keep_an_agent_alive() {
    let metrics = Arc::new(Metrics::new());
    let mut core = Core::new(
        CoreConfig {
            seed: 3,
            ..CoreConfig::default()
        },
        T0,
    );
    let card = AgentCard {
        name: "live".into(),
        ..AgentCard::default()
    };
    let Ok(Reply::Registered { agent_id }) = core.apply(
        T0,
        Command::Register {
            card: Box::new(card),
            ttl_seconds: 1,
            vector: None,
        },
    ) else {
        panic!("registers")
    };
    let agent_id = agent_id.to_string();
    let (handle, lanes) = channels(4, Arc::clone(&metrics));
    let find = || Command::Find {
        query: "live".into(),
        tools: vec![],
        limit: 0,
        vector: None,
    };
    // The driver is not running yet: the bulk lane fills up and stays full.
    let queued: Vec<_> = (0..4)
        .map(|_| call(&handle, find()).expect("room in the bulk lane"))
        .collect();
    let shed = call(&handle, find()).expect_err("the bulk lane is full");
    assert_eq!(shed.code, ErrorCode::ResourceExhausted);
    assert!(
        shed.message.starts_with("limit core_queue_max (4) reached"),
        "{}",
        shed.message
    );
    assert_eq!(metrics.shed_total.with_label_values(&["Find"]).get(), 1);
    let heartbeat = call(
        &handle,
        Command::Heartbeat {
            agent_id: agent_id.clone(),
        },
    )
    .expect("a heartbeat goes in its own lane");

    // Just before the agent's ttl runs out, the core gets to work.
    let thread = spawn_on(
        lanes,
        Machine::new(core, false),
        Clock::manual(T0 + 900),
        None,
        Duration::ZERO,
        Arc::clone(&metrics),
    )
    .expect("spawns");
    assert_eq!(heartbeat.blocking_recv().expect("answered"), Ok(Reply::Done));
    for answer in queued {
        assert!(answer.blocking_recv().expect("answered").is_ok());
    }
    // 1.4 s after registration: past the first ttl, within the one the heartbeat renewed.
    let (reply, moved) = oneshot::channel();
    handle
        .send(Request::Clock {
            advance_ms: Some(500),
            reply,
        })
        .expect("room");
    assert_eq!(moved.blocking_recv().expect("answered"), Ok(T0 + 1400));
    let status = call(&handle, Command::GetAgent { agent_id })
        .expect("room")
        .blocking_recv()
        .expect("answered");
    let Ok(Reply::Agent(agent)) = status else {
        panic!("GetAgent: {status:?}")
    };
    assert_eq!(
        agent.status,
        AgentStatus::Alive,
        "the heartbeat got through the overload"
    );
    handle.stop();
    thread.join().expect("the driver ends");
}

#[test]
fn the_handle_sees_the_driver_start_and_finish_its_batches() {
    let metrics = Arc::new(Metrics::new());
    let (handle, lanes) = channels(4, Arc::clone(&metrics));
    let before = handle.progress().read();
    assert!(!before.busy(), "no batch before the thread runs");
    let core = Core::new(CoreConfig::default(), T0);
    let thread = spawn_on(
        lanes,
        Machine::new(core, false),
        Clock::manual(T0),
        None,
        Duration::ZERO,
        Arc::clone(&metrics),
    )
    .expect("spawns");
    let answer = call(
        &handle,
        Command::GetAgent {
            agent_id: "none".into(),
        },
    )
    .expect("room");
    assert!(answer.blocking_recv().is_ok(), "answered");
    let answered = handle.progress().read();
    assert_ne!(
        answered, before,
        "the answer came out of a batch, which the counter saw start"
    );
    assert!(!answered.stalled_since(before));
    handle.stop();
    thread.join().expect("the driver ends");
    let after = handle.progress().read();
    assert!(!after.busy(), "the thread finished its last batch before it ended");
    assert_ne!(after, answered);
}
