//! End to end: hostile clients. Garbage bytes, a cut-short HTTP/2 preface, oversized messages,
//! invalid UTF-8, 10,000 idle connections, connections past the bound, a slowloris client and a
//! watcher that never reads; after each, a normal client is served and the state is unchanged.
//! Each test prints what the daemon answered (`--nocapture` shows it).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use agentkeeper::proto as pb;
use common::{Clients, Daemon, HANG_GUARD, wait_until};
use tonic::Code;

/// The client's connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a raw client waits for the daemon to answer or close: every test expects one or the
/// other, so silence this long is a hang.
const READ_TIMEOUT: Duration = HANG_GUARD;

/// Some state of every kind, so that a change anywhere shows; returns the agent's id.
async fn seed_state(c: &mut Clients) -> String {
    let agent = c.register("resident", &["web"], 3600).await;
    c.acquire("resident-lease", &agent, 3600).await;
    let policy = pb::Policy {
        id: "p".into(),
        subject: "resident".into(),
        action: "read".into(),
        resource: "*".into(),
        effect: pb::PolicyEffect::Allow as i32,
    };
    c.policies
        .set_policy(pb::SetPolicyRequest { policy: Some(policy) })
        .await
        .expect("set a policy");
    let task = pb::CreateTaskRequest {
        r#type: "t".into(),
        input: b"in".to_vec(),
        ..Default::default()
    };
    c.tasks.create_task(task).await.expect("create a task");
    agent
}

/// Everything a client can list: live agents, the lease's holder and token, policies, tasks.
async fn state(daemon: &Daemon, resident: &str) -> String {
    let mut c = daemon.clients().await;
    let agents = c.find("", &[], 1000).await;
    let policies = c
        .policies
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .expect("the daemon serves a normal client")
        .into_inner();
    let tasks = c
        .tasks
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .expect("list tasks")
        .into_inner();
    // Re-entrant for its holder: the same token back, or the state changed.
    let (lease, _) = c.acquire("resident-lease", resident, 3600).await;
    format!(
        "{agents:?} {policies:?} {tasks:?} holder={} token={}",
        lease.holder_agent_id,
        common::token_of(&lease)
    )
}

/// The seeded state as it was: every check after a hostile input compares with it.
struct Before {
    resident: String,
    state: String,
}

impl Before {
    /// Asserts that a normal client (a new connection) is served and sees the state unchanged.
    async fn unchanged(&self, daemon: &Daemon, after: &str) {
        assert_eq!(state(daemon, &self.resident).await, self.state, "after {after}");
    }
}

/// A started daemon with the seeded state, and that state.
async fn daemon_with_state(extra: &[&str]) -> (Daemon, Before) {
    let daemon = Daemon::start(extra);
    let resident = seed_state(&mut daemon.clients().await).await;
    let state = state(&daemon, &resident).await;
    (daemon, Before { resident, state })
}

fn connect(daemon: &Daemon) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect to the gRPC port");
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream
}

/// Reads what the daemon sends until it closes or goes quiet; names the HTTP/2 frames in it.
fn answer(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    let ending = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break "then closed",
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break "then silence",
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => break "then silence",
            Err(_) => break "then reset",
        }
    };
    format!("{} {ending}", frames(&bytes).join(", "))
}

/// The HTTP/2 frames in `bytes`, by name (GOAWAY with its error code).
fn frames(mut bytes: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let kind = bytes[3];
        let payload = &bytes[9..(9 + len).min(bytes.len())];
        names.push(match kind {
            0x0 => "DATA".to_string(),
            0x1 => "HEADERS".to_string(),
            0x3 => "RST_STREAM".to_string(),
            0x4 if bytes[4] & 1 == 1 => "SETTINGS(ack)".to_string(),
            0x4 => "SETTINGS".to_string(),
            0x6 => "PING".to_string(),
            0x7 if payload.len() >= 8 => {
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                format!("GOAWAY({})", h2_error(code))
            }
            0x8 => "WINDOW_UPDATE".to_string(),
            other => format!("frame type {other}"),
        });
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    if !bytes.is_empty() {
        names.push(format!("{} stray bytes", bytes.len()));
    }
    if names.is_empty() {
        names.push("nothing".into());
    }
    names
}

fn h2_error(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x9 => "COMPRESSION_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        _ => "other",
    }
}

/// Bytes from a fixed-seed xorshift: garbage, but the same garbage every run.
fn garbage(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The value of an unlabelled metric on the daemon's /metrics page (0 when absent).
fn metric(daemon: &Daemon, name: &str) -> f64 {
    daemon.metric(name).unwrap_or(0.0)
}

#[tokio::test]
async fn garbage_bytes_on_the_grpc_port_end_that_connection_only() {
    let (daemon, before) = daemon_with_state(&[]).await;
    let mut http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    http1.extend(garbage(1, 64));
    let mut after_preface = PREFACE.to_vec();
    after_preface.extend(garbage(2, 4096));
    // A frame header announcing 16 MiB of HEADERS on stream 1, after a valid preface.
    let mut huge_frame = PREFACE.to_vec();
    huge_frame.extend([0xff, 0xff, 0xff, 0x1, 0x4, 0, 0, 0, 1]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("4 KiB of random bytes", garbage(3, 4096)),
        ("an HTTP/1.1 request", http1),
        (
            "a TLS ClientHello on the plaintext port",
            vec![0x16, 3, 1, 0, 0x2f, 1, 0, 0, 0x2b, 3, 3],
        ),
        ("a valid preface then 4 KiB of random frames", after_preface),
        ("a frame header announcing 16 MiB", huge_frame),
        ("64 KiB of zeros", vec![0; 64 * 1024]),
    ];
    for (what, bytes) in cases {
        let mut stream = connect(&daemon);
        // The daemon may close before it has read everything: a failed write is an answer too.
        let written = stream.write_all(&bytes);
        let answer = answer(&mut stream);
        eprintln!("hostile: {what}: {answer} (our write: {written:?})");
        assert!(
            !answer.ends_with("then silence"),
            "{what}: the daemon should end a connection that speaks garbage, got {answer}"
        );
        before.unchanged(&daemon, what).await;
    }
}

#[tokio::test]
async fn a_truncated_preface_holds_only_its_own_connection() {
    let (daemon, before) = daemon_with_state(&[]).await;
    for cut in [1, 10, PREFACE.len() - 1] {
        let mut stream = connect(&daemon);
        stream.write_all(&PREFACE[..cut]).unwrap();
        // While it waits for the rest, others are served.
        before.unchanged(&daemon, &format!("preface cut at {cut}")).await;
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let answer = answer(&mut stream);
        eprintln!("hostile: the preface cut at byte {cut}, then half-closed: {answer}");
        assert!(!answer.ends_with("then silence"), "cut at {cut}: {answer}");
    }
    before.unchanged(&daemon, "the end").await;
}

#[tokio::test]
async fn oversized_messages_are_resource_exhausted_naming_the_limit() {
    let (daemon, before) = daemon_with_state(&["--message-bytes-max=65536"]).await;
    let mut c = daemon.clients().await;
    let task = pb::CreateTaskRequest {
        r#type: "t".into(),
        input: vec![7; 65_537],
        ..Default::default()
    };
    let error = c.tasks.create_task(task).await.expect_err("over the limit");
    eprintln!("hostile: a 64 KiB + 1 CreateTask under --message-bytes-max=65536: {error:?}");
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
    assert!(
        error.message().contains("limit message_bytes_max (65536) reached"),
        "{error:?}"
    );
    let card = common::card("big", &"d".repeat(1 << 20), &[]);
    let register = pb::RegisterRequest {
        card: Some(card),
        ttl_seconds: 10,
    };
    let error = c.registry.register(register).await.expect_err("over the limit");
    eprintln!("hostile: a 1 MiB Register under --message-bytes-max=65536: {error:?}");
    assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
    before.unchanged(&daemon, "the end").await;
    // The same connection goes on serving.
    c.policies
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .expect("the connection still serves");
}

/// RegisterRequest as bytes: a card whose name is any bytes (prost checks UTF-8 on `string`).
#[derive(Clone, PartialEq, prost::Message)]
struct RawRegister {
    #[prost(message, optional, tag = "1")]
    card: Option<RawCard>,
    #[prost(uint32, tag = "2")]
    ttl_seconds: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawCard {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
}

#[tokio::test]
async fn invalid_utf8_in_a_string_is_refused_and_changes_nothing() {
    let (daemon, before) = daemon_with_state(&[]).await;
    let mut grpc = tonic::client::Grpc::new(daemon.channel().await);
    for name in [vec![0xff, 0xfe], b"ok\xc3".to_vec(), vec![0xed, 0xa0, 0x80]] {
        grpc.ready().await.unwrap();
        let request = RawRegister {
            card: Some(RawCard { name: name.clone() }),
            ttl_seconds: 10,
        };
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/agentkeeper.v1.RegistryService/Register");
        let codec = tonic_prost::ProstCodec::<RawRegister, pb::RegisterResponse>::default();
        let outcome = grpc.unary(tonic::Request::new(request), path, codec).await;
        let error = outcome.expect_err("invalid UTF-8 is refused");
        eprintln!("hostile: a Register whose name is {name:x?}: {error:?}");
        // gRPC's status codes document: a request that cannot be parsed is INTERNAL.
        assert_eq!(error.code(), Code::Internal, "{error:?}");
        assert!(error.message().contains("UTF-8"), "{error:?}");
        before.unchanged(&daemon, "the end").await;
    }
}

/// Raises this process's open-files limit to its hard limit; returns the new soft limit.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// Waits until the daemon's `agentkeeper_connections_open` satisfies `done`; returns it.
/// Async: the test's runtime must go on running, or the clients it dropped never hang up.
async fn wait_connections(daemon: &Daemon, done: impl Fn(f64) -> bool) -> f64 {
    wait_until("agentkeeper_connections_open", async || {
        let open = metric(daemon, "agentkeeper_connections_open");
        if done(open) {
            Ok(open)
        } else {
            Err(format!("{open} open"))
        }
    })
    .await
}

/// Waits until at least `n` connections are open.
async fn wait_open(daemon: &Daemon, n: f64) -> f64 {
    wait_connections(daemon, |open| open >= n).await
}

#[tokio::test]
async fn ten_thousand_idle_connections_are_held_while_a_normal_client_is_served() {
    const IDLE: usize = 10_000;
    const BATCH: usize = 100;
    let files = raise_open_files();
    assert!(
        files > IDLE as u64 + 100,
        "this test needs {IDLE}+ open files, the hard limit is {files}"
    );
    let (daemon, before) = daemon_with_state(&[]).await;
    // In batches, each accepted before the next: what is tested is holding them, not how fast
    // a burst of SYNs is taken (a burst the acceptor falls behind on loses SYNs, and the client
    // retries a second later).
    let mut idle: Vec<TcpStream> = Vec::with_capacity(IDLE);
    while idle.len() < IDLE {
        idle.extend((0..BATCH).map(|_| connect(&daemon)));
        wait_open(&daemon, idle.len() as f64).await;
    }
    let open = wait_open(&daemon, IDLE as f64).await;
    eprintln!("hostile: {IDLE} idle connections: the daemon holds {open} open connections");
    assert!(open >= IDLE as f64, "the daemon accepted only {open} of {IDLE}");
    before
        .unchanged(&daemon, &format!("served with {IDLE} idle connections open"))
        .await;
    drop(idle);
    before.unchanged(&daemon, "the end").await;
}

#[tokio::test]
async fn connections_past_connections_max_are_closed_unread_and_counted() {
    let (daemon, before) = daemon_with_state(&["--connections-max=3"]).await;
    // The clients that seeded the state have hung up; once the daemon has seen it, hold two
    // raw connections and one client.
    assert_eq!(wait_connections(&daemon, |open| open == 0.0).await, 0.0);
    let mut c = daemon.clients().await;
    let held: Vec<TcpStream> = (0..2).map(|_| connect(&daemon)).collect();
    assert_eq!(wait_open(&daemon, 3.0).await, 3.0);
    let mut refused = connect(&daemon);
    let _ = refused.write_all(PREFACE);
    let answer = answer(&mut refused);
    eprintln!("hostile: a 4th connection under --connections-max=3: {answer}");
    assert!(answer.starts_with("nothing"), "closed unread: {answer}");
    assert!(!answer.ends_with("then silence"), "{answer}");
    assert_eq!(metric(&daemon, "agentkeeper_connections_refused_total"), 1.0);
    c.policies
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .expect("a connection within the bound is served");
    drop(held);
    drop(c);
    // Until the daemon has seen those close, a new connection would still be one too many.
    assert_eq!(wait_connections(&daemon, |open| open == 0.0).await, 0.0);
    before.unchanged(&daemon, "the others closed").await;
}

#[tokio::test]
async fn the_daemon_announces_streams_per_connection_max_in_its_settings() {
    let daemon = Daemon::start(&["--streams-per-connection-max=7"]);
    let mut stream = connect(&daemon);
    stream.write_all(PREFACE).unwrap();
    stream.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).unwrap(); // an empty SETTINGS
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).expect("the daemon's SETTINGS");
    assert_eq!(header[3], 0x4, "the first frame is SETTINGS");
    let len = usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).unwrap();
    let max_streams = payload
        .chunks(6)
        .find(|setting| setting[..2] == [0, 3])
        .map(|setting| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]));
    eprintln!("hostile: SETTINGS under --streams-per-connection-max=7: MAX_CONCURRENT_STREAMS={max_streams:?}");
    assert_eq!(max_streams, Some(7));
}

#[tokio::test]
async fn slowloris_clients_hold_only_their_own_connections() {
    const SLOW: usize = 50;
    let (daemon, before) = daemon_with_state(&[]).await;
    let mut slow: Vec<TcpStream> = (0..SLOW).map(|_| connect(&daemon)).collect();
    // A HEADERS frame on stream 1, never finished: one byte at a time, a little every round.
    let mut dribble = PREFACE.to_vec();
    dribble.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    dribble.extend([0, 0x40, 0, 0x1, 0x4, 0, 0, 0, 1]);
    dribble.extend(garbage(9, 64));
    for byte in &dribble {
        for stream in &mut slow {
            let _ = stream.write_all(std::slice::from_ref(byte));
        }
        if *byte % 8 == 0 {
            before
                .unchanged(&daemon, &format!("served among {SLOW} slowloris clients"))
                .await;
        }
    }
    let open = metric(&daemon, "agentkeeper_connections_open");
    eprintln!(
        "hostile: {SLOW} slowloris clients dribbling {} bytes each: a normal client was served \
         throughout; {open} connections open",
        dribble.len()
    );
    before.unchanged(&daemon, "the end").await;
}

#[tokio::test]
async fn a_watcher_that_never_reads_is_cut_off_and_others_are_served() {
    let (daemon, before) = daemon_with_state(&["--watch-buffer=16"]).await;
    let mut stuck = daemon.narrow_clients().await;
    let mut stream = stuck.watch(&[], 0).await;
    let mut c = daemon.clients().await;
    // Register and deregister: events aplenty, and the state as it was.
    for i in 0..200 {
        let id = c.register(&format!("churn-{i}"), &[], 60).await;
        c.deregister(&id).await.unwrap();
    }
    before.unchanged(&daemon, "the end").await;
    daemon.wait_metric("agentkeeper_watch_overflows_total", 1.0).await;
    let (delivered, end) = common::stream_end(&mut stream, HANG_GUARD).await;
    eprintln!(
        "hostile: a watcher that never reads, 400 events, --watch-buffer=16: {} events, then {end:?}",
        delivered.len()
    );
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    // Its place is freed (the gauge follows within a batch).
    daemon.wait_metric("agentkeeper_watchers", 0.0).await;
}

/// Random HTTP/2 frames: well-formed frame headers (random type, flags, stream, length) with
/// random payloads, after a valid preface; AGENTKEEPER_FUZZ_CASES connections (default 200).
fn random_frames(seed: u64) -> Vec<u8> {
    let noise = garbage(seed, 4096);
    let mut bytes = PREFACE.to_vec();
    bytes.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let mut at = 0;
    for _ in 0..(noise[0] % 8 + 1) {
        let len = usize::from(noise[at] % 64);
        let kind = noise[at + 1] % 11;
        let flags = noise[at + 2];
        let stream = u32::from(noise[at + 3] % 4);
        bytes.extend([0, 0, len as u8, kind, flags]);
        bytes.extend(stream.to_be_bytes());
        bytes.extend(&noise[at + 4..at + 4 + len]);
        at += 4 + len;
    }
    bytes
}

#[tokio::test]
async fn random_http2_frames_never_stop_the_daemon() {
    let cases: u64 = std::env::var("AGENTKEEPER_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let (mut daemon, before) = daemon_with_state(&[]).await;
    for seed in 1..=cases {
        let mut stream = connect(&daemon);
        let _ = stream.write_all(&random_frames(seed));
        let _ = stream.shutdown(std::net::Shutdown::Write);
        if seed % 50 == 0 {
            before
                .unchanged(&daemon, &format!("after {seed} random connections"))
                .await;
        }
    }
    assert!(daemon.is_running(), "the daemon is still running");
    before.unchanged(&daemon, "the end").await;
    // A panic in a connection's task would not stop the daemon: tokio catches it and logs it.
    assert!(!daemon.stderr().contains("panicked"), "a task panicked");
    eprintln!("fuzz: {cases} connections of random HTTP/2 frames: the daemon served throughout");
}

/// One gRPC call sent as raw HTTP/2 over `channel`: `body` as the request's bytes (any prefix,
/// any message), `headers` besides gRPC's. Returns the status code and message (from the
/// trailers, or from the headers of a trailers-only answer), and the data the answer carried.
async fn raw_call(
    channel: &tonic::transport::Channel,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (String, String, Vec<u8>) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    let request = request.body(body).expect("a request");
    let response = channel.clone().oneshot(request).await.expect("an HTTP answer");
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("the answer's body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let data = collected.to_bytes().to_vec();
    let field = |name: &str| {
        trailers
            .get(name)
            .or_else(|| parts.headers.get(name))
            .map(|v| v.to_str().unwrap_or("?").to_string())
            .unwrap_or_default()
    };
    (field("grpc-status"), field("grpc-message"), data)
}

/// A gRPC frame: the compression flag, the 4-byte length (`length`, whatever `message` holds),
/// then `message`.
fn grpc_frame(flag: u8, length: u32, message: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

#[tokio::test]
async fn hot_unary_methods_answer_malformed_requests_exactly_as_tonic_does() {
    // The hot unary methods are served on the lean path (src/server/lean.rs) unless
    // the request names a message encoding: `grpc-encoding: identity` (no compression) sends the
    // very same call through tonic's codec. Every malformed request must get the same answer
    // both ways, word for word.
    let (daemon, before) = daemon_with_state(&["--message-bytes-max=4096"]).await;
    let channel = daemon.channel().await;
    let id = b"\x0a\x03abc"; // field 1 (an agent id, or a lease's task id) = "abc"
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("no message at all", vec![], "13"),
        ("a torn prefix", vec![0, 0, 0], "13"),
        ("a length past the data", grpc_frame(0, 9, id), "13"),
        (
            "two messages",
            [grpc_frame(0, 5, id), grpc_frame(0, 5, id)].concat(),
            "5",
        ),
        ("compressed, with no grpc-encoding", grpc_frame(1, 5, id), "13"),
        ("an invalid compression flag", grpc_frame(2, 5, id), "13"),
        ("bytes that are no protobuf", grpc_frame(0, 2, &[0xff, 0xff]), "13"),
        (
            "a string that is not UTF-8",
            grpc_frame(0, 4, b"\x0a\x02\xc3\x28"),
            "13",
        ),
        ("over --message-bytes-max", grpc_frame(0, 5000, &[0; 5000]), "8"),
    ];
    for (what, body, code) in cases {
        let mut hot = vec![
            "/agentkeeper.v1.RegistryService/Heartbeat",
            "/agentkeeper.v1.RegistryService/GetAgent",
            "/agentkeeper.v1.LeaseService/RenewLease",
        ];
        // The writes among them would act on a well-formed message: only the malformed ones.
        if what != "two messages" {
            hot.extend([
                "/agentkeeper.v1.LeaseService/AcquireLease",
                "/agentkeeper.v1.LeaseService/ReleaseLease",
                "/agentkeeper.v1.EntitlementsService/SetPolicy",
                "/agentkeeper.v1.EntitlementsService/CheckPolicy",
            ]);
        }
        for hot in hot {
            let lean = raw_call(&channel, hot, &[], body.clone()).await;
            let through_tonic = raw_call(&channel, hot, &[("grpc-encoding", "identity")], body.clone()).await;
            eprintln!("hostile: {what} to {hot}: {lean:?}");
            assert_eq!(lean, through_tonic, "{what}: {hot} answers unlike tonic");
            assert_eq!(lean.0, code, "{what} to {hot}: {lean:?}");
        }
    }
    // An encoding the daemon does not take goes to tonic, which names it.
    let refused = raw_call(
        &channel,
        "/agentkeeper.v1.RegistryService/Heartbeat",
        &[("grpc-encoding", "br")],
        grpc_frame(0, 5, id),
    )
    .await;
    assert_eq!(refused.0, "12", "{refused:?}");
    before.unchanged(&daemon, "the malformed calls").await;
}

#[tokio::test]
async fn a_heartbeat_on_the_lean_path_answers_with_one_empty_message_and_status_ok() {
    let (daemon, _) = daemon_with_state(&[]).await;
    let mut c = daemon.clients().await;
    let agent = c
        .registry
        .register(pb::RegisterRequest {
            card: Some(common::card("lean", "a heartbeat's target", &[])),
            ttl_seconds: 30,
        })
        .await
        .expect("registered")
        .into_inner()
        .agent_id;
    let message = pb::HeartbeatRequest {
        agent_id: agent.clone(),
    };
    let bytes = prost::Message::encode_to_vec(&message);
    let frame = grpc_frame(0, bytes.len() as u32, &bytes);
    let channel = daemon.channel().await;
    let (status, message, data) = raw_call(&channel, "/agentkeeper.v1.RegistryService/Heartbeat", &[], frame).await;
    assert_eq!((status.as_str(), message.as_str()), ("0", ""));
    // HeartbeatResponse is empty: a frame of no bytes.
    assert_eq!(data, [0, 0, 0, 0, 0]);
    // GetAgent's answer decodes to the agent, through the generated client as any caller.
    let got = c
        .registry
        .get_agent(pb::GetAgentRequest {
            agent_id: agent.clone(),
        })
        .await
        .expect("the agent")
        .into_inner();
    assert_eq!(got.agent.expect("an agent").agent_id, agent);
}

#[tokio::test]
async fn a_daemon_out_of_file_descriptors_backs_off_and_serves_again_once_they_free_up() {
    // Few enough descriptors that idle connections exhaust them: accept then fails (EMFILE) while
    // more wait in the listen backlog. The acceptor must back off (no spin, no exit) and, once
    // the idle clients go, take connections again.
    const FILES_MAX: u64 = 64;
    let args = ["--addr=127.0.0.1:0", "--metrics-addr=127.0.0.1:0"].map(String::from);
    let mut daemon = Daemon::spawn_with_files_max(&args, FILES_MAX);
    daemon.wait_serving();
    let idle: Vec<TcpStream> = (0..FILES_MAX + 32).map(|_| connect(&daemon)).collect();
    wait_until("the acceptor out of descriptors", async || {
        match daemon.stderr().contains("accept failed; trying again in 50 ms") {
            true => Ok(()),
            false => Err("no accept failure logged yet".to_string()),
        }
    })
    .await;
    assert!(daemon.is_running(), "out of descriptors is no reason to stop");
    drop(idle);
    // The backlog still holds some of the closed connections: the acceptor takes and drops
    // them, then this client's.
    let agent = wait_until("a call served after the descriptors freed up", async || {
        let channel = tonic::transport::Endpoint::from_shared(daemon.url())
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = pb::RegisterRequest {
            card: Some(common::card("after", "after agent", &["web"])),
            ttl_seconds: 60,
        };
        let registered = Clients::over(channel).registry.register(request).await;
        registered
            .map(|r| r.into_inner().agent_id)
            .map_err(|e| format!("register: {e}"))
    })
    .await;
    assert!(!agent.is_empty());
    assert!(daemon.is_running());
}
