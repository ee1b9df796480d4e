//! `agentkeeper probe`: asks a daemon's HTTP port whether it is ready (`GET /readyz`) and exits 0
//! for 200, 1 otherwise: a container healthcheck or a script's wait, for images that carry no
//! curl (the container image carries only this binary).
//!
//! Owns one HTTP/1.0 request and the reading of its status line; never retries (the caller's
//! healthcheck does) and never speaks gRPC.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::Args;

/// The probe's flags.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The daemon's HTTP address (its --metrics-addr).
    #[arg(default_value = "127.0.0.1:9090")]
    pub addr: String,

    /// The path to ask: /readyz (ready to serve) or /healthz (the process runs).
    #[arg(long, default_value = "/readyz")]
    pub path: String,

    /// How long to wait for the connection and the answer.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The answer line and body when the daemon says 200; otherwise why not, in one line.
pub fn run(args: &ProbeArgs) -> Result<String, String> {
    let addr = resolve(&args.addr)?;
    let mut stream = TcpStream::connect_timeout(&addr, args.timeout).map_err(|error| format!("{addr}: {error}"))?;
    stream
        .set_read_timeout(Some(args.timeout))
        .and_then(|()| stream.set_write_timeout(Some(args.timeout)))
        .map_err(|error| format!("{addr}: {error}"))?;
    // HTTP/1.0: the server closes the connection after its answer, so reading to the end is
    // reading the answer, with no chunking or keep-alive to handle.
    write!(stream, "GET {} HTTP/1.0\r\nHost: {}\r\n\r\n", args.path, args.addr)
        .map_err(|error| format!("{addr}: {error}"))?;
    let mut response = Vec::new();
    // At most a few KiB: /readyz answers one word.
    stream
        .take(64 * 1024)
        .read_to_end(&mut response)
        .map_err(|error| format!("{addr}: {error}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default();
    let answer = format!("{}{} {status}: {}", args.addr, args.path, body.trim());
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(answer),
        Some(_) => Err(answer),
        None => Err(format!("{}{}: not an HTTP answer", args.addr, args.path)),
    }
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|error| format!("{addr:?} is not HOST:PORT: {error}"))?
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))
}
