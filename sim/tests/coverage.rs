//! A fixed set of seeds that, between them, run every op (the task ops included), strike with
//! every fault (crashes, torn records and recoveries from a snapshot included), hand waiting
//! claims every kind of answer (a task, none at the deadline, a refusal), return claims whose
//! callers are gone, strike the disk with every fault (slow, failed and short writes, a crash
//! right after a write), and provoke every error class the workload can, with no violation.
//! The core's vector paths run too: card vectors applied, refused as stale, invalid or for a gone
//! agent, held of several models at once, taken inside a Register or left out of it, and Finds
//! ranked with a query vector.
//! Seeds run on two threads. Seeds 11 and 12 are there for their crashes, seed 57 for a crash that
//! drops waiting claims.

use std::collections::BTreeMap;

use agentkeeper::core::PlantedBug;
use agentkeeper_sim::step::Op;
use agentkeeper_sim::{RunReport, run_seed};

const SEEDS: [u64; 11] = [1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 57];
const STEPS: u64 = 15_000;

fn run_all() -> Vec<RunReport> {
    let (left, right) = SEEDS.split_at(SEEDS.len() / 2);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| {
            right
                .iter()
                .map(|&s| run_seed(s, STEPS, PlantedBug::None))
                .collect::<Vec<_>>()
        });
        let mut reports: Vec<RunReport> = left.iter().map(|&s| run_seed(s, STEPS, PlantedBug::None)).collect();
        reports.extend(other.join().expect("the other half ran"));
        reports
    })
}

#[test]
fn fixed_seeds_cover_every_op_fault_and_error_class_without_violations() {
    let reports = run_all();
    let mut ops: BTreeMap<&str, u64> = BTreeMap::new();
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut vectors: BTreeMap<&str, u64> = BTreeMap::new();
    for report in &reports {
        assert_eq!(report.violation, None, "seed {}", report.seed);
        assert_eq!(report.steps, STEPS, "seed {}", report.seed);
        for (op, n) in &report.coverage.ops {
            *ops.entry(op).or_default() += n;
        }
        for (fault, n) in &report.coverage.faults {
            *faults.entry(fault).or_default() += n;
        }
        for (error, n) in &report.coverage.errors {
            *errors.entry(error.clone()).or_default() += n;
        }
        for (path, n) in &report.coverage.vectors {
            *vectors.entry(path).or_default() += n;
        }
    }
    for op in Op::NAMES {
        assert!(ops.get(op).is_some_and(|&n| n > 0), "no seed ran {op}: {ops:?}");
    }
    for fault in [
        "lost_reply",
        "retry",
        "subscriber_cut_off",
        "clock_jump",
        "snapshot",
        "crash",
        "torn_crash",
        "recovered_from_snapshot",
        "claim_answered",
        "claim_timed_out",
        "claim_refused",
        "claim_returned",
        "claims_dropped",
        "slow_disk",
        "fsync_fails",
        "short_write",
        "crash_after_write",
    ] {
        assert!(
            faults.get(fault).is_some_and(|&n| n > 0),
            "no seed struck with {fault}: {faults:?}"
        );
    }
    for error in [
        "InvalidArgument",
        "NotFound",
        "PermissionDenied",
        "FailedPrecondition",
        "ResourceExhausted",
        "OutOfRange",
    ] {
        assert!(
            errors.get(error).is_some_and(|&n| n > 0),
            "no seed provoked {error}: {errors:?}"
        );
    }
    for path in [
        "card_vector_applied",
        "card_vector_stale",
        "card_vector_invalid",
        "card_vector_agent_gone",
        "several_models_held",
        "find_with_vector",
        "register_vector_applied",
        "register_vector_left_out",
    ] {
        assert!(
            vectors.get(path).is_some_and(|&n| n > 0),
            "no seed ran the vector path {path}: {vectors:?}"
        );
    }
}
