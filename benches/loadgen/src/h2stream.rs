//! `--client h2`: each worker holds one gRPC stream opened over the `h2` crate directly (no
//! tonic: no codec, no body streams, no channel tasks) and sends its one pre-framed message,
//! waits for the answer, decodes and checks it, and sends again. A cheap client, as h2load is
//! for unary calls over TCP, so the servers' own cost shows: the keep-alive streams (ours,
//! `--batch` agents a message, and etcd's LeaseKeepAlive), and ours' unary Heartbeat, one stream
//! a call, over TCP or the daemon's Unix socket (`unix:PATH`), which h2load cannot reach.
//!
//! Invariant: every answer is decoded and checked (each item OK; a unary call's trailers say
//! grpc-status 0; etcd: the lease's ttl > 0) before it counts; nothing is recorded before the
//! warm-up ends. One OS thread runs it all, like h2load.

use std::time::{Duration, Instant};

use agentkeeper::proto as pb;
use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use prost::Message;

use crate::scenario::Scenario;
use crate::{Flags, Report, TargetKind, host, scrape};

/// What every stream of one row sends and how its answers are checked.
struct Plan {
    path: &'static str,
    /// One call per stream (unary) instead of one long stream per worker.
    unary: bool,
    /// One framed request per worker (its own agents, or its own lease).
    bodies: Vec<Bytes>,
    check: fn(&[u8]) -> Result<(), String>,
}

/// Set-up, warm-up, the measured run between the host's and the servers' counters.
pub async fn run(flags: &Flags) -> Result<Report, String> {
    crate::external_client_checks(flags, "h2")?;
    let target = flags.target.clone();
    let workers = flags.connections * flags.concurrency;
    let batch = crate::items_per_operation(flags);
    let plan = plan(flags, workers, batch).await?;
    let (connections, warmup, duration) = (flags.connections, flags.warmup, flags.duration);
    // The measured phase starts when the warm-up ends; the counters and /proc are read then.
    let (phase_start, phase_started) = tokio::sync::oneshot::channel::<()>();
    let driving = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(drive(&target, plan, connections, warmup, duration, phase_start))
    });
    let _ = phase_started.await;
    let selectors: [&str; 0] = [];
    let counters_start = scrape::read_all(&flags.scrape, &selectors).await;
    let host_start = host::Sample::take(&flags.cpu_pids);
    let started = Instant::now();
    let seen = tokio::task::spawn_blocking(move || driving.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the h2 client's thread panicked".to_string())??;
    let elapsed = started.elapsed();
    let host_end = host::Sample::take(&flags.cpu_pids);
    let counters_end = scrape::read_all(&flags.scrape, &selectors).await;
    let metrics = scrape::deltas(&flags.scrape, counters_start, counters_end);
    let seconds = elapsed.as_secs_f64();
    let host = host_start.until(&host_end, seen.ok, elapsed);
    let measured = crate::Measured {
        ok: seen.ok,
        errors: seen.errors,
        first_error: seen.first_error,
        latency: seen.latency,
        seconds,
        items: batch,
    };
    Ok(Report::closed_loop(
        flags,
        crate::Client::H2,
        plan_work(flags),
        measured,
        host,
        metrics,
    ))
}

fn plan_work(flags: &Flags) -> &'static str {
    match (flags.target_kind, flags.scenario) {
        (TargetKind::Etcd, _) => "h2 client: LeaseKeepAlive, one lease per stream",
        (_, Scenario::Heartbeat) => "h2 client: unary Heartbeat, one stream a call",
        _ => "h2 client: RegistryService.KeepAlive, --batch agents a message",
    }
}

/// The streams' requests: ours after registering the agents (each worker its own `batch`
/// consecutive ones), etcd's after granting a lease per worker.
async fn plan(flags: &Flags, workers: usize, batch: usize) -> Result<Plan, String> {
    match (flags.target_kind, flags.scenario) {
        (TargetKind::Agentkeeper, Scenario::StreamHeartbeat) => {
            let agents = crate::register_agents(flags, batch).await?;
            let bodies = (0..workers)
                .map(|worker| {
                    let agent_ids = (0..batch)
                        .map(|i| agents[(worker * batch + i) % agents.len()].clone())
                        .collect();
                    framed(&pb::KeepAliveRequest {
                        agent_ids,
                        batch_id: worker as u64,
                    })
                })
                .collect();
            Ok(Plan {
                path: "/agentkeeper.v1.RegistryService/KeepAlive",
                unary: false,
                bodies,
                check: check_ours,
            })
        }
        (TargetKind::Agentkeeper, Scenario::Heartbeat) => {
            let agents = crate::register_agents(flags, workers).await?;
            let bodies = (0..workers)
                .map(|worker| {
                    framed(&pb::HeartbeatRequest {
                        agent_id: agents[worker % agents.len()].clone(),
                    })
                })
                .collect();
            Ok(Plan {
                path: "/agentkeeper.v1.RegistryService/Heartbeat",
                unary: true,
                bodies,
                check: check_heartbeat,
            })
        }
        #[cfg(feature = "peers")]
        (TargetKind::Etcd, Scenario::Heartbeat) => {
            if batch != 1 {
                return Err("etcd's LeaseKeepAlive renews one lease a message: --batch 1".into());
            }
            let channel = crate::connect(&flags.target, 1).await?.remove(0);
            let client = crate::peers::etcd_client(&channel).await?;
            let mut leases = client.lease_client();
            let mut bodies = Vec::with_capacity(workers);
            for _ in 0..workers {
                let granted = leases
                    .grant(600, None)
                    .await
                    .map_err(|e| format!("set-up etcd LeaseGrant: {e}"))?;
                bodies.push(framed(&EtcdLeaseKeepAliveRequest { id: granted.id() }));
            }
            Ok(Plan {
                path: "/etcdserverpb.Lease/LeaseKeepAlive",
                unary: false,
                bodies,
                check: check_etcd,
            })
        }
        (kind, scenario) => Err(format!(
            "--client h2 drives ours' stream-heartbeat and heartbeat, and etcd's heartbeat (LeaseKeepAlive), not {kind:?} {scenario:?}"
        )),
    }
}

/// etcd's `etcdserverpb.LeaseKeepAliveRequest` (`int64 ID = 1;`): etcd-client exports its request
/// types only with its server feature, so the one field is declared here.
#[cfg(feature = "peers")]
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdLeaseKeepAliveRequest {
    #[prost(int64, tag = "1")]
    id: i64,
}

fn framed(message: &impl Message) -> Bytes {
    Bytes::from(crate::h2load::frame(message))
}

fn check_ours(message: &[u8]) -> Result<(), String> {
    let answer = pb::KeepAliveResponse::decode(message).map_err(|e| format!("an answer does not decode: {e}"))?;
    match answer.results.iter().find(|r| r.code != 0) {
        None if !answer.results.is_empty() => Ok(()),
        None => Err("an answer with no results".into()),
        Some(failed) => Err(format!("an item failed: {} {}", failed.code, failed.message)),
    }
}

fn check_heartbeat(message: &[u8]) -> Result<(), String> {
    pb::HeartbeatResponse::decode(message)
        .map(drop)
        .map_err(|e| format!("an answer does not decode: {e}"))
}

#[cfg(feature = "peers")]
fn check_etcd(message: &[u8]) -> Result<(), String> {
    let answer = etcd_client::proto::PbLeaseKeepAliveResponse::decode(message)
        .map_err(|e| format!("an answer does not decode: {e}"))?;
    match answer.ttl > 0 {
        true => Ok(()),
        false => Err(format!("lease {} not found (ttl {})", answer.id, answer.ttl)),
    }
}

/// What the measured phase saw, all workers together.
struct Seen {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
}

/// Opens the connections and streams, runs `warmup` unrecorded (then says so on `phase_start`),
/// then `duration` recorded.
async fn drive(
    target: &str,
    plan: Plan,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    phase_start: tokio::sync::oneshot::Sender<()>,
) -> Result<Seen, String> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(target).await?);
    }
    let start = Instant::now();
    let record_from = start + warmup;
    let until = record_from + duration;
    let authority = if target.starts_with("unix:") {
        "localhost"
    } else {
        target
    };
    let uri = format!("http://{authority}{}", plan.path);
    let mut workers = tokio::task::JoinSet::new();
    for (index, body) in plan.bodies.into_iter().enumerate() {
        let sender = senders[index % connections].clone();
        let worker = Worker {
            uri: uri.clone(),
            body,
            check: plan.check,
            record_from,
            until,
        };
        workers.spawn(stream(sender, worker, plan.unary));
    }
    let timer = tokio::spawn(async move {
        tokio::time::sleep_until(record_from.into()).await;
        let _ = phase_start.send(());
    });
    let mut seen = Seen {
        ok: 0,
        errors: 0,
        first_error: None,
        latency: crate::histogram(),
    };
    while let Some(done) = workers.join_next().await {
        let worker = done.map_err(|e| format!("a stream's task: {e}"))?;
        seen.ok += worker.ok;
        seen.errors += worker.errors;
        if seen.first_error.is_none() {
            seen.first_error = worker.first_error;
        }
        seen.latency.add(&worker.latency).map_err(|e| e.to_string())?;
    }
    timer.abort();
    Ok(seen)
}

/// One HTTP/2 connection to `target` (HOST:PORT over TCP, or unix:PATH), driven by a task of
/// its own.
async fn connect(target: &str) -> Result<h2::client::SendRequest<Bytes>, String> {
    let handshake = |e: h2::Error| format!("HTTP/2 handshake with {target}: {e}");
    let (sender, connection) = match target.strip_prefix("unix:") {
        Some(path) => {
            let socket = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| format!("connect to {target}: {e}"))?;
            let (sender, connection) = h2::client::handshake(socket).await.map_err(handshake)?;
            (sender, tokio::spawn(connection))
        }
        None => {
            let tcp = tokio::net::TcpStream::connect(target)
                .await
                .map_err(|e| format!("connect to {target}: {e}"))?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            let (sender, connection) = h2::client::handshake(tcp).await.map_err(handshake)?;
            (sender, tokio::spawn(connection))
        }
    };
    tokio::spawn(async move {
        if let Ok(Err(error)) = connection.await {
            eprintln!("h2 client: a connection ended: {error}");
        }
    });
    Ok(sender)
}

/// What one worker sends, how it checks an answer, and when it records and stops.
struct Worker {
    uri: String,
    body: Bytes,
    check: fn(&[u8]) -> Result<(), String>,
    record_from: Instant,
    until: Instant,
}

impl Worker {
    /// Checks an answer to what was sent at `sent_at` and counts it once the warm-up is over;
    /// true when the run is over.
    fn answered(&self, message: &[u8], sent_at: Instant, seen: &mut Seen) -> Result<bool, String> {
        let answered_at = Instant::now();
        (self.check)(message)?;
        if sent_at >= self.record_from {
            seen.ok += 1;
            seen.latency
                .saturating_record(answered_at.duration_since(sent_at).as_micros().max(1) as u64);
        }
        Ok(answered_at >= self.until)
    }
}

/// One worker, one message in flight until `until`: on one long stream, or one stream a call.
async fn stream(sender: h2::client::SendRequest<Bytes>, worker: Worker, unary: bool) -> Seen {
    let mut seen = Seen {
        ok: 0,
        errors: 0,
        first_error: None,
        latency: crate::histogram(),
    };
    let conversation = match unary {
        true => calls(sender, &worker, &mut seen).await,
        false => converse(sender, &worker, &mut seen).await,
    };
    if let Err(error) = conversation {
        seen.errors += 1;
        seen.first_error.get_or_insert(error);
    }
    seen
}

fn grpc_request(uri: &str) -> Result<http::Request<()>, String> {
    http::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| e.to_string())
}

/// Unary calls, one after another, each on a stream of its own: headers and the message out,
/// the answer's headers, its message and its trailers (grpc-status 0) back.
async fn calls(mut sender: h2::client::SendRequest<Bytes>, worker: &Worker, seen: &mut Seen) -> Result<(), String> {
    let mut buffer = BytesMut::new();
    loop {
        sender = sender.ready().await.map_err(|e| format!("open a stream: {e}"))?;
        let sent_at = Instant::now();
        let (response, mut outbound) = sender
            .send_request(grpc_request(&worker.uri)?, false)
            .map_err(|e| format!("open a stream: {e}"))?;
        outbound
            .send_data(worker.body.clone(), true)
            .map_err(|e| format!("send: {e}"))?;
        let response = response.await.map_err(|e| format!("the answer: {e}"))?;
        if let Some(status) = response.headers().get("grpc-status") {
            return Err(format!("a call failed: grpc-status {status:?}"));
        }
        let mut inbound = response.into_body();
        buffer.clear();
        let message = next_message(&mut inbound, &mut buffer).await?;
        let trailers = inbound
            .trailers()
            .await
            .map_err(|e| format!("the answer's trailers: {e}"))?;
        match trailers.as_ref().and_then(|t| t.get("grpc-status")) {
            Some(status) if status == "0" => {}
            status => return Err(format!("a call failed: grpc-status {status:?}")),
        }
        if worker.answered(&message, sent_at, seen)? {
            return Ok(());
        }
    }
}

/// Messages on one long stream, each sent once the last is answered.
async fn converse(sender: h2::client::SendRequest<Bytes>, worker: &Worker, seen: &mut Seen) -> Result<(), String> {
    let mut sender = sender.ready().await.map_err(|e| format!("open a stream: {e}"))?;
    let (response, mut outbound) = sender
        .send_request(grpc_request(&worker.uri)?, false)
        .map_err(|e| format!("open a stream: {e}"))?;
    // The answer's headers come with the first answer (a server may hold them until then).
    outbound
        .send_data(worker.body.clone(), false)
        .map_err(|e| format!("send: {e}"))?;
    let mut sent_at = Instant::now();
    let response = response.await.map_err(|e| format!("the stream's answer: {e}"))?;
    if let Some(status) = response.headers().get("grpc-status") {
        return Err(format!("the stream ended at once: grpc-status {status:?}"));
    }
    let mut inbound = response.into_body();
    let mut buffer = BytesMut::new();
    loop {
        let message = next_message(&mut inbound, &mut buffer).await?;
        if worker.answered(&message, sent_at, seen)? {
            let _ = outbound.send_data(Bytes::new(), true);
            return Ok(());
        }
        outbound
            .send_data(worker.body.clone(), false)
            .map_err(|e| format!("send: {e}"))?;
        sent_at = Instant::now();
    }
}

/// The next whole gRPC message of the stream (its 5-byte prefix stripped), releasing the flow
/// control window of what was read.
async fn next_message(inbound: &mut h2::RecvStream, buffer: &mut BytesMut) -> Result<Bytes, String> {
    loop {
        if buffer.len() >= 5 {
            if buffer[0] != 0 {
                return Err(format!("a compressed answer (flag {})", buffer[0]));
            }
            let length = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
            if buffer.len() >= 5 + length {
                buffer.advance(5);
                return Ok(buffer.split_to(length).freeze());
            }
        }
        match inbound.data().await {
            Some(Ok(data)) => {
                let _ = inbound.flow_control().release_capacity(data.len());
                buffer.extend_from_slice(&data);
            }
            Some(Err(error)) => return Err(format!("the stream failed: {error}")),
            None => {
                let status = match inbound.trailers().await {
                    Ok(Some(trailers)) => format!("{:?}", trailers.get("grpc-status")),
                    _ => "no trailers".into(),
                };
                return Err(format!("the server ended the stream ({status})"));
            }
        }
    }
}
