//! Minimal traces (shrunk by the simulator) of core bugs it found, kept as regression tests: each
//! must replay with no violation.

use agentkeeper_sim::replay;
use agentkeeper_sim::step::Trace;

fn replay_clean(text: &str) {
    let trace = Trace::parse(text).expect("the trace parses");
    let report = replay(&trace);
    assert_eq!(report.violation, None);
}

/// An UNREACHABLE agent's death and the expiry of a lease it holds fall due in one tick, death
/// first. Before 3bf2ef2 the death clean-up released the lease, then the already-popped expiry
/// timer fired for the removed lease and `LeaseTable::remove` panicked ("invalid key"), killing
/// the core thread; the clean-up had also cancelled a timer key that the agent's new retention
/// timer had just reused.
#[test]
fn a_death_and_its_leases_expiry_due_in_one_tick_do_not_panic_the_core() {
    replay_clean(
        r#"agentkeeper-sim trace v1
config seed=1 start_ms=1700000000000 dead_retention_ms=60000 event_ring_max=1024 watchers_max=4 agents_max=8 leases_max=4 policies_max=4 groups_max=2 planted_bug=none
0 1700000000000 register ttl=2 name="a" desc="" version="" tools=[] caps=[] meta=[]
1 1700000000000 acquire key="k0" agent=@0 ttl=5
2 1700000002500 tick
3 1700000005000 tick
"#,
    );
}

/// After a pause longer than several deadlines, the core (before 3bf2ef2) fired them in rounds
/// (everything due at the start of the tick, then what that armed) instead of in deadline order:
/// agent B's death at +26 s came after agent A's UNREACHABLE at +46 s, and a lease expiring
/// after its holder died was reported `lease.expired` instead of released by the death clean-up.
#[test]
fn deadlines_due_in_one_tick_fire_in_deadline_order() {
    replay_clean(
        r#"agentkeeper-sim trace v1
config seed=42 start_ms=1700000000000 dead_retention_ms=579000 event_ring_max=1733 watchers_max=16 agents_max=34 leases_max=15 policies_max=12 groups_max=2 planted_bug=none
145 1700000007406 register ttl=46 name="a" desc="" version="" tools=[] caps=[] meta=[]
146 1700000007527 register ttl=13 name="b" desc="" version="" tools=[] caps=[] meta=[]
150 1700001308817 tick
"#,
    );
    replay_clean(
        r#"agentkeeper-sim trace v1
config seed=1 start_ms=1700000000000 dead_retention_ms=60000 event_ring_max=1024 watchers_max=4 agents_max=8 leases_max=4 policies_max=4 groups_max=2 planted_bug=none
0 1700000000000 register ttl=2 name="a" desc="" version="" tools=[] caps=[] meta=[]
1 1700000000000 acquire key="k0" agent=@0 ttl=5
2 1700000010000 tick
"#,
    );
}
