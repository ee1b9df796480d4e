//! A written trace replays to the same digest; a shrunk failing trace still fails the same way.

use agentkeeper::core::PlantedBug;
use agentkeeper_sim::step::Trace;
use agentkeeper_sim::{record_seed, replay, shrink};

#[test]
fn a_written_trace_replays_to_the_same_digest() {
    let (report, trace) = record_seed(11, 2_000, PlantedBug::None);
    let text = trace.render();
    let parsed = Trace::parse(&text).expect("a rendered trace parses");
    assert_eq!(parsed.steps, trace.steps, "the trace text round-trips");
    let replayed = replay(&parsed);
    assert_eq!(replayed.steps, report.steps);
    assert_eq!(replayed.digest, report.digest);
    assert_eq!(parsed.digest.as_deref(), Some(report.digest.as_str()));
    assert_eq!(replayed.violation, report.violation);
}

#[test]
fn a_shrunk_failing_trace_still_fails_with_the_same_invariant_and_is_shorter() {
    let (report, trace) = record_seed(19, 2_000, PlantedBug::ReuseFencingToken);
    let violation = report.violation.expect("the planted bug fails the run");
    let shrunk = shrink(&trace, violation.invariant, 2_000_000);
    assert!(shrunk.steps.len() < trace.steps.len(), "nothing was dropped");
    let text = shrunk.render();
    let replayed = replay(&Trace::parse(&text).expect("a shrunk trace parses"));
    assert_eq!(replayed.violation.map(|v| v.invariant), Some(violation.invariant));
    assert_eq!(Some(replayed.digest), shrunk.digest);
}
