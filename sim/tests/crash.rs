//! Crash + restart from the stored bytes: seeds with crashes (torn records included) run clean,
//! tokens keep increasing across restarts, a torn grant's unseen token may be granted again, a
//! restart forgives the downtime, and a recovery that loses an acknowledged record is caught by
//! `recovery.state_matches`, with a trace that replays and shrinks.

use agentkeeper_sim::runner::invariant;
use agentkeeper_sim::step::{Op, Planted, Trace};
use agentkeeper_sim::{record_seed, replay, run_seed, shrink};

fn replay_clean(text: &str) -> agentkeeper_sim::RunReport {
    let trace = Trace::parse(text).expect("the trace parses");
    let report = replay(&trace);
    assert_eq!(report.violation, None);
    assert_eq!(report.steps as usize, trace.steps.len());
    report
}

/// Seed 12 crashes four times in its first 15 000 steps (one of them tearing a record) and
/// recovers from snapshot images; seed 11 crashes with no snapshot taken yet.
#[test]
fn seeds_with_crashes_and_torn_records_run_clean() {
    for (seed, crashes_min) in [(12, 4), (11, 2)] {
        let report = run_seed(seed, 15_000, Planted::None);
        assert_eq!(report.violation, None, "seed {seed}");
        let faults = &report.coverage.faults;
        assert!(
            faults.get("crash").is_some_and(|&n| n >= crashes_min),
            "seed {seed}: {faults:?}"
        );
        assert!(
            faults.get("torn_crash").is_some_and(|&n| n >= 1),
            "seed {seed}: {faults:?}"
        );
    }
}

#[test]
fn a_trace_with_crashes_replays_to_the_same_digest() {
    let (report, trace) = record_seed(11, 15_000, Planted::None);
    assert!(trace.steps.iter().any(|s| matches!(&s.op, Op::Crash { torn: Some(_) })));
    assert!(trace.steps.iter().any(|s| matches!(&s.op, Op::Crash { torn: None })));
    let parsed = Trace::parse(&trace.render()).expect("a rendered trace parses");
    assert_eq!(parsed.steps, trace.steps);
    let replayed = replay(&parsed);
    assert_eq!((replayed.steps, replayed.digest), (report.steps, report.digest));
}

/// Seed 25 crashes at step 3287 after a change that dropping the last record loses (its shrunk
/// trace: a Register, then the crash). (Some crashes come after a command that changed nothing,
/// such as a refused one, whose loss no check can see.)
const PLANTED_RECOVERY_SEED: u64 = 25;

#[test]
fn recovery_that_drops_the_last_logged_record_is_caught_by_recovery_state_matches() {
    let report = run_seed(PLANTED_RECOVERY_SEED, 15_000, Planted::DropLastLogRecord);
    let violation = report.violation.expect("the planted recovery bug must be caught");
    assert_eq!(violation.invariant, invariant::RECOVERY_STATE_MATCHES, "{violation}");
    assert!(violation.detail.contains("the state differs"), "{violation}");
    // The same run without the bug is clean at that step.
    assert_eq!(
        run_seed(PLANTED_RECOVERY_SEED, report.steps, Planted::None).violation,
        None
    );
}

#[test]
fn a_shrunk_recovery_failure_keeps_its_crash_and_fails_the_same_way() {
    let (report, trace) = record_seed(PLANTED_RECOVERY_SEED, 15_000, Planted::DropLastLogRecord);
    let violation = report.violation.expect("the planted recovery bug fails the run");
    let shrunk = shrink(&trace, violation.invariant, 2_000_000);
    assert!(shrunk.steps.len() < 10, "{}", shrunk.render());
    assert!(matches!(shrunk.steps.last().map(|s| &s.op), Some(Op::Crash { .. })));
    let replayed = replay(&Trace::parse(&shrunk.render()).expect("a shrunk trace parses"));
    assert_eq!(replayed.violation.map(|v| v.invariant), Some(violation.invariant));
}

const CONFIG: &str = "agentkeeper-sim trace v1
config seed=3 start_ms=1700000000000 dead_retention_ms=60000 event_ring_max=1024 watchers_max=4 agents_max=8 \
leases_max=4 policies_max=4 groups_max=2 snapshot_every=2 planted_bug=none
";

/// A token granted before a crash is never granted again after it (the runner's highest token
/// survives the crash and every grant after it must go above), the highest token being restored
/// from a snapshot image (`snapshot_every=2`: one after steps 1 and 4).
#[test]
fn fencing_tokens_keep_increasing_across_restarts() {
    let report = replay_clean(&format!(
        "{CONFIG}\
0 1700000000000 register ttl=30 name=\"a\" desc=\"\" version=\"\" tools=[] caps=[] meta=[]
1 1700000000000 acquire key=\"k0\" agent=@0 ttl=60
2 1700000001000 crash
3 1700000001000 acquire key=\"k1\" agent=@0 ttl=60
4 1700000001000 release key=\"k0\" agent=@0 token=@1
5 1700000002000 crash
6 1700000002000 acquire key=\"k0\" agent=@0 ttl=60
7 1700000002000 renew key=\"k1\" agent=@0 token=@3 ttl=0
"
    ));
    assert_eq!(report.coverage.faults.get("recovered_from_snapshot"), Some(&2));
}

/// The grant torn by the crash was never answered nor delivered: nobody saw its token, so the
/// recovered daemon may hand the same number out again; its record is cut, what came before kept.
#[test]
fn a_torn_grant_is_lost_whole_and_its_unseen_token_may_be_granted_again() {
    for tear in ["cut:0", "cut:999", "zeros:500", "garbage:10", "garbage:999"] {
        let report = replay_clean(&format!(
            "{CONFIG}\
0 1700000000000 register ttl=30 name=\"a\" desc=\"\" version=\"\" tools=[] caps=[] meta=[]
1 1700000000000 watch topics=[] from=0 buffer=8
2 1700000000000 acquire key=\"k0\" agent=@0 ttl=60
3 1700000001000 crash torn={tear} acquire key=\"k1\" agent=@0 ttl=60
4 1700000001000 acquire key=\"k1\" agent=@0 ttl=60
5 1700000001000 release key=\"k1\" agent=@0 token=@4
6 1700000001000 release key=\"k0\" agent=@0 token=@2
"
        ));
        assert_eq!(report.coverage.faults.get("torn_crash"), Some(&1), "{tear}");
    }
}

/// Down for an hour, then restarted: the agent (ttl 5 s) and its lease (ttl 10 s) would both be
/// long gone, but the restart's grace gives each a full ttl from the restart. Then time runs
/// again: without heartbeats the agent goes UNREACHABLE and dies, releasing the lease.
#[test]
fn a_restart_forgives_the_downtime_and_then_time_runs_again() {
    replay_clean(&format!(
        "{CONFIG}\
0 1700000000000 register ttl=5 name=\"a\" desc=\"\" version=\"\" tools=[] caps=[] meta=[]
1 1700000000000 acquire key=\"k0\" agent=@0 ttl=10
2 1700003600000 crash
3 1700003604000 heartbeat agent=@0
4 1700003608000 renew key=\"k0\" agent=@0 token=@1 ttl=0
5 1700003630000 tick
6 1700003630000 get_agent agent=@0
7 1700003630000 renew key=\"k0\" agent=@0 token=@1 ttl=0
"
    ));
}
