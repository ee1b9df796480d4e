//! Fuzzing on stable Rust (proptest): random bytes into every request decoder and on through the
//! services to the core, random command sequences into the core, random bytes into the store's
//! readers. Nothing may panic; a rejected command changes nothing; the core's invariants hold.
//! A short run by default; AGENTKEEPER_FUZZ_CASES=N runs N cases per property.

use std::sync::Arc;
use std::time::Duration;

use agentkeeper::clock::Clock;
use agentkeeper::core::types::{AgentCard, Effect};
use agentkeeper::core::{Command, Core, CoreConfig, ErrorCode, PolicyInput, Reply};
use agentkeeper::metrics::Metrics;
use agentkeeper::proto as pb;
use agentkeeper::server::grpc::Api;
use agentkeeper::store::wal;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use tonic::{Code, Request};

const T0: u64 = 1_700_000_000_000;

/// Cases per property: AGENTKEEPER_FUZZ_CASES, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("AGENTKEEPER_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn runner(default: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Bytes that are sometimes random and sometimes a valid message's bytes with a few flipped.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let valid = pb::RegisterRequest {
        card: Some(pb::AgentCard {
            name: "n".into(),
            tools: vec!["t".into()],
            ..Default::default()
        }),
        ttl_seconds: 5,
    }
    .encode_to_vec();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        proptest::collection::vec((0..valid.len(), any::<u8>()), 1..4).prop_map(move |flips| {
            let mut bytes = valid.clone();
            for (at, value) in flips {
                bytes[at] = value;
            }
            bytes
        }),
    ]
}

/// Decodes `bytes` as each request type; each that decodes is served by the real services.
macro_rules! serve_each {
    ($api:expr, $bytes:expr, $served:expr, $( $request:ty => $service:path, $method:ident; )*) => {
        $(
            if let Ok(request) = <$request>::decode($bytes) {
                let outcome = <Api as $service>::$method($api, Request::new(request)).await.map(|_| ());
                $served.push((stringify!($method), outcome.err().map(|status| status.code())));
            }
        )*
    };
}

async fn serve_bytes(api: &Api, bytes: &[u8]) -> Vec<(&'static str, Option<Code>)> {
    use pb::clock_service_server::ClockService as Clk;
    use pb::election_service_server::ElectionService as Ele;
    use pb::entitlements_service_server::EntitlementsService as Ent;
    use pb::lease_service_server::LeaseService as Lea;
    use pb::registry_service_server::RegistryService as Reg;
    use pb::task_service_server::TaskService as Tas;
    let mut served = Vec::new();
    serve_each!(api, bytes, served,
        pb::RegisterRequest => Reg, register;
        pb::HeartbeatRequest => Reg, heartbeat;
        pb::DeregisterRequest => Reg, deregister;
        pb::GetAgentRequest => Reg, get_agent;
        pb::FindRequest => Reg, find;
        pb::WatchRequest => Reg, watch;
        pb::AcquireLeaseRequest => Lea, acquire_lease;
        pb::RenewLeaseRequest => Lea, renew_lease;
        pb::ReleaseLeaseRequest => Lea, release_lease;
        pb::ListLeasesRequest => Lea, list_leases;
        pb::CampaignRequest => Ele, campaign;
        pb::ResignRequest => Ele, resign;
        pb::WatchElectionRequest => Ele, watch_election;
        pb::ListElectionsRequest => Ele, list_elections;
        pb::SetPolicyRequest => Ent, set_policy;
        pb::DeletePolicyRequest => Ent, delete_policy;
        pb::ListPoliciesRequest => Ent, list_policies;
        pb::CheckPolicyRequest => Ent, check_policy;
        pb::CreateTaskRequest => Tas, create_task;
        pb::CompleteTaskRequest => Tas, complete_task;
        pb::FailTaskRequest => Tas, fail_task;
        pb::GetTaskRequest => Tas, get_task;
        pb::ListTasksRequest => Tas, list_tasks;
        pb::AdvanceRequest => Clk, advance;
        pb::NowRequest => Clk, now;
    );
    // ClaimTask only without a wait: a waiting claim would hold the property up.
    if let Ok(mut request) = pb::ClaimTaskRequest::decode(bytes) {
        request.wait_ms = Some(0);
        let outcome = <Api as Tas>::claim_task(api, Request::new(request)).await.map(|_| ());
        served.push(("claim_task", outcome.err().map(|status| status.code())));
    }
    served
}

#[test]
fn random_bytes_through_every_request_decoder_and_service_never_break_the_daemon() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Arc::new(Metrics::new());
    let core = Core::new(
        CoreConfig {
            seed: 5,
            ..CoreConfig::default()
        },
        T0,
    );
    let (handle, thread) = agentkeeper::driver::spawn(
        agentkeeper::core::machine::Machine::new(core, false),
        Clock::manual(T0),
        None,
        1024,
        Duration::ZERO,
        Arc::clone(&metrics),
    )
    .expect("the driver starts");
    let api = Api::new(handle.clone(), metrics, 64, Duration::from_millis(10));
    let decoded = std::cell::Cell::new(0usize);
    runner(256)
        .run(&wire_bytes(), |bytes| {
            let served = runtime.block_on(serve_bytes(&api, &bytes));
            for (method, code) in &served {
                // A panicking core thread would leave every later call UNAVAILABLE; an INTERNAL
                // answer would be a bug of ours (decoding is done before the services).
                prop_assert!(
                    !matches!(code, Some(Code::Unavailable | Code::Internal | Code::Unknown)),
                    "{method} answered {code:?}"
                );
            }
            decoded.set(decoded.get() + served.len());
            Ok(())
        })
        .unwrap();
    eprintln!(
        "fuzz: {} byte strings, {} decoded requests served",
        cases(256),
        decoded.get()
    );
    handle.stop();
    thread.join().expect("the core thread did not panic");
}

/// One step of a random client population: indexes pick among what exists so far.
#[derive(Clone, Debug)]
enum Op {
    Register(String, Vec<u8>, u32),
    Heartbeat(u8),
    Deregister(u8),
    GetAgent(u8),
    Find(String, Vec<u8>, u32),
    Acquire(u8, u8, u32),
    Renew(u8, u8, u8, u32),
    Release(u8, u8, u8),
    Campaign(u8, u8),
    Resign(u8, u8),
    SetPolicy(String, String, String, bool),
    DeletePolicy(String),
    CheckPolicy(String, String, String),
    CreateTask(u8, Vec<u8>, u32, u32),
    Claim(u8, u64),
    Complete(u8, u8),
    Fail(u8, u8, String),
    GetTask(u8),
    ListTasks(u32, String),
    ListLeases(String, u32, String),
    ListElections,
    Overview(u32, u32),
    Watch(Vec<String>, u64),
    Advance(u64),
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-c*?/.]{0,6}",
        1 => "\\PC{0,20}",
        1 => Just("x".repeat(1025)),
        1 => Just(String::new()),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let small = || proptest::collection::vec(0u8..4, 0..3);
    let ttl = || prop_oneof![Just(0u32), 1u32..5, Just(86_401)];
    prop_oneof![
        (text(), small(), ttl()).prop_map(|(n, t, s)| Op::Register(n, t, s)),
        any::<u8>().prop_map(Op::Heartbeat),
        any::<u8>().prop_map(Op::Deregister),
        any::<u8>().prop_map(Op::GetAgent),
        (text(), small(), 0u32..2000).prop_map(|(q, t, l)| Op::Find(q, t, l)),
        (any::<u8>(), any::<u8>(), ttl()).prop_map(|(k, a, s)| Op::Acquire(k, a, s)),
        (any::<u8>(), any::<u8>(), any::<u8>(), ttl()).prop_map(|(k, a, t, s)| Op::Renew(k, a, t, s)),
        (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(k, a, t)| Op::Release(k, a, t)),
        (any::<u8>(), any::<u8>()).prop_map(|(g, a)| Op::Campaign(g, a)),
        (any::<u8>(), any::<u8>()).prop_map(|(g, a)| Op::Resign(g, a)),
        (text(), text(), text(), any::<bool>()).prop_map(|(s, a, r, e)| Op::SetPolicy(s, a, r, e)),
        text().prop_map(Op::DeletePolicy),
        (text(), text(), text()).prop_map(|(s, a, r)| Op::CheckPolicy(s, a, r)),
        (any::<u8>(), small(), 0u32..3, ttl()).prop_map(|(k, t, m, s)| Op::CreateTask(k, t, m, s)),
        (any::<u8>(), prop_oneof![Just(0u64), 1u64..5000]).prop_map(|(a, w)| Op::Claim(a, w)),
        (any::<u8>(), any::<u8>()).prop_map(|(t, a)| Op::Complete(t, a)),
        (any::<u8>(), any::<u8>(), text()).prop_map(|(t, a, r)| Op::Fail(t, a, r)),
        any::<u8>().prop_map(Op::GetTask),
        (0u32..20_000, text()).prop_map(|(p, t)| Op::ListTasks(p, t)),
        (text(), 0u32..5000, text()).prop_map(|(p, s, t)| Op::ListLeases(p, s, t)),
        Just(Op::ListElections),
        (0u32..50, 0u32..50).prop_map(|(a, l)| Op::Overview(a, l)),
        (proptest::collection::vec(text(), 0..3), 0u64..50).prop_map(|(t, f)| Op::Watch(t, f)),
        prop_oneof![0u64..2000, 2000u64..200_000].prop_map(Op::Advance),
    ]
}

/// What exists so far, for the indexes of `Op` to pick from (with one id that never exists).
#[derive(Default)]
struct Known {
    agents: Vec<String>,
    tasks: Vec<String>,
    tokens: Vec<u64>,
}

fn pick(from: &[String], i: u8) -> String {
    if from.is_empty() || usize::from(i) % (from.len() + 1) == from.len() {
        return "0123456789abcdef0123456789abcdef".into();
    }
    from[usize::from(i) % from.len()].clone()
}

const TOOLS: [&str; 4] = ["web", "sql", "gpu", "py"];

fn tools(indexes: &[u8]) -> Vec<String> {
    indexes.iter().map(|&i| TOOLS[usize::from(i) % 4].to_string()).collect()
}

fn command(op: &Op, known: &Known) -> Option<Command> {
    let agent = |i: u8| pick(&known.agents, i);
    let token = |i: u8| {
        known
            .tokens
            .get(usize::from(i) % known.tokens.len().max(1))
            .copied()
            .unwrap_or(1)
    };
    let key = |i: u8| format!("key-{}", i % 6);
    let group = |i: u8| format!("group-{}", i % 3);
    Some(match op.clone() {
        Op::Register(name, t, ttl_seconds) => Command::Register {
            card: Box::new(AgentCard {
                name,
                tools: tools(&t),
                ..AgentCard::default()
            }),
            ttl_seconds,
            vector: None,
        },
        Op::Heartbeat(a) => Command::Heartbeat { agent_id: agent(a) },
        Op::Deregister(a) => Command::Deregister { agent_id: agent(a) },
        Op::GetAgent(a) => Command::GetAgent { agent_id: agent(a) },
        Op::Find(query, t, limit) => Command::Find {
            query,
            tools: tools(&t),
            limit,
            vector: None,
        },
        Op::Acquire(k, a, ttl_seconds) => Command::AcquireLease {
            task_id: key(k),
            agent_id: agent(a),
            ttl_seconds,
        },
        Op::Renew(k, a, t, ttl_seconds) => Command::RenewLease {
            task_id: key(k),
            agent_id: agent(a),
            token: token(t),
            ttl_seconds,
        },
        Op::Release(k, a, t) => Command::ReleaseLease {
            task_id: key(k),
            agent_id: agent(a),
            token: token(t),
        },
        Op::Campaign(g, a) => Command::Campaign {
            group: group(g),
            agent_id: agent(a),
        },
        Op::Resign(g, a) => Command::Resign {
            group: group(g),
            agent_id: agent(a),
        },
        Op::SetPolicy(subject, action, resource, allow) => Command::SetPolicy {
            policy: Box::new(PolicyInput {
                id: format!("p{}", subject.len() % 4),
                subject,
                action,
                resource,
                effect: Some(if allow { Effect::Allow } else { Effect::Deny }),
            }),
        },
        Op::DeletePolicy(id) => Command::DeletePolicy { id },
        Op::CheckPolicy(subject, action, resource) => Command::CheckPolicy {
            subject,
            action,
            resource,
        },
        Op::CreateTask(kind, t, max_retries, ttl_seconds) => Command::CreateTask {
            kind: format!("kind-{}", kind % 3),
            input: vec![kind; usize::from(kind)],
            required_tools: tools(&t),
            max_retries,
            ttl_seconds,
        },
        Op::Claim(a, wait_ms) => Command::ClaimTask {
            agent_id: agent(a),
            wait_ms,
        },
        Op::Complete(t, a) => Command::CompleteTask {
            task_id: pick(&known.tasks, t),
            agent_id: agent(a),
            output: b"done".to_vec(),
        },
        Op::Fail(t, a, reason) => Command::FailTask {
            task_id: pick(&known.tasks, t),
            agent_id: agent(a),
            reason,
        },
        Op::GetTask(t) => Command::GetTask {
            task_id: pick(&known.tasks, t),
        },
        Op::ListTasks(page_size, page_token) => Command::ListTasks {
            status: None,
            page_size,
            page_token,
            bytes_left: None,
        },
        Op::ListLeases(prefix, page_size, page_token) => Command::ListLeases {
            prefix,
            page_size,
            page_token,
        },
        Op::ListElections => Command::ListElections {
            page_size: 0,
            page_token: String::new(),
        },
        Op::Overview(agents_max, leases_max) => Command::Overview { agents_max, leases_max },
        Op::Watch(topics, from_sequence) => Command::Watch { topics, from_sequence },
        Op::Advance(_) => return None,
    })
}

/// Runs `ops` on a small core; after each: invariants hold, and a rejected command changed
/// nothing (the snapshot before and after are equal).
fn run_ops(ops: &[Op]) -> Result<(), TestCaseError> {
    let config = CoreConfig {
        seed: 11,
        agents_max: 6,
        leases_max: 4,
        policies_max: 3,
        groups_max: 2,
        tasks_max: 5,
        task_bytes_max: 600,
        waiters_max: 2,
        watchers_max: 3,
        event_ring_max: 16,
        ..CoreConfig::default()
    };
    let mut core = Core::new(config, T0);
    let mut now = T0;
    let mut known = Known::default();
    for op in ops {
        if let Op::Advance(ms) = op {
            now += ms;
            core.tick(now);
            core.check_invariants();
            continue;
        }
        let Some(command) = command(op, &known) else { continue };
        core.tick(now);
        let before = core.snapshot();
        let name = command.name();
        match core.apply(now, command) {
            Ok(Reply::Registered { agent_id }) => known.agents.push(agent_id.to_string()),
            Ok(Reply::Lease { lease, .. }) => known.tokens.push(lease.token),
            Ok(Reply::Task(task)) => known.tasks.push(task.id.to_string()),
            Ok(Reply::Claimed { task, lease }) => {
                known.tasks.push(task.id.to_string());
                known.tokens.push(lease.token);
            }
            Ok(_) => {}
            Err(error) => {
                prop_assert!(error.code != ErrorCode::Unavailable, "{name}: {error}");
                prop_assert!(
                    core.snapshot() == before,
                    "{name} was rejected ({error}) but changed the state"
                );
            }
        }
        core.check_invariants();
    }
    Ok(())
}

#[test]
fn random_command_sequences_keep_the_core_consistent_and_rejections_change_nothing() {
    let ops = proptest::collection::vec(op(), 1..80);
    runner(64).run(&ops, |ops| run_ops(&ops)).unwrap();
    eprintln!("fuzz: {} command sequences of up to 80 commands", cases(64));
}

/// A log file: a valid header in format `version`, then `records`, so that a scan decodes
/// them with that version's decoder.
fn log_with(version: u32, records: &[u8]) -> Vec<u8> {
    let header = wal::Header {
        seed: 1,
        created_at: T0,
    };
    let mut bytes = header.encode().to_vec();
    bytes[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(records);
    bytes
}

/// `payload` framed as a record with a correct length and checksum, so the decoder sees it.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// The payloads of a log's records.
fn payloads(log: &[u8]) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    let mut at = wal::HEADER_BYTES;
    while at < log.len() {
        let len = u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        found.push(log[at + 8..at + 8 + len].to_vec());
        at += 8 + len;
    }
    found
}

/// A snapshot file with its checksum fixed up after `payload` replaced the original's, so that
/// the payload reaches the decoder.
fn snapshot_with(original: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut bytes = original[..24].to_vec();
    bytes[12..20].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes[20..24].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Every store reader, every format version it reads (the current one and the frozen version 1
/// decoder): random bytes, and real files with bytes flipped (checksums fixed up so that the
/// flipped payload reaches the decoder), are refused or read, never a panic.
#[test]
fn random_bytes_never_panic_the_store_readers() {
    use agentkeeper::store::format;
    let mut valid = Vec::new();
    let record = agentkeeper::core::entry::Entry::Apply {
        now: T0,
        command: Command::Heartbeat { agent_id: "a".into() },
        principal: None,
    };
    wal::encode_record(&record, &mut valid);
    assert_eq!(framed(&valid[8..]), valid, "the test frames records as the store does");
    let snapshot = agentkeeper::store::encode_snapshot(&Core::new(CoreConfig::default(), T0).snapshot());
    // Version 1 files as release 2dd3316 wrote them (see src/store/format/golden.rs).
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format/v1");
    let v1_log = std::fs::read(fixtures.join("wal.log")).expect("the v1 log fixture");
    let v1_records = payloads(&v1_log);
    let v1_snapshot = std::fs::read(fixtures.join("snapshot.bin")).expect("the v1 snapshot fixture");
    assert!(
        v1_records.len() > 10 && wal::scan(&v1_log).is_ok(),
        "the v1 fixture reads"
    );
    let inputs = (
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        any::<usize>(),
    );
    runner(512)
        .run(&inputs, |(random, flips, pick)| {
            let flip = |mut bytes: Vec<u8>| {
                for (at, value) in &flips {
                    if !bytes.is_empty() {
                        let i = at % bytes.len();
                        bytes[i] = *value;
                    }
                }
                bytes
            };
            let _ = wal::Header::decode(&random);
            let _ = agentkeeper::store::decode_snapshot(&random);
            for version in format::VERSION_OLDEST..=format::VERSION + 1 {
                let _ = wal::scan(&log_with(version, &random));
                // Random payloads past the checksum reach the record decoder itself.
                let _ = wal::scan(&log_with(version, &framed(&random)));
                let _ = format::decode_entry(version, &random);
                let _ = format::decode_snapshot(version, &random);
            }
            let mut records = valid.clone();
            records.extend(framed(&flip(valid[8..].to_vec())));
            let _ = wal::scan(&log_with(format::VERSION, &flip(records)));
            let _ = wal::scan(&flip(v1_log.clone()));
            let v1_record = flip(v1_records[pick % v1_records.len()].clone());
            let _ = format::decode_entry(1, &v1_record);
            let _ = wal::scan(&log_with(1, &framed(&v1_record)));
            let _ = agentkeeper::store::decode_snapshot(&flip(snapshot.clone()));
            // Snapshots with a flipped payload and a fixed-up checksum reach postcard.
            let _ = agentkeeper::store::decode_snapshot(&snapshot_with(&snapshot, &flip(snapshot[24..].to_vec())));
            let _ =
                agentkeeper::store::decode_snapshot(&snapshot_with(&v1_snapshot, &flip(v1_snapshot[24..].to_vec())));
            Ok(())
        })
        .unwrap();
    eprintln!("fuzz: {} inputs, each through 21 store reads", cases(512));
}
