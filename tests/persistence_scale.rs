//! Measurements for `--data-dir` at scale, run by hand in release (they print figures; speed is
//! never asserted): `cargo test --release --test persistence_scale -- --ignored --nocapture`.

#![allow(clippy::disallowed_methods)] // measurements read the real clock

mod common;

use std::time::{Duration, Instant};

use agentkeeper::core::types::AgentCard;
use agentkeeper::core::{Command, Core, CoreConfig, Reply};
use agentkeeper::proto as pb;
use agentkeeper::store::{self, Store};
use common::Daemon;

const AGENTS: usize = 100_000;
const LEASES_PER_AGENT: usize = 10;

#[test]
#[ignore]
fn restart_time_and_snapshot_pause_at_100k_agents_and_1m_leases() {
    let now = 1_700_000_000_000;
    let mut core = Core::new(
        CoreConfig {
            seed: 1,
            ..CoreConfig::default()
        },
        now,
    );
    let built = Instant::now();
    for i in 0..AGENTS {
        let card = AgentCard {
            name: format!("agent-{i}"),
            tools: vec!["t".into()],
            ..AgentCard::default()
        };
        let agent_id = match core.apply(
            now,
            Command::Register {
                card: Box::new(card),
                ttl_seconds: 86_400,
                vector: None,
            },
        ) {
            Ok(Reply::Registered { agent_id }) => agent_id.to_string(),
            other => panic!("{other:?}"),
        };
        for j in 0..LEASES_PER_AGENT {
            let command = Command::AcquireLease {
                task_id: format!("task:{i}:{j}"),
                agent_id: agent_id.clone(),
                ttl_seconds: 86_400,
            };
            core.apply(now, command).expect("acquire");
        }
    }
    let mut discarded = Vec::new();
    core.drain_deliveries(&mut discarded);
    println!(
        "built {} agents, {} leases in {:?}",
        AGENTS,
        core.stats().leases,
        built.elapsed()
    );
    let mut pauses = Vec::new();
    let mut encodes = Vec::new();
    let mut bytes = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let snapshot = core.snapshot();
        pauses.push(started.elapsed());
        let encoding = Instant::now();
        bytes = store::encode_snapshot(&snapshot);
        encodes.push(encoding.elapsed());
    }
    pauses.sort();
    encodes.sort();
    println!(
        "snapshot pause (the ordered copy, on the core thread): median {:?}; encode (writer thread): median {:?}, {} MiB",
        pauses[1],
        encodes[1],
        bytes.len() >> 20
    );
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = Store::open(dir.path(), 1, now).unwrap();
        let (path, generation) = store.rotate().unwrap();
        let written = Instant::now();
        store::write_snapshot(&path, generation, &bytes).unwrap();
        println!("snapshot write + fsync (off the core thread): {:?}", written.elapsed());
    }
    let started = Instant::now();
    let args = [
        "--addr=127.0.0.1:0".to_string(),
        "--metrics-addr=127.0.0.1:0".to_string(),
        format!("--data-dir={}", dir.path().display()),
    ];
    let mut daemon = Daemon::spawn(&args);
    // The ports are bound (and logged) before recovery; the daemon serves once a call is answered.
    daemon.wait_bound();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        loop {
            assert!(started.elapsed() < Duration::from_secs(300), "{}", daemon.stderr());
            if let Ok(channel) = tonic::transport::Channel::from_shared(daemon.url())
                .unwrap()
                .connect()
                .await
            {
                let mut registry = pb::registry_service_client::RegistryServiceClient::new(channel);
                if registry
                    .find(pb::FindRequest {
                        limit: 1,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    println!("restart to serving: {:?}", started.elapsed());
    let line = daemon
        .stderr()
        .lines()
        .find(|l| l.contains("recovered state"))
        .unwrap_or_default()
        .to_string();
    println!("{line}");
    assert!(line.contains("leases=1000000"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn durable_write_throughput_with_64_clients() {
    const CLIENTS: usize = 64;
    const CONNECTIONS: usize = 8;
    const SECONDS: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let channels: Vec<_> = futures_join(CONNECTIONS, &daemon).await;
    let syncs_before = metric(&daemon, "agentkeeper_store_syncs_total");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(SECONDS);
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let mut policies =
            pb::entitlements_service_client::EntitlementsServiceClient::new(channels[client % CONNECTIONS].clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let policy = pb::Policy {
                    id: format!("c{client}-{done}"),
                    subject: "agent:*".into(),
                    action: "call".into(),
                    resource: "tool:*".into(),
                    effect: pb::PolicyEffect::Allow as i32,
                };
                policies
                    .set_policy(pb::SetPolicyRequest { policy: Some(policy) })
                    .await
                    .expect("set_policy");
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let syncs = metric(&daemon, "agentkeeper_store_syncs_total") - syncs_before;
    println!(
        "{CLIENTS} clients: {total} durable writes in {elapsed:.1} s = {:.0} ops/s, {:.0} fsyncs/s, {:.1} writes per fsync",
        total as f64 / elapsed,
        syncs / elapsed,
        total as f64 / syncs
    );
}

async fn futures_join(n: usize, daemon: &Daemon) -> Vec<tonic::transport::Channel> {
    let mut channels = Vec::new();
    for _ in 0..n {
        channels.push(daemon.channel().await);
    }
    channels
}

fn metric(daemon: &Daemon, name: &str) -> f64 {
    let (_, text) = daemon.http_get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}
