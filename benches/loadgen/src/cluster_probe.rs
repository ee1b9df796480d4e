//! `cluster-probe`: the leader of a 3-node AgentKeeper or etcd cluster, and how long the cluster
//! takes to acknowledge a write again after its leader is killed (benches/compare.sh --suite
//! cluster runs it; it starts, restarts and stops the nodes).
//!
//!   cluster-probe leader   --kind agentkeeper|etcd --endpoints H:P,H:P,H:P
//!   cluster-probe failover --kind agentkeeper|etcd --endpoints H:P,H:P,H:P --pids P1,P2,P3
//!                          [--probe-every 10ms] [--give-up 20s]
//!
//! `leader` waits until every node answers, names the same leader and has applied everything
//! that leader had committed when asked, and prints the leader's position in --endpoints (1-3).
//! `failover` does the same, then sends a write to each other node every --probe-every (open
//! loop, each with its own deadline, so a slow answer never delays the next probe), kills the
//! leader with SIGKILL, and prints one JSON object: the time from the kill to the first write
//! acknowledged by a survivor that was sent after the kill, per survivor, and the refusals seen.
//!
//! Invariant: a write sent before the kill never counts (one acknowledged by the dying leader
//! would read as a failover of zero); the kill time is read just before the signal is sent.

#![allow(clippy::disallowed_methods)] // measures real time

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentkeeper::proto as pb;
use clap::{Parser, Subcommand, ValueEnum};
use pb::cluster_service_client::ClusterServiceClient;
use pb::entitlements_service_client::EntitlementsServiceClient;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
#[command(name = "cluster-probe", about = "A cluster's leader, and its failover time")]
struct Flags {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Wait for one leader every node agrees on and has caught up with; print its position.
    Leader {
        #[command(flatten)]
        cluster: ClusterFlags,
    },
    /// Kill the leader and time the first write acknowledged by another node.
    Failover {
        #[command(flatten)]
        cluster: ClusterFlags,
        /// The nodes' process ids, in the order of --endpoints.
        #[arg(long, value_delimiter = ',', required = true)]
        pids: Vec<i32>,
        /// A write is sent to each survivor this often.
        #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
        probe_every: Duration,
        /// Stop waiting for a survivor's acknowledgement after this long.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        give_up: Duration,
    },
}

#[derive(clap::Args, Debug)]
struct ClusterFlags {
    #[arg(long, value_enum)]
    kind: Kind,
    /// Every node's client address (HOST:PORT), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// How long `leader` (and `failover` before the kill) waits for a settled cluster.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    settle: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    Agentkeeper,
    Etcd,
}

/// What one node says of the cluster.
#[derive(Clone, Copy, Debug)]
struct View {
    /// The node's own id.
    id: u64,
    /// The leader's id as the node knows it (0: none).
    leader: u64,
    /// The node's commit index (etcd: its raft index) and applied index.
    commit: u64,
    applied: u64,
}

#[tokio::main]
async fn main() {
    let flags = Flags::parse();
    let result = match flags.command {
        Command::Leader { cluster } => leader(&cluster).await.map(|found| println!("{}", found + 1)),
        Command::Failover {
            cluster,
            pids,
            probe_every,
            give_up,
        } => failover(&cluster, &pids, probe_every, give_up).await,
    };
    if let Err(message) = result {
        eprintln!("cluster-probe: {message}");
        std::process::exit(1);
    }
}

async fn connect(target: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{target}")).map_err(|e| e.to_string())?;
    (endpoint
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await)
        .map_err(|e| format!("connect to {target}: {e}"))
}

/// One node's view, asked with a 1 s deadline.
async fn view(kind: Kind, target: &str) -> Result<View, String> {
    let channel = connect(target).await?;
    match kind {
        Kind::Agentkeeper => {
            let mut request = tonic::Request::new(pb::ClusterStatusRequest {});
            request.set_timeout(Duration::from_secs(1));
            let status = (ClusterServiceClient::new(channel).status(request).await)
                .map_err(|e| format!("{target}: ClusterService.Status: {}", e.message()))?
                .into_inner();
            Ok(View {
                id: status.node_id,
                leader: status.leader,
                commit: status.commit_index,
                applied: status.applied_index,
            })
        }
        Kind::Etcd => {
            let client = etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel), None)
                .await
                .map_err(|e| format!("{target}: etcd client: {e}"))?;
            let status = tokio::time::timeout(Duration::from_secs(1), client.maintenance_client().status())
                .await
                .map_err(|_| format!("{target}: etcd Status: no answer within 1 s"))?
                .map_err(|e| format!("{target}: etcd Status: {e}"))?;
            let id = status.header().map(|h| h.member_id()).ok_or("etcd Status: no header")?;
            Ok(View {
                id,
                leader: status.leader(),
                commit: status.raft_index(),
                applied: status.raft_applied_index(),
            })
        }
    }
}

/// Waits until every node answers, names the same leader among them, and has applied what
/// that leader had committed; returns the leader's index in `endpoints`.
async fn leader(cluster: &ClusterFlags) -> Result<usize, String> {
    let deadline = Instant::now() + cluster.settle;
    let mut last = String::new();
    while Instant::now() < deadline {
        match settled(cluster).await {
            Ok(found) => return Ok(found),
            Err(why) => last = why,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "the cluster did not settle within {:?}: {last}",
        cluster.settle
    ))
}

async fn settled(cluster: &ClusterFlags) -> Result<usize, String> {
    let mut views = Vec::with_capacity(cluster.endpoints.len());
    for target in &cluster.endpoints {
        views.push(view(cluster.kind, target).await?);
    }
    let named = views[0].leader;
    if named == 0 || views.iter().any(|v| v.leader != named) {
        let leaders: Vec<u64> = views.iter().map(|v| v.leader).collect();
        return Err(format!("the nodes name leaders {leaders:?}"));
    }
    let at = (views.iter().position(|v| v.id == named)).ok_or(format!("leader {named} is none of the nodes"))?;
    // Asked again after that round: every node has applied what the leader had committed then.
    let commit = views[at].commit;
    for (i, target) in cluster.endpoints.iter().enumerate() {
        let applied = view(cluster.kind, target).await?.applied;
        if applied < commit {
            return Err(format!("node {} applied {applied} of {commit}", i + 1));
        }
    }
    Ok(at)
}

/// A survivor's way to write.
#[derive(Clone)]
enum Writer {
    Ours(EntitlementsServiceClient<Channel>),
    Etcd(Box<etcd_client::KvClient>),
}

impl Writer {
    async fn new(kind: Kind, target: &str) -> Result<Writer, String> {
        let channel = connect(target).await?;
        Ok(match kind {
            Kind::Agentkeeper => Writer::Ours(EntitlementsServiceClient::new(channel)),
            Kind::Etcd => {
                let client = etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel), None)
                    .await
                    .map_err(|e| format!("{target}: etcd client: {e}"))?;
                Writer::Etcd(Box::new(client.kv_client()))
            }
        })
    }

    /// One write (a policy, or a key of ~the same size), answered within `deadline` or failed.
    async fn write(&mut self, n: u64, deadline: Duration) -> Result<(), String> {
        match self {
            Writer::Ours(client) => {
                let policy = pb::Policy {
                    id: format!("failover-{n:08}"),
                    subject: format!("agent:probe{n}"),
                    action: "call".into(),
                    resource: "tool:probe".into(),
                    effect: pb::PolicyEffect::Allow as i32,
                };
                let mut request = tonic::Request::new(pb::SetPolicyRequest { policy: Some(policy) });
                request.set_timeout(deadline);
                (client.set_policy(request).await)
                    .map(|_| ())
                    .map_err(|e| format!("{:?}: {}", e.code(), e.message()))
            }
            Writer::Etcd(kv) => {
                let put = kv.put(format!("failover/{n:08}"), vec![b'p'; 128], None);
                match tokio::time::timeout(deadline, put).await {
                    Ok(answer) => answer.map(|_| ()).map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {deadline:?}")),
                }
            }
        }
    }
}

/// What the probes of one survivor saw after the kill.
#[derive(Default)]
struct Seen {
    /// The earliest acknowledgement of a write sent after the kill, from the kill.
    first_ack: Option<Duration>,
    refused: u64,
    first_error: Option<String>,
}

#[derive(serde::Serialize)]
struct Failover {
    kind: Kind,
    /// The killed leader's position in --endpoints (1-based) and its node id.
    killed: usize,
    killed_id: u64,
    /// From the kill to the first write acknowledged by any survivor, ms (None: none in --give-up).
    failover_ms: Option<f64>,
    /// The same for each survivor, in the order of --endpoints.
    survivors: Vec<Survivor>,
    probe_every_ms: f64,
    /// /proc/loadavg (1, 5, 15 min) just before the kill.
    load_average: Option<String>,
}

#[derive(serde::Serialize)]
struct Survivor {
    node: usize,
    first_ack_ms: Option<f64>,
    /// Writes sent after the kill that failed before the first acknowledgement came.
    refused: u64,
    first_error: Option<String>,
}

async fn failover(cluster: &ClusterFlags, pids: &[i32], every: Duration, give_up: Duration) -> Result<(), String> {
    if pids.len() != cluster.endpoints.len() {
        return Err(format!("{} pids for {} endpoints", pids.len(), cluster.endpoints.len()));
    }
    let at = leader(cluster).await?;
    let killed_id = view(cluster.kind, &cluster.endpoints[at]).await?.id;
    let survivors: Vec<usize> = (0..cluster.endpoints.len()).filter(|i| *i != at).collect();
    let mut writers = Vec::with_capacity(survivors.len());
    for &i in &survivors {
        // One acknowledged write first: the connection is up and the path works before the kill.
        let mut writer = Writer::new(cluster.kind, &cluster.endpoints[i]).await?;
        writer
            .write(u64::MAX - i as u64, Duration::from_secs(5))
            .await
            .map_err(|e| format!("node {} before the kill: {e}", i + 1))?;
        writers.push(writer);
    }
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let seen: Vec<Arc<Mutex<Seen>>> = survivors.iter().map(|_| Arc::default()).collect();
    let mut probers = Vec::new();
    for (k, writer) in writers.into_iter().enumerate() {
        let (killed_at, seen) = (Arc::clone(&killed_at), Arc::clone(&seen[k]));
        probers.push(tokio::spawn(probe(writer, k as u64, every, give_up, killed_at, seen)));
    }
    // Probing runs a while first, so the kill lands in its steady state.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let load_average = (std::fs::read_to_string("/proc/loadavg").ok())
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let now = Instant::now();
    *killed_at.lock().expect("not poisoned") = Some(now);
    // SAFETY: kill(2) with a pid the caller gave us; no memory is touched.
    if unsafe { libc::kill(pids[at], libc::SIGKILL) } != 0 {
        return Err(format!("kill -9 {}: {}", pids[at], std::io::Error::last_os_error()));
    }
    let deadline = now + give_up;
    while Instant::now() < deadline && seen.iter().any(|s| s.lock().expect("not poisoned").first_ack.is_none()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for prober in &probers {
        prober.abort();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let survivors: Vec<Survivor> = (survivors.iter().zip(&seen))
        .map(|(i, s)| {
            let s = s.lock().expect("not poisoned");
            Survivor {
                node: i + 1,
                first_ack_ms: s.first_ack.map(ms),
                refused: s.refused,
                first_error: s.first_error.clone(),
            }
        })
        .collect();
    let first = (survivors.iter().filter_map(|s| s.first_ack_ms))
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
    let report = Failover {
        kind: cluster.kind,
        killed: at + 1,
        killed_id,
        failover_ms: first,
        survivors,
        probe_every_ms: ms(every),
        load_average,
    };
    println!("{}", serde_json::to_string(&report).expect("a report serializes"));
    Ok(())
}

/// Sends a write every `every`, each in a task of its own; records, for writes sent after the
/// kill, the first acknowledgement (from the kill) and the failures before it.
async fn probe(
    writer: Writer,
    lane: u64,
    every: Duration,
    give_up: Duration,
    killed_at: Arc<Mutex<Option<Instant>>>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for n in 0.. {
        tick.tick().await;
        let (mut writer, killed_at, seen) = (writer.clone(), Arc::clone(&killed_at), Arc::clone(&seen));
        tokio::spawn(async move {
            let sent = Instant::now();
            let result = writer.write(lane << 32 | n, give_up).await;
            let answered = Instant::now();
            let Some(killed) = *killed_at.lock().expect("not poisoned") else {
                return;
            };
            if sent < killed {
                return;
            }
            let mut seen = seen.lock().expect("not poisoned");
            match result {
                Ok(()) => {
                    let after = answered - killed;
                    if seen.first_ack.is_none_or(|first| after < first) {
                        seen.first_ack = Some(after);
                    }
                }
                Err(error) if seen.first_ack.is_none() => {
                    seen.refused += 1;
                    seen.first_error.get_or_insert(error);
                }
                Err(_) => {}
            }
        });
    }
}
