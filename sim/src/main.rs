//! `agentkeeper-sim`: run one seed, sweep a range of seeds, or replay a trace. See README.md.

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use agentkeeper::cluster::ClusterPlanted;
use agentkeeper_sim::cluster::{ClusterReport, run_cluster};
use agentkeeper_sim::step::{Planted, Trace};
use agentkeeper_sim::{RunReport, record_seed, replay, run_seed, shrink};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "agentkeeper-sim", about = "Deterministic simulator for AgentKeeper's core")]
struct Args {
    /// Run this one seed.
    #[arg(long, default_value_t = 0, conflicts_with_all = ["seeds", "replay"])]
    seed: u64,
    /// Sweep seeds FIRST..LAST (both included), in parallel.
    #[arg(long, value_name = "FIRST..LAST", conflicts_with = "replay")]
    seeds: Option<String>,
    /// Steps per seed.
    #[arg(long, default_value_t = 100_000)]
    steps: u64,
    /// Replay a trace written by a failing run (or its shrunk form).
    #[arg(long, value_name = "FILE")]
    replay: Option<String>,
    /// Plant a deliberate bug, to see the checker catch it: none | reuse_fencing_token (in the
    /// core) | drop_last_log_record (in the simulated recovery, which seeds with crashes reach)
    /// | reply_before_durable (in the machine: replies leave before their records are durable).
    #[arg(long, default_value = "none")]
    planted_bug: String,
    /// Worker threads for a sweep (default: every core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Steps the shrinker may replay in all (0: do not shrink).
    #[arg(long, default_value_t = 20_000_000)]
    shrink_budget: u64,
    /// After a single-seed run, print how often each op ran, each fault struck, each error came.
    #[arg(long)]
    coverage: bool,
    /// Simulate a cluster of N nodes (consensus and the replicated core) instead of one
    /// daemon; --planted-bug then takes none | apply_before_commit | forward_twice | stale_reads | ignore_syncs.
    #[arg(long, value_name = "N", conflicts_with = "replay", value_parser = clap::value_parser!(u8).range(1..=7))]
    cluster: Option<u8>,
}

/// A sweep worker's stack (see `sweep`).
const SWEEP_STACK_BYTES: usize = 256 << 20;

/// Wall time for the steps/s figure: the one clock read, outside the deterministic run.
#[allow(clippy::disallowed_methods)]
fn started() -> Instant {
    Instant::now()
}

fn rate(steps: u64, since: Instant) -> u64 {
    let seconds = since.elapsed().as_secs_f64().max(1e-9);
    (steps as f64 / seconds) as u64
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Core panics are caught and reported as violations; the default hook's text would only
    // interleave with the report.
    std::panic::set_hook(Box::new(|_| {}));
    if let Some(nodes) = args.cluster {
        return exit(cluster_main(&args, usize::from(nodes)));
    }
    let Some(bug) = Planted::from_name(&args.planted_bug) else {
        eprintln!(
            "unknown --planted-bug {:?} ({})",
            args.planted_bug,
            Planted::NAMES.join(" | ")
        );
        return ExitCode::from(2);
    };
    let result = if let Some(path) = &args.replay {
        replay_file(path)
    } else if let Some(range) = &args.seeds {
        sweep(range, args.steps, bug, args.jobs)
    } else {
        one_seed(args.seed, args.steps, bug, args.shrink_budget, args.coverage)
    };
    exit(result)
}

fn exit(result: Result<bool, String>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

/// Writes the failing seed's trace (re-run deterministically up to the failure) and returns its
/// path and the trace.
fn write_failure_trace(report: &RunReport, bug: Planted) -> Result<(String, Trace), String> {
    let (_, trace) = record_seed(report.seed, report.steps, bug);
    let path = format!("sim-failure-{}.trace", report.seed);
    std::fs::write(&path, trace.render()).map_err(|e| format!("cannot write {path}: {e}"))?;
    Ok((path, trace))
}

fn one_seed(seed: u64, steps: u64, bug: Planted, shrink_budget: u64, coverage: bool) -> Result<bool, String> {
    let since = started();
    let report = run_seed(seed, steps, bug);
    let per_second = rate(report.steps, since);
    if let Some(violation) = &report.violation {
        println!("seed {seed} {violation}");
        let (path, trace) = write_failure_trace(&report, bug)?;
        println!(
            "trace written to {path} ({} steps); replay with --replay {path}",
            trace.steps.len()
        );
        if shrink_budget > 0 {
            let shrunk = shrink(&trace, violation.invariant, shrink_budget);
            let shrunk_path = format!("sim-failure-{seed}.shrunk.trace");
            std::fs::write(&shrunk_path, shrunk.render()).map_err(|e| format!("cannot write {shrunk_path}: {e}"))?;
            println!(
                "shrunk to {} steps, written to {shrunk_path}; replay with --replay {shrunk_path}",
                shrunk.steps.len()
            );
        }
    }
    if coverage {
        let c = &report.coverage;
        println!("ops {:?}", c.ops);
        println!("faults {:?}", c.faults);
        println!("errors {:?}", c.errors);
        println!("vectors {:?}", c.vectors);
    }
    println!(
        "seed {seed} steps {} digest {} violations {} ({per_second} steps/s)",
        report.steps,
        report.digest,
        u8::from(report.violation.is_some())
    );
    Ok(report.violation.is_none())
}

fn parse_range(range: &str) -> Result<(u64, u64), String> {
    let bad = || format!("--seeds wants FIRST..LAST, got {range:?}");
    let (first, last) = range.split_once("..").ok_or_else(bad)?;
    let first: u64 = first.trim().parse().map_err(|_| bad())?;
    let last: u64 = last.trim().trim_start_matches('=').parse().map_err(|_| bad())?;
    if first > last {
        return Err(bad());
    }
    Ok((first, last))
}

/// Runs `run` for every seed of `first..=last` on `jobs` threads (default: every core); `report`
/// sees each result as soon as it is there, so an interrupted sweep still tells what it found.
fn parallel_seeds<R: Send>(
    (first, last): (u64, u64),
    jobs: Option<usize>,
    run: impl Fn(u64) -> R + Sync,
    report: impl Fn(&R) + Sync,
) -> Vec<R> {
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicU64::new(first);
    let results: Mutex<Vec<R>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            // The linearizability check searches depth-first, one frame per operation of a
            // run's history: a debug build's frames outgrow a thread's default 2 MiB.
            let worker = std::thread::Builder::new().stack_size(SWEEP_STACK_BYTES);
            let spawned = worker.spawn_scoped(scope, || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed > last {
                        break;
                    }
                    let result = run(seed);
                    report(&result);
                    let mut results = results.lock().expect("no worker panics holding the lock");
                    results.push(result);
                    if results.len().is_multiple_of(50) {
                        eprintln!("{} of {} seeds done", results.len(), last - first + 1);
                    }
                }
            });
            spawned.expect("a sweep worker starts");
        }
    });
    results.into_inner().expect("workers are done")
}

fn sweep(range: &str, steps: u64, bug: Planted, jobs: Option<usize>) -> Result<bool, String> {
    let (first, last) = parse_range(range)?;
    let since = started();
    let reports = parallel_seeds(
        (first, last),
        jobs,
        |seed| run_seed(seed, steps, bug),
        |report: &RunReport| {
            if let Some(violation) = &report.violation {
                let written = write_failure_trace(report, bug).map_or_else(|e| e, |(path, _)| path);
                println!("seed {} {violation} (trace: {written})", report.seed);
            }
        },
    );
    let total_steps: u64 = reports.iter().map(|r| r.steps).sum();
    let per_second_steps = rate(total_steps, since);
    let violations = reports.iter().filter(|r| r.violation.is_some()).count();
    println!(
        "seeds {first}..{last} ({} seeds) steps {total_steps} violations {violations} ({per_second_steps} steps/s)",
        reports.len()
    );
    Ok(violations == 0)
}

fn replay_file(path: &str) -> Result<bool, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let trace = Trace::parse(&text).map_err(|e| format!("{path}: {e}"))?;
    let since = started();
    let report = replay(&trace);
    let per_second = rate(report.steps, since);
    if let Some(violation) = &report.violation {
        println!("seed {} {violation}", report.seed);
    }
    let matches = match &trace.digest {
        Some(recorded) if *recorded == report.digest => " (matches the recorded digest)",
        Some(_) => " (DIFFERS from the recorded digest)",
        None => "",
    };
    println!(
        "replay {path} seed {} steps {} digest {}{matches} violations {} ({per_second} steps/s)",
        report.seed,
        report.steps,
        report.digest,
        u8::from(report.violation.is_some())
    );
    Ok(report.violation.is_none() && !matches.contains("DIFFERS"))
}

/// `--cluster N`: one seed or a sweep of a simulated cluster.
fn cluster_main(args: &Args, nodes: usize) -> Result<bool, String> {
    let planted = match args.planted_bug.as_str() {
        "none" => ClusterPlanted::None,
        "apply_before_commit" => ClusterPlanted::ApplyBeforeCommit,
        "forward_twice" => ClusterPlanted::ForwardTwice,
        "stale_reads" => ClusterPlanted::StaleReads,
        "ignore_syncs" => ClusterPlanted::IgnoreSyncs,
        other => {
            return Err(format!(
                "unknown --planted-bug {other:?} with --cluster (none | apply_before_commit | forward_twice | stale_reads | ignore_syncs)"
            ));
        }
    };
    let steps = args.steps;
    let since = started();
    if let Some(range) = &args.seeds {
        let (first, last) = parse_range(range)?;
        let reports = parallel_seeds(
            (first, last),
            args.jobs,
            |seed| run_cluster(seed, nodes, steps, planted),
            |report: &ClusterReport| {
                if let Some(violation) = &report.violation {
                    println!("cluster {nodes} seed {} {violation}", report.seed);
                }
            },
        );
        let total_steps: u64 = reports.iter().map(|r| r.steps).sum();
        let violations = reports.iter().filter(|r| r.violation.is_some()).count();
        println!(
            "cluster {nodes} seeds {first}..{last} ({} seeds) steps {total_steps} violations {violations} ({} steps/s)",
            reports.len(),
            rate(total_steps, since)
        );
        return Ok(violations == 0);
    }
    let report = run_cluster(args.seed, nodes, steps, planted);
    if let Some(violation) = &report.violation {
        println!("cluster {nodes} seed {} {violation}", report.seed);
    }
    if args.coverage {
        println!("coverage {:?}", report.coverage);
    }
    println!(
        "cluster {nodes} seed {} steps {} digest {} violations {} ({} steps/s)",
        report.seed,
        report.steps,
        report.digest,
        u8::from(report.violation.is_some()),
        rate(report.steps, since)
    );
    Ok(report.violation.is_none())
}
