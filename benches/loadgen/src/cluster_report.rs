//! `cluster-report`: reads the JSON benches/compare.sh --suite cluster wrote and prints, as
//! Markdown, the tables of BENCHMARKS.md's "Cluster" section: throughput, latency and CPU per
//! operation of each row (medians over the runs), the ratios the goals name, where a
//! write's time goes (the servers' own counters), and the failover times over every kill.
//!
//!   cluster-report --results benches/results/cluster.json
//!
//! Invariant: every figure is a median over the runs of its row, each column its own median
//! (so a row's p50 and its ops/s may come from different runs); the spread of ops/s is shown
//! beside it. Failover percentiles are nearest-rank over the kills: below 100 kills, p99 is
//! the slowest kill.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(
    name = "cluster-report",
    about = "Tables of benches/compare.sh --suite cluster results"
)]
struct Flags {
    /// The JSON object compare.sh --suite cluster wrote.
    #[arg(long)]
    results: PathBuf,
}

fn main() {
    let flags = Flags::parse();
    let text = match std::fs::read_to_string(&flags.results) {
        Ok(text) => text,
        Err(e) => fail(format!("{}: {e}", flags.results.display())),
    };
    let results: Value = serde_json::from_str(&text).unwrap_or_else(|e| fail(format!("not JSON: {e}")));
    let rows = rows(&results).unwrap_or_else(|e| fail(e));
    print_header(&results);
    print_rows(&rows);
    print_ratios(&rows);
    print_costs(&rows);
    print_failover(&results);
}

fn fail(message: String) -> ! {
    eprintln!("cluster-report: {message}");
    std::process::exit(1);
}

/// Every run of one row: the same work, system and shape.
struct Row {
    item: String,
    system: String,
    shape: String,
    runs: Vec<Value>,
}

fn rows(results: &Value) -> Result<Vec<Row>, String> {
    let runs = results["runs"].as_array().ok_or("no runs array")?;
    let mut rows: Vec<Row> = Vec::new();
    for run in runs {
        let report = &run["report"];
        let key = (
            run["item"].as_str().ok_or("a run without item")?.to_string(),
            run["system"].as_str().ok_or("a run without system")?.to_string(),
            format!("{}x{}", report["connections"], report["concurrency"]),
        );
        match rows
            .iter_mut()
            .find(|r| (&r.item, &r.system, &r.shape) == (&key.0, &key.1, &key.2))
        {
            Some(row) => row.runs.push(report.clone()),
            None => rows.push(Row {
                item: key.0,
                system: key.1,
                shape: key.2,
                runs: vec![report.clone()],
            }),
        }
    }
    // Grouped by work and shape, the systems in the order they ran.
    rows.sort_by_key(|r| (r.item.clone(), shape_order(&r.shape)));
    Ok(rows)
}

fn shape_order(shape: &str) -> u64 {
    let (c, s) = shape.split_once('x').unwrap_or((shape, "1"));
    c.parse::<u64>().unwrap_or(0) * s.parse::<u64>().unwrap_or(0)
}

/// The median of the values `pick` finds in the runs (the lower middle one for an even count).
fn median(runs: &[Value], pick: impl Fn(&Value) -> Option<f64>) -> Option<f64> {
    let mut values: Vec<f64> = runs.iter().filter_map(pick).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[(values.len() - 1) / 2])
}

fn ops(r: &Value) -> Option<f64> {
    r["ops_per_second"].as_f64()
}

fn micros(us: Option<f64>) -> String {
    match us {
        None => "—".into(),
        Some(us) if us >= 10_000.0 => format!("{:.1} ms", us / 1000.0),
        Some(us) => format!("{us:.0} µs"),
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.decimals$}"))
}

fn print_header(results: &Value) {
    let m = &results["machine"];
    println!(
        "commit {}, {}; etcd {}; {} cores ({}), {}, kernel {}; load average {} before, {} after",
        results["commit"].as_str().unwrap_or("?"),
        results["daemon"].as_str().unwrap_or("?"),
        results["etcd"].as_str().unwrap_or("?"),
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        m["memory"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        results["load_average_before"].as_str().unwrap_or("?"),
        results["load_average_after"].as_str().unwrap_or("?"),
    );
    println!();
}

fn print_rows(rows: &[Row]) {
    println!(
        "| work | clients x in flight | system | ops/s | runs' ops/s | p50 | p99 | server CPU per op (all nodes) | client CPU per op | others' cores busy | load avg (1 min) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let spread: Vec<String> = row.runs.iter().filter_map(ops).map(thousands).collect();
        let host = |key: &'static str| move |r: &Value| r["host"][key].as_f64();
        let latency = |key: &'static str| move |r: &Value| r["latency_us"][key].as_f64();
        let loads: Vec<f64> = (row.runs.iter())
            .filter_map(|r| r["host"]["load_average_end"][0].as_f64())
            .collect();
        let load = match loads
            .iter()
            .copied()
            .reduce(f64::min)
            .zip(loads.iter().copied().reduce(f64::max))
        {
            Some((lo, hi)) if (hi - lo).abs() < 0.005 => format!("{lo:.2}"),
            Some((lo, hi)) => format!("{lo:.2}-{hi:.2}"),
            None => "—".into(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.item,
            row.shape,
            row.system,
            median(&row.runs, ops).map_or("—".into(), thousands),
            spread.join(" / "),
            micros(median(&row.runs, latency("p50"))),
            micros(median(&row.runs, latency("p99"))),
            micros(median(&row.runs, host("server_cpu_us_per_op"))),
            micros(median(&row.runs, host("client_cpu_us_per_op"))),
            opt(median(&row.runs, host("other_busy_cores")), 2),
            load,
        );
    }
    println!();
}

/// The ratios the goals name: AgentKeeper's 3 nodes against etcd's (the same path: leader or
/// follower) and against one node.
fn print_ratios(rows: &[Row]) {
    // The median ops/s of the row of this work and shape whose system starts and ends so.
    let find = |item: &str, shape: &str, starts: &str, ends: &str| -> Option<f64> {
        let row = rows
            .iter()
            .find(|r| r.item == item && r.shape == shape && r.system.starts_with(starts) && r.system.ends_with(ends))?;
        median(&row.runs, ops)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "—".into(),
    };
    println!(
        "| work | clients x in flight | 3 nodes / etcd 3 nodes, to the leader | to a follower | 3 nodes (leader) / 1 node |"
    );
    println!("|---|---|---|---|---|");
    let mut seen = Vec::new();
    for row in rows {
        if seen.contains(&(&row.item, &row.shape)) {
            continue;
        }
        seen.push((&row.item, &row.shape));
        let (item, shape) = (row.item.as_str(), row.shape.as_str());
        let ours_leader = find(item, shape, "agentkeeper, 3 nodes", "to the leader");
        println!(
            "| {item} | {shape} | {} | {} | {} |",
            ratio(ours_leader, find(item, shape, "etcd", "to the leader")),
            ratio(
                find(item, shape, "agentkeeper, 3 nodes", "to a follower"),
                find(item, shape, "etcd", "to a follower")
            ),
            ratio(ours_leader, find(item, shape, "agentkeeper, 1 node", "")),
        );
    }
    println!();
}

/// Sums a counter's change over every node of a run; None when no node exposes it.
fn counter(run: &Value, name: &str) -> Option<f64> {
    let nodes = run["metrics"].as_array()?;
    let values: Vec<f64> = nodes.iter().filter_map(|n| n["delta"][name].as_f64()).collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Each node's CPU per operation in a run, the busiest node first (the leader, as a rule).
fn cpu_per_node(run: &Value) -> Option<Vec<f64>> {
    let operations = run["operations"].as_f64().filter(|n| *n > 0.0)?;
    let nodes = run["host"]["server_cpu_seconds"].as_array()?;
    let mut each: Vec<f64> = (nodes.iter())
        .map(|n| n["seconds"].as_f64().map(|s| s * 1e6 / operations))
        .collect::<Option<_>>()?;
    each.sort_by(|a, b| b.total_cmp(a));
    Some(each)
}

/// Where a write's time goes, from the servers' own counters over the measured phase (every
/// node summed): log syncs per operation and their mean time, and for ours the batch size and
/// the proposal time (proposal, or forward to the leader, to applied); and each node's CPU.
fn print_costs(rows: &[Row]) {
    println!(
        "| work | clients x in flight | system | fsyncs per op (all nodes) | mean fsync | commands per core batch | proposal to applied (mean) | CPU per op, each node (busiest first) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        let operations = |r: &Value| r["operations"].as_f64().filter(|n| *n > 0.0);
        let per_op = |name: &'static str| move |r: &Value| Some(counter(r, name)? / operations(r)?);
        let mean = |sum: &'static str, count: &'static str| {
            move |r: &Value| {
                let count = counter(r, count).filter(|c| *c > 0.0)?;
                Some(counter(r, sum)? / count)
            }
        };
        let (syncs, sync_time) = if row.system.starts_with("etcd") {
            (
                median(&row.runs, per_op("etcd_disk_wal_fsync_duration_seconds_count")),
                median(
                    &row.runs,
                    mean(
                        "etcd_disk_wal_fsync_duration_seconds_sum",
                        "etcd_disk_wal_fsync_duration_seconds_count",
                    ),
                ),
            )
        } else {
            (
                median(&row.runs, per_op("agentkeeper_store_syncs_total")),
                median(
                    &row.runs,
                    mean(
                        "agentkeeper_store_sync_seconds_sum",
                        "agentkeeper_store_sync_seconds_count",
                    ),
                ),
            )
        };
        let batch = median(
            &row.runs,
            mean(
                "agentkeeper_core_batch_commands_sum",
                "agentkeeper_core_batch_commands_count",
            ),
        );
        let proposal = median(
            &row.runs,
            mean(
                "agentkeeper_cluster_proposal_seconds_sum",
                "agentkeeper_cluster_proposal_seconds_count",
            ),
        );
        let nodes = (row.runs.iter().filter_map(cpu_per_node).map(|n| n.len()).max()).unwrap_or(0);
        let each: Vec<String> = (0..nodes)
            .map(|i| micros(median(&row.runs, |r| cpu_per_node(r)?.get(i).copied())))
            .collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.item,
            row.shape,
            row.system,
            opt(syncs, 3),
            micros(sync_time.map(|s| s * 1e6)),
            opt(batch, 1),
            micros(proposal.map(|s| s * 1e6)),
            each.join(" / "),
        );
    }
    println!();
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn print_failover(results: &Value) {
    let Some(kills) = results["failover"].as_array() else {
        return;
    };
    let mut by_system: BTreeMap<String, (Vec<f64>, usize, Vec<f64>)> = BTreeMap::new();
    for kill in kills {
        let system = kill["system"].as_str().unwrap_or("?").to_string();
        let entry = by_system.entry(system).or_default();
        match kill["report"]["failover_ms"].as_f64() {
            Some(ms) => entry.0.push(ms),
            None => entry.1 += 1,
        }
        let load: Option<f64> = kill["report"]["load_average"]
            .as_str()
            .and_then(|l| l.split_whitespace().next()?.parse().ok());
        entry.2.extend(load);
    }
    if by_system.is_empty() {
        return;
    }
    println!(
        "| system | kills | no write acknowledged | min | p50 | p90 | p99 | max | mean | load avg (1 min) at the kills |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (system, (mut times, missed, loads)) in by_system {
        times.sort_by(f64::total_cmp);
        let ms = |v: f64| format!("{v:.0} ms");
        let cell = |q: f64| {
            if times.is_empty() {
                "—".to_string()
            } else {
                ms(percentile(&times, q))
            }
        };
        let mean = (!times.is_empty()).then(|| times.iter().sum::<f64>() / times.len() as f64);
        let lo = loads.iter().copied().reduce(f64::min);
        let hi = loads.iter().copied().reduce(f64::max);
        println!(
            "| {system} | {} | {missed} | {} | {} | {} | {} | {} | {} | {} |",
            times.len() + missed,
            times.first().map_or("—".into(), |v| ms(*v)),
            cell(0.5),
            cell(0.9),
            cell(0.99),
            times.last().map_or("—".into(), |v| ms(*v)),
            mean.map_or("—".into(), ms),
            match (lo, hi) {
                (Some(lo), Some(hi)) => format!("{lo:.2}-{hi:.2}"),
                _ => "—".into(),
            },
        );
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_is_nearest_rank_so_p99_of_fewer_than_100_is_the_largest() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 10.0);
        assert_eq!(percentile(&values, 0.9), 18.0);
        assert_eq!(percentile(&values, 0.99), 20.0);
    }
}
