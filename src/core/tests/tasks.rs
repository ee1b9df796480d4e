//! The task queue against the contract's Tasks section: create, claim (now or waiting in line),
//! complete, fail with retries, DEAD, the claim lease, retention and listing.

use super::*;
use crate::core::tasks::{TaskStatus, TaskView, WaiterId};

fn create(h: &mut Harness, kind: &str, tools: &[&str], max_retries: u32) -> TaskView {
    match h.ok(Command::CreateTask {
        kind: kind.into(),
        input: kind.as_bytes().to_vec(),
        required_tools: tools.iter().map(|t| t.to_string()).collect(),
        max_retries,
        ttl_seconds: 0,
    }) {
        Reply::Task(task) => *task,
        other => panic!("unexpected {other:?}"),
    }
}

fn claim(h: &mut Harness, agent: &str, wait_ms: u64) -> Reply {
    h.ok(Command::ClaimTask {
        agent_id: agent.into(),
        wait_ms,
    })
}

fn claimed(h: &mut Harness, agent: &str) -> (TaskView, LeaseView) {
    match claim(h, agent, 0) {
        Reply::Claimed { task, lease } => (*task, lease),
        other => panic!("expected a claim, got {other:?}"),
    }
}

fn answers(h: &mut Harness) -> Vec<(WaiterId, Outcome)> {
    let mut out = Vec::new();
    h.core.drain_claim_answers(&mut out);
    out
}

fn task(h: &mut Harness, id: &str) -> TaskView {
    match h.ok(Command::GetTask { task_id: id.into() }) {
        Reply::Task(task) => *task,
        other => panic!("unexpected {other:?}"),
    }
}

fn complete(h: &mut Harness, task: &TaskView, agent: &str) -> Outcome {
    h.apply(Command::CompleteTask {
        task_id: task.id.to_string(),
        agent_id: agent.into(),
        output: b"done".to_vec(),
    })
}

fn fail(h: &mut Harness, task: &TaskView, agent: &str) -> Outcome {
    h.apply(Command::FailTask {
        task_id: task.id.to_string(),
        agent_id: agent.into(),
        reason: "boom".into(),
    })
}

fn list(h: &mut Harness, status: Option<TaskStatus>, page_size: u32, page_token: &str) -> (Vec<String>, String) {
    match h.ok(Command::ListTasks {
        status,
        page_size,
        page_token: page_token.into(),
        bytes_left: None,
    }) {
        Reply::Tasks { tasks, next_page_token } => {
            (tasks.iter().map(|t| t.kind.to_string()).collect(), next_page_token)
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn create_task_is_pending_with_a_32_hex_id_default_ttl_and_emits_task_created() {
    let mut h = Harness::new();
    let t = create(&mut h, "summarize", &["llm", "browser", "llm"], 2);
    assert_eq!(t.id.to_string().len(), 32);
    assert_eq!(t.status, TaskStatus::Pending);
    assert_eq!(t.ttl_ms, 60 * SECOND);
    assert_eq!(t.created_at, T0);
    assert_eq!(&*t.input, b"summarize");
    let tools: Vec<&str> = t.required_tools.iter().map(|t| &**t).collect();
    assert_eq!(tools, ["browser", "llm"], "required tools are a set");
    assert_eq!(h.topics(), ["task.created"]);
    assert_eq!(task(&mut h, &t.id.to_string()), t);
}

#[test]
fn create_task_refuses_bad_type_input_and_tools_and_changes_nothing() {
    let mut h = Harness::new();
    let bad = |kind: String, input: Vec<u8>, tools: Vec<String>| Command::CreateTask {
        kind,
        input,
        required_tools: tools,
        max_retries: 0,
        ttl_seconds: 0,
    };
    for command in [
        bad(String::new(), vec![], vec![]),
        bad("x".repeat(257), vec![], vec![]),
        bad("t".into(), vec![0; 4 * 1024 * 1024 + 1], vec![]),
        bad("t".into(), vec![], vec![String::new()]),
    ] {
        assert_eq!(h.err(command).code, ErrorCode::InvalidArgument);
    }
    let ttl = h.err(Command::CreateTask {
        kind: "t".into(),
        input: vec![],
        required_tools: vec![],
        max_retries: 0,
        ttl_seconds: 86_401,
    });
    assert!(ttl.message.contains("ttl_seconds"), "{}", ttl.message);
    assert_eq!(list(&mut h, None, 0, "").0.len(), 0);
    assert!(h.topics().is_empty());
}

#[test]
fn claim_takes_the_oldest_pending_task_whose_tools_the_agent_has() {
    let mut h = Harness::new();
    let worker = h.register("w", &["sql", "web"], 30);
    create(&mut h, "needs-gpu", &["gpu"], 0);
    create(&mut h, "needs-web", &["web"], 0);
    create(&mut h, "needs-nothing", &[], 0);
    create(&mut h, "needs-sql-web", &["web", "sql"], 0);
    let order: Vec<String> = (0..3).map(|_| claimed(&mut h, &worker).0.kind.to_string()).collect();
    assert_eq!(order, ["needs-web", "needs-nothing", "needs-sql-web"]);
    assert_eq!(
        claim(&mut h, &worker, 0),
        Reply::NoTask,
        "the gpu task is not for this agent"
    );
    assert_eq!(list(&mut h, Some(TaskStatus::Pending), 0, "").0, ["needs-gpu"]);
}

#[test]
fn a_claim_is_a_lease_on_the_task_id_with_the_task_ttl_and_emits_task_claimed() {
    let mut h = Harness::new();
    let worker = h.register("w", &[], 300);
    let other = h.register("o", &[], 300);
    let created = create(&mut h, "job", &[], 0);
    let id = created.id.to_string();
    assert_eq!(
        h.err(Command::AcquireLease {
            task_id: id.clone(),
            agent_id: other.clone(),
            ttl_seconds: 10,
        })
        .code,
        ErrorCode::FailedPrecondition,
        "a pending task's id is not free for AcquireLease"
    );
    h.topics();
    h.advance(SECOND);
    let (task, lease) = claimed(&mut h, &worker);
    assert_eq!(task.status, TaskStatus::Claimed);
    assert_eq!(task.claimed_by.map(|a| a.to_string()), Some(worker.clone()));
    assert_eq!(task.claimed_at, Some(T0 + SECOND));
    assert_eq!(&*task.input, b"job", "the claimer gets the input");
    assert_eq!(&*lease.task_id, id.as_str());
    assert_eq!(lease.holder.to_string(), worker);
    assert_eq!(lease.expires_at, T0 + SECOND + 60 * SECOND);
    assert_eq!(h.topics(), ["lease.acquired", "task.claimed"]);
    // The holder's AcquireLease returns its token (re-entrant); another agent's does not get it.
    let (again, acquired) = h.acquire(&id, &worker, 0);
    assert!(acquired);
    assert_eq!(again.token, lease.token);
    let (held, acquired) = h.acquire(&id, &other, 10);
    assert!(!acquired);
    assert_eq!(held.holder.to_string(), worker);
}

#[test]
fn claim_needs_an_alive_agent() {
    let mut h = Harness::new();
    let worker = h.register("w", &[], 10);
    create(&mut h, "job", &[], 0);
    assert_eq!(
        h.err(Command::ClaimTask {
            agent_id: "0".repeat(32),
            wait_ms: 0
        })
        .code,
        ErrorCode::NotFound
    );
    h.advance(11 * SECOND);
    let error = h.err(Command::ClaimTask {
        agent_id: worker.clone(),
        wait_ms: 0,
    });
    assert_eq!(error.code, ErrorCode::FailedPrecondition);
    assert!(error.message.contains("Unreachable"), "{}", error.message);
    h.advance(10 * SECOND);
    assert_eq!(
        h.err(Command::ClaimTask {
            agent_id: worker,
            wait_ms: 0
        })
        .code,
        ErrorCode::NotFound,
        "a DEAD agent is gone"
    );
}

#[test]
fn waiting_claims_are_served_in_arrival_order_as_tasks_appear() {
    let mut h = Harness::new();
    let first = h.register("first", &["web"], 300);
    let second = h.register("second", &["web", "sql"], 300);
    let Reply::ClaimWaiting { waiter: w1 } = claim(&mut h, &first, 30_000) else {
        panic!("the first claim should wait")
    };
    let Reply::ClaimWaiting { waiter: w2 } = claim(&mut h, &second, 30_000) else {
        panic!("the second claim should wait")
    };
    assert!(answers(&mut h).is_empty());
    let sql = create(&mut h, "sql-only", &["sql"], 0);
    let handed = answers(&mut h);
    assert_eq!(handed.len(), 1);
    assert_eq!(handed[0].0, w2, "only the second claimer has sql");
    let web = create(&mut h, "web", &["web"], 0);
    let handed = answers(&mut h);
    assert_eq!(handed.len(), 1);
    assert_eq!(handed[0].0, w1);
    match &handed[0].1 {
        Ok(Reply::Claimed { task, .. }) => assert_eq!(task.id, web.id),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        task(&mut h, &sql.id.to_string()).claimed_by.map(|a| a.to_string()),
        Some(second)
    );
    assert_eq!(h.core.stats().claims_waiting, 0);
}

#[test]
fn a_task_no_waiter_can_take_stays_pending_and_waits_for_a_claimer_with_the_tools() {
    let mut h = Harness::new();
    let web = h.register("web", &["web"], 300);
    let Reply::ClaimWaiting { .. } = claim(&mut h, &web, 30_000) else {
        panic!("should wait")
    };
    let gpu_task = create(&mut h, "gpu", &["gpu"], 0);
    assert!(answers(&mut h).is_empty());
    assert_eq!(task(&mut h, &gpu_task.id.to_string()).status, TaskStatus::Pending);
    let gpu = h.register("gpu", &["gpu"], 300);
    assert_eq!(claimed(&mut h, &gpu).0.id, gpu_task.id);
}

#[test]
fn a_waiting_claim_ends_with_no_task_at_its_deadline_and_a_cancelled_one_gets_nothing() {
    let mut h = Harness::new();
    let worker = h.register("w", &[], 300);
    let Reply::ClaimWaiting { waiter } = claim(&mut h, &worker, 5_000) else {
        panic!("should wait")
    };
    h.advance(4_999);
    assert!(answers(&mut h).is_empty());
    h.advance(1);
    assert_eq!(answers(&mut h), vec![(waiter, Ok(Reply::NoTask))]);
    let Reply::ClaimWaiting { waiter } = claim(&mut h, &worker, 5_000) else {
        panic!("should wait")
    };
    h.ok(Command::CancelClaim { waiter });
    h.ok(Command::CancelClaim { waiter });
    let t = create(&mut h, "job", &[], 0);
    assert!(answers(&mut h).is_empty());
    assert_eq!(task(&mut h, &t.id.to_string()).status, TaskStatus::Pending);
}

#[test]
fn a_forgotten_agents_waiting_claim_is_answered_and_leaves_the_line_with_it() {
    // Found by the simulator (seed 294): a claim left waiting for a forgotten agent counted
    // against waiters_max, and a snapshot cannot name its agent, so a restart's replay
    // accepted a claim the live core had refused.
    let mut h = Harness::with_config(CoreConfig {
        seed: 42,
        dead_retention_ms: SECOND,
        ..CoreConfig::default()
    });
    let worker = h.register("w", &[], 300);
    let Reply::ClaimWaiting { waiter } = claim(&mut h, &worker, 3_600_000) else {
        panic!("should wait")
    };
    h.ok(Command::Deregister {
        agent_id: worker.clone(),
    });
    h.advance(SECOND - 1);
    assert!(
        answers(&mut h).is_empty(),
        "DEAD, not yet forgotten: the claim still waits"
    );
    h.advance(1);
    let answered = answers(&mut h);
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].0, waiter);
    let error = answered[0].1.clone().unwrap_err();
    assert_eq!(error.code, ErrorCode::FailedPrecondition);
    assert!(
        error.message.contains("was forgotten while its claim waited"),
        "{}",
        error.message
    );
    assert_eq!(h.core.stats().claims_waiting, 0);
}

#[test]
fn complete_by_the_holder_releases_the_lease_and_only_the_holder_may_complete() {
    let mut h = Harness::new();
    let worker = h.register("w", &[], 300);
    let other = h.register("o", &[], 300);
    create(&mut h, "job", &[], 0);
    let (t, _) = claimed(&mut h, &worker);
    h.topics();
    let error = complete(&mut h, &t, &other).unwrap_err();
    assert_eq!(error.code, ErrorCode::FailedPrecondition);
    assert!(error.message.contains("claimed by agent"), "{}", error.message);
    h.advance(2 * SECOND);
    complete(&mut h, &t, &worker).expect("the holder completes");
    assert_eq!(h.topics(), ["lease.released", "task.completed"]);
    let done = task(&mut h, &t.id.to_string());
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(&*done.output, b"done");
    assert_eq!(done.completed_at, Some(T0 + 2 * SECOND));
    assert_eq!(
        done.claimed_by.map(|a| a.to_string()),
        Some(worker.clone()),
        "who completed it stays on record"
    );
    assert!(h.core.leases().is_empty());
    assert_eq!(
        complete(&mut h, &t, &worker).unwrap_err().code,
        ErrorCode::FailedPrecondition
    );
    let unknown = h.err(Command::CompleteTask {
        task_id: "f".repeat(32),
        agent_id: worker,
        output: vec![],
    });
    assert_eq!(unknown.code, ErrorCode::NotFound);
}

#[test]
fn fail_retries_until_max_retries_then_the_task_is_dead() {
    let mut h = Harness::new();
    let worker = h.register("w", &[], 300);
    create(&mut h, "flaky", &[], 1);
    let (t, _) = claimed(&mut h, &worker);
    h.topics();
    fail(&mut h, &t, &worker).expect("the holder fails it");
    assert_eq!(h.topics(), ["lease.released", "task.failed"]);
    let again = task(&mut h, &t.id.to_string());
    assert_eq!((again.status, again.retry_count), (TaskStatus::Pending, 1));
    assert_eq!(&*again.failure_reason, "boom");
    assert_eq!(again.claimed_by, None);
    let (t, _) = claimed(&mut h, &worker);
    fail(&mut h, &t, &worker).expect("fails again");
    let dead = task(&mut h, &t.id.to_string());
    assert_eq!((dead.status, dead.retry_count), (TaskStatus::Dead, 2));
    assert_eq!(
        h.topics(),
        ["lease.acquired", "task.claimed", "lease.released", "task.dead"]
    );
    assert_eq!(claim(&mut h, &worker, 0), Reply::NoTask);
}

#[test]
fn the_claim_lease_expiring_fails_the_task_and_renewing_it_keeps_the_claim() {
    let mut h = Harness::new();
    let worker = h.register("w", &[], 3600);
    h.ok(Command::CreateTask {
        kind: "slow".into(),
        input: vec![],
        required_tools: vec![],
        max_retries: 3,
        ttl_seconds: 10,
    });
    let (t, lease) = claimed(&mut h, &worker);
    h.advance(9 * SECOND);
    h.ok(Command::RenewLease {
        task_id: t.id.to_string(),
        agent_id: worker.clone(),
        token: lease.token,
        ttl_seconds: 0,
    });
    h.advance(9 * SECOND);
    assert_eq!(task(&mut h, &t.id.to_string()).status, TaskStatus::Claimed);
    h.topics();
    h.advance(SECOND);
    assert_eq!(h.topics(), ["lease.expired", "task.failed"]);
    let failed = task(&mut h, &t.id.to_string());
    assert_eq!((failed.status, failed.retry_count), (TaskStatus::Pending, 1));
    assert_eq!(&*failed.failure_reason, "lease expired");
}

#[test]
fn the_holders_death_fails_its_task_after_its_leases_and_elections_in_contract_order() {
    let mut h = Harness::new();
    let worker = h.register("w", &[], 10);
    let rescuer = h.register("r", &[], 3600);
    create(&mut h, "job", &[], 5);
    let (t, _) = claimed(&mut h, &worker);
    h.campaign("g", &worker);
    let Reply::ClaimWaiting { waiter } = claim(&mut h, &rescuer, 3_600_000) else {
        panic!("should wait")
    };
    h.topics();
    h.advance(20 * SECOND);
    let topics = h.topics();
    let from_death = &topics[topics.iter().position(|t| *t == "agent.died").expect("died")..];
    assert_eq!(
        from_death,
        [
            "agent.died",
            "lease.released",
            "leader.changed",
            "task.failed",
            "lease.acquired",
            "task.claimed"
        ]
    );
    let handed = answers(&mut h);
    assert_eq!(handed.len(), 1);
    assert_eq!(
        handed[0].0, waiter,
        "the failed task goes straight to the waiting claimer"
    );
    let again = task(&mut h, &t.id.to_string());
    assert_eq!(again.retry_count, 1);
    assert_eq!(again.claimed_by.map(|a| a.to_string()), Some(rescuer));
}

#[test]
fn releasing_the_claim_lease_fails_the_task() {
    let mut h = Harness::new();
    let worker = h.register("w", &[], 300);
    create(&mut h, "job", &[], 0);
    let (t, lease) = claimed(&mut h, &worker);
    h.ok(Command::ReleaseLease {
        task_id: t.id.to_string(),
        agent_id: worker,
        token: lease.token,
    });
    let dead = task(&mut h, &t.id.to_string());
    assert_eq!(
        (dead.status, &*dead.failure_reason),
        (TaskStatus::Dead, "lease released")
    );
}

#[test]
fn an_undeliverable_claim_goes_back_to_pending_without_a_retry_and_to_the_next_claimer() {
    let mut h = Harness::new();
    let gone = h.register("gone", &[], 300);
    let next = h.register("next", &[], 300);
    create(&mut h, "job", &[], 0);
    let (t, lease) = claimed(&mut h, &gone);
    let Reply::ClaimWaiting { waiter } = claim(&mut h, &next, 60_000) else {
        panic!("should wait")
    };
    let wrong = h.err(Command::ReturnTask {
        task_id: t.id.to_string(),
        token: lease.token + 1,
    });
    assert_eq!(wrong.code, ErrorCode::FailedPrecondition);
    h.ok(Command::ReturnTask {
        task_id: t.id.to_string(),
        token: lease.token,
    });
    let handed = answers(&mut h);
    assert_eq!(handed.len(), 1);
    assert_eq!(handed[0].0, waiter);
    let now = task(&mut h, &t.id.to_string());
    assert_eq!(now.retry_count, 0, "no retry is counted");
    assert_eq!(&*now.failure_reason, "", "and no failure is recorded");
    assert_eq!(now.claimed_by.map(|a| a.to_string()), Some(next));
}

#[test]
fn finished_tasks_are_forgotten_after_the_retention() {
    let mut h = Harness::with_config(CoreConfig {
        seed: 42,
        task_retention_ms: 60 * SECOND,
        ..CoreConfig::default()
    });
    let worker = h.register("w", &[], 3600);
    create(&mut h, "job", &[], 0);
    let (t, _) = claimed(&mut h, &worker);
    complete(&mut h, &t, &worker).expect("completes");
    h.advance(59 * SECOND);
    assert_eq!(task(&mut h, &t.id.to_string()).status, TaskStatus::Completed);
    h.advance(SECOND);
    let gone = h.err(Command::GetTask {
        task_id: t.id.to_string(),
    });
    assert_eq!(gone.code, ErrorCode::NotFound);
    assert_eq!(h.core.stats().tasks_completed, 0);
}

#[test]
fn list_tasks_is_in_creation_order_filters_by_status_and_pages() {
    let mut h = Harness::new();
    let worker = h.register("w", &[], 300);
    for i in 0..5 {
        create(&mut h, &format!("t{i}"), &[], 0);
    }
    let (first, _) = claimed(&mut h, &worker);
    assert_eq!(&*first.kind, "t0");
    assert_eq!(list(&mut h, None, 0, "").0, ["t0", "t1", "t2", "t3", "t4"]);
    assert_eq!(list(&mut h, Some(TaskStatus::Claimed), 0, "").0, ["t0"]);
    assert_eq!(list(&mut h, Some(TaskStatus::Failed), 0, "").0, Vec::<String>::new());
    let (page, token) = list(&mut h, Some(TaskStatus::Pending), 2, "");
    assert_eq!(page, ["t1", "t2"]);
    assert!(!token.is_empty());
    let (page, token) = list(&mut h, Some(TaskStatus::Pending), 2, &token);
    assert_eq!(page, ["t3", "t4"]);
    assert!(token.is_empty(), "the last page has no next token");
    let bad = h.err(Command::ListTasks {
        status: None,
        page_size: 0,
        page_token: "nope".into(),
        bytes_left: None,
    });
    assert_eq!(bad.code, ErrorCode::InvalidArgument);
}

#[test]
fn task_limits_are_resource_exhausted() {
    let mut h = Harness::with_config(CoreConfig {
        seed: 42,
        tasks_max: 2,
        task_bytes_max: 10,
        waiters_max: 1,
        ..CoreConfig::default()
    });
    let worker = h.register("w", &["x"], 300);
    create(&mut h, "12345678", &[], 0);
    let big = h.err(Command::CreateTask {
        kind: "t".into(),
        input: vec![0; 3],
        required_tools: vec![],
        max_retries: 0,
        ttl_seconds: 0,
    });
    assert_eq!(big.code, ErrorCode::ResourceExhausted);
    create(&mut h, "1", &["y"], 0);
    assert_eq!(
        h.err(Command::CreateTask {
            kind: "t".into(),
            input: vec![],
            required_tools: vec![],
            max_retries: 0,
            ttl_seconds: 0,
        })
        .code,
        ErrorCode::ResourceExhausted
    );
    claimed(&mut h, &worker);
    let Reply::ClaimWaiting { .. } = claim(&mut h, &worker, 1000) else {
        panic!("should wait")
    };
    assert_eq!(
        h.err(Command::ClaimTask {
            agent_id: worker,
            wait_ms: 1000
        })
        .code,
        ErrorCode::ResourceExhausted
    );
}

#[test]
fn a_snapshot_restores_tasks_claims_and_waiters_exactly() {
    let mut h = Harness::new();
    let worker = h.register("w", &["web"], 300);
    let idle = h.register("idle", &["gpu"], 300);
    create(&mut h, "a", &["web"], 2);
    create(&mut h, "b", &[], 0);
    create(&mut h, "c", &["sql"], 0);
    let (a, _) = claimed(&mut h, &worker);
    let (b, _) = claimed(&mut h, &worker);
    complete(&mut h, &b, &worker).expect("completes");
    let Reply::ClaimWaiting { .. } = claim(&mut h, &idle, 60_000) else {
        panic!("should wait")
    };
    let snapshot = h.core.snapshot();
    let mut restored = Core::restore(h.core.config().clone(), snapshot.clone());
    restored.check_invariants();
    assert_eq!(restored.snapshot(), snapshot);
    // Both answer the next commands the same way.
    for core in [&mut h.core, &mut restored] {
        let now = T0 + SECOND;
        let created = core.apply(
            now,
            Command::CreateTask {
                kind: "gpu".into(),
                input: vec![],
                required_tools: vec!["gpu".into()],
                max_retries: 0,
                ttl_seconds: 0,
            },
        );
        assert!(created.is_ok());
        let mut out = Vec::new();
        core.drain_claim_answers(&mut out);
        assert_eq!(out.len(), 1, "the waiter survived the snapshot");
        core.apply(
            now,
            Command::FailTask {
                task_id: a.id.to_string(),
                agent_id: worker.clone(),
                reason: "x".into(),
            },
        )
        .expect("the claim survived the snapshot");
        core.check_invariants();
    }
    assert_eq!(h.core.snapshot(), restored.snapshot());
}

#[test]
fn a_restart_drops_waiting_claims() {
    let mut h = Harness::new();
    let worker = h.register("w", &[], 300);
    let Reply::ClaimWaiting { .. } = claim(&mut h, &worker, 60_000) else {
        panic!("should wait")
    };
    h.core.restart_grace(T0 + SECOND);
    h.core.check_invariants();
    assert_eq!(h.core.stats().claims_waiting, 0);
    h.now = T0 + SECOND;
    let t = create(&mut h, "job", &[], 0);
    assert!(answers(&mut h).is_empty());
    assert_eq!(task(&mut h, &t.id.to_string()).status, TaskStatus::Pending);
}
