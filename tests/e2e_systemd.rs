//! The daemon under a service manager, as systemd sees it: a Unix datagram socket bound as
//! `$NOTIFY_SOCKET` receives its messages, in order: the recovery's STATUS, READY=1 once
//! `/readyz` answers 200, WATCHDOG=1 pings when `$WATCHDOG_USEC` asks for them, STOPPING=1 from
//! SIGTERM on.

mod common;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use common::{Daemon, HANG_GUARD, http_get};

/// A socket standing in for systemd's notify socket.
struct Supervisor {
    socket: UnixDatagram,
    /// The value of `$NOTIFY_SOCKET` that reaches `socket`.
    address: String,
    _dir: tempfile::TempDir,
}

impl Supervisor {
    /// Bound to a path, as systemd's `/run/systemd/notify`.
    fn at_path() -> Supervisor {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Self::ready(socket, path.display().to_string(), dir)
    }

    /// Bound to an abstract address, which `$NOTIFY_SOCKET` writes as `@name`.
    fn abstract_socket() -> Supervisor {
        let name = format!("agentkeeper-e2e-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("an abstract address");
        let socket = UnixDatagram::bind_addr(&addr).expect("bind the abstract notify socket");
        Self::ready(socket, format!("@{name}"), tempfile::tempdir().expect("a temp dir"))
    }

    fn ready(socket: UnixDatagram, address: String, dir: tempfile::TempDir) -> Supervisor {
        socket.set_read_timeout(Some(HANG_GUARD)).expect("set a read timeout");
        Supervisor {
            socket,
            address,
            _dir: dir,
        }
    }

    /// The next message; panics with the daemon's log if none comes within the hang guard.
    fn next(&self, daemon: &Daemon) -> String {
        let mut buffer = [0u8; 4096];
        match self.socket.recv(&mut buffer) {
            Ok(n) => String::from_utf8(buffer[..n].to_vec()).expect("a UTF-8 message"),
            Err(error) => panic!("no notify message: {error}; daemon stderr:\n{}", daemon.stderr()),
        }
    }

    /// The messages already waiting, without waiting for more.
    fn pending(&self) -> Vec<String> {
        self.socket.set_nonblocking(true).expect("nonblocking");
        let mut buffer = [0u8; 4096];
        let mut messages = Vec::new();
        while let Ok(n) = self.socket.recv(&mut buffer) {
            messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        self.socket.set_nonblocking(false).expect("blocking");
        messages
    }
}

fn daemon_args(extra: &[String]) -> Vec<String> {
    let mut args = vec![
        "--addr=127.0.0.1:0".to_string(),
        "--metrics-addr=127.0.0.1:0".to_string(),
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn status_then_ready_once_readyz_is_200_then_stopping_from_sigterm_on() {
    let supervisor = Supervisor::at_path();
    let data = tempfile::tempdir().expect("a data dir");
    let args = daemon_args(&[format!("--data-dir={}", data.path().display())]);
    let mut daemon = Daemon::spawn_env(&args, &[("NOTIFY_SOCKET", &supervisor.address)]);

    let recovering = supervisor.next(&daemon);
    assert_eq!(
        recovering,
        format!("STATUS=recovering the state in {}", data.path().display())
    );

    let ready = supervisor.next(&daemon);
    let ready_lines: Vec<&str> = ready.lines().collect();
    assert_eq!(ready_lines[0], "READY=1", "{ready:?}");
    assert!(
        ready_lines[1].starts_with("STATUS=serving gRPC on 127.0.0.1:")
            && ready_lines[1].contains(" and HTTP on 127.0.0.1:"),
        "{ready:?}"
    );
    // READY=1 is sent no earlier than /readyz turns 200: it is 200 the moment READY arrives.
    let served = daemon.wait_serving();
    let (status, body) = http_get(served.http.expect("HTTP").port(), "/readyz");
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ready"));
    assert_eq!(
        ready_lines[1],
        format!(
            "STATUS=serving gRPC on {} and HTTP on {}",
            served.grpc,
            served.http.unwrap()
        )
    );
    assert!(
        supervisor.pending().is_empty(),
        "no watchdog pings without WATCHDOG_USEC"
    );

    daemon.sigterm();
    let stopping = supervisor.next(&daemon);
    assert_eq!(
        stopping,
        "STOPPING=1\nSTATUS=shutting down: no new calls, finishing calls in flight"
    );
    assert!(daemon.wait_exit().success(), "{}", daemon.stderr());
    assert_eq!(
        supervisor.pending(),
        Vec::<String>::new(),
        "nothing after STOPPING on a clean exit"
    );
}

#[test]
fn watchdog_pings_follow_ready_on_an_abstract_socket_while_the_core_makes_progress() {
    let supervisor = Supervisor::abstract_socket();
    let args = daemon_args(&[]);
    // 200 ms: a ping every 100 ms.
    let env = [
        ("NOTIFY_SOCKET", supervisor.address.as_str()),
        ("WATCHDOG_USEC", "200000"),
    ];
    let mut daemon = Daemon::spawn_env(&args, &env);
    assert!(supervisor.next(&daemon).starts_with("READY=1\n"));
    for _ in 0..3 {
        assert_eq!(supervisor.next(&daemon), "WATCHDOG=1");
    }
    assert!(
        daemon.stderr().contains("systemd watchdog enabled"),
        "{}",
        daemon.stderr()
    );
    daemon.sigterm();
    // Pings may still come while calls drain; STOPPING=1 is among what follows.
    let stopping = loop {
        let message = supervisor.next(&daemon);
        if message != "WATCHDOG=1" {
            break message;
        }
    };
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping:?}");
    assert!(daemon.wait_exit().success());
}

#[test]
fn a_core_stuck_in_one_batch_gets_no_watchdog_pings_until_it_finishes_it() {
    let supervisor = Supervisor::at_path();
    // A debug build's fault point: the core thread holds every batch while this file exists.
    let wedge = supervisor._dir.path().join("wedge");
    let wedge_env = wedge.display().to_string();
    // 400 ms: a look (and a ping) every 200 ms.
    let env = [
        ("NOTIFY_SOCKET", supervisor.address.as_str()),
        ("WATCHDOG_USEC", "400000"),
        ("AGENTKEEPER_BUGGIFY_WEDGE", wedge_env.as_str()),
    ];
    let mut daemon = Daemon::spawn_env(&daemon_args(&[]), &env);
    let ready = supervisor.next(&daemon);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    let serving = ready.lines().nth(1).expect("a status line").to_string();
    assert_eq!(supervisor.next(&daemon), "WATCHDOG=1");
    let http = daemon.wait_serving().http.expect("HTTP").port();

    std::fs::write(&wedge, b"").expect("wedge the core");
    // The dashboard's data goes through the core: this call starts a batch that stays open.
    let call = std::thread::spawn(move || http_get(http, "/api/overview"));
    // A look or two may still find the batch new (a ping each); the next finds it the same.
    let withheld = (0..4)
        .map(|_| supervisor.next(&daemon))
        .find(|message| message != "WATCHDOG=1")
        .expect("the pings stop within a few looks");
    assert_eq!(
        withheld,
        "STATUS=the core thread has been in one batch for over 200 ms; watchdog pings withheld"
    );
    assert!(
        daemon.stderr().contains("watchdog pings withheld"),
        "{}",
        daemon.stderr()
    );
    // Three more looks find it in the same batch: not one ping (systemd would restart it).
    supervisor
        .socket
        .set_read_timeout(Some(std::time::Duration::from_millis(600)))
        .expect("timeout");
    let mut buffer = [0u8; 4096];
    let silent = supervisor.socket.recv(&mut buffer);
    assert!(
        silent.is_err(),
        "a message while wedged: {:?}",
        silent.map(|n| String::from_utf8_lossy(&buffer[..n]).into_owned())
    );
    supervisor.socket.set_read_timeout(Some(HANG_GUARD)).expect("timeout");

    std::fs::remove_file(&wedge).expect("free the core");
    assert_eq!(
        supervisor.next(&daemon),
        "WATCHDOG=1",
        "pings resume once the batch is done"
    );
    assert_eq!(supervisor.next(&daemon), serving, "and the status says it serves again");
    let (status, _) = call.join().expect("the call returns");
    assert_eq!(status, "HTTP/1.1 200 OK", "the held call was answered");
    daemon.sigterm();
    assert!(daemon.wait_exit().success(), "{}", daemon.stderr());
}

#[test]
fn a_watchdog_meant_for_another_process_is_not_fed() {
    let supervisor = Supervisor::at_path();
    let env = [
        ("NOTIFY_SOCKET", supervisor.address.as_str()),
        ("WATCHDOG_USEC", "200000"),
        // PID 1 is never the daemon: the watchdog is some other process's.
        ("WATCHDOG_PID", "1"),
    ];
    let mut daemon = Daemon::spawn_env(&daemon_args(&[]), &env);
    assert!(supervisor.next(&daemon).starts_with("READY=1\n"));
    // The decision is logged before READY=1 is sent; it was not to feed it.
    assert!(!daemon.stderr().contains("watchdog enabled"), "{}", daemon.stderr());
    daemon.sigterm();
    assert!(supervisor.next(&daemon).starts_with("STOPPING=1\n"));
    assert!(daemon.wait_exit().success());
}

#[test]
fn a_daemon_that_cannot_start_tells_the_supervisor_why() {
    let supervisor = Supervisor::at_path();
    let (_held, port) = common::refusing_port();
    let args = vec![
        format!("--addr=127.0.0.1:{port}"),
        "--metrics-addr=127.0.0.1:0".to_string(),
    ];
    let mut daemon = Daemon::spawn_env(&args, &[("NOTIFY_SOCKET", &supervisor.address)]);
    let message = supervisor.next(&daemon);
    assert!(
        message.starts_with(&format!(
            "STATUS=failed: cannot listen on 127.0.0.1:{port} for gRPC (--addr)"
        )),
        "{message:?}"
    );
    assert!(!daemon.wait_exit().success());
    assert!(supervisor.pending().is_empty(), "never READY=1");
}
