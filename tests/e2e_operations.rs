//! End to end: what an operator's tools see: the gRPC health service, server reflection (what
//! `grpcurl list` and `describe` use), `/readyz`, and the metrics.

mod common;

use agentkeeper::proto as pb;
use common::{Daemon, HANG_GUARD, wait_until, wait_until_blocking};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const OUR_SERVICES: [&str; 7] = [
    "agentkeeper.v1.RegistryService",
    "agentkeeper.v1.LeaseService",
    "agentkeeper.v1.ElectionService",
    "agentkeeper.v1.EntitlementsService",
    "agentkeeper.v1.TaskService",
    "agentkeeper.v1.ClockService",
    "agentkeeper.v1.ClusterService",
];

mod reflection_v1 {
    pub use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    pub use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    pub use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    pub use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
}

/// One reflection request over the v1 service; returns its answer.
async fn reflect(daemon: &Daemon, request: reflection_v1::MessageRequest) -> reflection_v1::MessageResponse {
    use reflection_v1::*;
    let mut client = ServerReflectionClient::new(daemon.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection stream")
        .into_inner();
    let answer: ServerReflectionResponse = answers.message().await.expect("an answer").expect("one message");
    answer.message_response.expect("a response")
}

fn file_names(response: reflection_v1::MessageResponse) -> Vec<String> {
    use prost::Message;
    let reflection_v1::MessageResponse::FileDescriptorResponse(files) = response else {
        panic!("not a file descriptor response: {response:?}");
    };
    files
        .file_descriptor_proto
        .iter()
        .map(|bytes| {
            prost_types::FileDescriptorProto::decode(bytes.as_slice())
                .unwrap()
                .name()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn reflection_v1_lists_every_service_and_describes_ours_with_their_imports() {
    let daemon = Daemon::start(&[]);
    let reflection_v1::MessageResponse::ListServicesResponse(list) =
        reflect(&daemon, reflection_v1::MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    let mut expected: Vec<String> = OUR_SERVICES.iter().map(|s| s.to_string()).collect();
    expected.push("grpc.health.v1.Health".into());
    expected.push("grpc.reflection.v1.ServerReflection".into());
    expected.sort();
    assert_eq!(names, expected);

    // `grpcurl describe` asks for the file declaring a symbol, then for each import by name.
    let files = file_names(
        reflect(
            &daemon,
            reflection_v1::MessageRequest::FileContainingSymbol("agentkeeper.v1.RegistryService".into()),
        )
        .await,
    );
    assert!(
        files.contains(&"agentkeeper/v1/agentkeeper.proto".to_string()),
        "{files:?}"
    );
    for import in ["google/protobuf/timestamp.proto", "google/protobuf/any.proto"] {
        let files = file_names(reflect(&daemon, reflection_v1::MessageRequest::FileByFilename(import.into())).await);
        assert_eq!(files, [import]);
    }
}

#[tokio::test]
async fn reflection_v1alpha_lists_our_services_too() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let daemon = Daemon::start(&[]);
    let mut client = ServerReflectionClient::new(daemon.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in OUR_SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(names.iter().any(|n| n == service), "{service} missing from {names:?}");
    }
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service_and_not_found_for_others() {
    let daemon = Daemon::start(&[]);
    let mut health = HealthClient::new(daemon.channel().await);
    for service in std::iter::once("").chain(OUR_SERVICES) {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{service:?}: {e:?}"))
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
    }
    let error = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
}

#[tokio::test]
async fn a_health_watch_sees_not_serving_when_shutdown_begins_then_ends_and_does_not_delay_the_exit() {
    let mut daemon = Daemon::start(&[]);
    let mut health = HealthClient::new(daemon.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "agentkeeper.v1.TaskService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("the current status");
    assert_eq!(first.status(), ServingStatus::Serving);
    daemon.sigterm();
    let next = tokio::time::timeout(HANG_GUARD, watch.message())
        .await
        .expect("a status")
        .expect("a status, not an error")
        .expect("a status, not the end");
    assert_eq!(next.status(), ServingStatus::NotServing);
    let end = tokio::time::timeout(HANG_GUARD, watch.message())
        .await
        .expect("the end")
        .unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    let status = daemon.exited().await;
    assert_eq!(status.code(), Some(0), "{}", daemon.stderr());
    // A health watch left open would hold the connection, and so the shutdown, until its grace
    // ran out; the daemon says so when that happens.
    assert!(
        !daemon.shutdown_ran_out_of_grace(),
        "a health watcher held the shutdown up:\n{}",
        daemon.stderr()
    );
}

#[tokio::test]
async fn readyz_is_200_ready_once_grpc_answers() {
    let daemon = Daemon::start(&[]);
    let (status, body) = daemon.http_get("/readyz");
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ready"));
}

#[tokio::test]
async fn readyz_is_503_shutting_down_while_a_stream_that_cannot_drain_holds_the_shutdown_open() {
    let mut daemon = Daemon::start(&[]);
    // A watcher that never reads, on a connection with a 16 KiB window: once ~1 MiB of events is
    // queued for it, its stream cannot finish, so the shutdown waits (up to its 5 s grace).
    let slow = daemon.narrow_clients().await.watch(&[], 0).await;
    let mut c = daemon.clients().await;
    let description = "d".repeat(8 * 1024);
    for i in 0..128 {
        let card = common::card(&format!("agent-{i}"), &description, &[]);
        c.registry
            .register(pb::RegisterRequest {
                card: Some(card),
                ttl_seconds: 30,
            })
            .await
            .unwrap();
    }
    daemon.sigterm();
    wait_until("/readyz to say shutting down", async || {
        let (status, body) = daemon.http_get("/readyz");
        if status == "HTTP/1.1 503 Service Unavailable" {
            assert_eq!(body, "shutting down");
            return Ok(());
        }
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ready"));
        Err("still ready".to_string())
    })
    .await;
    assert!(
        !daemon.ready_path().exists(),
        "the ready file goes when /readyz turns 503"
    );
    assert_eq!(daemon.http_get("/healthz").1, "ok", "alive while draining");
    assert!(daemon.is_running(), "the held stream keeps the shutdown open");
    drop(slow);
    let status = daemon.exited().await;
    assert_eq!(status.code(), Some(0), "{}", daemon.stderr());
}

/// Writes a data dir whose log holds `agents` registrations, as a daemon would have.
fn data_dir_with_registrations(dir: &std::path::Path, agents: usize) {
    use agentkeeper::core::Command;
    use agentkeeper::core::entry::Entry;
    use agentkeeper::core::types::AgentCard;
    use agentkeeper::store::wal::encode_record;
    let now = 1_700_000_000_000;
    let (mut store, _) = agentkeeper::store::Store::open(dir, 1, now).unwrap();
    let mut bytes = Vec::new();
    for i in 0..agents {
        let card = AgentCard {
            name: format!("agent-{i}"),
            description: "replayed at start-up".into(),
            tools: vec!["t".into()],
            ..AgentCard::default()
        };
        let command = Command::Register {
            card: Box::new(card),
            ttl_seconds: 86_400,
            vector: None,
        };
        encode_record(
            &Entry::Apply {
                now,
                command,
                principal: None,
            },
            &mut bytes,
        );
    }
    store.append(&bytes).unwrap();
}

#[test]
fn readyz_is_503_starting_while_a_large_data_dir_is_replayed_then_200_ready_with_the_ready_file() {
    let dir = tempfile::tempdir().unwrap();
    // About 2 s of replay in a debug build (seconds more on a busy machine): plenty of 503s.
    data_dir_with_registrations(dir.path(), 10_000);
    let files = tempfile::tempdir().unwrap();
    let ready_file = files.path().join("ready.json");
    // Left by an earlier run that was killed: the daemon must not let anyone take it for its own.
    std::fs::write(&ready_file, r#"{"grpc":"127.0.0.1:1","http":null,"pid":1}"#).unwrap();
    let args = [
        "--addr=127.0.0.1:0".to_string(),
        "--metrics-addr=127.0.0.1:0".to_string(),
        format!("--data-dir={}", dir.path().display()),
        format!("--ready-file={}", ready_file.display()),
    ];
    let mut daemon = Daemon::spawn(&args);
    // The HTTP port answers during the replay: the log line names it before the ready file can.
    daemon.wait_bound();
    let mut seen: Vec<(String, String, bool)> = Vec::new();
    wait_until_blocking("/readyz to say ready", || {
        assert!(daemon.is_running(), "{}", daemon.stderr());
        // The file is looked at before /readyz: if it is there, /readyz must be 200 already.
        let file = ready_file.exists();
        let (status, body) = daemon.http_get("/readyz");
        let now = (status, body, file);
        let ready = now.0 == "HTTP/1.1 200 OK";
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        if ready { Ok(()) } else { Err(format!("{seen:?}")) }
    });
    let seen: Vec<(&str, &str, bool)> = seen.iter().map(|(s, b, f)| (s.as_str(), b.as_str(), *f)).collect();
    // Starting, with no ready file (the stale one is gone, the new one not yet there), then ready.
    // The file may miss the first 200 (it is written just after SERVING), never come before it.
    assert_eq!(seen.len(), 2, "{seen:?}; stderr:\n{}", daemon.stderr());
    assert_eq!(seen[0], ("HTTP/1.1 503 Service Unavailable", "starting", false));
    assert_eq!((seen[1].0, seen[1].1), ("HTTP/1.1 200 OK", "ready"));
    assert!(
        daemon.stderr().contains("recovered state from the data dir"),
        "{}",
        daemon.stderr()
    );
    let ready = daemon.wait_serving();
    assert_eq!(ready.pid, daemon.pid(), "this run's ready file, not the stale one");
}

/// /metrics, parsed by a Prometheus text parser.
fn scrape(daemon: &Daemon) -> prometheus_parse::Scrape {
    let (status, text) = daemon.http_get("/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text")
}

/// The value of a counter or gauge sample, or a histogram's count, with exactly these labels.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) && s.labels.len() == labels.len())
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            Value::Summary(_) => panic!("{name} is a summary"),
        })
}

/// Scrapes until `check` passes (a scrape right after a reply normally has it already).
async fn await_scrape(daemon: &Daemon, check: impl Fn(&prometheus_parse::Scrape) -> Result<(), String>) {
    wait_until("the metrics", async || check(&scrape(daemon))).await
}

fn expect(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)], want: f64) -> Result<(), String> {
    match sample(scrape, name, labels) {
        Some(got) if got == want => Ok(()),
        got => Err(format!("{name}{labels:?}: {got:?}, expected {want}")),
    }
}

const TOPICS: [&str; 14] = [
    "agent.registered",
    "agent.unreachable",
    "agent.recovered",
    "agent.died",
    "lease.acquired",
    "lease.renewed",
    "lease.expired",
    "lease.released",
    "leader.changed",
    "task.created",
    "task.claimed",
    "task.completed",
    "task.failed",
    "task.dead",
];

#[tokio::test]
async fn metrics_count_events_by_topic_time_calls_by_method_and_show_the_core_queue() {
    let daemon = Daemon::start(&["--clock=manual"]);
    let before = scrape(&daemon);
    for topic in TOPICS {
        expect(&before, "agentkeeper_events_by_topic_total", &[("topic", topic)], 0.0).unwrap();
    }
    let mut c = daemon.clients().await;
    let a = c.register("a", &["t"], 10).await;
    let b = c.register("b", &[], 10).await;
    let gone = c.register("c", &[], 10).await;
    c.acquire("short", &a, 5).await;
    c.acquire("long", &b, 60).await;
    c.deregister(&gone).await.unwrap();
    c.campaign("g", &a).await;
    c.find("", &[], 0).await;
    c.find("", &["t"], 0).await;
    let _ = c.agent(common::UNKNOWN_ID).await;
    let mut clock = pb::clock_service_client::ClockServiceClient::new(daemon.channel().await);
    let advance = pb::AdvanceRequest {
        duration: Some(prost_types::Duration { seconds: 6, nanos: 0 }),
    };
    clock.advance(advance).await.unwrap(); // "short" expires; no agent misses its 10 s ttl

    let mut events: Vec<(&str, f64)> = TOPICS.iter().map(|t| (*t, 0.0)).collect();
    for (topic, count) in [
        ("agent.registered", 3.0),
        ("agent.died", 1.0),
        ("lease.acquired", 2.0),
        ("lease.expired", 1.0),
        ("leader.changed", 1.0),
    ] {
        events.iter_mut().find(|(t, _)| *t == topic).unwrap().1 = count;
    }
    let calls = [
        ("Register", 3.0),
        ("AcquireLease", 2.0),
        ("Deregister", 1.0),
        ("Campaign", 1.0),
        ("Find", 2.0),
        ("GetAgent", 1.0),
        ("Advance", 1.0),
    ];
    await_scrape(&daemon, |s| {
        for (topic, count) in &events {
            expect(s, "agentkeeper_events_by_topic_total", &[("topic", topic)], *count)?;
        }
        for (method, count) in calls {
            expect(
                s,
                "agentkeeper_rpc_duration_seconds_count",
                &[("method", method)],
                count,
            )?;
            expect(s, "agentkeeper_rpc_total", &[("method", method)], count)?;
        }
        expect(s, "agentkeeper_events_total", &[], 8.0)?;
        expect(s, "agentkeeper_election_groups", &[], 1.0)?;
        expect(s, "agentkeeper_core_queue_depth", &[], 0.0)?;
        Ok(())
    })
    .await;
    let s = scrape(&daemon);
    let sum = sample(&s, "agentkeeper_rpc_duration_seconds_sum", &[("method", "Register")]).unwrap();
    assert!(sum > 0.0 && sum < 10.0, "three Register calls took {sum} s in all");
    assert_eq!(
        sample(&s, "agentkeeper_rpc_duration_seconds", &[("method", "Register")]),
        Some(3.0),
        "the histogram's +Inf bucket"
    );
    assert_eq!(
        sample(
            &s,
            "agentkeeper_rpc_duration_seconds_count",
            &[("method", "NoSuchMethod")]
        ),
        None
    );
}

#[tokio::test]
async fn core_spin_finds_a_clients_next_call_awake_and_zero_never_spins() {
    let spinning = Daemon::start(&["--core-spin=50ms"]);
    let mut c = spinning.clients().await;
    // Each call is sent as soon as the last was answered: well inside a 50 ms window.
    for _ in 0..20 {
        c.find("", &[], 0).await;
    }
    let s = scrape(&spinning);
    let found = sample(&s, "agentkeeper_core_waits_total", &[("result", "found")]).unwrap_or(0.0);
    assert!(
        found >= 10.0,
        "of 20 back-to-back calls only {found} found the core spinning"
    );

    let sleeping = Daemon::start(&["--core-spin=0"]);
    let mut c = sleeping.clients().await;
    for _ in 0..20 {
        c.find("", &[], 0).await;
    }
    // The core counts how it waits once it starts waiting, after it has answered: the 20th
    // call's wait may not be counted yet when its answer arrives here.
    let s = wait_until("every one of 20 calls to leave the core asleep at once", async || {
        let s = scrape(&sleeping);
        match sample(&s, "agentkeeper_core_waits_total", &[("result", "slept")]).unwrap_or(0.0) {
            slept if slept >= 20.0 => Ok(s),
            slept => Err(format!("counted {slept}")),
        }
    })
    .await;
    for result in ["found", "missed"] {
        assert_eq!(
            sample(&s, "agentkeeper_core_waits_total", &[("result", result)]).unwrap_or(0.0),
            0.0,
            "--core-spin=0 never spins, so no wait ends {result}"
        );
    }
}

#[tokio::test]
async fn events_by_topic_count_this_process_only_not_the_events_replayed_from_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = format!("--data-dir={}", dir.path().display());
    let mut first = Daemon::start(&[&data_dir]);
    let mut c = first.clients().await;
    c.register("a", &[], 30).await;
    c.register("b", &[], 30).await;
    await_scrape(&first, |s| {
        expect(
            s,
            "agentkeeper_events_by_topic_total",
            &[("topic", "agent.registered")],
            2.0,
        )
    })
    .await;
    drop(c);
    first.sigterm();
    let exit = first.exited().await.code();
    assert_eq!(exit, Some(0), "{}", first.stderr());
    let second = Daemon::start(&[&data_dir]);
    let mut c = second.clients().await;
    c.register("c", &[], 30).await;
    await_scrape(&second, |s| {
        expect(
            s,
            "agentkeeper_events_by_topic_total",
            &[("topic", "agent.registered")],
            1.0,
        )?;
        expect(s, "agentkeeper_events_total", &[], 3.0) // the sequence goes on
    })
    .await;
}
