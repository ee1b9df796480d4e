//! End to end: the task queue through the real binary: workers that claim, complete and die; the
//! long-poll and its empty answer before the deadline; a caller that hangs up; paging; events;
//! and tasks surviving kill -9.

#![allow(clippy::disallowed_methods)] // one test checks that the long-poll waited in real time

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agentkeeper::proto as pb;
use common::{Clients, Daemon, HANG_GUARD, claim_within, decode, next_event, token_of, topics, type_url, wait_until};
use tokio::sync::Mutex;
use tonic::Code;

fn create_request(kind: &str, tools: &[&str], max_retries: u32, ttl_seconds: u32) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        r#type: kind.into(),
        input: format!("input of {kind}").into_bytes(),
        required_tools: tools.iter().map(|t| t.to_string()).collect(),
        max_retries,
        ttl_seconds,
    }
}

async fn create(c: &mut Clients, kind: &str, tools: &[&str], max_retries: u32, ttl_seconds: u32) -> pb::Task {
    c.tasks
        .create_task(create_request(kind, tools, max_retries, ttl_seconds))
        .await
        .expect("CreateTask")
        .into_inner()
        .task
        .expect("a task")
}

async fn claim(c: &mut Clients, agent: &str, timeout: Duration) -> Result<pb::ClaimTaskResponse, tonic::Status> {
    claim_within(&mut c.tasks, agent, timeout).await
}

async fn get(c: &mut Clients, id: &str) -> pb::Task {
    c.tasks
        .get_task(pb::GetTaskRequest { task_id: id.into() })
        .await
        .expect("GetTask")
        .into_inner()
        .task
        .expect("a task")
}

async fn list_all(c: &mut Clients, status: pb::TaskStatus) -> Vec<pb::Task> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .tasks
            .list_tasks(pb::ListTasksRequest {
                status: status as i32,
                page_size: 0,
                page_token,
            })
            .await
            .expect("ListTasks")
            .into_inner();
        all.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// One worker process on a `--clock manual` daemon: its own connection, claim -> complete until
/// `stop` is set (checked between claims). Its agent's ttl outlasts every clock advance of the
/// test, so it needs no heartbeats. `die_after` claims, it stops dead in the middle of a task (no
/// complete, no answer, its connection goes away) and returns that task's id.
async fn worker(
    daemon_url: String,
    name: String,
    die_after: Option<usize>,
    completed: Arc<Mutex<BTreeMap<String, u32>>>,
    stop: Arc<AtomicBool>,
) -> Option<String> {
    let channel = tonic::transport::Channel::from_shared(daemon_url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut registry = pb::registry_service_client::RegistryServiceClient::new(channel.clone());
    let mut tasks = pb::task_service_client::TaskServiceClient::new(channel.clone());
    let agent = registry
        .register(pb::RegisterRequest {
            card: Some(common::card(&name, "a worker", &["work"])),
            ttl_seconds: 3600,
        })
        .await
        .unwrap()
        .into_inner()
        .agent_id;
    let mut claims = 0;
    while !stop.load(Ordering::Relaxed) {
        // The deadline only bounds how long a worker takes to notice `stop`: on a manual clock
        // a claim waits until the daemon gives up on its own, just before the deadline, or, if
        // this machine is slow to get there, until the deadline itself (then a task handed out
        // meanwhile goes back to PENDING, no retry counted).
        let answer = match claim_within(&mut tasks, &agent, Duration::from_secs(1)).await {
            Ok(answer) => answer,
            Err(status) if status.code() == Code::DeadlineExceeded => continue,
            Err(status) => panic!("ClaimTask: {status:?}"),
        };
        let Some(task) = answer.task else {
            continue; // nothing pending for now
        };
        claims += 1;
        if die_after == Some(claims) {
            return Some(task.id);
        }
        assert!(answer.lease.is_some(), "a claim carries its lease");
        tasks
            .complete_task(pb::CompleteTaskRequest {
                task_id: task.id.clone(),
                agent_id: agent.clone(),
                output: b"ok".to_vec(),
            })
            .await
            .unwrap();
        *completed.lock().await.entry(task.id).or_default() += 1;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_finish_a_thousand_tasks_and_a_worker_killed_mid_task_loses_none() {
    // A manual clock: no claim lease runs out because this machine is slow, only the one the
    // test lets run out by moving the clock.
    let daemon = Daemon::start(&["--clock=manual"]);
    let mut c = daemon.clients().await;
    let mut ids = Vec::new();
    for i in 0..1000 {
        ids.push(create(&mut c, &format!("t{i}"), &["work"], 2, 1).await.id);
    }
    let completed = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers: Vec<_> = [("w1", None), ("w2", None), ("w3-killed", Some(50))]
        .into_iter()
        .map(|(name, die_after)| {
            let completed = Arc::clone(&completed);
            tokio::spawn(worker(
                daemon.url(),
                name.into(),
                die_after,
                completed,
                Arc::clone(&stop),
            ))
        })
        .collect();
    let orphan = workers
        .pop()
        .unwrap()
        .await
        .unwrap()
        .expect("the killed worker held a task");
    let count = async || completed.lock().await.len();
    wait_until("every task but the orphan completed", async || match count().await {
        999 => Ok(()),
        n => Err(format!("{n} completed")),
    })
    .await;
    assert_eq!(get(&mut c, &orphan).await.status, pb::TaskStatus::Claimed as i32);
    // Past the orphan's claim lease (ttl 1 s): it fails and goes to a waiting worker.
    c.advance(Duration::from_millis(1001)).await;
    wait_until("the orphan completed", async || match count().await {
        1000 => Ok(()),
        n => Err(format!("{n} completed")),
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        assert_eq!(worker.await.expect("a worker ran to its end"), None);
    }
    let completed = completed.lock().await;
    assert_eq!(completed.len(), 1000, "every task completed");
    assert!(completed.values().all(|&n| n == 1), "no task completed twice");
    let all = list_all(&mut c, pb::TaskStatus::Unspecified).await;
    assert_eq!(all.len(), 1000, "none lost");
    assert!(all.iter().all(|t| t.status == pb::TaskStatus::Completed as i32));
    assert_eq!(
        all.iter().map(|t| &t.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>(),
        "creation order"
    );
    let retried: Vec<&pb::Task> = all.iter().filter(|t| t.retry_count > 0).collect();
    assert_eq!(retried.len(), 1, "exactly the killed worker's task was retried");
    assert_eq!(
        (retried[0].id.as_str(), retried[0].failure_reason.as_str()),
        (orphan.as_str(), "lease expired")
    );
}

#[tokio::test]
async fn a_claim_waits_for_a_task_and_an_empty_wait_answers_before_the_deadline() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let worker = c.register("w", &["web"], 60).await;
    let started = Instant::now();
    let empty = claim(&mut c, &worker, Duration::from_millis(800))
        .await
        .expect("an empty answer, not an error");
    assert!(empty.task.is_none() && empty.lease.is_none());
    // A lower bound only: a slow machine makes the wait longer, never shorter.
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited: {:?}",
        started.elapsed()
    );

    let mut waiting = c.tasks.clone();
    let agent = worker.clone();
    let claimer = tokio::spawn(async move { claim_within(&mut waiting, &agent, HANG_GUARD).await });
    daemon.wait_metric("agentkeeper_claims_waiting", 1.0).await;
    let other = create(&mut c, "gpu job", &["gpu"], 0, 30).await;
    let task = create(&mut c, "web job", &["web"], 0, 30).await;
    let answer = tokio::time::timeout(HANG_GUARD, claimer)
        .await
        .expect("answered")
        .unwrap()
        .unwrap();
    let (claimed, lease) = (answer.task.expect("the task"), answer.lease.expect("its lease"));
    assert_eq!(claimed.id, task.id);
    assert_eq!(claimed.status, pb::TaskStatus::Claimed as i32);
    assert_eq!(claimed.claimed_by_agent_id, worker);
    assert_eq!(claimed.input, b"input of web job");
    assert_eq!(
        (lease.task_id.as_str(), lease.holder_agent_id.as_str()),
        (task.id.as_str(), worker.as_str())
    );
    // The claim lease is a lease: renewable through LeaseService with its fencing token.
    let renewed = c
        .renew(&task.id, &worker, token_of(&lease), 30)
        .await
        .expect("renew the claim lease");
    assert_eq!(token_of(&renewed), token_of(&lease));
    assert_eq!(get(&mut c, &other.id).await.status, pb::TaskStatus::Pending as i32);
    // wait_ms 0: answer at once. No deadline, so a claim that waited at all would wait for
    // --claim-wait-max (24 h), far past the guard.
    let now = tokio::time::timeout(
        HANG_GUARD,
        c.tasks.claim_task(pb::ClaimTaskRequest {
            agent_id: worker,
            wait_ms: Some(0),
        }),
    )
    .await
    .expect("wait_ms 0 does not wait")
    .unwrap()
    .into_inner();
    assert!(now.task.is_none());
}

#[tokio::test]
async fn a_claimer_that_hangs_up_gets_no_task_and_the_task_stays_pending_without_a_retry() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let worker = c.register("w", &[], 60).await;
    let mut waiting = c.tasks.clone();
    let agent = worker.clone();
    let claimer = tokio::spawn(async move { claim_within(&mut waiting, &agent, HANG_GUARD).await });
    daemon.wait_metric("agentkeeper_claims_waiting", 1.0).await;
    claimer.abort();
    let _ = claimer.await;
    // The daemon notices the hang-up (its sweep finds the caller gone) before the task comes.
    // Were the task to come first, its claim could be answered into the very moment the stream
    // is reset, be lost on the wire unnoticed, and hold the task until its lease runs out (a
    // race left open: seen once on a loaded machine).
    daemon.wait_metric("agentkeeper_claims_waiting", 0.0).await;
    let task = create(&mut c, "job", &[], 0, 30).await;
    // The hang-up cancelled the waiting claim: the task stays PENDING, unclaimed, with no retry
    // counted.
    let now = wait_until("the task back to PENDING", async || {
        let now = get(&mut c, &task.id).await;
        if now.status == pb::TaskStatus::Pending as i32 {
            Ok(now)
        } else {
            Err(format!("the task is {:?}", now.status))
        }
    })
    .await;
    assert_eq!(now.retry_count, 0);
    assert!(now.claimed_by_agent_id.is_empty());
    // And it is there for the next claimer.
    let next = claim(&mut c, &worker, HANG_GUARD).await.unwrap();
    assert_eq!(next.task.expect("the task").id, task.id);
}

#[tokio::test]
async fn complete_and_fail_check_the_holder_and_retries_end_in_dead_with_events() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&["task."], 0).await;
    let worker = c.register("w", &[], 60).await;
    let stranger = c.register("s", &[], 60).await;
    let task = create(&mut c, "flaky", &[], 1, 30).await;
    let created = next_event(&mut stream, HANG_GUARD).await.expect("task.created");
    assert_eq!(created.topic, "task.created");
    assert_eq!(type_url(&created), "type.googleapis.com/agentkeeper.v1.Task");
    let payload: pb::Task = decode(&created);
    assert_eq!(payload.id, task.id);
    assert!(payload.input.is_empty(), "events carry no input bytes");

    claim(&mut c, &worker, HANG_GUARD).await.unwrap();
    let refused = c
        .tasks
        .complete_task(pb::CompleteTaskRequest {
            task_id: task.id.clone(),
            agent_id: stranger,
            output: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let fail = |reason: &str| pb::FailTaskRequest {
        task_id: task.id.clone(),
        agent_id: worker.clone(),
        reason: reason.into(),
    };
    c.tasks.fail_task(fail("first")).await.unwrap();
    let retried = get(&mut c, &task.id).await;
    assert_eq!(
        (retried.status, retried.retry_count),
        (pb::TaskStatus::Pending as i32, 1)
    );
    claim(&mut c, &worker, HANG_GUARD).await.unwrap();
    c.tasks.fail_task(fail("second")).await.unwrap();
    let dead = get(&mut c, &task.id).await;
    assert_eq!((dead.status, dead.retry_count), (pb::TaskStatus::Dead as i32, 2));
    assert_eq!(dead.failure_reason, "second");
    // Then one more task: its task.created comes right after these, so nothing else came between.
    create(&mut c, "marker", &[], 0, 30).await;
    assert_eq!(
        topics(&mut stream, 5).await,
        [
            "task.claimed",
            "task.failed",
            "task.claimed",
            "task.dead",
            "task.created"
        ]
    );
    let unknown = c
        .tasks
        .get_task(pb::GetTaskRequest {
            task_id: "f".repeat(32),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let bad_status = c
        .tasks
        .list_tasks(pb::ListTasksRequest {
            status: 99,
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn list_tasks_pages_through_every_task_in_creation_order() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(create(&mut c, &format!("t{i}"), &[], 0, 30).await.id);
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .tasks
            .list_tasks(pb::ListTasksRequest {
                status: pb::TaskStatus::Pending as i32,
                page_size: 10,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.tasks.len() <= 10);
        seen.extend(page.tasks.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn a_page_bigger_than_one_core_command_is_gathered_whole_and_within_its_bytes() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut ids = Vec::new();
    for i in 0..2500 {
        ids.push(create(&mut c, &format!("t{i}"), &[], 0, 300).await.id);
    }
    let list = |page_size: u32, page_token: String| pb::ListTasksRequest {
        status: pb::TaskStatus::Unspecified as i32,
        page_size,
        page_token,
    };
    // The core answers at most 1000 a command; the page asked for is gathered from three.
    let page = c
        .tasks
        .list_tasks(list(2400, String::new()))
        .await
        .unwrap()
        .into_inner();
    let shown: Vec<&String> = page.tasks.iter().map(|t| &t.id).collect();
    assert_eq!(shown, ids[..2400].iter().collect::<Vec<_>>());
    let rest = c
        .tasks
        .list_tasks(list(2400, page.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.tasks.len(), 100);
    assert!(rest.next_page_token.is_empty());
    // Big inputs: a page stops at 3 MiB of input past its first task, across slices too.
    let mut big = Vec::new();
    for i in 0..4 {
        let mut request = create_request(&format!("big{i}"), &[], 0, 300);
        request.input = vec![b'x'; 1024 * 1024];
        big.push(
            c.tasks
                .create_task(request)
                .await
                .unwrap()
                .into_inner()
                .task
                .unwrap()
                .id,
        );
    }
    let page = c.tasks.list_tasks(list(10_000, ids[2499].clone())).await;
    assert_eq!(
        page.unwrap_err().code(),
        Code::InvalidArgument,
        "a task id is not a page token"
    );
    let mut page_token = String::new();
    let mut sizes = Vec::new();
    loop {
        let page = c.tasks.list_tasks(list(10_000, page_token)).await.unwrap().into_inner();
        let input: usize = page.tasks.iter().map(|t| t.input.len()).sum();
        assert!(input <= 3 * 1024 * 1024, "{input} bytes of input in one page");
        sizes.push(page.tasks.len());
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    // The small tasks' inputs ("input of t123") and two 1 MiB ones fit 3 MiB; a third does not.
    assert_eq!(sizes, [2502, 2]);
}

#[tokio::test]
async fn tasks_their_states_and_retry_counts_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = format!("--data-dir={}", dir.path().display());
    let mut daemon = Daemon::start(&[&data_dir]);
    let mut c = daemon.clients().await;
    let worker = c.register("w", &[], 300).await;
    let done = create(&mut c, "done", &[], 0, 300).await;
    let retried = create(&mut c, "retried", &[], 3, 300).await;
    let held = create(&mut c, "held", &[], 0, 300).await;
    let pending = create(&mut c, "pending", &[], 0, 300).await;
    let first = claim(&mut c, &worker, HANG_GUARD).await.unwrap().task.unwrap();
    assert_eq!(first.id, done.id);
    c.tasks
        .complete_task(pb::CompleteTaskRequest {
            task_id: done.id.clone(),
            agent_id: worker.clone(),
            output: b"42".to_vec(),
        })
        .await
        .unwrap();
    claim(&mut c, &worker, HANG_GUARD).await.unwrap();
    c.tasks
        .fail_task(pb::FailTaskRequest {
            task_id: retried.id.clone(),
            agent_id: worker.clone(),
            reason: "try again".into(),
        })
        .await
        .unwrap();
    // The retried task is the oldest pending again, then the held one.
    assert_eq!(
        claim(&mut c, &worker, HANG_GUARD).await.unwrap().task.unwrap().id,
        retried.id
    );
    let answer = claim(&mut c, &worker, HANG_GUARD).await.unwrap();
    assert_eq!(answer.task.unwrap().id, held.id);
    let token = token_of(&answer.lease.unwrap());

    daemon.kill_9();
    drop(c);
    // On fresh ports: the new client needs no old address.
    let daemon = Daemon::start(&[&data_dir]);
    let mut c = daemon.clients().await;
    let done_now = get(&mut c, &done.id).await;
    assert_eq!(
        (done_now.status, done_now.output.as_slice()),
        (pb::TaskStatus::Completed as i32, &b"42"[..])
    );
    let retried_now = get(&mut c, &retried.id).await;
    assert_eq!(
        (
            retried_now.status,
            retried_now.retry_count,
            retried_now.failure_reason.as_str()
        ),
        (pb::TaskStatus::Claimed as i32, 1, "try again")
    );
    let held_now = get(&mut c, &held.id).await;
    assert_eq!(
        (held_now.status, held_now.claimed_by_agent_id.as_str()),
        (pb::TaskStatus::Claimed as i32, worker.as_str())
    );
    assert_eq!(get(&mut c, &pending.id).await.status, pb::TaskStatus::Pending as i32);
    // The claim lease came back with its token: the holder completes, a new lease gets a higher token.
    let renewed = c
        .renew(&held.id, &worker, token, 0)
        .await
        .expect("the claim lease survived");
    assert_eq!(token_of(&renewed), token);
    let next = claim(&mut c, &worker, HANG_GUARD).await.unwrap();
    assert_eq!(next.task.unwrap().id, pending.id);
    assert!(token_of(&next.lease.unwrap()) > token, "tokens never go back");
}
