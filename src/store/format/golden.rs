//! Golden-bytes tests: a fixed sample of every log record variant and a sample snapshot,
//! encoded and compared byte for byte with the committed files in `tests/fixtures/format/`, and
//! every older version's files (written by the release that wrote that version) decoded into
//! today's values.
//!
//! Architecture invariant: a fixture is never regenerated to make a failing test pass; only a
//! new format version gets new files (`AGENTKEEPER_REGENERATE_GOLDEN=1`, see ARCHITECTURE.md).

use std::path::PathBuf;
use std::sync::Arc;

use super::{VERSION, v7};
use crate::core::entry::Entry;
use crate::core::events::{AgentView, ElectionView, Event, EventPayload, LeaseView, Topic};
use crate::core::search::card_text::CardDigest;
use crate::core::search::vectors::{BUILTIN_MODEL, CardVector, ModelVector};
use crate::core::sessions::{Created, RequestId, SessionState};
use crate::core::snapshot::{AgentState, CoreSnapshot, GroupState, LeaseState, TaskState, WaiterState};
use crate::core::tasks::{TaskStatus, TaskView, WaiterId};
use crate::core::types::{AgentCard, AgentStatus, Capability, Effect, Id128, Policy, TokenId};
use crate::core::{Command, PolicyInput};
use crate::store::wal::{self, Header};

/// Set to 1 to write the current version's fixtures instead of comparing with them.
const REGENERATE: &str = "AGENTKEEPER_REGENERATE_GOLDEN";

const HEADER: Header = Header {
    seed: 7,
    created_at: 1_000,
};

const AGENT: &str = "0123456789abcdef0123456789abcdef";
const TASK: &str = "fedcba9876543210fedcba9876543210";

fn fixture(version: u32, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/format")
        .join(format!("v{version}"))
        .join(name)
}

fn token(byte: u8) -> TokenId {
    TokenId([byte; 16])
}

fn card() -> AgentCard {
    AgentCard {
        name: "planner".into(),
        description: "plans the work".into(),
        version: "1.4.2".into(),
        capabilities: vec![Capability {
            name: "planning".into(),
            description: "breaks work into tasks".into(),
        }],
        tools: vec!["code".into(), "plan".into()],
        metadata: vec![("team".into(), "core".into()), ("zone".into(), "eu-1".into())],
        a2a_card: r#"{"name":"planner","description":"plans the work","version":"1.4.2","skills":[]}"#.into(),
    }
}

/// The model of the sample's card vectors (an external embedder's, not the built-in's).
const MODEL: &str = "nomic-embed-text:v1.5";

/// One command of every variant that is logged, in `LoggedCommand`'s order but for
/// `SetCardVector`, logged as variant 18 from version 6 on, then a Register with its card's
/// vector (new in version 7) (`LOGGED_INDEXES`).
fn logged_commands() -> Vec<Command> {
    let mut commands = logged_commands_with(MODEL);
    commands.push(Command::Register {
        card: Box::new(card()),
        ttl_seconds: 45,
        vector: Some(Arc::new(CardVector {
            card_digest: CardDigest(std::array::from_fn(|i| i as u8 ^ 0x3c)),
            vector: vector(MODEL),
        })),
    });
    commands
}

/// The logged commands of versions 5 and 6, with card vectors of `model` (version 5 knew only
/// the built-in encoder).
fn logged_commands_with(model: &str) -> Vec<Command> {
    let mut commands = logged_commands_before_5();
    commands.push(Command::SetCardVector {
        agent_id: AGENT.into(),
        card_digest: CardDigest(std::array::from_fn(|i| i as u8 ^ 0xa5)),
        vector: vector(model),
    });
    commands.push(Command::KeepAlive {
        items: vec![
            Command::Heartbeat { agent_id: AGENT.into() },
            Command::RenewLease {
                task_id: "db-migration".into(),
                agent_id: AGENT.into(),
                token: 300,
                ttl_seconds: 0,
            },
        ],
    });
    commands
}

/// A card vector with values of every sign and size (not unit length: the log holds what came).
fn vector(model: &str) -> ModelVector {
    ModelVector::new(model, [0.5f32, -0.25, 1.0e-7, -3.5, 0.0, f32::MIN_POSITIVE])
}

/// The logged commands of versions 1 to 4 (version 5 added `SetCardVector` and `KeepAlive`).
fn logged_commands_before_5() -> Vec<Command> {
    vec![
        Command::Register {
            card: Box::new(card()),
            ttl_seconds: 30,
            vector: None,
        },
        Command::Heartbeat { agent_id: AGENT.into() },
        Command::Deregister { agent_id: AGENT.into() },
        Command::AcquireLease {
            task_id: "db-migration".into(),
            agent_id: AGENT.into(),
            ttl_seconds: 60,
        },
        Command::RenewLease {
            task_id: "db-migration".into(),
            agent_id: AGENT.into(),
            token: 300,
            ttl_seconds: 90,
        },
        Command::ReleaseLease {
            task_id: "db-migration".into(),
            agent_id: AGENT.into(),
            token: 300,
        },
        Command::Campaign {
            group: "coordinator".into(),
            agent_id: AGENT.into(),
        },
        Command::Resign {
            group: "coordinator".into(),
            agent_id: AGENT.into(),
        },
        Command::SetPolicy {
            policy: Box::new(PolicyInput {
                id: "no-prod".into(),
                subject: "agent:*".into(),
                action: "call".into(),
                resource: "tool:prod-*".into(),
                effect: Some(Effect::Deny),
            }),
        },
        Command::DeletePolicy { id: "no-prod".into() },
        Command::CreateTask {
            kind: "build".into(),
            input: vec![0, 1, 2, 255],
            required_tools: vec!["code".into(), "test".into()],
            max_retries: 3,
            ttl_seconds: 120,
        },
        Command::ClaimTask {
            agent_id: AGENT.into(),
            wait_ms: 25_000,
        },
        Command::CancelClaim { waiter: WaiterId(9) },
        Command::ReturnTask {
            task_id: TASK.into(),
            token: 301,
        },
        Command::CompleteTask {
            task_id: TASK.into(),
            agent_id: AGENT.into(),
            output: b"ok".to_vec(),
        },
        Command::FailTask {
            task_id: TASK.into(),
            agent_id: AGENT.into(),
            reason: "network unreachable".into(),
        },
    ]
}

/// Every record variant of versions 1 to 4: each logged command (every other one with a
/// principal, when `principals`), then a tick and a grace.
fn sample_entries(principals: bool) -> Vec<Entry> {
    sample_entries_of(logged_commands_before_5(), principals)
}

fn sample_entries_of(commands: Vec<Command>, principals: bool) -> Vec<Entry> {
    let mut entries: Vec<Entry> = commands
        .into_iter()
        .enumerate()
        .map(|(i, command)| Entry::Apply {
            now: 1_000 + i as u64,
            command,
            principal: (principals && i % 2 == 0).then(|| token(i as u8 + 1)),
        })
        .collect();
    entries.push(Entry::Tick { now: 2_000 });
    entries.push(Entry::Grace { now: 3_000 });
    entries
}

/// The current version's sample: every record variant, then the two creating writes numbered
/// by a client (new in version 4).
fn sample_entries_numbered() -> Vec<Entry> {
    sample_entries_numbered_of(logged_commands())
}

fn sample_entries_numbered_of(commands: Vec<Command>) -> Vec<Entry> {
    let mut entries = sample_entries_of(commands.clone(), true);
    let numbered = (commands.into_iter())
        .filter(|command| matches!(command, Command::Register { .. } | Command::CreateTask { .. }));
    for (i, command) in numbered.enumerate() {
        entries.push(Entry::Apply {
            now: 4_000 + i as u64,
            command: Command::Once {
                request: RequestId {
                    client: u128::MAX - i as u128,
                    seq: 1 << (8 * i),
                },
                command: Box::new(command),
            },
            principal: None,
        });
    }
    entries
}

/// The sample as version 5 held it: every card vector the built-in encoder's.
fn with_builtin_vectors(mut snapshot: CoreSnapshot) -> CoreSnapshot {
    for agent in &mut snapshot.agents {
        if let Some(vector) = &mut agent.vector {
            vector.model = Arc::from(BUILTIN_MODEL);
        }
    }
    snapshot
}

/// The sample as versions before 5 held it: no card vector.
fn without_vectors(mut snapshot: CoreSnapshot) -> CoreSnapshot {
    for agent in &mut snapshot.agents {
        agent.vector = None;
    }
    snapshot
}

/// The sample as versions before 4 held it: no client's request remembered.
fn without_sessions(mut snapshot: CoreSnapshot) -> CoreSnapshot {
    snapshot.sessions.clear();
    snapshot
}

fn agent_view(status: AgentStatus) -> AgentView {
    AgentView {
        agent_id: Id128(0xa1),
        card: card().into(),
        status,
        registered_at: 1_000,
        last_heartbeat_at: 1_500,
        ttl_ms: 30_000,
    }
}

fn task_view(status: TaskStatus, bytes: bool) -> TaskView {
    let (input, output): (&[u8], &[u8]) = if bytes { (&[0, 1, 2, 255], b"ok") } else { (&[], &[]) };
    TaskView {
        id: Id128(0x7a5c),
        kind: "build".into(),
        input: input.into(),
        output: output.into(),
        status,
        required_tools: vec!["code".into(), "test".into()].into(),
        max_retries: 3,
        retry_count: 1,
        claimed_by: Some(Id128(0xa1)),
        failure_reason: "network unreachable".into(),
        created_at: 1_100,
        claimed_at: Some(1_200),
        completed_at: (status == TaskStatus::Completed).then_some(1_300),
        ttl_ms: 120_000,
    }
}

/// A snapshot with every nested type and variant in it (not a state a core could reach: it
/// pins the encoding, not the core's behaviour). `owner` is the first agent's.
fn sample_snapshot(owner: Option<TokenId>) -> CoreSnapshot {
    CoreSnapshot {
        now: 5_000,
        rng_seed: std::array::from_fn(|i| i as u8),
        rng_stream: 3,
        rng_word_pos: (1u128 << 70) + 5,
        hash_seed: 0xdead_beef,
        registration_next: 2,
        agents: vec![
            AgentState {
                id: Id128(0xa1),
                card: card(),
                status: AgentStatus::Alive,
                registered_at: 1_000,
                last_heartbeat_at: 1_500,
                liveness_base: 1_500,
                ttl_ms: 30_000,
                registration: 0,
                dead_at: None,
                groups: vec!["coordinator".into()],
                owner,
                vector: Some(vector(MODEL)),
            },
            AgentState {
                id: Id128(u128::MAX),
                card: AgentCard::default(),
                status: AgentStatus::Dead,
                registered_at: 1_001,
                last_heartbeat_at: 1_001,
                liveness_base: 1_001,
                ttl_ms: 10_000,
                registration: 1,
                dead_at: Some(4_000),
                groups: vec![],
                owner: None,
                vector: None,
            },
        ],
        token_last: 301,
        leases: vec![LeaseState {
            task_id: "db-migration".into(),
            holder: Id128(0xa1),
            token: 300,
            acquired_at: 1_003,
            expires_at: 61_003,
            ttl_ms: 60_000,
        }],
        groups: vec![GroupState {
            name: "coordinator".into(),
            candidates: vec![Id128(0xa1), Id128(0xb2)],
            term: 4,
            elected_at: 1_006,
        }],
        policies: vec![
            Policy {
                id: "no-prod".into(),
                subject: "agent:*".into(),
                action: "call".into(),
                resource: "tool:prod-*".into(),
                effect: Effect::Deny,
            },
            Policy {
                id: "workers-code".into(),
                subject: "agent:worker-*".into(),
                action: "call".into(),
                resource: "tool:code*".into(),
                effect: Effect::Allow,
            },
        ],
        sequence_next: 6,
        events: vec![
            event(
                1,
                Topic::AgentRegistered,
                EventPayload::Agent(agent_view(AgentStatus::Alive)),
            ),
            event(
                2,
                Topic::AgentUnreachable,
                EventPayload::Agent(agent_view(AgentStatus::Unreachable)),
            ),
            event(
                3,
                Topic::LeaseAcquired,
                EventPayload::Lease(LeaseView {
                    task_id: "db-migration".into(),
                    holder: Id128(0xa1),
                    token: 300,
                    acquired_at: 1_003,
                    expires_at: 61_003,
                }),
            ),
            event(
                4,
                Topic::LeaderChanged,
                EventPayload::Election(ElectionView {
                    group: "coordinator".into(),
                    leader: Some(Id128(0xa1)),
                    term: 4,
                    elected_at: 1_006,
                }),
            ),
            event(
                5,
                Topic::TaskDead,
                EventPayload::Task(task_view(TaskStatus::Dead, false)),
            ),
        ],
        tasks: vec![
            TaskState {
                view: task_view(TaskStatus::Claimed, true),
                order: 0,
                finished_at: None,
            },
            TaskState {
                view: task_view(TaskStatus::Completed, true),
                order: 1,
                finished_at: Some(1_300),
            },
        ],
        task_order_next: 2,
        waiters: vec![WaiterState {
            id: WaiterId(9),
            agent_id: Id128(0xb2),
            deadline: 26_000,
        }],
        waiter_next: 10,
        sessions: vec![
            SessionState {
                client: 7,
                last_used: 4_500,
                applied: vec![(1, Created::Agent(Id128(0xa1))), (2, Created::Task(Id128(0xc3)))],
            },
            SessionState {
                client: u128::MAX,
                last_used: 4_900,
                applied: vec![(u64::MAX, Created::Agent(Id128(u128::MAX)))],
            },
        ],
    }
}

fn event(sequence: u64, topic: Topic, payload: EventPayload) -> Event {
    Event {
        sequence,
        topic,
        occurred_at: 1_000 + sequence,
        payload,
    }
}

/// A whole log file: the header, then every sample record.
fn sample_log() -> Vec<u8> {
    let mut bytes = HEADER.encode().to_vec();
    for entry in sample_entries_numbered() {
        wal::encode_record(&entry, &mut bytes);
    }
    bytes
}

/// Compares `actual` with the fixture `name` of the current version, or writes it when asked.
/// `locate` names what holds a byte (a record, the header), for the failure message.
fn golden(name: &str, actual: &[u8], locate: impl Fn(usize) -> String) {
    let path = fixture(VERSION, name);
    if std::env::var(REGENERATE).is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().expect("a fixture has a directory")).expect("create the fixture dir");
        std::fs::write(&path, actual).expect("write the fixture");
        eprintln!("wrote {}", path.display());
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; a new format version writes its fixtures with {REGENERATE}=1",
            path.display()
        )
    });
    if actual != expected {
        let at = actual
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(actual.len().min(expected.len()));
        panic!(
            "the encoding of format version {VERSION} changed: {} does not match ({} bytes now, {} \
             in the fixture; first difference at byte {at}, {}).\n\
             Files written by a release must read back the same forever. If the change is \
             intended: bump store::format::VERSION, freeze src/store/format/v{VERSION}.rs as it \
             is (decode-only, plus an upgrade into the new version, as v1.rs), put the new types \
             in a new file, move convert.rs to them, then write the new version's fixtures with \
             {REGENERATE}=1 cargo test --lib store::format (the v{VERSION} fixtures stay, as \
             decode tests). If the change was not meant to reach the disk, undo it.",
            path.display(),
            actual.len(),
            expected.len(),
            locate(at),
        );
    }
}

#[test]
fn every_record_variant_encodes_to_the_committed_bytes_and_back() {
    let log = sample_log();
    let entries = sample_entries_numbered();
    golden("wal.log", &log, |at| {
        // Which record the byte falls in, so the message names the variant that moved.
        let mut end = wal::HEADER_BYTES;
        for entry in &entries {
            let mut one = Vec::new();
            wal::encode_record(entry, &mut one);
            end += one.len();
            if at < end {
                return format!("in the record of {entry:?}");
            }
        }
        "in the header".into()
    });
    let scan = wal::scan(&log).expect("the sample log reads back");
    assert_eq!((scan.version, scan.torn), (VERSION, None));
    assert_eq!(scan.records, entries);
}

#[test]
fn the_sample_snapshot_encodes_to_the_committed_bytes_and_back() {
    let snapshot = sample_snapshot(Some(token(0x5a)));
    let bytes = crate::store::encode_snapshot(&snapshot);
    golden("snapshot.bin", &bytes, |_| "in the snapshot".into());
    assert_eq!(crate::store::decode_snapshot(&bytes).expect("decodes"), snapshot);
}

/// The version 1 fixtures were written by release 2dd3316's own encoders (its `Header`,
/// `encode_record` and `encode_snapshot`) from the same sample, without what version 1 lacked
/// (principals, agent owners): they must decode to exactly today's sample.
#[test]
fn version_1_files_written_by_release_2dd3316_decode_into_todays_values() {
    let log = std::fs::read(fixture(1, "wal.log")).expect("the v1 log fixture");
    assert_eq!(Header::decode(&log), Ok(HEADER));
    let scan = wal::scan(&log).expect("the v1 log reads back");
    assert_eq!((scan.version, scan.torn), (1, None));
    assert_eq!(scan.records, without_a2a_cards(sample_entries(false)));
    let snapshot = std::fs::read(fixture(1, "snapshot.bin")).expect("the v1 snapshot fixture");
    assert_eq!(
        crate::store::decode_snapshot(&snapshot).expect("the v1 snapshot decodes"),
        without_vectors(without_sessions(snapshot_without_a2a_cards(sample_snapshot(None))))
    );
}

/// The version 2 fixtures were written by release 8f3c0bd from the same sample, which had no A2A
/// cards: they must decode to today's sample with every A2A card empty.
#[test]
fn version_2_files_written_by_release_8f3c0bd_decode_into_todays_values_without_a2a_cards() {
    let log = std::fs::read(fixture(2, "wal.log")).expect("the v2 log fixture");
    assert_eq!(Header::decode(&log), Ok(HEADER));
    let scan = wal::scan(&log).expect("the v2 log reads back");
    assert_eq!((scan.version, scan.torn), (2, None));
    assert_eq!(scan.records, without_a2a_cards(sample_entries(true)));
    let snapshot = std::fs::read(fixture(2, "snapshot.bin")).expect("the v2 snapshot fixture");
    assert_eq!(
        crate::store::decode_snapshot(&snapshot).expect("the v2 snapshot decodes"),
        without_vectors(without_sessions(snapshot_without_a2a_cards(sample_snapshot(Some(
            token(0x5a)
        )))))
    );
}

/// The version 3 fixtures were written by release 83ddfc6 from the same sample, which numbered
/// no request: they must decode to today's sample with no session remembered.
#[test]
fn version_3_files_written_by_release_83ddfc6_decode_into_todays_values_without_sessions() {
    let log = std::fs::read(fixture(3, "wal.log")).expect("the v3 log fixture");
    assert_eq!(Header::decode(&log), Ok(HEADER));
    let scan = wal::scan(&log).expect("the v3 log reads back");
    assert_eq!((scan.version, scan.torn), (3, None));
    assert_eq!(scan.records, sample_entries(true));
    let snapshot = std::fs::read(fixture(3, "snapshot.bin")).expect("the v3 snapshot fixture");
    assert_eq!(
        crate::store::decode_snapshot(&snapshot).expect("the v3 snapshot decodes"),
        without_vectors(without_sessions(sample_snapshot(Some(token(0x5a)))))
    );
}

/// The version 4 fixtures were written by release 8db95bb from the same sample, which had no
/// `SetCardVector` and no card vector: they must decode to today's sample without them.
#[test]
fn version_4_files_written_by_release_8db95bb_decode_into_todays_values_without_vectors() {
    let log = std::fs::read(fixture(4, "wal.log")).expect("the v4 log fixture");
    assert_eq!(Header::decode(&log), Ok(HEADER));
    let scan = wal::scan(&log).expect("the v4 log reads back");
    assert_eq!((scan.version, scan.torn), (4, None));
    assert_eq!(scan.records, sample_entries_numbered_of(logged_commands_before_5()));
    let snapshot = std::fs::read(fixture(4, "snapshot.bin")).expect("the v4 snapshot fixture");
    assert_eq!(
        crate::store::decode_snapshot(&snapshot).expect("the v4 snapshot decodes"),
        without_vectors(sample_snapshot(Some(token(0x5a))))
    );
}

/// The version 5 fixtures were written by release 3ddb881 from the same sample, whose card
/// vectors had no model: they must decode to today's sample with the built-in encoder's.
#[test]
fn version_5_files_written_by_release_3ddb881_decode_into_todays_values_with_builtin_vectors() {
    let log = std::fs::read(fixture(5, "wal.log")).expect("the v5 log fixture");
    assert_eq!(Header::decode(&log), Ok(HEADER));
    let scan = wal::scan(&log).expect("the v5 log reads back");
    assert_eq!((scan.version, scan.torn), (5, None));
    assert_eq!(
        scan.records,
        sample_entries_numbered_of(logged_commands_with(BUILTIN_MODEL))
    );
    let snapshot = std::fs::read(fixture(5, "snapshot.bin")).expect("the v5 snapshot fixture");
    assert_eq!(
        crate::store::decode_snapshot(&snapshot).expect("the v5 snapshot decodes"),
        with_builtin_vectors(sample_snapshot(Some(token(0x5a))))
    );
}

/// The version 6 fixtures were written by release 82ad96f from the same sample, whose Registers
/// carried no card vector: they must read back unchanged (version 7's snapshot is version 6's).
#[test]
fn version_6_files_written_by_release_82ad96f_decode_into_todays_values_without_register_vectors() {
    let log = std::fs::read(fixture(6, "wal.log")).expect("the v6 log fixture");
    assert_eq!(Header::decode(&log), Ok(HEADER));
    let scan = wal::scan(&log).expect("the v6 log reads back");
    assert_eq!((scan.version, scan.torn), (6, None));
    assert_eq!(scan.records, sample_entries_numbered_of(logged_commands_with(MODEL)));
    let snapshot = std::fs::read(fixture(6, "snapshot.bin")).expect("the v6 snapshot fixture");
    assert_eq!(
        crate::store::decode_snapshot(&snapshot).expect("the v6 snapshot decodes"),
        sample_snapshot(Some(token(0x5a)))
    );
}

/// The sample as versions before 3 held it: every card without its A2A card.
fn without_a2a_cards(mut entries: Vec<Entry>) -> Vec<Entry> {
    for entry in &mut entries {
        if let Entry::Apply {
            command: Command::Register { card, .. },
            ..
        } = entry
        {
            card.a2a_card.clear();
        }
    }
    entries
}

fn snapshot_without_a2a_cards(mut snapshot: CoreSnapshot) -> CoreSnapshot {
    for agent in &mut snapshot.agents {
        agent.card.a2a_card.clear();
    }
    for event in &mut snapshot.events {
        if let EventPayload::Agent(view) = &mut event.payload {
            std::sync::Arc::make_mut(&mut view.card).a2a_card.clear();
        }
    }
    snapshot
}

/// The index postcard writes for each logged command: fixed forever (see `v7::LoggedCommand`,
/// whose first sixteen are versions 3 and 4's, first eighteen version 5's, and all nineteen
/// version 6's).
fn logged_index(command: &v7::LoggedCommand) -> u8 {
    use v7::LoggedCommand as L;
    match command {
        L::Register { .. } => 0,
        L::Heartbeat { .. } => 1,
        L::Deregister { .. } => 2,
        L::AcquireLease { .. } => 3,
        L::RenewLease { .. } => 4,
        L::ReleaseLease { .. } => 5,
        L::Campaign { .. } => 6,
        L::Resign { .. } => 7,
        L::SetPolicy { .. } => 8,
        L::DeletePolicy { .. } => 9,
        L::CreateTask { .. } => 10,
        L::ClaimTask { .. } => 11,
        L::CancelClaim { .. } => 12,
        L::ReturnTask { .. } => 13,
        L::CompleteTask { .. } => 14,
        L::FailTask { .. } => 15,
        L::SetCardVector { .. } => 16,
        L::KeepAlive { .. } => 17,
        L::SetModelCardVector { .. } => 18,
    }
}

/// The index each command of `logged_commands` is logged under: `SetCardVector` is variant 18
/// from version 6 on (16, version 5's, is read but never written), and a Register with a
/// vector is still variant 0.
const LOGGED_INDEXES: [u8; 19] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 18, 17, 0];

#[test]
fn the_sample_holds_every_logged_command_under_its_fixed_index() {
    assert_eq!(logged_commands().len(), LOGGED_INDEXES.len());
    for (&i, command) in LOGGED_INDEXES.iter().zip(&logged_commands()) {
        let logged = super::convert::logged_command(command).expect("a logged command");
        assert_eq!(logged_index(&logged), i, "{command:?}");
        let record = v7::Record::Apply {
            now: 0,
            command: logged,
            principal: None,
            request: None,
        };
        let bytes = postcard::to_stdvec(&record).expect("encodes");
        assert_eq!(bytes[..3], [0, 0, i], "{command:?}: Apply, now, then the index");
    }
}

/// Every command, one of each variant: the log holds exactly those that `is_logged` says.
#[test]
fn the_log_takes_exactly_the_commands_that_change_state() {
    use crate::core::events::SubscriberId;
    let reads = [
        Command::GetAgent { agent_id: AGENT.into() },
        Command::Find {
            query: "q".into(),
            tools: vec![],
            limit: 1,
            vector: None,
        },
        Command::Watch {
            topics: vec![],
            from_sequence: 0,
        },
        Command::Unwatch {
            subscriber: SubscriberId(1),
        },
        Command::WatchElection { group: "g".into() },
        Command::ListPolicies {
            subject_prefix: String::new(),
            page_size: 0,
            page_token: String::new(),
        },
        Command::CheckPolicy {
            subject: "s".into(),
            action: "a".into(),
            resource: "r".into(),
        },
        Command::GetTask { task_id: TASK.into() },
        Command::ListTasks {
            status: None,
            page_size: 0,
            page_token: String::new(),
            bytes_left: None,
        },
        Command::ListLeases {
            prefix: String::new(),
            page_size: 0,
            page_token: String::new(),
        },
        Command::ListElections {
            page_size: 0,
            page_token: String::new(),
        },
        Command::Overview {
            agents_max: 1,
            leases_max: 1,
        },
        Command::Now,
        Command::ListAgents {
            status: None,
            query: String::new(),
            page_size: 1,
            page_token: String::new(),
        },
    ];
    let writes = logged_commands();
    let mut names: Vec<&str> = reads.iter().chain(&writes).map(Command::name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 32, "one of every command: {names:?}");
    for command in reads.iter().chain(&writes) {
        assert_eq!(
            super::convert::logged_command(command).is_some(),
            command.is_logged(),
            "{command:?}"
        );
    }
}
