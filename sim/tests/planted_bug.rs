//! With the core's planted bugs the simulator must fail and name the invariant each one breaks:
//! a fencing token handed out again on every tenth grant, and replies released before the
//! entries they depend on are durable.

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

/// The machine releases replies and deliveries without waiting for `Persisted`: the very first
/// write's reply leaves before its entry is on the (simulated) disk.
#[test]
fn a_reply_released_before_its_entry_is_durable_is_reported_by_the_durability_invariant() {
    let report = run_seed(1, 20_000, PlantedBug::ReplyBeforeDurable);
    let violation = report.violation.expect("the planted ordering bug must be caught");
    assert_eq!(
        violation.invariant,
        invariant::RELEASED_ONLY_WHEN_DURABLE,
        "{violation}"
    );
    assert!(violation.detail.contains("are durable"), "{violation}");
    // The same steps without the bug are clean.
    assert_eq!(run_seed(1, report.steps, PlantedBug::None).violation, None);
}
