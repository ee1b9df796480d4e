//! End to end: the process: HTTP endpoints, ports and the HTTP-port-taken rule, graceful
//! shutdown, seeds, and the services that answer with fixed errors.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use agentkeeper::proto as pb;
use common::{Daemon, free_port};
use tonic::Code;

#[tokio::test]
async fn healthz_metrics_and_the_page_report_what_happened() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let a = c.register("a", &[], 30).await;
    c.register("b", &[], 30).await;
    c.acquire("k", &a, 30).await;
    assert_eq!(
        daemon.http_get("/healthz"),
        ("HTTP/1.1 200 OK".to_string(), "ok".to_string())
    );
    let (status, metrics) = daemon.http_get("/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for line in [
        "agentkeeper_agents_alive 2",
        "agentkeeper_leases_active 1",
        "agentkeeper_rpc_total{method=\"Register\"} 2",
        "agentkeeper_rpc_total{method=\"AcquireLease\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in:\n{metrics}");
    }
    let (_, page) = daemon.http_get("/");
    assert!(
        page.contains("<th>Agents alive or unreachable</th><td>2</td>"),
        "{page}"
    );
}

#[tokio::test]
async fn errors_are_counted_by_method_and_code() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let _ = c.agent("0123456789abcdef0123456789abcdef").await;
    let (_, metrics) = daemon.http_get("/metrics");
    assert!(
        metrics.contains("agentkeeper_rpc_errors_total{code=\"NotFound\",method=\"GetAgent\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_ends_watch_streams_with_unavailable_and_exits_zero() {
    let mut daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&[], 0).await;
    c.register("a", &[], 30).await;
    assert!(common::next_event(&mut stream, Duration::from_secs(5)).await.is_some());
    let _ = Command::new("kill").args(["-TERM", &daemon_pid(&daemon)]).status();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends");
    assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    let status = daemon
        .wait_exit(Duration::from_secs(7))
        .expect("the daemon exits within the grace period");
    assert!(status.success(), "exit status {status:?}\n{}", daemon.stderr());
}

use std::process::Command;

fn daemon_pid(daemon: &Daemon) -> String {
    daemon.pid().to_string()
}

#[tokio::test]
async fn a_second_daemon_without_metrics_addr_serves_grpc_when_the_http_port_is_taken() {
    // Hold the default HTTP port ourselves, so the rule is exercised whatever else runs here.
    let holder = TcpListener::bind("127.0.0.1:9090");
    let port = free_port();
    let daemon = Daemon::spawn(&[format!("--addr=127.0.0.1:{port}")], port, 0);
    let mut c = connect_with_retry(&daemon).await;
    c.register("side-by-side", &[], 30).await;
    if holder.is_ok() {
        assert!(daemon.stderr().contains("HTTP port unavailable"), "{}", daemon.stderr());
    }
}

async fn connect_with_retry(daemon: &Daemon) -> common::Clients {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", daemon.port)).is_ok() {
            return daemon.clients().await;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the daemon never served: {}", daemon.stderr());
}

#[test]
fn a_taken_grpc_port_exits_non_zero_naming_the_address() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let args = [
        format!("--addr=127.0.0.1:{port}"),
        format!("--metrics-addr=127.0.0.1:{}", free_port()),
    ];
    let mut daemon = Daemon::spawn(&args, port, 0);
    let status = daemon.wait_exit(Duration::from_secs(5)).expect("the daemon exits");
    assert!(!status.success());
    let stderr = daemon.stderr();
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port} for gRPC")),
        "{stderr}"
    );
}

#[test]
fn an_explicit_metrics_addr_that_is_taken_exits_non_zero() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let port = free_port();
    let args = [
        format!("--addr=127.0.0.1:{port}"),
        format!("--metrics-addr=127.0.0.1:{taken}"),
    ];
    let mut daemon = Daemon::spawn(&args, port, taken);
    let status = daemon.wait_exit(Duration::from_secs(5)).expect("the daemon exits");
    assert!(!status.success());
    assert!(daemon.stderr().contains("--metrics-addr"), "{}", daemon.stderr());
}

#[tokio::test]
async fn go_style_port_only_addresses_listen_on_every_interface() {
    let port = free_port();
    let daemon = Daemon::spawn(
        &[
            format!("--addr=:{port}"),
            format!("--metrics-addr=127.0.0.1:{}", free_port()),
        ],
        port,
        0,
    );
    let mut c = connect_with_retry(&daemon).await;
    c.register("anywhere", &[], 30).await;
}

#[tokio::test]
async fn the_same_seed_gives_the_same_agent_ids() {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let daemon = Daemon::start(&["--seed", "7"]);
        let mut c = daemon.clients().await;
        ids.push((c.register("a", &[], 30).await, c.register("b", &[], 30).await));
    }
    assert_eq!(ids[0], ids[1]);
    let daemon = Daemon::start(&["--seed", "8"]);
    let mut c = daemon.clients().await;
    assert_ne!(c.register("a", &[], 30).await, ids[0].0);
}

#[tokio::test]
async fn task_service_is_unimplemented_and_clock_service_refuses_on_the_real_clock() {
    let daemon = Daemon::start(&[]);
    let channel = daemon.channel().await;
    let mut tasks = pb::task_service_client::TaskServiceClient::new(channel.clone());
    let error = tasks
        .create_task(pb::CreateTaskRequest {
            r#type: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unimplemented);
    let mut clock = pb::clock_service_client::ClockServiceClient::new(channel);
    assert_eq!(
        clock.now(pb::NowRequest {}).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let advance = pb::AdvanceRequest {
        duration: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
    };
    assert_eq!(
        clock.advance(advance).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}

#[tokio::test]
async fn oversized_and_garbage_requests_fail_cleanly_and_the_daemon_keeps_serving() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let huge = common::card("big", &"d".repeat(6 * 1024 * 1024), &[]);
    let error = c
        .registry
        .register(pb::RegisterRequest {
            card: Some(huge),
            ttl_seconds: 10,
        })
        .await
        .unwrap_err();
    // tonic's decoder reports a message over the limit as OUT_OF_RANGE, naming both sizes.
    assert_eq!(error.code(), Code::OutOfRange, "{error:?}");
    assert!(error.message().contains("too large"), "{}", error.message());
    let mut garbage = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    std::io::Write::write_all(&mut garbage, b"GET / HTTP/1.0\r\n\r\n\x00\xff garbage").unwrap();
    drop(garbage);
    c.register("after", &[], 10).await;
}
