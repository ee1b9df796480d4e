//! End to end: the process: HTTP endpoints, ports (port 0, the ready file, the HTTP-port-taken
//! rule), graceful shutdown, flags, seeds, and the services that answer with fixed errors.

mod common;

use std::net::TcpListener;
use std::process::Command;

use agentkeeper::proto as pb;
use common::{Daemon, HANG_GUARD, Ready, http_get_full, stream_end, token_of, wait_until};
use tonic::Code;

/// Polls /metrics until every line in `lines` is present (gauges may trail a reply briefly).
async fn await_metrics(daemon: &Daemon, lines: &[&str]) -> String {
    wait_until("the metrics", async || {
        let (status, metrics) = daemon.http_get("/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let missing: Vec<&&str> = lines
            .iter()
            .filter(|line| !metrics.lines().any(|l| l == **line))
            .collect();
        if missing.is_empty() {
            Ok(metrics)
        } else {
            Err(format!("missing {missing:?} in:\n{metrics}"))
        }
    })
    .await
}

/// The non-empty lines of a daemon's stderr.
fn stderr_lines(daemon: &Daemon) -> Vec<String> {
    daemon
        .stderr()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn port_0_serves_on_the_ports_the_ready_file_and_the_log_line_name_and_the_file_goes_at_exit() {
    let mut daemon = Daemon::spawn(&["--addr=127.0.0.1:0".into(), "--metrics-addr=127.0.0.1:0".into()]);
    let ready = daemon.wait_serving();
    assert_eq!(ready.pid, daemon.pid());
    assert!(ready.grpc.ip().is_loopback() && ready.grpc.port() != 0, "{ready:?}");
    let http = ready.http.expect("an HTTP address");
    assert!(http.port() != 0 && http.port() != ready.grpc.port(), "{ready:?}");
    // The file is the JSON the README shows, nothing more.
    let text = std::fs::read_to_string(daemon.ready_path()).unwrap();
    let expected = format!(
        "{{\"grpc\":\"{}\",\"http\":\"{http}\",\"pid\":{}}}\n",
        ready.grpc, ready.pid
    );
    assert_eq!(text, expected);
    // The log line names the same addresses, in the form the README gives.
    let line = format!("ports bound grpc={} http={http}", ready.grpc);
    assert!(daemon.stderr().contains(&line), "{line:?} in:\n{}", daemon.stderr());
    // And the daemon serves there.
    let mut c = daemon.clients().await;
    c.register("on-port-0", &[], 30).await;
    assert_eq!(http_get_full(http.port(), "/readyz").2, "ready");
    drop(c);
    assert_eq!(daemon.terminate().code(), Some(0), "{}", daemon.stderr());
    assert!(
        !daemon.ready_path().exists(),
        "the ready file is removed at a graceful exit"
    );
}

#[test]
fn a_ready_file_that_cannot_be_written_exits_non_zero_with_one_line_naming_it() {
    let path = std::env::temp_dir().join("agentkeeper-no-such-dir/ready.json");
    let args = [
        "--addr=127.0.0.1:0".to_string(),
        "--metrics-addr=127.0.0.1:0".to_string(),
        format!("--ready-file={}", path.display()),
    ];
    let mut daemon = Daemon::spawn(&args);
    let status = daemon.wait_exit();
    assert!(!status.success(), "{status:?}");
    let lines = stderr_lines(&daemon);
    assert_eq!(lines.len(), 1, "one clear line: {lines:?}");
    assert!(
        lines[0].contains(&format!("--ready-file {}", path.display())),
        "{lines:?}"
    );
}

#[tokio::test]
async fn healthz_answers_ok() {
    let daemon = Daemon::start(&[]);
    let (status, _, body) = http_get_full(daemon.metrics_port, "/healthz");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "ok");
    let (status, _) = daemon.http_get("/no-such-page");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[tokio::test]
async fn metrics_report_agents_leases_and_calls_per_method() {
    let daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    await_metrics(&daemon, &["agentkeeper_agents_alive 0", "agentkeeper_leases_active 0"]).await;
    let a = c.register("a", &[], 30).await;
    c.register("b", &[], 30).await;
    let gone = c.register("c", &[], 30).await;
    c.deregister(&gone).await.unwrap();
    let (lease, _) = c.acquire("k1", &a, 30).await;
    c.acquire("k2", &a, 30).await;
    c.acquire("k3", &a, 30).await;
    c.release("k1", &a, token_of(&lease)).await.unwrap();
    let _ = c.agent(common::UNKNOWN_ID).await;
    let metrics = await_metrics(
        &daemon,
        &[
            "agentkeeper_agents_alive 2",
            "agentkeeper_leases_active 2",
            "agentkeeper_rpc_total{method=\"Register\"} 3",
            "agentkeeper_rpc_total{method=\"Deregister\"} 1",
            "agentkeeper_rpc_total{method=\"AcquireLease\"} 3",
            "agentkeeper_rpc_total{method=\"ReleaseLease\"} 1",
            "agentkeeper_rpc_errors_total{code=\"NotFound\",method=\"GetAgent\"} 1",
        ],
    )
    .await;
    assert!(
        metrics.contains("# TYPE agentkeeper_rpc_total counter"),
        "Prometheus text format:\n{metrics}"
    );
    let (_, headers, _) = http_get_full(daemon.metrics_port, "/metrics");
    assert!(
        headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("content-type: text/plain")),
        "{headers:?}"
    );
}

#[tokio::test]
async fn sigterm_ends_watch_streams_with_unavailable_and_exits_zero_without_waiting_out_the_grace() {
    let mut daemon = Daemon::start(&[]);
    let mut c = daemon.clients().await;
    let mut stream = c.watch(&[], 0).await;
    let mut election = c.watch_election("g").await;
    c.register("a", &[], 30).await;
    assert_eq!(common::topics(&mut stream, 1).await, ["agent.registered"]);
    assert_eq!(common::events(&mut election, 1).await[0].sequence_number, 0);
    daemon.sigterm();
    let (_, end) = stream_end(&mut stream, HANG_GUARD).await;
    assert_eq!(end.code(), Code::Unavailable, "Watch: {end:?}");
    let (_, end) = stream_end(&mut election, HANG_GUARD).await;
    assert_eq!(end.code(), Code::Unavailable, "WatchElection: {end:?}");
    let status = daemon.exited().await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}\n{}", daemon.stderr());
    // Ended streams let the connections drain: the shutdown never waited out its grace.
    assert!(!daemon.shutdown_ran_out_of_grace(), "{}", daemon.stderr());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", daemon.port)).is_err(),
        "the gRPC port is closed"
    );
}

#[tokio::test]
async fn sigterm_and_sigint_exit_zero_at_once_when_idle() {
    for signal in ["-TERM", "-INT"] {
        let mut daemon = Daemon::start(&[]);
        let mut c = daemon.clients().await;
        c.register("a", &[], 30).await;
        let _ = Command::new("kill").args([signal, &daemon.pid().to_string()]).status();
        let status = daemon.exited().await;
        assert_eq!(status.code(), Some(0), "{signal}: {status:?}\n{}", daemon.stderr());
        // "At once" is not a stopwatch reading (a loaded machine is slow at everything): an idle
        // daemon's shutdown has nothing to wait for, so it must never wait out its grace.
        assert!(
            !daemon.shutdown_ran_out_of_grace(),
            "{signal}: an idle daemon waited for calls:\n{}",
            daemon.stderr()
        );
    }
}

#[tokio::test]
async fn a_second_daemon_without_metrics_addr_serves_grpc_when_the_default_http_port_is_taken() {
    // Hold the default HTTP port ourselves (if something else holds it, it is taken all the same).
    let holder = TcpListener::bind("127.0.0.1:9090");
    if let Err(error) = &holder {
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
    }
    let first = Daemon::start(&[]);
    let mut second = Daemon::spawn(&["--addr=127.0.0.1:0".to_string()]);
    let ready = second.wait_serving();
    assert_eq!(ready.http, None, "the ready file says there is no HTTP port");
    let mut c1 = first.clients().await;
    let mut c2 = second.clients().await;
    let id1 = c1.register("first", &[], 30).await;
    let id2 = c2.register("second", &[], 30).await;
    assert_eq!(c1.find("", &[], 0).await, ["first"], "separate daemons, separate state");
    assert_eq!(c2.find("", &[], 0).await, ["second"]);
    assert_eq!(c2.agent(&id1).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(c1.agent(&id2).await.unwrap_err().code(), Code::NotFound);
    assert!(second.is_running());
    assert!(
        second.stderr().contains("HTTP port unavailable"),
        "the daemon warns:\n{}",
        second.stderr()
    );
    assert_eq!(first.http_get("/healthz").1, "ok", "the first keeps its HTTP port");
    drop(holder);
}

#[test]
fn a_taken_grpc_port_exits_non_zero_with_one_line_naming_the_address() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let args = [
        format!("--addr=127.0.0.1:{port}"),
        "--metrics-addr=127.0.0.1:0".to_string(),
    ];
    let mut daemon = Daemon::spawn(&args);
    let status = daemon.wait_exit();
    assert!(!status.success(), "{status:?}");
    let lines = stderr_lines(&daemon);
    assert_eq!(lines.len(), 1, "one clear line: {lines:?}");
    assert!(lines[0].contains(&format!("127.0.0.1:{port}")), "{lines:?}");
    assert!(lines[0].contains("gRPC"), "{lines:?}");
}

#[test]
fn an_explicit_metrics_addr_that_is_taken_exits_non_zero_with_one_line() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let args = [
        "--addr=127.0.0.1:0".to_string(),
        format!("--metrics-addr=127.0.0.1:{taken}"),
    ];
    let mut daemon = Daemon::spawn(&args);
    let status = daemon.wait_exit();
    assert!(!status.success(), "{status:?}");
    let lines = stderr_lines(&daemon);
    assert_eq!(lines.len(), 1, "one clear line: {lines:?}");
    assert!(lines[0].contains(&format!("127.0.0.1:{taken}")), "{lines:?}");
    assert!(lines[0].contains("--metrics-addr"), "{lines:?}");
}

#[tokio::test]
async fn a_go_style_port_only_addr_listens_on_every_interface() {
    let args = ["--addr", ":0", "--metrics-addr", ":0"].map(String::from);
    let mut daemon = Daemon::spawn(&args);
    let Ready { grpc, http, .. } = daemon.wait_serving();
    assert!(grpc.ip().is_unspecified(), "{grpc}");
    assert!(http.is_some_and(|http| http.ip().is_unspecified()), "{http:?}");
    let port = daemon.port;
    let mut c = daemon.clients().await;
    c.register("anywhere", &[], 30).await;
    assert_eq!(daemon.http_get("/healthz").1, "ok");
    // Listening on 0.0.0.0 also means 127.0.0.2 (another loopback address) reaches it.
    assert!(
        std::net::TcpStream::connect(("127.0.0.2", port)).is_ok(),
        "not bound to 0.0.0.0"
    );
}

#[tokio::test]
async fn the_same_seed_gives_the_same_agent_ids() {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let daemon = Daemon::start(&["--seed", "7"]);
        let mut c = daemon.clients().await;
        ids.push((c.register("a", &[], 30).await, c.register("b", &[], 30).await));
    }
    assert_eq!(ids[0], ids[1], "--seed 7 twice: the same ids");
    assert_ne!(ids[0].0, ids[0].1);
    let daemon = Daemon::start(&["--seed", "8"]);
    let mut c = daemon.clients().await;
    assert_ne!(c.register("a", &[], 30).await, ids[0].0, "another seed, other ids");
    let unseeded = Daemon::start(&[]);
    let mut c = unseeded.clients().await;
    assert_ne!(c.register("a", &[], 30).await, ids[0].0);
}

#[tokio::test]
async fn clock_service_refuses_on_the_real_clock() {
    let daemon = Daemon::start(&[]);
    let mut clock = pb::clock_service_client::ClockServiceClient::new(daemon.channel().await);
    let error = clock.now(pb::NowRequest {}).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    let advance = pb::AdvanceRequest {
        duration: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
    };
    let error = clock.advance(advance).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
}

#[tokio::test]
async fn the_other_flags_are_accepted_and_json_logs_are_json() {
    let mut daemon = Daemon::start(&[
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "--net-threads",
        "2",
        "--core-queue-max",
        "64",
    ]);
    let mut c = daemon.clients().await;
    c.register("a", &[], 30).await;
    drop(c);
    // Read the log once the daemon has exited: while it runs (debug logging from the net
    // threads), a read can end in the middle of a line being written. Its own runtime keeps
    // this test's client connection answering the daemon's GOAWAY meanwhile.
    daemon.sigterm();
    assert!(daemon.exited().await.success());
    let lines = stderr_lines(&daemon);
    assert!(!lines.is_empty(), "the daemon logs its start");
    for line in &lines {
        assert!(line.starts_with('{') && line.ends_with('}'), "not a JSON line: {line}");
    }
}

#[test]
fn bad_flags_exit_non_zero() {
    for args in [
        &["--addr", "not-an-address"][..],
        &["--log-format", "xml"][..],
        &["--dead-retention", "soon"][..],
        &["--no-such-flag"][..],
    ] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut daemon = Daemon::spawn(&args);
        let status = daemon.wait_exit();
        assert!(!status.success(), "{args:?}: {status:?}");
        assert!(!daemon.stderr().is_empty(), "{args:?}: says why");
    }
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
    // A message over --message-bytes-max is RESOURCE_EXHAUSTED naming the limit and the size.
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
    assert!(
        error.message().starts_with("limit message_bytes_max (4259840) reached"),
        "{}",
        error.message()
    );
    let mut garbage = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    std::io::Write::write_all(&mut garbage, b"GET / HTTP/1.0\r\n\r\n\x00\xff garbage").unwrap();
    drop(garbage);
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    std::io::Write::write_all(
        &mut raw,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    )
    .unwrap();
    drop(raw);
    let mut c = daemon.clients().await;
    c.register("after", &[], 10).await;
    assert_eq!(daemon.http_get("/healthz").1, "ok");
}

#[tokio::test]
async fn auto_io_falls_back_to_epoll_with_one_line_when_io_uring_is_refused() {
    let daemon = Daemon::start_env(&["--io=auto"], &[("AGENTKEEPER_IO_URING_PROBE", "fail")]);
    let mut c = daemon.clients().await;
    c.register("served-on-epoll", &[], 30).await;
    let stderr = daemon.stderr();
    let fallback: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("io_uring is not available"))
        .collect();
    assert_eq!(fallback.len(), 1, "one line says why:\n{stderr}");
    assert!(
        fallback[0].contains("AGENTKEEPER_IO_URING_PROBE=fail"),
        "{}",
        fallback[0]
    );
    assert!(stderr.contains(r#"io="epoll""#), "{stderr}");
}

#[test]
fn io_uring_asked_for_but_refused_exits_non_zero_with_a_clear_error() {
    let args = ["--addr=127.0.0.1:0", "--metrics-addr=127.0.0.1:0", "--io=uring"].map(String::from);
    let mut daemon = Daemon::spawn_env(&args, &[("AGENTKEEPER_IO_URING_PROBE", "fail")]);
    let status = daemon.wait_exit();
    assert!(!status.success());
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("--io uring: io_uring is not available here"),
        "{stderr}"
    );
}

#[tokio::test]
async fn both_transports_serve_the_same_api_and_say_which_one_they_use() {
    for (io, shown) in [("uring", r#"io="io_uring""#), ("epoll", r#"io="epoll""#)] {
        let daemon = Daemon::start(&[&format!("--io={io}"), "--net-threads=2"]);
        let mut c = daemon.clients().await;
        let id = c.register(&format!("on-{io}"), &["t"], 30).await;
        assert_eq!(c.find("", &["t"], 10).await, [format!("on-{io}")]);
        assert_eq!(c.status(&id).await, pb::AgentStatus::Alive);
        assert!(daemon.stderr().contains(shown), "{}", daemon.stderr());
    }
}

#[tokio::test]
async fn a_second_daemon_on_a_taken_grpc_port_fails_whatever_the_transport() {
    let first = Daemon::start(&["--io=uring"]);
    for io in ["uring", "epoll"] {
        // The first daemon's port, on purpose: it holds it for the whole test.
        let args = [
            format!("--addr=127.0.0.1:{}", first.port),
            "--metrics-addr=127.0.0.1:0".to_string(),
            format!("--io={io}"),
        ];
        let mut second = Daemon::spawn(&args);
        let status = second.wait_exit();
        assert!(!status.success(), "{io}: {}", second.stderr());
        assert!(second.stderr().contains("cannot listen on"), "{}", second.stderr());
    }
}
