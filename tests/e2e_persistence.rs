//! End to end: `--data-dir`: state survives SIGTERM and kill -9, every acknowledged write is
//! there after a crash, tokens never go back, a torn tail is cut, the directory is locked.

#![allow(clippy::disallowed_methods)] // one test waits until the wall clock passes a ttl

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentkeeper::proto as pb;
use common::{Daemon, HANG_GUARD, allow_policy, ms, wait_until};

/// Starts a daemon on `dir` (on fresh ports: no client here needs the last run's address) and
/// waits until it serves, i.e. until recovery is done.
fn start_on(dir: &Path) -> Daemon {
    start_with(dir, &[])
}

fn start_with(dir: &Path, extra: &[&str]) -> Daemon {
    let data_dir = format!("--data-dir={}", dir.display());
    let mut args = vec![data_dir.as_str()];
    args.extend_from_slice(extra);
    Daemon::start(&args)
}

#[tokio::test]
async fn everything_survives_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_on(dir.path());
    let mut c = daemon.clients().await;
    let a = c.register("a", &["x"], 60).await;
    let b = c.register("b", &[], 60).await;
    c.registry
        .deregister(pb::DeregisterRequest { agent_id: b.clone() })
        .await
        .unwrap();
    let (lease, _) = c.acquire("k", &a, 300).await;
    let before = c.agent(&a).await.unwrap();
    c.campaign("g", &a).await;
    c.elections
        .resign(pb::ResignRequest {
            group: "g".into(),
            agent_id: a.clone(),
        })
        .await
        .unwrap();
    c.campaign("g", &a).await;
    c.policies.set_policy(allow_policy("p")).await.unwrap();
    let mut events = c.watch(&[], 0).await;
    drop(c);
    daemon.sigterm();
    assert!(daemon.exited().await.success());
    drop(events.message().await);

    let daemon = start_on(dir.path());
    let mut c = daemon.clients().await;
    let after = c.agent(&a).await.unwrap();
    assert_eq!(
        (after.card, after.registered_at, after.status),
        (before.card, before.registered_at, before.status)
    );
    assert_eq!(c.status(&b).await, pb::AgentStatus::Dead);
    let (again, acquired) = c.acquire("k", &a, 300).await;
    assert!(acquired);
    assert_eq!(again.token, lease.token, "the holder's lease and token survived");
    assert_eq!(c.campaign("g", &a).await.term, 3, "terms survive");
    let list = c
        .policies
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.policies.len(), 1);
    let mut resumed = c.watch(&[], 1).await;
    let first = common::next_event(&mut resumed, HANG_GUARD).await.unwrap();
    assert_eq!(first.sequence_number, 1, "the event history and its sequence survive");
    let (next, _) = c.acquire("k2", &a, 300).await;
    assert!(next.token.unwrap().value > lease.token.unwrap().value);
}

#[tokio::test]
async fn no_agent_dies_and_no_lease_expires_because_the_daemon_was_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_on(dir.path());
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 1).await;
    let (lease, _) = c.acquire("k", &a, 1).await;
    drop(c);
    daemon.sigterm();
    assert!(daemon.exited().await.success());
    // Down for longer than both ttls: the downtime is what this test is about, so real time has
    // to pass, until the wall clock (which the daemon's real clock follows) is past both expiries.
    let expired_at = ms(&lease.expires_at) + 1;
    wait_until("the wall clock to pass both ttls", async || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        if now > expired_at {
            Ok(())
        } else {
            Err(format!("{} ms to go", expired_at - now))
        }
    })
    .await;
    // A manual clock for the second run: it starts at the restart's wall time (past both ttls)
    // and then stands still, so the checks below see the moment of the restart however slowly
    // this machine gets to them. Without the restart grace the agent would be UNREACHABLE and
    // the lease expired right then.
    let daemon = start_with(dir.path(), &["--clock=manual"]);
    let mut c = daemon.clients().await;
    assert_eq!(c.status(&a).await, pb::AgentStatus::Alive);
    let b = c.register("b", &[], 30).await;
    let (held, acquired) = c.acquire("k", &b, 2).await;
    assert!(!acquired, "a's lease is still held after the restart");
    assert_eq!(held.token, lease.token);
    assert!(
        ms(&held.expires_at) > expired_at,
        "it got at least its ttl from the restart"
    );
}

#[test]
fn a_second_daemon_on_the_same_data_dir_exits_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let _first = start_on(dir.path());
    let args = [
        "--addr=127.0.0.1:0".to_string(),
        format!("--data-dir={}", dir.path().display()),
    ];
    let mut second = Daemon::spawn(&args);
    let status = second.wait_exit();
    assert!(!status.success());
    let stderr = second.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("in use")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
}

#[tokio::test]
async fn a_torn_last_record_is_cut_with_a_warning_and_the_rest_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_on(dir.path());
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 60).await;
    c.policies.set_policy(allow_policy("last")).await.unwrap();
    drop(c);
    daemon.sigterm();
    assert!(daemon.exited().await.success());
    // The log ends with the restart-free shutdown; cut into the policy's record.
    let log = dir.path().join("wal-00000000.log");
    let len = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let daemon = start_on(dir.path());
    let mut c = daemon.clients().await;
    assert_eq!(
        c.status(&a).await,
        pb::AgentStatus::Alive,
        "records before the torn one are kept"
    );
    let list = c
        .policies
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.policies.is_empty(), "the torn record is gone, not half-applied");
    assert!(daemon.stderr().contains("torn"), "{}", daemon.stderr());
}

#[test]
fn damage_in_the_middle_of_the_log_refuses_to_start_saying_where() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("wal-00000000.log");
    {
        let mut daemon = start_on(dir.path());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let mut c = daemon.clients().await;
            for i in 0..5 {
                c.policies.set_policy(allow_policy(&format!("p{i}"))).await.unwrap();
            }
        });
        assert!(daemon.terminate().success());
    }
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[50] ^= 0xff;
    std::fs::write(&log, bytes).unwrap();
    let args = [
        "--addr=127.0.0.1:0".to_string(),
        format!("--data-dir={}", dir.path().display()),
    ];
    let mut daemon = Daemon::spawn(&args);
    let status = daemon.wait_exit();
    assert!(!status.success());
    assert!(daemon.stderr().contains("byte offset"), "{}", daemon.stderr());
}

/// Writers record what the daemon acknowledged; the daemon is killed with SIGKILL at random
/// points and restarted; every acknowledged write must be there and tokens must only grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_no_acknowledged_write() {
    const CRASHES: usize = 20;
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged_policies: BTreeSet<String> = BTreeSet::new();
    let mut acknowledged_agents: Vec<String> = Vec::new();
    let mut token_max = 0u64;
    let mut checked = 0usize;
    let mut rng = 0x9e3779b97f4a7c15u64;
    for crash in 0..CRASHES {
        // Frequent snapshots, so that kills also land while one is being written.
        let mut daemon = start_with(dir.path(), &["--snapshot-every", "300"]);
        let mut c = daemon.clients().await;
        // Everything acknowledged before is still there.
        let list = c
            .policies
            .list_policies(pb::ListPoliciesRequest::default())
            .await
            .unwrap()
            .into_inner();
        let present: BTreeSet<String> = list.policies.into_iter().map(|p| p.id).collect();
        let lost: Vec<&String> = acknowledged_policies.difference(&present).collect();
        assert!(lost.is_empty(), "crash {crash}: acknowledged policies lost: {lost:?}");
        for agent in &acknowledged_agents {
            assert!(
                c.agent(agent).await.is_ok(),
                "crash {crash}: acknowledged agent {agent} lost"
            );
        }
        checked += acknowledged_policies.len() + acknowledged_agents.len();
        let holder = c.register(&format!("holder-{crash}"), &[], 600).await;
        acknowledged_agents.push(holder.clone());
        // Concurrent writers until the kill.
        let written = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let mut c = daemon.clients().await;
            let holder = holder.clone();
            let written = Arc::clone(&written);
            tasks.push(tokio::spawn(async move {
                let mut policies = Vec::new();
                let mut tokens = Vec::new();
                for i in 0.. {
                    let id = format!("c{crash}-w{writer}-{i}");
                    match c.policies.set_policy(allow_policy(&id)).await {
                        Ok(_) => policies.push(id),
                        Err(_) => break,
                    }
                    written.fetch_add(1, Ordering::Relaxed);
                    let request = pb::AcquireLeaseRequest {
                        task_id: format!("k{crash}-{writer}-{i}"),
                        agent_id: holder.clone(),
                        ttl_seconds: 600,
                    };
                    match c.leases.acquire_lease(request).await {
                        Ok(reply) => tokens.push(reply.into_inner().lease.unwrap().token.unwrap().value),
                        Err(_) => break,
                    }
                    written.fetch_add(1, Ordering::Relaxed);
                }
                (policies, tokens)
            }));
        }
        // The kill comes after a random number of acknowledged writes, not after a random time:
        // the same point in the load however fast this machine is, while the writes in flight
        // (eight at a time) put it at a random point of the daemon's work (a batch, an fsync,
        // a snapshot every 300 changes).
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_after = 10 + (rng % 600) as usize;
        wait_until("the writes before the kill", async || {
            let done = written.load(Ordering::Relaxed);
            if done >= kill_after {
                Ok(())
            } else {
                Err(format!("{done} of {kill_after} writes"))
            }
        })
        .await;
        daemon.kill_9();
        let token_floor = token_max;
        let mut run_tokens = BTreeSet::new();
        for task in tasks {
            let (policies, tokens) = task.await.unwrap();
            acknowledged_policies.extend(policies);
            for token in tokens {
                assert!(
                    token > token_floor,
                    "crash {crash}: token {token} not above the last run's {token_floor}"
                );
                assert!(
                    run_tokens.insert(token),
                    "crash {crash}: token {token} handed out twice"
                );
                token_max = token_max.max(token);
            }
        }
        // After the restart a new grant must be above every token ever acknowledged.
        let daemon = start_with(dir.path(), &["--snapshot-every", "300"]);
        let mut c = daemon.clients().await;
        let (lease, _) = c.acquire(&format!("probe-{crash}"), &holder, 600).await;
        let probe = lease.token.unwrap().value;
        assert!(
            probe > token_max,
            "crash {crash}: token {probe} not above acknowledged {token_max}"
        );
        token_max = probe;
        drop(c);
        drop(daemon);
    }
    eprintln!(
        "{CRASHES} crashes, {} acknowledged policies and {} agents, {checked} checks, lost 0",
        acknowledged_policies.len(),
        acknowledged_agents.len()
    );
    assert!(acknowledged_policies.len() > CRASHES, "the load did write");
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn snapshots_bound_the_log_and_a_restart_starts_from_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start_with(dir.path(), &["--snapshot-every", "50"]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 600).await;
    for i in 0..400 {
        c.policies.set_policy(allow_policy(&format!("p{i:03}"))).await.unwrap();
    }
    let (lease, _) = c.acquire("k", &a, 600).await;
    // Eight snapshots were taken; another thread writes each and then deletes the generations
    // before it. Were they kept, this would never hold.
    wait_until("old generations to be removed", async || {
        let names = files(dir.path());
        let logs = names.iter().filter(|n| n.starts_with("wal-")).count();
        let snapshots = names
            .iter()
            .filter(|n| n.starts_with("snapshot-") && n.ends_with(".bin"))
            .count();
        if logs <= 2 && snapshots == 1 {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    let (_, metrics) = daemon.http_get("/metrics");
    assert!(
        metrics.contains("agentkeeper_snapshot_pause_seconds_count"),
        "{metrics}"
    );
    drop(c);
    daemon.sigterm();
    assert!(daemon.exited().await.success());
    let daemon = start_with(dir.path(), &["--snapshot-every", "50"]);
    assert!(daemon.stderr().contains("from_snapshot=true"), "{}", daemon.stderr());
    let mut c = daemon.clients().await;
    let list = c
        .policies
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.policies.len(), 400);
    let (again, _) = c.acquire("k", &a, 600).await;
    assert_eq!(again.token, lease.token);
}

/// Unmounts the test's tiny filesystem when the test ends, however it ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_writes_with_unavailable_and_reads_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: mounting a tiny tmpfs needs root");
        return;
    }
    let _mount = Mount(dir.path().to_path_buf());
    let daemon = start_with(dir.path(), &["--snapshot-every", "1000000"]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 600).await;
    let mut written = 0;
    let error = loop {
        let mut request = allow_policy(&format!("p{written:05}"));
        request.policy.as_mut().unwrap().resource = format!("tool:{}", "x".repeat(1000));
        match c.policies.set_policy(request).await {
            Ok(_) => written += 1,
            Err(status) => break status,
        }
        assert!(written < 1000, "the disk never filled");
    };
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");
    assert!(written > 10, "some writes fitted first");
    // Reads still work; later writes are refused the same way; the daemon stays up.
    assert_eq!(c.status(&a).await, pb::AgentStatus::Alive);
    let list = c
        .policies
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.policies.len() >= written);
    let again = c
        .registry
        .heartbeat(pb::HeartbeatRequest { agent_id: a })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::Unavailable);
    assert!(again.message().contains("restart"), "{}", again.message());
    drop(daemon);
}

/// The records recovery replayed at the daemon's start, from its "recovered state" log line.
fn replayed_at_start(daemon: &Daemon) -> u64 {
    let stderr = daemon.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("recovered state from the data dir"))
        .unwrap_or_else(|| panic!("no recovery line:\n{stderr}"));
    let digits: String = line
        .split_once("replayed=")
        .unwrap_or_else(|| panic!("no replayed count: {line}"))
        .1
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// A daemon killed more often than every `--snapshot-every` changes still snapshots, because
/// its count starts from what recovery replayed: the records replayed at each start and the
/// data dir's size stay bounded however often it crashes. Each round writes fewer records than
/// a snapshot needs, then is killed with SIGKILL; the state stays the same size (writers keep
/// overwriting the same policies), so only an unbounded log could make the dir grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_faster_than_snapshots_keep_replay_and_disk_bounded() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const SNAPSHOT_EVERY: u64 = 400;
    const WRITERS: usize = 8;
    const ROUNDS: usize = 12;
    /// Acknowledged writes per round: fewer than a snapshot needs.
    const ROUND_WRITES: usize = 150;
    /// At most: the writes (each writer may pass the target by one) and the restart's grace.
    const ROUND_RECORDS_MAX: u64 = (ROUND_WRITES + WRITERS) as u64 + 1;
    /// Under the threshold at the last start, plus a round, plus the batch that crossed it.
    const REPLAYED_MAX: u64 = SNAPSHOT_EVERY + ROUND_RECORDS_MAX + WRITERS as u64;
    /// A framed SetPolicy record below (a 200-byte resource) at most.
    const RECORD_BYTES_MAX: u64 = 300;
    /// The logs of REPLAYED_MAX records, and two snapshots (the old one may still be there).
    const DIR_BYTES_MAX: u64 = REPLAYED_MAX * RECORD_BYTES_MAX + 2 * 32 * 1024;
    assert!(
        (ROUNDS * ROUND_WRITES) as u64 * 200 > DIR_BYTES_MAX && (ROUNDS * ROUND_WRITES) as u64 > REPLAYED_MAX,
        "without snapshots the rounds would break both bounds"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut replayed_all = Vec::new();
    for round in 0..ROUNDS {
        let mut daemon = start_with(dir.path(), &["--snapshot-every=400"]);
        let replayed = replayed_at_start(&daemon);
        replayed_all.push(replayed);
        assert!(
            replayed <= REPLAYED_MAX,
            "round {round}: {replayed} records replayed, more than {REPLAYED_MAX}: {replayed_all:?}"
        );
        let written = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for writer in 0..WRITERS {
            let mut c = daemon.clients().await;
            let written = Arc::clone(&written);
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    if written.load(Ordering::SeqCst) >= ROUND_WRITES {
                        break;
                    }
                    let mut request = allow_policy(&format!("w{writer}-{}", i % 4));
                    request.policy.as_mut().unwrap().resource = format!("tool:{}", "x".repeat(195));
                    c.policies.set_policy(request).await.expect("a write");
                    written.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        for writer in writers {
            writer.await.unwrap();
        }
        daemon.kill_9();
        let bytes = dir_bytes(dir.path());
        assert!(
            bytes <= DIR_BYTES_MAX,
            "round {round}: the data dir holds {bytes} bytes, more than {DIR_BYTES_MAX}: {:?}",
            files(dir.path())
        );
        eprintln!("round {round}: replayed {replayed} at start; {bytes} bytes after the kill");
    }
    // No round wrote enough for a snapshot; the count carried over from the replay did.
    assert!(
        files(dir.path()).iter().any(|f| f.starts_with("snapshot-")),
        "{:?}",
        files(dir.path())
    );
}
