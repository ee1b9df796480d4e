//! `fleet`: a fleet of agents kept alive through batched keep-alive streams, the way a big
//! deployment's SDK clients would: `--agents` agents registered with `--ttl`, split over
//! `--processes` client processes (this binary again, `--child`), each heartbeating all of its
//! agents every ttl/3 through one RegistryService.KeepAlive stream, in messages of at most
//! 10,000. The parent watches `agent.unreachable` from the start (an agent seen there was
//! falsely declared unreachable: every one is heartbeated in time, or should be), and over the
//! measured `--duration` reads the daemon's CPU from /proc and its keep-alive counter from
//! /metrics. Beside the fleet, a probe sends unary calls at a fixed rate (`--probe-rate`, open
//! loop: each call's latency counts from when it was due), once alone before the fleet starts and
//! again over the measured window, so the report says what the fleet costs every other caller's
//! p99. Prints one JSON object.
//!
//! Invariant: the measured window begins only once every child has registered all its agents;
//! registration's own heartbeats and UNREACHABLE events count too (they are part of holding
//! the fleet), reported apart.

#![allow(clippy::disallowed_methods)] // a load generator measures real time

#[path = "host.rs"]
mod host;
#[path = "percentiles.rs"]
mod percentiles;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentkeeper::proto as pb;
use clap::Parser;
use hdrhistogram::Histogram;
use pb::registry_service_client::RegistryServiceClient;
use percentiles::Percentiles;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

const MESSAGE_ITEMS_MAX: usize = 10_000;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "fleet",
    about = "A fleet of agents heartbeating through batched keep-alive streams"
)]
struct Flags {
    /// The daemon's gRPC address HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7070")]
    target: String,
    /// Agents in the whole fleet.
    #[arg(long, default_value_t = 100_000)]
    agents: usize,
    /// Their ttl, seconds; each is heartbeated every ttl/3.
    #[arg(long, default_value_t = 10)]
    ttl: u32,
    /// Client processes the agents are split over.
    #[arg(long, default_value_t = 4)]
    processes: usize,
    /// How long to measure once every agent is registered.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The daemon's pid (its CPU from /proc).
    #[arg(long)]
    cpu_pid: Option<u32>,
    /// The daemon's /metrics address HOST:PORT (its keep-alive counter).
    #[arg(long)]
    scrape: Option<String>,
    /// Unary calls per second the probe sends (Heartbeat and GetAgent, alternating, on a
    /// connection of its own), alone before the fleet and again beside it; 0: no probe.
    #[arg(long, default_value_t = 200)]
    probe_rate: u32,
    /// How long the probe runs alone, before the fleet registers.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    probe_alone: Duration,
    /// Internal: run as one client process with this many agents.
    #[arg(long, hide = true)]
    child: bool,
    /// Internal: the child's index (names its agents).
    #[arg(long, hide = true, default_value_t = 0)]
    index: usize,
}

fn main() {
    let flags = Flags::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let outcome = match flags.child {
        true => runtime.block_on(child(flags)),
        false => runtime.block_on(parent(flags)),
    };
    if let Err(message) = outcome {
        eprintln!("fleet: {message}");
        std::process::exit(1);
    }
}

async fn connect(target: &str) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{target}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connect to {target}: {e}"))
}

// ── a client process ──

/// Registers its agents (heartbeating those registered so far meanwhile), says `ready` on
/// stdout, heartbeats until stdin closes, then prints its counts as JSON.
async fn child(flags: Flags) -> Result<(), String> {
    let channel = connect(&flags.target).await?;
    let agents: Arc<Mutex<Vec<String>>> = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let late_ms = Arc::new(AtomicU64::new(0));
    let beating = tokio::spawn(heartbeats(
        channel.clone(),
        Arc::clone(&agents),
        Duration::from_millis(u64::from(flags.ttl) * 1000 / 3),
        [Arc::clone(&sent), Arc::clone(&failed), Arc::clone(&late_ms)],
    ));
    register(&channel, &flags, &agents).await?;
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    // The parent closes our stdin when the measurement is over.
    tokio::task::spawn_blocking(|| {
        let mut rest = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut rest);
    })
    .await
    .map_err(|e| e.to_string())?;
    beating.abort();
    let report = serde_json::json!({
        "heartbeats": sent.load(Ordering::Relaxed),
        "failed": failed.load(Ordering::Relaxed),
        "round_late_ms_max": late_ms.load(Ordering::Relaxed),
    });
    println!("{report}");
    Ok(())
}

async fn register(channel: &Channel, flags: &Flags, agents: &Mutex<Vec<String>>) -> Result<(), String> {
    const IN_FLIGHT: usize = 128;
    let mut next = 0;
    while next < flags.agents {
        let chunk = (flags.agents - next).min(IN_FLIGHT * 8);
        let mut calls = tokio::task::JoinSet::new();
        for i in next..next + chunk {
            let mut registry = RegistryServiceClient::new(channel.clone());
            let request = pb::RegisterRequest {
                card: Some(pb::AgentCard {
                    name: format!("fleet-{}-{i}", flags.index),
                    ..Default::default()
                }),
                ttl_seconds: flags.ttl,
            };
            calls.spawn(async move { registry.register(request).await.map(|r| r.into_inner().agent_id) });
            if calls.len() >= IN_FLIGHT {
                let done = calls.join_next().await.expect("a call").map_err(|e| e.to_string())?;
                agents.lock().await.push(done.map_err(|e| format!("register: {e}"))?);
            }
        }
        while let Some(done) = calls.join_next().await {
            agents
                .lock()
                .await
                .push(done.map_err(|e| e.to_string())?.map_err(|e| format!("register: {e}"))?);
        }
        next += chunk;
    }
    Ok(())
}

/// Every `every`, all agents registered so far in messages of at most 10,000 on one stream,
/// pipelined (all messages of a round sent, then their answers read).
async fn heartbeats(channel: Channel, agents: Arc<Mutex<Vec<String>>>, every: Duration, counts: [Arc<AtomicU64>; 3]) {
    let [sent, failed, late_ms] = counts;
    let (send, receive) = tokio::sync::mpsc::channel(1024);
    let mut registry = RegistryServiceClient::new(channel);
    let Ok(answers) = registry
        .keep_alive(tokio_stream::wrappers::ReceiverStream::new(receive))
        .await
    else {
        eprintln!("fleet: the keep-alive stream did not open");
        return;
    };
    let mut answers = answers.into_inner();
    let mut round = tokio::time::interval(every);
    round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch_id = 0u64;
    loop {
        let due = round.tick().await;
        let late = due.elapsed().as_millis() as u64;
        late_ms.fetch_max(late, Ordering::Relaxed);
        let ids: Vec<String> = agents.lock().await.clone();
        let mut messages = 0;
        for chunk in ids.chunks(MESSAGE_ITEMS_MAX) {
            batch_id += 1;
            let request = pb::KeepAliveRequest {
                agent_ids: chunk.to_vec(),
                batch_id,
            };
            if send.send(request).await.is_err() {
                return;
            }
            messages += 1;
        }
        for _ in 0..messages {
            match answers.message().await {
                Ok(Some(answer)) => {
                    let bad = answer.results.iter().filter(|r| r.code != 0).count() as u64;
                    sent.fetch_add(answer.results.len() as u64 - bad, Ordering::Relaxed);
                    failed.fetch_add(bad, Ordering::Relaxed);
                }
                _ => {
                    eprintln!("fleet: the keep-alive stream ended");
                    return;
                }
            }
        }
    }
}

// ── the parent ──

async fn parent(flags: Flags) -> Result<(), String> {
    let probe = match flags.probe_rate {
        0 => None,
        rate => Some(Probe::start(&flags.target, rate).await?),
    };
    let alone = match &probe {
        Some(probe) => Some(probe.run(Instant::now() + flags.probe_alone).await),
        None => None,
    };
    let started = Instant::now();
    let unreachable = watch_unreachable(&flags.target).await?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let per = flags.agents.div_ceil(flags.processes.max(1));
    let mut children = Vec::new();
    for index in 0..flags.processes {
        let count = per.min(flags.agents.saturating_sub(index * per));
        let child = Command::new(&exe)
            .args(["--child", "--target", &flags.target, "--ttl", &flags.ttl.to_string()])
            .args(["--agents", &count.to_string(), "--index", &index.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start a client process: {e}"))?;
        children.push(child);
    }
    let mut outputs = Vec::new();
    for child in &mut children {
        let mut lines = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        lines.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            return Err(format!("a client process failed to register its agents: {line:?}"));
        }
        outputs.push(lines);
    }
    let registered_s = started.elapsed().as_secs_f64();
    let unreachable_registering = unreachable.lock().await.len();
    eprintln!(
        "fleet: {} agents registered in {registered_s:.1} s; measuring {:?}",
        flags.agents, flags.duration
    );
    let pids: Vec<u32> = flags.cpu_pid.into_iter().collect();
    let items_start = keepalive_items(flags.scrape.as_deref());
    let host_start = host::Sample::take(&pids);
    let window = Instant::now();
    let beside = match &probe {
        Some(probe) => Some(probe.run(window + flags.duration).await),
        None => {
            tokio::time::sleep(flags.duration).await;
            None
        }
    };
    let elapsed = window.elapsed();
    let host_end = host::Sample::take(&pids);
    let items_end = keepalive_items(flags.scrape.as_deref());
    let heartbeats = match (items_start, items_end) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let host = host_start.until(&host_end, heartbeats.unwrap_or(0.0) as u64, elapsed);
    let mut clients = Vec::new();
    for (mut child, mut output) in children.into_iter().zip(outputs) {
        drop(child.stdin.take()); // tells it to stop
        let mut text = String::new();
        output.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let _ = child.wait();
        clients.push(serde_json::from_str::<serde_json::Value>(text.trim()).unwrap_or(serde_json::Value::Null));
    }
    let seen = unreachable.lock().await.len();
    let report = serde_json::json!({
        "agents": flags.agents,
        "ttl_s": flags.ttl,
        "processes": flags.processes,
        "registered_in_s": registered_s,
        "measured_s": elapsed.as_secs_f64(),
        "heartbeats_per_s": heartbeats.map(|h| h / elapsed.as_secs_f64()),
        "heartbeats_per_s_needed": flags.agents as f64 / (f64::from(flags.ttl) / 3.0),
        "daemon_cpu_us_per_heartbeat": host.server_cpu_us_per_op,
        "daemon_cores": host.server_cpu_seconds.first().and_then(|p| p.seconds).map(|s| s / elapsed.as_secs_f64()),
        "agents_ever_unreachable": seen,
        "agents_unreachable_while_registering": unreachable_registering,
        "probe_rate": flags.probe_rate,
        "probe_alone": alone,
        "probe_beside_fleet": beside,
        "clients": clients,
        "host": host,
    });
    println!("{report}");
    Ok(())
}

// ── the unary probe ──

/// One connection sending unary calls at a fixed rate for one registered agent of its own.
struct Probe {
    registry: RegistryServiceClient<Channel>,
    agent_id: String,
    every: Duration,
}

/// The probe's calls over one window, per method.
#[derive(serde::Serialize)]
struct ProbeReport {
    heartbeat: Probed,
    get_agent: Probed,
    /// Calls that failed (a failed call's latency is not counted).
    failed: u64,
}

/// One method's calls answered, and their latency from when each was due (or sent), µs.
#[derive(serde::Serialize)]
struct Probed {
    calls: u64,
    latency_us: Percentiles,
}

impl Probed {
    fn of(histogram: &Histogram<u64>) -> Self {
        Probed {
            calls: histogram.len(),
            latency_us: Percentiles::of(histogram),
        }
    }
}

impl Probe {
    async fn start(target: &str, rate: u32) -> Result<Self, String> {
        let mut registry = RegistryServiceClient::new(connect(target).await?);
        let request = pb::RegisterRequest {
            card: Some(pb::AgentCard {
                name: "fleet-probe".into(),
                ..Default::default()
            }),
            ttl_seconds: 3600,
        };
        let agent_id = registry
            .register(request)
            .await
            .map_err(|e| format!("register the probe's agent: {e}"))?
            .into_inner()
            .agent_id;
        Ok(Probe {
            registry,
            agent_id,
            every: Duration::from_secs(1) / rate,
        })
    }

    /// Calls until `until`, one every `every`, alternating Heartbeat and GetAgent. Open loop: a
    /// call that is late because the one before was slow counts from when it was due; one sent
    /// on time counts from when it was sent (the timer's own lateness, up to a millisecond, is
    /// this client's, not the daemon's).
    async fn run(&self, until: Instant) -> ProbeReport {
        let mut latencies = [(); 2].map(|_| Histogram::<u64>::new(3).expect("a histogram"));
        let mut failed = 0;
        let mut registry = self.registry.clone();
        let mut due = Instant::now();
        let mut call = 0usize;
        while due < until {
            let sent = match Instant::now() >= due {
                true => due,
                false => {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                }
            };
            let outcome = match call % 2 {
                0 => registry
                    .heartbeat(pb::HeartbeatRequest {
                        agent_id: self.agent_id.clone(),
                    })
                    .await
                    .map(drop),
                _ => registry
                    .get_agent(pb::GetAgentRequest {
                        agent_id: self.agent_id.clone(),
                    })
                    .await
                    .map(drop),
            };
            match outcome {
                Ok(()) => latencies[call % 2].saturating_record(sent.elapsed().as_micros() as u64),
                Err(_) => failed += 1,
            }
            call += 1;
            due += self.every;
        }
        let [heartbeat, get_agent] = latencies;
        ProbeReport {
            heartbeat: Probed::of(&heartbeat),
            get_agent: Probed::of(&get_agent),
            failed,
        }
    }
}

/// Every agent id an `agent.unreachable` event names, from now on.
async fn watch_unreachable(target: &str) -> Result<Arc<Mutex<HashSet<String>>>, String> {
    let mut registry = RegistryServiceClient::new(connect(target).await?);
    let request = pb::WatchRequest {
        topics: vec!["agent.unreachable".into()],
        from_sequence: 0,
    };
    let mut events = registry
        .watch(request)
        .await
        .map_err(|e| format!("watch: {e}"))?
        .into_inner();
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let into = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok(Some(event)) = events.message().await {
            let Some(payload) = event.payload else { continue };
            if let Ok(agent) = <pb::AgentInfo as prost::Message>::decode(payload.value.as_slice()) {
                into.lock().await.insert(agent.agent_id);
            }
        }
        eprintln!("fleet: the unreachable watch ended (a slow watcher is cut off): counts from here are low");
    });
    Ok(seen)
}

/// The daemon's `agentkeeper_keepalive_items_total{result="ok",stream="registry"}`.
fn keepalive_items(address: Option<&str>) -> Option<f64> {
    let address = address?;
    let read = || -> Result<String, std::io::Error> {
        let mut stream = std::net::TcpStream::connect(address)?;
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let text = match read() {
        Ok(text) => text,
        Err(error) => {
            eprintln!("fleet: cannot read {address}/metrics: {error}");
            return None;
        }
    };
    let name = "agentkeeper_keepalive_items_total{result=\"ok\",stream=\"registry\"}";
    // Absent until the first keep-alive message: none yet.
    let found = text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok());
    Some(found.unwrap_or(0.0))
}
