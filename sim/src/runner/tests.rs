use super::*;
use crate::step::Trace;

fn runner_after(steps: &str) -> Runner {
    let trace = Trace::parse(&format!(
        "agentkeeper-sim trace v1
config seed=3 start_ms=1700000000000 dead_retention_ms=60000 event_ring_max=1024 watchers_max=4 agents_max=8 \
leases_max=4 policies_max=4 groups_max=2 snapshot_every=1000 planted_bug=none
{steps}"
    ))
    .expect("the trace parses");
    let mut runner = Runner::new(&trace.config);
    for step in &trace.steps {
        runner.step(step).expect("the steps before the damage run clean");
    }
    runner
}

const TWO_AGENTS: &str = "0 1700000000000 register ttl=30 name=\"a\" desc=\"\" version=\"\" tools=[] caps=[] meta=[]
1 1700000000000 register ttl=30 name=\"b\" desc=\"\" version=\"\" tools=[] caps=[] meta=[]
";

fn crash(index: usize) -> Step {
    Step {
        index,
        at: 1_700_000_001_000,
        op: Op::Crash { torn: None },
        lost: false,
        io: crate::step::Io::Durable,
    }
}

#[test]
fn a_record_damaged_before_the_tail_is_reported_as_recovery_torn_tail_cut() {
    let mut runner = runner_after(TWO_AGENTS);
    // The first record's payload: the scan must refuse the log, which loses both agents.
    runner.image.damage(agentkeeper::store::wal::HEADER_BYTES + 9);
    let violation = runner.step(&crash(2)).expect_err("damage is not a torn tail");
    assert_eq!(violation.invariant, invariant::RECOVERY_TORN_TAIL_CUT, "{violation}");
    assert!(violation.detail.contains("damaged"), "{violation}");
}

#[test]
fn a_damaged_last_record_cut_as_torn_when_none_was_torn_is_reported() {
    let mut runner = runner_after(TWO_AGENTS);
    let last = usize::try_from(runner.image.whole_len()).unwrap() - 1;
    runner.image.damage(last);
    let violation = runner.step(&crash(2)).expect_err("an acknowledged record was lost");
    assert_eq!(violation.invariant, invariant::RECOVERY_TORN_TAIL_CUT, "{violation}");
    assert!(
        violation.detail.contains("an untorn log of 2 whole records"),
        "{violation}"
    );
}

#[test]
fn an_intact_image_recovers_and_every_stream_ends() {
    let mut runner = runner_after(&format!(
        "{TWO_AGENTS}2 1700000000000 watch topics=[] from=0 buffer=8\n"
    ));
    assert!(runner.subscription_open(SubRef(2)));
    runner.step(&crash(3)).expect("a clean recovery");
    assert!(!runner.subscription_open(SubRef(2)));
    assert_eq!(runner.core().stats().watchers, 0);
    assert_eq!(runner.core().agents().len(), 2);
}
