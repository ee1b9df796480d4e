//! AgentKeeper's deterministic simulator (TigerBeetle VOPR style): the real core under a
//! simulated clock and a seeded RNG, a swarm workload with faults, a naive reference model run
//! side by side, an in-memory image of the daemon's store that crashes recover from, and named
//! invariants checked after every step. Same seed, same run, bit for bit: the run prints a
//! digest of every reply and delivered event.
//!
//! Architecture invariant: nothing here reads a clock or the OS RNG (only the binary times the
//! run for its steps/s); no hash-map order reaches the digest or a trace.

pub mod checks;
pub mod cluster;
pub mod digest;
pub mod image;
pub mod model;
pub mod rng;
pub mod runner;
pub mod step;
pub mod swarm;
pub mod vectors;

use runner::{Coverage, Runner, Violation};
use step::{Planted, SimConfig, Step, Trace};
use swarm::Generator;

/// The faults a seed may turn on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A reply never reaches its client; retry-safe commands are sent again (a lost Watch reply
    /// makes the driver end that stream at once).
    LostReply,
    /// A subscriber stops reading; its bounded buffer overflows and the driver cuts it off.
    StalledSubscriber,
    /// Time leaps minutes to hours between two steps.
    ClockJump,
    /// The daemon crashes and restarts from the store's bytes (the runner's image of its data
    /// dir), now and then in the middle of writing a record (a torn last record).
    CrashRestart,
    /// The disk is slow: a step's write is not durable by the step's end, so replies and events
    /// that wait for it wait across steps (and a crash meanwhile loses them).
    SlowDisk,
    /// A write fails (fsync reports an error, or a short write leaves a torn tail): the daemon
    /// serves reads only until its operator restarts it.
    FailedWrite,
    /// The daemon dies right after a write is durable, before anything it released leaves.
    CrashAfterWrite,
}

/// How one run ended.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub seed: u64,
    pub steps: u64,
    pub digest: String,
    pub violation: Option<Violation>,
    pub coverage: Coverage,
}

/// Runs `steps` generated steps for `seed`, stopping at the first violation. `planted` is a
/// core's `PlantedBug` or a [`Planted`] bug of the simulator's own.
pub fn run_seed(seed: u64, steps: u64, planted: impl Into<Planted>) -> RunReport {
    run_generated(seed, steps, planted.into(), None)
}

/// Like [`run_seed`], and records the steps run as a trace (the digest line included).
pub fn record_seed(seed: u64, steps: u64, planted: impl Into<Planted>) -> (RunReport, Trace) {
    let planted = planted.into();
    let mut recorded = Vec::new();
    let report = run_generated(seed, steps, planted, Some(&mut recorded));
    let config = Generator::new(seed, planted).config().clone();
    let trace = Trace {
        config,
        steps: recorded,
        digest: Some(report.digest.clone()),
    };
    (report, trace)
}

fn run_generated(seed: u64, steps: u64, planted: Planted, mut record: Option<&mut Vec<Step>>) -> RunReport {
    let mut generator = Generator::new(seed, planted);
    let mut runner = Runner::new(generator.config());
    let mut violation = None;
    for _ in 0..steps {
        let step = generator.next(&runner);
        let result = runner.step(&step);
        if let Some(record) = record.as_deref_mut() {
            record.push(step.clone());
        }
        if let Err(found) = result {
            violation = Some(found);
            break;
        }
        generator.observe(&step, runner.last_reply());
        generator.follow_claims(&step, &runner);
        generator.forget_ended_streams(&runner);
    }
    RunReport {
        seed,
        steps: runner.steps_run(),
        digest: runner.digest().hex(),
        violation,
        coverage: runner.coverage().clone(),
    }
}

/// Runs a recorded trace's steps, stopping at the first violation.
pub fn replay(trace: &Trace) -> RunReport {
    replay_steps(&trace.config, &trace.steps)
}

fn replay_steps(config: &SimConfig, steps: &[Step]) -> RunReport {
    let mut runner = Runner::new(config);
    let mut violation = None;
    for step in steps {
        if let Err(found) = runner.step(step) {
            violation = Some(found);
            break;
        }
    }
    RunReport {
        seed: config.core.seed,
        steps: runner.steps_run(),
        digest: runner.digest().hex(),
        violation,
        coverage: runner.coverage().clone(),
    }
}

/// Shrinks a failing trace with bounded effort: drops chunks of steps (halves, then quarters,
/// down to single steps) as long as the same invariant still fails, replaying at most
/// `steps_budget` steps in all. Returns the smallest failing trace found.
pub fn shrink(trace: &Trace, invariant: &str, steps_budget: u64) -> Trace {
    let mut steps = trace.steps.clone();
    let mut spent: u64 = 0;
    let fails = |candidate: &[Step], spent: &mut u64| -> bool {
        let report = replay_steps(&trace.config, candidate);
        *spent += report.steps;
        report.violation.is_some_and(|v| v.invariant == invariant)
    };
    let mut chunk = steps.len().div_ceil(2).max(1);
    'levels: loop {
        let mut start = 0;
        while start < steps.len() {
            if spent >= steps_budget {
                break 'levels;
            }
            let end = (start + chunk).min(steps.len());
            let candidate: Vec<Step> = steps[..start].iter().chain(&steps[end..]).cloned().collect();
            if !candidate.is_empty() && fails(&candidate, &mut spent) {
                steps = candidate;
            } else {
                start = end;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    // The failure may now come earlier than the last step: cut what follows it.
    let report = replay_steps(&trace.config, &steps);
    if let Some(violation) = &report.violation
        && let Some(at) = steps.iter().position(|s| s.index == violation.step)
    {
        steps.truncate(at + 1);
    }
    Trace {
        config: trace.config.clone(),
        steps,
        digest: Some(report.digest),
    }
}
