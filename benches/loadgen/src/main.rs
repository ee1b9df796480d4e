//! `agentkeeper-bench`: drives a running daemon over gRPC, closed loop (a fixed number of workers,
//! each sending its next call when the last is answered) or open loop (`--rate`: calls start on a
//! fixed schedule and latency counts from the scheduled start, so a stall cannot hide itself:
//! no coordinated omission), and reports throughput and HDR latency percentiles.
//!
//! With `--features peers` it drives Redis and etcd the same way (`--target-kind redis|etcd`):
//! each peer's counterpart of a scenario, through the same loops and the same histograms, so
//! benches/compare.sh measures every system with one tool.
//!
//! Background readers (`--list-leases`, `--dashboard`) run beside the measured phase: a client
//! paging through every lease and a dashboard polling its overview, each reported on its own, so
//! the measured calls' latency shows what big reads cost everyone else.
//!
//! Around the measured phase it reads what the host did (`host`: the CPU of the servers named by
//! `--cpu-pids`, its own, the machine's, the load average) and, with `--scrape`, the servers'
//! own counters (`scrape`), so a report says what each operation cost and how noisy the
//! machine was.
//!
//! Invariant: set-up (agents, leases, policies, watchers) happens before timing; warm-up is not
//! recorded.

#![allow(clippy::disallowed_methods)] // a load generator measures real time

mod background;
mod h2load;
mod h2load_command;
mod h2stream;
mod host;
#[cfg(feature = "peers")]
mod peers;
mod percentiles;
mod scenario;
mod scrape;

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkeeper::proto as pb;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use percentiles::Percentiles;
use scenario::{Scenario, Shared, Worker};
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug, Clone)]
#[command(name = "agentkeeper-bench", about = "Load generator for the AgentKeeper daemon")]
struct Flags {
    /// What to do.
    #[arg(long, value_enum, default_value_t = Scenario::Heartbeat)]
    scenario: Scenario,
    /// The daemon's gRPC address, or unix:PATH for its --uds socket (or the peer's HOST:PORT
    /// with --target-kind).
    #[arg(long, default_value = "127.0.0.1:7070")]
    target: String,
    /// What listens at --target. redis and etcd run the scenario's counterpart (acquire-release,
    /// get-agent, set-policy; etcd also heartbeat) and need a build with `--features peers`.
    #[arg(long, value_enum, default_value_t = TargetKind::Agentkeeper)]
    target_kind: TargetKind,
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
    /// Leases acquired during set-up (any scenario): `bench:lease:<i>`, spread over the agents.
    #[arg(long, default_value_t = 0)]
    leases: usize,
    /// Calls in flight during set-up (over all connections).
    #[arg(long, default_value_t = 64)]
    setup_concurrency: usize,
    /// Make nothing: drive `--agents` (at most 1000) agents a previous run registered, as Find
    /// answers them; for runs against a daemon a big set-up filled to its limits.
    #[arg(long)]
    reuse_agents: bool,
    /// While measuring, one more client pages through every lease with ListLeases, again and
    /// again (a page of `--list-leases-page`).
    #[arg(long)]
    list_leases: bool,
    #[arg(long, default_value_t = 1000)]
    list_leases_page: u32,
    /// Ask for a page of leases every this long (e.g. 10ms); unset: the next page as soon as
    /// the last one is in.
    #[arg(long, value_parser = humantime::parse_duration)]
    list_leases_every: Option<Duration>,
    /// While measuring, poll the dashboard's /api/overview at this HTTP address (HOST:PORT).
    #[arg(long)]
    dashboard: Option<String>,
    /// How often the dashboard is polled.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    dashboard_every: Duration,
    /// The server processes whose CPU time the measured phase is charged (comma-separated pids,
    /// e.g. every node of a cluster): the report gives their CPU per operation.
    #[arg(long, value_delimiter = ',')]
    cpu_pids: Vec<u32>,
    /// Prometheus /metrics addresses (HOST:PORT, comma-separated) read before and after the
    /// measured phase: the report gives the change of the counters that say where a write's
    /// time goes (log syncs, proposal time, batch sizes; etcd's WAL fsyncs).
    #[arg(long, value_delimiter = ',')]
    scrape: Vec<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Agents per keep-alive message (stream-heartbeat); the report's items/s is ops/s times it.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Distinct card texts among the agents registered, in set-up and by the register scenario
    /// (0: every card its own). With the sentence encoder, replicas share one encoding.
    #[arg(long, default_value_t = 0)]
    distinct_cards: usize,
    /// After set-up, wait until the daemon at this HTTP address (HOST:PORT) holds a vector for
    /// every card registered (its /metrics' agentkeeper_card_vectors), so a Find measures the
    /// hybrid ranking over the whole fleet.
    #[arg(long)]
    wait_vectors: Option<String>,
    /// What sends the calls: this program's tonic workers, or nghttp2's h2load (unary
    /// heartbeat and get-agent on ours, set-policy's Put and get-agent's Range on etcd; one
    /// framed body repeated, --connections x --concurrency streams, over TCP; needs h2load and
    /// curl on the PATH), or the `h2` crate driven directly (one thread, no tonic): the
    /// keep-alive streams (stream-heartbeat on ours, heartbeat's LeaseKeepAlive on etcd) and
    /// unary Heartbeat (heartbeat on ours), over TCP or a unix: socket.
    #[arg(long, value_enum, default_value_t = Client::Tonic)]
    client: Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Client {
    Tonic,
    H2load,
    H2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum TargetKind {
    Agentkeeper,
    Redis,
    Etcd,
}

/// What one operation of `scenario` is on `kind`, or None when the peer has no counterpart.
fn work(kind: TargetKind, scenario: Scenario) -> Option<&'static str> {
    use Scenario::*;
    Some(match (kind, scenario) {
        (TargetKind::Agentkeeper, Heartbeat) => "Heartbeat",
        (TargetKind::Agentkeeper, Acquire | WatchFanout) => "AcquireLease",
        (TargetKind::Agentkeeper, AcquireRelease) => "AcquireLease + ReleaseLease",
        (TargetKind::Agentkeeper, Renew) => "RenewLease",
        (TargetKind::Agentkeeper, CheckPolicy) => "CheckPolicy",
        (TargetKind::Agentkeeper, Find) => "Find",
        (TargetKind::Agentkeeper, Register) => "Register",
        (TargetKind::Agentkeeper, GetAgent) => "GetAgent",
        (TargetKind::Agentkeeper, Mixed) => "70% Heartbeat, 10% acquire-release, 10% CheckPolicy, 5% Find, 5% GetAgent",
        (TargetKind::Agentkeeper, TaskCycle) => "CreateTask + ClaimTask + CompleteTask",
        (TargetKind::Agentkeeper, Claim) => "ClaimTask + CompleteTask",
        (TargetKind::Agentkeeper, SetPolicy) => "SetPolicy",
        (TargetKind::Agentkeeper, StreamHeartbeat) => {
            "RegistryService.KeepAlive message (--batch agents) + answer on a held stream"
        }
        (TargetKind::Agentkeeper, StreamRenew) => {
            "LeaseService.KeepAlive message (one renewal of the worker's lease) + answer on a held stream"
        }
        (TargetKind::Redis, AcquireRelease) => "SET key owner NX PX + DEL",
        (TargetKind::Redis, GetAgent) => "GET",
        (TargetKind::Redis, SetPolicy) => "SET",
        (TargetKind::Etcd, AcquireRelease) => "LeaseGrant + Txn(put if absent, with the lease) + LeaseRevoke",
        (TargetKind::Etcd, GetAgent) => "Range (one key, linearizable)",
        (TargetKind::Etcd, SetPolicy) => "Put",
        (TargetKind::Etcd, Heartbeat | Renew | StreamRenew) => "LeaseKeepAlive (request + answer on a held stream)",
        _ => return None,
    })
}

#[derive(serde::Serialize)]
struct Report {
    target_kind: TargetKind,
    scenario: Scenario,
    /// What sent the calls.
    client: Client,
    /// The calls one operation makes on this target.
    work: &'static str,
    mode: &'static str,
    connections: usize,
    concurrency: usize,
    operations: u64,
    errors: u64,
    /// The first failed operation's error, to tell a misconfigured run from a loaded one.
    first_error: Option<String>,
    seconds: f64,
    ops_per_second: f64,
    /// Items per operation (stream-heartbeat's --batch; else 1) and items per second.
    items_per_operation: usize,
    items_per_second: f64,
    latency_us: Percentiles,
    /// watch-fanout: delay from the causing call's send to each watcher's receipt.
    fanout_delay_us: Option<Percentiles>,
    /// The background readers that ran beside the measured phase.
    background: Vec<BackgroundReport>,
    /// CPU of the servers, of this load generator and of the machine, and the load average,
    /// over the measured phase.
    host: host::HostReport,
    /// The change of each `--scrape` address's counters over the measured phase.
    metrics: Vec<scrape::NodeMetrics>,
}

/// Refuses what a client other than tonic's workers (h2load, the h2 stream client) cannot run:
/// they drive TCP, closed loop, for --duration, without readers beside them.
fn external_client_checks(flags: &Flags, name: &str) -> Result<(), String> {
    if flags.target.starts_with("unix:") && flags.client == Client::H2load {
        return Err(format!("--client {name} drives TCP targets only"));
    }
    if flags.rate.is_some() || flags.requests.is_some() || flags.list_leases || flags.dashboard.is_some() {
        return Err(format!(
            "--client {name} runs a closed loop for --duration, without --rate, --requests or readers"
        ));
    }
    Ok(())
}

/// Registers at least `agents` agents as the tonic client's set-up does (no policies, tasks or
/// leases) and gives their ids: the ones an external client's requests name.
async fn register_agents(flags: &Flags, agents: usize) -> Result<Vec<String>, String> {
    let channels = connect(&flags.target, 1).await?;
    let plan = scenario::SetUp {
        scenario: flags.scenario,
        agents: flags.agents.max(agents),
        policies: 0,
        tasks: 0,
        leases: 0,
        concurrency: flags.setup_concurrency,
        reuse_agents: flags.reuse_agents,
        distinct_cards: flags.distinct_cards,
    };
    Ok(scenario::set_up(&channels, &plan).await?.agents)
}

/// What a closed-loop run by another client (h2load, the h2 stream client) saw.
struct Measured {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
    seconds: f64,
    /// Items per operation (heartbeats per keep-alive message; else 1).
    items: usize,
}

impl Report {
    /// The report of a closed-loop run sent by `client` at the flags' shape.
    fn closed_loop(
        flags: &Flags,
        client: Client,
        work: &'static str,
        seen: Measured,
        host: host::HostReport,
        metrics: Vec<scrape::NodeMetrics>,
    ) -> Report {
        Report {
            target_kind: flags.target_kind,
            scenario: flags.scenario,
            client,
            work,
            mode: "closed",
            connections: flags.connections,
            concurrency: flags.concurrency,
            operations: seen.ok,
            errors: seen.errors,
            first_error: seen.first_error,
            seconds: seen.seconds,
            ops_per_second: seen.ok as f64 / seen.seconds,
            items_per_operation: seen.items,
            items_per_second: (seen.ok * seen.items as u64) as f64 / seen.seconds,
            latency_us: Percentiles::of(&seen.latency),
            fanout_delay_us: None,
            background: Vec::new(),
            host,
            metrics,
        }
    }
}

#[derive(serde::Serialize)]
struct BackgroundReport {
    name: &'static str,
    calls: u64,
    errors: u64,
    first_error: Option<String>,
    /// Full passes through every lease (the pager) or overviews fetched (the poller).
    passes: u64,
    /// Bytes of overview answers in all (the poller).
    bytes: u64,
    latency_us: Percentiles,
}

/// What one operation carries: a stream-heartbeat message's agents, else one call's worth.
fn items_per_operation(flags: &Flags) -> usize {
    match flags.scenario {
        Scenario::StreamHeartbeat => flags.batch.max(1),
        _ => 1,
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
    if let Some(path) = target.strip_prefix("unix:") {
        // The daemon's --uds socket: one connection each, through a connector on the path.
        for _ in 0..n {
            let placeholder = Endpoint::from_static("http://localhost");
            let channel = agentkeeper::server::uds::connect(placeholder, std::path::Path::new(path))
                .await
                .map_err(|e| format!("connect to {target}: {e}"))?;
            channels.push(channel);
        }
        return Ok(channels);
    }
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

/// One worker of whichever system is measured: the loops below drive them all alike. (Boxed
/// where large, so moving a worker between tasks stays cheap.)
enum Driver {
    Ours(Box<Worker>),
    #[cfg(feature = "peers")]
    Redis(peers::RedisWorker),
    #[cfg(feature = "peers")]
    Etcd(Box<peers::EtcdWorker>),
}

impl Driver {
    fn id(&self) -> usize {
        match self {
            Driver::Ours(w) => w.id,
            #[cfg(feature = "peers")]
            Driver::Redis(w) => w.id,
            #[cfg(feature = "peers")]
            Driver::Etcd(w) => w.id,
        }
    }

    async fn op(&mut self, scenario: Scenario) -> Result<(), String> {
        match self {
            Driver::Ours(w) => w
                .op(scenario)
                .await
                .map_err(|status| format!("{:?}: {}", status.code(), status.message())),
            #[cfg(feature = "peers")]
            Driver::Redis(w) => w.op(scenario).await,
            #[cfg(feature = "peers")]
            Driver::Etcd(w) => w.op(scenario).await,
        }
    }
}

/// Connects, sets up and makes the workers of `flags.target_kind`; for watch-fanout also the
/// watchers' delay histogram.
async fn drivers(flags: &Flags) -> Result<(Vec<Driver>, Option<Fanout>), String> {
    let workers = flags.connections * flags.concurrency;
    let agents = flags.agents.max(1);
    match flags.target_kind {
        TargetKind::Agentkeeper => {
            let channels = connect(&flags.target, flags.connections).await?;
            let plan = scenario::SetUp {
                scenario: flags.scenario,
                agents,
                policies: flags.policies,
                tasks: flags.tasks,
                leases: flags.leases,
                concurrency: flags.setup_concurrency,
                reuse_agents: flags.reuse_agents,
                distinct_cards: flags.distinct_cards,
            };
            let shared = Arc::new(scenario::set_up(&channels, &plan).await?);
            if let Some(address) = &flags.wait_vectors {
                scrape::wait_card_vectors(address, shared.agents.len()).await?;
            }
            let fanout = if flags.scenario == Scenario::WatchFanout {
                Some(start_watchers(&flags.target, flags.watchers, Arc::clone(&shared)).await?)
            } else {
                None
            };
            let drivers = (0..workers)
                .map(|id| {
                    Driver::Ours(Box::new(Worker::new(
                        id,
                        &channels[id % channels.len()],
                        Arc::clone(&shared),
                        flags.batch,
                    )))
                })
                .collect();
            Ok((drivers, fanout))
        }
        #[cfg(feature = "peers")]
        TargetKind::Redis => {
            let connections = peers::redis_connect(&flags.target, flags.connections).await?;
            peers::redis_set_up(&connections[0], flags.scenario, agents).await?;
            let drivers = (0..workers)
                .map(|id| {
                    Driver::Redis(peers::RedisWorker::new(
                        id,
                        &connections[id % connections.len()],
                        agents,
                        flags.policies,
                    ))
                })
                .collect();
            Ok((drivers, None))
        }
        #[cfg(feature = "peers")]
        TargetKind::Etcd => {
            let mut clients = Vec::with_capacity(flags.connections);
            for channel in connect(&flags.target, flags.connections).await? {
                clients.push(peers::etcd_client(&channel).await?);
            }
            peers::etcd_set_up(&clients[0], flags.scenario, agents).await?;
            let mut drivers = Vec::with_capacity(workers);
            for id in 0..workers {
                let client = &clients[id % clients.len()];
                let worker = peers::EtcdWorker::new(id, client, flags.scenario, agents, flags.policies).await?;
                drivers.push(Driver::Etcd(Box::new(worker)));
            }
            Ok((drivers, None))
        }
        #[cfg(not(feature = "peers"))]
        TargetKind::Redis | TargetKind::Etcd => Err(format!(
            "--target-kind {:?} needs a build with `--features peers`",
            flags.target_kind
        )),
    }
}

type Fanout = Arc<std::sync::Mutex<Histogram<u64>>>;

async fn run(flags: Flags) -> Result<(), String> {
    assert!(
        flags.connections > 0 && flags.concurrency > 0,
        "need at least one connection and one stream"
    );
    let Some(work) = work(flags.target_kind, flags.scenario) else {
        return Err(format!(
            "scenario {:?} has no {:?} counterpart",
            flags.scenario, flags.target_kind
        ));
    };
    if flags.client != Client::Tonic {
        let report = match flags.client {
            Client::H2load => h2load::run(&flags).await?,
            _ => h2stream::run(&flags).await?,
        };
        print_report(&report, flags.json);
        return Ok(());
    }
    let (workers, fanout) = drivers(&flags).await?;
    let (workers, _) = phase(&flags, workers, flags.warmup, None, false).await;
    if let Some(fanout) = &fanout {
        fanout.lock().expect("not poisoned").reset();
    }
    let mut readers = background::Readers::new();
    if flags.list_leases {
        let channel = connect(&flags.target, 1).await?.remove(0);
        readers.page_leases(channel, flags.list_leases_page, flags.list_leases_every);
    }
    if let Some(address) = &flags.dashboard {
        readers.poll_overview(address.clone(), flags.dashboard_every);
    }
    let counters_start = scrape::read_all(&flags.scrape, &[]).await;
    let host_start = host::Sample::take(&flags.cpu_pids);
    let started = Instant::now();
    let (_, seen) = phase(&flags, workers, flags.duration, flags.requests, true).await;
    let elapsed = started.elapsed();
    let host_end = host::Sample::take(&flags.cpu_pids);
    let counters_end = scrape::read_all(&flags.scrape, &[]).await;
    let seconds = elapsed.as_secs_f64();
    let background = readers
        .stop()
        .await
        .into_iter()
        .map(|seen| BackgroundReport {
            name: seen.name,
            calls: seen.latency.len(),
            errors: seen.errors,
            first_error: seen.first_error,
            passes: seen.passes,
            bytes: seen.bytes,
            latency_us: Percentiles::of(&seen.latency),
        })
        .collect();
    let Seen {
        latency,
        errors,
        first_error,
    } = seen;
    let operations = latency.len();
    let host = host_start.until(&host_end, operations, elapsed);
    let metrics = scrape::deltas(&flags.scrape, counters_start, counters_end);
    let fanout_delay_us = fanout.map(|h| Percentiles::of(&h.lock().expect("not poisoned")));
    let report = Report {
        target_kind: flags.target_kind,
        scenario: flags.scenario,
        client: Client::Tonic,
        work,
        mode: if flags.rate.is_some() { "open" } else { "closed" },
        connections: flags.connections,
        concurrency: flags.concurrency,
        operations,
        errors,
        first_error,
        seconds,
        ops_per_second: operations as f64 / seconds,
        items_per_operation: items_per_operation(&flags),
        items_per_second: (operations * items_per_operation(&flags) as u64) as f64 / seconds,
        latency_us: Percentiles::of(&latency),
        fanout_delay_us,
        background,
        host,
        metrics,
    };
    print_report(&report, flags.json);
    Ok(())
}

/// What a phase saw: the latency of each successful operation, and the failures.
struct Seen {
    latency: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            latency: histogram(),
            errors: 0,
            first_error: None,
        }
    }

    fn record(&mut self, result: Result<(), String>, micros: u64) {
        match result {
            Ok(()) => self.latency.saturating_record(micros),
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }

    fn add(&mut self, other: Seen) {
        self.latency.add(&other.latency).expect("same bounds");
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Runs the workers for `duration` (or `requests` operations); returns them and what was seen.
async fn phase(
    flags: &Flags,
    workers: Vec<Driver>,
    duration: Duration,
    requests: Option<u64>,
    visible: bool,
) -> (Vec<Driver>, Seen) {
    if duration.is_zero() && requests.is_none() {
        return (workers, Seen::new());
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
    workers: Vec<Driver>,
    duration: Duration,
    requests: Option<u64>,
    progress: &ProgressBar,
) -> (Vec<Driver>, Seen) {
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
            let mut seen = Seen::new();
            loop {
                if by_count {
                    if budget.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) <= 0 {
                        break;
                    }
                } else if Instant::now() >= deadline {
                    break;
                }
                let sent = Instant::now();
                let result = worker.op(scenario).await;
                seen.record(result, sent.elapsed().as_micros() as u64);
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
            (worker, seen)
        }));
    }
    merge(tasks).await
}

async fn open_loop(
    scenario: Scenario,
    workers: Vec<Driver>,
    rate: u64,
    duration: Duration,
    requests: Option<u64>,
    progress: &ProgressBar,
) -> (Vec<Driver>, Seen) {
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
            (result, waited)
        }));
    }
    let mut seen = Seen::new();
    for task in tasks {
        let (result, micros) = task.await.expect("op task");
        seen.record(result, micros);
    }
    let workers = std::mem::take(&mut *pool.lock().await);
    (workers, seen)
}

async fn merge(tasks: Vec<tokio::task::JoinHandle<(Driver, Seen)>>) -> (Vec<Driver>, Seen) {
    let mut workers = Vec::new();
    let mut seen = Seen::new();
    for task in tasks {
        let (worker, s) = task.await.expect("worker task");
        seen.add(s);
        workers.push(worker);
    }
    workers.sort_by_key(Driver::id);
    (workers, seen)
}

/// Opens `watchers` lease.acquired streams; each records the delay from the acquire's send.
async fn start_watchers(target: &str, watchers: usize, shared: Arc<Shared>) -> Result<Fanout, String> {
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
        "{:<24} {:>6} {:>5}x{:<4} {:>10} {:>8} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "scenario", "mode", "conn", "str", "ops", "errors", "ops/s", "p50 µs", "p90 µs", "p99 µs", "p99.9", "max µs"
    );
    let name = serde_json::to_value(report.scenario).expect("serializes");
    let name = name.as_str().unwrap_or("?");
    let name = match report.target_kind {
        TargetKind::Agentkeeper => name.to_string(),
        kind => format!(
            "{}/{name}",
            serde_json::to_value(kind).expect("serializes").as_str().unwrap_or("?")
        ),
    };
    println!(
        "{:<24} {:>6} {:>5}x{:<4} {:>10} {:>8} {:>11.0} {:>8} {:>8} {:>8} {:>8} {:>8}",
        name,
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
    if report.target_kind != TargetKind::Agentkeeper {
        println!("one operation: {}", report.work);
    }
    if let Some(error) = &report.first_error {
        println!("first error: {error}");
    }
    if let Some(f) = &report.fanout_delay_us {
        println!(
            "fan-out delay µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
            f.p50, f.p90, f.p99, f.p999, f.max
        );
    }
    if let Some(cpu) = report.host.server_cpu_us_per_op {
        println!("server CPU per op: {cpu:.1} µs (all --cpu-pids together)");
    }
    if let (Some(client), Some(other)) = (report.host.client_cpu_us_per_op, report.host.other_busy_cores) {
        println!("load generator CPU per op: {client:.1} µs; other work on the machine: {other:.2} cores busy");
    }
    for b in &report.background {
        let l = &b.latency_us;
        println!(
            "beside it, {}: {} calls, {} errors, {} passes; µs p50 {} p99 {} p99.9 {} max {}",
            b.name, b.calls, b.errors, b.passes, l.p50, l.p99, l.p999, l.max
        );
        if let Some(error) = &b.first_error {
            println!("  first error: {error}");
        }
    }
}
