//! The servers' own counters over the measured phase: each `--scrape` address's Prometheus
//! /metrics read at the phase's start and end, and the change in the few families that say
//! where a write's time goes (log syncs and their time, consensus proposal time, batch sizes;
//! etcd's WAL fsyncs and backend commits). Every label set of a family is summed. A caller
//! may also ask for series by selector (`family{label="v",other!="w"}`), summed over the label
//! sets that match: the h2load rows count one method's calls by their gRPC code this way.
//!
//! Invariant: a failed scrape is reported as that address's error and measures nothing; it
//! never fails the run.

use std::collections::BTreeMap;

use crate::background::http_get;

/// The families kept: AgentKeeper's and etcd's names for the same costs.
const FAMILIES: [&str; 16] = [
    "agentkeeper_store_syncs_total",
    "agentkeeper_store_bytes_total",
    "agentkeeper_store_sync_seconds_sum",
    "agentkeeper_store_sync_seconds_count",
    "agentkeeper_cluster_proposal_seconds_sum",
    "agentkeeper_cluster_proposal_seconds_count",
    "agentkeeper_core_batch_commands_sum",
    "agentkeeper_core_batch_commands_count",
    "agentkeeper_cluster_peer_dropped_total",
    "agentkeeper_rpc_total",
    "etcd_disk_wal_fsync_duration_seconds_sum",
    "etcd_disk_wal_fsync_duration_seconds_count",
    "etcd_disk_backend_commit_duration_seconds_sum",
    "etcd_disk_backend_commit_duration_seconds_count",
    "etcd_server_proposals_committed_total",
    "etcd_network_peer_sent_bytes_total",
];

/// One address's kept families, summed over label sets.
pub type Counters = Result<BTreeMap<String, f64>, String>;

#[derive(serde::Serialize)]
pub struct NodeMetrics {
    pub address: String,
    /// end - start of each kept family the address exposes.
    pub delta: BTreeMap<String, f64>,
    pub error: Option<String>,
}

/// Reads every address's kept families and the series `selectors` name (each kept under the
/// selector's own text).
pub async fn read_all(addresses: &[String], selectors: &[&str]) -> Vec<Counters> {
    let mut all = Vec::with_capacity(addresses.len());
    for address in addresses {
        all.push(read(address, selectors).await);
    }
    all
}

async fn read(address: &str, selectors: &[&str]) -> Counters {
    let body = http_get(address, "/metrics").await?;
    Ok(parse(&String::from_utf8_lossy(&body), selectors))
}

/// Waits until the daemon at `address` holds `cards` card vectors (its /metrics'
/// `agentkeeper_card_vectors`); gives up after ten minutes.
#[allow(clippy::disallowed_methods)] // a load generator measures real time
pub async fn wait_card_vectors(address: &str, cards: usize) -> Result<(), String> {
    let started = std::time::Instant::now();
    loop {
        let body = http_get(address, "/metrics").await?;
        let text = String::from_utf8_lossy(&body);
        let held: f64 = (text.lines())
            .find_map(|line| line.strip_prefix("agentkeeper_card_vectors ")?.trim().parse().ok())
            .unwrap_or(0.0);
        if held >= cards as f64 {
            eprintln!(
                "set-up: {cards} card vectors held after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > std::time::Duration::from_secs(600) {
            return Err(format!("only {held} of {cards} card vectors held within 10 minutes"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The kept families of a Prometheus text exposition, each summed over its label sets, and
/// each selector's matching series, summed.
fn parse(text: &str, selectors: &[&str]) -> BTreeMap<String, f64> {
    let selectors: Vec<(&str, Selector)> = selectors.iter().map(|s| (*s, Selector::parse(s))).collect();
    let mut kept = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let (labels, rest) = match line[name_end..].rfind('}') {
            Some(close) => (&line[name_end + 1..name_end + close], &line[name_end + close + 1..]),
            None => ("", &line[name_end..]),
        };
        let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        if FAMILIES.contains(&name) {
            *kept.entry(name.to_string()).or_insert(0.0) += value;
        }
        for (text, selector) in &selectors {
            if selector.matches(name, labels) {
                *kept.entry(text.to_string()).or_insert(0.0) += value;
            }
        }
    }
    kept
}

/// `family{label="value",other!="value"}`: a family's series whose labels match every matcher.
struct Selector {
    family: String,
    /// (label, value, equal): `=` when equal, `!=` otherwise.
    matchers: Vec<(String, String, bool)>,
}

impl Selector {
    fn parse(text: &str) -> Selector {
        let (family, inner) = match text.split_once('{') {
            Some((family, rest)) => (family, rest.trim_end_matches('}')),
            None => (text, ""),
        };
        let matchers = (inner.split(',').filter(|m| !m.trim().is_empty()))
            .map(|m| {
                let (label, value, equal) = match m.split_once("!=") {
                    Some((label, value)) => (label, value, false),
                    None => {
                        let (label, value) = m.split_once('=').unwrap_or((m, ""));
                        (label, value, true)
                    }
                };
                (
                    label.trim().to_string(),
                    value.trim().trim_matches('"').to_string(),
                    equal,
                )
            })
            .collect();
        Selector {
            family: family.to_string(),
            matchers,
        }
    }

    /// Whether the series `name{labels}` (labels as exposed: `a="x",b="y"`) is selected.
    fn matches(&self, name: &str, labels: &str) -> bool {
        if name != self.family {
            return false;
        }
        let label = |wanted: &str| {
            (labels.split(','))
                .filter_map(|pair| pair.split_once('='))
                .find(|(l, _)| l.trim() == wanted)
                .map(|(_, v)| v.trim().trim_matches('"'))
        };
        (self.matchers.iter()).all(|(wanted, value, equal)| (label(wanted) == Some(value.as_str())) == *equal)
    }
}

/// The change of every family between the two reads of each address.
pub fn deltas(addresses: &[String], start: Vec<Counters>, end: Vec<Counters>) -> Vec<NodeMetrics> {
    (addresses.iter().zip(start.into_iter().zip(end)))
        .map(|(address, pair)| match pair {
            (Ok(a), Ok(b)) => NodeMetrics {
                address: address.clone(),
                delta: (b.iter())
                    .map(|(name, after)| (name.clone(), after - a.get(name).copied().unwrap_or(0.0)))
                    .collect(),
                error: None,
            },
            (Err(e), _) | (_, Err(e)) => NodeMetrics {
                address: address.clone(),
                delta: BTreeMap::new(),
                error: Some(e),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parse_sums_a_kept_family_over_its_label_sets_and_skips_the_rest() {
        let text = "# HELP agentkeeper_rpc_total calls\n\
                    agentkeeper_rpc_total{method=\"A\",code=\"OK\"} 3\n\
                    agentkeeper_rpc_total{method=\"B\",code=\"OK\"} 4.5\n\
                    agentkeeper_store_syncs_total 7\n\
                    etcd_disk_wal_fsync_duration_seconds_count 12 1700000000\n\
                    something_else_total 99\n";
        let kept = parse(text, &[]);
        assert_eq!(kept.get("agentkeeper_rpc_total"), Some(&7.5));
        assert_eq!(kept.get("agentkeeper_store_syncs_total"), Some(&7.0));
        assert_eq!(kept.get("etcd_disk_wal_fsync_duration_seconds_count"), Some(&12.0));
        assert_eq!(kept.get("something_else_total"), None);
    }

    #[test]
    fn a_selector_sums_the_series_whose_labels_match_and_only_those() {
        let text = "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\"} 10\n\
                    grpc_server_handled_total{grpc_code=\"Unavailable\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\"} 2\n\
                    grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\"} 5\n\
                    agentkeeper_rpc_total{method=\"Heartbeat\"} 7\n";
        let ok = "grpc_server_handled_total{grpc_method=\"Put\",grpc_code=\"OK\"}";
        let failed = "grpc_server_handled_total{grpc_method=\"Put\",grpc_code!=\"OK\"}";
        let heartbeats = "agentkeeper_rpc_total{method=\"Heartbeat\"}";
        let absent = "agentkeeper_rpc_errors_total{method=\"Heartbeat\"}";
        let kept = parse(text, &[ok, failed, heartbeats, absent]);
        assert_eq!(kept.get(ok), Some(&10.0));
        assert_eq!(kept.get(failed), Some(&2.0));
        assert_eq!(kept.get(heartbeats), Some(&7.0));
        assert_eq!(kept.get(absent), None);
        assert_eq!(kept.get("agentkeeper_rpc_total"), Some(&7.0));
    }
}
