//! `compare-report`: reads the results benches/compare.sh collected (a JSON array; each entry an
//! `item` of comparable work, a `system`, a `role` and the load generator's `--json` report),
//! prints one table with the ratios ours/peer, and draws the latency percentiles of each item
//! into a PNG (one panel per item and stream count, log scale, one line per system).
//!
//!   compare-report --results benches/results/compare.json [--png benches/results/compare.png]
//!                  [--markdown] [--font /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf]
//!
//! With several runs of the same row (compare.sh --runs N), the run with the median ops/s stands
//! for it, its percentiles with it (the lower of the middle two for an even N).
//!
//! Invariant: the first entry with role "ours" in an item and stream count is that group's
//! baseline; a "peer" entry's ratios are against it (ops/s: ours / peer, so above 1 means ours
//! does more; p50, p99 and server CPU per operation: peer / ours, so above 1 means ours answers
//! sooner or spends less). Other "ours" entries are shown without ratios.
//!
//! After the table, the goals of the hot path (issue 24), each a ratio between two rows of the
//! same run (`round`), then the median over the runs; a goal whose rows are absent is left out.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::Value;

/// The chart: with the `peers` feature, which brings plotters.
#[cfg(feature = "peers")]
mod compare_chart;

#[derive(Parser, Debug)]
#[command(name = "compare-report", about = "Table and chart of benches/compare.sh results")]
struct Flags {
    /// The JSON array compare.sh wrote.
    #[arg(long)]
    results: PathBuf,
    /// Draw the latency percentiles here.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Print the table as Markdown (for BENCHMARKS.md) instead of aligned text.
    #[arg(long)]
    markdown: bool,
    /// A TrueType font for the chart's text (Debian: fonts-dejavu-core).
    #[arg(long, default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    font: PathBuf,
}

/// One measured run.
struct Row {
    item: String,
    system: String,
    ours: bool,
    streams: u64,
    work: String,
    ops: f64,
    errors: u64,
    /// p50, p90, p99, p99.9 in µs.
    percentiles: [u64; 4],
    /// How many runs of this row there were (this one is their median by ops/s).
    runs: usize,
    /// Which run of compare.sh this row comes from (`--runs`).
    round: u64,
    /// Items per operation (heartbeats per keep-alive message; else 1).
    items: u64,
    /// The servers' CPU per operation, µs (None: not measured).
    cpu_us: Option<f64>,
}

/// Every run as recorded, in order.
fn runs(results: &Value) -> Result<Vec<Row>, String> {
    let entries = results.as_array().ok_or("the results are not a JSON array")?;
    let mut rows = Vec::new();
    for entry in entries {
        let text = |v: &Value, key: &str| v[key].as_str().map(str::to_string).ok_or(format!("no {key} in {v}"));
        let number = |v: &Value, key: &str| v[key].as_u64().ok_or(format!("no {key} in {v}"));
        let report = &entry["report"];
        let latency = &report["latency_us"];
        rows.push(Row {
            item: text(entry, "item")?,
            system: text(entry, "system")?,
            ours: text(entry, "role")? == "ours",
            streams: number(report, "connections")? * number(report, "concurrency")?,
            work: text(report, "work")?,
            ops: report["ops_per_second"].as_f64().ok_or("no ops_per_second")?,
            errors: number(report, "errors")?,
            percentiles: [
                number(latency, "p50")?,
                number(latency, "p90")?,
                number(latency, "p99")?,
                number(latency, "p999")?,
            ],
            runs: 1,
            round: entry["round"].as_u64().unwrap_or(1),
            items: report["items_per_operation"].as_u64().unwrap_or(1).max(1),
            cpu_us: report["host"]["server_cpu_us_per_op"].as_f64(),
        });
    }
    Ok(rows)
}

impl Row {
    fn copy(&self) -> Row {
        Row {
            item: self.item.clone(),
            system: self.system.clone(),
            work: self.work.clone(),
            ..*self
        }
    }
}

/// One row per (item, streams, system), in first-seen order: the median run by ops/s.
fn medians(rows: Vec<Row>) -> Vec<Row> {
    let mut sets: Vec<Vec<Row>> = Vec::new();
    for row in rows {
        let same = |r: &Row| r.item == row.item && r.streams == row.streams && r.system == row.system;
        match sets.iter_mut().find(|set| same(&set[0])) {
            Some(set) => set.push(row),
            None => sets.push(vec![row]),
        }
    }
    sets.into_iter()
        .map(|mut set| {
            set.sort_by(|a, b| a.ops.total_cmp(&b.ops));
            let runs = set.len();
            let mut median = set.swap_remove((runs - 1) / 2);
            median.runs = runs;
            median
        })
        .collect()
}

/// The (item, streams) groups in first-seen order, each with its rows.
fn groups(rows: &[Row]) -> Vec<((String, u64), Vec<&Row>)> {
    let mut groups: Vec<((String, u64), Vec<&Row>)> = Vec::new();
    for row in rows {
        let key = (row.item.clone(), row.streams);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(row),
            None => groups.push((key, vec![row])),
        }
    }
    groups
}

fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_table(rows: &[Row], markdown: bool) {
    let header = [
        "work",
        "streams",
        "system",
        "ops/s",
        "p50",
        "p99",
        "ours/peer ops/s",
        "peer/ours p50",
        "peer/ours p99",
        "server CPU/op",
        "peer/ours CPU",
    ];
    let mut lines: Vec<[String; 11]> = Vec::new();
    for ((item, streams), members) in groups(rows) {
        let baseline = members.iter().find(|r| r.ours);
        for row in &members {
            let ratio = |f: &dyn Fn(&Row, &Row) -> f64| match baseline {
                Some(base) if !row.ours => format!("{:.2}x", f(base, row)),
                _ => "—".to_string(),
            };
            let errors = if row.errors > 0 {
                format!(" ({} errors)", row.errors)
            } else {
                String::new()
            };
            lines.push([
                item.clone(),
                streams.to_string(),
                row.system.clone(),
                format!("{}{errors}", thousands(row.ops)),
                micros(row.percentiles[0]),
                micros(row.percentiles[2]),
                ratio(&|base, peer| base.ops / peer.ops),
                ratio(&|base, peer| peer.percentiles[0] as f64 / base.percentiles[0].max(1) as f64),
                ratio(&|base, peer| peer.percentiles[2] as f64 / base.percentiles[2].max(1) as f64),
                row.cpu_us.map_or("?".to_string(), |cpu| format!("{cpu:.1} µs")),
                match (baseline.and_then(|b| b.cpu_us), row.cpu_us) {
                    (Some(base), Some(peer)) if !row.ours && base > 0.0 => format!("{:.2}x", peer / base),
                    _ => "—".to_string(),
                },
            ]);
        }
    }
    if markdown {
        println!("| {} |", header.join(" | "));
        println!("|{}", "---|".repeat(header.len()));
        for line in &lines {
            println!("| {} |", line.join(" | "));
        }
    } else {
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let show = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, w))| {
                    let pad = w - cell.chars().count();
                    if i < 3 {
                        format!("{cell}{}", " ".repeat(pad))
                    } else {
                        format!("{}{cell}", " ".repeat(pad))
                    }
                })
                .collect();
            println!("{}", padded.join("  ").trim_end());
        };
        show(header.to_vec());
        for line in &lines {
            show(line.iter().map(String::as_str).collect());
        }
    }
    println!();
    let most = rows.iter().map(|r| r.runs).max().unwrap_or(1);
    if most > 1 {
        println!("Each row: the median of {most} runs by ops/s, with that run's percentiles.");
    }
    let mut seen = Vec::new();
    for row in rows {
        let line = format!("{} {}: {}", row.system, row.item, row.work);
        if !seen.contains(&line) {
            println!("  {line}");
            seen.push(line);
        }
    }
}

/// Which rows a goal reads: an item and a system (exact, or a prefix ending in '*').
struct Select {
    item: &'static str,
    system: &'static str,
}

impl Select {
    fn matches(&self, row: &Row) -> bool {
        row.item == self.item
            && match self.system.strip_suffix('*') {
                Some(prefix) => row.system.starts_with(prefix),
                None => row.system == self.system,
            }
    }
}

#[derive(Clone, Copy)]
enum Measure {
    /// Items (heartbeats) per second: ops/s times items per operation.
    ItemsPerSecond,
    P50,
    /// The servers' CPU per item, µs (no denominator row: the value itself).
    CpuPerItem,
}

/// A goal: `of` / `against` (or `of` alone) in `measure`, at least or at most `bound`.
struct Goal {
    name: &'static str,
    of: Select,
    against: Option<Select>,
    measure: Measure,
    bound: f64,
    at_least: bool,
}

fn value(row: &Row, measure: Measure) -> Option<f64> {
    match measure {
        Measure::ItemsPerSecond => Some(row.ops * row.items as f64),
        Measure::P50 => Some(row.percentiles[0] as f64),
        Measure::CpuPerItem => row.cpu_us.map(|cpu| cpu / row.items as f64),
    }
}

/// The goals of issue 24 that compare.sh measures.
fn goals() -> Vec<Goal> {
    let stream = |item| Select {
        item,
        system: "agentkeeper KeepAlive stream",
    };
    vec![
        Goal {
            name: "h2load unary Heartbeat >= 4x etcd Put",
            of: Select {
                item: "h2load, Heartbeat vs Put",
                system: "agentkeeper",
            },
            against: Some(Select {
                item: "h2load, Heartbeat vs Put",
                system: "etcd*",
            }),
            measure: Measure::ItemsPerSecond,
            bound: 4.0,
            at_least: true,
        },
        Goal {
            name: "daemon CPU per unary call <= 6 µs (h2load Heartbeat)",
            of: Select {
                item: "h2load, Heartbeat vs Put",
                system: "agentkeeper",
            },
            against: None,
            measure: Measure::CpuPerItem,
            bound: 6.0,
            at_least: false,
        },
        Goal {
            name: "h2load unary GetAgent vs etcd Range (no goal; >= 1x shown)",
            of: Select {
                item: "h2load, GetAgent vs Range",
                system: "agentkeeper",
            },
            against: Some(Select {
                item: "h2load, GetAgent vs Range",
                system: "etcd*",
            }),
            measure: Measure::ItemsPerSecond,
            bound: 1.0,
            at_least: true,
        },
        Goal {
            name: "stream heartbeats >= 3x unary, unbatched",
            of: stream("heartbeat"),
            against: Some(Select {
                item: "heartbeat",
                system: "agentkeeper",
            }),
            measure: Measure::ItemsPerSecond,
            bound: 3.0,
            at_least: true,
        },
        Goal {
            name: "stream heartbeats >= 5x etcd LeaseKeepAlive, unbatched",
            of: stream("heartbeat"),
            against: Some(Select {
                item: "heartbeat",
                system: "etcd*",
            }),
            measure: Measure::ItemsPerSecond,
            bound: 5.0,
            at_least: true,
        },
        Goal {
            name: "stream heartbeats >= 3x unary, unbatched, both sent by cheap clients (h2; h2load)",
            of: stream("h2 client, KeepAlive vs LeaseKeepAlive"),
            against: Some(Select {
                item: "h2load, Heartbeat vs Put",
                system: "agentkeeper",
            }),
            measure: Measure::ItemsPerSecond,
            bound: 3.0,
            at_least: true,
        },
        Goal {
            name: "stream heartbeats >= 5x etcd LeaseKeepAlive, unbatched, both sent by the h2 client",
            of: stream("h2 client, KeepAlive vs LeaseKeepAlive"),
            against: Some(Select {
                item: "h2 client, KeepAlive vs LeaseKeepAlive",
                system: "etcd*",
            }),
            measure: Measure::ItemsPerSecond,
            bound: 5.0,
            at_least: true,
        },
        Goal {
            name: "stream heartbeats, 100 per message, >= 3x unary",
            of: stream("heartbeat, 100 per message"),
            against: Some(Select {
                item: "heartbeat",
                system: "agentkeeper",
            }),
            measure: Measure::ItemsPerSecond,
            bound: 3.0,
            at_least: true,
        },
        Goal {
            name: "stream heartbeats, 100 per message, >= 5x etcd LeaseKeepAlive",
            of: stream("heartbeat, 100 per message"),
            against: Some(Select {
                item: "heartbeat",
                system: "etcd*",
            }),
            measure: Measure::ItemsPerSecond,
            bound: 5.0,
            at_least: true,
        },
        Goal {
            name: "stream renewals >= 3x unary RenewLease (the heartbeats' goal)",
            of: Select {
                item: "lease renewal",
                system: "agentkeeper LeaseService.KeepAlive stream",
            },
            against: Some(Select {
                item: "lease renewal",
                system: "agentkeeper",
            }),
            measure: Measure::ItemsPerSecond,
            bound: 3.0,
            at_least: true,
        },
        Goal {
            name: "stream renewals >= 5x etcd LeaseKeepAlive (the heartbeats' goal)",
            of: Select {
                item: "lease renewal",
                system: "agentkeeper LeaseService.KeepAlive stream",
            },
            against: Some(Select {
                item: "lease renewal",
                system: "etcd*",
            }),
            measure: Measure::ItemsPerSecond,
            bound: 5.0,
            at_least: true,
        },
        Goal {
            name: "daemon CPU per stream heartbeat <= 2 µs, unbatched",
            of: stream("heartbeat"),
            against: None,
            measure: Measure::CpuPerItem,
            bound: 2.0,
            at_least: false,
        },
        Goal {
            name: "daemon CPU per stream heartbeat <= 2 µs, unbatched, sent by the h2 client",
            of: stream("h2 client, KeepAlive vs LeaseKeepAlive"),
            against: None,
            measure: Measure::CpuPerItem,
            bound: 2.0,
            at_least: false,
        },
        Goal {
            name: "daemon CPU per stream heartbeat <= 2 µs, 100 per message",
            of: stream("heartbeat, 100 per message"),
            against: None,
            measure: Measure::CpuPerItem,
            bound: 2.0,
            at_least: false,
        },
        Goal {
            name: "1x1 p50 over the Unix socket <= 0.7x TCP's",
            of: Select {
                item: "transport, 1x1",
                system: "agentkeeper unix socket",
            },
            against: Some(Select {
                item: "transport, 1x1",
                system: "agentkeeper TCP",
            }),
            measure: Measure::P50,
            bound: 0.7,
            at_least: false,
        },
        Goal {
            name: "1x1 p50 over the Unix socket <= 0.7x TCP's, sent by the h2 client",
            of: Select {
                item: "transport, 1x1, h2 client",
                system: "agentkeeper unix socket",
            },
            against: Some(Select {
                item: "transport, 1x1, h2 client",
                system: "agentkeeper TCP",
            }),
            measure: Measure::P50,
            bound: 0.7,
            at_least: false,
        },
    ]
}

/// One line of the goals' table: a goal at one stream count, each run's figure, their median.
struct GoalLine {
    name: &'static str,
    streams: u64,
    per_run: Vec<f64>,
    median: f64,
    met: bool,
    ratio: bool,
}

/// Each goal at each stream count its rows were measured at: the figure within every run that
/// has both rows, and the median of those (the lower middle one for an even count).
fn goal_lines(runs: &[Row]) -> Vec<GoalLine> {
    let mut lines = Vec::new();
    for goal in goals() {
        let mut streams: Vec<u64> = runs.iter().filter(|r| goal.of.matches(r)).map(|r| r.streams).collect();
        streams.dedup();
        streams.sort_unstable();
        streams.dedup();
        for count in streams {
            let mut rounds: Vec<u64> = runs.iter().map(|r| r.round).collect();
            rounds.sort_unstable();
            rounds.dedup();
            let per_run: Vec<f64> = (rounds.iter())
                .filter_map(|round| {
                    let find = |select: &Select| {
                        runs.iter()
                            .find(|r| r.round == *round && r.streams == count && select.matches(r))
                    };
                    let of = value(find(&goal.of)?, goal.measure)?;
                    match &goal.against {
                        Some(against) => {
                            let against = value(find(against)?, goal.measure)?;
                            (against > 0.0).then(|| of / against)
                        }
                        None => Some(of),
                    }
                })
                .collect();
            if per_run.is_empty() {
                continue;
            }
            let mut sorted = per_run.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[(sorted.len() - 1) / 2];
            let met = if goal.at_least {
                median >= goal.bound
            } else {
                median <= goal.bound
            };
            lines.push(GoalLine {
                name: goal.name,
                streams: count,
                per_run,
                median,
                met,
                ratio: goal.against.is_some(),
            });
        }
    }
    lines
}

fn print_goals(runs: &[Row], markdown: bool) {
    let lines = goal_lines(runs);
    if lines.is_empty() {
        return;
    }
    let show = |x: f64, ratio: bool| match ratio {
        true => format!("{x:.2}x"),
        false => format!("{x:.2} µs"),
    };
    println!();
    println!("Goals, each a ratio within one run (median of the runs):");
    if markdown {
        println!("| goal | streams | runs | median | |");
        println!("|---|---|---|---|---|");
    }
    for line in &lines {
        let per_run: Vec<String> = line.per_run.iter().map(|x| show(*x, line.ratio)).collect();
        let verdict = if line.met { "met" } else { "NOT MET" };
        if markdown {
            println!(
                "| {} | {} | {} | {} | {verdict} |",
                line.name,
                line.streams,
                per_run.join(", "),
                show(line.median, line.ratio)
            );
        } else {
            println!(
                "  {:<62} {:>4} streams: {:>8}  ({})  {verdict}",
                line.name,
                line.streams,
                show(line.median, line.ratio),
                per_run.join(", ")
            );
        }
    }
}

#[cfg(feature = "peers")]
fn chart(rows: &[Row], png: &Path, font: &Path) -> Result<(), String> {
    compare_chart::draw(rows, png, font).map_err(|e| format!("chart: {e}"))
}

#[cfg(not(feature = "peers"))]
fn chart(_: &[Row], png: &Path, _: &Path) -> Result<(), String> {
    Err(format!(
        "{}: the chart needs the load generator built with --features peers (plotters)",
        png.display()
    ))
}

fn main() {
    // A reader that stops early (`| head`) ends the report quietly, as it ends any Unix filter,
    // rather than as a panic in println!.
    // SAFETY: sets this process's SIGPIPE disposition back to the default, before any thread.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let flags = Flags::parse();
    let run = || -> Result<(), String> {
        let text = std::fs::read_to_string(&flags.results).map_err(|e| format!("{}: {e}", flags.results.display()))?;
        let results: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", flags.results.display()))?;
        let runs = runs(&results)?;
        let rows = medians(runs.iter().map(Row::copy).collect());
        print_table(&rows, flags.markdown);
        print_goals(&runs, flags.markdown);
        if let Some(png) = &flags.png {
            chart(&rows, png, &flags.font)?;
        }
        Ok(())
    };
    if let Err(message) = run() {
        eprintln!("compare-report: {message}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(item: &str, system: &str, round: u64, ops: f64, items: u64, p50: u64, cpu: f64) -> Value {
        serde_json::json!({
            "item": item, "system": system, "role": if system.starts_with("etcd") { "peer" } else { "ours" },
            "round": round,
            "report": {
                "connections": 4, "concurrency": 64, "work": "w", "ops_per_second": ops, "errors": 0,
                "items_per_operation": items,
                "latency_us": {"p50": p50, "p90": p50, "p99": p50, "p999": p50},
                "host": {"server_cpu_us_per_op": cpu}
            }
        })
    }

    #[test]
    fn goals_are_ratios_within_each_run_and_their_median() {
        let results = Value::Array(vec![
            entry("h2load, Heartbeat vs Put", "agentkeeper", 1, 100_000.0, 1, 1, 7.0),
            entry("h2load, Heartbeat vs Put", "etcd 3.4.23", 1, 20_000.0, 1, 1, 1.0),
            entry("h2load, Heartbeat vs Put", "agentkeeper", 2, 60_000.0, 1, 1, 1.0),
            entry("h2load, Heartbeat vs Put", "etcd 3.4.23", 2, 30_000.0, 1, 1, 1.0),
            entry("h2load, Heartbeat vs Put", "agentkeeper", 3, 90_000.0, 1, 1, 6.5),
            entry("h2load, Heartbeat vs Put", "etcd 3.4.23", 3, 30_000.0, 1, 1, 1.0),
            // 100 heartbeats per message at 41 µs a message: 0.41 µs a heartbeat.
            entry(
                "heartbeat, 100 per message",
                "agentkeeper KeepAlive stream",
                1,
                8_000.0,
                100,
                9,
                41.0,
            ),
            entry("transport, 1x1", "agentkeeper TCP", 1, 1.0, 1, 50, 1.0),
            entry("transport, 1x1", "agentkeeper unix socket", 1, 1.0, 1, 40, 1.0),
        ]);
        let lines = goal_lines(&runs(&results).unwrap());
        let line = |name: &str| lines.iter().find(|l| l.name.starts_with(name)).unwrap();
        let put = line("h2load unary Heartbeat");
        assert_eq!(put.per_run, vec![5.0, 2.0, 3.0]);
        assert_eq!((put.median, put.met, put.streams), (3.0, false, 256));
        let unary_cpu = line("daemon CPU per unary call");
        assert_eq!((unary_cpu.per_run.clone(), unary_cpu.met), (vec![7.0, 1.0, 6.5], false));
        let cpu = line("daemon CPU per stream heartbeat <= 2 µs, 100");
        assert!((cpu.median - 0.41).abs() < 1e-9 && cpu.met);
        let socket = line("1x1 p50 over the Unix socket");
        assert!((socket.median - 0.8).abs() < 1e-9 && !socket.met);
        // No unbatched stream row, no etcd heartbeat row: those goals are left out.
        assert!(lines.iter().all(|l| !l.name.contains("unbatched")));
    }
}
