//! The cluster simulator: real nodes (raft-rs and the replicated core) under seeded network
//! faults, partitions, pauses and crashes keep every invariant, converge once the faults heal,
//! run bit for bit from a seed, and a planted consensus misuse is caught.

use agentkeeper::cluster::ClusterPlanted;
use agentkeeper_sim::cluster::{invariant, run_cluster};

#[test]
fn three_and_five_node_clusters_keep_every_invariant_and_converge_after_the_faults_heal() {
    for nodes in [3, 5] {
        for seed in 1..=3 {
            let report = run_cluster(seed, nodes, 2_000, ClusterPlanted::None);
            assert_eq!(report.violation, None, "{nodes} nodes, seed {seed}");
        }
    }
}

#[test]
fn the_seeds_strike_every_fault_and_leadership_changes_hands() {
    let mut struck = std::collections::BTreeMap::new();
    for seed in 1..=4 {
        let report = run_cluster(seed, 3, 4_000, ClusterPlanted::None);
        assert_eq!(report.violation, None, "seed {seed}");
        for (what, count) in report.coverage {
            *struck.entry(what).or_insert(0) += count;
        }
    }
    for fault in [
        "message_lost",
        "message_doubled",
        "partition",
        "heal",
        "crash",
        "crash_mid_sync",
        "crash_after_snapshot",
        "unsynced_records_lost",
        "restart",
        "pause",
    ] {
        assert!(
            struck.get(fault).copied().unwrap_or(0) > 0,
            "{fault} never struck: {struck:?}"
        );
    }
    assert!(struck["terms_led"] > 4, "leadership hardly moved: {struck:?}");
    // Registers carried their cards' vectors, which every replica applied alike (the replicas'
    // states are compared).
    assert!(
        struck.get("register_with_vector").copied().unwrap_or(0) > 0,
        "{struck:?}"
    );
    // Writes were acknowledged and refused alike.
    assert!(
        struck["acquire"] > 100 && struck["answered_unavailable"] > 0,
        "{struck:?}"
    );
}

#[test]
fn the_same_seed_runs_the_same_cluster_bit_for_bit() {
    let first = run_cluster(11, 3, 1_500, ClusterPlanted::None);
    let again = run_cluster(11, 3, 1_500, ClusterPlanted::None);
    let other = run_cluster(12, 3, 1_500, ClusterPlanted::None);
    assert_eq!(first.digest, again.digest);
    assert_eq!(first.coverage, again.coverage);
    assert_ne!(first.digest, other.digest);
}

/// Applying entries when they are appended rather than when they are committed answers a
/// client from an entry a new leader may yet overwrite.
#[test]
fn applying_entries_before_they_are_committed_is_caught() {
    for seed in 1..=2 {
        let report = run_cluster(seed, 3, 5_000, ClusterPlanted::ApplyBeforeCommit);
        let violation = report.violation.expect("the planted misuse must be caught");
        assert_eq!(
            violation.invariant,
            invariant::ACKNOWLEDGED_ONLY_WHEN_COMMITTED,
            "{violation}"
        );
        assert!(violation.detail.contains("commit index"), "{violation}");
        // The same seed without the misuse is clean for as long.
        let clean = run_cluster(seed, 3, violation.step, ClusterPlanted::None);
        assert_eq!(clean.violation, None, "seed {seed}");
    }
}

/// A leader that proposes a forwarded write each time it arrives commits a doubled message's
/// write twice. Which seeds double a forward early depends on the whole run, so the check is
/// that the first few seeds catch it (each clean without the misuse), not one seed's story.
#[test]
fn a_forwarded_write_committed_twice_is_caught() {
    let mut caught = Vec::new();
    for seed in 1..=6 {
        let report = run_cluster(seed, 3, 3_000, ClusterPlanted::ForwardTwice);
        let Some(violation) = report.violation else { continue };
        assert_eq!(
            violation.invariant,
            invariant::EACH_PROPOSAL_COMMITTED_ONCE,
            "seed {seed}: {violation}"
        );
        let clean = run_cluster(seed, 3, violation.step, ClusterPlanted::None);
        assert_eq!(clean.violation, None, "seed {seed}");
        caught.push(seed);
    }
    assert!(
        caught.len() >= 2,
        "the misuse was caught on seeds {caught:?} of 1-6 only"
    );
}

/// Reads answered from the local state without a ReadIndex: a lagging or deposed node answers
/// a policy check that misses a change already acknowledged elsewhere, and the policy history
/// no longer linearizes.
#[test]
fn reads_served_without_a_read_index_are_caught_by_the_linearizability_check() {
    for seed in [7, 8] {
        let report = run_cluster(seed, 3, 2_500, ClusterPlanted::StaleReads);
        let violation = report.violation.expect("the planted stale reads must be caught");
        assert_eq!(violation.invariant, invariant::LINEARIZABLE, "{violation}");
        let clean = run_cluster(seed, 3, 2_500, ClusterPlanted::None);
        assert_eq!(clean.violation, None, "seed {seed}");
        assert_eq!(clean.coverage.get("linearizability_checked"), Some(&1), "seed {seed}");
    }
}

/// A driver that lets a follower's acknowledgement leave before the entries it acknowledges are
/// durable: a crash mid-write loses entries the leader counted, and its commit index then runs
/// past the follower's log (raft-rs's own check stops the node).
#[test]
fn acknowledging_entries_before_the_disk_syncs_them_is_caught_by_a_crash_mid_write() {
    let report = run_cluster(3, 3, 3_000, ClusterPlanted::IgnoreSyncs);
    let violation = report.violation.expect("the planted misuse must be caught");
    assert_eq!(violation.invariant, invariant::NODE_INVARIANTS, "{violation}");
    assert!(violation.detail.contains("out of range"), "{violation}");
    let clean = run_cluster(3, 3, 3_000, ClusterPlanted::None);
    assert_eq!(clean.violation, None);
    assert!(
        clean.coverage.get("crash_mid_sync").is_some_and(|n| *n > 0),
        "{:?}",
        clean.coverage
    );
}
