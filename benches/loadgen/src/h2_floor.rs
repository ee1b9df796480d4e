//! `h2-floor`: what a server built on the h2 crate can answer on this machine at all, with the
//! hot suite's client (h2load, one thread, 4 connections x 64 streams): a server thread that
//! answers every call with an empty gRPC message and `grpc-status: 0`, doing no work of its own.
//! It bounds the hot suite's "h2load, Heartbeat vs Put" rows the way `socket-floor` bounds the
//! socket rows (BENCHMARKS.md, issue 24).
//!
//!   h2-floor [--connections 4] [--streams 64] [--duration 5s] [--rounds 3]
//!
//! Two servers, alternated in each round: the h2 crate alone (one task per call, as any server on
//! it spawns), and hyper's HTTP/2 server over it (the daemon's stack, without tonic or the core).
//! Invariant: the server runs on one thread of a current-thread runtime, as the daemon's one
//! net thread does, and the CPU reported is that process's alone (h2load is a child process).

#[path = "h2load_command.rs"]
mod h2load_command;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::net::{TcpListener, TcpStream};

use agentkeeper::proto as pb;

#[derive(Parser, Debug)]
#[command(about = "The h2 crate's own ceiling for unary gRPC calls under h2load, no daemon")]
struct Flags {
    /// h2load's connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// h2load's streams per connection.
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// Measured time per server and round (after one second of h2load's warm-up).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Rounds (each server once per round, alternated).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Servers to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["h2", "hyper"])]
    servers: Vec<Server>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Server {
    /// The h2 crate alone: accept, read the body, send headers, data and trailers.
    H2,
    /// hyper's HTTP/2 server (over h2), with a service that answers at once.
    Hyper,
}

/// A request as the hot suite sends it: a Heartbeat of a 32-hex-digit agent id, gRPC-framed.
fn request_body() -> Vec<u8> {
    h2load_command::frame(&pb::HeartbeatRequest {
        agent_id: "0123456789abcdef0123456789abcdef".into(),
    })
}

/// The answer: an empty message (as Heartbeat's), framed.
const ANSWER: &[u8] = &[0, 0, 0, 0, 0];

fn main() {
    let flags = Flags::parse();
    let body = std::env::temp_dir().join(format!("h2-floor-{}.bin", std::process::id()));
    std::fs::write(&body, request_body()).expect("write the request body");
    let mut results: Vec<(Server, f64, f64)> = Vec::new();
    for round in 1..=flags.rounds {
        for &server in &flags.servers {
            let (calls_per_second, cpu_us) = measure(&flags, server, &body);
            println!("round {round}: {server:?}: {calls_per_second:.0} calls/s, server CPU {cpu_us:.2} µs per call");
            results.push((server, calls_per_second, cpu_us));
        }
    }
    for &server in &flags.servers {
        let mut rates: Vec<f64> = results.iter().filter(|r| r.0 == server).map(|r| r.1).collect();
        let mut cpus: Vec<f64> = results.iter().filter(|r| r.0 == server).map(|r| r.2).collect();
        rates.sort_by(f64::total_cmp);
        cpus.sort_by(f64::total_cmp);
        println!(
            "median {server:?}: {:.0} calls/s, {:.2} µs of server CPU per call",
            rates[rates.len() / 2],
            cpus[cpus.len() / 2]
        );
    }
    let _ = std::fs::remove_file(&body);
}

/// One h2load run against a fresh server of kind `server`: calls/s, and the server's CPU per call.
fn measure(flags: &Flags, server: Server, body: &std::path::Path) -> (f64, f64) {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    std_listener.set_nonblocking(true).expect("non-blocking");
    let addr = std_listener.local_addr().expect("its address");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let listener = TcpListener::from_std(std_listener).expect("a tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::task::spawn_local(async move {
                    match server {
                        Server::H2 => serve_h2(stream).await,
                        Server::Hyper => serve_hyper(stream).await,
                    }
                });
            }
        });
    });
    let before = h2load_command::cpu_seconds(libc::RUSAGE_SELF);
    let output = h2load(flags, addr, body);
    let cpu = h2load_command::cpu_seconds(libc::RUSAGE_SELF) - before;
    let requests = h2load_command::counts(&output)
        .ok()
        .and_then(|counts| counts.get("succeeded").copied())
        .unwrap_or_else(|| panic!("h2load's output:\n{output}"));
    let seconds = flags.duration.as_secs_f64();
    // The CPU spans h2load's warm-up too: count the calls of the warm-up at the measured rate.
    let calls = requests as f64 * (seconds + 1.0) / seconds;
    (requests as f64 / seconds, cpu * 1e6 / calls)
}

/// The hot suite's h2load command against `addr`, with one second of h2load's own warm-up.
fn h2load(flags: &Flags, addr: SocketAddr, body: &std::path::Path) -> String {
    let url = format!("http://{addr}/agentkeeper.v1.RegistryService/Heartbeat");
    let output = h2load_command::command(&url, body, flags.connections, flags.streams, flags.duration)
        .args(["--warm-up-time", "1s"])
        .output()
        .expect("run h2load (Debian: nghttp2-client)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

async fn serve_h2(stream: TcpStream) {
    let Ok(mut connection) = h2::server::Builder::new()
        .max_concurrent_streams(256)
        .handshake::<_, Bytes>(stream)
        .await
    else {
        return;
    };
    while let Some(Ok((request, respond))) = connection.accept().await {
        tokio::task::spawn_local(answer_h2(request, respond));
    }
}

async fn answer_h2(request: Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let mut body = request.into_body();
    while let Some(Ok(data)) = body.data().await {
        let _ = body.flow_control().release_capacity(data.len());
    }
    let response = Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .expect("a valid response");
    let Ok(mut send) = respond.send_response(response, false) else {
        return;
    };
    let _ = send.send_data(Bytes::from_static(ANSWER), false);
    let _ = send.send_trailers(trailers());
}

async fn serve_hyper(stream: TcpStream) {
    let service = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
        let _ = request.into_body().collect().await;
        let mut response = Response::new(Answer { sent: 0 });
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        Ok::<_, Infallible>(response)
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let _ = hyper::server::conn::http2::Builder::new(LocalExec)
        .max_concurrent_streams(256)
        .serve_connection(io, service)
        .await;
}

/// A unary gRPC answer's body: the message, then the trailers.
struct Answer {
    sent: u8,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.sent += 1;
        Poll::Ready(match self.sent {
            1 => Some(Ok(Frame::data(Bytes::from_static(ANSWER)))),
            2 => Some(Ok(Frame::trailers(trailers()))),
            _ => None,
        })
    }
}

/// hyper's per-stream tasks on this thread, as the daemon's net thread runs them.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}
