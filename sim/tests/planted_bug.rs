//! With the core's planted bug that hands out the previous fencing token again on every tenth
//! grant, the simulator must fail, and name the fencing-token invariant.

use agentkeeper::core::PlantedBug;
use agentkeeper_sim::run_seed;
use agentkeeper_sim::runner::invariant;

#[test]
fn reused_fencing_token_is_reported_by_the_fencing_token_invariant() {
    let report = run_seed(PLANTED_BUG_SEED, 20_000, PlantedBug::ReuseFencingToken);
    let violation = report.violation.expect("the planted bug must be caught");
    assert_eq!(violation.invariant, invariant::FENCING_TOKENS_INCREASE, "{violation}");
    assert!(violation.detail.contains("token"), "{violation}");
}

/// A seed whose workload grants ten leases early.
const PLANTED_BUG_SEED: u64 = 19;
