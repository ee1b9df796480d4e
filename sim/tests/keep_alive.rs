//! Keep-alive messages run under the simulator's checks: seeds that send them apply each item
//! as its unary call (the model answers every item and the reply must agree item by item), with
//! every invariant checked after each step, crashes and disk faults included.

use agentkeeper::core::PlantedBug;
use agentkeeper_sim::run_seed;

const SEEDS: [u64; 4] = [1, 2, 3, 4];
const STEPS: u64 = 6_000;

#[test]
fn keep_alive_messages_apply_heartbeats_and_renewals_item_by_item_without_violations() {
    let mut messages = 0;
    let (mut heartbeats, mut renewals, mut failed) = (0, 0, 0);
    for seed in SEEDS {
        let report = run_seed(seed, STEPS, PlantedBug::None);
        assert_eq!(report.violation, None, "seed {seed}");
        assert_eq!(report.steps, STEPS, "seed {seed}");
        let count = |name: &str| report.coverage.faults.get(name).copied().unwrap_or(0);
        messages += report.coverage.ops.get("keep_alive").copied().unwrap_or(0);
        heartbeats += count("keep_alive_heartbeat");
        renewals += count("keep_alive_renewal");
        failed += count("keep_alive_item_failed");
    }
    eprintln!(
        "{messages} keep-alive messages: {heartbeats} heartbeats and {renewals} renewals applied, {failed} items failed alone"
    );
    assert!(messages > 0, "no seed sent a keep-alive message");
    assert!(heartbeats > 0, "no keep-alive heartbeat succeeded");
    assert!(renewals > 0, "no keep-alive renewal succeeded");
    assert!(failed > 0, "no keep-alive item failed alone");
}
