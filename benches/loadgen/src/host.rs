//! What the host did during the measured phase: the CPU time of the servers under test (every
//! process named by `--cpu-pids`, e.g. the three nodes of a cluster), of this load generator, of
//! the whole machine, and the load average, all read from /proc at the phase's start and end.
//! On a shared machine these say what each operation cost and how much of the CPU others took.
//!
//! Invariant: reads /proc only; a process that cannot be read (gone, or not Linux) is reported
//! as an error string, never a panic, and never as zero CPU.

use std::time::Duration;

/// CPU counters at one instant.
pub struct Sample {
    /// utime + stime of each `--cpu-pids` process, in clock ticks (None: unreadable).
    servers: Vec<(u32, Result<u64, String>)>,
    /// utime + stime of this process, in clock ticks.
    client: Result<u64, String>,
    /// Busy and total jiffies of the machine (all CPUs, /proc/stat's first line).
    machine: Result<(u64, u64), String>,
    load_average: Option<[f64; 3]>,
}

#[derive(serde::Serialize)]
pub struct HostReport {
    /// CPU seconds each server process used during the phase.
    pub server_cpu_seconds: Vec<ProcessCpu>,
    /// The servers' CPU per operation, all processes together, µs (None: a process unreadable).
    pub server_cpu_us_per_op: Option<f64>,
    /// This load generator's CPU per operation, µs.
    pub client_cpu_us_per_op: Option<f64>,
    /// Cores busy on the whole machine, on average over the phase.
    pub machine_busy_cores: Option<f64>,
    /// Of those, cores busy with neither the servers nor this load generator: the noise.
    pub other_busy_cores: Option<f64>,
    pub cores: usize,
    /// /proc/loadavg (1, 5, 15 min) when the phase began and when it ended.
    pub load_average_start: Option<[f64; 3]>,
    pub load_average_end: Option<[f64; 3]>,
}

#[derive(serde::Serialize)]
pub struct ProcessCpu {
    pub pid: u32,
    pub seconds: Option<f64>,
    pub error: Option<String>,
}

impl Sample {
    pub fn take(pids: &[u32]) -> Sample {
        Sample {
            servers: pids
                .iter()
                .map(|&pid| (pid, process_ticks(&format!("/proc/{pid}/stat"))))
                .collect(),
            client: process_ticks("/proc/self/stat"),
            machine: machine_jiffies(),
            load_average: load_average(),
        }
    }

    /// What happened between `self` (the start) and `end`, over `operations` operations.
    pub fn until(&self, end: &Sample, operations: u64, elapsed: Duration) -> HostReport {
        assert_eq!(self.servers.len(), end.servers.len(), "the same processes at both ends");
        let tick = ticks_per_second();
        let seconds = |a: &Result<u64, String>, b: &Result<u64, String>| match (a, b) {
            (Ok(a), Ok(b)) => Ok(b.saturating_sub(*a) as f64 / tick),
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        };
        let server_cpu_seconds: Vec<ProcessCpu> = (self.servers.iter().zip(&end.servers))
            .map(|((pid, a), (_, b))| match seconds(a, b) {
                Ok(s) => ProcessCpu {
                    pid: *pid,
                    seconds: Some(s),
                    error: None,
                },
                Err(e) => ProcessCpu {
                    pid: *pid,
                    seconds: None,
                    error: Some(e),
                },
            })
            .collect();
        // None without --cpu-pids, or when one of them could not be read.
        let servers: Option<f64> = match server_cpu_seconds.is_empty() {
            true => None,
            false => server_cpu_seconds.iter().map(|p| p.seconds).sum(),
        };
        let client = seconds(&self.client, &end.client).ok();
        let per_op = |s: f64| (operations > 0).then(|| s * 1e6 / operations as f64);
        let wall = elapsed.as_secs_f64();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let machine_busy_cores = match (&self.machine, &end.machine) {
            // Jiffies count every CPU: busy / total of the delta is the busy share of all cores.
            (Ok((busy_a, total_a)), Ok((busy_b, total_b))) if total_b > total_a => {
                Some((busy_b - busy_a) as f64 / (total_b - total_a) as f64 * cores as f64)
            }
            _ => None,
        };
        let ours = servers.unwrap_or(0.0) + client.unwrap_or(0.0);
        HostReport {
            server_cpu_us_per_op: servers.and_then(per_op),
            client_cpu_us_per_op: client.and_then(per_op),
            other_busy_cores: machine_busy_cores.map(|busy| (busy - ours / wall).max(0.0)),
            machine_busy_cores,
            cores,
            server_cpu_seconds,
            load_average_start: self.load_average,
            load_average_end: end.load_average,
        }
    }
}

/// utime + stime (fields 14 and 15) of /proc/PID/stat, in clock ticks. The command name in
/// field 2 may hold spaces and parentheses, so the fields are counted after its last ')'.
fn process_ticks(path: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let after_name = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or(format!("{path}: no ')'"))?;
    // After the name: field 3 (state) is the first, so utime (14) and stime (15) are the 12th and 13th.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("{path}: field {} unreadable", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// The first line of /proc/stat: (busy, total) jiffies over all CPUs; idle and iowait are not busy.
fn machine_jiffies() -> Result<(u64, u64), String> {
    let text = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let line = text.lines().next().ok_or("/proc/stat: empty")?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    if values.len() < 5 {
        return Err(format!("/proc/stat: short cpu line {line:?}"));
    }
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values[3] + values[4];
    Ok((total - idle, total))
}

fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut values = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([values.next()??, values.next()??, values.next()??])
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(ticks > 0, "sysconf(_SC_CLK_TCK) answers a positive tick rate");
    ticks as f64
}
