//! `--driver h2load`: unary gRPC driven by nghttp2's h2load instead of the tonic client, so the
//! client costs a fraction of the server and the daemons' own throughput shows. Writes the
//! call's request as a gRPC body (a 5-byte length prefix and the protobuf message, checked by
//! decoding it back), makes one call with curl and reads its `grpc-status`, runs h2load once to
//! warm up and once measured (`--log-file`: each request's status and latency), and checks
//! with the server's own counters that the calls it served succeeded (h2load sees only HTTP
//! status, and a failed gRPC call is HTTP 200 with a non-zero grpc-status).
//!
//! Invariant: every request carries the same body (h2load posts one file), so each row names
//! the one agent or key it touches; nothing here is timed but h2load's measured run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agentkeeper::proto as pb;
use hdrhistogram::Histogram;

pub use crate::h2load_command::frame;
use crate::h2load_command::{self, counts};
use crate::scenario::Scenario;
use crate::{Flags, Report, TargetKind, host, scrape};

/// Set-up as the tonic client's runs make it (agents registered; etcd's keys put), one curl
/// call checked, h2load's warm-up, then its measured run between the host's and the servers'
/// counters; the report is the load generator's own, so compare.sh treats both alike.
pub async fn run(flags: &Flags) -> Result<Report, String> {
    crate::external_client_checks(flags, "h2load")?;
    let target = flags.target.as_str();
    let agent_id = match flags.target_kind {
        TargetKind::Agentkeeper => {
            let agents = crate::register_agents(flags, 1).await?;
            agents.first().cloned().ok_or("set-up registered no agent")?
        }
        #[cfg(feature = "peers")]
        TargetKind::Etcd => {
            let channel = crate::connect(target, 1).await?.remove(0);
            let client = crate::peers::etcd_client(&channel).await?;
            crate::peers::etcd_set_up(&client, flags.scenario, flags.agents.max(1)).await?;
            String::new()
        }
        other => return Err(format!("--client h2load drives agentkeeper and etcd, not {other:?}")),
    };
    let call = call(flags.target_kind, flags.scenario, &agent_id)?;
    let dir = work_dir()?;
    let body = write_body(&call, &dir)?;
    let checked = check_with_curl(target, &call, &body)?;
    eprintln!("h2load: one call checked with curl: {checked}");
    let (connections, streams) = (flags.connections, flags.concurrency);
    let (owned_target, owned_call, owned_body) = (target.to_string(), clone(&call), body.clone());
    let warmup = flags.warmup;
    tokio::task::spawn_blocking(move || warm_up(&owned_target, &owned_call, &owned_body, connections, streams, warmup))
        .await
        .map_err(|e| format!("h2load warm-up: {e}"))??;
    let selectors = [call.served, call.failed];
    let counters_start = scrape::read_all(&flags.scrape, &selectors).await;
    let host_start = host::Sample::take(&flags.cpu_pids);
    let started = Instant::now();
    let (owned_target, owned_call, owned_dir, duration) =
        (target.to_string(), clone(&call), dir.clone(), flags.duration);
    let seen = tokio::task::spawn_blocking(move || {
        measure(
            &owned_target,
            &owned_call,
            &body,
            &owned_dir,
            connections,
            streams,
            duration,
        )
    })
    .await
    .map_err(|e| format!("h2load: {e}"))?;
    let elapsed = started.elapsed();
    let host_end = host::Sample::take(&flags.cpu_pids);
    let counters_end = scrape::read_all(&flags.scrape, &selectors).await;
    let _ = std::fs::remove_dir_all(&dir);
    let mut seen = seen?;
    for line in &seen.summary {
        eprintln!("h2load: {line}");
    }
    let metrics = scrape::deltas(&flags.scrape, counters_start, counters_end);
    check_served(&call, &metrics, &mut seen);
    // The seconds h2load measured over are its own ("finished in"); the host's over the run.
    let seconds = seen.seconds.unwrap_or(elapsed.as_secs_f64());
    let mut host = host_start.until(&host_end, seen.ok, elapsed);
    host.client_cpu_us_per_op = (seen.ok > 0).then(|| seen.client_cpu_seconds * 1e6 / seen.ok as f64);
    let servers: f64 = host.server_cpu_seconds.iter().filter_map(|p| p.seconds).sum();
    host.other_busy_cores = host
        .machine_busy_cores
        .map(|busy| (busy - (servers + seen.client_cpu_seconds) / elapsed.as_secs_f64()).max(0.0));
    let measured = crate::Measured {
        ok: seen.ok,
        errors: seen.errors,
        first_error: seen.first_error,
        latency: seen.latency,
        seconds,
        items: 1,
    };
    Ok(Report::closed_loop(
        flags,
        crate::Client::H2load,
        call.work,
        measured,
        host,
        metrics,
    ))
}

fn clone(call: &Call) -> Call {
    Call {
        path: call.path,
        body: call.body.clone(),
        work: call.work,
        served: call.served,
        failed: call.failed,
    }
}

/// h2load counts HTTP statuses only: the server's own counters must show at least as many
/// successful calls as h2load saw 2xx answers, and no more failed ones than the requests h2load
/// abandoned at its end. Otherwise the shortfall and the failures are errors. Without
/// `--scrape` nothing is checked here (curl checked one call).
fn check_served(call: &Call, metrics: &[scrape::NodeMetrics], seen: &mut Seen) {
    // Summed over the nodes: in a cluster the node h2load calls serves every call, whichever
    // node the write then goes through.
    let (mut served, mut failed, mut answered) = (0, 0, 0);
    for node in metrics {
        if let Some(error) = &node.error {
            seen.first_error
                .get_or_insert_with(|| format!("scrape {}: {error}", node.address));
            continue;
        }
        answered += 1;
        served += node.delta.get(call.served).copied().unwrap_or(0.0) as u64;
        failed += node.delta.get(call.failed).copied().unwrap_or(0.0) as u64;
    }
    if answered == 0 {
        return;
    }
    eprintln!(
        "h2load: the server{} counted {served} successful and {failed} failed calls over the run; h2load saw {} answered 2xx and abandoned {} at its end",
        if answered > 1 { "s" } else { "" },
        seen.ok,
        seen.abandoned
    );
    if failed > seen.abandoned || served < seen.ok {
        let why = format!(
            "the server counted {served} successful and {failed} failed calls for {} 2xx answers ({} abandoned)",
            seen.ok, seen.abandoned
        );
        let missing = (seen.ok.saturating_sub(served))
            .max(failed - failed.min(seen.abandoned))
            .min(seen.ok);
        seen.errors += missing;
        seen.ok -= missing;
        seen.first_error.get_or_insert(why);
    }
}

/// One unary call h2load repeats: its HTTP/2 path, its framed body, and what it is.
pub struct Call {
    pub path: &'static str,
    pub body: Vec<u8>,
    pub work: &'static str,
    /// The server's counter of this call's successes, and of its failures, as `scrape`
    /// selectors.
    pub served: &'static str,
    pub failed: &'static str,
}

/// The message a framed body carries, refused unless the body is exactly one uncompressed
/// message of the length its prefix says.
pub fn unframe<M: prost::Message + Default>(body: &[u8]) -> Result<M, String> {
    let [flag, a, b, c, d, message @ ..] = body else {
        return Err(format!(
            "a gRPC body has a 5-byte prefix; this one has {} bytes",
            body.len()
        ));
    };
    if *flag != 0 {
        return Err(format!("compressed-flag {flag}, expected 0"));
    }
    let length = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if length != message.len() {
        return Err(format!("the prefix says {length} bytes, {} follow", message.len()));
    }
    M::decode(message).map_err(|e| format!("the message does not decode: {e}"))
}

/// Frames `message` and checks the frame decodes back to it.
fn checked<M: prost::Message + Default + PartialEq>(message: M) -> Result<Vec<u8>, String> {
    let body = frame(&message);
    let back: M = unframe(&body)?;
    if back != message {
        return Err("the framed body decodes to another message".into());
    }
    Ok(body)
}

/// etcd's PutRequest or RangeRequest, framed: etcd-client builds them (its `TxnOp`, whose
/// request is the unary call's own message) without exporting their types by name.
#[cfg(feature = "peers")]
fn etcd_request(op: etcd_client::TxnOp) -> Result<Vec<u8>, String> {
    use etcd_client::proto::PbTxnOpRequest;
    match PbTxnOpRequest::from(op) {
        PbTxnOpRequest::RequestPut(put) => checked(put),
        PbTxnOpRequest::RequestRange(range) => checked(range),
        _ => Err("only a put or a get is framed here".into()),
    }
}

/// The call of `scenario` on `kind`, for `agent_id` (ours; the first agent set-up registered).
pub fn call(kind: TargetKind, scenario: Scenario, agent_id: &str) -> Result<Call, String> {
    let agent_id = agent_id.to_string();
    match (kind, scenario) {
        (TargetKind::Agentkeeper, Scenario::Heartbeat) => Ok(Call {
            path: "/agentkeeper.v1.RegistryService/Heartbeat",
            body: checked(pb::HeartbeatRequest { agent_id })?,
            work: "h2load: unary Heartbeat, one agent",
            served: "agentkeeper_rpc_total{method=\"Heartbeat\"}",
            failed: "agentkeeper_rpc_errors_total{method=\"Heartbeat\"}",
        }),
        (TargetKind::Agentkeeper, Scenario::GetAgent) => Ok(Call {
            path: "/agentkeeper.v1.RegistryService/GetAgent",
            body: checked(pb::GetAgentRequest { agent_id })?,
            work: "h2load: unary GetAgent, one agent",
            served: "agentkeeper_rpc_total{method=\"GetAgent\"}",
            failed: "agentkeeper_rpc_errors_total{method=\"GetAgent\"}",
        }),
        // The same policy each time, as etcd's row puts the same key: one replicated, durable
        // write per call either way.
        (TargetKind::Agentkeeper, Scenario::SetPolicy) => Ok(Call {
            path: "/agentkeeper.v1.EntitlementsService/SetPolicy",
            body: checked(pb::SetPolicyRequest {
                policy: Some(crate::scenario::policy(0, pb::PolicyEffect::Allow)),
            })?,
            work: "h2load: unary SetPolicy, one policy",
            served: "agentkeeper_rpc_total{method=\"SetPolicy\"}",
            failed: "agentkeeper_rpc_errors_total{method=\"SetPolicy\"}",
        }),
        #[cfg(feature = "peers")]
        (TargetKind::Etcd, Scenario::SetPolicy) => Ok(Call {
            path: "/etcdserverpb.KV/Put",
            body: etcd_request(etcd_client::TxnOp::put("bench/put/0", crate::peers::value(), None))?,
            work: "h2load: Put, one key, 128-byte value (fsynced)",
            served: "grpc_server_handled_total{grpc_method=\"Put\",grpc_code=\"OK\"}",
            failed: "grpc_server_handled_total{grpc_method=\"Put\",grpc_code!=\"OK\"}",
        }),
        #[cfg(feature = "peers")]
        (TargetKind::Etcd, Scenario::GetAgent) => Ok(Call {
            path: "/etcdserverpb.KV/Range",
            body: etcd_request(etcd_client::TxnOp::get("bench/agent/0", None))?,
            work: "h2load: Range, one key (linearizable)",
            served: "grpc_server_handled_total{grpc_method=\"Range\",grpc_code=\"OK\"}",
            failed: "grpc_server_handled_total{grpc_method=\"Range\",grpc_code!=\"OK\"}",
        }),
        _ => Err(format!("--driver h2load has no {kind:?} call for {scenario:?}")),
    }
}

/// What h2load's measured run saw.
pub struct Seen {
    /// Requests answered 2xx (each one a latency in the histogram).
    pub ok: u64,
    /// Requests h2load finished otherwise: non-2xx, reset, errored, timed out.
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency: Histogram<u64>,
    /// h2load's own summary lines ("finished in", "requests:", "status codes:", ...).
    pub summary: Vec<String>,
    /// h2load's own CPU time (user + system), seconds.
    pub client_cpu_seconds: f64,
    /// The time h2load measured over ("finished in").
    pub seconds: Option<f64>,
    /// Requests h2load started but did not wait for: its time was up and it reset their
    /// streams. A server may count those as failed calls (etcd: `Unknown`, context canceled).
    pub abandoned: u64,
}

/// The h2load command line for `call` at `target` (HOST:PORT).
fn command(target: &str, call: &Call, body: &Path, connections: usize, streams: usize, duration: Duration) -> Command {
    h2load_command::command(
        &format!("http://{target}{}", call.path),
        body,
        connections,
        streams,
        duration,
    )
}

/// A request's status answered by the server with one curl call: the body is accepted and the
/// gRPC status is 0 (OK), else why not.
pub fn check_with_curl(target: &str, call: &Call, body: &Path) -> Result<String, String> {
    let output = Command::new("curl")
        .args(["--http2-prior-knowledge", "--silent", "--show-error", "--verbose"])
        .args(["--output", "/dev/null", "--max-time", "10"])
        .args(["--header", "content-type: application/grpc", "--header", "te: trailers"])
        .args(["--data-binary", &format!("@{}", body.display())])
        .arg(format!("http://{target}{}", call.path))
        .output()
        .map_err(|e| format!("curl: {e} (is curl installed?)"))?;
    let trace = String::from_utf8_lossy(&output.stderr);
    let status_line = trace.lines().find(|l| l.starts_with("< HTTP/2"));
    let grpc = trace
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("< grpc-status:"));
    match (status_line, grpc) {
        (Some(http), Some(grpc)) if http.contains(" 200") && grpc.trim_end().ends_with(": 0") => {
            Ok(format!("{} / {}", http.trim_end(), grpc.trim_end()))
        }
        _ => Err(format!(
            "curl {}: no HTTP 200 with grpc-status 0:\n{}",
            call.path,
            trace
                .lines()
                .filter(|l| l.starts_with('<'))
                .collect::<Vec<_>>()
                .join("\n")
        )),
    }
}

/// Runs h2load once (`log` set: with a per-request log, for the measured run).
fn run_once(mut h2load: Command, log: Option<&Path>) -> Result<(String, f64), String> {
    if let Some(log) = log {
        h2load.arg(format!("--log-file={}", log.display()));
    }
    let before = h2load_command::cpu_seconds(libc::RUSAGE_CHILDREN);
    let output = h2load
        .output()
        .map_err(|e| format!("h2load: {e} (is nghttp2-client installed?)"))?;
    let cpu = h2load_command::cpu_seconds(libc::RUSAGE_CHILDREN) - before;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    if !output.status.success() {
        return Err(format!(
            "h2load exited with {}: {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok((stdout, cpu))
}

/// Writes the call's body where h2load and curl read it: `dir`/body.bin.
pub fn write_body(call: &Call, dir: &Path) -> Result<PathBuf, String> {
    let body = dir.join("body.bin");
    std::fs::write(&body, &call.body).map_err(|e| format!("{}: {e}", body.display()))?;
    Ok(body)
}

/// An h2load run that is not measured (nothing is kept but its failure).
pub fn warm_up(
    target: &str,
    call: &Call,
    body: &Path,
    connections: usize,
    streams: usize,
    warmup: Duration,
) -> Result<(), String> {
    if warmup.is_zero() {
        return Ok(());
    }
    run_once(command(target, call, body, connections, streams, warmup), None).map(|_| ())
}

/// The measured h2load run: what each request answered, from its per-request log in `dir`.
pub fn measure(
    target: &str,
    call: &Call,
    body: &Path,
    dir: &Path,
    connections: usize,
    streams: usize,
    duration: Duration,
) -> Result<Seen, String> {
    let log = dir.join("requests.log");
    let (stdout, client_cpu_seconds) =
        run_once(command(target, call, body, connections, streams, duration), Some(&log))?;
    let text = std::fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut seen = read_log(&text)?;
    seen.client_cpu_seconds = client_cpu_seconds;
    seen.summary = summary(&stdout);
    seen.seconds = finished_in(&stdout);
    let summed = counts(&stdout)?;
    let count = |what: &str| summed.get(what).copied().unwrap_or(0);
    seen.abandoned = count("started").saturating_sub(count("done"));
    // Requests h2load gave up on are in its counts but not in the log.
    let unfinished = summed.get("errored").copied().unwrap_or(0) + summed.get("timeout").copied().unwrap_or(0);
    if unfinished > 0 {
        seen.errors += unfinished;
        seen.first_error
            .get_or_insert_with(|| format!("h2load: {unfinished} requests errored or timed out"));
    }
    Ok(seen)
}

/// The per-request log: start time (µs since the epoch), HTTP status, µs to the response's end.
fn read_log(text: &str) -> Result<Seen, String> {
    let mut seen = Seen {
        ok: 0,
        errors: 0,
        first_error: None,
        latency: crate::histogram(),
        summary: Vec::new(),
        client_cpu_seconds: 0.0,
        seconds: None,
        abandoned: 0,
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let (Some(status), Some(micros)) = (fields.get(1), fields.get(2)) else {
            return Err(format!("h2load's log: a line of {} fields: {line:?}", fields.len()));
        };
        let status: u32 = status.parse().map_err(|_| format!("h2load's log: status {status:?}"))?;
        let micros: u64 = micros
            .parse()
            .map_err(|_| format!("h2load's log: latency {micros:?}"))?;
        if (200..300).contains(&status) {
            seen.ok += 1;
            seen.latency.saturating_record(micros);
        } else {
            seen.errors += 1;
            seen.first_error.get_or_insert_with(|| format!("HTTP status {status}"));
        }
    }
    Ok(seen)
}

/// h2load's summary lines, as it printed them (its progress lines left out).
fn summary(stdout: &str) -> Vec<String> {
    let kept = [
        "finished in",
        "requests:",
        "status codes:",
        "traffic:",
        "time for request:",
    ];
    (stdout.lines())
        .filter(|l| kept.iter().any(|k| l.trim_start().starts_with(k)))
        .map(|l| l.trim_end().to_string())
        .collect()
}

/// The seconds of h2load's "finished in 5.00s, ..." line.
fn finished_in(stdout: &str) -> Option<f64> {
    let rest = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("finished in "))?;
    rest.split(',').next()?.trim().strip_suffix('s')?.parse().ok()
}

/// A fresh directory for the body and the log, under the system's temporary directory.
pub fn work_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("agentkeeper-h2load.{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(ok: u64, abandoned: u64) -> Seen {
        let mut seen = read_log("").unwrap();
        seen.ok = ok;
        seen.abandoned = abandoned;
        seen
    }

    fn served(ok: f64, failed: f64) -> Vec<scrape::NodeMetrics> {
        let call = call(TargetKind::Agentkeeper, Scenario::Heartbeat, "a").unwrap();
        vec![scrape::NodeMetrics {
            address: "server".into(),
            delta: [(call.served.to_string(), ok), (call.failed.to_string(), failed)].into(),
            error: None,
        }]
    }

    #[test]
    fn calls_the_server_did_not_count_as_successes_are_errors() {
        let call = call(TargetKind::Agentkeeper, Scenario::Heartbeat, "a").unwrap();
        let mut all_served = seen(100, 4);
        check_served(&call, &served(100.0, 4.0), &mut all_served);
        assert_eq!((all_served.ok, all_served.errors), (100, 0));
        // 2xx answers carrying a gRPC error: fewer successes than 2xx, more failures than abandoned.
        let mut failed = seen(100, 4);
        check_served(&call, &served(90.0, 14.0), &mut failed);
        assert_eq!((failed.ok, failed.errors), (90, 10));
        assert!(failed.first_error.unwrap().contains("90 successful and 14 failed"));
    }

    #[test]
    fn a_cluster_s_calls_count_once_whichever_node_served_them() {
        let call = call(TargetKind::Agentkeeper, Scenario::SetPolicy, "a").unwrap();
        let node = |address: &str, ok: f64| scrape::NodeMetrics {
            address: address.into(),
            delta: [(call.served.to_string(), ok), (call.failed.to_string(), 0.0)].into(),
            error: None,
        };
        // The called node served all of them; the other two none.
        let mut all_served = seen(100, 0);
        let nodes = [node("n1", 0.0), node("n2", 100.0), node("n3", 0.0)];
        check_served(&call, &nodes, &mut all_served);
        assert_eq!((all_served.ok, all_served.errors), (100, 0));
        // Together short of h2load's 2xx answers: the shortfall is errors.
        let mut short = seen(100, 0);
        let nodes = [node("n1", 30.0), node("n2", 60.0), node("n3", 0.0)];
        check_served(&call, &nodes, &mut short);
        assert_eq!((short.ok, short.errors), (90, 10));
    }

    #[test]
    fn a_framed_heartbeat_is_the_prefix_and_the_message_and_decodes_back() {
        let request = pb::HeartbeatRequest {
            agent_id: "0123456789abcdef0123456789abcdef".into(),
        };
        let body = frame(&request);
        // Field 1, length-delimited (0x0a), 32 bytes: 34 bytes of message after the prefix.
        assert_eq!(&body[..7], &[0, 0, 0, 0, 34, 0x0a, 32]);
        assert_eq!(body.len(), 5 + 34);
        assert_eq!(unframe::<pb::HeartbeatRequest>(&body).unwrap(), request);
    }

    #[test]
    fn unframe_refuses_a_wrong_length_a_compressed_flag_and_a_short_body() {
        let mut body = frame(&pb::GetAgentRequest { agent_id: "x".into() });
        body.push(0);
        assert!(
            unframe::<pb::GetAgentRequest>(&body)
                .unwrap_err()
                .contains("prefix says")
        );
        let mut compressed = frame(&pb::GetAgentRequest { agent_id: "x".into() });
        compressed[0] = 1;
        assert!(
            unframe::<pb::GetAgentRequest>(&compressed)
                .unwrap_err()
                .contains("compressed")
        );
        assert!(unframe::<pb::GetAgentRequest>(&[0, 0, 0]).is_err());
    }

    #[test]
    fn the_log_counts_2xx_as_latencies_and_anything_else_as_errors() {
        let log = "1700000000000000\t200\t120\n1700000000000100\t200\t80\n1700000000000200\t503\t9\n";
        let seen = read_log(log).unwrap();
        assert_eq!((seen.ok, seen.errors), (2, 1));
        assert_eq!(seen.latency.max(), 120);
        assert_eq!(seen.first_error.as_deref(), Some("HTTP status 503"));
        assert!(read_log("garbage\n").is_err());
    }

    #[test]
    fn the_requests_line_is_read_by_name() {
        let out = "finished in 5.00s, 2000.00 req/s, 1MB/s\n\
                   requests: 10000 total, 10010 started, 10000 done, 9990 succeeded, 10 failed, 3 errored, 1 timeout\n\
                   status codes: 9990 2xx, 0 3xx, 0 4xx, 7 5xx\n";
        let counts = counts(out).unwrap();
        assert_eq!(counts["done"], 10000);
        assert_eq!(counts["errored"], 3);
        assert_eq!(counts["timeout"], 1);
        assert_eq!(summary(out).len(), 3);
        assert_eq!(finished_in(out), Some(5.0));
    }
}
