//! Tasks in the simulator: a task-heavy seed runs clean, and hand-written traces pin what the
//! runner does as the driver: a claim whose caller is gone goes back without a retry, a waiting
//! claim of an agent that stopped being ALIVE is refused and passed over, and a crash keeps
//! tasks, claims and retry counts, drops waiting claims, and keeps claim tokens increasing.

use agentkeeper::core::tasks::TaskStatus;
use agentkeeper::core::{ErrorCode, Outcome, Reply};
use agentkeeper_sim::run_seed;
use agentkeeper_sim::runner::Runner;
use agentkeeper_sim::step::{ClaimRef, Planted, Trace};
use agentkeeper_sim::swarm::Generator;

/// A seed that spends well over a third of its steps on tasks, with crashes and lost replies.
const TASK_HEAVY_SEED: u64 = 23;

#[test]
fn a_task_heavy_seed_runs_clean() {
    let shape = Generator::new(TASK_HEAVY_SEED, Planted::None);
    assert!(
        shape.swarm().task_per_mille() >= 400,
        "seed {TASK_HEAVY_SEED} is not task-heavy"
    );
    let report = run_seed(TASK_HEAVY_SEED, 20_000, Planted::None);
    assert_eq!(report.violation, None);
    let coverage = &report.coverage;
    for op in ["create_task", "claim_task", "complete_task", "fail_task", "list_tasks"] {
        assert!(
            coverage.ops.get(op).is_some_and(|&n| n > 100),
            "{op}: {:?}",
            coverage.ops
        );
    }
    for fault in ["claim_answered", "claim_timed_out", "claim_returned", "crash"] {
        assert!(
            coverage.faults.get(fault).is_some_and(|&n| n > 0),
            "{fault}: {:?}",
            coverage.faults
        );
    }
}

const CONFIG: &str = "agentkeeper-sim trace v1
config seed=3 start_ms=1700000000000 dead_retention_ms=60000 event_ring_max=1024 watchers_max=4 agents_max=8 \
leases_max=8 policies_max=4 groups_max=2 tasks_max=8 task_bytes_max=1024 waiters_max=4 task_retention_ms=60000 \
snapshot_every=3 planted_bug=none
";

/// Runs the trace's steps, each clean, handing each step's reply and delivered claim answers to
/// `check`.
fn run(steps: &str, mut check: impl FnMut(usize, &Runner)) -> Runner {
    let trace = Trace::parse(&format!("{CONFIG}{steps}")).expect("the trace parses");
    let mut runner = Runner::new(&trace.config);
    for step in &trace.steps {
        runner.step(step).unwrap_or_else(|v| panic!("{v}"));
        check(step.index, &runner);
    }
    runner
}

fn reply(runner: &Runner) -> &Reply {
    match runner.last_reply() {
        Some(Ok(reply)) => reply,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn task_reply(runner: &Runner) -> (TaskStatus, u32, String) {
    match reply(runner) {
        Reply::Task(task) => (task.status, task.retry_count, task.failure_reason.to_string()),
        other => panic!("expected a task, got {other:?}"),
    }
}

fn claimed_token(outcome: &Outcome) -> u64 {
    match outcome {
        Ok(Reply::Claimed { lease, .. }) => lease.token,
        other => panic!("expected a claim, got {other:?}"),
    }
}

const TWO_AGENTS: &str =
    "0 1700000000000 register ttl=30 name=\"a\" desc=\"\" version=\"\" tools=[\"sql\"] caps=[] meta=[]
1 1700000000000 register ttl=30 name=\"b\" desc=\"\" version=\"\" tools=[] caps=[] meta=[]
";

/// A claim whose reply cannot be delivered goes back to PENDING at once, no retry counted: a
/// lost reply to a claim granted at once, and a task handed to a waiting claim whose caller
/// went away.
#[test]
fn a_claim_whose_caller_is_gone_goes_back_without_a_retry() {
    let runner = run(
        &format!(
            "{TWO_AGENTS}2 1700000000000 claim_task agent=@1 wait=30000 lost
3 1700000001000 create_task type=\"t\" input=\"x\" tools=[] retries=0 ttl=60
4 1700000001000 get_task task=@3
5 1700000002000 claim_task agent=@0 wait=0 lost
6 1700000002000 get_task task=@3
7 1700000003000 claim_task agent=@0 wait=0
"
        ),
        |index, runner| match index {
            4 | 6 => assert_eq!(task_reply(runner), (TaskStatus::Pending, 0, String::new())),
            7 => assert!(matches!(reply(runner), Reply::Claimed { .. })),
            _ => {}
        },
    );
    assert_eq!(runner.coverage().faults.get("claim_returned"), Some(&2));
}

/// Agent a (ttl 1 s) is UNREACHABLE when a task appears: its earlier waiting claim is answered
/// FAILED_PRECONDITION and passed over, and b's claim behind it gets the task.
#[test]
fn a_waiting_claim_of_an_agent_no_longer_alive_is_refused_and_passed_over() {
    run(
        "0 1700000000000 register ttl=1 name=\"a\" desc=\"\" version=\"\" tools=[] caps=[] meta=[]
1 1700000000000 register ttl=30 name=\"b\" desc=\"\" version=\"\" tools=[] caps=[] meta=[]
2 1700000000000 claim_task agent=@0 wait=60000
3 1700000000000 claim_task agent=@1 wait=60000
4 1700000001500 create_task type=\"t\" input=\"\" tools=[] retries=0 ttl=60
5 1700000001500 complete_task task=@3 agent=@1 output=\"done\"
",
        |index, runner| {
            if index == 4 {
                let answers = runner.claim_answers();
                assert_eq!(answers.len(), 2, "{answers:?}");
                assert_eq!(answers[0].0, 2);
                assert!(matches!(&answers[0].1, Err(e) if e.code == ErrorCode::FailedPrecondition));
                assert_eq!(answers[1].0, 3);
                claimed_token(&answers[1].1);
            }
        },
    );
}

/// A crash keeps tasks, their claims and retry counts (a snapshot image every 3 records), drops
/// the waiting claim (a task created after it stays PENDING, nobody is answered), and the claim
/// lease granted after it carries a higher token than any before.
#[test]
fn a_crash_keeps_tasks_claims_and_retries_drops_waiting_claims_and_tokens_keep_increasing() {
    let mut tokens = Vec::new();
    let runner = run(
        &format!(
            "{TWO_AGENTS}2 1700000000000 create_task type=\"t\" input=\"x\" tools=[] retries=2 ttl=60
3 1700000000000 claim_task agent=@0 wait=0
4 1700000001000 fail_task task=@3 agent=@0 reason=\"boom\"
5 1700000001000 claim_task agent=@1 wait=0
6 1700000001000 claim_task agent=@0 wait=60000
7 1700000002000 crash
8 1700000002000 create_task type=\"u\" input=\"\" tools=[] retries=0 ttl=60
9 1700000002000 get_task task=@2
10 1700000002000 complete_task task=@5 agent=@1 output=\"ok\"
11 1700000003000 claim_task agent=@0 wait=0
"
        ),
        |index, runner| match index {
            3 | 5 | 11 => tokens.push(claimed_token(runner.last_reply().expect("a visible reply"))),
            6 => assert!(matches!(reply(runner), Reply::ClaimWaiting { .. })),
            7 => assert!(
                !runner.claim_waiting(ClaimRef(6)),
                "the restart dropped the waiting claim"
            ),
            8 => {
                assert_eq!(task_reply(runner).0, TaskStatus::Pending);
                assert!(runner.claim_answers().is_empty());
            }
            9 => assert_eq!(task_reply(runner), (TaskStatus::Claimed, 1, "boom".into())),
            10 => assert!(matches!(reply(runner), Reply::Done)),
            _ => {}
        },
    );
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    let faults = &runner.coverage().faults;
    assert_eq!(faults.get("claims_dropped"), Some(&1), "{faults:?}");
    assert!(faults.get("recovered_from_snapshot").is_some(), "{faults:?}");
}

/// A claim torn by the crash was never answered: after the restart the task is PENDING again
/// and the next claim may carry the token nobody saw.
#[test]
fn a_torn_claim_is_lost_whole() {
    for tear in ["cut:0", "zeros:500", "garbage:999"] {
        run(
            &format!(
                "{TWO_AGENTS}2 1700000000000 create_task type=\"t\" input=\"x\" tools=[] retries=0 ttl=60
3 1700000001000 crash torn={tear} claim_task agent=@0 wait=0
4 1700000001000 get_task task=@2
5 1700000001000 claim_task agent=@0 wait=0
"
            ),
            |index, runner| match index {
                4 => assert_eq!(task_reply(runner), (TaskStatus::Pending, 0, String::new())),
                5 => assert_eq!(claimed_token(runner.last_reply().expect("a visible reply")), 1),
                _ => {}
            },
        );
    }
}
