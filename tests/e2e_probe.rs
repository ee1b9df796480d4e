//! `agentkeeper probe`, the container image's healthcheck: exit 0 while the daemon's `/readyz`
//! answers 200, 1 with the reason when it does not or nobody listens.

mod common;

use std::process::{Command, Output};

use common::Daemon;

fn probe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentkeeper"))
        .arg("probe")
        .args(args)
        .output()
        .expect("run agentkeeper probe")
}

#[test]
fn a_serving_daemon_passes_and_says_what_it_answered() {
    let mut daemon = Daemon::start(&[]);
    let addr = format!("127.0.0.1:{}", daemon.metrics_port);
    let output = probe(&[&addr]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.starts_with(&format!("{addr}/readyz HTTP/1.")), "{said}");
    assert!(said.trim_end().ends_with(" 200 OK: ready"), "{said}");
    let live = probe(&[&addr, "--path=/healthz"]);
    assert!(live.status.success());
    assert!(daemon.terminate().success());
}

#[test]
fn nobody_listening_fails_with_the_reason() {
    let (_held, port) = common::refusing_port();
    let output = probe(&[&format!("127.0.0.1:{port}")]);
    assert_eq!(output.status.code(), Some(1));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.starts_with(&format!("agentkeeper probe: not ready: 127.0.0.1:{port}: ")),
        "{said}"
    );
}

#[test]
fn a_path_that_is_not_200_fails_with_the_answer() {
    let mut daemon = Daemon::start(&[]);
    let addr = format!("127.0.0.1:{}", daemon.metrics_port);
    let output = probe(&[&addr, "--path=/no-such-page"]);
    assert_eq!(output.status.code(), Some(1));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains(" 404 "), "{said}");
    assert!(daemon.terminate().success());
}
