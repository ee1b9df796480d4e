//! Same seed, same run, bit for bit: the digest of one seed is pinned (its steps include task
//! replies and answers to waiting claims), and two runs agree.

use agentkeeper::core::PlantedBug;
use agentkeeper_sim::run_seed;

#[test]
fn one_seeds_digest_is_stable_and_two_runs_agree() {
    let first = run_seed(DIGEST_SEED, DIGEST_STEPS, PlantedBug::None);
    let second = run_seed(DIGEST_SEED, DIGEST_STEPS, PlantedBug::None);
    assert_eq!(first.violation, None);
    assert_eq!(first.steps, DIGEST_STEPS);
    assert_eq!(first.digest, second.digest, "two runs of one seed differ");
    assert_eq!(first.digest, DIGEST_HEX, "the digest of seed {DIGEST_SEED} changed");
}

const DIGEST_SEED: u64 = 7;
const DIGEST_STEPS: u64 = 6_000;
const DIGEST_HEX: &str = "efb66cb1b53a6166";
