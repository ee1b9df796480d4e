//! The disk's faults, step by step through the real machine: a slow write holds replies until
//! it is durable and a crash meanwhile loses exactly what was not written; a crash between a
//! durable write and its replies keeps the change that nobody heard of; a failed or short write
//! turns the daemon read-only (writes and new streams refused, open streams ended) until a
//! restart recovers the durable state, cutting a short write's torn tail.

use agentkeeper::core::{ErrorCode, Reply};
use agentkeeper_sim::runner::Runner;
use agentkeeper_sim::step::{SubRef, Trace};

const CONFIG: &str = "agentkeeper-sim trace v1
config seed=3 start_ms=1700000000000 dead_retention_ms=60000 event_ring_max=1024 watchers_max=4 agents_max=8 \
leases_max=4 policies_max=4 groups_max=2 snapshot_every=1000 planted_bug=none
";

const REGISTER: &str = "0 1700000000000 register ttl=30 name=\"a\" desc=\"\" version=\"\" tools=[] caps=[] meta=[]\n";

/// A runner and the parsed steps of `steps` (after the config line).
fn steps(steps: &str) -> (Runner, Vec<agentkeeper_sim::step::Step>) {
    let trace = Trace::parse(&format!("{CONFIG}{steps}")).expect("the trace parses");
    (Runner::new(&trace.config), trace.steps)
}

fn run(runner: &mut Runner, step: &agentkeeper_sim::step::Step) {
    runner.step(step).unwrap_or_else(|v| panic!("step {}: {v}", step.index));
}

fn policy(index: usize, id: &str, io: &str) -> String {
    format!("{index} 1700000000000 set_policy id=\"{id}\" subject=\"a\" action=\"b\" resource=\"*\" effect=allow{io}\n")
}

#[test]
fn a_slow_write_holds_its_reply_and_a_crash_before_it_lands_loses_exactly_that_change() {
    let (mut runner, steps) = steps(&format!(
        "{REGISTER}\
1 1700000000000 acquire key=\"k0\" agent=@0 ttl=60 io=slow
2 1700000001000 crash
3 1700000001000 acquire key=\"k0\" agent=@0 ttl=60
"
    ));
    run(&mut runner, &steps[0]);
    run(&mut runner, &steps[1]);
    assert_eq!(runner.last_reply(), None, "the grant waits for the disk");
    assert!(runner.writes_pending());
    assert_eq!(runner.core().leases().len(), 1, "applied in memory");
    run(&mut runner, &steps[2]);
    assert!(
        runner.core().leases().is_empty(),
        "never durable, so lost with the process"
    );
    assert!(!runner.writes_pending());
    run(&mut runner, &steps[3]);
    let Some(Ok(Reply::Lease { lease, acquired: true })) = runner.last_reply() else {
        panic!("granted again: {:?}", runner.last_reply())
    };
    assert_eq!(
        lease.token, 1,
        "the lost grant's token was never seen, so it is granted again"
    );
}

#[test]
fn a_slow_write_answers_once_a_later_write_lands_and_the_client_then_knows_its_token() {
    let (mut runner, steps) = steps(&format!(
        "{REGISTER}\
1 1700000000000 acquire key=\"k0\" agent=@0 ttl=60 io=slow
2 1700000000500 get_agent agent=@0 io=slow
3 1700000001000 tick
4 1700000001000 renew key=\"k0\" agent=@0 token=@1 ttl=0
"
    ));
    for step in &steps[..3] {
        run(&mut runner, step);
    }
    assert_eq!(
        runner.last_reply(),
        None,
        "a read behind an undurable write waits with it"
    );
    run(&mut runner, &steps[3]);
    assert!(!runner.writes_pending(), "the tick's step wrote the batch");
    run(&mut runner, &steps[4]);
    assert!(
        matches!(runner.last_reply(), Some(Ok(Reply::Lease { .. }))),
        "the renewal used the token the held reply carried: {:?}",
        runner.last_reply()
    );
}

#[test]
fn a_crash_between_a_durable_write_and_its_reply_keeps_the_change_nobody_heard_of() {
    let (mut runner, steps) = steps(&format!(
        "{REGISTER}\
1 1700000000000 acquire key=\"k0\" agent=@0 ttl=60 io=crash_after_write
2 1700000001000 renew key=\"k0\" agent=@0 token=@1 ttl=0
"
    ));
    run(&mut runner, &steps[0]);
    run(&mut runner, &steps[1]);
    assert_eq!(runner.last_reply(), None, "the daemon died before the reply left");
    assert_eq!(runner.coverage().faults.get("crash_after_write"), Some(&1));
    let leases = runner.core().leases();
    assert_eq!(leases.len(), 1, "the grant was durable, so it survives: {leases:?}");
    run(&mut runner, &steps[2]);
    let error = runner
        .last_reply()
        .expect("answered")
        .clone()
        .expect_err("the client never learned the token");
    assert_eq!(error.code, ErrorCode::PermissionDenied, "{error}");
}

#[test]
fn a_failed_fsync_makes_the_daemon_read_only_ends_its_streams_and_a_restart_recovers_the_durable_state() {
    let (mut runner, steps) = steps(&format!(
        "{REGISTER}\
1 1700000000000 watch topics=[] from=0 buffer=8
{}3 1700000000000 get_agent agent=@0
4 1700000000000 watch topics=[] from=0 buffer=8
{}6 1700000001000 crash
{}",
        policy(2, "p1", " io=fsync_fails"),
        policy(5, "p2", ""),
        policy(7, "p3", "").replacen("1700000000000", "1700000001000", 1),
    ));
    let mut steps = steps.iter();
    let mut next = |runner: &mut Runner| run(runner, steps.next().expect("a step"));
    next(&mut runner);
    next(&mut runner);
    assert!(runner.subscription_open(SubRef(1)));
    next(&mut runner);
    assert!(runner.read_only(), "the write failed");
    let error = runner
        .last_reply()
        .cloned()
        .expect("answered")
        .expect_err("not durable");
    assert_eq!(error.code, ErrorCode::Unavailable, "{error}");
    assert!(
        !runner.subscription_open(SubRef(1)),
        "the stream ended: nothing will be durable again"
    );
    next(&mut runner);
    assert!(
        matches!(runner.last_reply(), Some(Ok(Reply::Agent(_)))),
        "reads are served"
    );
    next(&mut runner);
    let refused = runner
        .last_reply()
        .cloned()
        .expect("answered")
        .expect_err("no new streams");
    assert_eq!(refused.code, ErrorCode::Unavailable);
    next(&mut runner);
    let refused = runner.last_reply().cloned().expect("answered").expect_err("no writes");
    assert_eq!(refused.code, ErrorCode::Unavailable);
    next(&mut runner);
    assert!(!runner.read_only(), "a restart serves writes again");
    assert!(
        runner.core().policies().is_empty(),
        "the failed write never became durable"
    );
    next(&mut runner);
    assert_eq!(runner.core().policies().len(), 1);
}

#[test]
fn a_short_write_leaves_a_torn_tail_that_the_restart_cuts() {
    let (mut runner, steps) = steps(&format!(
        "{REGISTER}{}2 1700000001000 crash\n",
        policy(1, "p1", " io=short_write:500")
    ));
    run(&mut runner, &steps[0]);
    run(&mut runner, &steps[1]);
    assert!(runner.read_only());
    // The runner checks at the restart that the scan cut exactly the torn bytes.
    run(&mut runner, &steps[2]);
    assert!(runner.core().policies().is_empty());
    assert_eq!(runner.core().agents().len(), 1, "the durable agent is back");
    assert_eq!(runner.coverage().faults.get("short_write"), Some(&1));
}
