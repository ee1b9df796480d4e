//! End to end: gRPC on a Unix domain socket (`--uds PATH`): served beside TCP or instead of it
//! (`--uds-only`), the file's mode set by `--uds-mode`, `ctl --endpoint unix:PATH`, a stale
//! socket file replaced at start-up but a live one or a plain file refused with one clear
//! line, and the file removed at a graceful exit; on io_uring's net threads, and on epoll where
//! io_uring is off.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use agentkeeper::proto as pb;
use common::{Clients, Daemon, wait_until_blocking};
use tonic::transport::Endpoint;

/// Clients over the daemon's Unix socket at `path`.
async fn clients_at(path: &Path) -> Clients {
    let channel = agentkeeper::server::uds::connect(Endpoint::from_static("http://localhost"), path)
        .await
        .expect("connects over the socket");
    Clients::over(channel)
}

fn ctl(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_agentkeeper"))
        .args(["ctl", "--endpoint", endpoint])
        .args(args)
        .output()
        .expect("runs ctl");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8");
    (output.status.success(), text(output.stdout), text(output.stderr))
}

#[tokio::test]
async fn the_socket_serves_beside_tcp_with_its_mode_ctl_reaches_it_and_it_goes_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agentkeeper.sock");
    let uds = format!("--uds={}", socket.display());
    let mut daemon = Daemon::start(&[&uds, "--uds-mode=0660"]);
    let ready = std::fs::read_to_string(daemon.ready_path()).unwrap();
    assert!(ready.contains(&format!("\"uds\":\"{}\"", socket.display())), "{ready}");
    let metadata = std::fs::metadata(&socket).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o660);

    let mut over_socket = clients_at(&socket).await;
    let agent = over_socket.register("sidecar", &["tool"], 30).await;
    let mut over_tcp = daemon.clients().await;
    assert_eq!(
        over_tcp.status(&agent).await,
        pb::AgentStatus::Alive,
        "one daemon behind both"
    );

    // The socket is served by the same transport as TCP: the io_uring net threads, or epoll.
    let transport = match std::env::var("AGENTKEEPER_TEST_IO").as_deref() {
        Ok("uring") => Some("io=\"io_uring\""),
        Ok("epoll") => Some("io=\"epoll\""),
        _ => None,
    };
    let stderr = daemon.stderr();
    let socket_line = (stderr.lines())
        .find(|line| line.contains("gRPC listening on the Unix socket"))
        .unwrap_or_else(|| panic!("the socket's serving is logged: {stderr}"));
    if let Some(transport) = transport {
        assert!(socket_line.contains(transport), "{socket_line}");
    }

    let (ok, out, err) = ctl(&format!("unix:{}", socket.display()), &["agents"]);
    assert!(ok, "{err}");
    assert!(out.contains("sidecar") && out.contains(&agent), "{out}");

    drop((over_socket, over_tcp));
    assert_eq!(daemon.terminate().code(), Some(0), "{}", daemon.stderr());
    assert!(!socket.exists(), "the socket file is removed at a graceful exit");
}

#[tokio::test]
async fn uds_only_serves_no_tcp_and_the_ready_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("only.sock");
    let args = [
        format!("--uds={}", socket.display()),
        "--uds-only".to_string(),
        "--metrics-addr=127.0.0.1:0".to_string(),
    ];
    let daemon = Daemon::spawn(&args);
    let ready = wait_until_blocking("the ready file", || {
        std::fs::read_to_string(daemon.ready_path()).map_err(|e| e.to_string())
    });
    let value: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(value["grpc"], serde_json::Value::Null, "{ready}");
    assert_eq!(value["uds"], socket.display().to_string());
    assert!(
        !daemon.stderr().contains(":7070"),
        "no TCP listener for gRPC: {}",
        daemon.stderr()
    );
    let mut c = clients_at(&socket).await;
    let agent = c.register("only", &[], 30).await;
    assert_eq!(c.status(&agent).await, pb::AgentStatus::Alive);
}

#[test]
fn uds_only_with_an_addr_or_a_mode_without_uds_is_refused_by_the_flags() {
    for args in [
        vec!["--uds=/tmp/x.sock", "--uds-only", "--addr=127.0.0.1:0"],
        vec!["--uds-mode=0660"],
        vec!["--uds-only"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_agentkeeper"))
            .args(&args)
            .output()
            .expect("runs the daemon");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_but_a_live_one_or_a_plain_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stale.sock");
    // A socket file whose listener is gone, as a daemon killed with -9 leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let uds = format!("--uds={}", socket.display());
    let first = Daemon::start(&[&uds]);
    let mut c = clients_at(&socket).await;
    c.register("after-stale", &[], 30).await;

    // The first daemon still listens: a second one on the same path refuses to start.
    let mut second = Daemon::spawn(&[
        "--addr=127.0.0.1:0".to_string(),
        "--metrics-addr=127.0.0.1:0".to_string(),
        uds.clone(),
    ]);
    assert!(!second.wait_exit().success());
    let said = second.stderr();
    assert!(said.contains("is in use: another process listens on it"), "{said}");
    assert!(socket.exists(), "the live socket is left alone");
    c.register("still-served", &[], 30).await;
    drop(first);

    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"not a socket").unwrap();
    let mut third = Daemon::spawn(&[
        "--addr=127.0.0.1:0".to_string(),
        "--metrics-addr=127.0.0.1:0".to_string(),
        format!("--uds={}", plain.display()),
    ]);
    assert!(!third.wait_exit().success());
    assert!(
        third.stderr().contains("exists and is not a socket"),
        "{}",
        third.stderr()
    );
    assert_eq!(std::fs::read(&plain).unwrap(), b"not a socket");
}
