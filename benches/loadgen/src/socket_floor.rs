//! `socket-floor`: what the kernel alone gives a 1x1 round trip on this machine, over loopback TCP
//! and over a Unix socket: two threads ping-pong a message, no daemon, no HTTP/2. It bounds what
//! the daemon's "Unix socket against TCP" rows can show (BENCHMARKS.md, issue 24).
//!
//!   socket-floor [--round-trips 100000] [--bytes 100] [--spin]
//!
//! Blocking reads (the default) pay a thread's wake-up per message, as a daemon waiting in
//! epoll or io_uring does; `--spin` polls with non-blocking reads instead, leaving the sockets'
//! own cost. Invariant: the two transports run the same loop, alternated, in one process.

#![allow(clippy::disallowed_methods)] // measures real time

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Instant;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(about = "The kernel's own 1x1 round trip: loopback TCP against a Unix socket")]
struct Flags {
    /// Round trips measured per transport (after a tenth as many unmeasured).
    #[arg(long, default_value_t = 100_000)]
    round_trips: usize,
    /// Message size, each way.
    #[arg(long, default_value_t = 100)]
    bytes: usize,
    /// Poll with non-blocking reads instead of sleeping in read(2).
    #[arg(long)]
    spin: bool,
    /// Rounds (each transport once per round, alternated).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn main() {
    let flags = Flags::parse();
    let mut ratios = Vec::new();
    for round in 1..=flags.rounds {
        let tcp = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
            let client = TcpStream::connect(listener.local_addr().expect("its address")).expect("connect");
            client.set_nodelay(true).expect("TCP_NODELAY");
            let accept = move || {
                let (stream, _) = listener.accept().expect("accept");
                stream.set_nodelay(true).expect("TCP_NODELAY");
                stream
            };
            p50(&flags, accept, client)
        };
        let uds = {
            let path = std::env::temp_dir().join(format!("socket-floor-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).expect("bind a Unix socket");
            let client = UnixStream::connect(&path).expect("connect");
            let p50 = p50(&flags, move || listener.accept().expect("accept").0, client);
            let _ = std::fs::remove_file(&path);
            p50
        };
        ratios.push(uds / tcp);
        println!(
            "round {round}: {} reads, {} bytes: TCP p50 {tcp:.1} µs, Unix socket p50 {uds:.1} µs, ratio {:.2}x",
            if flags.spin { "polling" } else { "blocking" },
            flags.bytes,
            uds / tcp
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("median ratio {:.2}x", ratios[ratios.len() / 2]);
}

/// The round trips' p50 in µs between `client` and an echo thread serving the connection
/// `accept` takes (the client connected already: its connection waits in the listen backlog).
fn p50<S, A>(flags: &Flags, accept: A, client: S) -> f64
where
    S: Read + Write + NonBlocking + Send + 'static,
    A: FnOnce() -> S + Send + 'static,
{
    let echoing = flags.clone();
    let server = std::thread::spawn(move || echo(accept(), &echoing));
    let p50 = ping(client, flags);
    server.join().expect("the echo thread");
    p50
}

fn warm_up(flags: &Flags) -> usize {
    flags.round_trips / 10
}

fn echo<S: Read + Write + NonBlocking>(mut stream: S, flags: &Flags) {
    stream.nonblocking(flags.spin);
    let mut buffer = vec![0u8; flags.bytes];
    for _ in 0..warm_up(flags) + flags.round_trips {
        read_all(&mut stream, &mut buffer);
        stream.write_all(&buffer).expect("echo");
    }
}

/// The round trips' p50 in µs, the client's side.
fn ping<S: Read + Write + NonBlocking>(mut stream: S, flags: &Flags) -> f64 {
    stream.nonblocking(flags.spin);
    let mut buffer = vec![b'x'; flags.bytes];
    let mut took = Vec::with_capacity(flags.round_trips);
    for i in 0..warm_up(flags) + flags.round_trips {
        let sent = Instant::now();
        stream.write_all(&buffer).expect("send");
        read_all(&mut stream, &mut buffer);
        if i >= warm_up(flags) {
            took.push(sent.elapsed().as_nanos() as u64);
        }
    }
    took.sort_unstable();
    took[took.len() / 2] as f64 / 1000.0
}

fn read_all<S: Read>(stream: &mut S, buffer: &mut [u8]) {
    let mut got = 0;
    while got < buffer.len() {
        match stream.read(&mut buffer[got..]) {
            Ok(0) => panic!("the other end closed"),
            Ok(n) => got += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(error) => panic!("read: {error}"),
        }
    }
}

trait NonBlocking {
    fn nonblocking(&self, on: bool);
}

impl NonBlocking for TcpStream {
    fn nonblocking(&self, on: bool) {
        self.set_nonblocking(on).expect("O_NONBLOCK");
    }
}

impl NonBlocking for UnixStream {
    fn nonblocking(&self, on: bool) {
        self.set_nonblocking(on).expect("O_NONBLOCK");
    }
}
