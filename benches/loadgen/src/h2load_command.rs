//! What every h2load run of the load generator shares: the gRPC body it posts, the command line
//! (the hot suite's rows and `h2-floor` run the very same), the counts of its "requests:" line,
//! and the CPU time read around it.
//!
//! Invariant: knows h2load and gRPC framing only, nothing of a scenario or a server, so that any
//! binary of this crate can include it (`h2-floor` does, by `#[path]`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// gRPC's length-prefixed message: flag 0 (not compressed), the length big-endian, the bytes.
pub fn frame(message: &impl prost::Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let length = u32::try_from(bytes.len()).expect("a request under 4 GiB");
    let mut body = Vec::with_capacity(5 + bytes.len());
    body.push(0);
    body.extend_from_slice(&length.to_be_bytes());
    body.extend_from_slice(&bytes);
    body
}

/// h2load posting `body` to `url` as gRPC: `connections` x `streams`, one thread, for `duration`.
pub fn command(url: &str, body: &Path, connections: usize, streams: usize, duration: Duration) -> Command {
    let mut h2load = Command::new("h2load");
    h2load
        .arg(url)
        .args(["--data", &body.display().to_string()])
        .args(["--header", "content-type: application/grpc", "--header", "te: trailers"])
        .args(["--clients", &connections.to_string()])
        .args(["--max-concurrent-streams", &streams.to_string()])
        .args(["--threads", "1"])
        .args(["--duration", &format!("{}ms", duration.as_millis().max(1))]);
    h2load
}

/// The counts of h2load's "requests:" line ("N total, N started, N done, N succeeded, ...").
pub fn counts(stdout: &str) -> Result<BTreeMap<String, u64>, String> {
    let line = (stdout.lines())
        .find_map(|l| l.trim_start().strip_prefix("requests:"))
        .ok_or("h2load printed no requests: line")?;
    let mut counts = BTreeMap::new();
    for part in line.split(',') {
        let mut words = part.split_whitespace();
        if let (Some(n), Some(what)) = (words.next(), words.next()) {
            let n: u64 = n.parse().map_err(|_| format!("h2load's requests line: {part:?}"))?;
            counts.insert(what.to_string(), n);
        }
    }
    Ok(counts)
}

/// User + system CPU, in seconds, of `who`: `libc::RUSAGE_SELF` (this process, every thread)
/// or `libc::RUSAGE_CHILDREN` (the children it waited for: h2load's).
pub fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct it is given; a zeroed rusage is a valid one.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the callers pass RUSAGE_SELF or RUSAGE_CHILDREN, both valid.
    let rc = unsafe { libc::getrusage(who, &mut usage) };
    assert_eq!(rc, 0, "getrusage cannot fail with a valid `who` and pointer");
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
