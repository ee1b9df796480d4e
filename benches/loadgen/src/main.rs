//! `agentkeeper-bench`: drives a running daemon over gRPC, closed loop (a fixed number of workers,
//! each sending its next call when the last is answered) or open loop (`--rate`: calls start on a
//! fixed schedule and latency counts from the scheduled start, so a stall cannot hide itself:
//! no coordinated omission), and reports throughput and HDR latency percentiles.
//!
//! Invariant: set-up (agents, policies, watchers) happens before timing; warm-up is not recorded.

#![allow(clippy::disallowed_methods)] // a load generator measures real time

mod scenario;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkeeper::proto as pb;
use clap::Parser;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use scenario::{Scenario, Shared, Worker};
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug, Clone)]
#[command(name = "agentkeeper-bench", about = "Load generator for the AgentKeeper daemon")]
struct Flags {
    /// What to do.
    #[arg(long, value_enum, default_value_t = Scenario::Heartbeat)]
    scenario: Scenario,
    /// The daemon's gRPC address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    target: String,
    /// TCP connections (HTTP/2), each carrying `--concurrency` streams.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent calls per connection (closed loop: workers per connection).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to measure (e.g. 10s); ignored with --requests.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Measure exactly this many operations instead of a duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Run this long first without recording.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Open loop: start operations at this fixed rate (ops/s) whatever the latency.
    #[arg(long)]
    rate: Option<u64>,
    /// Agents registered during set-up.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Policies set during set-up (check-policy, mixed).
    #[arg(long, default_value_t = 10_000)]
    policies: usize,
    /// Pending tasks created during set-up (claim); size it above what the run will claim.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Watch streams for watch-fanout.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    scenario: Scenario,
    mode: &'static str,
    connections: usize,
    concurrency: usize,
    operations: u64,
    errors: u64,
    seconds: f64,
    ops_per_second: f64,
    latency_us: Percentiles,
    /// watch-fanout: delay from the causing call's send to each watcher's receipt.
    fanout_delay_us: Option<Percentiles>,
}

#[derive(serde::Serialize)]
struct Percentiles {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[tokio::main]
async fn main() {
    let flags = Flags::parse();
    if let Err(message) = run(flags).await {
        eprintln!("agentkeeper-bench: {message}");
        std::process::exit(1);
    }
}

async fn connect(target: &str, n: usize) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        let endpoint = Endpoint::from_shared(format!("http://{target}")).map_err(|e| e.to_string())?;
        let channel = endpoint
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("connect to {target}: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

async fn run(flags: Flags) -> Result<(), String> {
    assert!(
        flags.connections > 0 && flags.concurrency > 0,
        "need at least one connection and one stream"
    );
    let channels = connect(&flags.target, flags.connections).await?;
    let agents = flags.agents.max(1);
    let shared = Arc::new(scenario::set_up(&channels[0], flags.scenario, agents, flags.policies, flags.tasks).await?);
    let fanout = if flags.scenario == Scenario::WatchFanout {
        Some(start_watchers(&flags.target, flags.watchers, Arc::clone(&shared)).await?)
    } else {
        None
    };
    let workers: Vec<Worker> = (0..flags.connections * flags.concurrency)
        .map(|id| Worker::new(id, &channels[id % channels.len()], Arc::clone(&shared)))
        .collect();
    let (workers, _) = phase(&flags, workers, flags.warmup, None, false).await;
    if let Some(fanout) = &fanout {
        fanout.lock().expect("not poisoned").reset();
    }
    let started = Instant::now();
    let (_, (latency, errors)) = phase(&flags, workers, flags.duration, flags.requests, true).await;
    let seconds = started.elapsed().as_secs_f64();
    let operations = latency.len();
    let fanout_delay_us = fanout.map(|h| Percentiles::of(&h.lock().expect("not poisoned")));
    let report = Report {
        scenario: flags.scenario,
        mode: if flags.rate.is_some() { "open" } else { "closed" },
        connections: flags.connections,
        concurrency: flags.concurrency,
        operations,
        errors,
        seconds,
        ops_per_second: operations as f64 / seconds,
        latency_us: Percentiles::of(&latency),
        fanout_delay_us,
    };
    print_report(&report, flags.json);
    Ok(())
}

type Outcome = (Histogram<u64>, u64);

/// Runs the workers for `duration` (or `requests` operations); returns them and what was seen.
async fn phase(
    flags: &Flags,
    workers: Vec<Worker>,
    duration: Duration,
    requests: Option<u64>,
    visible: bool,
) -> (Vec<Worker>, Outcome) {
    if duration.is_zero() && requests.is_none() {
        return (workers, (histogram(), 0));
    }
    let progress = progress_bar(visible && !flags.json, duration, requests);
    let outcome = match flags.rate {
        None => closed_loop(flags.scenario, workers, duration, requests, &progress).await,
        Some(rate) => open_loop(flags.scenario, workers, rate, duration, requests, &progress).await,
    };
    progress.finish_and_clear();
    outcome
}

fn progress_bar(visible: bool, duration: Duration, requests: Option<u64>) -> ProgressBar {
    if !visible || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(requests.unwrap_or(duration.as_millis() as u64));
    let template = if requests.is_some() {
        "{bar:40} {pos}/{len} ops"
    } else {
        "{bar:40} {elapsed}/{duration}"
    };
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}

async fn closed_loop(
    scenario: Scenario,
    workers: Vec<Worker>,
    duration: Duration,
    requests: Option<u64>,
    progress: &ProgressBar,
) -> (Vec<Worker>, Outcome) {
    let deadline = Instant::now() + duration;
    let budget = Arc::new(std::sync::atomic::AtomicI64::new(
        requests.map_or(i64::MAX, |r| r as i64),
    ));
    let mut tasks = Vec::new();
    for mut worker in workers {
        let budget = Arc::clone(&budget);
        let progress = progress.clone();
        let by_count = requests.is_some();
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut errors = 0;
            loop {
                if by_count {
                    if budget.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) <= 0 {
                        break;
                    }
                } else if Instant::now() >= deadline {
                    break;
                }
                let sent = Instant::now();
                match worker.op(scenario).await {
                    Ok(()) => latency.saturating_record(sent.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
                if by_count {
                    progress.inc(1);
                } else {
                    progress.set_position(
                        duration
                            .saturating_sub(deadline - Instant::now().min(deadline))
                            .as_millis() as u64,
                    );
                }
            }
            (worker, latency, errors)
        }));
    }
    merge(tasks).await
}

async fn open_loop(
    scenario: Scenario,
    workers: Vec<Worker>,
    rate: u64,
    duration: Duration,
    requests: Option<u64>,
    progress: &ProgressBar,
) -> (Vec<Worker>, Outcome) {
    assert!(rate > 0, "--rate must be positive");
    let total = requests.unwrap_or((duration.as_secs_f64() * rate as f64) as u64);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    // Workers are the in-flight limit; an op waiting for a free worker keeps its scheduled start.
    let free = Arc::new(Semaphore::new(workers.len()));
    let pool = Arc::new(tokio::sync::Mutex::new(workers));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let permit = Arc::clone(&free).acquire_owned().await.expect("semaphore open");
        let pool = Arc::clone(&pool);
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut worker = pool.lock().await.pop().expect("a worker per permit");
            let result = worker.op(scenario).await;
            let waited = scheduled.elapsed().as_micros() as u64;
            pool.lock().await.push(worker);
            drop(permit);
            progress.inc(1);
            (result.is_ok(), waited)
        }));
    }
    let mut latency = histogram();
    let mut errors = 0;
    for task in tasks {
        let (ok, micros) = task.await.expect("op task");
        if ok {
            latency.saturating_record(micros);
        } else {
            errors += 1;
        }
    }
    let workers = std::mem::take(&mut *pool.lock().await);
    (workers, (latency, errors))
}

async fn merge(tasks: Vec<tokio::task::JoinHandle<(Worker, Histogram<u64>, u64)>>) -> (Vec<Worker>, Outcome) {
    let mut workers = Vec::new();
    let mut latency = histogram();
    let mut errors = 0;
    for task in tasks {
        let (worker, h, e) = task.await.expect("worker task");
        latency.add(&h).expect("same bounds");
        errors += e;
        workers.push(worker);
    }
    workers.sort_by_key(|w| w.id);
    (workers, (latency, errors))
}

/// Opens `watchers` lease.acquired streams; each records the delay from the acquire's send.
async fn start_watchers(
    target: &str,
    watchers: usize,
    shared: Arc<Shared>,
) -> Result<Arc<std::sync::Mutex<Histogram<u64>>>, String> {
    let delays = Arc::new(std::sync::Mutex::new(histogram()));
    let channels = connect(target, watchers.div_ceil(64).max(1)).await?;
    for i in 0..watchers {
        let mut registry =
            pb::registry_service_client::RegistryServiceClient::new(channels[i % channels.len()].clone());
        let request = pb::WatchRequest {
            topics: vec!["lease.acquired".into()],
            from_sequence: 0,
        };
        let mut stream = registry
            .watch(request)
            .await
            .map_err(|e| format!("watch: {e}"))?
            .into_inner();
        let (delays, shared) = (Arc::clone(&delays), Arc::clone(&shared));
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                let Some(payload) = event.payload else { continue };
                let Ok(lease) = <pb::Lease as prost::Message>::decode(payload.value.as_slice()) else {
                    continue;
                };
                let sent = shared.sent.lock().expect("not poisoned").get(&lease.task_id).copied();
                if let Some(sent) = sent {
                    delays
                        .lock()
                        .expect("not poisoned")
                        .saturating_record(sent.elapsed().as_micros() as u64);
                }
            }
        });
    }
    Ok(delays)
}

fn print_report(report: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).expect("a report serializes"));
        return;
    }
    let l = &report.latency_us;
    println!(
        "{:<16} {:>6} {:>5}x{:<4} {:>10} {:>8} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "scenario", "mode", "conn", "str", "ops", "errors", "ops/s", "p50 µs", "p90 µs", "p99 µs", "p99.9", "max µs"
    );
    let name = serde_json::to_value(report.scenario).expect("serializes");
    println!(
        "{:<16} {:>6} {:>5}x{:<4} {:>10} {:>8} {:>11.0} {:>8} {:>8} {:>8} {:>8} {:>8}",
        name.as_str().unwrap_or("?"),
        report.mode,
        report.connections,
        report.concurrency,
        report.operations,
        report.errors,
        report.ops_per_second,
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max
    );
    if let Some(f) = &report.fanout_delay_us {
        println!(
            "fan-out delay µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
            f.p50, f.p90, f.p99, f.p999, f.max
        );
    }
}
