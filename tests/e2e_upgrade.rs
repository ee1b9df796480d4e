//! End to end: upgrades. A data dir written by release 2dd3316 (format version 1, committed in
//! tests/fixtures/datadir-2dd3316 with the manifest of what that daemon served) is served the
//! same by this binary: through a mixed dir (version 1 files, then a log in the current version)
//! and after the first snapshot in the current version has replaced every version 1 file.

mod common;

use std::path::Path;

use agentkeeper::proto as pb;
use common::{Clients, Daemon};
use serde_json::Value;

/// Long enough that nothing in the fixture (agents deregistered, tasks finished when it was
/// made) is forgotten on the first tick, however long ago that was.
const RETENTIONS: [&str; 2] = ["--dead-retention=87600h", "--task-retention=87600h"];

fn fixture() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/datadir-2dd3316"))
}

fn manifest() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/datadir-2dd3316.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("the manifest")).expect("the manifest is JSON")
}

fn start(dir: &Path, extra: &[&str]) -> Daemon {
    let data_dir = format!("--data-dir={}", dir.display());
    let mut args = vec![data_dir.as_str()];
    args.extend(RETENTIONS);
    args.extend(extra);
    Daemon::start(&args)
}

/// The data files in `dir` (the LOCK aside), each with the format version in its header (0
/// while a file is too new to have one). A file the daemon deletes meanwhile is left out.
fn files(dir: &Path) -> Vec<(String, u32)> {
    let mut found: Vec<(String, u32)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "LOCK")
        .filter_map(|e| {
            let bytes = std::fs::read(e.path()).ok()?;
            let version = bytes
                .get(8..12)
                .map_or(0, |v| u32::from_le_bytes(v.try_into().unwrap()));
            Some((e.file_name().to_string_lossy().into_owned(), version))
        })
        .collect();
    found.sort();
    found
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}"))
}

fn texts(value: &Value) -> Vec<String> {
    value.as_array().unwrap().iter().map(|v| text(v).to_string()).collect()
}

/// Checks every item of the manifest against what the daemon serves now.
/// The format version this release writes (the files after an upgrade).
const CURRENT: u32 = agentkeeper::store::format::VERSION;

async fn serves_the_manifest(c: &mut Clients, manifest: &Value) {
    for agent in manifest["agents"].as_array().unwrap() {
        let info = c.agent(text(&agent["id"])).await.expect("an agent of the manifest");
        let card = info.card.unwrap();
        let status = pb::AgentStatus::try_from(info.status).unwrap().as_str_name();
        assert_eq!(
            (card.name.as_str(), status),
            (text(&agent["name"]), text(&agent["status"]))
        );
        assert_eq!(card.tools, texts(&agent["tools"]));
        assert_eq!(card.version, text(&agent["version"]));
        assert_eq!(card.capabilities.len() as u64, agent["capabilities"].as_u64().unwrap());
        let metadata: Vec<(String, String)> = agent["metadata"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), text(v).to_string()))
            .collect();
        let mut served: Vec<(String, String)> = card.metadata.into_iter().collect();
        served.sort();
        assert_eq!(served, metadata);
    }
    let leases = c
        .leases
        .list_leases(pb::ListLeasesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .leases;
    for lease in manifest["leases"].as_array().unwrap() {
        let served = leases
            .iter()
            .find(|l| l.task_id == text(&lease["key"]))
            .unwrap_or_else(|| panic!("lease {lease} is not served: {leases:?}"));
        assert_eq!(served.holder_agent_id, text(&lease["holder"]), "{lease}");
        assert_eq!(common::token_of(served), lease["token"].as_u64().unwrap(), "{lease}");
    }
    let policies = c
        .policies
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .policies;
    let served: Vec<Value> = policies
        .iter()
        .map(|p| {
            serde_json::json!({"id": p.id, "subject": p.subject, "action": p.action, "resource": p.resource,
                "effect": pb::PolicyEffect::try_from(p.effect).unwrap().as_str_name()})
        })
        .collect();
    assert_eq!(&Value::Array(served), &manifest["policies"]);
    let groups = c
        .elections
        .list_elections(pb::ListElectionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .groups;
    for election in manifest["elections"].as_array().unwrap() {
        let group = groups
            .iter()
            .find(|g| g.state.as_ref().unwrap().group == text(&election["group"]))
            .unwrap_or_else(|| panic!("group {election} is not served"));
        let state = group.state.as_ref().unwrap();
        assert_eq!(state.term, election["term"].as_u64().unwrap(), "{election}");
        assert_eq!(state.leader_agent_id, text(&election["leader"]), "{election}");
        assert_eq!(group.candidate_agent_ids, texts(&election["candidates"]), "{election}");
    }
    for task in manifest["tasks"].as_array().unwrap() {
        let served = c
            .tasks
            .get_task(pb::GetTaskRequest {
                task_id: text(&task["id"]).into(),
            })
            .await
            .unwrap_or_else(|e| panic!("task {task}: {e}"))
            .into_inner()
            .task
            .unwrap();
        let status = pb::TaskStatus::try_from(served.status).unwrap().as_str_name();
        assert_eq!(status, text(&task["status"]), "{task}");
        assert_eq!(served.r#type, text(&task["kind"]), "{task}");
        assert_eq!(served.claimed_by_agent_id, text(&task["claimed_by"]), "{task}");
        assert_eq!(
            u64::from(served.retry_count),
            task["retry_count"].as_u64().unwrap(),
            "{task}"
        );
        assert_eq!(served.input, text(&task["input"]).as_bytes(), "{task}");
        assert_eq!(served.output, text(&task["output"]).as_bytes(), "{task}");
        assert_eq!(served.failure_reason, text(&task["failure_reason"]), "{task}");
    }
}

#[tokio::test]
async fn a_data_dir_written_by_release_2dd3316_serves_the_same_state_after_the_upgrade() {
    let manifest = manifest();
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let v1_files = files(dir.path());
    assert_eq!(
        v1_files,
        [
            ("snapshot-00000001.bin".to_string(), 1),
            ("wal-00000001.log".to_string(), 1)
        ],
        "the fixture: a version 1 snapshot and the log after it"
    );
    let token_last = manifest["fencing_token_last"].as_u64().unwrap();
    let worker_a = text(&manifest["agents"][1]["id"]).to_string();
    let held = &manifest["leases"][1];
    assert_eq!(text(&held["key"]), "db-migration");

    // The first start reads version 1 only, and writes its own records in a new generation.
    let mut daemon = start(dir.path(), &[]);
    let mut c = daemon.clients().await;
    serves_the_manifest(&mut c, &manifest).await;
    let renewed = c
        .renew("db-migration", &worker_a, held["token"].as_u64().unwrap(), 600)
        .await
        .expect("the old token still fences its lease");
    assert_eq!(common::token_of(&renewed), held["token"].as_u64().unwrap());
    let (lease, acquired) = c.acquire("after-upgrade", &worker_a, 600).await;
    let first_new = common::token_of(&lease);
    assert!(
        acquired && first_new > token_last,
        "token {first_new} after {token_last}"
    );
    let newcomer = c.register("newcomer", &["code"], 600).await;
    drop(c);
    daemon.sigterm();
    assert!(daemon.exited().await.success());
    let mut expected = v1_files.clone();
    expected.push(("wal-00000002.log".to_string(), CURRENT));
    assert_eq!(files(dir.path()), expected, "version 1 files stay until a snapshot");

    // Mixed: the version 1 snapshot and log, then a log in the current version.
    let mut daemon = start(dir.path(), &[]);
    let mut c = daemon.clients().await;
    serves_the_manifest(&mut c, &manifest).await;
    assert_eq!(c.status(&newcomer).await, pb::AgentStatus::Alive);
    let (again, acquired) = c.acquire("after-upgrade", &worker_a, 600).await;
    assert_eq!(
        (common::token_of(&again), acquired),
        (first_new, true),
        "the holder keeps it"
    );
    drop(c);
    daemon.sigterm();
    assert!(daemon.exited().await.success());

    // A snapshot after every record: the first, in the current version, replaces every version 1 file.
    let mut daemon = start(dir.path(), &["--snapshot-every=1"]);
    let mut c = daemon.clients().await;
    c.heartbeat(&newcomer).await.unwrap();
    let current_only = |files: &[(String, u32)]| {
        files.iter().all(|(_, version)| *version == CURRENT)
            && files.iter().any(|(name, _)| name.starts_with("snapshot-"))
    };
    common::wait_until(
        "a snapshot in the current version replacing every version 1 file",
        async || {
            let found = files(dir.path());
            if current_only(&found) {
                Ok(())
            } else {
                Err(format!("{found:?}"))
            }
        },
    )
    .await;
    serves_the_manifest(&mut c, &manifest).await;
    drop(c);
    daemon.sigterm();
    assert!(daemon.exited().await.success());

    // The current version only.
    let daemon = start(dir.path(), &[]);
    assert!(daemon.stderr().contains("from_snapshot=true"), "{}", daemon.stderr());
    let mut c = daemon.clients().await;
    serves_the_manifest(&mut c, &manifest).await;
    assert_eq!(c.status(&newcomer).await, pb::AgentStatus::Alive);
    let (next, acquired) = c.acquire("after-snapshot", &worker_a, 600).await;
    assert!(acquired && common::token_of(&next) > first_new);
}
