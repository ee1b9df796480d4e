//! The protocol around the core (`machine.rs`): what waits for durability and what does not,
//! claims parked and handed back, streams cut off, a failed write, shutdown.

use super::*;
use crate::core::entry::Entry;
use crate::core::machine::{CallerId, Input, Machine, Output, Overflow};

/// A machine and a clock, with helpers that drive it the way a driver does.
struct Driven {
    machine: Machine,
    now: Millis,
    caller_next: u64,
}

impl Driven {
    fn new(logged: bool) -> Driven {
        Self::with_config(
            logged,
            CoreConfig {
                seed: 7,
                ..CoreConfig::default()
            },
        )
    }

    fn with_config(logged: bool, config: CoreConfig) -> Driven {
        Driven {
            machine: Machine::new(Core::new(config, T0), logged),
            now: T0,
            caller_next: 1,
        }
    }

    fn handle(&mut self, input: Input) {
        self.machine.handle(self.now, input);
        self.machine.check_invariants();
    }

    /// Sends a command; returns its caller.
    fn call(&mut self, command: Command) -> CallerId {
        let caller = CallerId(self.caller_next);
        self.caller_next += 1;
        self.handle(Input::Call {
            caller,
            command,
            principal: None,
        });
        caller
    }

    /// Everything `poll` hands out now.
    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.machine.poll()).collect()
    }

    /// Acknowledges every entry emitted so far.
    fn persist_all(&mut self) {
        let up_to = self.machine.emitted();
        self.handle(Input::Persisted { up_to });
    }

    fn register(&mut self, name: &str, tools: &[&str]) -> String {
        let caller = self.call(Command::Register {
            card: Box::new(AgentCard {
                name: name.into(),
                tools: tools.iter().map(|t| t.to_string()).collect(),
                ..AgentCard::default()
            }),
            ttl_seconds: 10,
            vector: None,
        });
        self.persist_all();
        match reply_for(&self.drain(), caller) {
            Some(Ok(Reply::Registered { agent_id })) => agent_id.to_string(),
            other => panic!("register: {other:?}"),
        }
    }
}

fn reply_for(outputs: &[Output], caller: CallerId) -> Option<Outcome> {
    outputs.iter().find_map(|output| match output {
        Output::Reply { caller: c, outcome } if *c == caller => Some(outcome.clone()),
        _ => None,
    })
}

fn persisted_indexes(outputs: &[Output]) -> Vec<u64> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Persist { index, .. } => Some(*index),
            _ => None,
        })
        .collect()
}

fn deliveries(outputs: &[Output]) -> Vec<(SubscriberId, u64)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Deliver { subscriber, event } => Some((*subscriber, event.sequence)),
            _ => None,
        })
        .collect()
}

fn watch(d: &mut Driven, from_sequence: u64) -> (CallerId, SubscriberId) {
    let caller = d.call(Command::Watch {
        topics: vec![],
        from_sequence,
    });
    d.persist_all();
    match reply_for(&d.drain(), caller) {
        Some(Ok(Reply::Watching { subscriber, .. })) => (caller, subscriber),
        other => panic!("watch: {other:?}"),
    }
}

/// A Watch opened now is refused UNAVAILABLE (a failed log, or shutdown).
fn assert_new_watch_refused(d: &mut Driven) {
    let again = d.call(Command::Watch {
        topics: vec![],
        from_sequence: 0,
    });
    assert_eq!(
        reply_for(&d.drain(), again).unwrap().unwrap_err().code,
        ErrorCode::Unavailable
    );
}

fn policy_command(id: &str) -> Command {
    policy(id, "s", "a", "r", Effect::Allow)
}

#[test]
fn a_write_is_persisted_first_and_answered_only_once_its_entry_is_durable() {
    let mut d = Driven::new(true);
    let caller = d.call(policy_command("p1"));
    let out = d.drain();
    assert_eq!(persisted_indexes(&out), [1], "the entry comes out first");
    assert_eq!(reply_for(&out, caller), None, "no reply before the entry is durable");
    assert!(d.drain().is_empty(), "still waiting");
    d.handle(Input::Persisted { up_to: 1 });
    let out = d.drain();
    assert!(matches!(reply_for(&out, caller), Some(Ok(Reply::Policy(_)))), "{out:?}");
    assert!(d.machine.is_durable());
}

#[test]
fn a_read_behind_an_unpersisted_write_waits_for_it_but_a_read_with_nothing_pending_is_answered_at_once() {
    let mut d = Driven::new(true);
    let early = d.call(Command::ListPolicies {
        subject_prefix: String::new(),
        page_size: 0,
        page_token: String::new(),
    });
    assert!(
        reply_for(&d.drain(), early).is_some(),
        "nothing pending: answered at once"
    );
    let write = d.call(policy_command("p1"));
    let read = d.call(Command::ListPolicies {
        subject_prefix: String::new(),
        page_size: 0,
        page_token: String::new(),
    });
    let out = d.drain();
    assert_eq!((reply_for(&out, write), reply_for(&out, read)), (None, None));
    d.persist_all();
    let out = d.drain();
    let Some(Ok(Reply::Policies { policies: seen, .. })) = reply_for(&out, read) else {
        panic!("{out:?}")
    };
    assert_eq!(seen.len(), 1, "the read saw the write, so it waited for it");
    let order: Vec<CallerId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Reply { caller, .. } => Some(*caller),
            _ => None,
        })
        .collect();
    assert_eq!(order, [write, read], "replies leave in the order the calls came");
}

#[test]
fn a_watch_whose_replay_holds_an_undurable_event_is_answered_only_after_that_event_is_durable() {
    let mut d = Driven::new(true);
    let _agent_caller = d.call(Command::Register {
        card: Box::new(AgentCard {
            name: "a".into(),
            ..AgentCard::default()
        }),
        ttl_seconds: 10,
        vector: None,
    });
    // agent.registered (sequence 1) is in the ring, its entry not yet durable.
    let watcher = d.call(Command::Watch {
        topics: vec![],
        from_sequence: 1,
    });
    let out = d.drain();
    assert_eq!(
        reply_for(&out, watcher),
        None,
        "the replay would show an undurable event"
    );
    d.persist_all();
    let Some(Ok(Reply::Watching { replay, .. })) = reply_for(&d.drain(), watcher) else {
        panic!("watch answered after persist")
    };
    assert_eq!(replay.len(), 1);
}

#[test]
fn deliveries_wait_for_their_entry_and_leave_in_sequence_order() {
    let mut d = Driven::new(true);
    let (_, subscriber) = watch(&mut d, 0);
    d.register("a", &[]);
    let agent = d.register("b", &[]);
    let _ = agent;
    // Each register persisted and released its own event; now one held event.
    let caller = d.call(Command::Deregister {
        agent_id: agent.clone(),
    });
    let out = d.drain();
    assert!(deliveries(&out).is_empty(), "agent.died waits for the Deregister entry");
    d.persist_all();
    let out = d.drain();
    assert_eq!(deliveries(&out), [(subscriber, 3)]);
    assert!(reply_for(&out, caller).is_some());
}

#[test]
fn a_failed_write_answers_its_batch_unavailable_drops_its_events_ends_streams_and_refuses_writes() {
    let mut d = Driven::new(true);
    let (_, subscriber) = watch(&mut d, 0);
    let agent = d.register("a", &[]);
    let heartbeat = d.call(Command::Heartbeat {
        agent_id: agent.clone(),
    });
    let deregister = d.call(Command::Deregister {
        agent_id: agent.clone(),
    });
    let _ = d.drain();
    d.handle(Input::PersistFailed {
        reason: "No space left on device".into(),
    });
    let out = d.drain();
    for caller in [heartbeat, deregister] {
        let error = reply_for(&out, caller).expect("answered").unwrap_err();
        assert_eq!(error.code, ErrorCode::Unavailable);
        assert!(error.message.contains("No space left on device"), "{error}");
    }
    assert!(
        deliveries(&out).is_empty(),
        "agent.died never became durable: never delivered"
    );
    let ended = out
        .iter()
        .any(|o| matches!(o, Output::EndStream { subscriber: s, end } if *s == subscriber && end.code == ErrorCode::Unavailable));
    assert!(ended, "the stream ends: no event will ever be durable again: {out:?}");
    let write = d.call(policy_command("p2"));
    let read = d.call(Command::GetAgent {
        agent_id: agent.clone(),
    });
    let out = d.drain();
    assert!(persisted_indexes(&out).is_empty(), "nothing more to persist");
    assert_eq!(
        reply_for(&out, write).unwrap().unwrap_err().code,
        ErrorCode::Unavailable
    );
    assert!(reply_for(&out, read).unwrap().is_ok(), "reads are still served");
    assert_new_watch_refused(&mut d);
}

#[test]
fn a_waiting_claim_is_parked_then_answered_once_the_task_that_answers_it_is_durable() {
    let mut d = Driven::new(true);
    let agent = d.register("worker", &["ocr"]);
    let claim = d.call(Command::ClaimTask {
        agent_id: agent.clone(),
        wait_ms: 60_000,
    });
    assert_eq!(reply_for(&d.drain(), claim), None);
    d.persist_all();
    let out = d.drain();
    assert!(out.contains(&Output::Park { caller: claim }), "{out:?}");
    assert_eq!(reply_for(&out, claim), None, "parked, not answered");
    let create = d.call(Command::CreateTask {
        kind: "scan".into(),
        input: vec![],
        required_tools: vec!["ocr".into()],
        max_retries: 0,
        ttl_seconds: 0,
    });
    let out = d.drain();
    assert_eq!((reply_for(&out, claim), reply_for(&out, create)), (None, None));
    d.persist_all();
    let out = d.drain();
    assert!(
        matches!(reply_for(&out, claim), Some(Ok(Reply::Claimed { .. }))),
        "{out:?}"
    );
    assert_eq!(d.machine.parked(), 0);
}

#[test]
fn a_parked_caller_that_hangs_up_is_cancelled_and_an_undelivered_claim_goes_back_to_pending() {
    let mut d = Driven::new(true);
    let agent = d.register("worker", &[]);
    let claim = d.call(Command::ClaimTask {
        agent_id: agent.clone(),
        wait_ms: 60_000,
    });
    let _ = d.drain();
    d.handle(Input::CallerGone { caller: claim });
    let out = d.drain();
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::Persist {
                entry: Entry::Apply {
                    command: Command::CancelClaim { .. },
                    ..
                },
                ..
            }
        )),
        "the cancellation is logged: {out:?}"
    );
    assert_eq!((d.machine.parked(), d.machine.core().stats().claims_waiting), (0, 0));
    d.persist_all();

    let create = d.call(Command::CreateTask {
        kind: "scan".into(),
        input: vec![],
        required_tools: vec![],
        max_retries: 0,
        ttl_seconds: 0,
    });
    d.persist_all();
    assert!(reply_for(&d.drain(), create).is_some());
    let claim = d.call(Command::ClaimTask {
        agent_id: agent.clone(),
        wait_ms: 0,
    });
    d.persist_all();
    let outcome = reply_for(&d.drain(), claim).expect("answered");
    assert!(matches!(outcome, Ok(Reply::Claimed { .. })));
    d.handle(Input::Undelivered { outcome });
    let stats = d.machine.core().stats();
    assert_eq!((stats.tasks_pending, stats.tasks_claimed, stats.leases), (1, 0, 0));
}

#[test]
fn an_overflowing_subscriber_is_cut_off_naming_the_last_sequence_and_nothing_more_reaches_it() {
    let mut d = Driven::new(true);
    let (_, subscriber) = watch(&mut d, 0);
    d.register("a", &[]);
    d.call(Command::Register {
        card: Box::new(AgentCard {
            name: "b".into(),
            ..AgentCard::default()
        }),
        ttl_seconds: 10,
        vector: None,
    });
    // The driver tried to deliver sequence 2 and found the buffer full after sequence 1.
    d.handle(Input::SubscriberGone {
        subscriber,
        overflow: Some(Overflow {
            capacity: 1,
            delivered_last: 1,
        }),
    });
    d.persist_all();
    let out = d.drain();
    assert!(
        deliveries(&out).is_empty(),
        "held deliveries to it are dropped: {out:?}"
    );
    let end = out
        .iter()
        .find_map(|o| match o {
            Output::EndStream { subscriber: s, end } if *s == subscriber => Some(end.clone()),
            _ => None,
        })
        .expect("the stream ends");
    assert_eq!(end.code, ErrorCode::ResourceExhausted);
    assert!(end.message.contains("last sequence delivered is 1"), "{}", end.message);
    assert_eq!(d.machine.core().stats().watchers, 0);
}

#[test]
fn shutdown_freezes_time_ends_streams_answers_waiting_claims_and_refuses_new_streams() {
    let mut d = Driven::new(true);
    let (_, subscriber) = watch(&mut d, 0);
    let agent = d.register("a", &[]);
    let claim = d.call(Command::ClaimTask {
        agent_id: agent.clone(),
        wait_ms: 60_000,
    });
    let _ = d.drain();
    d.handle(Input::Shutdown);
    assert_eq!(
        d.machine.poll_timeout(),
        None,
        "no deadline matters while shutting down"
    );
    d.persist_all();
    let out = d.drain();
    assert_eq!(
        reply_for(&out, claim).unwrap().unwrap_err().code,
        ErrorCode::Unavailable
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::EndStream { subscriber: s, .. } if *s == subscriber))
    );
    // An hour later the agent (ttl 10 s) is still ALIVE: nobody dies while clients cannot reach
    // the daemon.
    d.now += 3_600_000;
    let get = d.call(Command::GetAgent {
        agent_id: agent.clone(),
    });
    let Some(Ok(Reply::Agent(view))) = reply_for(&d.drain(), get) else {
        panic!("get agent")
    };
    assert_eq!(view.status, AgentStatus::Alive);
    assert_new_watch_refused(&mut d);
}

#[test]
fn without_a_log_nothing_is_persisted_and_every_reply_leaves_at_once() {
    let mut d = Driven::new(false);
    let caller = d.call(policy_command("p1"));
    let out = d.drain();
    assert!(persisted_indexes(&out).is_empty());
    assert!(matches!(reply_for(&out, caller), Some(Ok(Reply::Policy(_)))));
    assert_eq!(d.machine.emitted(), 0);
}

#[test]
fn a_tick_that_fires_a_deadline_is_logged_before_the_command_that_follows_it() {
    let mut d = Driven::new(true);
    let agent = d.register("a", &[]);
    d.now += 11 * SECOND;
    let caller = d.call(Command::GetAgent {
        agent_id: agent.clone(),
    });
    let out = d.drain();
    assert!(
        matches!(
            out.first(),
            Some(Output::Persist {
                entry: Entry::Tick { .. },
                ..
            })
        ),
        "{out:?}"
    );
    assert_eq!(reply_for(&out, caller), None, "the read saw the tick's change");
    d.persist_all();
    let Some(Ok(Reply::Agent(view))) = reply_for(&d.drain(), caller) else {
        panic!("get agent")
    };
    assert_eq!(view.status, AgentStatus::Unreachable);
}

#[test]
fn the_planted_ordering_bug_releases_a_reply_before_its_entry_is_durable() {
    let mut d = Driven::with_config(
        true,
        CoreConfig {
            seed: 7,
            planted_bug: PlantedBug::ReplyBeforeDurable,
            ..CoreConfig::default()
        },
    );
    let caller = d.call(policy_command("p1"));
    let out = d.drain();
    assert!(reply_for(&out, caller).is_some(), "the plant skips the wait");
}
