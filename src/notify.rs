//! The service manager's notify protocol (systemd's `sd_notify(3)`), spoken without libsystemd:
//! one datagram per message to the Unix socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract socket when it starts with `@`), each message `KEY=VALUE` lines (`READY=1`,
//! `STOPPING=1`, `STATUS=...`, `WATCHDOG=1`).
//!
//! Owns the socket and the wording of each message; never decides when the daemon is ready
//! (main does) and never fails the daemon: a message that cannot be sent is logged once and the
//! daemon goes on, as it would without a supervisor.
//!
//! Hand-written rather than the sd-notify crate: that crate (0.5) connects to `$NOTIFY_SOCKET`
//! as a file path, so the abstract sockets that container managers and systemd hand out fail.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The variable that names the supervisor's socket.
pub const SOCKET_ENV: &str = "NOTIFY_SOCKET";
/// The watchdog's timeout in microseconds, set when the unit has `WatchdogSec=`.
pub const WATCHDOG_USEC_ENV: &str = "WATCHDOG_USEC";
/// The pid the watchdog is meant for; another process's watchdog is not ours to feed.
pub const WATCHDOG_PID_ENV: &str = "WATCHDOG_PID";

/// Where notifications go: nowhere when the daemon was not started by a supervisor that asked
/// for them (no `$NOTIFY_SOCKET`), which makes every method a no-op.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Set after the first failed send, so a gone supervisor is logged once, not per ping.
    failed: AtomicBool,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` asks for. A value that is no socket address (a relative
    /// path, say) is a warning and no notifications, not an error: the daemon serves anyway.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os(SOCKET_ENV).and_then(|name| match open(&name) {
            Ok(target) => Some(target),
            Err(error) => {
                tracing::warn!(%error, "{SOCKET_ENV}={name:?} cannot be used; not notifying the service manager");
                None
            }
        });
        Notifier {
            target,
            failed: AtomicBool::new(false),
        }
    }

    /// A notifier that sends nothing (no supervisor).
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            failed: AtomicBool::new(false),
        }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Start-up goes on: what it is doing now (recovering a data dir can take a while).
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// The daemon serves (the moment `/readyz` turns 200).
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// Shutdown began (a signal came): no new calls, calls in flight finishing.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// The watchdog's keep-alive: the daemon is making progress.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(error) = socket.send_to_addr(message.as_bytes(), addr)
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(%error, "cannot notify the service manager (further failures are not logged)");
        }
    }
}

/// The socket to send from and the address `$NOTIFY_SOCKET` names.
fn open(name: &OsString) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let bytes = name.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
        None if bytes.starts_with(b"/") => SocketAddr::from_pathname(name)?,
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "neither an absolute path nor an abstract socket (@name)",
            ));
        }
    };
    Ok((UnixDatagram::unbound()?, addr))
}

/// A status is one line of the message: a newline in it would start a new assignment.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// The watchdog's timeout from `$WATCHDOG_USEC`, if the supervisor enabled one for this process
/// (`$WATCHDOG_PID` unset or ours). Zero or a malformed value means no watchdog.
pub fn watchdog_timeout() -> Option<Duration> {
    let usec: u64 = std::env::var(WATCHDOG_USEC_ENV).ok()?.parse().ok()?;
    let for_us = match std::env::var(WATCHDOG_PID_ENV) {
        Ok(pid) => pid.parse::<u32>().ok() == Some(std::process::id()),
        Err(_) => true,
    };
    (usec > 0 && for_us).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notifier_to(addr: SocketAddr) -> Notifier {
        Notifier {
            target: Some((UnixDatagram::unbound().expect("a socket"), addr)),
            failed: AtomicBool::new(false),
        }
    }

    fn received(socket: &UnixDatagram) -> String {
        let mut buffer = [0u8; 4096];
        let n = socket.recv(&mut buffer).expect("a datagram");
        String::from_utf8(buffer[..n].to_vec()).expect("UTF-8")
    }

    #[test]
    fn each_message_is_one_datagram_of_key_value_lines() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = notifier_to(SocketAddr::from_pathname(&path).expect("an address"));
        notifier.status("recovering\nthe data dir");
        notifier.ready("serving");
        notifier.watchdog();
        notifier.stopping("shutting down");
        assert_eq!(received(&listener), "STATUS=recovering the data dir");
        assert_eq!(received(&listener), "READY=1\nSTATUS=serving");
        assert_eq!(received(&listener), "WATCHDOG=1");
        assert_eq!(received(&listener), "STOPPING=1\nSTATUS=shutting down");
    }

    #[test]
    fn an_at_sign_names_an_abstract_socket() {
        let name = format!("agentkeeper-notify-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).expect("an address"))
            .expect("bind an abstract socket");
        let (socket, addr) = open(&OsString::from(format!("@{name}"))).expect("opens");
        let notifier = Notifier {
            target: Some((socket, addr)),
            failed: AtomicBool::new(false),
        };
        notifier.ready("serving");
        assert_eq!(received(&listener), "READY=1\nSTATUS=serving");
    }

    #[test]
    fn a_relative_path_is_refused_rather_than_resolved_against_the_working_directory() {
        let error = open(&OsString::from("run/notify")).expect_err("refused");
        assert!(error.to_string().contains("absolute path"), "{error}");
    }

    #[test]
    fn a_gone_supervisor_costs_nothing_but_a_warning() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let notifier = notifier_to(SocketAddr::from_pathname(dir.path().join("gone")).expect("an address"));
        notifier.ready("serving");
        notifier.watchdog();
        assert!(notifier.failed.load(Ordering::Relaxed));
    }
}
